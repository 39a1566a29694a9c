package e2e

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

// scriptedServer accepts one connection and runs serve on it. It stands in
// for a misbehaving MTA, to show that the client tells the hang-ups apart;
// the real MTAs never give it the chance.
func scriptedServer(t *testing.T, serve func(r *bufio.Reader, w net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		l.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("scripted server did not finish")
		}
	})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		serve(bufio.NewReader(c), c)
	}()
	return l.Addr().String()
}

// readUntil reads lines until one equals line (or the client goes away).
func readUntil(r *bufio.Reader, line string) {
	for i := 0; i < 100000; i++ {
		l, err := r.ReadString('\n')
		if err != nil || strings.TrimRight(l, "\r\n") == line {
			return
		}
	}
}

func sendLine(w net.Conn, s string) { _, _ = w.Write([]byte(s + "\r\n")) }

func TestClientTellsHangupsApart(t *testing.T) {
	msg := func() message {
		data, _ := newMessage("hangup", 2000)
		return message{from: "a@client.test", rcpts: []string{"b@" + sinkDomain}, data: data}
	}
	greet := func(r *bufio.Reader, w net.Conn) {
		sendLine(w, "220 fake ESMTP")
		readUntil(r, "EHLO client.test")
		sendLine(w, "250-fake")
		sendLine(w, "250 SIZE 1000000")
	}

	t.Run("421 at MAIL, then close", func(t *testing.T) {
		addr := scriptedServer(t, func(r *bufio.Reader, w net.Conn) {
			greet(r, w)
			readUntil(r, "MAIL FROM:<a@client.test>")
			sendLine(w, "421 4.7.0 Too many messages in this session (limit 1); reconnect to send more")
		})
		c := dialSMTP(t, "fake", addr)
		c.ehlo("client.test")
		res := c.send(msg())
		if res.stage != "MAIL" || res.mail.code != 421 || res.closedIn != "" {
			t.Fatalf("got stage %s, MAIL %v, closedIn %q; want a 421 at MAIL and no hang-up yet", res.stage, res.mail, res.closedIn)
		}
		if !c.expectClose(5*time.Second) || c.closedIn != "close" {
			t.Fatalf("closed=%v in %q, want a close after the reply", c.closed, c.closedIn)
		}
		if !strings.Contains(c.transcript(), "S: 421 4.7.0 Too many messages") {
			t.Errorf("transcript lacks the 421:\n%s", c.transcript())
		}
	})

	t.Run("close between 354 and the final-dot reply", func(t *testing.T) {
		addr := scriptedServer(t, func(r *bufio.Reader, w net.Conn) {
			greet(r, w)
			readUntil(r, "MAIL FROM:<a@client.test>")
			sendLine(w, "250 ok")
			readUntil(r, "RCPT TO:<b@sink.test>")
			sendLine(w, "250 ok")
			readUntil(r, "DATA")
			sendLine(w, "354 go ahead")
			readUntil(r, ".")
		})
		c := dialSMTP(t, "fake", addr)
		c.ehlo("client.test")
		res := c.send(msg())
		if res.stage != "EOM" || !res.eom.eof || res.closedIn != "EOM" || res.accepted {
			t.Fatalf("got stage %s, end of data %v, closedIn %q; want a hang-up instead of the final-dot reply", res.stage, res.eom, res.closedIn)
		}
	})

	t.Run("close instead of a MAIL reply", func(t *testing.T) {
		addr := scriptedServer(t, func(r *bufio.Reader, w net.Conn) {
			greet(r, w)
			readUntil(r, "MAIL FROM:<a@client.test>")
		})
		c := dialSMTP(t, "fake", addr)
		c.ehlo("client.test")
		res := c.send(msg())
		if !res.mail.eof || res.closedIn != "MAIL" {
			t.Fatalf("got MAIL %v, closedIn %q; want a hang-up instead of the MAIL reply", res.mail, res.closedIn)
		}
	})
}
