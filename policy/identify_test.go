package policy_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/limits"
	"github.com/sessioncap/sessioncap/policy"
)

// capture is a recorded series of policy requests, each its attribute lines.
type capture [][]string

// loadCapture reads testdata/NAME: requests as on the wire, separated by
// empty lines, after comment lines starting with #.
func loadCapture(t *testing.T, name string) capture {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	var c capture
	var req []string
	for _, l := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(l, "#"):
		case l == "":
			if req != nil {
				c = append(c, req)
				req = nil
			}
		default:
			req = append(req, l)
		}
	}
	if len(c) == 0 {
		t.Fatalf("%s: no requests", name)
	}
	return c
}

func attr(req []string, name string) string {
	for _, l := range req {
		if v, ok := strings.CutPrefix(l, name+"="); ok {
			return v
		}
	}
	return ""
}

// with returns a copy of req with attribute name set to v.
func with(req []string, name, v string) []string {
	out := append([]string(nil), req...)
	for i, l := range out {
		if strings.HasPrefix(l, name+"=") {
			out[i] = name + "=" + v
		}
	}
	return out
}

// sessions splits c by SMTP session: by client_port, in order of appearance
// (each captured session came from its own port).
func (c capture) sessions() []capture {
	var out []capture
	idx := map[string]int{}
	for _, r := range c {
		p := attr(r, "client_port")
		i, ok := idx[p]
		if !ok {
			i = len(out)
			idx[p] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], r)
	}
	return out
}

// without returns c without its requests in protocol_state st (what
// Postfix sends when the policy is not in that stage's restrictions).
func (c capture) without(st string) capture {
	var out capture
	for _, r := range c {
		if attr(r, "protocol_state") != st {
			out = append(out, r)
		}
	}
	return out
}

// as rewrites every request of c to come from the client endpoint of
// other, and, when pid is not "", from smtpd process pid (hex).
func (c capture) as(other []string, pid string) capture {
	out := make(capture, len(c))
	for i, r := range c {
		r = with(with(r, "client_address", attr(other, "client_address")), "client_port", attr(other, "client_port"))
		if inst := attr(r, "instance"); pid != "" && inst != "" {
			r = with(r, "instance", pid+inst[strings.IndexByte(inst, '.'):])
		}
		out[i] = r
	}
	return out
}

// replay sends every request of c over p and fails on an answer other
// than DUNNO.
func (p *pconn) replay(c capture) {
	p.t.Helper()
	for _, r := range c {
		if a := p.ask(r); a != "DUNNO" {
			p.t.Fatalf("%s request of client port %s: %q, want DUNNO", attr(r, "protocol_state"), attr(r, "client_port"), a)
		}
	}
}

var captures = []struct{ name, file, drop string }{
	{"client, sender, recipient and end-of-data restrictions", "postfix-3.7.11-delay-reject-no.txt", ""},
	{"sender, recipient and end-of-data restrictions", "postfix-3.7.11-delay-reject-no.txt", "CONNECT"},
	{"smtpd_delay_reject = yes", "postfix-3.7.11-delay-reject-yes.txt", ""},
}

// TestCapturedPostfixSessionsEachCountedOnce: what Postfix 3.7.11 really
// sends for five SMTP sessions in a row from one smtpd process over one
// policy connection (two with two messages each, under a cap of two
// messages) passes, each session counted once.
func TestCapturedPostfixSessionsEachCountedOnce(t *testing.T) {
	for _, tc := range captures {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxMessages = 2 }))
			c := loadCapture(t, tc.file).without(tc.drop)
			h.dial().replay(c)
			if got, want := value(t, h.reg, "sessioncap_sessions_total"), float64(len(c.sessions())); got != want {
				t.Errorf("sessions_total = %v, want %v", got, want)
			}
			if got := value(t, h.reg, "sessioncap_messages_total"); got != 6 {
				t.Errorf("messages_total = %v, want 6", got)
			}
		})
	}
}

// TestSessionReusingEndpointsStartsFromZero: a new SMTP connection with the
// endpoints of one that ended (NAT, a client that picked the same source
// port), served by the same smtpd process over the same policy connection or
// by another one over its own, starts from zero: its MAIL does not get the
// ended session's cap.
func TestSessionReusingEndpointsStartsFromZero(t *testing.T) {
	for _, tc := range captures {
		for _, other := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/other smtpd process=%v", tc.name, other), func(t *testing.T) {
				h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxMessages = 2 }))
				ss := loadCapture(t, tc.file).without(tc.drop).sessions()
				first, second := ss[len(ss)-3], ss[len(ss)-2]
				p := h.dial()
				p.replay(first)
				if other {
					h.dial().replay(second.as(first[0], "2b"))
				} else {
					p.replay(second.as(first[0], ""))
				}
				if got := value(t, h.reg, "sessioncap_messages_total"); got != 4 {
					t.Errorf("messages_total = %v, want 4", got)
				}
				if got := value(t, h.reg, "sessioncap_sessions_total"); got < 2 {
					t.Errorf("sessions_total = %v, want the second session counted", got)
				}
			})
		}
	}
}

// TestAmbiguousMailIsDecidedAtTheFirstRcpt: a MAIL over the message cap in
// a session whose requests do not begin with CONNECT may be a new session's
// first: it is answered DUNNO and its first RCPT, whose instance says it is
// the same session, gets the 421. When the session began with a CONNECT, a
// new one would have sent its own, so the MAIL itself gets the 421.
func TestAmbiguousMailIsDecidedAtTheFirstRcpt(t *testing.T) {
	for _, tc := range captures[:2] {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxMessages = 2 }))
			ss := loadCapture(t, tc.file).without(tc.drop).sessions()
			s := ss[len(ss)-1]
			p := h.dial()
			p.replay(s)
			// a third transaction: MAIL as the second's, RCPT with seqno 2
			var mail, rcpt []string
			for _, r := range s {
				switch attr(r, "protocol_state") {
				case "MAIL":
					mail = r
				case "RCPT":
					rcpt = r
				}
			}
			inst := attr(rcpt, "instance")
			rcpt = with(rcpt, "instance", inst[:strings.LastIndexByte(inst, '.')]+".2")
			a := p.ask(mail)
			if tc.drop == "CONNECT" {
				if a != "DUNNO" {
					t.Fatalf("ambiguous MAIL: %q, want DUNNO", a)
				}
				a = p.ask(rcpt)
			}
			if !strings.HasPrefix(a, "421 4.7.0 Too many messages") {
				t.Fatalf("third message: %q, want 421 4.7.0 Too many messages", a)
			}
			if got := h.refusals("session_messages", "mail", "enforce"); got != 1 {
				t.Errorf("refusals = %v, want 1", got)
			}
		})
	}
}

// TestPolicyConnectionMovingOnEndsItsSession: one smtpd process serves one
// SMTP session at a time, so when its policy connection speaks for other
// endpoints its previous session has ended and leaves the table; only the
// last session of the connection is kept.
func TestPolicyConnectionMovingOnEndsItsSession(t *testing.T) {
	for _, tc := range captures {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, limits.DefaultRules())
			h.dial().replay(loadCapture(t, tc.file).without(tc.drop))
			if got := h.srv.Sessions(); got != 1 {
				t.Errorf("%d sessions kept, want 1 (the connection's last)", got)
			}
			if got := value(t, h.reg, "sessioncap_policy_session_evictions_total"); got != 0 {
				t.Errorf("evictions = %v", got)
			}
		})
	}
}

// TestFullTableKeepsSessionsBeingServed: when the table is full, the
// session evicted is one no open policy connection is serving (its smtpd
// process closed its policy connection), not a live one, which would be
// counted again against the frequency rule and banned at END-OF-MESSAGE
// after its message was sent.
func TestFullTableKeepsSessionsBeingServed(t *testing.T) {
	h := startWith(t, rulesWith(func(r *limits.Rules) {
		r.Default.Frequency = limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: time.Minute}
	}), func(c *policy.Config) { c.MaxSessions = 2 })
	a := newSMTP("192.0.2.10", 100)
	pa := h.dial()
	a.mail()
	if r := pa.ask(a.rcpt(0, 0)); r != "DUNNO" {
		t.Fatalf("A rcpt: %q", r)
	}
	for i, ip := range []string{"198.51.100.1", "198.51.100.2"} {
		s := newSMTP(ip, 200+i)
		p := h.dial()
		if r, _ := p.send(s, 1, 100, 0); r != "" {
			t.Fatalf("%s: %q", ip, r)
		}
		_ = p.c.Close() // its smtpd process exited
		eventually(t, "the connection to close", func() bool { return value(t, h.reg, "sessioncap_policy_connections") == 1 })
	}
	if r := pa.ask(a.eom(1000, 1)); r != "DUNNO" {
		t.Errorf("A's END-OF-MESSAGE after the table filled: %q", r)
	}
	if got := value(t, h.reg, "sessioncap_sessions_total"); got != 3 {
		t.Errorf("sessions_total = %v, want 3", got)
	}
	if got := value(t, h.reg, "sessioncap_policy_session_evictions_total"); got != 1 {
		t.Errorf("evictions = %v, want 1", got)
	}
}

// TestFullTableDropsTheSessionAConnectionLeft: an smtpd process that serves
// its next SMTP session over the same policy connection has ended the
// previous one, so that session makes room in a full table, not a live
// session another smtpd process is serving.
func TestFullTableDropsTheSessionAConnectionLeft(t *testing.T) {
	h := startWith(t, rulesWith(func(r *limits.Rules) {
		r.Default.Frequency = limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: time.Minute}
	}), func(c *policy.Config) { c.MaxSessions = 2 })
	a := newSMTP("192.0.2.10", 100)
	pa := h.dial()
	a.mail()
	if r := pa.ask(a.rcpt(0, 0)); r != "DUNNO" {
		t.Fatalf("A rcpt: %q", r)
	}
	p := h.dial() // one smtpd process, two SMTP sessions in a row
	for i, ip := range []string{"198.51.100.1", "198.51.100.2"} {
		if r, _ := p.send(newSMTP(ip, 200+i), 1, 100, 0); r != "" {
			t.Fatalf("%s: %q", ip, r)
		}
	}
	if r := pa.ask(a.eom(1000, 1)); r != "DUNNO" {
		t.Errorf("A's END-OF-MESSAGE: %q", r)
	}
	if got := value(t, h.reg, "sessioncap_sessions_total"); got != 3 {
		t.Errorf("sessions_total = %v, want 3", got)
	}
	if got := value(t, h.reg, "sessioncap_policy_session_evictions_total"); got != 0 {
		t.Errorf("evictions = %v, want 0: the ended session left the table", got)
	}
}
