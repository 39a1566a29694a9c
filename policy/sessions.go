package policy

import (
	"net/netip"
	"sync"
	"time"

	"github.com/sessioncap/sessioncap/engine"
	"github.com/sessioncap/sessioncap/limits"
)

// sessionKey identifies one SMTP session across policy connections: the
// TCP endpoints of the SMTP connection as Postfix reports them. While a
// connection is open no other one has the same four values; a later
// connection that happens to reuse them is told apart as identify.go says.
type sessionKey struct {
	client, server netip.AddrPort
}

// session is an entry of the table: the key, list links, identity and
// owner, guarded by the table's lock, and the session's counts, guarded by
// mu.
type session struct {
	key        sessionKey
	prev, next *session
	seen       time.Time
	inTable    bool
	id         identity
	// owner is the open policy connection whose last request was of this
	// session (nil when none): its smtpd process may still be serving it,
	// so it is evicted from a full table only when no other session can be.
	owner *conn

	mu sync.Mutex
	st sessionState
}

// sessionState is what sessioncap knows of one SMTP session. The zero value
// is a session of which no request was seen yet.
type sessionState struct {
	started bool // a request of this session was seen

	instance string // of the last request that had one: it changes per transaction

	core        *engine.Session // the decisions and counts; nil before the first request
	pendingMail bool            // the transaction began with a MAIL request (whose instance is still the previous one's)
	sticky      *limits.Refusal // a non-421 refusal at the session's start: every later request of the session gets it
	txSticky    *limits.Refusal // a non-421 refusal at the transaction's start: every RCPT of it gets it
}

// table holds sessions by key, bounded by max with least-recently-seen
// eviction (sessions that open policy connections are serving last), and
// forgets sessions idle for longer than idle.
type table struct {
	mu         sync.Mutex
	m          map[sessionKey]*session
	head, tail *session // most and least recently seen
	max        int
	idle       time.Duration
	metrics    *Metrics
}

func newTable(max int, idle time.Duration, m *Metrics) *table {
	return &table{m: make(map[sessionKey]*session), max: max, idle: idle, metrics: m}
}

// lookup returns the session of k, nil when k is unknown. Sessions idle for
// longer than t.idle are dropped from the tail on the way (so an idle key
// comes back unknown). The caller holds t.mu.
func (t *table) lookup(k sessionKey, now time.Time) *session {
	for t.tail != nil && now.Sub(t.tail.seen) > t.idle {
		t.remove(t.tail)
	}
	s := t.m[k]
	if s == nil {
		return nil
	}
	if s != t.head {
		t.unlink(s)
		t.pushFront(s)
	}
	s.seen = now
	return s
}

// insert puts a new session for k in the table, in place of any other with
// that key. When the table is full it evicts the least recently seen
// session that no open policy connection is serving (such a session is
// ended, or goes on over a policy connection not yet opened), and only when
// there is none the least recently seen of all. The caller holds t.mu.
func (t *table) insert(k sessionKey, now time.Time) *session {
	if old := t.m[k]; old != nil {
		t.remove(old)
	}
	s := &session{key: k, seen: now, inTable: true}
	t.m[k] = s
	t.pushFront(s)
	for len(t.m) > t.max {
		victim := t.tail // never s, which is at the head
		for v := t.tail; v != nil; v = v.prev {
			if v.owner == nil && v != s {
				victim = v
				break
			}
		}
		t.remove(victim)
		t.metrics.evictions.Inc()
	}
	t.metrics.tracked.Set(float64(len(t.m)))
	return s
}

// drop forgets s (its SMTP session ended) unless a new session took its key.
func (t *table) drop(s *session) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s.inTable && t.m[s.key] == s {
		t.remove(s)
	}
}

// len returns the number of sessions held.
func (t *table) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

func (t *table) remove(s *session) {
	delete(t.m, s.key)
	t.unlink(s)
	s.inTable = false
	t.metrics.tracked.Set(float64(len(t.m)))
}

func (t *table) pushFront(s *session) {
	s.prev, s.next = nil, t.head
	if t.head != nil {
		t.head.prev = s
	}
	t.head = s
	if t.tail == nil {
		t.tail = s
	}
}

func (t *table) unlink(s *session) {
	if s.prev != nil {
		s.prev.next = s.next
	} else {
		t.head = s.next
	}
	if s.next != nil {
		s.next.prev = s.prev
	} else {
		t.tail = s.prev
	}
	s.prev, s.next = nil, nil
}
