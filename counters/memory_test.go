package counters

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

var (
	ctx = context.Background()
	t0  = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
)

func key(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
}

func TestEvictsLeastRecentlySeen(t *testing.T) {
	m := NewMemory(3)
	p := limits.Policy{Frequency: limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: time.Hour}}
	// ban key 0, then touch 1 and 2, then 0 again (refused, but seen: most recent)
	for _, k := range []int{0, 0, 1, 2, 0} {
		if _, err := m.Admit(ctx, key(k), t0, p, limits.ModeEnforce); err != nil {
			t.Fatal(err)
		}
	}
	if st := m.Stats(t0); st.Tracked != 3 || st.Banned != 1 {
		t.Fatalf("stats %+v, want 3 tracked, 1 banned", st)
	}
	// a fourth key evicts the least recently seen: key 1, not the banned key 0
	if _, err := m.Admit(ctx, key(3), t0, p, limits.ModeEnforce); err != nil {
		t.Fatal(err)
	}
	st := m.Stats(t0)
	if st.Tracked != 3 || st.Evictions != 1 {
		t.Fatalf("stats %+v, want 3 tracked and 1 eviction", st)
	}
	a, _ := m.Admit(ctx, key(0), t0, p, limits.ModeEnforce)
	if a.Verdict != limits.RefusedBanned {
		t.Fatalf("key 0 lost its ban: verdict %d", a.Verdict)
	}
	// key 1 was evicted: its window starts over (and evicts key 2)
	a, _ = m.Admit(ctx, key(1), t0, p, limits.ModeEnforce)
	if a.Verdict != limits.Admitted || a.Connections != 1 {
		t.Fatalf("key 1 should start over: %+v", a)
	}
	if st := m.Stats(t0); st.Tracked != 3 || st.Evictions != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestBoundHoldsUnderManyAddresses(t *testing.T) {
	m := NewMemory(1000)
	p := limits.Defaults()
	for i := 0; i < 50_000; i++ {
		a, _ := m.Admit(ctx, key(i), t0, p, limits.ModeEnforce)
		if a.Open {
			_ = m.Release(ctx, key(i))
		}
	}
	st := m.Stats(t0)
	if st.Tracked != 1000 || st.Evictions != 49_000 || st.Active != 0 {
		t.Fatalf("stats %+v", st)
	}
	if len(m.active) != 0 {
		t.Fatalf("active map holds %d keys after every release", len(m.active))
	}
}

func TestConcurrencyCountsComeBack(t *testing.T) {
	m := NewMemory(10)
	p := limits.Policy{Concurrency: limits.Concurrency{MaxPerAddress: 2, MaxTotal: 3}}
	admit := func(k int) limits.Verdict {
		a, err := m.Admit(ctx, key(k), t0, p, limits.ModeEnforce)
		if err != nil {
			t.Fatal(err)
		}
		return a.Verdict
	}
	for i, tc := range []struct {
		k    int
		want limits.Verdict
	}{{1, limits.Admitted}, {1, limits.Admitted}, {1, limits.RefusedConcurrencyAddress}, {2, limits.Admitted}, {3, limits.RefusedConcurrencyTotal}} {
		if got := admit(tc.k); got != tc.want {
			t.Fatalf("admission %d of key %d: %d, want %d", i, tc.k, got, tc.want)
		}
	}
	_ = m.Release(ctx, key(1))
	if got := admit(3); got != limits.Admitted {
		t.Fatalf("after a release: %d", got)
	}
	for _, k := range []int{1, 2, 3, 3, 9} { // extra releases are ignored
		_ = m.Release(ctx, key(k))
	}
	if st := m.Stats(t0); st.Active != 0 {
		t.Fatalf("active %d after releasing everything", st.Active)
	}
}

func TestBanExpiryAndUnban(t *testing.T) {
	m := NewMemory(10)
	p := limits.Policy{Frequency: limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: time.Minute}}
	m.Admit(ctx, key(1), t0, p, limits.ModeEnforce)
	m.Admit(ctx, key(1), t0, p, limits.ModeEnforce)
	m.Admit(ctx, key(2), t0, p, limits.ModeEnforce)
	m.Admit(ctx, key(2), t0, p, limits.ModeEnforce)
	if st := m.Stats(t0); st.Banned != 2 {
		t.Fatalf("banned %d, want 2", st.Banned)
	}
	if !m.Unban(key(1), t0) {
		t.Fatal("Unban of a banned key reported false")
	}
	if m.Unban(key(5), t0) {
		t.Fatal("Unban of an unknown key reported true")
	}
	if a, _ := m.Admit(ctx, key(1), t0, p, limits.ModeEnforce); a.Verdict != limits.Admitted {
		t.Fatalf("after unban: %d", a.Verdict)
	}
	if st := m.Stats(t0.Add(time.Minute)); st.Banned != 0 {
		t.Fatalf("expired bans still counted: %d", st.Banned)
	}
}

func TestConcurrentUse(t *testing.T) {
	m := NewMemory(100)
	p := limits.Policy{Concurrency: limits.Concurrency{MaxPerAddress: 1000}}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				k := key(i % 150)
				if a, _ := m.Admit(ctx, k, t0, p, limits.ModeEnforce); a.Open {
					_ = m.Release(ctx, k)
				}
			}
		}(g)
	}
	wg.Wait()
	if st := m.Stats(t0); st.Active != 0 || st.Tracked > 100 {
		t.Fatalf("stats %+v", st)
	}
}

func BenchmarkAdmitRelease(b *testing.B) {
	m := NewMemory(DefaultMaxTracked)
	p := limits.Defaults()
	keys := make([]netip.Prefix, 4096)
	for i := range keys {
		keys[i] = key(i)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		k := keys[i%len(keys)]
		if a, _ := m.Admit(ctx, k, t0.Add(time.Duration(i)*time.Millisecond), p, limits.ModeEnforce); a.Open {
			_ = m.Release(ctx, k)
		}
	}
}

func ExampleMemory() {
	m := NewMemory(1000)
	p := limits.Policy{Frequency: limits.Frequency{MaxConnections: 2, Window: time.Minute, Ban: 10 * time.Minute}}
	k := netip.MustParsePrefix("192.0.2.7/32")
	for i := 0; i < 4; i++ {
		a, _ := m.Admit(context.Background(), k, t0.Add(time.Duration(i)*time.Second), p, limits.ModeEnforce)
		fmt.Println(i+1, a.Verdict == limits.Admitted)
	}
	// Output:
	// 1 true
	// 2 true
	// 3 false
	// 4 false
}
