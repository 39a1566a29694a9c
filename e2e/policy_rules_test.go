package e2e

import (
	"fmt"
	"testing"
)

// TestPolicyDenyList: through the policy front-end a denied client is
// greeted (the recipe asks at RCPT) and every recipient of its session gets
// the deny reply, a 5xx; nothing is delivered and the refusal is counted
// once.
func TestPolicyDenyList(t *testing.T) {
	e := newPolicyEnv(t, "[deny]\nnetworks = [\"127.0.0.0/8\"]\n")
	c := e.dial(t, "denied")
	for i := 1; i <= 2; i++ {
		res := e.send(t, c, fmt.Sprintf("pdeny-%d", i), 1000, false, "a@"+sinkDomain, "b@"+sinkDomain)
		if res.accepted || len(res.rcpts) != 2 {
			t.Fatalf("transaction %d: stage %s, RCPT %v; want both recipients refused", i, res.stage, res.rcpts)
		}
		for j, r := range res.rcpts {
			expectPolicyReply(t, fmt.Sprintf("transaction %d RCPT %d", i, j+1), r, 554, "5.7.1", "Access denied")
		}
		if r := c.cmd("RSET", "RSET"); r.code != 250 {
			t.Fatalf("RSET: %v", r)
		}
	}
	c.quit()
	e.delivered(t)
	e.expectRefusals(t, "deny", "connect", "enforce", 1)
}

// TestPolicySenderDomainOverride: an [[override]] on sender_domains reaches
// the policy front-end through Postfix's sender attribute: its sessions get
// the override's caps, others the default ones.
func TestPolicySenderDomainOverride(t *testing.T) {
	e := newPolicyEnv(t, `
[session]
max_messages = 5

[[override]]
sender_domains = ["client.test"]
[override.session]
max_messages = 1
`)
	c := e.dial(t, "override")
	e.mustAccept(t, c, "poverride-1", 1000, false)
	res := e.send(t, c, "poverride-2", 1000, false)
	if res.stage != "RCPT" || len(res.rcpts) != 1 {
		t.Fatalf("second message of sender@client.test: stage %s, RCPT %v; want refused at RCPT", res.stage, res.rcpts)
	}
	expectPolicyReply(t, "RCPT over the override's cap", res.rcpts[0], 421, "4.7.0", "Too many messages in this session (limit 1)")
	expectClosedAfterReply(t, c, "RCPT over the override's cap")
	e.delivered(t)
	e.expectRefusals(t, "session_messages", "mail", "enforce", 1)
}
