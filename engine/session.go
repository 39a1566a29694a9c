package engine

import (
	"net/netip"
	"strings"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// The session core: one SMTP session as every front-end sees it. A
// front-end (the milter, the Postfix policy server) translates its
// protocol into the events of a Session — Connect, Mail, Rcpt,
// RcptRejected, Unknown, Bytes, EndOfMessage, Abort, End — and each
// verdict back into its protocol's reply. The Session owns the decision
// sequence (deny → exemptions → frequency and bans → errors bans →
// concurrency at connect; errors → session caps → sender networks → quotas
// at MAIL; errors → recipient cap → quotas at RCPT; byte overrun → quotas
// at end of message), the modes (enforce, monitor, tag, off), and the one
// log line and counters of every refusal and ban.

// Options are what a front-end states about itself when it starts a
// Session.
type Options struct {
	// Leases, when set, counts the session's open connection against the
	// concurrency caps. Only a front-end that sees every session end (the
	// milter) may set it, and it must then call End; without it the
	// concurrency rule is not decided.
	Leases *counters.Leases
	// CanTag is set by a front-end that can add headers to an accepted
	// message (the milter, when the MTA allows it): a limit in tag mode
	// then adds a header at end of message (Verdict.Tags). Without it a
	// limit in tag mode is logged and counted with mode "tag" and nothing
	// else happens, as in monitor mode.
	CanTag bool
	// EOMRefusal, when set, rewrites a refusal at end of message before it
	// is logged and answered: the policy front-end turns the overrun's 452
	// into a 421 (see policy.hangUp).
	EOMRefusal func(*limits.Refusal) *limits.Refusal
}

// Verdict is the Session's answer to one event.
type Verdict struct {
	// Refusal is the reply to give, nil to go on. It is set only in
	// enforce mode; a limit in monitor or tag mode that would have refused
	// was logged and counted, and the event goes on.
	Refusal *limits.Refusal
	// Mode is the mode of the last limit that would have refused at this
	// event, "" when none did.
	Mode limits.Mode
	// HangUp reports that Refusal is a 421: the MTA ends the SMTP session
	// after the reply.
	HangUp bool
	// Tags are set by an accepted EndOfMessage of a session started with
	// CanTag: the values of the header Rules.TagHeader to add to the
	// message, one per limit in tag mode that would have refused (at
	// connect, for every message of the session, or in this transaction).
	Tags []string
}

// Mail is what MAIL FROM tells.
type Mail struct {
	Sender  string // the reverse path without brackets, "" for the null sender
	Size    int64  // the SIZE= parameter, -1 when absent or unusable
	User    string // the SASL login, "" when not authenticated
	QueueID string // the MTA's queue id for logs, "" when unknown yet
}

// Session is one SMTP session: its counts, the rules it started with, the
// current transaction's sender, user and recipients, and the decisions on
// each event. Its methods must be called one at a time (a front-end
// serialises the events of one SMTP session).
type Session struct {
	eng   *Engine
	rules *limits.Rules // the rules of this session
	opts  Options

	addr   netip.Addr // invalid for a session without an IP address
	client string     // addr for logs ("" for none)
	lease  *counters.Lease

	state limits.SessionState

	// the current transaction
	inTx     bool
	mail     Mail
	domain   string         // the sender's domain, lowercase ("" for none)
	caps     limits.Session // session caps resolved at MAIL
	capsMode limits.Mode    // their mode
	exempt   bool           // the transaction is exempt from the session caps
	rcpts    []string       // recipients let through in this transaction
	txRcpts  int64          // of them, those counted against the recipient cap
	queueID  string
	msgSize  int64 // bytes of the last accepted message, -1 before the first

	// Header values of limits in tag mode that would have refused: at
	// connect (every message of the session gets them) and in the current
	// transaction.
	connTags, txTags []string

	errors      limits.Errors // the errors rule of the connection, then of the transaction
	errKey      string        // the store key of rejected recipients ("" without an IP address)
	errScope    string        // the scope of errKey (see limits.StoreKey)
	errBanUntil time.Time     // a ban of errKey seen in force
	errExempt   bool          // the transaction's errors are not counted (exempt network, or exempt authenticated)

	eomRcpts int64               // the recipients the MTA reported at end of message, -1 when it did not
	quotaBuf []limits.QuotaCheck // reused by the quota stages
	quotaOps []limits.QuotaOp    // reused by the quota stages
	// the checks of MAIL's quotas in this transaction (their keys are
	// counted again at end of message), and the client's network as the
	// quotas key it
	mailChecks []limits.QuotaCheck
	quotaNet   string
}

// check is what one rule decided: a refusal (nil: nothing to say), the
// mode it is decided under and extra attributes for its log line. The
// stage functions of later rules (quotas) return it.
type check struct {
	refusal *limits.Refusal
	mode    limits.Mode
	attrs   []any
}

// NewSession starts a session of a front-end under rules r (nil for the
// rules in force). Call Connect first.
func (e *Engine) NewSession(r *limits.Rules, o Options) *Session {
	if r == nil {
		r = e.Rules()
	}
	return &Session{eng: e, rules: r, opts: o, msgSize: -1}
}

// Rules returns the rules the session decides with.
func (s *Session) Rules() *limits.Rules { return s.rules }

// Addr returns the client's address, invalid for a session without one.
func (s *Session) Addr() netip.Addr { return s.addr }

// Client returns the client's address as logged, "" for none.
func (s *Session) Client() string { return s.client }

// QueueID returns the queue id of the current transaction as logged.
func (s *Session) QueueID() string { return s.queueID }

// SetQueueID records the queue id the MTA reported after MAIL (at RCPT or
// end of message); "" keeps the one known.
func (s *Session) SetQueueID(id string) {
	if id != "" {
		s.queueID = id
	}
}

// Sender returns MAIL FROM of the current transaction ("" for the null
// sender or outside a transaction).
func (s *Session) Sender() string { return s.mail.Sender }

// SenderDomain returns the lowercase domain of Sender, "" for none.
func (s *Session) SenderDomain() string { return s.domain }

// User returns the SASL login of the current transaction, "" for none.
func (s *Session) User() string { return s.mail.User }

// Recipients returns the recipients let through in the current
// transaction; the slice is reused by the next transaction.
func (s *Session) Recipients() []string { return s.rcpts }

// MessageSize returns the bytes of the last message accepted at end of
// message (headers and body, or the size the MTA reported), -1 before the
// first.
func (s *Session) MessageSize() int64 { return s.msgSize }

// State returns what the session has used so far.
func (s *Session) State() limits.SessionState { return s.state }

// InTransaction reports whether a transaction is in progress (from Mail or
// Resume until EndOfMessage or Abort).
func (s *Session) InTransaction() bool { return s.inTx }

// Connect counts the session and, for a client at addr, decides the deny
// list, exemptions, the frequency rule and bans, the errors ban and, with
// Options.Leases, the concurrency caps. An invalid addr (a unix socket, an
// unparseable address) gets the session caps only.
func (s *Session) Connect(addr netip.Addr) Verdict {
	s.eng.metrics.Sessions.Inc()
	if !addr.IsValid() {
		return Verdict{}
	}
	s.addr = addr.Unmap().WithZone("")
	s.client = s.addr.String()
	r := s.rules
	var out Verdict
	if ref := r.Denied(s.addr); ref != nil {
		if out = s.decide(check{ref, r.LimitMode(&r.Default, limits.LimitDeny), nil}); out.Refusal != nil {
			return out
		}
	}
	adm := s.eng.Admit(r, s.addr, s.client)
	if adm.Exempt {
		return out
	}
	policy := adm.Policy
	s.errKey, s.errScope, s.errors = limits.StoreKey(limits.KeyErrors, adm.Scope, adm.Prefix), adm.Scope, policy.Errors
	if ref := adm.Refusal(r); ref != nil {
		if out = s.decide(check{ref, r.LimitMode(&policy, ref.Limit), adm.LogAttrs()}); out.Refusal != nil {
			return out
		}
	}
	if v := s.admitErrors(&policy); v.Mode != "" {
		if out = v; v.Refusal != nil {
			return v
		}
	}
	if v := s.admitConcurrency(&policy, adm.Scope, adm.Prefix); v.Mode != "" {
		out = v
	}
	return out
}

// Mail starts a transaction: it resolves the session caps and the errors
// rule for this client (authentication may have happened since connect,
// and overrides may match the user or the sender's domain) and decides
// errors, the message and byte caps, the sender-networks rule and the
// quotas of MAIL.
func (s *Session) Mail(m Mail) Verdict {
	s.begin(m)
	var out Verdict
	for _, c := range [...]func() check{s.mailErrors, s.mailCaps, s.mailSender, s.mailQuotas} {
		if v := s.decide(c()); v.Mode != "" {
			if out = v; v.Refusal != nil {
				return v
			}
		}
	}
	return out
}

// Resume starts a transaction whose MAIL FROM the front-end did not see
// decided (the policy server asked first at end of message): the caps
// are resolved for m, nothing is decided.
func (s *Session) Resume(m Mail) { s.begin(m) }

// begin resets the transaction and resolves its rules for m.
func (s *Session) begin(m Mail) {
	r := s.rules
	s.state.EndTransaction()
	s.inTx = true
	s.mail = m
	s.queueID = m.QueueID
	s.domain, _ = limits.SenderDomain(m.Sender)
	s.rcpts, s.txRcpts = s.rcpts[:0], 0
	s.txTags = s.txTags[:0]
	s.mailChecks = s.mailChecks[:0]
	c := s.clientOf()
	s.caps, s.exempt = r.ForClient(c)
	s.capsMode = r.ModeOf(s.caps.Mode)
	if !s.capsMode.Decides() {
		s.exempt = true
	}
	s.errExempt = s.exemptAddr() || (c.Authenticated && r.ExemptAuthenticated)
	if !s.errExempt {
		s.resolveErrors(c)
	}
}

// clientOf describes the client of the current transaction to the rules.
func (s *Session) clientOf() limits.Client {
	return limits.Client{Addr: s.addr, HasAddr: s.addr.IsValid(), Authenticated: s.mail.User != "", User: s.mail.User, SenderDomain: s.domain}
}

// exemptAddr reports whether the client is in exempt.networks.
func (s *Session) exemptAddr() bool { return s.addr.IsValid() && s.rules.ExemptAddr(s.addr) }

// mailCaps decides the message and byte caps at MAIL.
func (s *Session) mailCaps() check {
	if s.exempt {
		return check{}
	}
	return check{refusal: s.state.CheckMail(s.caps, s.rules.Replies, s.mail.Size), mode: s.capsMode}
}

// mailSender decides the sender-networks rule (see Engine.CheckSender).
func (s *Session) mailSender() check {
	if s.mail.Sender == "" {
		return check{}
	}
	c := s.eng.CheckSender(s.rules, s.addr, s.addr.IsValid(), s.mail.Sender, s.mail.User != "", s.client, s.queueID)
	return check{refusal: c.Refusal, mode: c.Mode, attrs: c.Attrs}
}

// Rcpt decides one RCPT TO: errors, the recipient cap and the quotas of
// RCPT. A recipient let through is counted.
func (s *Session) Rcpt(rcpt string) Verdict {
	var out Verdict
	for _, c := range [...]func(string) check{s.rcptErrors, s.rcptCap, s.rcptQuotas} {
		if v := s.decide(c(rcpt)); v.Mode != "" {
			if out = v; v.Refusal != nil {
				return v
			}
		}
	}
	if !s.exempt {
		s.state.AcceptRecipient()
		s.txRcpts++
	}
	s.rcpts = append(s.rcpts, rcpt)
	return out
}

// rcptCap decides the recipient cap.
func (s *Session) rcptCap(string) check {
	if s.exempt {
		return check{}
	}
	return check{refusal: s.state.CheckRcpt(s.caps, s.rules.Replies), mode: s.capsMode}
}

// RcptRejected counts a recipient the MTA rejected (it has answered
// already) under the errors rule: against the session and against the
// prefix's window, which may start a ban. It is never a recipient.
func (s *Session) RcptRejected(string) {
	if !s.errExempt {
		s.countError(true)
	}
}

// Unknown counts an unknown SMTP command (the MTA has answered already)
// against the session's errors.
func (s *Session) Unknown() {
	if !s.exemptAddr() && !s.errExempt {
		s.countError(false)
	}
}

// Bytes counts n header or body bytes of the message in flight. It never
// refuses: a message in flight is finished, never cut.
func (s *Session) Bytes(n int) { s.state.AddBytes(n) }

// EndOfMessage ends the transaction. size is the message's size where the
// MTA reports it (counted on top of Bytes), -1 otherwise; rcpts is the
// number of recipients the MTA accepted where it reports it (it corrects
// the recipient count for recipients the session did not see), -1
// otherwise. With overrun = "tempfail" a message that crossed the byte cap
// is refused; an accepted message is counted (and gets Verdict.Tags).
func (s *Session) EndOfMessage(size, rcpts int64) Verdict {
	if size > 0 {
		s.state.AddBytes(int(min(size, 1<<40)))
	}
	s.eomRcpts = rcpts
	if rcpts > 0 {
		s.state.Recipients = max(0, s.state.Recipients+rcpts-s.txRcpts)
	}
	if s.state.TxBytes > 0 && s.rules.NeedsBodies() {
		s.eng.metrics.MessageBytes.Add(float64(s.state.TxBytes))
	}
	var out Verdict
	for _, c := range [...]func() check{s.eomCaps, s.eomQuotas} {
		if v := s.decide(c()); v.Mode != "" {
			if out = v; v.Refusal != nil {
				s.endTransaction()
				return v
			}
		}
	}
	if s.opts.CanTag && len(s.connTags)+len(s.txTags) > 0 {
		out.Tags = append(append(make([]string, 0, len(s.connTags)+len(s.txTags)), s.connTags...), s.txTags...)
	}
	s.state.AcceptMessage()
	s.msgSize = s.state.TxBytes
	s.eng.metrics.Messages.Inc()
	s.countQuotas()
	s.endTransaction()
	return out
}

// eomCaps decides the byte overrun at end of message.
func (s *Session) eomCaps() check {
	if s.exempt {
		return check{}
	}
	return check{refusal: s.state.CheckEOM(s.caps, s.rules.Replies), mode: s.capsMode}
}

// Abort ends the transaction without a message (RSET, a refused MAIL, a
// lost connection); bytes received stay counted against the session.
func (s *Session) Abort() {
	s.endTransaction()
	s.exempt = false
}

func (s *Session) endTransaction() {
	s.state.EndTransaction()
	s.inTx = false
	s.txTags = s.txTags[:0]
}

// End ends the session however it ended: it gives its concurrency lease
// back. Calls after the first do nothing.
func (s *Session) End() {
	s.lease.Release()
	s.lease = nil
}

// decide logs and counts c's refusal under its mode and turns it into the
// verdict: a refusal in enforce mode; in tag mode, with Options.CanTag, a
// header recorded for the message (for the whole session when the refusal
// was at connect, else for this transaction); in monitor mode only the log
// line. Nothing when c has no refusal or its mode is off.
func (s *Session) decide(c check) Verdict {
	r := c.refusal
	if r == nil || !c.mode.Decides() {
		return Verdict{}
	}
	if r.Stage == limits.StageEOM && s.opts.EOMRefusal != nil {
		r = s.opts.EOMRefusal(r)
	}
	s.eng.LogRefusal(r, c.mode, s.client, s.queueID, c.attrs...)
	switch c.mode {
	case limits.ModeEnforce:
		return Verdict{Refusal: r, Mode: c.mode, HangUp: r.Code == 421}
	case limits.ModeTag:
		if s.opts.CanTag {
			if r.Stage == limits.StageConnect {
				s.connTags = setTag(s.connTags, r)
			} else {
				s.txTags = setTag(s.txTags, r)
			}
		}
	}
	return Verdict{Mode: c.mode}
}

// setTag records r's tag in tags, replacing an earlier one of the same limit
// (a later recipient over the cap updates the value): one header per limit.
func setTag(tags []string, r *limits.Refusal) []string {
	prefix := r.TagKey()
	for i, t := range tags {
		if strings.HasPrefix(t, prefix) {
			tags[i] = r.Tag()
			return tags
		}
	}
	return append(tags, r.Tag())
}

// admitConcurrency takes a lease of the concurrency caps (Options.Leases).
func (s *Session) admitConcurrency(policy *limits.Policy, scope string, prefix netip.Prefix) Verdict {
	mode := s.rules.LimitMode(policy, limits.LimitConcurrencyAddress)
	if s.opts.Leases == nil || !mode.Decides() {
		return Verdict{}
	}
	var a limits.Admission
	s.lease, a.Verdict, a.Active, a.Total = s.opts.Leases.Acquire(limits.StoreKey("conn", scope, prefix), policy.Concurrency, !mode.Refuses())
	return s.decide(check{refusal: a.Refusal(*policy, s.rules.Replies), mode: mode})
}
