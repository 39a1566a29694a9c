package counters

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// refStore is the obvious implementation of Memory's windows and bans (a
// map of strings and a recency list), against which the compact one is
// checked. Its ban table is unbounded: the test keeps Memory's large enough.
type refStore struct {
	max     int
	windows map[string]limits.Window
	order   []string // least recently seen first
	bans    map[string]int64
}

func (r *refStore) touch(key string) {
	if i := slices.Index(r.order, key); i >= 0 {
		r.order = slices.Delete(r.order, i, i+1)
	}
	r.order = append(r.order, key)
}

func (r *refStore) hit(key string, n, now int64, rate limits.Rate) limits.Hit {
	until := r.bans[key]
	if until <= now {
		delete(r.bans, key)
		until = 0
	}
	if until == 0 && rate.Max <= 0 {
		return limits.Hit{Now: time.UnixMilli(now)}
	}
	w, tracked := r.windows[key]
	h, newUntil := limits.Apply(&w, until, now, n, rate)
	if newUntil != until && newUntil != 0 {
		r.bans[key] = newUntil
	}
	if until != 0 {
		return h
	}
	if n <= 0 && !h.Crossed { // a peek stores nothing
		return h
	}
	if !tracked {
		if w == (limits.Window{}) {
			return h
		}
		for len(r.order) >= r.max {
			delete(r.windows, r.order[0])
			r.order = r.order[1:]
		}
	}
	r.windows[key] = w
	r.touch(key)
	return h
}

// TestMemoryMatchesReference drives Memory and refStore with the same random
// hits, unbans and bound changes over keys of every form the compact layout
// tells apart (IPv4, IPv6, IPv4-mapped IPv6, scopes, a non-canonical
// spelling of a prefix, keys that are no StoreKey at all), and compares
// every answer, then the internal invariants and a save/load round trip.
func TestMemoryMatchesReference(t *testing.T) {
	var keys []string
	for i := range 60 {
		keys = append(keys,
			fmt.Sprintf("freq:10.0.%d.%d/32", i/8, i),
			fmt.Sprintf("freq:override2:10.0.%d.%d/24", i/8, i), // not masked: kept as written
			fmt.Sprintf("freq:2001:db8::%x/64", i),
			fmt.Sprintf("freq:2001:DB8::%x/64", i), // another spelling: another key
			fmt.Sprintf("freq:::ffff:10.0.0.%d/128", i),
			fmt.Sprintf("kind%d:192.0.2.%d/32", i%3, i),
			fmt.Sprintf("opaque-%d", i),
		)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.UnixMilli(1_700_000_000_000)
	m := NewMemory(MemoryOptions{MaxTracked: 100, MaxBans: 1 << 20, Now: func() time.Time { return now }})
	ref := &refStore{max: 100, windows: map[string]limits.Window{}, bans: map[string]int64{}}
	ctx := context.Background()
	for op := range 30_000 {
		now = now.Add(time.Duration(rng.IntN(400)) * time.Millisecond)
		key := keys[rng.IntN(len(keys))]
		switch x := rng.IntN(100); {
		case x < 2: // change the bound, sometimes below what is tracked
			b := 20 + rng.IntN(150)
			m.SetBounds(b, 1<<20)
			ref.max = b
		case x < 5:
			m.Unban(ctx, key)
			delete(ref.bans, key)
			if _, ok := ref.windows[key]; ok {
				ref.windows[key] = limits.Window{}
			}
		default:
			rate := limits.Rate{Max: int64(1 + rng.IntN(8)), Window: time.Duration(1+rng.IntN(20)) * time.Second, Ban: time.Duration(rng.IntN(3)) * time.Second}
			if x < 8 {
				rate.Max = 0 // only asks about a ban
			}
			n := int64(rng.IntN(3))
			got, err := m.Hit(ctx, key, n, rate)
			if err != nil {
				t.Fatal(err)
			}
			if want := ref.hit(key, n, now.UnixMilli(), rate); !got.BannedUntil.Equal(want.BannedUntil) || got.Count != want.Count || got.Crossed != want.Crossed {
				t.Fatalf("op %d: Hit(%q, %d, %+v) = %+v, want %+v", op, key, n, rate, got, want)
			}
		}
		if st, _ := m.Stats(ctx); st.Tracked != int64(len(ref.windows)) {
			t.Fatalf("op %d: tracked %d, want %d", op, st.Tracked, len(ref.windows))
		}
	}
	checkInvariants(t, m)

	// The recency order and windows are those of the reference, keys
	// rebuilt exactly as they were given.
	var got []string
	for i := m.tail; i >= 0; i = m.slots[i].prev {
		k := m.keyString(m.slots[i].key)
		got = append(got, k)
		if m.slots[i].w != ref.windows[k] {
			t.Fatalf("window of %q: %+v, want %+v", k, m.slots[i].w, ref.windows[k])
		}
	}
	if !slices.Equal(got, ref.order) {
		t.Fatalf("recency order\n%q\nwant\n%q", got, ref.order)
	}

	var saved, again bytes.Buffer
	if err := m.Save(&saved, nil); err != nil {
		t.Fatal(err)
	}
	m2 := NewMemory(MemoryOptions{MaxTracked: 1000, MaxBans: 1 << 20, Now: func() time.Time { return now }})
	if _, _, err := m2.Load(bytes.NewReader(saved.Bytes())); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, m2)
	m2.Save(&again, nil)
	// Bans are written in map order: compare the windows, in order.
	windowLines := func(b []byte) [][]byte {
		return slices.DeleteFunc(bytes.Split(b, []byte("\n")), func(l []byte) bool { return bytes.Contains(l, []byte(`"b":`)) })
	}
	if !slices.EqualFunc(windowLines(saved.Bytes()), windowLines(again.Bytes()), bytes.Equal) {
		t.Fatalf("save, load, save differs:\n%s\n%s", saved.Bytes(), again.Bytes())
	}
}

// A flood of keys that are no StoreKey keeps its names bounded by the
// tracked keys.
func TestMemoryNamesBounded(t *testing.T) {
	m := NewMemory(MemoryOptions{MaxTracked: 10})
	for i := range 10_000 {
		m.Hit(context.Background(), fmt.Sprintf("opaque-%d", i), 1, limits.Rate{Max: 5, Window: time.Minute})
	}
	checkInvariants(t, m)
	if live := len(m.names.ids); live != 10 || len(m.names.list) > 11 {
		t.Fatalf("%d names live, %d allocated, for 10 tracked keys", live, len(m.names.list))
	}
}

// checkInvariants: the list links every slot once, the index finds every
// slot, and the names count one reference per slot.
func checkInvariants(t *testing.T, m *Memory) {
	t.Helper()
	seen, prev := 0, int32(-1)
	for i := m.head; i >= 0; i = m.slots[i].next {
		if m.slots[i].prev != prev {
			t.Fatalf("slot %d: prev %d, want %d", i, m.slots[i].prev, prev)
		}
		if p, j := m.index.find(m.slots, m.slots[i].key); j != i || m.index.table[p] != i+1 {
			t.Fatalf("index finds slot %d at %d for slot %d", j, p, i)
		}
		prev = i
		if seen++; seen > len(m.slots) {
			t.Fatal("the recency list has a cycle")
		}
	}
	if seen != len(m.slots) || m.tail != prev || m.index.n != len(m.slots) {
		t.Fatalf("list holds %d of %d slots (tail %d, last %d), index %d", seen, len(m.slots), m.tail, prev, m.index.n)
	}
	refs := map[uint32]int{}
	for _, s := range m.slots {
		refs[s.key.name]++
	}
	for id, n := range refs {
		if m.names.list[id].refs != n || m.names.ids[m.names.list[id].s] != id {
			t.Fatalf("name %d (%q): %d references counted, %d slots", id, m.names.list[id].s, m.names.list[id].refs, n)
		}
	}
	if len(m.names.ids) != len(refs) {
		t.Fatalf("%d names, %d in use", len(m.names.ids), len(refs))
	}
}
