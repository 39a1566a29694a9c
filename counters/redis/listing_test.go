package redisstore_test

import (
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	redisstore "github.com/sessioncap/sessioncap/counters/redis"
	"github.com/sessioncap/sessioncap/internal/redistest"
	"github.com/sessioncap/sessioncap/limits"
)

// banMany bans n distinct /32 keys in s, 64 at a time.
func banMany(t *testing.T, s *redisstore.Store, n int) {
	t.Helper()
	var wg sync.WaitGroup
	var failed atomic.Int64
	next := atomic.Int64{}
	for g := 0; g < 64; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				if _, err := s.Ban(ctx, manyKey(int(i)), time.Hour, "manual: spam run"); err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d of %d bans failed", failed.Load(), n)
	}
}

func manyKey(i int) string {
	return limits.StoreKey(limits.KeyFrequency, "", netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32))
}

// listsEveryBan lists through a Fallback whose store timeout a listing of n
// bans far exceeds: every ban is listed, the breaker stays closed, and a
// hit on a banned key right after still sees the shared ban.
func listsEveryBan(t *testing.T, s *redisstore.Store, n int) {
	t.Helper()
	st := &states{}
	f, err := counters.NewFallback(s, counters.NewMemory(counters.MemoryOptions{Host: "mx1"}), counters.FallbackOptions{
		Timeout: timeout, ProbeInterval: 50 * time.Millisecond, OnStateChange: st.change,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	bans, err := f.Bans(ctx)
	took := time.Since(start)
	if err != nil || len(bans) != n {
		t.Fatalf("listing %d bans: %d listed, %v", n, len(bans), err)
	}
	t.Logf("%d bans listed through the Fallback in %v (store timeout %v)", n, took, timeout)
	keys := make([]string, len(bans))
	for i, b := range bans {
		keys[i] = b.Key
	}
	slices.Sort(keys)
	if len(slices.Compact(keys)) != n {
		t.Fatalf("the listing repeats keys")
	}
	if !f.Up() || len(st.get()) != 0 {
		t.Fatalf("listing changed the breaker: up %v, changes %v", f.Up(), st.get())
	}
	if h := hitWithin(t, f, manyKey(n/2)); h.BannedUntil.IsZero() {
		t.Fatalf("a key banned in Redis, hit after the listing: %+v", h)
	}
}

// TestBansListedInFullWithoutTrippingTheBreaker: 100 000 bans in Redis are
// all listed by the admin API's path, however long that takes against the
// store timeout, and admissions keep using Redis.
func TestBansListedInFullWithoutTrippingTheBreaker(t *testing.T) {
	if testing.Short() {
		t.Skip("bans 100 000 keys")
	}
	const n = 100_000
	srv := redistest.Standalone(t)
	s := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, KeyPrefix: newPrefix(), Host: "mx1"})
	banMany(t, s, n)
	listsEveryBan(t, s, n)
}

// TestBansListedInFullOnCluster: the same on a Cluster of three primaries.
func TestBansListedInFullOnCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("bans 100 000 keys")
	}
	const n = 100_000
	nodes := redistest.Cluster(t)
	s := open(t, redisstore.Options{Addresses: []string{nodes[0].Addr()}, Cluster: true, KeyPrefix: newPrefix(), Host: "mx1"})
	banMany(t, s, n)
	listsEveryBan(t, s, n)
}

// TestBreakerStaysOpenWhileRedisRefusesWrites: a Redis that answers PING
// but refuses every write (maxmemory reached with noeviction) keeps the
// breaker open, probe after probe, instead of closing it at every probe for
// the next hit to open it again; it closes once writes succeed.
func TestBreakerStaysOpenWhileRedisRefusesWrites(t *testing.T) {
	srv := redistest.Standalone(t, "--maxmemory-policy", "noeviction")
	s := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, KeyPrefix: newPrefix(), Host: "mx1"})
	st := &states{}
	var probes, failedProbes atomic.Int64
	f, err := counters.NewFallback(s, counters.NewMemory(counters.MemoryOptions{Host: "mx1"}), counters.FallbackOptions{
		Timeout: timeout, ProbeInterval: 10 * time.Millisecond, OnStateChange: st.change,
		Observe: func(op string, _ time.Duration, err error) {
			if op == "ping" {
				if probes.Add(1); err != nil {
					failedProbes.Add(1)
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hitWithin(t, f, "a")
	if _, err := redistest.Do(srv.Addr(), "CONFIG", "SET", "maxmemory", "1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("PING with maxmemory reached: %v; the test needs a Redis that still answers it", err)
	}
	for deadline := time.Now().Add(10 * time.Second); failedProbes.Load() < 10; {
		hitWithin(t, f, "a")
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d probes failed in 10s", failedProbes.Load(), probes.Load())
		}
		time.Sleep(2 * time.Millisecond)
	}
	if f.Up() || !slices.Equal(st.get(), []bool{false}) {
		t.Fatalf("Redis refusing writes, after %d probes: up %v, state changes %v; want open once, [false]", probes.Load(), f.Up(), st.get())
	}
	if _, err := redistest.Do(srv.Addr(), "CONFIG", "SET", "maxmemory", "0"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !f.Up(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not up 10s after Redis took writes again")
		}
	}
	if !slices.Equal(st.get(), []bool{false, true}) {
		t.Fatalf("state changes %v; want [false true]", st.get())
	}
}
