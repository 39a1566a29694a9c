package redisstore_test

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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

// TestClusterSendsAHitOnce: the Cluster client is set to make one attempt
// per command. go-redis's cluster client retries after EOF, a timeout or
// READONLY up to MaxRedirects whatever MaxRetries says, which would run a
// hit's script again after its reply was lost. (A check of the client's
// options, not a fault injected on a real Cluster.)
func TestClusterSendsAHitOnce(t *testing.T) {
	s, err := redisstore.New(redisstore.Options{Addresses: []string{"127.0.0.1:1"}, Cluster: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cc, ok := s.Client().(*redis.ClusterClient)
	if !ok {
		t.Fatalf("client %T, want a cluster client", s.Client())
	}
	if o := cc.Options(); o.MaxRedirects != 0 || o.MaxRetries != -1 {
		t.Fatalf("MaxRedirects %d, MaxRetries %d; want 0 (one attempt) and -1", o.MaxRedirects, o.MaxRetries)
	}
}
