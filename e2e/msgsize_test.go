package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestByteCapHoldsOnOneSessioncapSharedByPostfixAndSendmail: one sessioncap
// is the milter of a Sendmail, which reports {msg_size} at end of message
// (its .mc lists the macro), and of a Postfix, which has no such macro.
// After a Sendmail message, sessions of both MTAs still count their bytes:
// on each, two messages of 60000 bytes pass a 100000-byte cap and the next
// MAIL gets the 421.
func TestByteCapHoldsOnOneSessioncapSharedByPostfixAndSendmail(t *testing.T) {
	requirePostfix(t)
	requireSendmail(t)
	var postfix mta
	sendmail, d := startBehindSessioncap(t, "[session]\nmax_bytes = 100000\n", func(milterPort int) mta {
		if postfix != nil { // a retry on another port
			postfix.stop(t)
		}
		postfix = startMTA(t, "postfix", milterPort)
		return startMTA(t, "sendmail", milterPort)
	})
	envs := []*env{
		{kind: "sendmail", m: sendmail, d: d, want: map[string]int{}},
		{kind: "postfix", m: postfix, d: d, want: map[string]int{}},
	}
	first := envs[0].dial(t, "first")
	envs[0].mustAccept(t, first, "shared-first", 2000, false)
	first.quit()

	clients := make([]*smtpClient, len(envs))
	for i, e := range envs { // both milter connections open before more mail
		clients[i] = e.dial(t, "capped")
	}
	for round := 1; round <= 2; round++ {
		for i, e := range envs {
			e.mustAccept(t, clients[i], fmt.Sprintf("shared-%s-%d", e.kind, round), 60000, false)
		}
	}
	for i, e := range envs {
		next := e.send(t, clients[i], "shared-"+e.kind+"-3", 2000, false)
		expectReply(t, e.kind+": MAIL after 120000 bytes", next.mail, 421, "4.7.0 Too much data in this session (limit 100000 bytes)")
	}
	for _, e := range envs {
		e.delivered(t)
	}

	// sessioncap counts what the MTA sends it: within 5 % of the bytes sent.
	sent := float64(2000 + 4*60000)
	var b float64
	err := waitFor(5*time.Second, func() error {
		if b = d.metrics(t)["sessioncap_message_bytes_total"]; b < 0.95*sent || b > 1.05*sent {
			return fmt.Errorf("%w: message bytes %v, want within 5%% of %v", errNotYet, b, sent)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}
