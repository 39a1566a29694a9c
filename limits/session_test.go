package limits

import (
	"strings"
	"testing"
)

// The scenarios (message, byte and recipient caps over whole sessions) are
// driven through the real milter server in package milter
// (TestSessionCapScripts); here each SessionState method is checked alone.

func TestCheckMailFirstMessageRule(t *testing.T) {
	p := Session{MaxBytes: 100}
	var s SessionState
	s.AddBytes(5000)
	for _, size := range []int64{-1, 0, 100, 101, 1 << 40} {
		if r := s.CheckMail(p, DefaultReplies(), size); r != nil {
			t.Errorf("no message accepted yet, 5000 bytes, SIZE %d: refused %v", size, r)
		}
	}
	s.AcceptMessage()
	s.EndTransaction()
	r := s.CheckMail(p, DefaultReplies(), -1)
	if r == nil || r.Limit != LimitSessionBytes || r.Code != 421 || r.Value != 5000 || r.Cap != 100 || r.Stage != StageMail {
		t.Fatalf("after an accepted message over the cap: %+v, want session_bytes 421 value 5000 cap 100 at mail", r)
	}
}

func TestCheckMailSize(t *testing.T) {
	p := Session{MaxBytes: 100}
	replies := DefaultReplies()
	s := SessionState{Messages: 1, Bytes: 60}
	for _, tt := range []struct {
		size    int64
		refused bool
	}{{-1, false}, {0, false}, {40, false}, {41, true}, {1 << 62, true}} {
		r := s.CheckMail(p, replies, tt.size)
		if (r != nil) != tt.refused {
			t.Errorf("60 of 100 bytes used, SIZE %d: refusal %v, want refused %v", tt.size, r, tt.refused)
			continue
		}
		if r != nil && (r.Limit != LimitSessionBytes || r.Code != 421 || r.Value != 60+tt.size ||
			r.Reason() != "4.7.0 Message would exceed this session's data limit (limit 100 bytes); reconnect to send it") {
			t.Errorf("SIZE %d: %+v %q", tt.size, r, r.Reason())
		}
	}
	if r := (&SessionState{Messages: 1, Bytes: 100}).CheckMail(p, replies, -1); r == nil || r.Code != 421 {
		t.Errorf("cap used up exactly: %v, want 421", r)
	}
	if r := (&SessionState{Messages: 5, Bytes: 1 << 40}).CheckMail(Session{}, replies, 1<<40); r != nil {
		t.Errorf("no caps: %v", r)
	}
}

func TestCheckMailMessages(t *testing.T) {
	p := Session{MaxMessages: 2}
	if r := (&SessionState{Messages: 1}).CheckMail(p, DefaultReplies(), -1); r != nil {
		t.Errorf("1 of 2 messages: %v", r)
	}
	r := (&SessionState{Messages: 2}).CheckMail(p, DefaultReplies(), -1)
	if r == nil || r.Limit != LimitSessionMessages || r.Code != 421 || r.Value != 2 || r.Cap != 2 {
		t.Errorf("2 of 2 messages: %+v", r)
	}
}

func TestCheckRcpt(t *testing.T) {
	p := Session{MaxRecipients: 2}
	var s SessionState
	for i := 0; i < 2; i++ {
		if r := s.CheckRcpt(p, DefaultReplies()); r != nil {
			t.Fatalf("recipient %d: %v", i+1, r)
		}
		s.AcceptRecipient()
	}
	s.EndTransaction() // the recipient cap is per session, not per transaction
	r := s.CheckRcpt(p, DefaultReplies())
	if r == nil || r.Limit != LimitSessionRecipients || r.Code != 452 || r.Stage != StageRcpt {
		t.Fatalf("third recipient: %+v, want session_recipients 452 at rcpt", r)
	}
}

func TestCheckEOM(t *testing.T) {
	replies := DefaultReplies()
	tempfail := Session{MaxBytes: 100, Overrun: OverrunTempfail}
	for _, tt := range []struct {
		name    string
		p       Session
		s       SessionState
		refused bool
	}{
		{"first message over the cap", tempfail, SessionState{Bytes: 500}, false},
		{"second message within the cap", tempfail, SessionState{Messages: 1, Bytes: 100}, false},
		{"second message over the cap", tempfail, SessionState{Messages: 1, Bytes: 101}, true},
		{"overrun accept", Session{MaxBytes: 100, Overrun: OverrunAccept}, SessionState{Messages: 1, Bytes: 500}, false},
		{"no byte cap", Session{Overrun: OverrunTempfail}, SessionState{Messages: 1, Bytes: 500}, false},
	} {
		r := tt.s.CheckEOM(tt.p, replies)
		if (r != nil) != tt.refused {
			t.Errorf("%s: %v, want refused %v", tt.name, r, tt.refused)
		}
		if r != nil && (r.Limit != LimitSessionBytes || r.Code != 452 || r.Stage != StageEOM) {
			t.Errorf("%s: %+v, want session_bytes 452 at eom", tt.name, r)
		}
	}
}

func TestAddBytesAndEndTransaction(t *testing.T) {
	var s SessionState
	s.AddBytes(10)
	s.AddBytes(5)
	if s.Bytes != 15 || s.TxBytes != 15 {
		t.Fatalf("after 10+5 bytes: %+v", s)
	}
	s.EndTransaction()
	s.AddBytes(7)
	if s.Bytes != 22 || s.TxBytes != 7 {
		t.Fatalf("after a new transaction of 7 bytes: %+v, want Bytes 22 TxBytes 7", s)
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
