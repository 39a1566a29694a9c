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
	srv     *Server
	proto   gomilter.OptProtocol // negotiated for this milter connection
	actions gomilter.OptAction   // negotiated for this milter connection
	rules   *limits.Rules        // the rules of this SMTP session, enforceable under proto and actions

	connected bool   // Connect was seen and counted in sessions_active
	client    string // client address for logs ("" for none)
	addr      netip.Addr
	hasAddr   bool
	lease     *counters.Lease // the open-session count; released at the end

	state   limits.SessionState
	policy  limits.Session // caps of the current transaction
	smode   limits.Mode    // resolved mode of policy
	exempt  bool           // the current transaction is exempt from session caps
	queueID string

	// Header values of limits in tag mode that would have refused: at
	// connect (every message of the session gets them) and in the current
	// transaction.
	connTags, txTags []string

	logAttrs []any // added to the next refusal's log line

	errors      limits.Errors // the errors rule of the connection, then of the transaction
	errKey      string        // the store key of rejected recipients ("" without an IP address)
	errScope    string        // the scope of errKey (see limits.StoreKey)
	errBanUntil time.Time     // a ban of errKey seen in force
	errExempt   bool          // the transaction's errors are not counted (exempt network, or exempt authenticated)
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
		s.connTags, s.txTags = nil, nil
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
	if r := s.rules.Denied(s.addr); r != nil {
		if resp, _ := s.refuse(r, s.rules.LimitMode(&s.rules.Default, limits.LimitDeny)); resp != gomilter.RespContinue {
			return resp, nil
		}
	}
	adm := s.srv.eng.Admit(s.rules, s.addr, s.client)
	if adm.Exempt {
		return gomilter.RespContinue, nil
	}
	policy, scope, prefix := adm.Policy, adm.Scope, adm.Prefix
	s.errKey, s.errScope, s.errors = limits.StoreKey(limits.KeyErrors, scope, prefix), scope, policy.Errors
	if r := adm.Refusal(s.rules); r != nil {
		s.logAttrs = adm.LogAttrs()
		resp, _ := s.refuse(r, s.rules.LimitMode(&policy, r.Limit))
		s.logAttrs = nil
		if resp != gomilter.RespContinue {
			return resp, nil
		}
	}
	if resp, refused := s.admitErrors(&policy); refused {
		return resp, nil
	}
	cmode := s.rules.LimitMode(&policy, limits.LimitConcurrencyAddress)
	if !cmode.Decides() {
		return gomilter.RespContinue, nil
	}
	var a limits.Admission
	s.lease, a.Verdict, a.Active, a.Total = s.srv.leases.Acquire(limits.StoreKey("conn", scope, prefix), policy.Concurrency, !cmode.Refuses())
	return s.refuse(a.Refusal(policy, s.rules.Replies), cmode)
}

// admitErrors refuses a prefix banned for rejected recipients (only when
// that rule is on: one more store round trip at connect). A store error
// lets the connection through.
func (s *session) admitErrors(policy *limits.Policy) (*gomilter.Response, bool) {
	mode := s.rules.LimitMode(policy, limits.LimitErrors)
	if policy.Errors.MaxPerWindow <= 0 || !mode.Decides() {
		return nil, false
	}
	ctx, cancel := s.srv.eng.StoreContext()
	defer cancel()
	h, err := s.srv.eng.Store().Hit(ctx, s.errKey, 0, limits.Rate{})
	if err == nil && h.BannedUntil.IsZero() && s.hasAddr {
		// a ban keyed under the prefix lengths before a reload
		h, err = s.srv.eng.LegacyBan(ctx, limits.KeyErrors, s.errScope, s.addr, s.errKey)
	}
	if err != nil {
		s.srv.metrics.storeErrors.WithLabelValues("hit").Inc()
		s.srv.log.Error("store call failed; letting the connection through", "client_ip", s.client, "key", s.errKey, "err", err)
		return nil, false
	}
	s.errBanUntil = h.BannedUntil
	resp, _ := s.refuse(policy.Errors.BanRefusal(s.rules.Replies, limits.StageConnect, h.BannedUntil, h.Now), mode)
	return resp, resp != gomilter.RespContinue
}

// countError counts a rejected recipient (rcpt) or an unknown command
// against the session and, for a rejected recipient, against the prefix's
// window, which may start a ban.
func (s *session) countError(rcpt bool) {
	mode := s.rules.ModeOf(s.errors.Mode)
	if !s.errors.On() || !mode.Decides() {
		return
	}
	s.state.AddError()
	if !rcpt || s.errors.MaxPerWindow <= 0 || !s.hasAddr || s.errKey == "" {
		return
	}
	ctx, cancel := s.srv.eng.StoreContext()
	defer cancel()
	h, err := s.srv.eng.Store().Hit(ctx, s.errKey, 1, s.errors.Rate())
	if err != nil {
		s.srv.metrics.storeErrors.WithLabelValues("hit").Inc()
		s.srv.log.Error("store call failed; the rejected recipient is counted in this session only", "client_ip", s.client, "key", s.errKey, "err", err)
		return
	}
	if !h.BannedUntil.IsZero() {
		s.errBanUntil = h.BannedUntil
	}
	if h.Crossed && !h.BannedUntil.IsZero() {
		s.srv.metrics.bans.WithLabelValues(string(mode)).Inc()
		s.srv.log.Warn("banned",
			"client_ip", s.client, "key", s.errKey, "limit", string(limits.LimitErrors),
			"value", h.Count, "cap", s.errors.MaxPerWindow, "window", s.errors.Window.String(), "ban", s.errors.Ban.String(),
			"until", h.BannedUntil.UTC().Format(time.RFC3339), "mode", string(mode), "origin", string(limits.LimitErrors))
	}
}

// checkErrors decides MAIL or RCPT after errors (per session, or a ban the
// rejected recipients started).
func (s *session) checkErrors(stage limits.Stage) *gomilter.Response {
	mode := s.rules.ModeOf(s.errors.Mode)
	if !s.errors.On() || !mode.Decides() {
		return gomilter.RespContinue
	}
	resp, _ := s.refuse(s.state.CheckErrors(s.errors, s.rules.Replies, stage, s.errBanUntil, s.srv.eng.Now()), mode)
	return resp
}

// Unknown counts an unknown SMTP command as an error. The MTA has already
// answered it; it is sent only while the errors rule is on.
func (s *session) Unknown(_ string, _ gomilter.Modifier) (*gomilter.Response, error) {
	if s.rules != nil && !s.exemptAddr() && !s.errExempt {
		s.countError(false)
	}
	return gomilter.RespContinue, nil
}

// exemptAddr reports whether the client is in exempt.networks.
func (s *session) exemptAddr() bool { return s.hasAddr && s.rules.ExemptAddr(s.addr) }

// MailFrom starts a transaction: it resolves the session caps for this
// client (authentication may have happened since connect) and applies the
// message and byte caps.
func (s *session) MailFrom(from string, esmtpArgs string, m gomilter.Modifier) (*gomilter.Response, error) {
	defer s.srv.observe(limits.StageMail, time.Now())
	if s.rules == nil {
		s.rules = s.srv.eng.Rules()
	}
	s.state.EndTransaction()
	s.queueID = m.Get(gomilter.MacroQueueId)
	s.txTags = s.txTags[:0]
	user := m.Get(gomilter.MacroAuthAuthen)
	authenticated := user != ""
	domain, _ := limits.SenderDomain(from)
	client := limits.Client{Addr: s.addr, HasAddr: s.hasAddr, Authenticated: authenticated, User: user, SenderDomain: domain}
	s.policy, s.exempt = s.rules.ForClient(client)
	s.smode = s.rules.ModeOf(s.policy.Mode)
	s.errExempt = s.exemptAddr() || (authenticated && s.rules.ExemptAuthenticated)
	if !s.errExempt {
		s.errors = s.rules.PolicyOf(client).Errors
		if resp := s.checkErrors(limits.StageMail); resp != gomilter.RespContinue {
			return resp, nil
		}
	}
	if !s.smode.Decides() {
		s.exempt = true
	}
	if !s.exempt {
		if resp, _ := s.refuse(s.state.CheckMail(s.policy, s.rules.Replies, s.sizeParam(esmtpArgs)), s.smode); resp != gomilter.RespContinue {
			return resp, nil
		}
	}
	return s.checkSender(from, authenticated), nil
}

// checkSender applies the sender-networks rule to MAIL FROM (see
// engine.CheckSender).
func (s *session) checkSender(from string, authenticated bool) *gomilter.Response {
	c := s.srv.eng.CheckSender(s.rules, s.addr, s.hasAddr, from, authenticated, s.client, s.queueID)
	if c.Refusal == nil {
		return gomilter.RespContinue
	}
	s.logAttrs = c.Attrs
	resp, _ := s.refuse(c.Refusal, c.Mode)
	s.logAttrs = nil
	return resp
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
	if s.rules == nil {
		return gomilter.RespContinue, nil
	}
	if id := m.Get(gomilter.MacroQueueId); id != "" {
		s.queueID = id
	}
	if m.Get(gomilter.MacroRcptMailer) == "error" {
		// rejected by the MTA (SMFIP_RCPT_REJ, negotiated with the errors
		// rule): it has answered already; count it, never as a recipient
		if !s.errExempt {
			s.countError(true)
		}
		return gomilter.RespContinue, nil
	}
	if !s.errExempt {
		if resp := s.checkErrors(limits.StageRcpt); resp != gomilter.RespContinue {
			return resp, nil
		}
	}
	if s.exempt {
		return gomilter.RespContinue, nil
	}
	if r := s.state.CheckRcpt(s.policy, s.rules.Replies); r != nil {
		return s.refuse(r, s.smode)
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
	resp, _ := s.refuse(r, s.smode)
	if resp == gomilter.RespContinue {
		s.addTags(m)
		s.state.AcceptMessage()
		s.srv.metrics.messages.Inc()
		resp = gomilter.RespAccept
	}
	s.state.EndTransaction()
	s.txTags = s.txTags[:0]
	return resp, nil
}

// addTags adds one header per limit in tag mode that would have refused
// this message: those of the session (at connect) and of this transaction.
func (s *session) addTags(m gomilter.Modifier) {
	if len(s.connTags) == 0 && len(s.txTags) == 0 {
		return
	}
	name := s.rules.TagHeader
	if s.actions&gomilter.OptAddHeader == 0 {
		// enforceable() keeps rules with tag modes off connections that
		// cannot add headers; this is only reached after a reload raced.
		s.srv.log.Warn("cannot tag: the MTA did not allow adding headers on this milter connection", "client_ip", s.client, "queue_id", s.queueID)
		return
	}
	for _, tags := range [][]string{s.connTags, s.txTags} {
		for _, v := range tags {
			if err := m.AddHeader(name, v); err != nil {
				s.srv.log.Error("cannot add the tag header", "client_ip", s.client, "queue_id", s.queueID, "header", name, "err", err)
				return
			}
			s.srv.metrics.tags.Inc()
			s.srv.log.Info("tagged", "client_ip", s.client, "queue_id", s.queueID, "header", name, "value", v, "mode", string(limits.ModeTag))
		}
	}
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
	s.txTags = s.txTags[:0]
	return nil
}

// refuse logs and counts r under mode and turns it into the reply; into
// continue when r is nil or in monitor and tag mode (tag mode records the
// header the message gets at its end: for the whole session when the
// refusal was at connect, else for this transaction). It never returns a Go
// error: that would make the MTA apply milter_default_action to the whole
// session.
func (s *session) refuse(r *limits.Refusal, mode limits.Mode) (*gomilter.Response, error) {
	if r == nil || !mode.Decides() {
		return gomilter.RespContinue, nil
	}
	s.srv.logRefusal(r, mode, s.client, s.queueID, s.logAttrs...)
	switch mode {
	case limits.ModeMonitor:
		return gomilter.RespContinue, nil
	case limits.ModeTag:
		if r.Stage == limits.StageConnect {
			s.connTags = setTag(s.connTags, r)
		} else {
			s.txTags = setTag(s.txTags, r)
		}
		return gomilter.RespContinue, nil
	}
	resp, err := gomilter.RejectWithCodeAndReason(uint16(r.Code), r.Reason())
	if err != nil { // replies are validated at load; this is a last resort
		s.srv.log.Error("cannot build reply; answering a plain tempfail", "reply", r.Error(), "err", err)
		return gomilter.RespTempFail, nil
	}
	return resp, nil
}

// setTag records r's tag in tags, replacing an earlier one of the same limit
// (a later recipient over the cap updates the value): one header per limit.
func setTag(tags []string, r *limits.Refusal) []string {
	prefix := "limit=" + string(r.Limit) + " "
	for i, t := range tags {
		if strings.HasPrefix(t, prefix) {
			tags[i] = r.Tag()
			return tags
		}
	}
	return append(tags, r.Tag())
}
