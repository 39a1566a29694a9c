package redisstore_test

import (
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	redisstore "github.com/sessioncap/sessioncap/counters/redis"
	"github.com/sessioncap/sessioncap/internal/redistest"
	"github.com/sessioncap/sessioncap/limits"
)

// TestStoresAgreeOnSubMillisecondWindow: with a window under 1 ms (which
// config refuses, but a caller may pass) the memory store and Redis count
// alike: as a 1 ms window, the first hit admitted.
func TestStoresAgreeOnSubMillisecondWindow(t *testing.T) {
	now := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	srv := redistest.Standalone(t)
	rs := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, KeyPrefix: newPrefix(), Host: "mx1", Now: clock})
	mem := counters.NewMemory(counters.MemoryOptions{Now: clock, Host: "mx1"})
	r := limits.Rate{Max: 3, Window: 500 * time.Microsecond, Ban: time.Minute, Reason: "frequency"}
	for i := 1; i <= 4; i++ {
		hm, err1 := mem.Hit(ctx, "freq:192.0.2.1/32", 1, r)
		hr, err2 := rs.Hit(ctx, "freq:192.0.2.1/32", 1, r)
		if err1 != nil || err2 != nil || hm.Count != hr.Count || hm.Crossed != hr.Crossed || !hm.BannedUntil.Equal(hr.BannedUntil) {
			t.Fatalf("hit %d: memory %+v (%v), Redis %+v (%v); want the same", i, hm, err1, hr, err2)
		}
		if crossed := i > 3; hm.Crossed != crossed {
			t.Fatalf("hit %d: %+v; want crossed only past 3", i, hm)
		}
	}
}
