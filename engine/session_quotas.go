package engine

// The stage functions of rules decided across sessions on what the
// session carries (quotas per user, sender, sender domain, recipient and
// network). Each is called by the session core at its stage, after the
// session caps and before the event is counted; the first check with a
// refusal under a mode that decides is logged, counted and, in enforce
// mode, answered (see Session.decide). The Session offers what they key
// on: Addr, User, Sender, SenderDomain, Recipients, MessageSize, Rules.

// mailQuotas decides the quotas at MAIL FROM (after the sender-networks
// rule).
func (s *Session) mailQuotas() check { return check{} }

// rcptQuotas decides the quotas at RCPT TO of rcpt (after the recipient
// cap, before rcpt is counted).
func (s *Session) rcptQuotas(rcpt string) check { return check{} }

// eomQuotas decides the quotas at end of message (after the byte overrun,
// before the message is accepted).
func (s *Session) eomQuotas() check { return check{} }

// countQuotas counts an accepted message (MessageSize bytes, Recipients)
// against the quotas, after the session counted it.
func (s *Session) countQuotas() {}
