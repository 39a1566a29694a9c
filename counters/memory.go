// Package counters stores the per-address state that outlives one SMTP
// session: connection-frequency windows, bans and open-session counts. The
// in-memory store here serves one daemon; it is bounded and evicts the
// least recently seen address first.
package counters

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// DefaultMaxTracked is the default bound on tracked address prefixes.
const DefaultMaxTracked = 1_000_000

// Memory is an in-memory store, safe for concurrent use. Frequency windows
// live in a map bounded by maxTracked with least-recently-seen eviction;
// open-session counts live apart, so eviction never loses a count that a
// running session will give back (they are bounded by open connections).
type Memory struct {
	mu        sync.Mutex
	max       int
	windows   map[netip.Prefix]*entry
	head      *entry // most recently seen
	tail      *entry // least recently seen
	active    map[netip.Prefix]int64
	total     int64
	banned    map[netip.Prefix]int64 // unix nanoseconds the ban ends; pruned lazily
	evictions uint64
}

type entry struct {
	key        netip.Prefix
	w          limits.Window
	prev, next *entry
}

// NewMemory returns a store that tracks at most maxTracked prefixes
// (DefaultMaxTracked when maxTracked <= 0).
func NewMemory(maxTracked int) *Memory {
	if maxTracked <= 0 {
		maxTracked = DefaultMaxTracked
	}
	return &Memory{
		max:     maxTracked,
		windows: make(map[netip.Prefix]*entry),
		active:  make(map[netip.Prefix]int64),
		banned:  make(map[netip.Prefix]int64),
	}
}

// SetMaxTracked changes the bound; a lower bound evicts at the next Admit.
func (m *Memory) SetMaxTracked(n int) {
	if n <= 0 {
		n = DefaultMaxTracked
	}
	m.mu.Lock()
	m.max = n
	m.mu.Unlock()
}

// Admit applies limits.Admit to key's state and counts the session as open
// when the decision says so.
func (m *Memory) Admit(_ context.Context, key netip.Prefix, now time.Time, p limits.Policy, mode limits.Mode) (limits.Admission, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.windows[key]
	if e == nil {
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
	a := limits.Admit(&e.w, m.active[key], m.total, now, p, mode)
	if a.Verdict == limits.RefusedFrequency && !a.BanUntil.IsZero() {
		m.banned[key] = a.BanUntil.UnixNano()
	}
	if a.Open {
		m.active[key]++
		m.total++
	}
	return a, nil
}

// Release gives back an open session of key. Releasing more than was opened
// is ignored.
func (m *Memory) Release(_ context.Context, key netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.active[key]
	if !ok {
		return nil
	}
	if n <= 1 {
		delete(m.active, key)
	} else {
		m.active[key] = n - 1
	}
	m.total--
	return nil
}

// Unban lifts the ban of key and clears its frequency window. It reports
// whether key was banned at now.
func (m *Memory) Unban(key netip.Prefix, now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.windows[key]
	delete(m.banned, key)
	if e == nil {
		return false
	}
	was := e.w.Banned(now)
	e.w = limits.Window{}
	return was
}

// Stats is a snapshot of the store for metrics.
type Stats struct {
	Tracked   int    // prefixes with a frequency window
	Banned    int    // prefixes banned at the time asked
	Active    int64  // open sessions counted
	Evictions uint64 // windows dropped to stay within the bound
}

// Stats returns the store's counts at now, dropping expired bans.
func (m *Memory) Stats(now time.Time) Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := now.UnixNano()
	for k, until := range m.banned {
		if t >= until {
			delete(m.banned, k)
		}
	}
	return Stats{Tracked: len(m.windows), Banned: len(m.banned), Active: m.total, Evictions: m.evictions}
}

func (m *Memory) evict(e *entry) {
	m.unlink(e)
	delete(m.windows, e.key)
	delete(m.banned, e.key)
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
