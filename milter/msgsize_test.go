package milter_test

import (
	"strconv"
	"strings"
	"testing"

	gomilter "github.com/d--j/go-milter"

	"github.com/sessioncap/sessioncap/limits"
)

// sendmailLike reports {msg_size} at end of message, as Sendmail does when
// the milter asks for it; postfixLike does not.
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

func (h *harness) sizeSource(src string) float64 {
	h.t.Helper()
	return value(h.t, h.reg, "sessioncap_message_size_source_total", "source", src)
}

// connectAfterMsgSize runs a session whose end of message carries
// {msg_size}, then connects from addr: that connection must not stream.
func (h *harness) connectAfterMsgSize(addr string) *mta {
	h.t.Helper()
	learn, _ := h.connect("192.0.2.10")
	learn.sendSized(sendmailLike, 10)
	m, _ := h.connect(addr)
	if m.streamed() {
		h.t.Fatal("still streaming after {msg_size} was seen")
	}
	return m
}

func byteCap(n int64) *limits.Rules {
	return rulesWith(func(r *limits.Rules) { r.Default.Session.MaxBytes = n })
}

// TestMsgSizeReplacesTheStream: once an MTA has reported {msg_size}, new
// milter connections ask for neither headers nor body, and the byte cap is
// enforced from the macro alone.
func TestMsgSizeReplacesTheStream(t *testing.T) {
	h := start(t, byteCap(100000))
	first, _ := h.connect("192.0.2.10")
	if !first.streamed() {
		t.Fatal("the first connection, before any {msg_size} was seen, did not ask for headers and body")
	}
	if act, stage := first.sendSized(sendmailLike, 1000); act != nil {
		t.Fatalf("first message refused at %s: %+v", stage, act)
	}
	if got := h.sizeSource("stream"); got != 1 {
		t.Fatalf("size source stream = %v, want 1", got)
	}

	m, _ := h.connect("192.0.2.11")
	if m.streamed() {
		t.Fatal("after an end of message with {msg_size}, a new connection still asks for headers and body")
	}
	for i := 0; i < 2; i++ {
		if act, stage := m.sendSized(sendmailLike, 60000); act != nil {
			t.Fatalf("message %d refused at %s: %+v", i+1, stage, act)
		}
	}
	act, stage := m.sendSized(sendmailLike, 100)
	if stage != "mail" {
		t.Fatalf("third message: stage %q, want a refusal at MAIL after 120000 bytes", stage)
	}
	wantReply(t, act, 421, "421 4.7.0 Too much data in this session (limit 100000 bytes); reconnect to send more")
	if got := h.sizeSource("msg_size"); got != 2 {
		t.Fatalf("size source msg_size = %v, want 2", got)
	}
	if got := value(t, h.reg, "sessioncap_message_bytes_total"); got != 1000+2*60000 {
		t.Fatalf("message bytes %v, want %d", got, 1000+2*60000)
	}
}

// TestMsgSizeOverrunTempfail: the overrun reply at end of message works from
// {msg_size} too.
func TestMsgSizeOverrunTempfail(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Session.MaxBytes = 100000
		r.Default.Session.Overrun = limits.OverrunTempfail
	}))
	m := h.connectAfterMsgSize("192.0.2.11")
	if act, _ := m.sendSized(sendmailLike, 60000); act != nil {
		t.Fatalf("first message refused: %+v", act)
	}
	act, stage := m.sendSized(sendmailLike, 60000)
	if stage != "eom" {
		t.Fatalf("crossing message: stage %q, want eom", stage)
	}
	wantReply(t, act, 452, "452 4.3.1 Message exceeded this session's data limit (limit 100000 bytes); reconnect and send it again")
}

// TestMsgSizeAbsentPinsTheStream: an MTA that sends no {msg_size} (Postfix)
// brings the stream back for good; a message it sent on a connection
// without the stream counts 0 bytes and is logged and counted as unknown.
func TestMsgSizeAbsentPinsTheStream(t *testing.T) {
	h := start(t, byteCap(100000))
	p := h.connectAfterMsgSize("192.0.2.20")
	if act, stage := p.sendSized(postfixLike, 5000); act != nil {
		t.Fatalf("refused at %s: %+v", stage, act)
	}
	if got := h.sizeSource("unknown"); got != 1 {
		t.Fatalf("size source unknown = %v, want 1", got)
	}
	if logs := h.logs.String(); !strings.Contains(logs, "neither headers and body nor {msg_size}") || !strings.Contains(logs, "ask for headers and body again") {
		t.Fatalf("no log line for the missing {msg_size}:\n%s", logs)
	}
	for _, like := range []bool{postfixLike, sendmailLike} {
		m, _ := h.connect("192.0.2.30")
		if !m.streamed() {
			t.Fatalf("after an end of message without {msg_size}, a new connection does not ask for headers and body")
		}
		m.sendSized(like, 100)
	}
	if got := h.sizeSource("stream"); got != 3 {
		t.Fatalf("size source stream = %v, want 3", got)
	}
}

// TestMsgSizePostfixFirst: Postfix never sends {msg_size}; the stream stays.
func TestMsgSizePostfixFirst(t *testing.T) {
	h := start(t, byteCap(100000))
	for i := 0; i < 3; i++ {
		m, _ := h.connect("192.0.2.10")
		if !m.streamed() {
			t.Fatalf("connection %d does not ask for headers and body", i+1)
		}
		m.sendSized(postfixLike, 100)
	}
	if got := h.sizeSource("stream"); got != 3 {
		t.Fatalf("size source stream = %v, want 3", got)
	}
}

// TestMsgSizeMalformed: a {msg_size} that is not a number is counted as
// malformed input and treated as absent.
func TestMsgSizeMalformed(t *testing.T) {
	h := start(t, byteCap(100000))
	m, _ := h.connect("192.0.2.10")
	m.macros.Set("{msg_size}", "-12x")
	m.send("", 1, 100)
	if got := value(t, h.reg, "sessioncap_malformed_input_total", "what", "msg_size"); got != 1 {
		t.Fatalf("malformed msg_size = %v, want 1", got)
	}
	next, _ := h.connect("192.0.2.11")
	if !next.streamed() {
		t.Fatal("a malformed {msg_size} switched the stream off")
	}
}
