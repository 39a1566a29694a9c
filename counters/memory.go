package counters

import (
	"context"
	"encoding/binary"
	"hash/maphash"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// DefaultMaxTracked is the default bound on keys with a sliding window.
const DefaultMaxTracked = 1_000_000

// DefaultMaxBans is the default bound on bans in force.
const DefaultMaxBans = 100_000

// Memory is the in-memory store of one daemon, safe for concurrent use.
// Windows are bounded by maxTracked with least-recently-seen eviction; bans
// live apart, bounded by maxBans, so a flood of new keys never evicts a ban
// (when the ban table is full, the ban that ends soonest goes).
//
// The windows take about 60 bytes per tracked key, key included (measured
// by go run ./bench/memory), in pointer-free structures that the garbage
// collector never scans:
//
//   - slots, a dense slice of 48-byte slots: the window (16 bytes), the
//     least-recently-seen list as int32 indexes into slots (8 bytes) and the
//     compact key (24 bytes). Eviction moves the last slot into the hole, so
//     the slice has no holes and needs no free list.
//   - index, a hash table from the compact key to its slot: 4 bytes an
//     entry, at most three quarters full (see index).
//
// A key that limits.StoreKey made (kind[:scope]:prefix, with the prefix in
// its canonical text, which is how the milter makes every key it hits) is
// kept as the prefix's 16 address bytes, its length and family, and the
// number of its "kind:" or "kind:scope:" text in names, a table of the few
// distinct such texts. Any other key is kept whole in names, with family 0.
// Names are reference-counted, so they are bounded by the tracked keys too.
type Memory struct {
	mu        sync.Mutex
	now       func() time.Time
	host      string
	max       int
	maxBans   int
	slots     []slot
	index     index
	names     names
	head      int32 // most recently seen slot, -1 when empty
	tail      int32 // least recently seen slot, -1 when empty
	bans      map[string]*Ban
	evictions uint64
	quota     quotaTable // the windows of quotas (quota.go)

	// save is the copy a Save is taking (state.go), nil when none: while
	// it is set, a slot or a name is copied into it before it is written.
	save   *saveCopy
	saveMu sync.Mutex // one Save at a time

	// tests: saveBegun is called under the lock as Save starts its copy,
	// saveStep each time Save has released the lock between two chunks,
	// saveHook once Save has copied everything and renders; saveLock as
	// Save has taken the lock for a chunk (true) and as it releases it.
	saveBegun, saveStep, saveHook func()
	saveLock                      func(locked bool)
}

// slot is one tracked key; prev and next are slot indexes (-1: none).
type slot struct {
	w          limits.Window
	prev, next int32
	key        ckey
}

// ckey is a compact key: 24 bytes, no pointers.
type ckey struct {
	addr [16]byte // the prefix's address, as 16 bytes (IPv4 mapped)
	name uint32   // index in names: the key's text before the prefix, or the whole key when fam is 0
	bits uint8    // the prefix length
	fam  uint8    // 4 or 6; 0 when the key is not a StoreKey with a canonical prefix
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
	m := &Memory{now: o.Now, host: o.Host, head: -1, tail: -1, bans: make(map[string]*Ban)}
	m.index.seed = maphash.MakeSeed()
	m.names.ids = make(map[string]uint32)
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

// splitKey returns the part of key that names keeps and the compact key for
// the rest (its name field unset). Only a prefix in canonical text is kept
// as bytes: another spelling of the same prefix is another key.
func splitKey(key string) (string, ckey) {
	kind, scope, p, err := limits.ParseStoreKey(key)
	if err != nil {
		return key, ckey{}
	}
	n := len(kind) + 1
	if scope != "" {
		n += len(scope) + 1
	}
	var buf [64]byte
	if string(p.AppendTo(buf[:0])) != key[n:] {
		return key, ckey{}
	}
	k := ckey{addr: p.Addr().As16(), bits: uint8(p.Bits()), fam: 6}
	if p.Addr().Is4() {
		k.fam = 4
	}
	return key[:n], k
}

// keyString is the key that k was made from.
func (m *Memory) keyString(k ckey) string { return keyString(m.names.list, k) }

// keyString is the key that k was made from, its name in names.
func keyString(names []nameRef, k ckey) string {
	name := names[k.name].s
	if k.fam == 0 {
		return name
	}
	return name + keyPrefix(k).String()
}

// keyPrefix is the prefix of a compact key whose fam is not 0.
func keyPrefix(k ckey) netip.Prefix {
	a := netip.AddrFrom16(k.addr)
	if k.fam == 4 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, int(k.bits))
}

// find returns the slot of key, or -1, and the parts to insert it with.
// The caller holds mu.
func (m *Memory) find(key string) (int32, string, ckey) {
	name, k := splitKey(key)
	id, ok := m.names.ids[name]
	if !ok {
		return -1, name, k
	}
	k.name = id
	_, i := m.index.find(m.slots, k)
	return i, name, k
}

// insert tracks a new key with window w as the most recently seen, first
// evicting the least recently seen keys over the bound. The caller holds mu.
func (m *Memory) insert(name string, k ckey, w limits.Window) {
	for len(m.slots) >= m.max {
		m.evict(m.tail)
	}
	k.name = m.names.acquire(name)
	i := int32(len(m.slots))
	m.slots = append(m.slots, slot{w: w, key: k})
	m.index.add(m.slots, i)
	m.pushFront(i)
}

// Hit implements Store with limits.Apply.
func (m *Memory) Hit(_ context.Context, key string, n int64, r limits.Rate) (limits.Hit, error) {
	now := m.now().UnixMilli()
	m.mu.Lock()
	defer m.mu.Unlock()
	var until int64
	var reason string
	if b := m.bans[key]; b != nil {
		if until = b.Until.UnixMilli(); until <= now {
			delete(m.bans, key)
			until = 0
		} else {
			reason = StoredReason(b.Origin, b.Reason)
		}
	}
	if until == 0 && r.Max <= 0 {
		return limits.Hit{Now: time.UnixMilli(now)}, nil
	}
	var w limits.Window
	i, name, k := m.find(key)
	if i >= 0 {
		w = m.slots[i].w
	}
	h, newUntil := limits.Apply(&w, until, now, n, r)
	if newUntil != until && newUntil != 0 {
		m.addBan(NewBan(key, r.Reason, h.Now, h.BannedUntil, m.host))
		reason = r.Reason
	}
	h.BanReason = reason
	if until != 0 {
		return h, nil // banned: the window is not touched
	}
	if n <= 0 && !h.Crossed {
		return h, nil // a peek: counts nothing, stores nothing, keeps the eviction order
	}
	if i < 0 {
		if w != (limits.Window{}) {
			m.insert(name, k, w)
		}
		return h, nil
	}
	if i != m.head {
		m.unlink(i)
		m.pushFront(i)
	}
	m.keep(i)
	m.slots[i].w = w
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
	if i, _, _ := m.find(key); i >= 0 {
		m.keep(i)
		m.slots[i].w = limits.Window{}
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
	return Stats{Tracked: int64(len(m.slots)), Banned: int64(len(m.bans)), Evictions: m.evictions}, nil
}

// Close implements Store; the memory store has nothing to release.
func (m *Memory) Close() error { return nil }

// evict drops slot i and moves the last slot into its place. The caller
// holds mu.
func (m *Memory) evict(i int32) {
	m.unlink(i)
	pos, _ := m.index.find(m.slots, m.slots[i].key)
	m.index.remove(m.slots, pos)
	id := m.slots[i].key.name
	if m.save != nil {
		m.save.names.keep(m.names.list, int(id))
	}
	m.names.release(id)
	last := int32(len(m.slots) - 1)
	m.keep(last)
	if i != last {
		pos, _ := m.index.find(m.slots, m.slots[last].key)
		m.index.table[pos] = i + 1
		s := m.slots[last]
		m.keep(i)
		m.slots[i] = s
		if s.prev >= 0 {
			m.keep(s.prev)
			m.slots[s.prev].next = i
		} else {
			m.head = i
		}
		if s.next >= 0 {
			m.keep(s.next)
			m.slots[s.next].prev = i
		} else {
			m.tail = i
		}
	}
	m.slots[last] = slot{}
	m.slots = m.slots[:last]
	m.evictions++
}

// keep is called before slot i is written: a Save taking its copy copies
// the slot first. The caller holds mu.
func (m *Memory) keep(i int32) {
	if m.save != nil {
		m.save.slots.keep(m.slots, int(i))
	}
}

func (m *Memory) pushFront(i int32) {
	m.keep(i)
	s := &m.slots[i]
	s.prev, s.next = -1, m.head
	if m.head >= 0 {
		m.keep(m.head)
		m.slots[m.head].prev = i
	}
	m.head = i
	if m.tail < 0 {
		m.tail = i
	}
}

func (m *Memory) unlink(i int32) {
	m.keep(i)
	s := &m.slots[i]
	if s.prev >= 0 {
		m.keep(s.prev)
		m.slots[s.prev].next = s.next
	} else {
		m.head = s.next
	}
	if s.next >= 0 {
		m.keep(s.next)
		m.slots[s.next].prev = s.prev
	} else {
		m.tail = s.prev
	}
	s.prev, s.next = -1, -1
}

// names interns the key texts of the tracked keys, counting references.
type names struct {
	ids  map[string]uint32
	list []nameRef
	free []uint32
}

type nameRef struct {
	s    string
	refs int
}

// acquire returns the number of s, adding it (a copy) if new.
func (n *names) acquire(s string) uint32 {
	id, ok := n.ids[s]
	if !ok {
		s = strings.Clone(s)
		if l := len(n.free); l > 0 {
			id, n.free = n.free[l-1], n.free[:l-1]
			n.list[id] = nameRef{s: s}
		} else {
			id = uint32(len(n.list))
			n.list = append(n.list, nameRef{s: s})
		}
		n.ids[s] = id
	}
	n.list[id].refs++
	return id
}

// release drops one reference to id, and the name with the last.
func (n *names) release(id uint32) {
	if n.list[id].refs--; n.list[id].refs == 0 {
		delete(n.ids, n.list[id].s)
		n.list[id] = nameRef{}
		n.free = append(n.free, id)
	}
}

// index finds the slot of a compact key: open addressing with linear
// probing in a power-of-two table of slot numbers plus one (0 is an empty
// entry), at most three quarters full, doubled when it would be fuller. The
// hash is seeded per store (maphash), so addresses an attacker picks cannot
// be made to pile up in one run. Removal shifts the rest of the run back
// instead of leaving tombstones, so lookups stay short under churn.
type index struct {
	seed  maphash.Seed
	table []int32
	n     int // entries in table
}

func (x *index) hash(k ckey) int {
	var b [22]byte
	copy(b[:16], k.addr[:])
	binary.LittleEndian.PutUint32(b[16:], k.name)
	b[20], b[21] = k.bits, k.fam
	return int(maphash.Bytes(x.seed, b[:]) & uint64(len(x.table)-1))
}

// find returns the table position and slot of k, or the empty position
// where it would go and -1.
func (x *index) find(slots []slot, k ckey) (int, int32) {
	if len(x.table) == 0 {
		return -1, -1
	}
	mask := len(x.table) - 1
	for p := x.hash(k); ; p = (p + 1) & mask {
		v := x.table[p]
		if v == 0 {
			return p, -1
		}
		if slots[v-1].key == k {
			return p, v - 1
		}
	}
}

// add enters slot i, whose key is not in the table.
func (x *index) add(slots []slot, i int32) {
	if (x.n+1)*4 > len(x.table)*3 {
		x.grow(slots)
	}
	p, _ := x.find(slots, slots[i].key)
	x.table[p] = i + 1
	x.n++
}

// grow doubles the table (16 entries at first) and enters every slot again.
func (x *index) grow(slots []slot) {
	x.table = make([]int32, max(16, 2*len(x.table)))
	for i := range slots[:x.n] { // the slot being added is not entered yet
		p, _ := x.find(slots, slots[i].key)
		x.table[p] = int32(i) + 1
	}
}

// remove empties position p and shifts back the entries after it in its
// run that would no longer be found.
func (x *index) remove(slots []slot, p int) {
	mask := len(x.table) - 1
	for j := (p + 1) & mask; x.table[j] != 0; j = (j + 1) & mask {
		// The entry at j may move to p unless its home position lies
		// cyclically in (p, j].
		home := x.hash(slots[x.table[j]-1].key)
		if (j-home)&mask >= (j-p)&mask {
			x.table[p] = x.table[j]
			p = j
		}
	}
	x.table[p] = 0
	x.n--
}
