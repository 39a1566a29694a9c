package counters

import (
	"container/list"
	"context"

	"github.com/sessioncap/sessioncap/limits"
)

// QuotaStore is implemented by the stores that keep quota windows
// ([[rate]] rules): the memory store, the Redis store and the Fallback
// over them.
type QuotaStore interface {
	// Quota runs the ops of one stage as one atomic batch (one round trip
	// on Redis): each op's window is rolled to the store's clock and
	// checked (limits.QuotaRefuses); then, unless an op marked Hard was
	// refused, every op's Add is counted. An op with neither Need nor Add
	// is a peek and writes nothing. Windows live at most two windows
	// after their last count.
	Quota(ctx context.Context, ops []limits.QuotaOp) ([]limits.QuotaUse, error)
	// ResetQuota forgets the windows of keys; it returns how many were
	// counting.
	ResetQuota(ctx context.Context, keys []string) (int, error)
}

// quotaTable is the memory store's quota windows: a map bounded by the
// store's MaxTracked with least-recently-counted eviction, apart from the
// prefixes' windows and the bans, so a flood of forged senders or
// recipients evicts only quota windows, never a ban or a frequency window.
// Each entry costs about 185 bytes and its key (go run ./bench/memory: 240
// bytes with a 50-byte key; 16 of them since entries carry seq, the order
// a Save writes them in).
type quotaTable struct {
	m   map[string]*list.Element // key → element of lru holding *quotaEntry
	lru list.List                // front: most recently counted
	seq uint64                   // counts the windows put at the front of lru
}

type quotaEntry struct {
	key string
	w   limits.QuotaWindow
	ttl int64  // Unix ms after which the window is empty whatever it holds
	seq uint64 // the table's seq when it was last put at the front: Save's order
}

// front puts e at the front of the table, the most recently counted.
func (t *quotaTable) front(e *list.Element) {
	t.seq++
	e.Value.(*quotaEntry).seq = t.seq
	t.lru.MoveToFront(e)
}

// push adds q at the front of the table, the most recently counted.
func (t *quotaTable) push(q *quotaEntry) {
	t.seq++
	q.seq = t.seq
	t.m[q.key] = t.lru.PushFront(q)
}

var _ QuotaStore = (*Memory)(nil)

// Quota implements QuotaStore with limits.ApplyQuotas.
func (m *Memory) Quota(_ context.Context, ops []limits.QuotaOp) ([]limits.QuotaUse, error) {
	now := m.now().UnixMilli()
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.quotaLocked(ops, now), nil
}

func (m *Memory) quotaLocked(ops []limits.QuotaOp, now int64) []limits.QuotaUse {
	t := &m.quota
	if t.m == nil {
		t.m = make(map[string]*list.Element)
	}
	var buf [8]limits.QuotaWindow
	ws := buf[:0]
	if len(ops) > len(buf) {
		ws = make([]limits.QuotaWindow, 0, len(ops))
	}
	ws = ws[:len(ops)]
	for i, op := range ops {
		if e, ok := t.m[op.Key]; ok {
			if q := e.Value.(*quotaEntry); q.ttl > now {
				ws[i] = q.w
			}
		}
	}
	uses := limits.ApplyQuotas(ws, ops, now)
	for i, op := range ops {
		e, ok := t.m[op.Key]
		if ok {
			q := e.Value.(*quotaEntry)
			q.w = ws[i]
			if op.Add > 0 {
				q.ttl = max(q.ttl, ws[i].Start+2*op.Window.Milliseconds())
				t.front(e)
			}
			continue
		}
		if op.Add <= 0 || ws[i].Curr == 0 {
			continue // a peek, or a batch that counted nothing: stores nothing
		}
		for len(t.m) >= m.max {
			old := t.lru.Back()
			delete(t.m, old.Value.(*quotaEntry).key)
			t.lru.Remove(old)
			m.evictions++
		}
		t.push(&quotaEntry{key: op.Key, w: ws[i], ttl: ws[i].Start + 2*op.Window.Milliseconds()})
	}
	return uses
}

// ResetQuota implements QuotaStore.
func (m *Memory) ResetQuota(_ context.Context, keys []string) (int, error) {
	now := m.now().UnixMilli()
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, k := range keys {
		if e, ok := m.quota.m[k]; ok {
			if e.Value.(*quotaEntry).ttl > now {
				n++
			}
			delete(m.quota.m, k)
			m.quota.lru.Remove(e)
		}
	}
	return n, nil
}

// QuotaTracked counts the quota windows the memory store holds.
func (m *Memory) QuotaTracked() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.quota.m)
}

var _ QuotaStore = (*Fallback)(nil)

// Quota implements QuotaStore: on the primary while it is up, else locally
// (or ErrUnavailable under "tempfail"). A primary that is not a QuotaStore
// is answered locally.
func (f *Fallback) Quota(ctx context.Context, ops []limits.QuotaOp) ([]limits.QuotaUse, error) {
	qs, ok := f.primary.(QuotaStore)
	if !ok {
		return f.local.Quota(ctx, ops)
	}
	var uses []limits.QuotaUse
	fb, err := f.call(ctx, "quota", func(c context.Context) (err error) {
		uses, err = qs.Quota(c, ops)
		return err
	})
	if err != nil || !fb {
		return uses, err
	}
	return f.local.Quota(ctx, ops)
}

// ResetQuota implements QuotaStore: both locally and, when it is up, on the
// primary.
func (f *Fallback) ResetQuota(ctx context.Context, keys []string) (int, error) {
	n, _ := f.local.ResetQuota(ctx, keys)
	qs, ok := f.primary.(QuotaStore)
	if !ok {
		return n, nil
	}
	var shared int
	_, err := f.call(ctx, "quota_reset", func(c context.Context) (err error) {
		shared, err = qs.ResetQuota(c, keys)
		return err
	})
	return max(n, shared), err
}

// stateQuota is a quota window in a state file: its fixed windows and the
// Unix ms after which it is empty.
type stateQuota struct {
	Start int64 `json:"s"`
	Prev  int64 `json:"p"`
	Curr  int64 `json:"c"`
	TTL   int64 `json:"t"`
}

// loadQuota restores a quota window from a state file unless it has
// expired or the key is counting already; it reports whether it did. The
// caller holds mu.
func (m *Memory) loadQuota(key string, st stateQuota, now int64) bool {
	t := &m.quota
	if t.m == nil {
		t.m = make(map[string]*list.Element)
	}
	if _, ok := t.m[key]; ok || st.TTL <= now || st.Prev < 0 || st.Curr < 0 {
		return false
	}
	for len(t.m) >= m.max {
		old := t.lru.Back()
		delete(t.m, old.Value.(*quotaEntry).key)
		t.lru.Remove(old)
		m.evictions++
	}
	t.push(&quotaEntry{key: key, w: limits.QuotaWindow{Start: st.Start, Prev: st.Prev, Curr: st.Curr}, ttl: st.TTL})
	return true
}
