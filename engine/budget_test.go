package engine_test

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/engine"
	"github.com/sessioncap/sessioncap/limits"
)

// budgetStore records the time each call had left before its deadline and
// takes delay to answer (a Redis answering within the store timeout, but
// slowly).
type budgetStore struct {
	*counters.Memory
	delay time.Duration
	mu    sync.Mutex
	left  map[string]time.Duration
}

func (s *budgetStore) Hit(ctx context.Context, key string, n int64, r limits.Rate) (limits.Hit, error) {
	d, ok := ctx.Deadline()
	s.mu.Lock()
	if ok {
		s.left[key] = time.Until(d)
	} else {
		s.left[key] = -1
	}
	s.mu.Unlock()
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return limits.Hit{}, ctx.Err()
	}
	return s.Memory.Hit(ctx, key, n, r)
}

// TestAdmissionStoreCallsHaveTheirOwnBudget: after a reload that changed
// the prefix lengths, an admission makes two store calls (the key under the
// old length, then the new key); each gets the whole store timeout, so a
// store that answers each within it is not failed for their sum.
func TestAdmissionStoreCallsHaveTheirOwnBudget(t *testing.T) {
	const timeout = 100 * time.Millisecond
	store := &budgetStore{Memory: counters.NewMemory(counters.MemoryOptions{}), delay: timeout * 6 / 10, left: map[string]time.Duration{}}
	r := limits.DefaultRules()
	r.Default.Frequency = limits.Frequency{MaxConnections: 10, Window: time.Minute, Ban: time.Hour}
	e, err := engine.New(engine.Config{Rules: r, Store: store, Metrics: engine.NewMetrics(prometheus.NewRegistry()),
		Logger: slog.New(slog.DiscardHandler), StoreTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("192.0.2.9")
	e.Admit(e.Rules(), addr, "192.0.2.9")
	r2 := *r
	r2.IPv4Prefix = 24
	if err := e.SetRules(&r2); err != nil {
		t.Fatal(err)
	}
	a := e.Admit(e.Rules(), addr, "192.0.2.9")
	if a.Verdict != limits.Admitted || a.Connections != 1 {
		t.Fatalf("admission after the reload: %+v; want admitted and counted under the new key", a.Admission)
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	for _, key := range []string{"freq:192.0.2.9/32", "freq:192.0.2.0/24"} {
		if left, ok := store.left[key]; !ok || left < timeout*8/10 {
			t.Fatalf("call on %s had %v left of the %v store timeout; want about all of it (calls %v)", key, left, timeout, store.left)
		}
	}
}
