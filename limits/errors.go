package limits

import "time"

// Errors is the rule on SMTP errors (ASSP's MaxErrors): rejected recipients
// and unknown commands per session, and rejected recipients per address
// prefix across sessions, so that a directory harvester that reconnects is
// banned anyway. Zero disables each part.
type Errors struct {
	// MaxPerSession: after this many rejected recipients and unknown
	// commands in one session, the next MAIL or RCPT gets 421.
	MaxPerSession int64
	// MaxPerWindow rejected recipients per prefix within Window ban the
	// prefix for Ban (checked at connect, and at the next MAIL or RCPT of
	// the session that crossed it). The window refuses only by banning, so
	// Rules.Validate rejects a MaxPerWindow without a Ban.
	MaxPerWindow int64
	Window       time.Duration
	Ban          time.Duration
	Mode         Mode // "" for Rules.Mode
}

// KeyErrors is the key kind of the rejected-recipients window.
const KeyErrors = "err"

// On reports whether any part of the rule is configured.
func (e Errors) On() bool { return e.MaxPerSession > 0 || e.windowOn() }

func (e Errors) windowOn() bool { return e.MaxPerWindow > 0 && e.Window > 0 }

// Rate returns the store rule of the rejected-recipients window (the zero
// Rate, which only asks for a ban, when that part is off).
func (e Errors) Rate() Rate {
	if !e.windowOn() {
		return Rate{}
	}
	return Rate{Max: e.MaxPerWindow, Window: e.Window, Ban: e.Ban, Reason: string(LimitErrors)}
}

// AddError counts a rejected recipient or an unknown command.
func (s *SessionState) AddError() { s.Errors++ }

// CheckErrors decides MAIL or RCPT (stage) after errors: the per-session
// cap, then a ban of the rejected-recipients window in force until
// bannedUntil (zero for none) at now.
func (s *SessionState) CheckErrors(e Errors, replies Replies, stage Stage, bannedUntil, now time.Time) *Refusal {
	if e.MaxPerSession > 0 && s.Errors >= e.MaxPerSession {
		return replies.refusal(ReplyErrors, LimitErrors, stage, s.Errors, e.MaxPerSession, 0, 0)
	}
	return e.BanRefusal(replies, stage, bannedUntil, now)
}

// BanRefusal renders the refusal of a prefix banned by the
// rejected-recipients window until bannedUntil, nil when not banned at now.
func (e Errors) BanRefusal(replies Replies, stage Stage, bannedUntil, now time.Time) *Refusal {
	if !bannedUntil.After(now) {
		return nil
	}
	return replies.refusal(ReplyErrorsBanned, LimitErrors, stage, 0, e.MaxPerWindow, e.Window, bannedUntil.Sub(now))
}
