package policy_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/limits"
	"github.com/sessioncap/sessioncap/policy"
)

func TestMessageCap(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxMessages = 3 }))
	p := h.dial()
	s := newSMTP("192.0.2.10", 100)
	for i := 0; i < 3; i++ {
		if a, st := p.send(s, 1, 100, 0); a != "" {
			t.Fatalf("message %d refused at %s: %s", i+1, st, a)
		}
	}
	a, st := p.send(s, 1, 100, 0)
	if st != "RCPT" || a != "421 4.7.0 Too many messages in this session (limit 3); reconnect to send more" {
		t.Fatalf("4th message: %s %q", st, a)
	}
	if got := h.refusals("session_messages", "mail", "enforce"); got != 1 {
		t.Fatalf("refusals = %v", got)
	}
	if got := value(t, h.reg, "sessioncap_messages_total"); got != 3 {
		t.Fatalf("messages_total = %v", got)
	}
	if !strings.Contains(h.logs.String(), `"msg":"refused","client_ip":"192.0.2.10","queue_id":"","limit":"session_messages","stage":"mail","value":3,"cap":3,"mode":"enforce"`) {
		t.Fatalf("no refusal log line:\n%s", h.logs)
	}
	// 421 ended the session: the same SMTP connection cannot come back,
	// and a new one from the same client starts from zero.
	s2 := newSMTP("192.0.2.10", 100)
	if a, st := p.send(s2, 1, 100, 0); a != "" {
		t.Fatalf("new session refused at %s: %s", st, a)
	}
}

func TestByteCapFirstMessageRule(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxBytes = 1000 }))
	p := h.dial()
	s := newSMTP("192.0.2.11", 100)
	// the first message passes whatever its size, even announced
	if a, st := p.send(s, 1, 5000, 5000); a != "" {
		t.Fatalf("first message refused at %s: %s", st, a)
	}
	a, st := p.send(s, 1, 10, 0)
	if st != "RCPT" || a != "421 4.7.0 Too much data in this session (limit 1000 bytes); reconnect to send more" {
		t.Fatalf("second message: %s %q", st, a)
	}
	if got := h.refusals("session_bytes", "mail", "enforce"); got != 1 {
		t.Fatalf("refusals = %v", got)
	}
	if got := value(t, h.reg, "sessioncap_message_bytes_total"); got != 5000 {
		t.Fatalf("message_bytes_total = %v", got)
	}
}

func TestByteCapSizePrediction(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxBytes = 1000 }))
	p := h.dial()
	s := newSMTP("192.0.2.12", 100)
	if a, _ := p.send(s, 1, 400, 400); a != "" {
		t.Fatalf("first message refused: %s", a)
	}
	// 600 left: SIZE=600 fits
	if a, _ := p.send(s, 1, 550, 600); a != "" {
		t.Fatalf("fitting message refused: %s", a)
	}
	// 50 left: SIZE=51 does not
	a, st := p.send(s, 1, 51, 51)
	if st != "RCPT" || a != "421 4.7.0 Message would exceed this session's data limit (limit 1000 bytes); reconnect to send it" {
		t.Fatalf("third message: %s %q", st, a)
	}
}

func TestByteCapOverrunTempfail(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Session.MaxBytes = 1000
		r.Default.Session.Overrun = limits.OverrunTempfail
	}))
	p := h.dial()
	s := newSMTP("192.0.2.13", 100)
	if a, _ := p.send(s, 1, 600, 0); a != "" {
		t.Fatalf("first message refused: %s", a)
	}
	a, st := p.send(s, 1, 600, 0)
	// 421, not the configured 452: Postfix before 20260803 keeps the
	// transaction open after an end-of-data restriction rejects
	if st != "END-OF-MESSAGE" || a != "421 4.3.1 Message exceeded this session's data limit (limit 1000 bytes); reconnect and send it again" {
		t.Fatalf("overrun: %s %q", st, a)
	}
	if got := value(t, h.reg, "sessioncap_messages_total"); got != 1 {
		t.Fatalf("messages_total = %v, want 1 (the refused one is not counted)", got)
	}
}

func TestRecipientCap(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxRecipients = 3 }))
	p := h.dial()
	s := newSMTP("192.0.2.14", 100)
	s.mail()
	for i := 0; i < 3; i++ {
		if a := p.ask(s.rcpt(i, 0)); a != "DUNNO" {
			t.Fatalf("recipient %d: %s", i+1, a)
		}
	}
	if a := p.ask(s.rcpt(3, 0)); a != "452 4.5.3 Too many recipients in this session (limit 3); send the rest in a new session" {
		t.Fatalf("4th recipient: %q", a)
	}
	// the session goes on: 452 does not end it
	if a := p.ask(s.eom(100, 3)); a != "DUNNO" {
		t.Fatalf("end of message: %q", a)
	}
	if got := h.refusals("session_recipients", "rcpt", "enforce"); got != 1 {
		t.Fatalf("refusals = %v", got)
	}
}

// TestRecipientCountCorrection: recipients let through by the policy but
// rejected by Postfix afterwards (a later restriction, an unknown user) do
// not count once END-OF-MESSAGE reports recipient_count.
func TestRecipientCountCorrection(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxRecipients = 3 }))
	p := h.dial()
	s := newSMTP("192.0.2.15", 100)
	s.mail()
	for i := 0; i < 3; i++ {
		if a := p.ask(s.rcpt(i, 0)); a != "DUNNO" {
			t.Fatalf("recipient %d: %s", i+1, a)
		}
	}
	if a := p.ask(s.eom(100, 1)); a != "DUNNO" { // Postfix accepted one of the three
		t.Fatalf("end of message: %q", a)
	}
	s.mail()
	for i := 0; i < 2; i++ {
		if a := p.ask(s.rcpt(i, 0)); a != "DUNNO" {
			t.Fatalf("second transaction, recipient %d: %s", i+1, a)
		}
	}
	if a := p.ask(s.rcpt(2, 0)); !strings.HasPrefix(a, "452 4.5.3 ") {
		t.Fatalf("4th counted recipient: %q", a)
	}
}

func TestFrequencyBan(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Frequency = limits.Frequency{MaxConnections: 2, Window: time.Minute, Ban: 5 * time.Minute}
	}))
	p := h.dial()
	for i := 0; i < 2; i++ {
		s := newSMTP("192.0.2.20", 100)
		if a, st := p.send(s, 2, 100, 0); a != "" {
			t.Fatalf("session %d refused at %s: %s", i+1, st, a)
		}
	}
	if got := value(t, h.reg, "sessioncap_sessions_total"); got != 2 {
		t.Fatalf("sessions_total = %v: each session counts once, not per request", got)
	}
	s := newSMTP("192.0.2.20", 100)
	a, _ := p.send(s, 1, 100, 0)
	if a != "421 4.7.0 Too many connections from your network (limit 2 per 1m); banned for 5m, try again later" {
		t.Fatalf("3rd session: %q", a)
	}
	if got := value(t, h.reg, "sessioncap_bans_total", "mode", "enforce"); got != 1 {
		t.Fatalf("bans_total = %v", got)
	}
	if !strings.Contains(h.logs.String(), `"msg":"banned","client_ip":"192.0.2.20","prefix":"192.0.2.20/32"`) {
		t.Fatalf("no ban log line:\n%s", h.logs)
	}
	h.clock.Add(time.Minute)
	if a, _ := p.send(newSMTP("192.0.2.20", 100), 1, 100, 0); a != "421 4.7.0 Your network is temporarily banned for too many connections; try again in 4m" {
		t.Fatalf("during the ban: %q", a)
	}
	if a, _ := p.send(newSMTP("192.0.2.21", 100), 1, 100, 0); a != "" {
		t.Fatalf("another address: %q", a)
	}
	h.clock.Add(4 * time.Minute)
	if a, _ := p.send(newSMTP("192.0.2.20", 100), 1, 100, 0); a != "" {
		t.Fatalf("after the ban: %q", a)
	}
}

// TestFrequencyCountedAtConnect: with check_policy_service in
// smtpd_client_restrictions and smtpd_delay_reject = no, the session is
// counted and refused at CONNECT.
func TestFrequencyCountedAtConnect(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Frequency = limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: time.Minute}
	}))
	p := h.dial()
	s := newSMTP("192.0.2.22", 100)
	if a := p.ask(s.connect()); a != "DUNNO" {
		t.Fatalf("first CONNECT: %q", a)
	}
	if a, _ := p.send(s, 1, 100, 0); a != "" {
		t.Fatalf("its message: %q", a)
	}
	if a := p.ask(newSMTP("192.0.2.22", 100).connect()); !strings.HasPrefix(a, "421 4.7.0 Too many connections") {
		t.Fatalf("second CONNECT: %q", a)
	}
}

func TestExemptions(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Session.MaxMessages = 1
		r.Default.Frequency = limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: time.Minute}
		r.ExemptNetworks = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
		r.ExemptAuthenticated = true
	}))
	p := h.dial()
	for i := 0; i < 3; i++ {
		s := newSMTP("198.51.100.7", 100)
		for j := 0; j < 3; j++ {
			if a, st := p.send(s, 2, 100, 0); a != "" {
				t.Fatalf("exempt network, session %d message %d refused at %s: %s", i, j, st, a)
			}
		}
	}
	s := newSMTP("192.0.2.30", 100)
	s.sasl = "alice"
	for j := 0; j < 3; j++ {
		if a, st := p.send(s, 2, 100, 0); a != "" {
			t.Fatalf("authenticated message %d refused at %s: %s", j, st, a)
		}
	}
	s = newSMTP("192.0.2.31", 100)
	p.send(s, 1, 100, 0)
	if a, _ := p.send(s, 1, 100, 0); !strings.HasPrefix(a, "421 4.7.0 Too many messages") {
		t.Fatalf("unauthenticated 2nd message: %q", a)
	}
}

func TestOverride(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Session.MaxMessages = 1
		o := limits.Override{Networks: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, Policy: r.Default}
		o.Policy.Session.MaxMessages = 3
		r.Overrides = []limits.Override{o}
	}))
	p := h.dial()
	s := newSMTP("203.0.113.5", 100)
	for j := 0; j < 3; j++ {
		if a, st := p.send(s, 1, 100, 0); a != "" {
			t.Fatalf("override message %d refused at %s: %s", j+1, st, a)
		}
	}
	if a, _ := p.send(s, 1, 100, 0); a != "421 4.7.0 Too many messages in this session (limit 3); reconnect to send more" {
		t.Fatalf("4th: %q", a)
	}
}

func TestMonitorMode(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Mode = limits.ModeMonitor
		r.Default.Session = limits.Session{MaxMessages: 1, MaxRecipients: 1, MaxBytes: 100, Overrun: limits.OverrunTempfail}
		r.Default.Frequency = limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: time.Minute}
	}))
	p := h.dial()
	for i := 0; i < 2; i++ {
		s := newSMTP("192.0.2.40", 100)
		for j := 0; j < 3; j++ {
			if a, st := p.send(s, 2, 1000, 0); a != "" {
				t.Fatalf("monitor mode answered %s at %s", a, st)
			}
		}
	}
	for _, c := range [][2]string{{"session_messages", "mail"}, {"session_bytes", "eom"}, {"session_recipients", "rcpt"}, {"frequency", "connect"}} {
		if got := h.refusals(c[0], c[1], "monitor"); got == 0 {
			t.Errorf("no monitor refusal counted for %s at %s", c[0], c[1])
		}
		if got := h.refusals(c[0], c[1], "enforce"); got != 0 {
			t.Errorf("%v enforced refusals of %s", got, c[0])
		}
	}
	if got := value(t, h.reg, "sessioncap_messages_total"); got != 6 {
		t.Fatalf("messages_total = %v, want 6", got)
	}
}

// TestSessionSurvivesPolicyReconnect: Postfix closes the policy connection
// in the middle of an SMTP session (max_idle, max_ttl, an error) and opens
// another; the session's counts go on.
func TestSessionSurvivesPolicyReconnect(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Session.MaxMessages = 2
		r.Default.Session.MaxRecipients = 3
	}))
	s := newSMTP("192.0.2.50", 100)
	p := h.dial()
	if a, _ := p.send(s, 2, 100, 0); a != "" {
		t.Fatalf("first message: %q", a)
	}
	s.mail()
	if a := p.ask(s.rcpt(0, 0)); a != "DUNNO" {
		t.Fatalf("rcpt: %q", a)
	}
	_ = p.c.Close() // mid-transaction
	p = h.dial()
	if a := p.ask(s.rcpt(1, 0)); !strings.HasPrefix(a, "452 4.5.3 ") {
		t.Fatalf("4th recipient of the session on a new policy connection: %q", a)
	}
	if a := p.ask(s.eom(100, 1)); a != "DUNNO" {
		t.Fatalf("eom: %q", a)
	}
	_ = p.c.Close()
	p = h.dial()
	if a, _ := p.send(s, 1, 100, 0); !strings.HasPrefix(a, "421 4.7.0 Too many messages") {
		t.Fatalf("3rd message on a third policy connection: %q", a)
	}
	if got := value(t, h.reg, "sessioncap_sessions_total"); got != 1 {
		t.Fatalf("sessions_total = %v, want 1", got)
	}
}

// TestConsecutiveSessionsOnOneConnection: one smtpd process serves SMTP
// sessions one after another over the same policy connection; each starts
// from zero, also when a later one reuses the endpoints of an earlier one.
func TestConsecutiveSessionsOnOneConnection(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxMessages = 2 }))
	p := h.dial()
	s := newSMTP("192.0.2.60", 100)
	for i := 0; i < 2; i++ {
		if a, _ := p.send(s, 1, 100, 0); a != "" {
			t.Fatalf("message %d: %q", i+1, a)
		}
	}
	// a new session from another port on the same smtpd process
	s2 := newSMTP("192.0.2.60", 100)
	for i := 0; i < 2; i++ {
		if a, _ := p.send(s2, 1, 100, 0); a != "" {
			t.Fatalf("second session, message %d: %q", i+1, a)
		}
	}
	// a new session with the endpoints of the first: smtpd's transaction
	// counter starts over, so the instance tells it apart
	s3 := *s
	s3.seq, s3.arrival = 0, s.arrival+100
	for i := 0; i < 2; i++ {
		if a, _ := p.send(&s3, 1, 100, 0); a != "" {
			t.Fatalf("session reusing the endpoints, message %d: %q", i+1, a)
		}
	}
	if a, _ := p.send(&s3, 1, 100, 0); !strings.HasPrefix(a, "421 4.7.0 Too many messages") {
		t.Fatalf("3rd message of the reusing session: %q", a)
	}
	// another smtpd process (pid) with the same endpoints is a new session too
	s4 := *s
	s4.pid, s4.seq = 200, 5
	if a, _ := p.send(&s4, 1, 100, 0); a != "" {
		t.Fatalf("other smtpd process: %q", a)
	}
	// and a CONNECT request always starts one
	s5 := *s2
	s5.instance = "" // a new smtpd session has none before MAIL
	if a := p.ask(s5.connect()); a != "DUNNO" {
		t.Fatalf("CONNECT: %q", a)
	}
	s5.seq = 0
	if a, _ := p.send(&s5, 1, 100, 0); a != "" {
		t.Fatalf("after CONNECT: %q", a)
	}
	if got := value(t, h.reg, "sessioncap_sessions_total"); got != 5 {
		t.Fatalf("sessions_total = %v, want 5", got)
	}
}

// TestSessionWithoutClientPort: a request without a usable client port is
// counted per policy connection.
func TestSessionWithoutClientPort(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxMessages = 1 }))
	p := h.dial()
	s := newSMTP("127.0.0.1", 100)
	s.cport = 0
	if a, _ := p.send(s, 1, 100, 0); a != "" {
		t.Fatalf("first: %q", a)
	}
	if a, _ := p.send(s, 1, 100, 0); !strings.HasPrefix(a, "421 ") {
		t.Fatalf("second: %q", a)
	}
	if got := h.srv.Sessions(); got != 0 {
		t.Fatalf("%d sessions in the table, want 0", got)
	}
}

func TestMailStateThenRcpt(t *testing.T) {
	// with smtpd_delay_reject = no and the policy in smtpd_sender_restrictions
	// too, MAIL requests come first (with instance= empty, as Postfix sends
	// it); the transaction is checked once, at the second MAIL's first RCPT
	// (that MAIL could have been a new session's).
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Mode = limits.ModeMonitor
		r.Default.Session.MaxMessages = 1
	}))
	p := h.dial()
	s := newSMTP("192.0.2.70", 100)
	for i := 0; i < 2; i++ {
		if a := p.ask(s.attrs("MAIL", "size=0")); a != "DUNNO" {
			t.Fatalf("MAIL: %q", a)
		}
		s.mail()
		if a := p.ask(s.rcpt(0, 0)); a != "DUNNO" {
			t.Fatalf("RCPT: %q", a)
		}
		if a := p.ask(s.eom(10, 1)); a != "DUNNO" {
			t.Fatalf("EOM: %q", a)
		}
	}
	if got := h.refusals("session_messages", "mail", "monitor"); got != 1 {
		t.Fatalf("monitor refusals = %v, want 1 (MAIL and RCPT of one transaction decide once)", got)
	}
}

func TestReloadAppliesToNewSessions(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxMessages = 1 }))
	p := h.dial()
	s := newSMTP("192.0.2.80", 100)
	p.send(s, 1, 100, 0)
	if err := h.srv.SetRules(rulesWith(func(r *limits.Rules) { r.Default.Session.MaxMessages = 5 })); err != nil {
		t.Fatal(err)
	}
	if a, _ := p.send(s, 1, 100, 0); !strings.HasPrefix(a, "421 ") {
		t.Fatalf("the running session keeps its rules: %q", a)
	}
	s2 := newSMTP("192.0.2.80", 100)
	for i := 0; i < 3; i++ {
		if a, _ := p.send(s2, 1, 100, 0); a != "" {
			t.Fatalf("new session, message %d: %q", i+1, a)
		}
	}
}

// TestSessionTableBounds: the table holds MaxSessions sessions, evicting
// the least recently seen one no open policy connection serves, and forgets
// sessions idle for SessionIdle. Each session here is served by an smtpd
// process that then exits (closes its policy connection), so it stays until
// evicted or idle: Postfix may reconnect and go on with it.
func TestSessionTableBounds(t *testing.T) {
	h := startWith(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxMessages = 1 }), func(c *policy.Config) {
		c.MaxSessions = 2
		c.SessionIdle = time.Minute
	})
	sendAndExit := func(s *smtp) string {
		p := h.dial()
		r, _ := p.send(s, 1, 100, 0)
		_ = p.c.Close()
		eventually(t, "the connection to close", func() bool { return value(t, h.reg, "sessioncap_policy_connections") == 0 })
		return r
	}
	a, b, c := newSMTP("192.0.2.90", 100), newSMTP("192.0.2.91", 101), newSMTP("192.0.2.92", 102)
	for _, s := range []*smtp{a, b, c} {
		sendAndExit(s)
	}
	if got := h.srv.Sessions(); got != 2 {
		t.Fatalf("%d sessions, want 2", got)
	}
	if got := value(t, h.reg, "sessioncap_policy_session_evictions_total"); got != 1 {
		t.Fatalf("evictions = %v", got)
	}
	// a was evicted: its counts start over
	if r := sendAndExit(a); r != "" {
		t.Fatalf("evicted session: %q", r)
	}
	// which evicted b, not c: c's 2nd message is over the cap
	if r := sendAndExit(c); !strings.HasPrefix(r, "421 ") {
		t.Fatalf("kept session: %q", r)
	}
	h.clock.Add(2 * time.Minute)
	sendAndExit(newSMTP("192.0.2.93", 103))
	if got := h.srv.Sessions(); got != 1 {
		t.Fatalf("%d sessions after the idle time, want 1", got)
	}
	if got := value(t, h.reg, "sessioncap_policy_sessions_tracked"); got != 1 {
		t.Fatalf("sessions_tracked = %v", got)
	}
}

// TestModesPerLimit: each limit answers under its own mode; tag mode, which
// the policy path cannot carry out (no headers), refuses nothing and is
// counted as tag; a limit that is off is not counted.
func TestModesPerLimit(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Mode = limits.ModeTag
		r.Default.Session = limits.Session{MaxMessages: 1, MaxRecipients: 1, Mode: limits.ModeEnforce}
		r.Default.Frequency = limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: time.Minute}
	}))
	p := h.dial()
	for i := 0; i < 2; i++ {
		s := newSMTP("192.0.2.40", 100)
		if a, st := p.send(s, 1, 1000, 0); a != "" {
			t.Fatalf("session %d: the first message got %s at %s (frequency is in tag mode)", i+1, a, st)
		}
		if a, st := p.send(s, 1, 1000, 0); !strings.HasPrefix(a, "421 4.7.0 Too many messages") {
			t.Fatalf("session %d: the second message got %q at %s, want the enforced message cap", i+1, a, st)
		}
	}
	if got := h.refusals("frequency", "connect", "tag"); got != 1 {
		t.Errorf("frequency refusals in tag mode %v, want 1", got)
	}
	if got := h.refusals("frequency", "connect", "enforce"); got != 0 {
		t.Errorf("frequency enforced %v times", got)
	}
	if got := h.refusals("session_messages", "mail", "enforce"); got != 2 {
		t.Errorf("message cap enforced %v times, want 2", got)
	}

	off := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Session = limits.Session{MaxMessages: 1, Mode: limits.ModeOff}
	}))
	q := off.dial()
	s := newSMTP("192.0.2.41", 100)
	for j := 0; j < 3; j++ {
		if a, st := q.send(s, 1, 1000, 0); a != "" {
			t.Fatalf("mode off answered %s at %s", a, st)
		}
	}
	for _, m := range limits.AllModes {
		if got := off.refusals("session_messages", "mail", string(m)); got != 0 {
			t.Errorf("mode off: %v refusals counted as %s", got, m)
		}
	}
}
