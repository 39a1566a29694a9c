package counters

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// stateMagic opens every state file; a file without it is not ours.
const stateMagic = "sessioncap-state 1"

// stateEnd closes every state file; a file without it was cut short.
const stateEnd = "end"

// stateWindow is one window in a state file.
type stateWindow struct {
	Key    string `json:"k"`
	Start  int64  `json:"s"`
	Prev   uint32 `json:"p"`
	Curr   uint32 `json:"c"`
	Banned *Ban   `json:"b,omitempty"`
	// Quota is set on the line of a quota window (quota.go); Start, Prev
	// and Curr are then unused.
	Quota *stateQuota `json:"q,omitempty"`
}

// Save writes the bans in force and the windows that have not expired
// under their own rule, one JSON object a line between a header and an end
// line, least recently seen first (so Load keeps the recency order).
// windows maps a key kind (the text before a key's first ':', see
// limits.StoreKey) to the longest window keys of that kind are counted
// under (limits.Rules.KeyWindows): a window is kept until two of those
// have passed since its start, when it would start over anyway. A key of a
// kind not in windows (nil: every kind) is kept.
//
// Hits are not held up while Save copies or renders the store: it holds
// the store's lock for saveChunk entries at a time, whatever the number of
// keys (see snapshot), and renders and writes with the lock released.
func (m *Memory) Save(w io.Writer, windows map[string]time.Duration) error {
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	now := m.now()
	sn := m.snapshot(now)
	if m.saveHook != nil {
		m.saveHook()
	}
	bw := bufio.NewWriter(w)
	fmt.Fprintln(bw, stateMagic)
	enc := json.NewEncoder(bw)
	slots, names := sn.slots, sn.names
	var line []byte
	for i, n := sn.tail, 0; i >= 0; i, n = slots[i].prev, n+1 {
		if n == len(slots) { // the copy is not a list: a bug, never a file that loops
			return errors.New("counters: Save: the copy of the recency list loops")
		}
		s := &slots[i]
		// a compact key's name starts with its kind, whether it holds the
		// whole key or the text before the prefix
		if expired(names[s.key.name].s, s.w.Start, now.UnixMilli(), windows) {
			continue
		}
		line = appendWindow(line[:0], names, s)
		if _, err := bw.Write(line); err != nil {
			return err
		}
	}
	for i := range sn.bans {
		if err := enc.Encode(stateWindow{Key: sn.bans[i].Key, Banned: &sn.bans[i]}); err != nil {
			return err
		}
	}
	for i := range sn.quotas {
		q := &sn.quotas[i]
		if err := enc.Encode(stateWindow{Key: q.key, Quota: &stateQuota{Start: q.w.Start, Prev: q.w.Prev, Curr: q.w.Curr, TTL: q.ttl}}); err != nil {
			return err
		}
	}
	fmt.Fprintln(bw, stateEnd)
	return bw.Flush()
}

// appendWindow appends the line of slot s as json.Encoder writes its
// stateWindow, without the allocations: the key is written as it is when
// it needs no escaping (a key limits.StoreKey made never does), else the
// line is json's.
func appendWindow(b []byte, names []nameRef, s *slot) []byte {
	start := len(b)
	b = append(b, `{"k":"`...)
	k := len(b)
	b = append(b, names[s.key.name].s...)
	if s.key.fam != 0 {
		b = keyPrefix(s.key).AppendTo(b)
	}
	for _, c := range b[k:] {
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			l, _ := json.Marshal(stateWindow{Key: keyString(names, s.key), Start: s.w.Start, Prev: s.w.Prev, Curr: s.w.Curr})
			return append(append(b[:start], l...), '\n')
		}
	}
	b = append(b, `","s":`...)
	b = strconv.AppendInt(b, s.w.Start, 10)
	b = append(b, `,"p":`...)
	b = strconv.AppendUint(b, uint64(s.w.Prev), 10)
	b = append(b, `,"c":`...)
	b = strconv.AppendUint(b, uint64(s.w.Curr), 10)
	return append(b, "}\n"...)
}

// saveChunk is how many slots, names, bans or quota windows Save copies
// each time it holds the store's lock: about 200 KB of slots, some tens
// of microseconds.
const saveChunk = 4096

// snapshotOf is what Save writes: the store as it was when Save began for
// the slots (windows and recency order) and their names; for bans and
// quota windows, each one as it was at some moment during the copy.
type snapshotOf struct {
	slots  []slot
	names  []nameRef
	tail   int32
	bans   []Ban
	quotas []quotaEntry // least recently counted first
}

// saveCopy is the copy of the slots and names a Save is taking.
type saveCopy struct {
	slots cow[slot]
	names cow[nameRef]
}

// snapshot copies the store for Save, holding the lock for at most
// saveChunk entries at a time and letting hits through in between.
//
// The slots and names are copied as they were when the copy began, though
// hits, new keys and evictions go on meanwhile: the copy proceeds by index,
// and until it is done every write to a slot or a name not copied yet
// copies it first (Memory.keep), so an eviction that moves the last slot
// into a hole, or a hit that relinks the recency list, cannot make the
// copy skip, repeat or tear a key. Bans and quota windows are map entries
// copied as the maps are walked: each is copied whole, with its value at
// that moment; one that ended, was lifted or evicted before the walk came
// to it is not written, one added meanwhile may be; one found twice
// (lifted and made again) is written once, its last value. Quota windows
// are then ordered by when they were last counted (quotaEntry.seq).
func (m *Memory) snapshot(now time.Time) *snapshotOf {
	sn := &snapshotOf{}
	// the copy is allocated with the lock released
	m.mu.Lock()
	ns, nn := len(m.slots), len(m.names.list)
	m.mu.Unlock()
	var c *saveCopy
	for {
		c = &saveCopy{slots: newCow[slot](ns), names: newCow[nameRef](nn)}
		m.lockChunk()
		if len(m.slots) <= ns && len(m.names.list) <= nn {
			break
		}
		ns, nn = len(m.slots)+saveChunk, len(m.names.list)+saveChunk
		m.unlockChunk()
	}
	c.slots.dst, c.slots.done = c.slots.dst[:len(m.slots)], c.slots.done[:(len(m.slots)+63)/64]
	c.names.dst, c.names.done = c.names.dst[:len(m.names.list)], c.names.done[:(len(m.names.list)+63)/64]
	sn.tail = m.tail
	m.save = c
	if m.saveBegun != nil {
		m.saveBegun()
	}
	for {
		// names first: they are fewer, usually a handful
		if c.names.step(m.names.list, saveChunk) && c.slots.step(m.slots, saveChunk) {
			m.save = nil
			break
		}
		m.nextChunk()
	}
	sn.slots, sn.names = c.slots.dst, c.names.dst

	// bans and quota windows: copied under the lock, sorted out without it
	n := 0
	for _, b := range m.bans {
		if b.Until.After(now) {
			sn.bans = append(sn.bans, *b)
		}
		if n++; n%saveChunk == 0 {
			m.nextChunk()
		}
	}
	for _, e := range m.quota.m {
		if q := e.Value.(*quotaEntry); q.ttl > now.UnixMilli() {
			sn.quotas = append(sn.quotas, *q)
		}
		if n++; n%saveChunk == 0 {
			m.nextChunk()
		}
	}
	m.unlockChunk()
	sn.bans = lastOfEach(sn.bans, func(b *Ban) string { return b.Key })
	slices.SortFunc(sn.quotas, func(a, b quotaEntry) int { return cmp.Compare(a.seq, b.seq) })
	sn.quotas = lastOfEach(sn.quotas, func(q *quotaEntry) string { return q.key })
	return sn
}

// lockChunk takes the lock for a chunk of Save's copy.
func (m *Memory) lockChunk() {
	m.mu.Lock()
	if m.saveLock != nil {
		m.saveLock(true)
	}
}

// unlockChunk releases the lock after a chunk of Save's copy.
func (m *Memory) unlockChunk() {
	if m.saveLock != nil {
		m.saveLock(false)
	}
	m.mu.Unlock()
}

// nextChunk lets the calls waiting for the lock in between two chunks of
// Save's copy. A map that Save walks may change meanwhile, as it may
// while a single goroutine ranges over it: an entry deleted before the
// walk reaches it is not seen, one added may be, one deleted and added
// again may be seen twice.
func (m *Memory) nextChunk() {
	m.unlockChunk()
	if m.saveStep != nil {
		m.saveStep()
	}
	runtime.Gosched() // the hits waiting for the lock go first
	m.lockChunk()
}

// lastOfEach keeps the last of the elements of s with the same key, in
// the order of s.
func lastOfEach[T any](s []T, key func(*T) string) []T {
	last := make(map[string]int, len(s))
	for i := range s {
		last[key(&s[i])] = i
	}
	if len(last) == len(s) {
		return s
	}
	out := s[:0]
	for i := range s {
		if last[key(&s[i])] == i {
			out = append(out, s[i])
		}
	}
	return out
}

// cow is a copy of a slice taken a chunk at a time while the slice is
// written in between (under a lock that both hold): the writer calls keep
// before it writes an element, so the copy is the slice as it was when
// the copy began.
type cow[T any] struct {
	dst  []T
	done []uint64 // bit i: dst[i] was copied ahead of next, by keep
	next int      // the elements before next are copied; a multiple of 64
}

func newCow[T any](n int) cow[T] {
	return cow[T]{dst: make([]T, n), done: make([]uint64, (n+63)/64)}
}

// keep copies src[i], which is about to be written, unless it is copied
// already or was not in the slice when the copy began.
func (c *cow[T]) keep(src []T, i int) {
	if i < c.next || i >= len(c.dst) {
		return
	}
	if bit := uint64(1) << (i & 63); c.done[i>>6]&bit == 0 {
		c.dst[i] = src[i]
		c.done[i>>6] |= bit
	}
}

// step copies the next n elements (n a multiple of 64) but those that keep
// copied; it reports whether the copy is complete. An element that is no
// longer in src (the slice shrank) was kept before it went.
func (c *cow[T]) step(src []T, n int) bool {
	end := min(c.next+n, len(c.dst))
	for i := c.next; i < end; i += 64 {
		j := min(i+64, end)
		d := c.done[i>>6]
		if d == 0 {
			copy(c.dst[i:j], src[i:j])
			continue
		}
		for k := i; k < j; k++ {
			if d&(1<<(k&63)) == 0 {
				c.dst[k] = src[k]
			}
		}
	}
	c.next = end
	return end == len(c.dst)
}

// expired reports whether the window of key (or of any key that starts as
// key does up to its first ':') that started at start (Unix ms) has
// expired at now under windows (see Save).
func expired(key string, start, now int64, windows map[string]time.Duration) bool {
	kind, _, ok := strings.Cut(key, ":")
	if !ok {
		return false
	}
	d, ok := windows[kind]
	return ok && now-start >= 2*d.Milliseconds()
}

// ErrBadState says a state file is corrupt, cut short or not ours.
var ErrBadState = errors.New("counters: not a complete sessioncap state file")

// Load reads a file written by Save into m, dropping bans that have ended.
// A file that is not complete and well formed changes nothing.
func (m *Memory) Load(r io.Reader) (windows, bans int, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	if !sc.Scan() || sc.Text() != stateMagic {
		return 0, 0, fmt.Errorf("%w: missing header %q", ErrBadState, stateMagic)
	}
	var lines []stateWindow
	complete := false
	for sc.Scan() {
		if sc.Text() == stateEnd {
			complete = true
			break
		}
		var l stateWindow
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil || l.Key == "" || len(l.Key) > 512 {
			return 0, 0, fmt.Errorf("%w: line %d: %v", ErrBadState, len(lines)+2, err)
		}
		lines = append(lines, l)
	}
	if err := sc.Err(); err != nil {
		return 0, 0, fmt.Errorf("%w: %v", ErrBadState, err)
	}
	if !complete {
		return 0, 0, fmt.Errorf("%w: cut short after %d entries", ErrBadState, len(lines))
	}
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range lines {
		if l.Banned != nil {
			if l.Banned.Until.After(now) {
				b := *l.Banned
				b.Key = l.Key
				if b.Origin == "" { // a state file written before bans had an origin
					b = b.withReason(b.Reason)
				}
				m.addBan(b)
				bans++
			}
			continue
		}
		if l.Quota != nil {
			if m.loadQuota(l.Key, *l.Quota, now.UnixMilli()) {
				windows++
			}
			continue
		}
		i, name, k := m.find(l.Key)
		if i >= 0 {
			continue
		}
		m.insert(name, k, limits.Window{Start: l.Start, Prev: l.Prev, Curr: l.Curr})
		windows++
	}
	return windows, bans, nil
}

// WriteStateFile saves m to path atomically: a temporary file in the same
// directory, fsynced, renamed over path, and the directory fsynced.
func (m *Memory) WriteStateFile(path string, windows map[string]time.Duration) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".state-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := m.Save(f, windows); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// ReadStateFile loads path into m. A missing file is no error (first
// start). A file that cannot be used is renamed to path.bad-<unix time> for
// inspection and the error says so; the store stays as it was.
func (m *Memory) ReadStateFile(path string) (windows, bans int, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	windows, bans, err = m.Load(io.LimitReader(f, 1<<30))
	f.Close()
	if err != nil {
		aside := fmt.Sprintf("%s.bad-%d", path, m.now().Unix())
		if rerr := os.Rename(path, aside); rerr != nil {
			return 0, 0, fmt.Errorf("%w (and cannot keep it aside: %v)", err, rerr)
		}
		return 0, 0, fmt.Errorf("%w; kept aside as %s", err, aside)
	}
	return windows, bans, nil
}
