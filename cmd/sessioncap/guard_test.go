package main

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// TestDaemonSurvivesHostileMilterPeers runs the real binary: the packets
// that used to panic go-milter and kill the process cost only their own
// connection, and [milter] allow reaches the server.
func TestDaemonSurvivesHostileMilterPeers(t *testing.T) {
	d := startDaemon(t, "[milter]\nallow = [\"127.0.0.1/32\"]\nread_timeout = \"10m\"\n")
	optneg := []byte("\x00\x00\x00\x0dO\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff")
	for _, raw := range [][]byte{
		{0, 0, 0, 0}, // zero-length packet: go-milter indexed data[0]
		append(optneg, "\x00\x00\x00\x0fCclient.example"...), // CONNECT without NUL
	} {
		c, err := net.DialTimeout("tcp", d.milter, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(raw); err != nil {
			t.Fatal(err)
		}
		waitHangUp(t, c)
		c.Close()
	}
	// from 127.0.0.2, outside allow: closed at accept
	c, err := (&net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).Dial("tcp", d.milter)
	if err != nil {
		t.Fatal(err)
	}
	waitHangUp(t, c)
	c.Close()

	if n, _ := d.messagesUntilRefused(2); n != 2 {
		t.Fatalf("after hostile peers only %d messages went through", n)
	}
	for series, want := range map[string]string{
		`sessioncap_milter_protocol_errors_total{reason="empty_frame"}`:       "1",
		`sessioncap_milter_protocol_errors_total{reason="malformed_connect"}`: "1",
		`sessioncap_milter_refused_connections_total`:                         "1",
		`sessioncap_milter_accept_errors_total`:                               "0",
	} {
		if got := d.metric(series); got != want {
			t.Errorf("%s = %s, want %s", series, got, want)
		}
	}
	d.waitLog("component=milter-guard")
}

// waitHangUp reads until the daemon closes c; the deadline only bounds a
// failing test.
func waitHangUp(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the daemon did not close the connection")
		}
		return
	}
}
