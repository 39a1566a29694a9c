package counters_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/counters/storetest"
	"github.com/sessioncap/sessioncap/limits"
)

// The modes of a faultStore.
const (
	healthy = iota
	slow    // every call blocks until its context ends: a Redis that hangs
	failing // every call fails at once: a Redis that refuses connections
)

// faultStore is a primary store with injected faults.
type faultStore struct {
	*counters.Memory
	mode  atomic.Int32
	calls atomic.Int64 // calls other than Ping
	pings atomic.Int64
}

var errRefused = errors.New("connection refused")

func (s *faultStore) fault(ctx context.Context) error {
	switch s.mode.Load() {
	case slow:
		<-ctx.Done()
		return ctx.Err()
	case failing:
		return errRefused
	}
	return nil
}

func (s *faultStore) Hit(ctx context.Context, key string, n int64, r limits.Rate) (limits.Hit, error) {
	s.calls.Add(1)
	if err := s.fault(ctx); err != nil {
		return limits.Hit{}, err
	}
	return s.Memory.Hit(ctx, key, n, r)
}

func (s *faultStore) Ban(ctx context.Context, key string, d time.Duration, reason string) (counters.Ban, error) {
	s.calls.Add(1)
	if err := s.fault(ctx); err != nil {
		return counters.Ban{}, err
	}
	return s.Memory.Ban(ctx, key, d, reason)
}

func (s *faultStore) Unban(ctx context.Context, key string) (bool, error) {
	s.calls.Add(1)
	if err := s.fault(ctx); err != nil {
		return false, err
	}
	return s.Memory.Unban(ctx, key)
}

func (s *faultStore) Bans(ctx context.Context) ([]counters.Ban, error) {
	s.calls.Add(1)
	if err := s.fault(ctx); err != nil {
		return nil, err
	}
	return s.Memory.Bans(ctx)
}

func (s *faultStore) Ping(ctx context.Context) error {
	s.pings.Add(1)
	return s.fault(ctx)
}

// states records OnStateChange calls.
type states struct {
	mu sync.Mutex
	v  []bool
}

func (s *states) change(up bool) { s.mu.Lock(); s.v = append(s.v, up); s.mu.Unlock() }
func (s *states) get() []bool    { s.mu.Lock(); defer s.mu.Unlock(); return slices.Clone(s.v) }

func newFallback(t *testing.T, mode string, timeout time.Duration) (*counters.Fallback, *faultStore, *states) {
	t.Helper()
	clock := storetest.NewClock()
	p := &faultStore{Memory: counters.NewMemory(counters.MemoryOptions{Now: clock.Now, Host: "shared"})}
	st := &states{}
	f, err := counters.NewFallback(p, counters.NewMemory(counters.MemoryOptions{Now: clock.Now, Host: "local"}),
		counters.FallbackOptions{Timeout: timeout, OnError: mode, ProbeInterval: 10 * time.Millisecond, OnStateChange: st.change})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, p, st
}

func waitUp(t *testing.T, f *counters.Fallback) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !f.Up() {
		if time.Now().After(deadline) {
			t.Fatal("the breaker did not close after the primary recovered")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var limit = limits.Rate{Max: 3, Window: time.Minute, Ban: 10 * time.Minute, Reason: "frequency"}

// The Fallback passes the conformance suite over a healthy primary.
func TestFallbackConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, clock *storetest.Clock, host string) counters.Store {
		mem := func() *counters.Memory { return counters.NewMemory(counters.MemoryOptions{Now: clock.Now, Host: host}) }
		f, err := counters.NewFallback(mem(), mem(), counters.FallbackOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	})
}

// A primary that hangs costs one call the timeout; then the breaker is open
// and calls go straight to the local store until the prober sees the
// primary again.
func TestFallbackSlowPrimary(t *testing.T) {
	const timeout = 100 * time.Millisecond
	f, p, st := newFallback(t, "", timeout)
	if h, err := f.Hit(ctx, "k", 1, limit); err != nil || h.Count != 1 || p.calls.Load() != 1 {
		t.Fatalf("healthy: %+v, %v, %d primary calls", h, err, p.calls.Load())
	}
	p.mode.Store(slow)
	// concurrent callers meet the hang: each waits the timeout at most, and
	// the outage is reported once
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			h, err := f.Hit(ctx, "c"+strconv.Itoa(g), 1, limit)
			if d := time.Since(start); err != nil || d > 2*timeout {
				t.Errorf("hit on a hanging primary: %+v, %v after %v (timeout %v)", h, err, d, timeout)
			}
		}()
	}
	wg.Wait()
	if f.Up() || !slices.Equal(st.get(), []bool{false}) {
		t.Fatalf("up %v, state changes %v; want down, [false]", f.Up(), st.get())
	}
	calls := p.calls.Load()
	for i := 0; i < 20; i++ {
		start := time.Now()
		if _, err := f.Hit(ctx, "j", 1, limit); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > timeout/2 {
			t.Fatalf("a call with the breaker open took %v (timeout %v)", d, timeout)
		}
	}
	if p.calls.Load() != calls {
		t.Fatalf("%d calls reached the primary while the breaker was open", p.calls.Load()-calls)
	}
	if h, _ := f.Hit(ctx, "j", 0, limit); h.BannedUntil.IsZero() {
		t.Fatalf("the local store did not count: %+v", h) // 20 hits of j crossed 3 locally
	}
	// the prober pings, and a hanging ping keeps the breaker open
	for deadline := time.Now().Add(5 * time.Second); p.pings.Load() < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the prober does not ping")
		}
	}
	if f.Up() {
		t.Fatal("a hanging ping closed the breaker")
	}
	p.mode.Store(healthy)
	waitUp(t, f)
	if !slices.Equal(st.get(), []bool{false, true}) {
		t.Fatalf("state changes %v; want [false true]", st.get())
	}
	if h, err := f.Hit(ctx, "k", 1, limit); err != nil || h.Count != 2 || p.calls.Load() != calls+1 {
		t.Fatalf("after recovery: %+v, %v; want the primary's window (count 2)", h, err)
	}
}

// Under "tempfail" an unavailable primary is an error, at once while open.
func TestFallbackTempfail(t *testing.T) {
	const timeout = 100 * time.Millisecond
	f, p, st := newFallback(t, counters.OnErrorTempfail, timeout)
	p.mode.Store(failing)
	if _, err := f.Hit(ctx, "k", 1, limit); !errors.Is(err, counters.ErrUnavailable) {
		t.Fatalf("hit on a failing primary: %v", err)
	}
	for _, call := range []func() error{
		func() error { _, err := f.Hit(ctx, "k", 1, limit); return err },
		func() error { _, err := f.Ban(ctx, "k", time.Hour, "manual"); return err },
		func() error { _, err := f.Bans(ctx); return err },
		func() error { _, err := f.Stats(ctx); return err },
	} {
		start := time.Now()
		if err := call(); !errors.Is(err, counters.ErrUnavailable) || time.Since(start) > timeout/2 {
			t.Fatalf("with the breaker open: %v after %v", err, time.Since(start))
		}
	}
	p.mode.Store(healthy)
	waitUp(t, f)
	if h, err := f.Hit(ctx, "k", 1, limit); err != nil || h.Count != 1 {
		t.Fatalf("after recovery: %+v, %v", h, err)
	}
	if !slices.Equal(st.get(), []bool{false, true}) {
		t.Fatalf("state changes %v", st.get())
	}
}

// Bans made locally during an outage stay in force on this host after the
// primary is back, are listed, and Unban lifts them.
func TestFallbackLocalBansStay(t *testing.T) {
	f, p, _ := newFallback(t, "", 100*time.Millisecond)
	p.mode.Store(failing)
	if h, _ := f.Hit(ctx, "freq:192.0.2.0/24", 4, limit); !h.Crossed || h.BannedUntil.IsZero() {
		t.Fatalf("local crossing: %+v", h)
	}
	if b, err := f.Ban(ctx, "freq:198.51.100.0/24", time.Hour, "manual"); !errors.Is(err, counters.ErrSharedUnreachable) || b.Host != "local" {
		t.Fatalf("manual ban during the outage: %+v, %v; want it made locally and the error saying so", b, err)
	}
	p.mode.Store(healthy)
	waitUp(t, f)
	if _, err := f.Ban(ctx, "freq:203.0.113.0/24", 2*time.Hour, "manual"); err != nil {
		t.Fatal(err)
	}
	if h, _ := f.Hit(ctx, "freq:192.0.2.0/24", 1, limit); h.BannedUntil.IsZero() {
		t.Fatal("a ban made during the outage was forgotten at recovery")
	}
	bans, err := f.Bans(ctx)
	if err != nil || len(bans) != 3 || bans[0].Host != "local" || bans[1].Host != "local" || bans[2].Host != "shared" {
		t.Fatalf("bans %+v, %v; want 2 local then 1 shared", bans, err)
	}
	if was, err := f.Unban(ctx, "freq:192.0.2.0/24"); !was || err != nil {
		t.Fatalf("unban: %v, %v", was, err)
	}
	if h, _ := f.Hit(ctx, "freq:192.0.2.0/24", 1, limit); !h.BannedUntil.IsZero() || h.Count != 1 {
		t.Fatalf("after unban: %+v", h)
	}
}

// A caller that gives up is not an outage.
func TestFallbackCallerCancel(t *testing.T) {
	f, p, st := newFallback(t, "", time.Second)
	p.mode.Store(slow)
	c, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := f.Hit(c, "k", 1, limit); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hit with the caller's deadline: %v", err)
	}
	if !f.Up() || len(st.get()) != 0 {
		t.Fatalf("the breaker opened on the caller's deadline: up %v, changes %v", f.Up(), st.get())
	}
}

// A caller whose deadline is the store timeout itself, as the daemon's
// engine gives every store call, does not keep a hung primary's failure
// from opening the breaker: the next calls do not wait for it, and under
// "tempfail" the failure is answered ErrUnavailable, not the caller's
// deadline error.
func TestFallbackCallerDeadlineOfTheTimeout(t *testing.T) {
	for _, mode := range []string{counters.OnErrorLocal, counters.OnErrorTempfail} {
		t.Run(mode, func(t *testing.T) {
			f, p, st := newFallback(t, mode, 50*time.Millisecond)
			p.mode.Store(slow)
			want := error(nil)
			if mode == counters.OnErrorTempfail {
				want = counters.ErrUnavailable
			}
			for i := 0; i < 5; i++ {
				c, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
				_, err := f.Hit(c, "k", 1, limit)
				cancel()
				if !errors.Is(err, want) || (want == nil && err != nil) {
					t.Fatalf("hit %d: %v, want %v", i+1, err, want)
				}
			}
			if f.Up() || !slices.Equal(st.get(), []bool{false}) {
				t.Fatalf("up %v, state changes %v; want the breaker open once", f.Up(), st.get())
			}
			if n := p.calls.Load(); n != 1 {
				t.Fatalf("the hung primary was called %d times, want once", n)
			}
		})
	}
}

func TestFallbackObserve(t *testing.T) {
	var mu sync.Mutex
	var ops []string
	p := &faultStore{Memory: counters.NewMemory(counters.MemoryOptions{})}
	f, err := counters.NewFallback(p, counters.NewMemory(counters.MemoryOptions{}), counters.FallbackOptions{
		ProbeInterval: 10 * time.Millisecond,
		Observe: func(op string, d time.Duration, err error) {
			mu.Lock()
			ops = append(ops, op+":"+map[bool]string{true: "err", false: "ok"}[err != nil])
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Hit(ctx, "k", 1, limit)
	f.Ban(ctx, "k", time.Hour, "manual")
	f.Bans(ctx)
	f.Stats(ctx)
	f.Unban(ctx, "k")
	p.mode.Store(failing)
	f.Hit(ctx, "k", 1, limit)
	f.Hit(ctx, "k", 1, limit) // breaker open: not observed
	p.mode.Store(healthy)
	waitUp(t, f)
	mu.Lock()
	defer mu.Unlock()
	want := []string{"hit:ok", "ban:ok", "bans:ok", "stats:ok", "unban:ok", "hit:err"}
	if len(ops) < len(want)+1 || !slices.Equal(ops[:len(want)], want) || ops[len(ops)-1] != "ping:ok" {
		t.Fatalf("observed %v; want %v then pings ending with ping:ok", ops, want)
	}
}

func TestFallbackRejectsOnError(t *testing.T) {
	m := counters.NewMemory(counters.MemoryOptions{})
	if _, err := counters.NewFallback(m, m, counters.FallbackOptions{OnError: "drop"}); err == nil {
		t.Fatal(`on_error "drop" accepted`)
	}
}
