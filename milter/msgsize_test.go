package milter_test

import (
	"strconv"
	"testing"

	gomilter "github.com/d--j/go-milter"

	"github.com/sessioncap/sessioncap/limits"
)

// sendmailLike reports {msg_size} at end of message, as Sendmail does when
// its .mc lists the macro; postfixLike does not (Postfix has no such macro).
const (
	sendmailLike = true
	postfixLike  = false
)

// sendSized runs one transaction of body bytes, with {msg_size} at end of
// message when reportSize, and returns what send returns.
func (m *mta) sendSized(reportSize bool, body int) (*gomilter.Action, string) {
	m.t.Helper()
	if reportSize {
		m.macros.Set("{msg_size}", strconv.Itoa(body))
	} else {
		m.macros.Set("{msg_size}", "")
	}
	return m.send("", 1, body)
}

// streamed reports whether the connection asked for headers and body.
func (m *mta) streamed() bool {
	return !m.s.ProtocolOption(gomilter.OptNoBody) && !m.s.ProtocolOption(gomilter.OptNoHeaders)
}

func byteCap(n int64) *limits.Rules {
	return rulesWith(func(r *limits.Rules) { r.Default.Session.MaxBytes = n })
}

// TestByteCapHoldsOnEveryConnectionOfAServerSharedByPostfixAndSendmail: one
// sessioncap serves Postfix (no {msg_size}) and Sendmail ({msg_size} at end
// of message). Whatever the MTAs sent before, every milter connection under
// a byte cap asks for headers and body, and every message counts its bytes
// once: on each of several connections opened after a Sendmail message and
// before any Postfix one, two messages of 60000 bytes pass a 100000-byte cap
// and the next MAIL gets the 421.
func TestByteCapHoldsOnEveryConnectionOfAServerSharedByPostfixAndSendmail(t *testing.T) {
	h := start(t, byteCap(100000))
	first, _ := h.connect("192.0.2.10")
	if act, stage := first.sendSized(sendmailLike, 1000); act != nil {
		t.Fatalf("first message refused at %s: %+v", stage, act)
	}
	conns := []struct {
		name       string
		m          *mta
		reportSize bool
	}{{"postfix 1", nil, postfixLike}, {"postfix 2", nil, postfixLike}, {"sendmail", nil, sendmailLike}}
	for i := range conns {
		conns[i].m, _ = h.connect("192.0.2." + strconv.Itoa(20+i))
		if !conns[i].m.streamed() {
			t.Errorf("%s: under a byte cap, the connection opened after a message with {msg_size} does not ask for headers and body", conns[i].name)
		}
	}
	for round := 1; round <= 2; round++ {
		for _, c := range conns {
			if act, stage := c.m.sendSized(c.reportSize, 60000); act != nil {
				t.Fatalf("%s: message %d of 60000 bytes refused at %s: %+v", c.name, round, stage, act)
			}
		}
	}
	for _, c := range conns {
		act, stage := c.m.sendSized(c.reportSize, 100)
		if stage != "mail" {
			t.Errorf("%s: after 120000 bytes with a 100000-byte cap, the next message got %q (%+v), want a 421 at MAIL", c.name, stage, act)
			continue
		}
		wantReply(t, act, 421, "421 4.7.0 Too much data in this session (limit 100000 bytes); reconnect to send more")
	}
	if got, want := value(t, h.reg, "sessioncap_message_bytes_total"), float64(1000+6*60000); got != want {
		t.Errorf("message bytes %v, want %v (each message counted once)", got, want)
	}
}

// TestOverrunTempfailWithMsgSize: with overrun = "tempfail", the message
// that crosses the byte cap gets the 452 after the final dot, whether the
// MTA reports {msg_size} or not.
func TestOverrunTempfailWithMsgSize(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Session.MaxBytes = 100000
		r.Default.Session.Overrun = limits.OverrunTempfail
	}))
	for _, like := range []bool{sendmailLike, postfixLike} {
		m, _ := h.connect("192.0.2.11")
		if act, _ := m.sendSized(like, 60000); act != nil {
			t.Fatalf("{msg_size} reported %v: first message refused: %+v", like, act)
		}
		act, stage := m.sendSized(like, 60000)
		if stage != "eom" {
			t.Fatalf("{msg_size} reported %v: crossing message: stage %q, want eom", like, stage)
		}
		wantReply(t, act, 452, "452 4.3.1 Message exceeded this session's data limit (limit 100000 bytes); reconnect and send it again")
	}
}
