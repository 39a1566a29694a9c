package limits

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Rate is the rule of the stores' atomic primitive: more than Max hits of a
// key within a sliding Window bans the key for Ban. With Ban zero a hit that
// would cross Max is refused and not counted, so a client that keeps trying is
// limited to Max per Window instead of locking itself out. A Max of zero only
// asks whether the key is banned: nothing is counted.
type Rate struct {
	Max    int64
	Window time.Duration
	Ban    time.Duration
	Reason string // recorded with a ban this rule starts ("frequency", …)
}

// Rate returns the store rule of the connection-frequency limit.
func (f Frequency) Rate() Rate {
	if f.MaxConnections <= 0 || f.Window <= 0 {
		return Rate{}
	}
	return Rate{Max: f.MaxConnections, Window: f.Window, Ban: f.Ban, Reason: string(LimitFrequency)}
}

// Hit is what a store answers for one hit of a key.
type Hit struct {
	Count       int64     // hits in the sliding window, this one included when it was counted
	BannedUntil time.Time // zero unless the key is banned (already, or by this hit)
	Crossed     bool      // this hit went over Max (and started the ban when Ban > 0)
	Now         time.Time // the store's clock at the decision
	// BanReason is the reason the ban in force was recorded with (the
	// Rate's Reason, or a manual ban's), "" when not banned.
	BanReason string
}

// Window is the sliding-window state of one key: a sliding window
// approximated by two fixed windows (the count of the previous window
// weighted by how much of it still overlaps the sliding window, plus the
// count of the current one). It takes 16 bytes whatever the rate, and unlike
// a fixed window gives no burst at a window edge. The zero value is a key
// never seen. Times are Unix milliseconds, the unit both stores share.
type Window struct {
	Start      int64  // Unix ms at which the current fixed window began
	Prev, Curr uint32 // hits counted in the previous and current fixed windows
}

// estimate rolls the fixed windows forward to now and returns the sliding
// window's count at now. A clock that steps back is clamped to the window's
// start, so skew never empties a window.
func (w *Window) estimate(now, window int64) float64 {
	if now < w.Start {
		now = w.Start
	}
	switch elapsed := now - w.Start; {
	case w.Start == 0 || elapsed >= 2*window:
		w.Start, w.Prev, w.Curr = now, 0, 0
	case elapsed >= window:
		w.Start, w.Prev, w.Curr = w.Start+window, w.Curr, 0
	}
	overlap := float64(window-(now-w.Start)) / float64(window)
	return float64(w.Prev)*overlap + float64(w.Curr)
}

// Apply is the stores' atomic primitive, written once here for stores that
// run Go (the Redis store runs the same steps in Lua): if the key is banned
// at now (bannedUntil, Unix ms), say until when; else add n to its window and
// if that goes over r.Max, ban the key for r.Ban (starting the window over)
// or, without a ban, refuse the hit uncounted. It returns the new ban end (0
// for none) and whether w changed.
func Apply(w *Window, bannedUntil, now, n int64, r Rate) (h Hit, newBannedUntil int64) {
	h.Now = time.UnixMilli(now)
	if bannedUntil > now {
		h.BannedUntil = time.UnixMilli(bannedUntil)
		return h, bannedUntil
	}
	if r.Max <= 0 || r.Window <= 0 {
		return h, 0
	}
	// A window under 1 ms counts as 1 ms, as the Redis store's script
	// counts it: never divide by zero (config refuses windows under 1s).
	est := w.estimate(now, max(r.Window.Milliseconds(), 1)) + float64(n)
	h.Count = int64(est + 0.5)
	if est <= float64(r.Max) {
		w.Curr = satAdd(w.Curr, n)
		return h, 0
	}
	h.Crossed = true
	if r.Ban <= 0 {
		h.Count-- // not counted: a refused hit must not keep the key over its limit
		return h, 0
	}
	*w = Window{}
	until := now + r.Ban.Milliseconds()
	h.BannedUntil = time.UnixMilli(until)
	return h, until
}

func satAdd(c uint32, n int64) uint32 {
	if n <= 0 {
		return c
	}
	if s := int64(c) + n; s < int64(^uint32(0)) {
		return uint32(s)
	}
	return ^uint32(0)
}

// Verdict is the outcome of an admission.
type Verdict int

// The verdicts, in the order they are checked.
const (
	Admitted Verdict = iota
	RefusedBanned
	RefusedFrequency // this connection went over the limit (and started a ban when one is configured)
	RefusedConcurrencyAddress
	RefusedConcurrencyTotal
)

// Admission is the decision on a new connection.
type Admission struct {
	Verdict     Verdict
	Connections int64     // connections in the sliding window, this one included
	BanUntil    time.Time // set when banned (already, or by this connection)
	Now         time.Time // the store's clock at the frequency decision
	BanReason   string    // the stored reason of the ban, when banned
	Active      int64     // open sessions of the key before this one
	Total       int64     // open sessions in total before this one
}

// FrequencyVerdict turns the store's answer for the frequency rule into a
// verdict: an existing ban, a crossing, or admitted.
func FrequencyVerdict(h Hit) Admission {
	a := Admission{Connections: h.Count, BanUntil: h.BannedUntil, Now: h.Now, BanReason: h.BanReason}
	switch {
	case h.Crossed:
		a.Verdict = RefusedFrequency
		if h.BannedUntil.IsZero() {
			a.Connections++ // refused uncounted: this connection is the one over the limit
		}
	case !h.BannedUntil.IsZero():
		a.Verdict = RefusedBanned
	}
	return a
}

// Verdict decides the concurrency caps for a prefix with active open
// sessions out of total.
func (c Concurrency) Verdict(active, total int64) Verdict {
	switch {
	case c.MaxPerAddress > 0 && active >= c.MaxPerAddress:
		return RefusedConcurrencyAddress
	case c.MaxTotal > 0 && total >= c.MaxTotal:
		return RefusedConcurrencyTotal
	}
	return Admitted
}

// Refusal renders the reply for a refused admission, nil when admitted.
func (a Admission) Refusal(p Policy, replies Replies) *Refusal {
	f := p.Frequency
	switch a.Verdict {
	case RefusedBanned:
		return replies.bannedReply(a.BanReason, a.Connections, f, a.BanUntil.Sub(a.Now))
	case RefusedFrequency:
		if a.BanUntil.IsZero() {
			return replies.refusal(ReplyFrequencyNoBan, LimitFrequency, StageConnect, a.Connections, f.MaxConnections, f.Window, 0)
		}
		return replies.refusal(ReplyFrequency, LimitFrequency, StageConnect, a.Connections, f.MaxConnections, f.Window, a.BanUntil.Sub(a.Now))
	case RefusedConcurrencyAddress:
		return replies.refusal(ReplyConcurrencyAddress, LimitConcurrencyAddress, StageConnect, a.Active+1, p.Concurrency.MaxPerAddress, 0, 0)
	case RefusedConcurrencyTotal:
		return replies.refusal(ReplyConcurrencyTotal, LimitConcurrencyTotal, StageConnect, a.Total+1, p.Concurrency.MaxTotal, 0, 0)
	}
	return nil
}

// KeyFrequency is the key kind of the connection-frequency rule.
const KeyFrequency = "freq"

// StoreKey names what a store counts: the rule's kind, the scope of the
// policy that applies ("" for the default policy, Override.Scope for an
// override, so that a client is never refused by a count or ban of a policy
// that does not apply to it) and the address prefix.
func StoreKey(kind, scope string, p netip.Prefix) string {
	if scope == "" {
		return kind + ":" + p.String()
	}
	return kind + ":" + scope + ":" + p.String()
}

// ParseStoreKey splits a key made by StoreKey.
func ParseStoreKey(key string) (kind, scope string, p netip.Prefix, err error) {
	kind, rest, ok := strings.Cut(key, ":")
	if !ok {
		return "", "", netip.Prefix{}, fmt.Errorf("limits: store key %q has no kind", key)
	}
	if strings.HasPrefix(rest, "override") {
		scope, rest, _ = strings.Cut(rest, ":")
	}
	p, err = netip.ParsePrefix(rest)
	if err != nil {
		return "", "", netip.Prefix{}, fmt.Errorf("limits: store key %q: %w", key, err)
	}
	return kind, scope, p, nil
}
