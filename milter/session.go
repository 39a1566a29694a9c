package milter

import (
	"net/netip"
	"strconv"
	"strings"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/sessioncap/sessioncap/engine"
	"github.com/sessioncap/sessioncap/limits"
)

// session translates the milter protocol of one SMTP session into the
// events of the session core (engine.Session) and its verdicts into milter
// responses. go-milter calls its methods one at a time.
type session struct {
	gomilter.NoOpMilter
	srv     *Server
	proto   gomilter.OptProtocol // negotiated for this milter connection
	actions gomilter.OptAction   // negotiated for this milter connection
	rules   *limits.Rules        // the rules of this SMTP session, enforceable under proto and actions

	core *engine.Session // nil before Connect
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
	*s = session{srv: s.srv, proto: s.proto, actions: s.actions, rules: s.srv.eng.Rules()}
	if s.srv.enforceable(s.rules, s.proto, s.actions) {
		return nil
	}
	if prev == nil { // a reload between negotiation and the first session
		prev = s.srv.eng.PrevRules()
	}
	if prev != nil && s.srv.enforceable(prev, s.proto, s.actions) {
		s.rules = prev
		s.srv.log.Info("reloaded rules need milter events this connection did not negotiate; it keeps the previous rules until it closes")
	}
	return nil
}

// Cleanup ends the session however it ended: QUIT, abort, MTA timeout or a
// dropped milter connection.
func (s *session) Cleanup(gomilter.Modifier) { s.end() }

func (s *session) end() {
	if s.core != nil {
		s.core.End()
		s.core = nil
		s.srv.metrics.sessionsActive.Dec()
	}
}

// start begins the core session of an SMTP session; the milter sees every
// session end, so it holds concurrency leases.
func (s *session) start() *engine.Session {
	if s.rules == nil { // events without NewConnection: only in broken call orders
		s.rules = s.srv.eng.Rules()
	}
	s.core = s.srv.eng.NewSession(s.rules, engine.Options{
		Leases: s.srv.leases,
		CanTag: s.actions&gomilter.OptAddHeader != 0,
	})
	s.srv.metrics.sessionsActive.Inc()
	if s.rules.NeedsTagging() && s.actions&gomilter.OptAddHeader == 0 {
		// enforceable() keeps rules with tag modes off connections that
		// cannot add headers; this is only reached after a reload raced.
		s.srv.log.Warn("cannot tag: the MTA did not allow adding headers on this milter connection; limits in tag mode are only logged")
	}
	return s.core
}

// sess returns the core session, starting one for events that come without
// Connect (broken call orders).
func (s *session) sess() *engine.Session {
	if s.core == nil {
		s.start()
	}
	return s.core
}

// Connect starts the core session with the client's IP address, or none
// (unix socket, family "unknown", an unparseable address: session caps
// only). A second CONNECT on one milter connection ends the first session.
func (s *session) Connect(_ string, family string, _ uint16, addr string, m gomilter.Modifier) (*gomilter.Response, error) {
	defer s.srv.observe(limits.StageConnect, time.Now())
	s.end()
	core := s.start()
	if family != "tcp4" && family != "tcp6" {
		return s.respond(core.Connect(netip.Addr{}))
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
		ip = netip.Addr{}
	}
	return s.respond(core.Connect(ip))
}

// Unknown counts an unknown SMTP command as an error. The MTA has already
// answered it; it is sent only while the errors rule is on.
func (s *session) Unknown(_ string, _ gomilter.Modifier) (*gomilter.Response, error) {
	s.sess().Unknown()
	return gomilter.RespContinue, nil
}

// MailFrom starts a transaction with the sender, SIZE= and the SASL login.
func (s *session) MailFrom(from string, esmtpArgs string, m gomilter.Modifier) (*gomilter.Response, error) {
	defer s.srv.observe(limits.StageMail, time.Now())
	core := s.sess()
	queueID := m.Get(gomilter.MacroQueueId)
	return s.respond(core.Mail(engine.Mail{
		Sender:  from,
		Size:    s.sizeParam(esmtpArgs, core.Client(), queueID),
		User:    m.Get(gomilter.MacroAuthAuthen),
		QueueID: queueID,
	}))
}

// sizeParam returns the SIZE= value of MAIL FROM, -1 when absent or invalid.
// A bad value is logged and counted, never refused by itself.
func (s *session) sizeParam(args, client, queueID string) int64 {
	for args != "" {
		var f string
		f, args, _ = strings.Cut(args, " ")
		if len(f) < 5 || !strings.EqualFold(f[:5], "SIZE=") {
			continue
		}
		n, err := strconv.ParseInt(f[5:], 10, 64)
		if err != nil || n < 0 {
			s.srv.metrics.malformed.WithLabelValues(malformedSize).Inc()
			s.srv.log.Warn("ignoring unparseable SIZE parameter", "client_ip", client, "queue_id", queueID, "value", f)
			return -1
		}
		return n
	}
	return -1
}

// RcptTo passes a recipient, or one the MTA rejected ({rcpt_mailer}
// "error", sent with SMFIP_RCPT_REJ for the errors rule: the MTA has
// answered already). It is only called when the rules need recipients
// (negotiation), and must not answer "skip" like NoOpMilter does.
func (s *session) RcptTo(rcpt string, _ string, m gomilter.Modifier) (*gomilter.Response, error) {
	defer s.srv.observe(limits.StageRcpt, time.Now())
	if s.core == nil {
		return gomilter.RespContinue, nil
	}
	s.core.SetQueueID(m.Get(gomilter.MacroQueueId))
	if m.Get(gomilter.MacroRcptMailer) == "error" {
		s.core.RcptRejected(rcpt)
		return gomilter.RespContinue, nil
	}
	return s.respond(s.core.Rcpt(rcpt))
}

// Header counts a header line as name ": " value CRLF. The MTA expects no
// reply when it supports that (negotiated); the decision waits for MAIL or
// end of message.
func (s *session) Header(name, value string, _ gomilter.Modifier) (*gomilter.Response, error) {
	s.sess().Bytes(len(name) + len(value) + 4)
	return gomilter.RespContinue, nil
}

// BodyChunk counts body bytes. It never refuses: a message in flight is
// finished, never cut.
func (s *session) BodyChunk(chunk []byte, _ gomilter.Modifier) (*gomilter.Response, error) {
	s.sess().Bytes(len(chunk))
	return gomilter.RespContinue, nil
}

// EndOfMessage answers: accept with the tag headers, or, with overrun =
// "tempfail", a 452 that keeps the mail with the sender. The message's
// bytes were counted from its headers and body (a byte cap negotiates
// them on every milter connection).
func (s *session) EndOfMessage(m gomilter.Modifier) (*gomilter.Response, error) {
	defer s.srv.observe(limits.StageEOM, time.Now())
	core := s.sess()
	core.SetQueueID(m.Get(gomilter.MacroQueueId))
	v := core.EndOfMessage(-1, -1)
	if v.Refusal != nil {
		return s.respond(v)
	}
	s.addTags(m, v.Tags)
	return gomilter.RespAccept, nil
}

// addTags adds the header values of limits in tag mode that would have
// refused this message.
func (s *session) addTags(m gomilter.Modifier, tags []string) {
	if len(tags) == 0 {
		return
	}
	name := s.rules.TagHeader
	for _, v := range tags {
		if err := m.AddHeader(name, v); err != nil {
			s.srv.log.Error("cannot add the tag header", "client_ip", s.core.Client(), "queue_id", s.core.QueueID(), "header", name, "err", err)
			return
		}
		s.srv.metrics.tags.Inc()
		s.srv.log.Info("tagged", "client_ip", s.core.Client(), "queue_id", s.core.QueueID(), "header", name, "value", v, "mode", string(limits.ModeTag))
	}
}

// Abort ends the transaction (go-milter also synthesises it before a new
// MAIL); bytes received stay counted against the session.
func (s *session) Abort(gomilter.Modifier) error {
	if s.core != nil {
		s.core.Abort()
	}
	return nil
}

// respond turns a verdict into the milter response: continue, or the
// refusal's code and text. It never returns a Go error: that would make the
// MTA apply milter_default_action to the whole session.
func (s *session) respond(v engine.Verdict) (*gomilter.Response, error) {
	if v.Refusal == nil {
		return gomilter.RespContinue, nil
	}
	resp, err := gomilter.RejectWithCodeAndReason(uint16(v.Refusal.Code), v.Refusal.Reason())
	if err != nil { // replies are validated at load; this is a last resort
		s.srv.log.Error("cannot build reply; answering a plain tempfail", "reply", v.Refusal.Error(), "err", err)
		return gomilter.RespTempFail, nil
	}
	return resp, nil
}
