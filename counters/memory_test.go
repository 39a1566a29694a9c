package counters_test

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/counters/storetest"
	"github.com/sessioncap/sessioncap/limits"
)

var ctx = context.Background()

func TestMemoryConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, clock *storetest.Clock, host string) counters.Store {
		return counters.NewMemory(counters.MemoryOptions{MaxTracked: 1000, Now: clock.Now, Host: host})
	})
}

func key(i int) string { return fmt.Sprintf("freq:10.%d.%d.%d/32", byte(i>>16), byte(i>>8), byte(i)) }

var rate = limits.Rate{Max: 1, Window: time.Minute, Ban: time.Hour, Reason: "frequency"}

func TestEvictsLeastRecentlySeen(t *testing.T) {
	clock := storetest.NewClock()
	m := counters.NewMemory(counters.MemoryOptions{MaxTracked: 3, Now: clock.Now})
	hit := func(k int) limits.Hit {
		t.Helper()
		h, err := m.Hit(ctx, key(k), 1, limits.Rate{Max: 10, Window: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	for _, k := range []int{0, 0, 1, 2, 0} {
		hit(k)
	}
	hit(3) // evicts key 1, the least recently seen, not key 0
	st, _ := m.Stats(ctx)
	if st.Tracked != 3 || st.Evictions != 1 {
		t.Fatalf("stats %+v, want 3 tracked and 1 eviction", st)
	}
	if h := hit(0); h.Count != 4 {
		t.Fatalf("key 0 lost its window: count %d", h.Count)
	}
	if h := hit(1); h.Count != 1 {
		t.Fatalf("key 1 should start over: count %d", h.Count)
	}
}

// A flood of new keys must not evict a ban: bans are bounded apart.
func TestBansSurviveAFloodOfKeys(t *testing.T) {
	clock := storetest.NewClock()
	m := counters.NewMemory(counters.MemoryOptions{MaxTracked: 100, MaxBans: 10, Now: clock.Now})
	for _, n := range []int64{1, 1} {
		m.Hit(ctx, "freq:192.0.2.0/24", n, rate)
	}
	for i := 0; i < 10_000; i++ {
		if _, err := m.Hit(ctx, key(i), 1, rate); err != nil {
			t.Fatal(err)
		}
	}
	if h, _ := m.Hit(ctx, "freq:192.0.2.0/24", 1, rate); h.BannedUntil.IsZero() {
		t.Fatal("a banned network was admitted again after a flood of new prefixes")
	}
	st, _ := m.Stats(ctx)
	if st.Tracked != 100 || st.Banned != 1 {
		t.Fatalf("stats %+v, want 100 tracked, 1 banned", st)
	}
}

// When the ban table is full, the ban that ends soonest makes room.
func TestBanTableBound(t *testing.T) {
	clock := storetest.NewClock()
	m := counters.NewMemory(counters.MemoryOptions{MaxBans: 3, Now: clock.Now})
	for i, d := range []time.Duration{time.Hour, time.Minute, 2 * time.Hour, 3 * time.Hour} {
		if _, err := m.Ban(ctx, key(i), d, "manual"); err != nil {
			t.Fatal(err)
		}
	}
	bans, _ := m.Bans(ctx)
	var got []string
	for _, b := range bans {
		got = append(got, b.Key)
	}
	if want := []string{key(0), key(2), key(3)}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("bans %v, want %v (the one-minute ban evicted)", got, want)
	}
	if st, _ := m.Stats(ctx); st.Evictions != 1 {
		t.Fatalf("evictions %d, want 1", st.Evictions)
	}
}

func TestBoundHoldsUnderManyKeys(t *testing.T) {
	m := counters.NewMemory(counters.MemoryOptions{MaxTracked: 1000})
	for i := 0; i < 50_000; i++ {
		m.Hit(ctx, key(i), 1, limits.Rate{Max: 10, Window: time.Minute})
	}
	if st, _ := m.Stats(ctx); st.Tracked != 1000 || st.Evictions != 49_000 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLeases(t *testing.T) {
	l := counters.NewLeases()
	c := limits.Concurrency{MaxPerAddress: 2, MaxTotal: 3}
	var held []*counters.Lease
	for i, tc := range []struct {
		key  string
		want limits.Verdict
	}{{"a", limits.Admitted}, {"a", limits.Admitted}, {"a", limits.RefusedConcurrencyAddress}, {"b", limits.Admitted}, {"c", limits.RefusedConcurrencyTotal}} {
		lease, v, _, _ := l.Acquire(tc.key, c, false)
		if v != tc.want || (lease != nil) != (v == limits.Admitted) {
			t.Fatalf("acquire %d of %s: verdict %d, lease %v; want %d", i, tc.key, v, lease != nil, tc.want)
		}
		if lease != nil {
			held = append(held, lease)
		}
	}
	held[0].Release()
	held[0].Release() // idempotent: must not free a second slot
	if _, v, active, total := l.Acquire("a", c, false); v != limits.Admitted || active != 1 || total != 2 {
		t.Fatalf("after one release: verdict %d, active %d, total %d", v, active, total)
	}
	if lease, v, _, _ := l.Acquire("z", limits.Concurrency{MaxTotal: 1}, true); lease == nil || v != limits.RefusedConcurrencyTotal {
		t.Fatalf("forced acquire: lease %v verdict %d", lease, v)
	}
}

func TestLeasesConcurrentUse(t *testing.T) {
	l := counters.NewLeases()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				lease, _, _, _ := l.Acquire(key(i%150), limits.Concurrency{MaxPerAddress: 1000}, false)
				lease.Release()
				lease.Release()
			}
		}(g)
	}
	wg.Wait()
	if l.Total() != 0 || l.Keys() != 0 {
		t.Fatalf("total %d, keys %d after releasing everything", l.Total(), l.Keys())
	}
}

func BenchmarkHit(b *testing.B) {
	clock := storetest.NewClock()
	m := counters.NewMemory(counters.MemoryOptions{Now: clock.Now})
	keys := make([]string, 4096)
	for i := range keys {
		keys[i] = key(i)
	}
	r := limits.Frequency{MaxConnections: 120, Window: time.Minute, Ban: 5 * time.Minute}.Rate()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		m.Hit(ctx, keys[i%len(keys)], 1, r)
	}
}

func ExampleMemory() {
	clock := storetest.NewClock()
	m := counters.NewMemory(counters.MemoryOptions{Now: clock.Now})
	r := limits.Rate{Max: 2, Window: time.Minute, Ban: 10 * time.Minute}
	for i := 0; i < 4; i++ {
		h, _ := m.Hit(context.Background(), "freq:192.0.2.7/32", 1, r)
		fmt.Println(i+1, h.BannedUntil.IsZero())
		clock.Add(time.Second)
	}
	// Output:
	// 1 true
	// 2 true
	// 3 false
	// 4 false
}

// BenchmarkMemoryPerKey reports the heap each tracked key costs: run with
// -benchtime=1x (it tracks 1M keys once, each key as the store keeps it).
// go run ./bench/memory measures more (IPv6 keys, a flood).
func BenchmarkMemoryPerKey(b *testing.B) {
	const n = 1_000_000
	r := limits.Rate{Max: 100, Window: time.Minute, Ban: time.Minute}
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		m := counters.NewMemory(counters.MemoryOptions{MaxTracked: n})
		for i := 0; i < n; i++ { // keys made as the milter makes them, retained by the store
			m.Hit(ctx, limits.StoreKey(limits.KeyFrequency, "", netip.PrefixFrom(netip.AddrFrom4([4]byte{10 + byte(i>>16), byte(i >> 8), byte(i), 0}), 24)), 1, r)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/key")
		runtime.KeepAlive(m)
	}
}

// The shared-state suite holds for the reference store: one Memory seen as
// both hosts (its bans are recorded as host "mx-a").
func TestMemoryShared(t *testing.T) {
	clock := storetest.NewClock()
	m := counters.NewMemory(counters.MemoryOptions{Now: clock.Now, Host: "mx-a"})
	storetest.RunShared(t, m, m, clock)
}
