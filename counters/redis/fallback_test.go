package redisstore_test

import (
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	redisstore "github.com/sessioncap/sessioncap/counters/redis"
	"github.com/sessioncap/sessioncap/internal/redistest"
	"github.com/sessioncap/sessioncap/limits"
)

type states struct {
	mu sync.Mutex
	v  []bool
}

func (s *states) change(up bool) { s.mu.Lock(); s.v = append(s.v, up); s.mu.Unlock() }
func (s *states) get() []bool    { s.mu.Lock(); defer s.mu.Unlock(); return slices.Clone(s.v) }

const timeout = 100 * time.Millisecond

// the slack allowed over the timeout for a call to be answered: the same
// again (a loaded 2-core machine running -race)
const slack = timeout

var rate = limits.Rate{Max: 1000, Window: time.Minute, Ban: time.Minute, Reason: "frequency"}

func fallback(t *testing.T, s *redisstore.Store, st *states) *counters.Fallback {
	t.Helper()
	f, err := counters.NewFallback(s, counters.NewMemory(counters.MemoryOptions{Host: "mx1"}), counters.FallbackOptions{
		Timeout: timeout, ProbeInterval: 50 * time.Millisecond, OnStateChange: st.change,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// hitWithin calls f.Hit and fails the test unless it answers, without
// error, within the timeout and its slack.
func hitWithin(t *testing.T, f *counters.Fallback, key string) limits.Hit {
	t.Helper()
	start := time.Now()
	h, err := f.Hit(ctx, key, 1, rate)
	if d := time.Since(start); err != nil || d > timeout+slack {
		t.Fatalf("hit %s: %v after %v (timeout %v)", key, err, d, timeout)
	}
	return h
}

// A Redis that dies is answered for locally within the timeout; once it is
// back on the same port the breaker closes by itself.
func TestFallbackRedisDownAndUp(t *testing.T) {
	srv := redistest.Standalone(t)
	s := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, KeyPrefix: newPrefix(), Host: "mx1"})
	st := &states{}
	f := fallback(t, s, st)
	if h := hitWithin(t, f, "a"); h.Count != 1 || !f.Up() {
		t.Fatalf("healthy: %+v, up %v", h, f.Up())
	}
	srv.Kill()
	for i := 0; i < 20; i++ {
		hitWithin(t, f, "a")
	}
	if f.Up() || !slices.Equal(st.get(), []bool{false}) {
		t.Fatalf("Redis killed: up %v, state changes %v; want false, [false]", f.Up(), st.get())
	}
	if h, _ := f.Local().Hit(ctx, "a", 0, rate); h.Count != 20 {
		t.Fatalf("the local store counted %d of 20 hits", h.Count)
	}
	srv.Restart()
	deadline := time.Now().Add(10 * time.Second)
	for !f.Up() {
		if time.Now().After(deadline) {
			t.Fatal("not up 10s after Redis restarted")
		}
		hitWithin(t, f, "b")
		time.Sleep(10 * time.Millisecond)
	}
	if !slices.Equal(st.get(), []bool{false, true}) {
		t.Fatalf("state changes %v; want [false true]", st.get())
	}
	// the shared state is used again: a hit through the Fallback is seen by
	// a direct one
	hitWithin(t, f, "c")
	if h, err := s.Hit(ctx, "c", 1, rate); err != nil || h.Count != 2 {
		t.Fatalf("direct hit after recovery: %+v, %v; want count 2", h, err)
	}
}

// A Redis that hangs (SIGSTOP: connections stay open, nothing answers) costs
// the calls in flight the timeout, then none; once it runs again the
// breaker closes by itself.
func TestFallbackRedisHangs(t *testing.T) {
	srv := redistest.Standalone(t)
	s := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, KeyPrefix: newPrefix(), Host: "mx1"})
	st := &states{}
	var failedPings atomic.Int64
	f, err := counters.NewFallback(s, counters.NewMemory(counters.MemoryOptions{Host: "mx1"}), counters.FallbackOptions{
		Timeout: timeout, ProbeInterval: 50 * time.Millisecond, OnStateChange: st.change,
		Observe: func(op string, _ time.Duration, err error) {
			if op == "ping" && err != nil {
				failedPings.Add(1)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	hitWithin(t, f, "a")
	srv.Pause()
	t.Cleanup(srv.Resume) // before the Kill of the server's own cleanup
	hitWithin(t, f, "a")  // waits the timeout, answered locally
	if f.Up() || !slices.Equal(st.get(), []bool{false}) {
		t.Fatalf("Redis hung: up %v, state changes %v; want false, [false]", f.Up(), st.get())
	}
	for i := 0; i < 20; i++ {
		start := time.Now()
		hitWithin(t, f, "a")
		if d := time.Since(start); d >= timeout {
			t.Fatalf("a hit with the breaker open took %v: it waited for the hung Redis (timeout %v)", d, timeout)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); failedPings.Load() < 3; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d probes of the hung Redis failed in 10s", failedPings.Load())
		}
	}
	if f.Up() {
		t.Fatal("a probe of a hung Redis closed the breaker")
	}
	srv.Resume()
	deadline := time.Now().Add(10 * time.Second)
	for !f.Up() {
		if time.Now().After(deadline) {
			t.Fatal("not up 10s after Redis resumed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !slices.Equal(st.get(), []bool{false, true}) {
		t.Fatalf("state changes %v; want [false true]", st.get())
	}
	// Redis's window: the first hit, the hit that timed out (it was sent:
	// the resumed server ran it although nobody read the reply) and this one
	if h := hitWithin(t, f, "a"); h.Count != 3 {
		t.Fatalf("after resume: %+v; want Redis's window (count 3)", h)
	}
}

// A Sentinel failover: the primary dies, every hit is still answered (from
// the local store while there is no primary), and once the replica is
// promoted the Fallback is up again on it. go-redis logs its failed dials
// to the dead primary at Debug, the switch to the new master at Info, and
// nothing at Warn or above.
func TestFallbackSentinelFailover(t *testing.T) {
	sentinel, primary, replica := redistest.Sentinel(t)
	logs := captureRedisLog(t)
	o := redisstore.Options{Addresses: []string{sentinel.Addr()}, MasterName: "m", KeyPrefix: newPrefix(), Host: "mx1"}
	s := open(t, o)
	st := &states{}
	f := fallback(t, s, st)
	if h := hitWithin(t, f, "before"); h.Count != 1 || !f.Up() {
		t.Fatalf("healthy: %+v, up %v", h, f.Up())
	}
	primary.Kill()
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	for i := 0; ; i++ {
		if time.Now().After(deadline) {
			p, err := redistest.MasterPort(sentinel)
			t.Fatalf("no failover after 60s: up %v, master port %d (%v), replica %d\n%s", f.Up(), p, err, replica.Port, sentinel.Log())
		}
		hitWithin(t, f, "during"+strconv.Itoa(i))
		if f.Up() {
			if p, err := redistest.MasterPort(sentinel); err == nil && p == replica.Port {
				if _, err := s.Hit(ctx, "after", 1, rate); err == nil {
					break
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("failover seen after %v; state changes %v", time.Since(start), st.get())
	changes := st.get()
	if len(changes) < 2 || changes[0] || !changes[len(changes)-1] {
		t.Fatalf("state changes %v; want down first and up last", changes)
	}
	for i := 1; i < len(changes); i++ {
		if changes[i] == changes[i-1] {
			t.Fatalf("state changes %v repeat a state", changes)
		}
	}
	// the promoted replica holds the shared state: a hit through the
	// Fallback is counted with the direct one above
	if h := hitWithin(t, f, "after"); h.Count != 2 {
		t.Fatalf("hit after failover: %+v; want count 2 (shared with the direct hit)", h)
	}

	switched := false
	for _, rec := range logRecords(t, logs) {
		if rec.Level != "DEBUG" && rec.Level != "INFO" {
			t.Errorf("go-redis logged %+v during a failover; want nothing above Info", rec)
		}
		if strings.Contains(rec.Msg, "dial tcp "+primary.Addr()) && rec.Level != "DEBUG" {
			t.Errorf("a failed dial to the dead primary logged %+v; want Debug", rec)
		}
		if strings.HasPrefix(rec.Msg, "sentinel: new master") && strings.Contains(rec.Msg, replica.Addr()) {
			switched = rec.Level == "INFO" && rec.Component == "redis"
		}
	}
	if !switched {
		t.Fatalf("no Info record of the switch to %s from go-redis in:\n%s", replica.Addr(), logs.String())
	}
}
