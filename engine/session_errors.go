package engine

import (
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// The errors rule in the session core: rejected recipients and unknown
// commands per session, and rejected recipients per address prefix across
// sessions (a ban in the store).

// admitErrors refuses a prefix banned for rejected recipients under the
// connect-time policy (only when that rule is on: one more store round trip
// at connect). A store error lets the connection through.
func (s *Session) admitErrors(policy *limits.Policy) Verdict {
	mode := s.rules.LimitMode(policy, limits.LimitErrors)
	if policy.Errors.MaxPerWindow <= 0 || !mode.Decides() {
		return Verdict{}
	}
	h, ok := s.errorsBan(s.errKey, s.errScope)
	if !ok {
		return Verdict{}
	}
	s.errBanUntil = h.BannedUntil
	return s.decide(check{refusal: policy.Errors.BanRefusal(s.rules.Replies, limits.StageConnect, h.BannedUntil, h.Now), mode: mode})
}

// errorsBan asks the store whether key (of scope) is banned for rejected
// recipients, also under the prefix lengths of rules a reload replaced.
// ok is false when the store failed (logged and counted).
func (s *Session) errorsBan(key, scope string) (h limits.Hit, ok bool) {
	ctx, cancel := s.eng.StoreContext()
	defer cancel()
	h, err := s.eng.store.Hit(ctx, key, 0, limits.Rate{})
	if err == nil && h.BannedUntil.IsZero() && s.addr.IsValid() {
		// a ban keyed under the prefix lengths before a reload
		h, err = s.eng.LegacyBan(ctx, limits.KeyErrors, scope, s.addr, key)
	}
	if err != nil {
		s.eng.metrics.StoreErrors.WithLabelValues("hit").Inc()
		s.eng.log.Error("store call failed; letting the session through", "client_ip", s.client, "queue_id", s.queueID, "key", key, "err", err)
		return limits.Hit{}, false
	}
	return h, true
}

// resolveErrors takes the errors rule of the transaction's client c. When
// the policy that applies from MAIL on (an override on users, sender
// domains or authentication) is not the connect-time one, its rejected
// recipients are counted under its own key, and a ban of that key started
// in an earlier session is looked up here: a harvester that reconnects
// gets the 421 at MAIL.
func (s *Session) resolveErrors(c limits.Client) {
	r := s.rules
	i := r.OverrideFor(c)
	if i >= 0 {
		s.errors = r.Overrides[i].Policy.Errors
	} else {
		s.errors = r.Default.Errors
	}
	if s.errKey == "" || !c.HasAddr {
		return // exempt at connect, or no address: no window
	}
	scope := r.Scope(i)
	if scope == s.errScope {
		return
	}
	s.errScope = scope
	s.errKey = limits.StoreKey(limits.KeyErrors, scope, r.Key(s.addr))
	s.errBanUntil = time.Time{}
	if s.errors.MaxPerWindow <= 0 || !r.ModeOf(s.errors.Mode).Decides() {
		return
	}
	if h, ok := s.errorsBan(s.errKey, scope); ok {
		s.errBanUntil = h.BannedUntil
	}
}

// countError counts a rejected recipient (rcpt) or an unknown command
// against the session and, for a rejected recipient, against the prefix's
// window, which may start a ban.
func (s *Session) countError(rcpt bool) {
	mode := s.rules.ModeOf(s.errors.Mode)
	if !s.errors.On() || !mode.Decides() {
		return
	}
	s.state.AddError()
	if !rcpt || s.errors.MaxPerWindow <= 0 || !s.addr.IsValid() || s.errKey == "" {
		return
	}
	ctx, cancel := s.eng.StoreContext()
	defer cancel()
	h, err := s.eng.store.Hit(ctx, s.errKey, 1, s.errors.Rate())
	if err != nil {
		s.eng.metrics.StoreErrors.WithLabelValues("hit").Inc()
		s.eng.log.Error("store call failed; the rejected recipient is counted in this session only", "client_ip", s.client, "key", s.errKey, "err", err)
		return
	}
	if !h.BannedUntil.IsZero() {
		s.errBanUntil = h.BannedUntil
	}
	if h.Crossed && !h.BannedUntil.IsZero() {
		s.eng.metrics.Bans.WithLabelValues(string(mode)).Inc()
		s.eng.log.Warn("banned",
			"client_ip", s.client, "key", s.errKey, "limit", string(limits.LimitErrors),
			"value", h.Count, "cap", s.errors.MaxPerWindow, "window", s.errors.Window.String(), "ban", s.errors.Ban.String(),
			"until", h.BannedUntil.UTC().Format(time.RFC3339), "mode", string(mode), "origin", string(limits.LimitErrors))
	}
}

// checkErrors decides MAIL or RCPT after errors (per session, or a ban the
// rejected recipients started).
func (s *Session) checkErrors(stage limits.Stage) check {
	mode := s.rules.ModeOf(s.errors.Mode)
	if s.errExempt || !s.errors.On() || !mode.Decides() {
		return check{}
	}
	return check{refusal: s.state.CheckErrors(s.errors, s.rules.Replies, stage, s.errBanUntil, s.eng.Now()), mode: mode}
}

func (s *Session) mailErrors() check       { return s.checkErrors(limits.StageMail) }
func (s *Session) rcptErrors(string) check { return s.checkErrors(limits.StageRcpt) }
