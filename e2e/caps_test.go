package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// connectGreeting checks a 421 greeting. Both MTAs replace a milter's text
// at connect with their own ("421 <host> Service unavailable - try again
// later", "421 4.7.0 <host> closing connection"); sessioncap's text shows
// only in the MTA's log, where it is checked.
func connectGreeting(t *testing.T, e *env, what string, c *smtpClient, sessioncapText string) {
	t.Helper()
	mtaText := map[string]string{
		"postfix":  "Service unavailable - try again later",
		"sendmail": "closing connection",
	}[e.kind]
	expectReply(t, what, c.greeting, 421, mtaText)
	expectClosedAfterReply(t, c, what)
	err := waitFor(5*time.Second, func() error {
		if !strings.Contains(e.m.log(), sessioncapText) {
			return fmt.Errorf("%w: %q not in the %s log", errNotYet, sessioncapText, e.kind)
		}
		return nil
	})
	if err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

// The session caps, the monitor mode and the frequency ban through every
// front-end (forEachFrontEnd): Postfix and Sendmail with the milter, and
// Postfix asking the policy front-end with README's recipe. Where README's
// front-end table says the two differ, the test says so: the policy
// front-end gives a MAIL-stage (and connect-stage) refusal at the first
// RCPT of the transaction, Postfix puts its context before the text, and
// an overrun answers 421 after the final dot instead of the milter's 452.

// expectRefusal checks a refusal reply of sessioncap as the front-end's
// MTA passes it on.
func (e *env) expectRefusal(t *testing.T, what string, r reply, code int, dsn, text string) {
	t.Helper()
	if e.kind == policyKind {
		expectPolicyReply(t, what, r, code, dsn, text)
		return
	}
	expectReply(t, what, r, code, dsn+" "+text)
}

// expectMailRefusal checks the refusal of a MAIL-stage limit: at MAIL
// through the milter, at the (only) RCPT through the policy front-end.
func (e *env) expectMailRefusal(t *testing.T, what string, res txResult, code int, dsn, text string) {
	t.Helper()
	r := res.mail
	if e.kind == policyKind {
		if res.stage != "RCPT" || len(res.rcpts) != 1 {
			t.Fatalf("%s: stage %s, MAIL %v, RCPT %v; want refused at RCPT", what, res.stage, res.mail, res.rcpts)
		}
		r = res.rcpts[0]
	} else if res.stage != "MAIL" {
		t.Fatalf("%s: got past MAIL (stage %s, MAIL %v, end of data %v)", what, res.stage, res.mail, res.eom)
	}
	e.expectRefusal(t, what, r, code, dsn, text)
}

// expectConnectRefusal opens a session that a connect-stage limit refuses:
// with 421 at connect through the milter (the MTA's own text; sessioncap's
// is checked in its log), at the first RCPT through the policy front-end.
func (e *env) expectConnectRefusal(t *testing.T, what, text string) {
	t.Helper()
	if e.kind != policyKind {
		c := dialSMTP(t, e.kind+" "+what, e.m.smtpAddr())
		connectGreeting(t, e, what, c, "421 4.7.0 "+text)
		return
	}
	c := e.dial(t, what)
	res := e.send(t, c, "refused-at-connect", 3000, true)
	if len(res.rcpts) != 1 {
		t.Fatalf("%s: stage %s, MAIL %v", what, res.stage, res.mail)
	}
	expectPolicyReply(t, what, res.rcpts[0], 421, "4.7.0", text)
	expectClosedAfterReply(t, c, what)
}

// TestMessageCap: messages 1..N are accepted, the next transaction gets
// 421 with sessioncap's text and the server hangs up after that reply; a
// new connection can send again.
func TestMessageCap(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, kind string) {
		const capN = 3
		e := newFrontEnd(t, kind, fmt.Sprintf("[session]\nmax_messages = %d\n", capN))
		c := e.dial(t, "first")
		for i := 1; i <= capN; i++ {
			e.mustAccept(t, c, fmt.Sprintf("msgcap-%d", i), 3000, i%2 == 0)
		}
		res := e.send(t, c, "msgcap-over", 3000, false)
		e.expectMailRefusal(t, "the transaction over the cap", res, 421, "4.7.0",
			fmt.Sprintf("Too many messages in this session (limit %d)", capN))
		expectClosedAfterReply(t, c, "the transaction over the cap")

		c2 := e.dial(t, "second")
		e.mustAccept(t, c2, "msgcap-reconnected", 3000, true)
		c2.quit()
		e.delivered(t)
		e.expectRefusals(t, "session_messages", "mail", "enforce", 1)
		m := e.d.metrics(t)
		if v := m["sessioncap_sessions_total"]; v != 2 {
			t.Errorf("sessioncap_sessions_total = %v, want 2", v)
		}
		if v := m["sessioncap_messages_total"]; v != capN+1 {
			t.Errorf("sessioncap_messages_total = %v, want %d", v, capN+1)
		}
	})
}

// TestByteCapWithSize: with SIZE= the message that would cross the cap is
// refused before any data is sent.
func TestByteCapWithSize(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, kind string) {
		e := newFrontEnd(t, kind, "[session]\nmax_bytes = 100000\n")
		c := e.dial(t, "sized")
		e.mustAccept(t, c, "bytes-size-1", 40000, true)
		e.mustAccept(t, c, "bytes-size-2", 40000, true)
		res := e.send(t, c, "bytes-size-3", 40000, true)
		e.expectMailRefusal(t, "SIZE= crossing the cap", res, 421, "4.7.0",
			"Message would exceed this session's data limit (limit 100000 bytes)")
		expectClosedAfterReply(t, c, "SIZE= crossing the cap")
		e.delivered(t)
		e.expectRefusals(t, "session_bytes", "mail", "enforce", 1)
	})
}

// TestByteCapWithoutSize: without SIZE= the crossing message is only known
// at end of data: overrun="accept" takes it and the next transaction gets
// 421; overrun="tempfail" answers 4.3.1 after the final dot: 452 through
// the milter, which keeps the session (the next MAIL gets 421), 421 through
// the policy front-end (Postfix before 20260803 keeps the transaction open
// after an end-of-data restriction rejects, and the next MAIL would get a
// permanent 503).
func TestByteCapWithoutSize(t *testing.T) {
	for _, overrun := range []string{"accept", "tempfail"} {
		t.Run(overrun, func(t *testing.T) {
			forEachFrontEnd(t, func(t *testing.T, kind string) {
				e := newFrontEnd(t, kind, fmt.Sprintf("[session]\nmax_bytes = 100000\noverrun = %q\n", overrun))
				c := e.dial(t, "unsized")
				e.mustAccept(t, c, "bytes-nosize-1", 40000, false)
				e.mustAccept(t, c, "bytes-nosize-2", 40000, false)
				res := e.send(t, c, "bytes-nosize-3-crossing", 40000, false)
				if res.stage != "EOM" {
					t.Fatalf("the crossing message stopped at %s (MAIL %v, RCPT %v, DATA %v), want it to reach the final dot", res.stage, res.mail, res.rcpts, res.data)
				}
				const overrunText = "Message exceeded this session's data limit (limit 100000 bytes)"
				switch {
				case overrun == "accept":
					if !res.accepted {
						t.Errorf("overrun=accept: crossing message got %v after the final dot, want 250", res.eom)
					}
				case kind == policyKind:
					e.expectRefusal(t, "overrun=tempfail final dot", res.eom, 421, "4.3.1", overrunText)
					expectClosedAfterReply(t, c, "overrun=tempfail final dot")
				default:
					e.expectRefusal(t, "overrun=tempfail final dot", res.eom, 452, "4.3.1", overrunText)
					if c.closed {
						t.Errorf("overrun=tempfail: the server hung up after the 452")
					}
				}
				if !c.closed {
					next := e.send(t, c, "bytes-nosize-4", 3000, false)
					e.expectMailRefusal(t, "the transaction after the cap was crossed", next, 421, "4.7.0",
						"Too much data in this session (limit 100000 bytes)")
					expectClosedAfterReply(t, c, "the transaction after the cap was crossed")
				}
				e.delivered(t)
				mail := 1.0
				if overrun == "tempfail" && kind == policyKind {
					mail = 0 // the 421 after the final dot ended the session
				}
				e.expectRefusals(t, "session_bytes", "mail", "enforce", mail)
				if overrun == "tempfail" {
					e.expectRefusals(t, "session_bytes", "eom", "enforce", 1)
				}
			})
		})
	}
}

// TestFirstMessageRule: a single message larger than the session's byte cap
// is still delivered, with and without SIZE=; the cap applies to the next.
func TestFirstMessageRule(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, kind string) {
		e := newFrontEnd(t, kind, "[session]\nmax_bytes = 50000\n")
		for _, withSize := range []bool{true, false} {
			c := e.dial(t, fmt.Sprintf("first-size=%v", withSize))
			e.mustAccept(t, c, fmt.Sprintf("first-big-size-%v", withSize), 120000, withSize)
			next := e.send(t, c, "first-next", 3000, withSize)
			e.expectMailRefusal(t, fmt.Sprintf("SIZE=%v: the transaction after a first message over the cap", withSize), next, 421, "4.7.0", "")
			expectClosedAfterReply(t, c, "the transaction after the big first message")
		}
		e.delivered(t)
	})
}

// TestRecipientsCap: RCPT beyond the session's recipient cap gets 452 4.5.3,
// the message goes to the recipients accepted before, the session goes on.
func TestRecipientsCap(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, kind string) {
		e := newFrontEnd(t, kind, "[session]\nmax_recipients = 3\n")
		c := e.dial(t, "rcpts")
		var rcpts []string
		for i := 1; i <= 5; i++ {
			rcpts = append(rcpts, fmt.Sprintf("r%d@%s", i, sinkDomain))
		}
		res := e.send(t, c, "rcptcap", 3000, false, rcpts...)
		if len(res.rcpts) != 5 {
			t.Fatalf("sent %d RCPTs, want 5 (stage %s, MAIL %v)", len(res.rcpts), res.stage, res.mail)
		}
		for i, r := range res.rcpts {
			if i < 3 {
				expectReply(t, fmt.Sprintf("RCPT %d", i+1), r, 250, "")
			} else {
				e.expectRefusal(t, fmt.Sprintf("RCPT %d", i+1), r, 452, "4.5.3", "Too many recipients in this session (limit 3)")
			}
		}
		if !res.accepted {
			t.Fatalf("message to the 3 accepted recipients: %v after the final dot", res.eom)
		}
		if c.closed {
			t.Fatalf("the server hung up after a 452 at RCPT")
		}
		// The cap is per session: the next message's recipient is refused too.
		more := e.send(t, c, "rcptcap-more", 3000, false)
		if len(more.rcpts) != 1 || more.rcpts[0].code != 452 {
			t.Errorf("RCPT in the next transaction: %v, want 452", more.rcpts)
		}
		c.cmd("RSET", "RSET")
		c.quit()
		c2 := e.dial(t, "rcpts-again")
		e.mustAccept(t, c2, "rcptcap-new-session", 3000, false)
		c2.quit()
		e.delivered(t)
		e.expectRefusals(t, "session_recipients", "rcpt", "enforce", 3)
	})
}

// TestMonitorMode: mode="monitor" refuses nothing and counts what it would
// have refused.
func TestMonitorMode(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, kind string) {
		e := newFrontEnd(t, kind, "mode = \"monitor\"\n[session]\nmax_messages = 2\n")
		c := e.dial(t, "monitor")
		for i := 1; i <= 5; i++ {
			e.mustAccept(t, c, fmt.Sprintf("monitor-%d", i), 3000, i%2 == 1)
		}
		c.quit()
		e.delivered(t)
		e.expectRefusals(t, "session_messages", "mail", "monitor", 3)
		e.expectRefusals(t, "session_messages", "mail", "enforce", 0)
	})
}

// TestFrequencyBan: the session over max_connections per window is refused
// (at connect through the milter; at its first RCPT through the policy
// front-end, where a session is counted at its first request) and bans the
// network; a session during the ban is refused as banned. The window and
// the ban last an hour, so no timing of this machine can make the
// connections fall into different windows or the ban end early.
func TestFrequencyBan(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, kind string) {
		e := newFrontEnd(t, kind, "[frequency]\nmax_connections = 3\nwindow = \"1h\"\nban = \"1h\"\n")
		for i := 1; i <= 3; i++ {
			c := e.dial(t, fmt.Sprintf("freq-%d", i))
			e.mustAccept(t, c, fmt.Sprintf("freq-%d", i), 3000, true)
			c.quit()
		}
		e.expectConnectRefusal(t, "session over the frequency cap", "Too many connections from your network (limit 3 per 1h); banned for 1h")
		e.expectConnectRefusal(t, "session during the ban", "Your network is temporarily banned for too many connections")
		e.delivered(t)
		m := e.d.metrics(t)
		for _, c := range []struct {
			limit string
			want  float64
		}{{"frequency", 1}, {"banned", 1}} {
			if v := refusals(t, m, c.limit, "connect", "enforce"); v != c.want {
				t.Errorf("%s refusals at connect = %v, want %v", c.limit, v, c.want)
			}
		}
		if v := m[`sessioncap_bans_total{mode="enforce"}`]; v != 1 {
			t.Errorf("sessioncap_bans_total = %v, want 1", v)
		}
		if v := m[`sessioncap_bans_active{mode="enforce"}`]; v != 1 {
			t.Errorf("sessioncap_bans_active = %v, want 1", v)
		}
		if v := m["sessioncap_sessions_total"]; v != 5 {
			t.Errorf("sessioncap_sessions_total = %v, want 5 (one per SMTP session, not per request)", v)
		}
	})
}

// TestFrequencyBanExpires: once a short ban is over the network is admitted
// again. The window is an hour (the connections that start the ban cannot
// fall into different windows); the test polls, with a deadline, for the
// positive event "admitted again", and checks that it did not come before
// the ban could have ended, and that every refused poll was counted as
// banned.
func TestFrequencyBanExpires(t *testing.T) {
	const ban = 2 * time.Second
	forEachMTA(t, func(t *testing.T, kind string) {
		e := newEnv(t, kind, fmt.Sprintf("[frequency]\nmax_connections = 3\nwindow = \"1h\"\nban = %q\n", ban.String()))
		for i := 1; i <= 3; i++ {
			e.dial(t, fmt.Sprintf("expiry-%d", i)).quit()
		}
		// Taken before the connection that starts the ban: the ban ends
		// at least ban after this.
		beforeBan := time.Now()
		over := dialSMTP(t, kind+" expiry-over", e.m.smtpAddr())
		connectGreeting(t, e, "connection over the frequency cap", over,
			"421 4.7.0 Too many connections from your network (limit 3 per 1h); banned for 2s")

		var c *smtpClient
		refused := 0
		deadline := time.Now().Add(30 * time.Second)
		for i := 0; c == nil; i++ {
			if time.Now().After(deadline) {
				t.Fatalf("still refused 30s after a %v ban (%d polls refused)", ban, refused)
			}
			try := dialSMTP(t, fmt.Sprintf("%s expiry-poll-%d", kind, i), e.m.smtpAddr())
			switch try.greeting.code {
			case 220:
				c = try
			case 421:
				refused++
				try.expectClose(5 * time.Second)
				time.Sleep(200 * time.Millisecond) // poll interval, not a proof of anything
			default:
				t.Fatalf("poll %d: greeting %v, want 220 or 421", i, try.greeting)
			}
		}
		if waited := time.Since(beforeBan); waited < ban {
			t.Errorf("admitted again %v after the connection that started a %v ban", waited, ban)
		}
		if r := c.ehlo("client.test"); r.code != 250 {
			t.Fatalf("EHLO after the ban: %v", r)
		}
		e.mustAccept(t, c, "after-ban", 3000, true)
		c.quit()
		e.delivered(t)
		m := e.d.metrics(t)
		if v := refusals(t, m, "frequency", "connect", "enforce"); v != 1 {
			t.Errorf("frequency refusals at connect = %v, want 1", v)
		}
		if v := refusals(t, m, "banned", "connect", "enforce"); v != float64(refused) {
			t.Errorf("banned refusals at connect = %v, want %d (the refused polls)", v, refused)
		}
		if v := m[`sessioncap_bans_total{mode="enforce"}`]; v != 1 {
			t.Errorf("sessioncap_bans_total = %v, want 1", v)
		}
	})
}

// TestConcurrency: the connection over max_per_address gets 421 at connect;
// once one session ends a new one is accepted.
func TestConcurrency(t *testing.T) {
	forEachMTA(t, func(t *testing.T, kind string) {
		e := newEnv(t, kind, "[concurrency]\nmax_per_address = 2\n")
		c1 := e.dial(t, "conc-1")
		c2 := e.dial(t, "conc-2")
		over := dialSMTP(t, kind+" conc-over", e.m.smtpAddr())
		connectGreeting(t, e, "third concurrent connection", over,
			"421 4.7.0 Too many concurrent connections from your network (limit 2)")
		e.mustAccept(t, c2, "conc-during", 3000, false)
		c1.quit()

		// sessioncap learns of the end of c1 when the MTA closes the
		// milter session: poll, at most 10s.
		var c *smtpClient
		for i := 0; i < 40; i++ {
			try := dialSMTP(t, fmt.Sprintf("%s conc-poll-%d", kind, i), e.m.smtpAddr())
			if try.greeting.code == 220 {
				c = try
				break
			}
			try.quit()
			time.Sleep(250 * time.Millisecond)
		}
		if c == nil {
			t.Fatalf("a new connection is still refused 10s after one of two sessions ended")
		}
		if r := c.ehlo("client.test"); r.code != 250 {
			t.Fatalf("EHLO: %v", r)
		}
		e.mustAccept(t, c, "conc-after", 3000, true)
		c.quit()
		c2.quit()
		e.delivered(t)
		if v := refusals(t, e.d.metrics(t), "concurrency_address", "connect", "enforce"); v < 1 {
			t.Errorf("concurrency_address refusals = %v, want at least 1", v)
		}
	})
}
