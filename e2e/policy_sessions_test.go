package e2e

import (
	"bufio"
	"fmt"
	"net"
	"testing"
	"time"
)

// dialSMTPAt is dialSMTP from the local TCP address from (a port of its
// own), as a client behind NAT that reuses a source port.
func dialSMTPAt(t *testing.T, name, addr string, from *net.TCPAddr) *smtpClient {
	t.Helper()
	c := &smtpClient{t: t, name: name, start: time.Now(), timeout: 60 * time.Second}
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: from}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("%s: dial %s from %s: %v", name, addr, from, err)
	}
	c.conn, c.r = conn, bufio.NewReader(conn)
	c.event("connected to " + addr + " from " + conn.LocalAddr().String())
	t.Cleanup(func() {
		c.expectClose(10 * time.Second) // the server closes first: the client's port is free again
		c.conn.Close()
		if t.Failed() {
			t.Logf("%s transcript:\n%s", c.name, c.transcript())
		}
	})
	c.greeting = c.readReply("greeting")
	if c.greeting.code != 220 {
		t.Fatalf("%s: greeting %v, want 220", name, c.greeting)
	}
	if r := c.ehlo("client.test"); r.code != 250 {
		t.Fatalf("%s: EHLO %v, want 250", name, r)
	}
	return c
}

// TestPolicyReusedEndpointsStartFromZero: a new SMTP connection from the
// source port of one that ended, served by the same smtpd process over the
// same policy connection, starts from zero. With the policy in
// smtpd_sender_restrictions and smtpd_delay_reject = no, Postfix's MAIL
// request carries no instance: the new session's MAIL must not get the
// ended one's 421 (its first RCPT tells the sessions apart).
func TestPolicyReusedEndpointsStartFromZero(t *testing.T) {
	const capN = 2
	e := newPolicyEnv(t, fmt.Sprintf("[session]\nmax_messages = %d\n", capN),
		"smtpd_delay_reject = no",
		"smtpd_sender_restrictions = $smtpd_end_of_data_restrictions",
		"default_process_limit = 1") // one smtpd process serves both
	c := dialSMTPAt(t, "first", e.m.smtpAddr(), &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	from := c.conn.LocalAddr().(*net.TCPAddr)
	for i := 1; i <= capN; i++ {
		e.mustAccept(t, c, fmt.Sprintf("preuse-first-%d", i), 2000, i == 1)
	}
	c.quit() // the server closes first: the client's port is free again

	c2 := dialSMTPAt(t, "second, same source port", e.m.smtpAddr(), from)
	for i := 1; i <= capN; i++ {
		e.mustAccept(t, c2, fmt.Sprintf("preuse-second-%d", i), 2000, i == 1)
	}
	// this MAIL could be a new session's first: it is let through, and
	// its RCPT, whose instance shows the same session, gets the 421
	res := e.send(t, c2, "preuse-second-over", 2000, false)
	if res.mail.code != 250 || len(res.rcpts) != 1 {
		t.Fatalf("message %d: MAIL %v, RCPT %v; want refused at RCPT", capN+1, res.mail, res.rcpts)
	}
	expectPolicyReply(t, "RCPT over the cap", res.rcpts[0], 421, "4.7.0", fmt.Sprintf("Too many messages in this session (limit %d)", capN))
	expectClosedAfterReply(t, c2, "RCPT over the cap")
	e.delivered(t)
	m := e.d.metrics(t)
	if v := m["sessioncap_sessions_total"]; v != 2 {
		t.Errorf("sessioncap_sessions_total = %v, want 2", v)
	}
	if v := m["sessioncap_messages_total"]; v != 2*capN {
		t.Errorf("sessioncap_messages_total = %v, want %d", v, 2*capN)
	}
}
