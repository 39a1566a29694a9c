package counters

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// DefaultMaxTracked is the default bound on keys with a sliding window.
const DefaultMaxTracked = 1_000_000

// DefaultMaxBans is the default bound on bans in force.
const DefaultMaxBans = 100_000

// Memory is the in-memory store of one daemon, safe for concurrent use.
// Windows live in a map bounded by maxTracked with least-recently-seen
// eviction; bans live apart, bounded by maxBans, so a flood of new keys never
// evicts a ban (when the ban table is full, the ban that ends soonest goes).
type Memory struct {
	mu        sync.Mutex
	now       func() time.Time
	host      string
	max       int
	maxBans   int
	windows   map[string]*entry
	head      *entry // most recently seen
	tail      *entry // least recently seen
	bans      map[string]*Ban
	evictions uint64
}

type entry struct {
	key        string
	w          limits.Window
	prev, next *entry
}

// MemoryOptions configure NewMemory; zero values take the defaults.
type MemoryOptions struct {
	MaxTracked int              // DefaultMaxTracked when <= 0
	MaxBans    int              // DefaultMaxBans when <= 0
	Now        func() time.Time // time.Now when nil
	Host       string           // recorded with the bans this store makes
}

// NewMemory returns an empty in-memory store.
func NewMemory(o MemoryOptions) *Memory {
	m := &Memory{now: o.Now, host: o.Host, windows: make(map[string]*entry), bans: make(map[string]*Ban)}
	if m.now == nil {
		m.now = time.Now
	}
	m.SetBounds(o.MaxTracked, o.MaxBans)
	return m
}

var _ Store = (*Memory)(nil)

// SetBounds changes the bounds; lower ones take effect at the next insert.
func (m *Memory) SetBounds(maxTracked, maxBans int) {
	if maxTracked <= 0 {
		maxTracked = DefaultMaxTracked
	}
	if maxBans <= 0 {
		maxBans = DefaultMaxBans
	}
	m.mu.Lock()
	m.max, m.maxBans = maxTracked, maxBans
	m.mu.Unlock()
}

// Hit implements Store with limits.Apply.
func (m *Memory) Hit(_ context.Context, key string, n int64, r limits.Rate) (limits.Hit, error) {
	now := m.now().UnixMilli()
	m.mu.Lock()
	defer m.mu.Unlock()
	var until int64
	if b := m.bans[key]; b != nil {
		if until = b.Until.UnixMilli(); until <= now {
			delete(m.bans, key)
			until = 0
		}
	}
	if until == 0 && r.Max <= 0 {
		return limits.Hit{Now: time.UnixMilli(now)}, nil
	}
	var w limits.Window
	e := m.windows[key]
	if e != nil {
		w = e.w
	}
	h, newUntil := limits.Apply(&w, until, now, n, r)
	if newUntil != until && newUntil != 0 {
		m.addBan(NewBan(key, r.Reason, h.Now, h.BannedUntil, m.host))
	}
	if until != 0 {
		return h, nil // banned: the window is not touched
	}
	if n <= 0 && !h.Crossed {
		return h, nil // a peek: counts nothing, stores nothing, keeps the eviction order
	}
	if e == nil {
		if w == (limits.Window{}) {
			return h, nil
		}
		e = &entry{key: key}
		m.windows[key] = e
		m.pushFront(e)
		for len(m.windows) > m.max {
			m.evict(m.tail)
		}
	} else if e != m.head {
		m.unlink(e)
		m.pushFront(e)
	}
	e.w = w
	return h, nil
}

// Ban implements Store.
func (m *Memory) Ban(_ context.Context, key string, d time.Duration, reason string) (Ban, error) {
	now := m.now()
	b := NewBan(key, reason, now, now.Add(d), m.host)
	m.mu.Lock()
	defer m.mu.Unlock()
	if old := m.bans[key]; old != nil && old.Until.After(b.Until) {
		return *old, nil
	}
	m.addBan(b)
	return b, nil
}

// addBan records b, evicting the ban that ends soonest when the table is
// full (expired ones first). The caller holds mu.
func (m *Memory) addBan(b Ban) {
	if _, ok := m.bans[b.Key]; !ok && len(m.bans) >= m.maxBans {
		m.pruneBans(b.Since)
		for len(m.bans) >= m.maxBans {
			var soonest *Ban
			for _, c := range m.bans {
				if soonest == nil || c.Until.Before(soonest.Until) {
					soonest = c
				}
			}
			delete(m.bans, soonest.Key)
			m.evictions++
		}
	}
	m.bans[b.Key] = &b
}

func (m *Memory) pruneBans(now time.Time) {
	for k, b := range m.bans {
		if !b.Until.After(now) {
			delete(m.bans, k)
		}
	}
}

// Unban implements Store.
func (m *Memory) Unban(_ context.Context, key string) (bool, error) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	b := m.bans[key]
	delete(m.bans, key)
	if e := m.windows[key]; e != nil {
		e.w = limits.Window{}
	}
	return b != nil && b.Until.After(now), nil
}

// Bans implements Store.
func (m *Memory) Bans(context.Context) ([]Ban, error) {
	now := m.now()
	m.mu.Lock()
	m.pruneBans(now)
	out := make([]Ban, 0, len(m.bans))
	for _, b := range m.bans {
		out = append(out, *b)
	}
	m.mu.Unlock()
	sortBans(out)
	return out, nil
}

// sortBans orders bans soonest ending first, then by key.
func sortBans(bs []Ban) {
	slices.SortFunc(bs, func(a, b Ban) int {
		if c := a.Until.Compare(b.Until); c != 0 {
			return c
		}
		if a.Key < b.Key {
			return -1
		}
		if a.Key > b.Key {
			return 1
		}
		return 0
	})
}

// Stats implements Store, dropping expired bans.
func (m *Memory) Stats(context.Context) (Stats, error) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pruneBans(now)
	return Stats{Tracked: int64(len(m.windows)), Banned: int64(len(m.bans)), Evictions: m.evictions}, nil
}

// Close implements Store; the memory store has nothing to release.
func (m *Memory) Close() error { return nil }

func (m *Memory) evict(e *entry) {
	m.unlink(e)
	delete(m.windows, e.key)
	m.evictions++
}

func (m *Memory) pushFront(e *entry) {
	e.prev, e.next = nil, m.head
	if m.head != nil {
		m.head.prev = e
	}
	m.head = e
	if m.tail == nil {
		m.tail = e
	}
}

func (m *Memory) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		m.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		m.tail = e.prev
	}
	e.prev, e.next = nil, nil
}
