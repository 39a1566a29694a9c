package limits

import "time"

// Window is the connection-frequency state of one address prefix: a sliding
// window approximated by two fixed windows (the count of the previous window
// weighted by how much of it still overlaps the sliding window, plus the
// count of the current one), and the end of a ban. It takes 24 bytes whatever
// the rate, so a store can track a million prefixes; unlike a fixed window it
// gives no burst at a window edge. The zero value is an address never seen.
type Window struct {
	Start       int64  // unix nanoseconds at which the current fixed window began
	Prev, Curr  uint32 // connections counted in the previous and current fixed windows
	BannedUntil int64  // unix nanoseconds; 0 when not banned
}

// Banned reports whether the prefix is banned at now.
func (w *Window) Banned(now time.Time) bool {
	return w.BannedUntil != 0 && now.UnixNano() < w.BannedUntil
}

// estimate rolls the fixed windows forward to now and returns how many
// connections the sliding window ending at now holds.
func (w *Window) estimate(now int64, window int64) float64 {
	switch elapsed := now - w.Start; {
	case w.Start == 0 || elapsed >= 2*window || elapsed < 0:
		w.Start, w.Prev, w.Curr = now, 0, 0
	case elapsed >= window:
		w.Start, w.Prev, w.Curr = w.Start+window, w.Curr, 0
	}
	overlap := float64(window-(now-w.Start)) / float64(window)
	return float64(w.Prev)*overlap + float64(w.Curr)
}

// Verdict is the outcome of an admission.
type Verdict int

// The verdicts, in the order they are checked.
const (
	Admitted Verdict = iota
	RefusedBanned
	RefusedFrequency // this connection crossed the limit and started a ban
	RefusedConcurrencyAddress
	RefusedConcurrencyTotal
)

// Admission is the result of Admit.
type Admission struct {
	Verdict     Verdict
	Connections int64     // connections in the sliding window, this one included
	BanUntil    time.Time // set when banned (already, or by this connection)
	Active      int64     // open sessions of the prefix before this one
	Total       int64     // open sessions in total before this one
	Open        bool      // the store must count this session as open
}

// Admit decides a new connection of a prefix whose state is w and whose open
// sessions are active (total over all prefixes: total), and updates w. Order:
// an existing ban, then the frequency rule (the crossing connection starts a
// ban; when a ban ends the prefix starts over with an empty window), then
// concurrency. In monitor mode the session is counted as open even when
// refused, because it goes on.
func Admit(w *Window, active, total int64, now time.Time, p Policy, mode Mode) Admission {
	a := Admission{Active: active, Total: total}
	t := now.UnixNano()
	if w.BannedUntil != 0 && t >= w.BannedUntil {
		*w = Window{}
	}
	switch {
	case w.Banned(now):
		a.Verdict, a.BanUntil = RefusedBanned, time.Unix(0, w.BannedUntil)
	case p.Frequency.MaxConnections > 0 && p.Frequency.Window > 0:
		est := w.estimate(t, int64(p.Frequency.Window)) + 1
		if w.Curr < ^uint32(0) {
			w.Curr++
		}
		a.Connections = int64(est + 0.5)
		if est > float64(p.Frequency.MaxConnections) && p.Frequency.Ban > 0 {
			w.BannedUntil = t + int64(p.Frequency.Ban)
			a.Verdict, a.BanUntil = RefusedFrequency, time.Unix(0, w.BannedUntil)
		} else if est > float64(p.Frequency.MaxConnections) {
			a.Verdict = RefusedFrequency // no ban configured: refuse this one only
		}
	}
	if a.Verdict == Admitted {
		switch c := p.Concurrency; {
		case c.MaxPerAddress > 0 && active >= c.MaxPerAddress:
			a.Verdict = RefusedConcurrencyAddress
		case c.MaxTotal > 0 && total >= c.MaxTotal:
			a.Verdict = RefusedConcurrencyTotal
		}
	}
	a.Open = a.Verdict == Admitted || mode == ModeMonitor
	return a
}

// Refusal renders the reply for a refused admission, nil when admitted.
func (a Admission) Refusal(p Policy, replies Replies, now time.Time) *Refusal {
	f := p.Frequency
	switch a.Verdict {
	case RefusedBanned:
		return replies.refusal(ReplyBanned, LimitBanned, StageConnect, a.Connections, f.MaxConnections, f.Window, a.BanUntil.Sub(now))
	case RefusedFrequency:
		return replies.refusal(ReplyFrequency, LimitFrequency, StageConnect, a.Connections, f.MaxConnections, f.Window, f.Ban)
	case RefusedConcurrencyAddress:
		return replies.refusal(ReplyConcurrencyAddress, LimitConcurrencyAddress, StageConnect, a.Active+1, p.Concurrency.MaxPerAddress, 0, 0)
	case RefusedConcurrencyTotal:
		return replies.refusal(ReplyConcurrencyTotal, LimitConcurrencyTotal, StageConnect, a.Total+1, p.Concurrency.MaxTotal, 0, 0)
	}
	return nil
}
