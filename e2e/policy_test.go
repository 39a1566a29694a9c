package e2e

import (
	"fmt"
	"strings"
	"testing"
)

// policyRecipe is the main.cf of README's "Postfix policy front-end": the
// policy server last in smtpd_recipient_restrictions (after every check
// that rejects) and in smtpd_end_of_data_restrictions.
func policyRecipe(policyPort int) []string {
	svc := fmt.Sprintf("check_policy_service inet:127.0.0.1:%d", policyPort)
	return []string{
		"smtpd_recipient_restrictions = reject_unauth_destination, " + svc,
		"smtpd_end_of_data_restrictions = " + svc,
		"smtpd_policy_service_timeout = 10s",
		"smtpd_policy_service_default_action = 451 4.3.5 Policy service unavailable",
	}
}

// startPostfixBehindPolicy starts a Postfix that asks sessioncap's policy
// front-end on a free port, then sessioncap with config listening there
// (its milter on another free port Postfix does not use). extra is more
// main.cf. As with startBehindSessioncap, Postfix starts first, and if a
// port is taken meanwhile both are started again.
func startPostfixBehindPolicy(t testing.TB, name, config string, extra ...string) (*postfixInstance, *daemon) {
	t.Helper()
	requirePostfix(t)
	requireSessioncap(t)
	type pair struct {
		m *postfixInstance
		d *daemon
	}
	p := startOnFreePort(t, "sessioncap policy behind Postfix", func(policyPort int) (pair, error) {
		m := startPostfix(t, name, postfixConfig{main: append(policyRecipe(policyPort), extra...)})
		cfg := config + fmt.Sprintf("\n[policy]\nlisten = %q\n", inetSpec(policyPort))
		d, err := tryStartSessioncap(t, freePort(t), cfg)
		if err != nil {
			m.stop(t)
			return pair{}, err
		}
		return pair{m, d}, nil
	})
	return p.m, p.d
}

// newPolicyEnv is newEnv with Postfix asking the policy front-end.
func newPolicyEnv(t *testing.T, config string, extra ...string) *env {
	t.Helper()
	m, d := startPostfixBehindPolicy(t, "mx", config, extra...)
	return &env{kind: policyKind, m: m, d: d, want: map[string]int{}}
}

// expectPolicyReply checks a reply Postfix built from a policy action:
// Postfix keeps the code and the enhanced status code and puts the
// restriction's context before sessioncap's text ("<rcpt>: Recipient
// address rejected: …").
func expectPolicyReply(t *testing.T, what string, r reply, code int, dsn, text string) {
	t.Helper()
	if r.code != code || !strings.HasPrefix(r.text(), dsn+" ") || !strings.Contains(r.text(), text) {
		t.Errorf("%s: got %v, want %d %s …%s…", what, r, code, dsn, text)
	}
}

// TestPolicyMessageCap: through the policy front-end the MAIL-stage
// decision is given at the first RCPT: 421, then Postfix hangs up. With
// smtpd_policy_service_request_limit = 1 Postfix closes the policy
// connection after every request, so the session's counts must survive
// policy reconnects.
func TestPolicyMessageCap(t *testing.T) {
	for _, reqLimit := range []string{"0", "1"} {
		t.Run("request_limit="+reqLimit, func(t *testing.T) {
			const capN = 3
			e := newPolicyEnv(t, fmt.Sprintf("[session]\nmax_messages = %d\n", capN),
				"smtpd_policy_service_request_limit = "+reqLimit)
			c := e.dial(t, "first")
			for i := 1; i <= capN; i++ {
				e.mustAccept(t, c, fmt.Sprintf("pmsgcap-%d", i), 3000, i%2 == 0)
			}
			res := e.send(t, c, "pmsgcap-over", 3000, false)
			if res.stage != "RCPT" || len(res.rcpts) != 1 {
				t.Fatalf("message %d: stage %s, MAIL %v, RCPT %v; want refused at RCPT", capN+1, res.stage, res.mail, res.rcpts)
			}
			expectPolicyReply(t, "RCPT over the cap", res.rcpts[0], 421, "4.7.0",
				fmt.Sprintf("Too many messages in this session (limit %d)", capN))
			expectClosedAfterReply(t, c, "RCPT over the cap")

			c2 := e.dial(t, "second")
			e.mustAccept(t, c2, "pmsgcap-reconnected", 3000, true)
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
}

// TestPolicyByteCapWithSize: the SIZE= of MAIL FROM reaches the policy at
// RCPT; the message that would cross the cap is refused there.
func TestPolicyByteCapWithSize(t *testing.T) {
	e := newPolicyEnv(t, "[session]\nmax_bytes = 100000\n")
	c := e.dial(t, "sized")
	e.mustAccept(t, c, "pbytes-size-1", 40000, true)
	e.mustAccept(t, c, "pbytes-size-2", 40000, true)
	res := e.send(t, c, "pbytes-size-3", 40000, true)
	if res.stage != "RCPT" || len(res.rcpts) != 1 {
		t.Fatalf("the crossing message: stage %s, MAIL %v, RCPT %v; want refused at RCPT", res.stage, res.mail, res.rcpts)
	}
	expectPolicyReply(t, "RCPT of a SIZE= crossing the cap", res.rcpts[0], 421, "4.7.0",
		"Message would exceed this session's data limit (limit 100000 bytes)")
	expectClosedAfterReply(t, c, "RCPT of a SIZE= crossing the cap")
	e.delivered(t)
	e.expectRefusals(t, "session_bytes", "mail", "enforce", 1)
}

// TestPolicyByteCapWithoutSize: without SIZE= the crossing message is known
// at END-OF-MESSAGE (size= is the real size): overrun = "accept" takes it
// and the next transaction gets 421 at RCPT; "tempfail" answers 421 4.3.1
// after the final dot.
func TestPolicyByteCapWithoutSize(t *testing.T) {
	for _, overrun := range []string{"accept", "tempfail"} {
		t.Run(overrun, func(t *testing.T) {
			e := newPolicyEnv(t, fmt.Sprintf("[session]\nmax_bytes = 100000\noverrun = %q\n", overrun))
			c := e.dial(t, "unsized")
			e.mustAccept(t, c, "pbytes-nosize-1", 40000, false)
			e.mustAccept(t, c, "pbytes-nosize-2", 40000, false)
			res := e.send(t, c, "pbytes-nosize-3-crossing", 40000, false)
			if res.stage != "EOM" {
				t.Fatalf("the crossing message stopped at %s (MAIL %v, RCPT %v), want it to reach the final dot", res.stage, res.mail, res.rcpts)
			}
			switch overrun {
			case "accept":
				if !res.accepted {
					t.Errorf("overrun=accept: crossing message got %v after the final dot, want 250", res.eom)
				}
			case "tempfail":
				// 421, not the milter's 452: Postfix before 20260803 keeps
				// the transaction open after an end-of-data restriction
				// rejects, and the next MAIL would get a permanent 503.
				expectPolicyReply(t, "overrun=tempfail final dot", res.eom, 421, "4.3.1",
					"Message exceeded this session's data limit (limit 100000 bytes)")
				expectClosedAfterReply(t, c, "overrun=tempfail final dot")
			}
			if !c.closed {
				next := e.send(t, c, "pbytes-nosize-4", 3000, false)
				if len(next.rcpts) != 1 {
					t.Fatalf("next message: stage %s, MAIL %v", next.stage, next.mail)
				}
				expectPolicyReply(t, "RCPT after the cap was crossed", next.rcpts[0], 421, "4.7.0",
					"Too much data in this session (limit 100000 bytes)")
				expectClosedAfterReply(t, c, "RCPT after the cap was crossed")
			}
			e.delivered(t)
			if overrun == "accept" {
				e.expectRefusals(t, "session_bytes", "mail", "enforce", 1)
			} else {
				e.expectRefusals(t, "session_bytes", "eom", "enforce", 1)
			}
		})
	}
}

// TestPolicyFirstMessageRule: a single message larger than the session's
// byte cap is delivered, with and without SIZE=; the cap applies to the
// next.
func TestPolicyFirstMessageRule(t *testing.T) {
	e := newPolicyEnv(t, "[session]\nmax_bytes = 50000\n")
	for _, withSize := range []bool{true, false} {
		c := e.dial(t, fmt.Sprintf("first-size=%v", withSize))
		e.mustAccept(t, c, fmt.Sprintf("pfirst-big-size-%v", withSize), 120000, withSize)
		next := e.send(t, c, "pfirst-next", 3000, withSize)
		if len(next.rcpts) != 1 || next.rcpts[0].code != 421 {
			t.Errorf("SIZE=%v: RCPT after a first message over the cap: MAIL %v RCPT %v, want 421", withSize, next.mail, next.rcpts)
		}
		expectClosedAfterReply(t, c, "RCPT after the big first message")
	}
	e.delivered(t)
}

// TestPolicyRecipientsCap: RCPT beyond the cap gets 452 4.5.3, the message
// goes to the recipients accepted before, the session goes on.
func TestPolicyRecipientsCap(t *testing.T) {
	e := newPolicyEnv(t, "[session]\nmax_recipients = 3\n")
	c := e.dial(t, "rcpts")
	var rcpts []string
	for i := 1; i <= 5; i++ {
		rcpts = append(rcpts, fmt.Sprintf("r%d@%s", i, sinkDomain))
	}
	res := e.send(t, c, "prcptcap", 3000, false, rcpts...)
	if len(res.rcpts) != 5 {
		t.Fatalf("sent %d RCPTs, want 5 (stage %s, MAIL %v)", len(res.rcpts), res.stage, res.mail)
	}
	for i, r := range res.rcpts {
		if i < 3 {
			expectReply(t, fmt.Sprintf("RCPT %d", i+1), r, 250, "")
		} else {
			expectPolicyReply(t, fmt.Sprintf("RCPT %d", i+1), r, 452, "4.5.3", "Too many recipients in this session (limit 3)")
		}
	}
	if !res.accepted {
		t.Fatalf("message to the 3 accepted recipients: %v after the final dot", res.eom)
	}
	if c.closed {
		t.Fatalf("the server hung up after a 452 at RCPT")
	}
	more := e.send(t, c, "prcptcap-more", 3000, false)
	if len(more.rcpts) != 1 || more.rcpts[0].code != 452 {
		t.Errorf("RCPT in the next transaction: %v, want 452", more.rcpts)
	}
	c.cmd("RSET", "RSET")
	c.quit()
	c2 := e.dial(t, "rcpts-again")
	e.mustAccept(t, c2, "prcptcap-new-session", 3000, false)
	c2.quit()
	e.delivered(t)
	e.expectRefusals(t, "session_recipients", "rcpt", "enforce", 3)
}

// TestPolicyMonitorMode: mode = "monitor" refuses nothing and counts what
// it would have refused.
func TestPolicyMonitorMode(t *testing.T) {
	e := newPolicyEnv(t, "mode = \"monitor\"\n[session]\nmax_messages = 2\n")
	c := e.dial(t, "monitor")
	for i := 1; i <= 5; i++ {
		e.mustAccept(t, c, fmt.Sprintf("pmonitor-%d", i), 3000, i%2 == 1)
	}
	c.quit()
	e.delivered(t)
	e.expectRefusals(t, "session_messages", "mail", "monitor", 3)
	e.expectRefusals(t, "session_messages", "mail", "enforce", 0)
}

// TestPolicyFrequencyBan: with the recipe, a session is counted at its first
// RCPT; the session over max_connections gets 421 there and bans the
// network; a session during the ban is refused as banned. Window and ban
// last an hour, so no timing of this machine matters.
func TestPolicyFrequencyBan(t *testing.T) {
	e := newPolicyEnv(t, "[frequency]\nmax_connections = 3\nwindow = \"1h\"\nban = \"1h\"\n")
	for i := 1; i <= 3; i++ {
		c := e.dial(t, fmt.Sprintf("freq-%d", i))
		e.mustAccept(t, c, fmt.Sprintf("pfreq-%d", i), 3000, true)
		c.quit()
	}
	for _, tc := range []struct{ name, text string }{
		{"over the frequency cap", "Too many connections from your network (limit 3 per 1h); banned for 1h"},
		{"during the ban", "Your network is temporarily banned for too many connections"},
	} {
		c := e.dial(t, tc.name)
		res := e.send(t, c, "pfreq-refused", 3000, true)
		if len(res.rcpts) != 1 {
			t.Fatalf("%s: stage %s, MAIL %v", tc.name, res.stage, res.mail)
		}
		expectPolicyReply(t, tc.name, res.rcpts[0], 421, "4.7.0", tc.text)
		expectClosedAfterReply(t, c, tc.name)
	}
	e.delivered(t)
	m := e.d.metrics(t)
	for _, c := range []struct {
		limit string
		want  float64
	}{{"frequency", 1}, {"banned", 1}} {
		if v := refusals(t, m, c.limit, "connect", "enforce"); v != c.want {
			t.Errorf("%s refusals = %v, want %v", c.limit, v, c.want)
		}
	}
	if v := m[`sessioncap_bans_total{mode="enforce"}`]; v != 1 {
		t.Errorf("sessioncap_bans_total = %v, want 1", v)
	}
	if v := m["sessioncap_sessions_total"]; v != 5 {
		t.Errorf("sessioncap_sessions_total = %v, want 5 (one per SMTP session, not per request)", v)
	}
}
