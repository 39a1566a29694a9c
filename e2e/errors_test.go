package e2e

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// rejectedUser@sinkDomain is a recipient both receiving MTAs reject with
// 550 themselves (Sendmail's ruleset 0 always; Postfix with
// rejectingPostfix's check_recipient_access).
const rejectedUser = "nosuchuser"

// sendmailPassesRejections reports whether the Sendmail under test passes
// the recipients its check_rcpt rejected to milters that ask for them
// (SMFIP_RCPT_REJ): only a build with _FFR_MILTER_CHECK_REJECTIONS_TOO does
// (Red Hat's; Debian's does not).
func sendmailPassesRejections(t *testing.T) bool {
	t.Helper()
	bin, err := os.ReadFile(sendmailBinary())
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(bin, []byte("_FFR_MILTER_CHECK_REJECTIONS_TOO"))
}

// newErrorsEnv is newEnv with a Postfix that rejects rejectedUser.
func newErrorsEnv(t *testing.T, kind, config string) *env {
	t.Helper()
	if kind != "postfix" {
		return newEnv(t, kind, config)
	}
	requirePostfix(t)
	m, d := startBehindSessioncap(t, config, func(milterPort int) mta {
		return startPostfix(t, "mx", postfixConfig{milter: inetSpec(milterPort), main: []string{
			"smtpd_recipient_restrictions = check_recipient_access inline:{ { " + rejectedUser + "@" + sinkDomain + " = 550 5.1.1 No such user here } }",
		}})
	})
	return &env{kind: kind, m: m, d: d, want: map[string]int{}}
}

// TestErrorsPerSession: recipients the MTA rejects and unknown commands
// reach sessioncap (SMFIP_RCPT_REJ, negotiated only for this rule) and
// count; after max_per_session of them the next RCPT gets 421 and the MTA
// hangs up.
func TestErrorsPerSession(t *testing.T) {
	forEachMTA(t, func(t *testing.T, kind string) {
		e := newErrorsEnv(t, kind, "[errors]\nmax_per_session = 3\n")
		c := e.dial(t, "errors")
		if r := c.cmd("MAIL", "MAIL FROM:<sender@client.test>"); r.code != 250 {
			t.Fatalf("MAIL %v", r)
		}
		for i := 0; i < 2; i++ {
			expectReply(t, "rejected recipient", c.cmd("RCPT", "RCPT TO:<"+rejectedUser+"@"+sinkDomain+">"), 550, "No such user here")
		}
		if r := c.cmd("XYZZY", "XYZZY"); r.code/100 != 5 {
			t.Fatalf("unknown command: %v", r)
		}
		if kind == "sendmail" && !sendmailPassesRejections(t) {
			// This Sendmail never tells a milter about the recipients
			// it rejected: one error so far, the next RCPT passes; two
			// more unknown commands reach the cap.
			expectReply(t, "RCPT after 2 rejected recipients Sendmail kept to itself and 1 unknown command",
				c.cmd("RCPT", "RCPT TO:<rcpt@"+sinkDomain+">"), 250, "")
			for i := 0; i < 2; i++ {
				if r := c.cmd("XYZZY", "XYZZY"); r.code/100 != 5 {
					t.Fatalf("unknown command: %v", r)
				}
			}
		}
		expectReply(t, "RCPT after 3 errors", c.cmd("RCPT", "RCPT TO:<rcpt@"+sinkDomain+">"), 421,
			"4.7.0 Too many errors in this session (limit 3)")
		expectClosedAfterReply(t, c, "RCPT after 3 errors")
		e.expectRefusals(t, "errors", "rcpt", "enforce", 1)

		// a new session starts from zero; two errors stay under the cap
		c2 := e.dial(t, "second")
		if r := c2.cmd("XYZZY", "XYZZY"); r.code/100 != 5 {
			t.Fatalf("unknown command: %v", r)
		}
		res := e.send(t, c2, "errors-ok", 2000, false, rejectedUser+"@"+sinkDomain, "rcpt@"+sinkDomain)
		if !res.accepted {
			t.Fatalf("two errors in a session: stopped at %s, RCPT %v", res.stage, res.rcpts)
		}
		c2.quit()
		e.delivered(t)
	})
}

// TestErrorsAcrossSessions: rejected recipients of one client count across
// sessions; the one over max_per_window bans the client: that session's
// next RCPT gets 421, and so does the next connection, at connect.
func TestErrorsAcrossSessions(t *testing.T) {
	forEachMTA(t, func(t *testing.T, kind string) {
		if kind == "sendmail" && !sendmailPassesRejections(t) {
			t.Skip("this Sendmail is built without _FFR_MILTER_CHECK_REJECTIONS_TOO: it passes no rejected recipient to a milter (TestErrorsPerSession pins that)")
		}
		e := newErrorsEnv(t, kind, "[errors]\nmax_per_window = 3\nwindow = \"1h\"\nban = \"1h\"\n")
		bad := rejectedUser + "@" + sinkDomain
		c := e.dial(t, "first")
		res := e.send(t, c, "errors-1", 2000, false, bad, bad, "rcpt@"+sinkDomain)
		if !res.accepted {
			t.Fatalf("first session: stopped at %s, RCPT %v", res.stage, res.rcpts)
		}
		c.quit()
		c = e.dial(t, "second")
		if r := c.cmd("MAIL", "MAIL FROM:<sender@client.test>"); r.code != 250 {
			t.Fatalf("MAIL %v", r)
		}
		expectReply(t, "third rejected recipient", c.cmd("RCPT", "RCPT TO:<"+bad+">"), 550, "No such user here")
		expectReply(t, "rejected recipient over the window", c.cmd("RCPT", "RCPT TO:<"+bad+">"), 550, "No such user here")
		expectReply(t, "RCPT after the ban", c.cmd("RCPT", "RCPT TO:<rcpt@"+sinkDomain+">"), 421,
			"4.7.0 Too many rejected recipients from your network (limit 3 per 1h)")
		expectClosedAfterReply(t, c, "RCPT after the ban")
		c3 := dialSMTP(t, kind+" banned", e.m.smtpAddr())
		connectGreeting(t, e, "connection during the ban", c3, "Too many rejected recipients from your network")
		e.delivered(t)
		e.expectRefusals(t, "errors", "rcpt", "enforce", 1)
		e.expectRefusals(t, "errors", "connect", "enforce", 1)
		err := waitFor(5*time.Second, func() error {
			out := e.d.p.output()
			if !strings.Contains(out, "msg=banned") || !strings.Contains(out, "limit=errors value=4 cap=3") || !strings.Contains(out, "origin=errors") {
				return fmt.Errorf("%w: no banned line for 4 rejected recipients", errNotYet)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})
}
