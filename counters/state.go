package counters

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
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
// Hits are not held up while the keys are rendered: under the store's lock
// Save only copies the slots (one copy of a pointer-free slice, about 48
// bytes a tracked key), the bans and the quota windows; it selects,
// renders and writes from the copy with the lock released.
func (m *Memory) Save(w io.Writer, windows map[string]time.Duration) error {
	now := m.now()
	m.mu.Lock()
	m.pruneBans(now)
	slots := slices.Clone(m.slots)
	names := slices.Clone(m.names.list)
	tail := m.tail
	bans := make([]Ban, 0, len(m.bans))
	for _, b := range m.bans {
		bans = append(bans, *b)
	}
	quotas := m.saveQuotas(nil, now.UnixMilli())
	m.mu.Unlock()
	if m.saveHook != nil {
		m.saveHook()
	}
	bw := bufio.NewWriter(w)
	fmt.Fprintln(bw, stateMagic)
	enc := json.NewEncoder(bw)
	for i := tail; i >= 0; i = slots[i].prev {
		s := &slots[i]
		// a compact key's name starts with its kind, whether it holds the
		// whole key or the text before the prefix
		if expired(names[s.key.name].s, s.w.Start, now.UnixMilli(), windows) {
			continue
		}
		if err := enc.Encode(stateWindow{Key: keyString(names, s.key), Start: s.w.Start, Prev: s.w.Prev, Curr: s.w.Curr}); err != nil {
			return err
		}
	}
	for i := range bans {
		if err := enc.Encode(stateWindow{Key: bans[i].Key, Banned: &bans[i]}); err != nil {
			return err
		}
	}
	for i := range quotas {
		if err := enc.Encode(&quotas[i]); err != nil {
			return err
		}
	}
	fmt.Fprintln(bw, stateEnd)
	return bw.Flush()
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
