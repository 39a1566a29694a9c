package replay

import (
	"fmt"
	"math/bits"
	"net/netip"
	"strings"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// stats measures the quantities the limits cap, from the traffic the log
// shows (whatever the rules decided): per session, per network and window,
// per quota key and window, per sender domain.
type stats struct {
	sessMsgs, sessRcpts, sessBytes *tracker
	conns                          *tracker // connections per network per frequency window
	open                           *tracker // open sessions per network
	domains                        *tracker // networks per sender domain per window
	quotas                         []*tracker
	quotaRules                     []limits.Quota

	freqWindow time.Duration
	openNow    map[netip.Prefix]int64
	openTotal  int64
	openPeak   int64
	sn         limits.SenderNetworks
}

// tracker is one quantity: the values of its keys (their peak within the
// window, for windowed quantities) and what the report says of it.
type tracker struct {
	q      *Quantity
	window time.Duration
	sums   map[string]*winSum // the windows of keys seen within the window
	sets   map[string]*winSet
	peaks  map[string]int64
	adds   int
	h      hist
}

const maxTrackedKeys = 1_000_000

func newTracker(name, of, unit, key string, cap int64, window time.Duration) *tracker {
	return &tracker{
		q:      &Quantity{Name: name, Of: of, Unit: unit, ConfigKey: key, Cap: cap},
		window: window,
		sums:   map[string]*winSum{}, sets: map[string]*winSet{}, peaks: map[string]int64{},
	}
}

func newStats(r *limits.Rules) *stats {
	d := r.Default
	st := &stats{openNow: map[netip.Prefix]int64{}, sn: r.SenderNetworks}
	st.sessMsgs = newTracker("messages per session", "sessions", "messages", "session.max_messages", d.Session.MaxMessages, 0)
	st.sessRcpts = newTracker("recipients per session", "sessions", "recipients", "session.max_recipients", d.Session.MaxRecipients, 0)
	st.sessBytes = newTracker("bytes per session", "sessions", "bytes", "session.max_bytes", d.Session.MaxBytes, 0)
	st.freqWindow = d.Frequency.Window
	freqCap := d.Frequency.MaxConnections
	if freqCap == 0 || st.freqWindow <= 0 {
		st.freqWindow = time.Minute
	}
	st.conns = newTracker("connections per network per "+dur(st.freqWindow), "networks", "connections", "frequency.max_connections", freqCap, st.freqWindow)
	st.open = newTracker("open sessions per network", "networks", "sessions", "concurrency.max_per_address", d.Concurrency.MaxPerAddress, 0)
	snWindow := r.SenderNetworks.Window
	if snWindow <= 0 {
		snWindow = 24 * time.Hour
	}
	st.sn.Window = snWindow
	st.domains = newTracker("networks per sender domain per "+dur(snWindow), "sender domains", "networks", "sender_networks.max_networks", r.SenderNetworks.MaxNetworks, snWindow)
	st.quotaRules = append(st.quotaRules, r.Quotas...)
	hasUser := false
	for _, q := range r.Quotas {
		hasUser = hasUser || q.Key == limits.QuotaUser
	}
	if !hasUser { // the question every submission server has
		st.quotaRules = append(st.quotaRules, limits.Quota{Key: limits.QuotaUser, Count: limits.CountMessages, Window: time.Hour})
	}
	for _, q := range st.quotaRules {
		what := fmt.Sprintf("%s per %s per %s", q.Count, strings.ReplaceAll(string(q.Key), "_", " "), dur(q.Window))
		key := "(no [[rate]] rule)"
		if q.Name != "" {
			what += " ([[rate]] " + q.Name + ")"
			key = "rate." + q.Name + ".limit"
		}
		st.quotas = append(st.quotas, newTracker(what, string(q.Key)+"s", string(q.Count), key, q.Limit, q.Window))
	}
	return st
}

func dur(d time.Duration) string {
	switch {
	case d%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

func prefixOf(a netip.Addr, v4, v6 int) (netip.Prefix, bool) {
	if !a.IsValid() {
		return netip.Prefix{}, false
	}
	bitsN := v6
	if a.Is4() {
		bitsN = v4
	}
	p, err := a.Prefix(bitsN)
	return p, err == nil
}

func (st *stats) connect(s *session, now time.Time, r *limits.Rules) {
	p, ok := prefixOf(s.ip, r.IPv4Prefix, r.IPv6Prefix)
	if !ok {
		return
	}
	st.conns.sum(p.String(), 1, now)
	s.openKey = p
	st.openNow[p]++
	st.open.peak(p.String(), st.openNow[p])
	st.openTotal++
	st.openPeak = max(st.openPeak, st.openTotal)
}

func (st *stats) end(s *session, now time.Time) {
	st.sessMsgs.h.add(s.msgs)
	st.sessRcpts.h.add(s.rcpts)
	st.sessBytes.h.add(s.bytes)
	if s.openKey.IsValid() {
		if st.openNow[s.openKey]--; st.openNow[s.openKey] <= 0 {
			delete(st.openNow, s.openKey)
		}
		st.openTotal--
	}
}

// transaction counts one transaction's message, recipients and bytes.
func (st *stats) transaction(s *session, x *tx, now time.Time, r *limits.Rules) {
	s.msgs++
	n := int64(0)
	for _, rc := range x.rcpts {
		if !rc.rejected && !rc.accepted {
			n++
		}
	}
	n += int64(x.acceptedCount())
	s.rcpts += n
	size := max(x.size, 0)
	s.bytes += size
	sender := strings.ToLower(x.sender)
	domain := ""
	if i := strings.LastIndexByte(sender, '@'); i >= 0 {
		domain = sender[i+1:]
	}
	if domain != "" {
		if p, ok := prefixOf(s.ip, st.sn.IPv4Prefix, st.sn.IPv6Prefix); ok {
			st.domains.distinct(domain, p.String(), now)
		}
	}
	user := x.user
	if user == "" {
		user = s.user
	}
	for i, q := range st.quotaRules {
		t := st.quotas[i]
		amount := int64(1)
		switch q.Count {
		case limits.CountRecipients:
			amount = n
		case limits.CountBytes:
			amount = size
		}
		switch q.Key {
		case limits.QuotaUser:
			if user != "" {
				t.sum(strings.ToLower(user), amount, now)
			}
		case limits.QuotaSender:
			if sender != "" {
				t.sum(sender, amount, now)
			}
		case limits.QuotaSenderDomain:
			if domain != "" {
				t.sum(domain, amount, now)
			}
		case limits.QuotaNetwork:
			if p, ok := prefixOf(s.ip, r.IPv4Prefix, r.IPv6Prefix); ok {
				t.sum(p.String(), amount, now)
			}
		case limits.QuotaRecipient:
			if q.Count == limits.CountRecipients {
				amount = 1
			}
			for j := 0; j < x.acceptedCount(); j++ {
				t.sum(x.placeholder(j), amount, now)
			}
		}
	}
}

// sum adds n to key's window and keeps its peak.
func (t *tracker) sum(key string, n int64, now time.Time) {
	w := t.sums[key]
	if w == nil {
		if len(t.sums)+len(t.peaks) >= maxTrackedKeys {
			t.q.KeysDropped++
			return
		}
		w = &winSum{}
		t.sums[key] = w
	}
	t.peak(key, w.add(now.UnixNano(), n, int64(t.window)))
	t.sweep(now)
}

// distinct adds member to key's set within the window and keeps its peak
// size.
func (t *tracker) distinct(key, member string, now time.Time) {
	w := t.sets[key]
	if w == nil {
		if len(t.sets)+len(t.peaks) >= maxTrackedKeys {
			t.q.KeysDropped++
			return
		}
		w = &winSet{count: map[string]int{}}
		t.sets[key] = w
	}
	t.peak(key, w.add(now.UnixNano(), member, int64(t.window)))
	t.sweep(now)
}

func (t *tracker) peak(key string, v int64) {
	if v > t.peaks[key] {
		t.peaks[key] = v
	}
}

// sweep drops, now and then, the windows of keys with nothing in them.
func (t *tracker) sweep(now time.Time) {
	if t.adds++; t.adds%100_000 != 0 {
		return
	}
	cut := now.UnixNano() - int64(t.window)
	for k, w := range t.sums {
		if w.last() <= cut {
			delete(t.sums, k)
		}
	}
	for k, w := range t.sets {
		if w.last() <= cut {
			delete(t.sets, k)
		}
	}
}

// winSum is a sliding sum over a window.
type winSum struct {
	t    []int64
	n    []int64
	head int
	sum  int64
}

func (w *winSum) last() int64 {
	if len(w.t) == w.head {
		return 0
	}
	return w.t[len(w.t)-1]
}

func (w *winSum) add(now, n, window int64) int64 {
	for w.head < len(w.t) && w.t[w.head] <= now-window {
		w.sum -= w.n[w.head]
		w.head++
	}
	if w.head > 64 && w.head > len(w.t)/2 {
		w.t, w.n = append(w.t[:0], w.t[w.head:]...), append(w.n[:0], w.n[w.head:]...)
		w.head = 0
	}
	w.t, w.n = append(w.t, now), append(w.n, n)
	w.sum += n
	return w.sum
}

// winSet counts distinct members seen within a window.
type winSet struct {
	t     []int64
	k     []string
	head  int
	count map[string]int
}

func (w *winSet) last() int64 {
	if len(w.t) == w.head {
		return 0
	}
	return w.t[len(w.t)-1]
}

func (w *winSet) add(now int64, member string, window int64) int64 {
	for w.head < len(w.t) && w.t[w.head] <= now-window {
		k := w.k[w.head]
		if w.count[k]--; w.count[k] <= 0 {
			delete(w.count, k)
		}
		w.k[w.head] = ""
		w.head++
	}
	if w.head > 64 && w.head > len(w.t)/2 {
		w.t, w.k = append(w.t[:0], w.t[w.head:]...), append(w.k[:0], w.k[w.head:]...)
		w.head = 0
	}
	w.t, w.k = append(w.t, now), append(w.k, member)
	w.count[member]++
	return int64(len(w.count))
}

// finish turns the trackers into the report's quantities.
func (st *stats) finish(rep *Report) {
	all := []*tracker{st.sessMsgs, st.sessRcpts, st.sessBytes, st.conns, st.open, st.domains}
	all = append(all, st.quotas...)
	for _, t := range all {
		for _, v := range t.peaks {
			t.h.add(v)
		}
		t.q.fill(&t.h)
		rep.Quantities = append(rep.Quantities, t.q)
	}
	rep.OpenPeak = st.openPeak
}

// fill reads the distribution and states a suggestion.
func (q *Quantity) fill(h *hist) {
	q.Count = h.n
	if h.n == 0 {
		q.Reason = "nothing in the log"
		return
	}
	q.P50, q.P90, q.P99, q.Max = h.quantile(0.5), h.quantile(0.9), h.quantile(0.99), h.max
	q.Suggest = nextPow2(2 * q.Max)
	q.Reason = fmt.Sprintf("max seen %s, suggest %s (twice the largest, rounded up to a power of two: no %s in the log would have hit it)",
		q.format(q.Max), q.format(q.Suggest), strings.TrimSuffix(q.Of, "s"))
	if q.Cap > 0 {
		q.AboveCap = h.above(q.Cap)
	}
	for i, c := range h.counts {
		if c > 0 {
			q.Histogram = append(q.Histogram, Bucket{LE: min(upper(i), h.max), Count: c})
		}
	}
}

func nextPow2(v int64) int64 {
	if v <= 1 {
		return 1
	}
	return 1 << bits.Len64(uint64(v-1))
}

// format writes v in the quantity's unit (bytes in KiB/MiB/GiB).
func (q *Quantity) format(v int64) string {
	if q.Unit != "bytes" {
		return fmt.Sprint(v)
	}
	return formatBytes(v)
}

func formatBytes(v int64) string {
	switch {
	case v >= 1<<30 && v%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", v>>30)
	case v >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(v)/(1<<30))
	case v >= 1<<20 && v%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", v>>20)
	case v >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(v)/(1<<20))
	case v >= 1<<10 && v%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", v>>10)
	case v >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(v)/(1<<10))
	}
	return fmt.Sprintf("%dB", v)
}
