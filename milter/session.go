package milter

import (
	"net/netip"
	"strconv"
	"strings"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// session is the milter for one SMTP session. go-milter calls its methods one
// at a time, so its counters are plain fields.
type session struct {
	gomilter.NoOpMilter
	srv   *Server
	proto gomilter.OptProtocol // negotiated for this milter connection
	rules *limits.Rules        // the rules of this SMTP session, enforceable under proto

	connected bool   // Connect was seen and counted in sessions_active
	client    string // client address for logs ("" for none)
	addr      netip.Addr
	hasAddr   bool
	lease     *counters.Lease // the open-session count; released at the end

	state   limits.SessionState
	policy  limits.Session // caps of the current transaction
	exempt  bool           // the current transaction is exempt from session caps
	queueID string
}

var _ gomilter.Milter = (*session)(nil)

// NewConnection starts a session. go-milter also calls it when the MTA reuses
// the milter connection for another SMTP session: end the previous one first.
// The session takes the current rules when the negotiated protocol delivers
// every event they need; after a reload that needs more (a new byte or
// recipient cap), a reused milter connection keeps the rules it negotiated
// with, and the next milter connection gets the new ones.
func (s *session) NewConnection(gomilter.Modifier) error {
	s.end()
	prev := s.rules
	*s = session{srv: s.srv, proto: s.proto, rules: s.srv.eng.Rules()}
	if s.srv.enforceable(s.rules, s.proto) {
		return nil
	}
	if prev == nil { // a reload between negotiation and the first session
		prev = s.srv.eng.PrevRules()
	}
	if prev != nil && s.srv.enforceable(prev, s.proto) {
		s.rules = prev
		s.srv.log.Info("reloaded rules need milter events this connection did not negotiate; it keeps the previous rules until it closes")
	}
	return nil
}

// Cleanup ends the session however it ended: QUIT, abort, MTA timeout or a
// dropped milter connection.
func (s *session) Cleanup(gomilter.Modifier) { s.end() }

func (s *session) end() {
	s.lease.Release()
	s.lease = nil
	if s.connected {
		s.connected = false
		s.srv.metrics.sessionsActive.Dec()
	}
}

// Connect counts the session and applies the frequency ban and concurrency
// rules to IP clients. A session without an IP address (unix socket, family
// "unknown") gets session caps only. A second CONNECT on one milter
// connection ends the first session.
func (s *session) Connect(_ string, family string, _ uint16, addr string, m gomilter.Modifier) (*gomilter.Response, error) {
	defer s.srv.observe(limits.StageConnect, time.Now())
	if s.rules == nil { // Connect without NewConnection: only in broken call orders
		s.rules = s.srv.eng.Rules()
	}
	if s.connected {
		s.end()
		s.state, s.addr, s.hasAddr, s.client = limits.SessionState{}, netip.Addr{}, false, ""
	}
	s.connected = true
	s.srv.metrics.sessions.Inc()
	s.srv.metrics.sessionsActive.Inc()
	if family != "tcp4" && family != "tcp6" {
		return gomilter.RespContinue, nil
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		if alt := m.Get(gomilter.MacroClientAddr); alt != "" {
			ip, err = netip.ParseAddr(strings.TrimPrefix(alt, "IPv6:"))
		}
	}
	if err != nil {
		s.srv.metrics.malformed.WithLabelValues(malformedClientAddr).Inc()
		s.srv.log.Warn("unparseable client address; applying session caps only", "client_ip", addr, "family", family, "err", err)
		return gomilter.RespContinue, nil
	}
	s.addr, s.hasAddr = ip.Unmap().WithZone(""), true
	s.client = s.addr.String()
	adm := s.srv.eng.Admit(s.rules, s.addr, s.client)
	if adm.Exempt {
		return gomilter.RespContinue, nil
	}
	if adm.Unavailable {
		return s.refuse(adm.Refusal(s.rules))
	}
	a, policy, scope, prefix := adm.Admission, adm.Policy, adm.Scope, adm.Prefix
	monitor := s.rules.Mode == limits.ModeMonitor
	if a.Verdict == limits.Admitted || monitor {
		var v limits.Verdict
		s.lease, v, a.Active, a.Total = s.srv.leases.Acquire(limits.StoreKey("conn", scope, prefix), policy.Concurrency, monitor)
		if a.Verdict == limits.Admitted {
			a.Verdict = v
		}
	}
	return s.refuse(a.Refusal(policy, s.rules.Replies))
}

// MailFrom starts a transaction: it resolves the session caps for this
// client (authentication may have happened since connect) and applies the
// message and byte caps.
func (s *session) MailFrom(_ string, esmtpArgs string, m gomilter.Modifier) (*gomilter.Response, error) {
	defer s.srv.observe(limits.StageMail, time.Now())
	if s.rules == nil {
		s.rules = s.srv.eng.Rules()
	}
	s.state.EndTransaction()
	s.queueID = m.Get(gomilter.MacroQueueId)
	s.policy, s.exempt = s.rules.ForTransaction(s.addr, s.hasAddr, m.Get(gomilter.MacroAuthAuthen) != "")
	if s.exempt {
		return gomilter.RespContinue, nil
	}
	return s.refuse(s.state.CheckMail(s.policy, s.rules.Replies, s.sizeParam(esmtpArgs)))
}

// sizeParam returns the SIZE= value of MAIL FROM, -1 when absent or invalid.
// A bad value is logged and counted, never refused by itself.
func (s *session) sizeParam(args string) int64 {
	for args != "" {
		var f string
		f, args, _ = strings.Cut(args, " ")
		if len(f) < 5 || !strings.EqualFold(f[:5], "SIZE=") {
			continue
		}
		n, err := strconv.ParseInt(f[5:], 10, 64)
		if err != nil || n < 0 {
			s.srv.metrics.malformed.WithLabelValues(malformedSize).Inc()
			s.srv.log.Warn("ignoring unparseable SIZE parameter", "client_ip", s.client, "queue_id", s.queueID, "value", f)
			return -1
		}
		return n
	}
	return -1
}

// RcptTo applies the recipient cap. It is only called when a recipient cap is
// configured (negotiation), and must not answer "skip" like NoOpMilter does.
func (s *session) RcptTo(_ string, _ string, m gomilter.Modifier) (*gomilter.Response, error) {
	defer s.srv.observe(limits.StageRcpt, time.Now())
	if s.exempt || s.rules == nil {
		return gomilter.RespContinue, nil
	}
	if id := m.Get(gomilter.MacroQueueId); id != "" {
		s.queueID = id
	}
	if r := s.state.CheckRcpt(s.policy, s.rules.Replies); r != nil {
		return s.refuse(r)
	}
	s.state.AcceptRecipient()
	return gomilter.RespContinue, nil
}

// Header counts a header line as name ": " value CRLF. The MTA expects no
// reply when it supports that (negotiated); the decision waits for MAIL or
// end of message.
func (s *session) Header(name, value string, _ gomilter.Modifier) (*gomilter.Response, error) {
	s.state.AddBytes(len(name) + len(value) + 4)
	return gomilter.RespContinue, nil
}

// BodyChunk counts body bytes. It never refuses: a message in flight is
// finished, never cut.
func (s *session) BodyChunk(chunk []byte, _ gomilter.Modifier) (*gomilter.Response, error) {
	s.state.AddBytes(len(chunk))
	return gomilter.RespContinue, nil
}

// EndOfMessage counts the message and, with overrun = "tempfail", refuses a
// message that crossed the byte cap with a 452 that keeps the mail with the
// sender.
func (s *session) EndOfMessage(m gomilter.Modifier) (*gomilter.Response, error) {
	defer s.srv.observe(limits.StageEOM, time.Now())
	if id := m.Get(gomilter.MacroQueueId); id != "" {
		s.queueID = id
	}
	if s.rules != nil && s.rules.NeedsBodies() {
		s.countSize(m.Get(macroMsgSize))
	}
	if s.state.TxBytes > 0 {
		s.srv.metrics.messageBytes.Add(float64(s.state.TxBytes))
	}
	var r *limits.Refusal
	if !s.exempt && s.rules != nil {
		r = s.state.CheckEOM(s.policy, s.rules.Replies)
	}
	resp, _ := s.refuse(r)
	if resp == gomilter.RespContinue {
		s.state.AcceptMessage()
		s.srv.metrics.messages.Inc()
		resp = gomilter.RespAccept
	}
	s.state.EndTransaction()
	return resp, nil
}

// countSize takes the message's size from {msg_size} when headers and body
// were not sent, and learns whether the MTA reports it.
func (s *session) countSize(raw string) {
	n, err := strconv.ParseInt(raw, 10, 64)
	ok := err == nil && n >= 0
	if raw != "" && !ok {
		s.srv.metrics.malformed.WithLabelValues(malformedMsgSize).Inc()
		s.srv.log.Warn("ignoring unparseable {msg_size}", "client_ip", s.client, "queue_id", s.queueID, "value", raw)
	}
	s.srv.learnSizeMacro(ok)
	switch {
	case !sizeByMacro(s.proto):
		s.srv.metrics.sizeSource.WithLabelValues(sizeFromStream).Inc()
	case ok:
		s.state.AddBytes(int(min(n, 1<<40)))
		s.srv.metrics.sizeSource.WithLabelValues(sizeFromMacro).Inc()
	default:
		s.srv.metrics.sizeSource.WithLabelValues(sizeUnknown).Inc()
		s.srv.log.Warn("no message size: neither headers and body nor {msg_size} were sent; the message counts 0 bytes", "client_ip", s.client, "queue_id", s.queueID)
	}
}

// Abort ends the transaction (go-milter also synthesises it before a new
// MAIL); bytes received stay counted against the session.
func (s *session) Abort(gomilter.Modifier) error {
	s.state.EndTransaction()
	s.exempt = false
	return nil
}

// refuse logs and counts r and turns it into the reply, or into continue in
// monitor mode or when r is nil. It never returns a Go error: that would make
// the MTA apply milter_default_action to the whole session.
func (s *session) refuse(r *limits.Refusal) (*gomilter.Response, error) {
	if r == nil {
		return gomilter.RespContinue, nil
	}
	mode := s.rules.Mode
	s.srv.logRefusal(r, mode, s.client, s.queueID)
	if mode == limits.ModeMonitor {
		return gomilter.RespContinue, nil
	}
	resp, err := gomilter.RejectWithCodeAndReason(uint16(r.Code), r.Reason())
	if err != nil { // replies are validated at load; this is a last resort
		s.srv.log.Error("cannot build reply; answering a plain tempfail", "reply", r.Error(), "err", err)
		return gomilter.RespTempFail, nil
	}
	return resp, nil
}
