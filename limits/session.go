package limits

// SessionState counts what one SMTP session has used. The zero value is a
// fresh session. It is not safe for concurrent use: one milter connection
// serves one SMTP session, and its callbacks run one at a time.
type SessionState struct {
	Messages   int64 // messages accepted at end of message
	Bytes      int64 // header and body bytes received in this session, all transactions
	Recipients int64 // recipients accepted
	TxBytes    int64 // header and body bytes of the current transaction
	Errors     int64 // rejected recipients and unknown commands
}

// AddBytes counts n bytes of the message in flight. It never refuses: the
// decision is given only at a transaction boundary.
func (s *SessionState) AddBytes(n int) {
	s.Bytes += int64(n)
	s.TxBytes += int64(n)
}

// EndTransaction forgets the per-transaction counts (after end of message or
// an abort). Bytes already received stay counted against the session.
func (s *SessionState) EndTransaction() { s.TxBytes = 0 }

// CheckMail decides MAIL FROM. size is the SIZE= parameter, or -1 when the
// client gave none. The byte cap never refuses while no message has been
// accepted in this session (the first-message rule): a lone message bigger
// than the session cap must still get through, bounded only by the MTA's own
// message size limit.
func (s *SessionState) CheckMail(p Session, replies Replies, size int64) *Refusal {
	if p.MaxMessages > 0 && s.Messages >= p.MaxMessages {
		return replies.refusal(ReplySessionMessages, LimitSessionMessages, StageMail, s.Messages, p.MaxMessages, 0, 0)
	}
	if p.MaxBytes <= 0 || s.Messages == 0 {
		return nil
	}
	if s.Bytes >= p.MaxBytes {
		return replies.refusal(ReplySessionBytes, LimitSessionBytes, StageMail, s.Bytes, p.MaxBytes, 0, 0)
	}
	if size > 0 && size > p.MaxBytes-s.Bytes {
		return replies.refusal(ReplySessionBytesSize, LimitSessionBytes, StageMail, s.Bytes+size, p.MaxBytes, 0, 0)
	}
	return nil
}

// CheckRcpt decides one RCPT TO.
func (s *SessionState) CheckRcpt(p Session, replies Replies) *Refusal {
	if p.MaxRecipients > 0 && s.Recipients >= p.MaxRecipients {
		return replies.refusal(ReplySessionRecipients, LimitSessionRecipients, StageRcpt, s.Recipients, p.MaxRecipients, 0, 0)
	}
	return nil
}

// AcceptRecipient counts a recipient that was let through.
func (s *SessionState) AcceptRecipient() { s.Recipients++ }

// CheckEOM decides the end of a message. Only the "tempfail" overrun policy
// refuses here, and only when an earlier message of this session was
// accepted: the first message always passes.
func (s *SessionState) CheckEOM(p Session, replies Replies) *Refusal {
	if p.Overrun != OverrunTempfail || p.MaxBytes <= 0 || s.Messages == 0 || s.Bytes <= p.MaxBytes {
		return nil
	}
	return replies.refusal(ReplyOverrun, LimitSessionBytes, StageEOM, s.Bytes, p.MaxBytes, 0, 0)
}

// AcceptMessage counts a message accepted at end of message.
func (s *SessionState) AcceptMessage() { s.Messages++ }
