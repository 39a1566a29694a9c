package counters

import (
	"sync"

	"github.com/sessioncap/sessioncap/limits"
)

// Leases counts the open sessions of this host per key and in total, for the
// concurrency caps. They stay in process even with a shared store: a session
// lives on one host, and concurrency protects that host's resources. The
// map holds only keys with open sessions, so it is bounded by open
// connections.
type Leases struct {
	mu     sync.Mutex
	active map[string]int64
	total  int64
}

// NewLeases returns an empty lease table.
func NewLeases() *Leases { return &Leases{active: make(map[string]int64)} }

// Lease is one open session. Release is idempotent.
type Lease struct {
	l    *Leases
	key  string
	once sync.Once
}

// Acquire decides c for key. When admitted, or when force is set (monitor
// mode: the refused session goes on), the session is counted and a lease
// returned; otherwise the lease is nil. active and total are the counts
// before this session.
func (l *Leases) Acquire(key string, c limits.Concurrency, force bool) (lease *Lease, v limits.Verdict, active, total int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	active, total = l.active[key], l.total
	v = c.Verdict(active, total)
	if v != limits.Admitted && !force {
		return nil, v, active, total
	}
	l.active[key]++
	l.total++
	return &Lease{l: l, key: key}, v, active, total
}

// Release gives the session back; calls after the first do nothing.
func (ls *Lease) Release() {
	if ls == nil {
		return
	}
	ls.once.Do(func() {
		l := ls.l
		l.mu.Lock()
		defer l.mu.Unlock()
		if n := l.active[ls.key]; n <= 1 {
			delete(l.active, ls.key)
		} else {
			l.active[ls.key] = n - 1
		}
		l.total--
	})
}

// Total returns the open sessions counted.
func (l *Leases) Total() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// Keys returns how many keys have open sessions.
func (l *Leases) Keys() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.active)
}
