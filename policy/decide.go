package policy

import (
	"net/netip"
	"time"

	"github.com/sessioncap/sessioncap/engine"
	"github.com/sessioncap/sessioncap/limits"
)

// handle decides one request; nil means DUNNO.
func (s *Server) handle(req *request, c *conn) *limits.Refusal {
	s.metrics.requests[req.state].Inc()
	if stage, ok := stageOf(req.state); ok {
		defer s.eng.Observe(stage, time.Now())
	}
	if req.state == stateOther {
		return nil
	}
	sess, hold := c.sessionFor(req, s.eng.Now())
	if hold {
		return nil // decided at the transaction's first RCPT (identify.go)
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	r, ended := s.decide(&sess.st, req)
	if ended {
		s.sessions.drop(sess)
		sess.st = sessionState{}
	}
	return r
}

// stageOf maps the protocol states that can refuse to the stage label of
// sessioncap_callback_duration_seconds.
func stageOf(st state) (limits.Stage, bool) {
	switch st {
	case stateConnect:
		return limits.StageConnect, true
	case stateMail:
		return limits.StageMail, true
	case stateRcpt:
		return limits.StageRcpt, true
	case stateEOM:
		return limits.StageEOM, true
	}
	return "", false
}

// decide applies the rules to one request of the session st; ended reports
// that the answer ends the SMTP session (an enforced 421).
func (s *Server) decide(st *sessionState, req *request) (r *limits.Refusal, ended bool) {
	changed := st.track(req.instance)
	if !st.started {
		if r := s.start(st, req); r != nil {
			if r.Code == 421 {
				return r, true
			}
			st.sticky = r
			return r, false
		}
	} else if st.sticky != nil {
		return st.sticky, false
	}
	switch req.state {
	case stateMail:
		r = s.startTx(st, req, true)
		st.pendingMail = true
	case stateRcpt:
		if !st.inTx || changed && !st.pendingMail {
			r = s.startTx(st, req, true)
		} else if st.txSticky != nil {
			r = st.txSticky
		}
		st.pendingMail = false
		if r == nil && !st.exempt {
			if r = s.refuse(st, st.counts.CheckRcpt(st.policy, st.rules.Replies), req); r == nil {
				st.counts.AcceptRecipient()
				st.txRcpts++
			}
		}
	case stateEOM:
		if !st.inTx || changed && !st.pendingMail {
			s.startTx(st, req, false)
		}
		r = s.endOfMessage(st, req)
	}
	return r, r != nil && r.Code == 421
}

// start counts a new session against the frequency rule.
func (s *Server) start(st *sessionState, req *request) *limits.Refusal {
	st.started = true
	st.rules = s.eng.Rules()
	s.metrics.shared.Sessions.Inc()
	if ip, err := netip.ParseAddr(string(req.clientAddr)); err == nil {
		st.addr, st.hasAddr = ip.Unmap().WithZone(""), true
		st.client = st.addr.String()
	} else if len(req.clientAddr) > 0 && string(req.clientAddr) != "unknown" {
		s.metrics.shared.Malformed.WithLabelValues(engine.MalformedClientAddr).Inc()
		if ok, suppressed := s.inputLog.Allow(time.Now()); ok {
			s.log.Warn("unparseable client_address; applying session caps only", "client_ip", string(req.clientAddr), "suppressed", suppressed)
		}
	}
	if !st.hasAddr {
		return nil
	}
	if r := st.rules.Denied(st.addr); r != nil {
		if r = s.refuse(st, r, req); r != nil {
			return r
		}
	}
	adm := s.eng.Admit(st.rules, st.addr, st.client)
	r := adm.Refusal(st.rules)
	if r == nil {
		return nil
	}
	return s.refuseAs(r, st.mode(r.Limit), st, req, adm.LogAttrs()...)
}

// startTx begins a transaction: it resolves the caps for this client
// (authentication may have happened since the session began, and overrides
// may match the user or the sender's domain) and, with check, applies the
// message and byte caps and the sender-networks rule as the milter does at
// MAIL FROM.
func (s *Server) startTx(st *sessionState, req *request, check bool) *limits.Refusal {
	st.counts.EndTransaction()
	st.inTx, st.txRcpts, st.txSticky, st.pendingMail = true, 0, nil, false
	user := string(req.saslUsername)
	domain, _ := limits.SenderDomain(string(req.sender))
	st.policy, st.exempt = st.rules.ForClient(limits.Client{
		Addr: st.addr, HasAddr: st.hasAddr, Authenticated: user != "", User: user, SenderDomain: domain,
	})
	if !check {
		return nil
	}
	var r *limits.Refusal
	if !st.exempt {
		size := req.size
		if size <= 0 { // Postfix sends 0 for no SIZE=
			size = -1
		}
		r = s.refuse(st, st.counts.CheckMail(st.policy, st.rules.Replies, size), req)
	}
	if r == nil && len(req.sender) > 0 {
		c := s.eng.CheckSender(st.rules, st.addr, st.hasAddr, string(req.sender), user != "", st.client, string(req.queueID))
		if c.Refusal != nil {
			r = s.refuseAs(c.Refusal, c.Mode, st, req, c.Attrs...)
		}
	}
	if r != nil && r.Code != 421 {
		st.txSticky = r
	}
	return r
}

// endOfMessage counts the message's real size and the recipients Postfix
// accepted, and with overrun = "tempfail" refuses a message that crossed the
// byte cap, with 421 (see hangUp).
func (s *Server) endOfMessage(st *sessionState, req *request) *limits.Refusal {
	if req.size > 0 {
		st.counts.AddBytes(int(req.size))
		if st.rules.NeedsBodies() {
			s.metrics.shared.MessageBytes.Add(float64(req.size))
		}
	}
	if req.rcptCount > 0 {
		st.counts.Recipients = max(0, st.counts.Recipients+req.rcptCount-st.txRcpts)
	}
	var r *limits.Refusal
	if !st.exempt {
		r = s.refuse(st, hangUp(st.counts.CheckEOM(st.policy, st.rules.Replies)), req)
	}
	if r == nil {
		st.counts.AcceptMessage()
		s.metrics.shared.Messages.Inc()
	}
	st.counts.EndTransaction()
	st.inTx, st.txRcpts, st.txSticky, st.pendingMail = false, 0, nil, false
	return r
}

// hangUp turns a refusal at END-OF-MESSAGE into a 421 with the same
// enhanced code and text. Postfix from 2.2 until the fix of 20260803 (3.12
// snapshot) does not reset the transaction when smtpd_end_of_data_restrictions
// reject: after a 452 the client's next MAIL gets "503 5.5.1 Error: nested
// MAIL command", a permanent error that would bounce the next message. A
// 421 ends the session after the reply, so the sender keeps the message and
// sends it again on a new connection, which is what the overrun reply asks
// for anyway.
func hangUp(r *limits.Refusal) *limits.Refusal {
	if r == nil || r.Code == 421 {
		return r
	}
	c := *r
	c.Code = 421
	return &c
}

// refuse logs and counts r and returns what to answer: r, or nil when r is
// nil or its limit's mode does not refuse. The policy path cannot add
// headers, so a limit in tag mode is only logged and counted here (mode
// "tag"), like monitor; a limit that is off is not even logged.
func (s *Server) refuse(st *sessionState, r *limits.Refusal, req *request) *limits.Refusal {
	if r == nil {
		return nil
	}
	return s.refuseAs(r, st.mode(r.Limit), st, req)
}

// refuseAs is refuse under a mode the caller resolved, with extra log
// attributes.
func (s *Server) refuseAs(r *limits.Refusal, mode limits.Mode, st *sessionState, req *request, attrs ...any) *limits.Refusal {
	if !mode.Decides() {
		return nil
	}
	s.eng.LogRefusal(r, mode, st.client, string(req.queueID), attrs...)
	if !mode.Refuses() {
		return nil
	}
	return r
}

// mode resolves the mode of limit l for this session: the session caps of
// the current transaction, the connect-time policy for the others.
func (st *sessionState) mode(l limits.Limit) limits.Mode {
	switch l {
	case limits.LimitSessionMessages, limits.LimitSessionBytes, limits.LimitSessionRecipients:
		return st.rules.ModeOf(st.policy.Mode)
	}
	p := st.rules.Default
	if st.hasAddr {
		p, _, _ = st.rules.ForConnect(st.addr)
	}
	return st.rules.LimitMode(&p, l)
}
