package counters

import (
	"bytes"
	"context"
	"io"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

func saveKey(i int) string {
	return limits.StoreKey(limits.KeyFrequency, "", netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32))
}

// TestSaveDoesNotHoldUpHits: while Save renders the keys (held there by a
// hook), hits, bans and new keys go through, and the file Save writes is
// the snapshot it took, complete and in recency order.
func TestSaveDoesNotHoldUpHits(t *testing.T) {
	now := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	m := NewMemory(MemoryOptions{Now: func() time.Time { return now }})
	r := limits.Rate{Max: 100, Window: time.Hour}
	for i := range 1000 {
		m.Hit(context.Background(), saveKey(i), 1, r)
	}
	rendering, release := make(chan struct{}), make(chan struct{})
	m.saveHook = func() { close(rendering); <-release }
	var out bytes.Buffer
	saved := make(chan error, 1)
	go func() { saved <- m.Save(&out, nil) }()
	<-rendering
	hits := make(chan error, 1)
	go func() {
		for i := range 100 {
			if _, err := m.Hit(context.Background(), saveKey(1000+i), 1, r); err != nil {
				hits <- err
				return
			}
		}
		_, err := m.Ban(context.Background(), saveKey(5000), time.Hour, "manual")
		hits <- err
	}()
	select {
	case err := <-hits:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second): // a hang guard: the hits wait for Save's lock
		close(release)
		t.Fatal("hits did not go through while Save was rendering")
	}
	close(release)
	if err := <-saved; err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 1002 || lines[0] != stateMagic || lines[len(lines)-1] != stateEnd {
		t.Fatalf("saved %d lines (%q … %q); want the header, the 1000 keys of the snapshot and the end", len(lines), lines[0], lines[len(lines)-1])
	}
	if !strings.Contains(lines[1], `"`+saveKey(0)+`"`) || !strings.Contains(lines[1000], `"`+saveKey(999)+`"`) {
		t.Fatalf("not in recency order: first %s, last %s", lines[1], lines[1000])
	}
	m2 := NewMemory(MemoryOptions{Now: func() time.Time { return now }})
	if w, b, err := m2.Load(&out); err != nil || w != 1000 || b != 0 {
		t.Fatalf("loading the snapshot: %d windows, %d bans, %v", w, b, err)
	}
}

// BenchmarkHitDuringSave measures the worst hit latency while Save writes
// a store of 1 000 000 keys over and over (max-hit-µs), against the median.
//
//	go test -run '^$' -bench BenchmarkHitDuringSave -benchtime 200000x ./counters/
func BenchmarkHitDuringSave(b *testing.B) {
	m := NewMemory(MemoryOptions{})
	r := limits.Rate{Max: 100, Window: time.Hour}
	for i := range 1_000_000 {
		m.Hit(context.Background(), saveKey(i), 1, r)
	}
	var stop atomic.Bool
	saves := make(chan int)
	go func() {
		n := 0
		for !stop.Load() {
			m.Save(io.Discard, nil)
			n++
		}
		saves <- n
	}()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := time.Now()
		m.Hit(context.Background(), saveKey(i%1000), 1, r)
		lat = append(lat, time.Since(s))
	}
	b.StopTimer()
	stop.Store(true)
	n := <-saves
	var worst time.Duration
	for _, d := range lat {
		worst = max(worst, d)
	}
	b.ReportMetric(float64(worst.Microseconds()), "max-hit-µs")
	b.ReportMetric(float64(n), "saves")
}

// BenchmarkSave measures one Save of a store of 1 000 000 keys, nothing
// else running.
//
//	go test -run '^$' -bench 'BenchmarkSave$' -benchtime 10x ./counters/
func BenchmarkSave(b *testing.B) {
	m := NewMemory(MemoryOptions{})
	r := limits.Rate{Max: 100, Window: time.Hour}
	for i := range 1_000_000 {
		m.Hit(context.Background(), saveKey(i), 1, r)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := m.Save(io.Discard, nil); err != nil {
			b.Fatal(err)
		}
	}
}
