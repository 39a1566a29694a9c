package e2e

import (
	"fmt"
	"testing"
)

// TestSenderNetworks: with max_networks = 2 per /24, a sender domain seen
// from two client networks is refused (451 4.7.1, the session stays open)
// from a third network only: at MAIL FROM through the milter, at the first
// RCPT through the policy front-end. The counted networks, another domain
// and the null sender still send. Client networks are loopback addresses of
// different /24s.
func TestSenderNetworks(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, kind string) {
		e := newFrontEnd(t, kind, `
[sender_networks]
max_networks = 2
window = "1h"
ipv4_prefix = 24
`)
		send := func(from, sender string) txResult {
			t.Helper()
			c := dialSMTPFrom(t, fmt.Sprintf("%s from %s", kind, from), e.m.smtpAddr(), from)
			if c.greeting.code != 220 {
				t.Fatalf("greeting %v", c.greeting)
			}
			if r := c.ehlo("client.test"); r.code != 250 {
				t.Fatalf("EHLO %v", r)
			}
			data, id := newMessage("snet", 1500)
			res := c.send(message{from: sender, rcpts: []string{"rcpt@" + sinkDomain}, data: data})
			if res.accepted {
				e.want[id]++
			}
			if !res.accepted && !c.closed { // the session stays usable after the 451
				if r := c.cmd("RSET", "RSET"); r.code != 250 {
					t.Errorf("RSET after the refusal: %v", r)
				}
			}
			c.quit()
			return res
		}
		for _, from := range []string{"127.0.1.1", "127.0.2.1", "127.0.1.2"} {
			if res := send(from, "someone@forged.example"); !res.accepted {
				t.Fatalf("from %s: stopped at %s, MAIL %v", from, res.stage, res.mail)
			}
		}
		res := send("127.0.3.1", "other@Forged.Example")
		const text = "Mail from your sender domain comes from too many networks (limit 2 per 1h)"
		if kind == policyKind {
			if res.stage != "RCPT" || len(res.rcpts) != 1 {
				t.Fatalf("third network: stage %s, MAIL %v, RCPT %v; want refused at RCPT", res.stage, res.mail, res.rcpts)
			}
			expectPolicyReply(t, "RCPT from a third network", res.rcpts[0], 451, "4.7.1", text)
		} else {
			if res.stage != "MAIL" {
				t.Fatalf("third network got past MAIL: %s %v", res.stage, res.mail)
			}
			expectReply(t, "MAIL from a third network", res.mail, 451, "4.7.1 "+text)
		}
		for _, c := range []struct{ from, sender string }{
			{"127.0.2.9", "again@forged.example"}, // a counted network
			{"127.0.3.1", "someone@fine.example"}, // another domain
			{"127.0.3.1", ""},                     // the null sender
		} {
			if res := send(c.from, c.sender); !res.accepted {
				t.Errorf("%q from %s: stopped at %s, MAIL %v", c.sender, c.from, res.stage, res.mail)
			}
		}
		e.delivered(t)
		e.expectRefusals(t, "sender_networks", "mail", "enforce", 1)
	})
}
