package e2e

import "testing"

// TestQuotaSenderAtMail: a sender over its quota ([[rate]]) gets 451 4.7.1
// at MAIL (at the first RCPT through the policy front-end), in a new
// session too; the session stays open; every accepted message is
// delivered once.
func TestQuotaSenderAtMail(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, kind string) {
		e := newFrontEnd(t, kind, "[[rate]]\nname = \"sender-hourly\"\nkey = \"sender\"\ncount = \"messages\"\nlimit = 2\nwindow = \"1h\"\n")
		c := e.dial(t, "first")
		e.mustAccept(t, c, "quota-1", 3000, true)
		c.quit()
		c2 := e.dial(t, "second") // the quota crosses sessions
		e.mustAccept(t, c2, "quota-2", 3000, false)
		res := e.send(t, c2, "quota-over", 3000, true)
		e.expectMailRefusal(t, "the message over the sender's quota", res, 451, "4.7.1",
			"Quota sender-hourly exceeded (limit 2 messages per 1h for your sender)")
		if c2.closed {
			t.Fatal("the server hung up after the quota's 451")
		}
		c2.quit()
		e.delivered(t)
		e.expectRefusals(t, "quota", "mail", "enforce", 1)
	})
}

// TestQuotaRecipientAtRcpt: a recipient over its rate gets 450 4.2.1 at
// RCPT while the other recipients of the same message are delivered.
func TestQuotaRecipientAtRcpt(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, kind string) {
		e := newFrontEnd(t, kind, "[[rate]]\nname = \"mailbox\"\nkey = \"recipient\"\ncount = \"messages\"\nlimit = 1\nwindow = \"1h\"\n")
		flooded, other := "flooded@"+sinkDomain, "other@"+sinkDomain
		c := e.dial(t, "first")
		if res := e.send(t, c, "mailbox-1", 2000, false, flooded); !res.accepted {
			t.Fatalf("first message: %s, RCPT %v", res.stage, res.rcpts)
		}
		res := e.send(t, c, "mailbox-2", 2000, false, flooded, other)
		if !res.accepted || len(res.rcpts) != 2 {
			t.Fatalf("second message: stopped at %s, RCPT %v, end of data %v", res.stage, res.rcpts, res.eom)
		}
		// Sendmail puts the recipient between the codes and the text
		e.expectRefusal(t, "the flooded recipient", res.rcpts[0], 450, "4.2.1", "")
		expectReply(t, "the flooded recipient", res.rcpts[0], 450, "Quota mailbox exceeded (limit 1 messages per 1h); try again in")
		expectReply(t, "the other recipient", res.rcpts[1], 250, "")
		if c.closed {
			t.Fatal("the server hung up after the recipient's 450")
		}
		c.quit()
		e.delivered(t)
		e.expectRefusals(t, "quota", "rcpt", "enforce", 1)
	})
}

// TestRelayQuotaZeroLoss: a real sending Postfix, with its queue and
// retries, delivers a batch from one sender through a sender quota of 10
// messages per 2 seconds: the messages over it get 451 4.7.1 at MAIL (at
// RCPT through the policy front-end), are deferred once per refusal,
// retried and delivered as the window slides; every message arrives once,
// nothing bounces.
func TestRelayQuotaZeroLoss(t *testing.T) {
	for _, policy := range []bool{false, true} {
		name := "milter"
		if policy {
			name = "policy"
		}
		t.Run(name, func(t *testing.T) {
			st := runRelay(t, relayScenario{
				messages: relayMessages(t, 40),
				size:     5000,
				sessioncap: "[frequency]\nmax_connections = 0\n" +
					"[[rate]]\nname = \"sender-burst\"\nkey = \"sender\"\ncount = \"messages\"\nlimit = 10\nwindow = \"2s\"\n",
				policy: policy,
			})
			if st.refusals421 == 0 {
				t.Errorf("the quota never refused: the run proves nothing (%s)", st)
			}
			if st.deferrals != st.refusals421 {
				t.Errorf("%d deferrals for %d refusals: each refused message should be deferred once", st.deferrals, st.refusals421)
			}
		})
	}
}
