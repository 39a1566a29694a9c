package milter_test

import (
	"bytes"
	"fmt"
	"testing"

	gomilter "github.com/d--j/go-milter"

	"github.com/sessioncap/sessioncap/limits"
)

// capStep is one SMTP event of a session script, as the MTA sends it to the
// milter.
type capStep struct {
	op    string // "mail" (n: SIZE=, -1 for none), "rcpt", "bytes" (n body bytes), "eom"
	n     int
	limit limits.Limit // expected refusal, "" for none
	code  uint16
}

// runCapScript drives one SMTP session through the real server over its
// socket, in the order an MTA does (a new MAIL aborts an open transaction,
// every end of message is followed by an abort), and checks each refusal's
// code and that it was counted against the expected limit and stage.
func runCapScript(t *testing.T, p limits.Session, steps []capStep) {
	t.Helper()
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session = p }))
	m, act := h.connect("192.0.2.150")
	if act.StopProcessing() {
		t.Fatalf("connect refused: %v", act)
	}
	const (
		idle = iota
		inMail
		inBody
	)
	state := idle
	counted := map[[2]string]float64{}
	for i, st := range steps {
		var act *gomilter.Action
		var err error
		stage := st.op
		switch st.op {
		case "mail":
			if state != idle {
				_ = m.s.Abort(nil)
			}
			args := ""
			if st.n >= 0 {
				args = fmt.Sprintf("SIZE=%d", st.n)
			}
			act, err = m.s.Mail("sender@example.org", args)
			state = inMail
			if err == nil && act.StopProcessing() {
				_ = m.s.Abort(nil)
				state = idle
			}
		case "rcpt":
			act, err = m.s.Rcpt("rcpt@example.net", "")
		case "bytes":
			if state == inMail {
				if _, err = m.s.DataStart(); err == nil {
					_, err = m.s.HeaderEnd()
				}
				state = inBody
			}
			if err == nil {
				_, err = m.s.BodyChunk(bytes.Repeat([]byte("x"), st.n))
			}
			act = &gomilter.Action{Type: gomilter.ActionContinue}
		case "eom":
			if state == inMail {
				if _, err = m.s.DataStart(); err == nil {
					_, err = m.s.HeaderEnd()
				}
			}
			if err == nil {
				_, act, err = m.s.End()
			}
			_ = m.s.Abort(nil)
			state = idle
		default:
			t.Fatalf("bad op %q", st.op)
		}
		if err != nil {
			t.Fatalf("step %d (%s): %v", i, st.op, err)
		}
		refused := act.StopProcessing() || (st.op == "eom" && act.Type != gomilter.ActionAccept)
		switch {
		case st.limit == "" && refused:
			t.Fatalf("step %d (%s): unexpected refusal %d %q", i, st.op, act.SMTPCode, act.SMTPReply)
		case st.limit != "" && !refused:
			t.Fatalf("step %d (%s): want refusal by %s, got none", i, st.op, st.limit)
		case refused && act.SMTPCode != st.code:
			t.Fatalf("step %d (%s): got %d %q, want %d", i, st.op, act.SMTPCode, act.SMTPReply, st.code)
		}
		if refused {
			k := [2]string{string(st.limit), stage}
			counted[k]++
			if got := h.refusals(string(st.limit), stage, "enforce"); got != counted[k] {
				t.Fatalf("step %d (%s): refusals{limit=%s,stage=%s} = %v, want %v", i, st.op, st.limit, stage, got, counted[k])
			}
		}
	}
}

// TestSessionCapScripts: the session caps of package limits as the milter
// applies them to a real session: message cap, byte cap with and without
// SIZE=, the first-message rule, both overrun policies, the recipient cap.
func TestSessionCapScripts(t *testing.T) {
	msg := func(size, body int) []capStep {
		return []capStep{{op: "mail", n: size}, {op: "rcpt"}, {op: "bytes", n: body}, {op: "eom"}}
	}
	cat := func(parts ...[]capStep) []capStep {
		var out []capStep
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	const (
		msgs  = limits.LimitSessionMessages
		bytes = limits.LimitSessionBytes
		rcpts = limits.LimitSessionRecipients
	)
	tests := []struct {
		name  string
		p     limits.Session
		steps []capStep
	}{
		{"message cap refuses the N+1th MAIL", limits.Session{MaxMessages: 2},
			cat(msg(-1, 10), msg(-1, 10), []capStep{{op: "mail", n: -1, limit: msgs, code: 421}})},
		{"message cap off", limits.Session{},
			cat(msg(-1, 10), msg(-1, 10), msg(-1, 10), msg(-1, 10))},
		{"first message bigger than the byte cap passes", limits.Session{MaxBytes: 100},
			cat([]capStep{{op: "mail", n: 5000}, {op: "rcpt"}, {op: "bytes", n: 5000}, {op: "eom"}},
				[]capStep{{op: "mail", n: -1, limit: bytes, code: 421}})},
		{"first message passes even with tempfail overrun", limits.Session{MaxBytes: 100, Overrun: limits.OverrunTempfail},
			msg(-1, 5000)},
		{"SIZE predicts the overflow at MAIL", limits.Session{MaxBytes: 100},
			cat(msg(-1, 60), []capStep{{op: "mail", n: 41, limit: bytes, code: 421}})},
		{"SIZE that fits exactly passes", limits.Session{MaxBytes: 100},
			cat(msg(-1, 60), msg(40, 40), []capStep{{op: "mail", n: -1, limit: bytes, code: 421}})},
		{"overrun accept takes the crossing message", limits.Session{MaxBytes: 100, Overrun: limits.OverrunAccept},
			cat(msg(-1, 60), msg(-1, 60), []capStep{{op: "mail", n: -1, limit: bytes, code: 421}})},
		{"overrun tempfail answers 452 after the dot", limits.Session{MaxBytes: 100, Overrun: limits.OverrunTempfail},
			cat(msg(-1, 60), []capStep{{op: "mail", n: -1}, {op: "rcpt"}, {op: "bytes", n: 60}, {op: "eom", limit: bytes, code: 452}},
				[]capStep{{op: "mail", n: -1, limit: bytes, code: 421}})},
		{"recipient cap is per session", limits.Session{MaxRecipients: 3},
			[]capStep{{op: "mail", n: -1}, {op: "rcpt"}, {op: "rcpt"}, {op: "bytes", n: 1}, {op: "eom"},
				{op: "mail", n: -1}, {op: "rcpt"}, {op: "rcpt", limit: rcpts, code: 452}}},
		{"aborted transaction bytes still count once a message was accepted", limits.Session{MaxBytes: 100},
			cat(msg(-1, 10), []capStep{{op: "mail", n: -1}, {op: "rcpt"}, {op: "bytes", n: 95}, {op: "mail", n: -1, limit: bytes, code: 421}})},
		{"no byte refusal while nothing was accepted", limits.Session{MaxBytes: 100},
			[]capStep{{op: "mail", n: -1}, {op: "rcpt"}, {op: "bytes", n: 500}, {op: "mail", n: 500}, {op: "rcpt"}, {op: "bytes", n: 500}, {op: "eom"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { runCapScript(t, tt.p, tt.steps) })
	}
}
