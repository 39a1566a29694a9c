package engine

import (
	"context"
	"errors"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// The stage functions of rules decided across sessions on what the
// session carries (quotas per user, sender, sender domain, recipient and
// network: [[rate]], limits.Quota). Each is called by the session core at
// its stage, after the session caps and before the event is counted; the
// first check with a refusal under a mode that decides is logged, counted
// and, in enforce mode, answered (see Session.decide). The quotas of one
// stage cost one store call (counters.QuotaStore.Quota), whatever their
// number.

// mailQuotas decides the quotas at MAIL FROM (after the sender-networks
// rule): one more message, the SIZE= prediction, one more recipient, for
// every key but recipient.
func (s *Session) mailQuotas() check { return s.quotaStage(limits.StageMail, "") }

// rcptQuotas decides the quotas at RCPT TO of rcpt (after the recipient
// cap, before rcpt is counted): recipient keys, and recipient counts
// (checked and counted here).
func (s *Session) rcptQuotas(rcpt string) check { return s.quotaStage(limits.StageRcpt, rcpt) }

// eomQuotas decides nothing: a message is counted against its quotas once
// accepted (countQuotas), never refused at end of message.
func (s *Session) eomQuotas() check { return check{} }

// quotaSubject is what the quotas key on in the current transaction.
func (s *Session) quotaSubject(rcpt string) limits.QuotaSubject {
	if s.quotaNet == "" && s.addr.IsValid() {
		s.quotaNet = s.rules.Key(s.addr).String()
	}
	return limits.QuotaSubject{Client: s.clientOf(), Sender: s.mail.Sender, Recipient: rcpt, Network: s.quotaNet}
}

// quotaStage asks the store about the quotas of stage in one call and
// returns the refusal to give: the first of a rule in enforce mode, else
// the first of a rule in monitor or tag mode; the other rules' refusals in
// monitor or tag mode are logged and counted here. A failed store call is
// handled as store.on_error says: "tempfail" refuses with the
// store_unavailable reply (451 at this stage), "local" was answered by the
// local store already; any other error lets the event through.
func (s *Session) quotaStage(stage limits.Stage, rcpt string) check {
	r := s.rules
	if len(r.Quotas) == 0 {
		return check{}
	}
	qs, ok := s.eng.store.(counters.QuotaStore)
	if !ok {
		return check{}
	}
	var checks []limits.QuotaCheck
	if stage == limits.StageMail {
		s.mailChecks = r.QuotaChecks(s.mailChecks[:0], stage, s.quotaSubject(rcpt), s.mail.Size)
		checks = s.mailChecks
	} else {
		s.quotaBuf = r.QuotaChecks(s.quotaBuf[:0], stage, s.quotaSubject(rcpt), s.mail.Size)
		checks = s.quotaBuf
	}
	if len(checks) == 0 {
		return check{}
	}
	ops := s.quotaOps[:0]
	for i := range checks {
		ops = append(ops, checks[i].Op)
	}
	s.quotaOps = ops
	ctx, cancel := s.eng.quotaContext(qs)
	uses, err := qs.Quota(ctx, ops)
	cancel()
	if err != nil {
		s.eng.metrics.StoreErrors.WithLabelValues("quota").Inc()
		if errors.Is(err, counters.ErrUnavailable) {
			ref := r.Replies.Unavailable()
			ref.Stage, ref.Code, ref.Enhanced = stage, 451, "4.3.0"
			return check{refusal: ref, mode: r.Mode}
		}
		s.eng.log.Error("store call failed; letting the transaction through", "client_ip", s.client, "queue_id", s.queueID, "limit", string(limits.LimitQuota), "err", err)
		return check{}
	}
	pick := -1
	for i, u := range uses {
		if !u.Refused {
			continue
		}
		if pick < 0 || (checks[i].Mode.Refuses() && !checks[pick].Mode.Refuses()) {
			pick = i
		}
	}
	if pick < 0 {
		return check{}
	}
	for i, u := range uses {
		if u.Refused && i != pick && !checks[i].Mode.Refuses() {
			s.decide(s.quotaCheck(&checks[i], stage, u))
		}
	}
	return s.quotaCheck(&checks[pick], stage, uses[pick])
}

// quotaCheck is the refusal of c with the store's answer u, and its log
// attributes: the rule, the key and its value, the use and the limit.
func (s *Session) quotaCheck(c *limits.QuotaCheck, stage limits.Stage, u limits.QuotaUse) check {
	ref := c.Refusal(stage, u)
	s.eng.metrics.QuotaRefusals.WithLabelValues(c.Rule.Name, string(c.Rule.Key), string(c.Mode)).Inc()
	return check{refusal: ref, mode: c.Mode, attrs: []any{
		"rule", c.Rule.Name, "key", string(c.Rule.Key), "key_value", c.Value,
		"count", string(c.Rule.Count), "use", ref.Value, "need", c.Op.Need, "quota_limit", c.Op.Limit, "window", c.Op.Window.String(),
	}}
}

// countQuotas counts an accepted message (MessageSize bytes, Recipients)
// against the quotas, after the session counted it, and the recipients
// the MTA reported at end of message that the session did not see. A
// failed store call is logged and counted: the message is accepted
// already.
func (s *Session) countQuotas() {
	r := s.rules
	if len(r.Quotas) == 0 {
		return
	}
	qs, ok := s.eng.store.(counters.QuotaStore)
	if !ok {
		return
	}
	extra := int64(0)
	if s.eomRcpts > 0 {
		extra = max(0, s.eomRcpts-int64(len(s.rcpts)))
	}
	subj := s.quotaSubject("")
	subj.Known = s.mailChecks
	ops := r.QuotaCounts(s.quotaOps[:0], subj, s.rcpts, max(s.msgSize, 0), extra)
	s.quotaOps = ops
	if len(ops) == 0 {
		return
	}
	ctx, cancel := s.eng.quotaContext(qs)
	defer cancel()
	if _, err := qs.Quota(ctx, ops); err != nil {
		s.eng.metrics.StoreErrors.WithLabelValues("quota").Inc()
		s.eng.log.Error("store call failed; the message is not counted against its quotas", "client_ip", s.client, "queue_id", s.queueID, "limit", string(limits.LimitQuota), "err", err)
	}
}

// initQuotaMetrics pre-initialises sessioncap_quota_refusals_total for the
// rules of r.
func (e *Engine) initQuotaMetrics(r *limits.Rules) {
	for i := range r.Quotas {
		for _, m := range limits.AllModes {
			e.metrics.QuotaRefusals.WithLabelValues(r.Quotas[i].Name, string(r.Quotas[i].Key), string(m))
		}
	}
}

// quotaContext bounds a quota call by the store timeout, except on the
// memory store, which never waits (a timer per call would cost more than
// the call).
func (e *Engine) quotaContext(qs counters.QuotaStore) (context.Context, context.CancelFunc) {
	if _, ok := qs.(*counters.Memory); ok {
		return context.Background(), func() {}
	}
	return e.StoreContext()
}
