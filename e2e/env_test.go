package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// env is one receiving MTA with sessioncap as its milter.
type env struct {
	kind string
	m    mta
	d    *daemon
	want map[string]int // Message-ID → copies that must be in the Maildir
}

// newEnv starts sessioncap with config, then an MTA of kind using it.
func newEnv(t *testing.T, kind, config string) *env {
	t.Helper()
	switch kind {
	case "postfix":
		requirePostfix(t)
	case "sendmail":
		requireSendmail(t)
	}
	m, d := startBehindSessioncap(t, config, func(milterPort int) mta { return startMTA(t, kind, milterPort) })
	return &env{kind: kind, m: m, d: d, want: map[string]int{}}
}

// dial connects and expects a 220 greeting and a 250 to EHLO.
func (e *env) dial(t *testing.T, name string) *smtpClient {
	t.Helper()
	c := dialSMTP(t, e.kind+" "+name, e.m.smtpAddr())
	if c.greeting.code != 220 {
		t.Fatalf("%s: greeting %v, want 220", name, c.greeting)
	}
	if r := c.ehlo("client.test"); r.code != 250 {
		t.Fatalf("%s: EHLO %v, want 250", name, r)
	}
	return c
}

// send sends one message of size bytes to rcpts (default one recipient),
// with SIZE= when withSize. A message that gets 250 after the final dot is
// added to the set that must be delivered, once per accepted recipient.
func (e *env) send(t *testing.T, c *smtpClient, tag string, size int, withSize bool, rcpts ...string) txResult {
	t.Helper()
	data, id := newMessage(tag, size)
	if len(rcpts) == 0 {
		rcpts = []string{"rcpt@" + sinkDomain}
	}
	m := message{from: "sender@client.test", rcpts: rcpts, data: data}
	if withSize {
		m.size = len(data)
	}
	res := c.send(m)
	if res.closedIn == "DATA" || res.closedIn == "EOM" {
		t.Errorf("%s: server closed the connection between DATA and the reply to the final dot (waiting for the %s reply)", tag, res.closedIn)
	}
	if res.accepted {
		n := 0
		for _, r := range res.rcpts {
			if r.code == 250 || r.code == 251 {
				n++
			}
		}
		e.want[id] += n
	}
	return res
}

// mustAccept sends a message that must get 250 after the final dot.
func (e *env) mustAccept(t *testing.T, c *smtpClient, tag string, size int, withSize bool) {
	t.Helper()
	res := e.send(t, c, tag, size, withSize)
	if !res.accepted {
		t.Fatalf("%s: not accepted: stopped at %s, MAIL %v, RCPT %v, DATA %v, end of data %v",
			tag, res.stage, res.mail, res.rcpts, res.data, res.eom)
	}
}

// expectReply checks a reply's code and that its text contains want.
func expectReply(t *testing.T, what string, r reply, code int, want string) {
	t.Helper()
	if r.code != code || !strings.Contains(r.text(), want) {
		t.Errorf("%s: got %v, want %d …%s…", what, r, code, want)
	}
}

// expectClosedAfterReply checks that the server hung up after its last
// reply, not instead of one.
func expectClosedAfterReply(t *testing.T, c *smtpClient, what string) {
	t.Helper()
	if !c.expectClose(5 * time.Second) {
		t.Errorf("%s: the server kept the connection open after a 421", what)
		return
	}
	if c.closedIn != "close" {
		t.Errorf("%s: the server closed the connection while the client waited for the %s reply, want a reply then close", what, c.closedIn)
	}
}

// delivered checks the Maildir against every accepted message.
func (e *env) delivered(t *testing.T) {
	t.Helper()
	assertDelivered(t, e.m, e.want, 20*time.Second)
}

// expectRefusals checks sessioncap_refusals_total for one series.
func (e *env) expectRefusals(t *testing.T, limit, stage, mode string, want float64) {
	t.Helper()
	// The MTA's milter conversation may lag the SMTP reply a little.
	var got float64
	err := waitFor(5*time.Second, func() error {
		got = refusals(t, e.d.metrics(t), limit, stage, mode)
		if got != want {
			return fmt.Errorf("%w: %v", errNotYet, got)
		}
		return nil
	})
	if err != nil {
		t.Errorf("sessioncap_refusals_total{limit=%q,stage=%q,mode=%q} = %v, want %v", limit, stage, mode, got, want)
	}
}

// forEachMTA runs f as a subtest per receiving MTA.
func forEachMTA(t *testing.T, f func(t *testing.T, kind string)) {
	for _, kind := range mtaKinds {
		t.Run(kind, func(t *testing.T) { f(t, kind) })
	}
}

// policyKind is the front-end kind of Postfix asking sessioncap's policy
// front-end (README's recipe) instead of the milter.
const policyKind = "postfix-policy"

// forEachFrontEnd runs f against each MTA through the milter, and against
// Postfix through the policy front-end; newFrontEnd starts the env of a
// kind.
func forEachFrontEnd(t *testing.T, f func(t *testing.T, kind string)) {
	for _, kind := range append(append([]string{}, mtaKinds...), policyKind) {
		t.Run(kind, func(t *testing.T) { f(t, kind) })
	}
}

// newFrontEnd is newEnv for the kinds of forEachFrontEnd.
func newFrontEnd(t *testing.T, kind, config string) *env {
	t.Helper()
	if kind == policyKind {
		return newPolicyEnv(t, config)
	}
	return newEnv(t, kind, config)
}
