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

// decide translates one request of the session st into the events of the
// session core; ended reports that the answer ends the SMTP session (an
// enforced 421).
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
	core := st.core
	core.SetQueueID(string(req.queueID))
	switch req.state {
	case stateMail:
		r = s.startTx(st, req, true)
		st.pendingMail = true
	case stateRcpt:
		if !core.InTransaction() || changed && !st.pendingMail {
			r = s.startTx(st, req, true)
		} else if st.txSticky != nil {
			r = st.txSticky
		}
		st.pendingMail = false
		if r == nil {
			r = core.Rcpt(string(req.recipient)).Refusal
		}
	case stateEOM:
		if !core.InTransaction() || changed && !st.pendingMail {
			s.startTx(st, req, false)
		}
		r = s.endOfMessage(st, req)
	}
	return r, r != nil && r.Code == 421
}

// start begins the session core with the client's address (none when the
// request has no usable one: session caps only) and returns its refusal.
func (s *Server) start(st *sessionState, req *request) *limits.Refusal {
	st.started = true
	st.core = s.eng.NewSession(nil, engine.Options{EOMRefusal: hangUp})
	st.core.SetQueueID(string(req.queueID))
	ip, err := netip.ParseAddr(string(req.clientAddr))
	if err != nil {
		ip = netip.Addr{}
		if len(req.clientAddr) > 0 && string(req.clientAddr) != "unknown" {
			s.metrics.shared.Malformed.WithLabelValues(engine.MalformedClientAddr).Inc()
			if ok, suppressed := s.inputLog.Allow(time.Now()); ok {
				s.log.Warn("unparseable client_address; applying session caps only", "client_ip", string(req.clientAddr), "suppressed", suppressed)
			}
		}
	}
	return st.core.Connect(ip).Refusal
}

// startTx begins a transaction with the request's sender, size and SASL
// login (authentication may have happened since the session began, and
// overrides may match the user or the sender's domain) and, with check,
// has it decided as the milter's MAIL FROM is; without, only resolved (a
// transaction first seen at END-OF-MESSAGE).
func (s *Server) startTx(st *sessionState, req *request, check bool) *limits.Refusal {
	st.txSticky, st.pendingMail = nil, false
	size := req.size
	if size <= 0 { // Postfix sends 0 for no SIZE=
		size = -1
	}
	m := engine.Mail{Sender: string(req.sender), Size: size, User: string(req.saslUsername), QueueID: string(req.queueID)}
	if !check {
		st.core.Resume(m)
		return nil
	}
	r := st.core.Mail(m).Refusal
	if r != nil && r.Code != 421 {
		st.txSticky = r
	}
	return r
}

// endOfMessage passes the message's real size and the recipients Postfix
// accepted; with overrun = "tempfail" a message that crossed the byte cap
// is refused with 421 (see hangUp).
func (s *Server) endOfMessage(st *sessionState, req *request) *limits.Refusal {
	size, rcpts := req.size, req.rcptCount
	if size <= 0 {
		size = -1
	}
	if rcpts <= 0 {
		rcpts = -1
	}
	r := st.core.EndOfMessage(size, rcpts).Refusal
	st.txSticky, st.pendingMail = nil, false
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
