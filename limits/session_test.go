package limits

import (
	"strings"
	"testing"
)

// step is one SMTP event of a session script.
type step struct {
	op    string // "mail", "rcpt", "bytes", "eom"
	n     int64  // SIZE= for mail (-1: none), byte count for bytes
	limit Limit  // expected refusal, "" for none
	code  int
}

func runSession(t *testing.T, p Session, steps []step) SessionState {
	t.Helper()
	var s SessionState
	replies := DefaultReplies()
	for i, st := range steps {
		var r *Refusal
		switch st.op {
		case "mail":
			s.EndTransaction()
			r = s.CheckMail(p, replies, st.n)
		case "rcpt":
			r = s.CheckRcpt(p, replies)
			if r == nil {
				s.AcceptRecipient()
			}
		case "bytes":
			s.AddBytes(int(st.n))
		case "eom":
			r = s.CheckEOM(p, replies)
			if r == nil {
				s.AcceptMessage()
			}
			s.EndTransaction()
		default:
			t.Fatalf("bad op %q", st.op)
		}
		switch {
		case st.limit == "" && r != nil:
			t.Fatalf("step %d (%s): unexpected refusal %v", i, st.op, r)
		case st.limit != "" && r == nil:
			t.Fatalf("step %d (%s): want refusal by %s, got none (state %+v)", i, st.op, st.limit, s)
		case r != nil && (r.Limit != st.limit || r.Code != st.code):
			t.Fatalf("step %d (%s): got %s %d, want %s %d", i, st.op, r.Limit, r.Code, st.limit, st.code)
		}
	}
	return s
}

func TestSessionCaps(t *testing.T) {
	msg := func(size, body int64) []step {
		return []step{{op: "mail", n: size}, {op: "rcpt"}, {op: "bytes", n: body}, {op: "eom"}}
	}
	cat := func(parts ...[]step) []step {
		var out []step
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	tests := []struct {
		name  string
		p     Session
		steps []step
	}{
		{"message cap refuses the N+1th MAIL", Session{MaxMessages: 2},
			cat(msg(-1, 10), msg(-1, 10), []step{{op: "mail", n: -1, limit: LimitSessionMessages, code: 421}})},
		{"message cap off", Session{},
			cat(msg(-1, 10), msg(-1, 10), msg(-1, 10), msg(-1, 10))},
		{"first message bigger than the byte cap passes", Session{MaxBytes: 100},
			cat([]step{{op: "mail", n: 5000}, {op: "bytes", n: 5000}, {op: "eom"}},
				[]step{{op: "mail", n: -1, limit: LimitSessionBytes, code: 421}})},
		{"first message passes even with tempfail overrun", Session{MaxBytes: 100, Overrun: OverrunTempfail},
			cat([]step{{op: "mail", n: -1}, {op: "bytes", n: 5000}, {op: "eom"}})},
		{"SIZE predicts the overflow at MAIL", Session{MaxBytes: 100},
			cat(msg(-1, 60), []step{{op: "mail", n: 41, limit: LimitSessionBytes, code: 421}})},
		{"SIZE that fits exactly passes", Session{MaxBytes: 100},
			cat(msg(-1, 60), msg(40, 40), []step{{op: "mail", n: -1, limit: LimitSessionBytes, code: 421}})},
		{"overrun accept takes the crossing message", Session{MaxBytes: 100, Overrun: OverrunAccept},
			cat(msg(-1, 60), msg(-1, 60), []step{{op: "mail", n: -1, limit: LimitSessionBytes, code: 421}})},
		{"overrun tempfail answers 452 after the dot", Session{MaxBytes: 100, Overrun: OverrunTempfail},
			cat(msg(-1, 60), []step{{op: "mail", n: -1}, {op: "bytes", n: 60}, {op: "eom", limit: LimitSessionBytes, code: 452}},
				[]step{{op: "mail", n: -1, limit: LimitSessionBytes, code: 421}})},
		{"recipient cap is per session", Session{MaxRecipients: 3},
			[]step{{op: "mail", n: -1}, {op: "rcpt"}, {op: "rcpt"}, {op: "bytes", n: 1}, {op: "eom"},
				{op: "mail", n: -1}, {op: "rcpt"}, {op: "rcpt", limit: LimitSessionRecipients, code: 452}}},
		{"aborted transaction bytes still count once a message was accepted", Session{MaxBytes: 100},
			cat(msg(-1, 10), []step{{op: "mail", n: -1}, {op: "bytes", n: 95}, {op: "mail", n: -1, limit: LimitSessionBytes, code: 421}})},
		{"no byte refusal while nothing was accepted", Session{MaxBytes: 100},
			[]step{{op: "mail", n: -1}, {op: "bytes", n: 500}, {op: "mail", n: 500}, {op: "bytes", n: 500}, {op: "eom"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { runSession(t, tt.p, tt.steps) })
	}
}

func TestRefusalText(t *testing.T) {
	var s SessionState
	s.AcceptMessage()
	r := s.CheckMail(Session{MaxMessages: 1}, DefaultReplies(), -1)
	if r == nil {
		t.Fatal("no refusal")
	}
	want := "4.7.0 Too many messages in this session (limit 1); reconnect to send more"
	if r.Reason() != want || r.Code != 421 {
		t.Fatalf("got %d %q, want 421 %q", r.Code, r.Reason(), want)
	}
	if r.Value != 1 || r.Cap != 1 || r.Stage != StageMail {
		t.Fatalf("got value %d cap %d stage %s", r.Value, r.Cap, r.Stage)
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		in      string
		want    Reply
		wantErr string
	}{
		{"421 4.7.0 Go away {cap}", Reply{421, "4.7.0", "Go away {cap}"}, ""},
		{"451 try later", Reply{451, "", "try later"}, ""},
		{"550 5.7.1 no", Reply{}, "not 4xx"},
		{"421 5.7.1 no", Reply{}, "must be 4.X.Y"},
		{"42 x", Reply{}, "3-digit"},
		{"421 4.7.0", Reply{}, "text is empty"},
		{"421 4.7.0 hi {limit}", Reply{}, "unknown placeholder {limit}"},
		{"421 4.7.0 two\nlines", Reply{}, "single line"},
	}
	for _, tt := range tests {
		got, err := ParseReply(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseReply(%q) error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseReply(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	if err := DefaultReplies().Validate(); err != nil {
		t.Fatalf("default replies invalid: %v", err)
	}
}
