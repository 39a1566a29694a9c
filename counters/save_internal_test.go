package counters

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
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
// a store of 1 000 000 keys over and over (max-hit-µs), against the worst
// of as many hits while Save writes another store as large (max-hit-
// other-µs: the same load on the CPUs and the garbage collector, no lock
// shared, so what is left of a stall once the lock is out of the way),
// and the longest Save held the store's lock at a stretch (max-hold-µs,
// which includes any time Save's goroutine waited for a CPU meanwhile).
//
//	go test -run '^$' -bench BenchmarkHitDuringSave -benchtime 3000000x ./counters/
func BenchmarkHitDuringSave(b *testing.B) {
	r := limits.Rate{Max: 100, Window: time.Hour}
	m, other := NewMemory(MemoryOptions{}), NewMemory(MemoryOptions{})
	for i := range 1_000_000 {
		m.Hit(context.Background(), saveKey(i), 1, r)
		other.Hit(context.Background(), saveKey(i), 1, r)
	}
	var locked time.Time
	var hold time.Duration
	m.saveLock = func(lock bool) {
		if lock {
			locked = time.Now()
		} else {
			hold = max(hold, time.Since(locked))
		}
	}
	// hits returns the worst of b.N hits on m while s saves over and over,
	// and how many saves it made
	hits := func(s *Memory) (worst time.Duration, saves int) {
		var stop atomic.Bool
		done := make(chan int)
		go func() {
			n := 0
			for !stop.Load() {
				s.Save(io.Discard, nil)
				n++
			}
			done <- n
		}()
		for i := 0; i < b.N; i++ {
			t := time.Now()
			m.Hit(context.Background(), saveKey(i%1000), 1, r)
			worst = max(worst, time.Since(t))
		}
		stop.Store(true)
		return worst, <-done
	}
	base, _ := hits(other)
	b.ResetTimer()
	worst, n := hits(m)
	b.StopTimer()
	b.ReportMetric(float64(worst.Microseconds()), "max-hit-µs")
	b.ReportMetric(float64(base.Microseconds()), "max-hit-other-µs")
	b.ReportMetric(float64(hold.Microseconds()), "max-hold-µs")
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

// windowLines renders the windows of m as Save writes them, least recently
// seen first. The caller holds mu.
func windowLines(t testing.TB, m *Memory) []string {
	var out []string
	for i := m.tail; i >= 0; i = m.slots[i].prev {
		s := m.slots[i]
		b, err := json.Marshal(stateWindow{Key: m.keyString(s.key), Start: s.w.Start, Prev: s.w.Prev, Curr: s.w.Curr})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

// savedLines splits a state file into its windows, bans and quota windows,
// failing on anything else or on a key written twice in one part.
func savedLines(t testing.TB, file string) (windows []string, bans, quotas []stateWindow) {
	lines := strings.Split(strings.TrimSuffix(file, "\n"), "\n")
	if len(lines) < 2 || lines[0] != stateMagic || lines[len(lines)-1] != stateEnd {
		t.Fatalf("not a state file: %.200q", file)
	}
	seen := map[string]bool{}
	for _, l := range lines[1 : len(lines)-1] {
		var w stateWindow
		if err := json.Unmarshal([]byte(l), &w); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		part := "w"
		switch {
		case w.Banned != nil:
			part = "b"
			bans = append(bans, w)
		case w.Quota != nil:
			part = "q"
			quotas = append(quotas, w)
		default:
			windows = append(windows, l)
		}
		if seen[part+w.Key] {
			t.Fatalf("%s written twice", l)
		}
		seen[part+w.Key] = true
	}
	return windows, bans, quotas
}

// TestSaveCopiesInChunks: Save holds the lock for a bounded part of the
// store at a time, however many keys it holds: it lets other calls in
// between chunks (more often the more keys there are), and what those do
// between two chunks — hits that relink the recency list, new keys that
// evict the least recently seen and move the last slot into the hole, new
// names, unbans, bans and quota windows — neither tears nor repeats nor
// skips a key: the windows written are exactly the store as it was when
// Save began; a quota window counted meanwhile is written once, in the
// order it was counted last; a ban lifted and made again is written once.
func TestSaveCopiesInChunks(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	steps := map[int]int{}
	for _, n := range []int{3*saveChunk + 17, 12 * saveChunk} {
		m := NewMemory(MemoryOptions{MaxTracked: n, Now: func() time.Time { return now }})
		r := limits.Rate{Max: 1000, Window: time.Hour}
		for i := range n {
			m.Hit(ctx, saveKey(i), 1, r)
		}
		quotaKey := func(i int) string { return fmt.Sprintf("quota:q:sender:%d@example.org", i) }
		const nq = 2*saveChunk + 5
		for i := range nq {
			m.Quota(ctx, []limits.QuotaOp{{Key: quotaKey(i), Window: time.Hour, Limit: 1 << 40, Add: 1}})
		}
		m.Ban(ctx, saveKey(1), time.Hour, "one")
		var want []string
		m.saveBegun = func() { want = windowLines(t, m) }
		var recounted []string
		m.saveStep = func() {
			k := steps[n]
			steps[n]++
			// a key from the least recently seen end to the front, a key
			// from the other end, a new key evicting the least recently
			// seen one (the last slot moves into its hole), a key that is
			// not a prefix (a new name), a ban lifted and made again
			m.Hit(ctx, saveKey(2*k), 1, r)
			m.Hit(ctx, saveKey(n-1-k), 1, r)
			m.Hit(ctx, saveKey(n+k), 1, r)
			m.Hit(ctx, fmt.Sprintf("other-%d", k), 1, r)
			m.Unban(ctx, saveKey(1))
			m.Ban(ctx, saveKey(1), time.Hour, fmt.Sprint(k))
			q := quotaKey(k % nq)
			if k%2 == 1 { // forgotten and counted again
				m.ResetQuota(ctx, []string{q})
			}
			m.Quota(ctx, []limits.QuotaOp{{Key: q, Window: time.Hour, Limit: 1 << 40, Add: 1}})
			recounted = slices.DeleteFunc(recounted, func(s string) bool { return s == q })
			recounted = append(recounted, q)
		}
		var out bytes.Buffer
		if err := m.Save(&out, nil); err != nil {
			t.Fatal(err)
		}
		if steps[n] < n/saveChunk {
			t.Fatalf("%d keys: Save let other calls in %d times, want at least %d (one a chunk of %d)", n, steps[n], n/saveChunk, saveChunk)
		}
		windows, bans, quotas := savedLines(t, out.String())
		if len(windows) != len(want) || len(want) != n {
			t.Fatalf("%d keys: %d windows saved, %d at the start", n, len(windows), len(want))
		}
		for i := range want {
			if windows[i] != want[i] {
				t.Fatalf("%d keys: window %d saved as %s, was %s when Save began", n, i, windows[i], want[i])
			}
		}
		if len(bans) != 1 || bans[0].Key != saveKey(1) {
			t.Fatalf("%d keys: bans saved %+v", n, bans)
		}
		if len(quotas) != nq {
			t.Fatalf("%d keys: %d quota windows saved, want %d", n, len(quotas), nq)
		}
		// a quota window counted during the Save is written either where
		// it was (copied before it was counted) or after all the others,
		// in the order they were counted; the others keep their order
		again := map[string]int{}
		for i, q := range recounted {
			again[q] = i
		}
		var kept []string
		last := -1
		for _, q := range quotas {
			j, ok := again[q.Key]
			switch {
			case !ok && last >= 0:
				t.Fatalf("%d keys: quota window %s saved after one counted during Save", n, q.Key)
			case !ok:
				kept = append(kept, q.Key)
			case last >= 0 && j < last:
				t.Fatalf("%d keys: quota windows counted during Save saved out of order: %s after %s", n, q.Key, recounted[last])
			case last >= 0 || len(kept) == nq-len(recounted):
				last = j
			}
		}
		for i := 1; i < len(kept); i++ {
			var a, b int
			fmt.Sscanf(kept[i-1], "quota:q:sender:%d@", &a)
			fmt.Sscanf(kept[i], "quota:q:sender:%d@", &b)
			if a >= b {
				t.Fatalf("%d keys: quota windows saved out of order: %s before %s", n, kept[i-1], kept[i])
			}
		}
		m2 := NewMemory(MemoryOptions{MaxTracked: n, Now: func() time.Time { return now }})
		if w, b, err := m2.Load(&out); err != nil || w != n+nq || b != 1 {
			t.Fatalf("%d keys: loading the file: %d windows, %d bans, %v", n, w, b, err)
		}
	}
	if steps[12*saveChunk] <= steps[3*saveChunk+17] {
		t.Fatalf("Save let other calls in %d times with 4x the keys, %d times with 1x: the lock is held longer with more keys", steps[12*saveChunk], steps[3*saveChunk+17])
	}
}

// TestSaveUnderLoad (for -race): hits that relink, insert and evict, bans
// and unbans, quota windows counted and forgotten, all running while Save
// saves again and again; each file has exactly the windows of the store
// when its Save began, every ban and quota window that was there
// throughout, no key twice, and loads.
func TestSaveUnderLoad(t *testing.T) {
	ctx := context.Background()
	const n = 3 * saveChunk
	m := NewMemory(MemoryOptions{MaxTracked: n})
	r := limits.Rate{Max: 1 << 20, Window: time.Hour}
	quotaOp := func(key string) []limits.QuotaOp {
		return []limits.QuotaOp{{Key: key, Window: time.Hour, Limit: 1 << 40, Add: 1}}
	}
	for i := range n {
		m.Hit(ctx, saveKey(i), 1, r)
	}
	var stable []string // bans and quota windows no one lifts or forgets
	for i := range 500 {
		k := fmt.Sprintf("stable-%d", i)
		stable = append(stable, k)
		m.Ban(ctx, k, time.Hour, "stable")
		m.Quota(ctx, quotaOp("quota:"+k))
	}
	var stop atomic.Bool
	var ops atomic.Int64
	done := make(chan struct{})
	worker := func(seed int, f func(i int)) {
		defer func() { done <- struct{}{} }()
		for i := seed; !stop.Load(); i += 7919 {
			f(i)
			ops.Add(1)
		}
	}
	go worker(1, func(i int) { m.Hit(ctx, saveKey(i%(3*n)), 1, r) })
	go worker(2, func(i int) {
		k := saveKey(i % (2 * n))
		if i%2 == 0 {
			m.Ban(ctx, k, time.Hour, "load")
		} else {
			m.Unban(ctx, k)
		}
		m.Hit(ctx, fmt.Sprintf("other-%d", i%1000), 1, r)
	})
	go worker(3, func(i int) {
		k := fmt.Sprintf("quota:%d", i%1000)
		m.Quota(ctx, quotaOp(k))
		m.Quota(ctx, quotaOp("quota:"+stable[i%len(stable)]))
		if i%3 == 0 {
			m.ResetQuota(ctx, []string{k})
		}
	})
	var want []string
	m.saveBegun = func() { want = windowLines(t, m) }
	for range 3 {
		var out bytes.Buffer
		before := ops.Load()
		if err := m.Save(&out, nil); err != nil {
			t.Fatal(err)
		}
		t.Logf("%d calls on the store during Save", ops.Load()-before)
		windows, bans, quotas := savedLines(t, out.String())
		if !slices.Equal(windows, want) {
			t.Fatalf("%d windows saved, %d when Save began; not the same", len(windows), len(want))
		}
		got := map[string]bool{}
		for _, b := range bans {
			got["b"+b.Key] = true
		}
		for _, q := range quotas {
			got["q"+q.Key] = true
		}
		for _, k := range stable {
			if !got["b"+k] || !got["q"+"quota:"+k] {
				t.Fatalf("the ban or the quota window of %s, there throughout, was not saved", k)
			}
		}
		m2 := NewMemory(MemoryOptions{MaxTracked: n})
		if w, b, err := m2.Load(&out); err != nil || w != len(windows)+len(quotas) || b != len(bans) {
			t.Fatalf("loading the file: %d windows, %d bans, %v; saved %d+%d windows, %d bans", w, b, err, len(windows), len(quotas), len(bans))
		}
	}
	stop.Store(true)
	for range 3 {
		<-done
	}
}

// TestAppendWindowIsJSON: Save's own rendering of a window line is what
// json.Encoder writes for it, whatever the key holds.
func TestAppendWindowIsJSON(t *testing.T) {
	keys := []string{
		saveKey(7),
		limits.StoreKey(limits.KeyFrequency, "scope", netip.MustParsePrefix("2001:db8:1::/64")),
		"freq:10.0.0.1/24", // not canonical: kept whole
		"k", `a"b`, `a\b`, "<x>&y", "é", "\xff", "tab\there", "del\x7f", "line\u2028sep",
	}
	windows := []limits.Window{{}, {Start: 1, Prev: 2, Curr: 3}, {Start: -5, Prev: 1<<32 - 1, Curr: 1<<32 - 1}, {Start: 1<<63 - 1}}
	m := NewMemory(MemoryOptions{})
	for _, k := range keys {
		name, ck := splitKey(k)
		m.insert(name, ck, limits.Window{Start: 1})
	}
	for i := range m.slots {
		for _, w := range windows {
			s := m.slots[i]
			s.w = w
			var want bytes.Buffer
			if err := json.NewEncoder(&want).Encode(stateWindow{Key: m.keyString(s.key), Start: w.Start, Prev: w.Prev, Curr: w.Curr}); err != nil {
				t.Fatal(err)
			}
			if got := appendWindow([]byte("x"), m.names.list, &s); string(got) != "x"+want.String() {
				t.Errorf("%q: %s, json writes %s", m.keyString(s.key), got[1:], want.Bytes())
			}
		}
	}
}
