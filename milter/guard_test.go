package milter_test

import (
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/limits"
	"github.com/sessioncap/sessioncap/milter"
)

// frame builds one milter packet: length, command byte, data.
func frame(code byte, data string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(1+len(data)))
	return append(append(b, code), data...)
}

// header is a bare length prefix.
func header(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// optneg offers version 6, every action and every protocol option, as
// Sendmail does.
var optneg = frame('O', "\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff")

// connectFrame is a well-formed CONNECT from 192.0.2.1 port 40000.
var connectFrame = frame('C', "client.example\x004\x9c\x40192.0.2.1\x00")

// The stages a raw case starts from.
const (
	fresh      = iota // nothing sent yet
	negotiated        // after OPTNEG and its reply
	connected         // after OPTNEG and a valid CONNECT, both answered
)

type rawCase struct {
	name   string
	stage  int
	send   []byte
	reason string // the expected sessioncap_milter_protocol_errors_total reason
}

// rawCases are malformed inputs; each must cost the peer its connection and
// nothing else. They are also the seed corpus of FuzzMilterSocket.
var rawCases = []rawCase{
	// framing
	{"four zero bytes", fresh, header(0), "empty_frame"},
	{"zero length after negotiation", negotiated, header(0), "empty_frame"},
	{"512 MiB length", fresh, header(512 << 20), "oversized_frame"},
	{"length just over the bound", negotiated, header(128<<10 + 1), "oversized_frame"},
	{"max uint32 length", connected, header(0xffffffff), "oversized_frame"},
	{"HTTP request on the milter port", fresh, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "oversized_frame"},
	{"packet cut short", negotiated, cat(header(100), []byte("M<a@b>")), "truncated_frame"},
	{"length prefix cut short", negotiated, []byte{0, 0}, "truncated_frame"},
	// order
	{"CONNECT before OPTNEG", fresh, connectFrame, "out_of_order"},
	{"OPTNEG twice", negotiated, optneg, "out_of_order"},
	{"CONNECT twice without QUIT_NC", connected, connectFrame, "out_of_order"},
	// commands
	{"unknown command byte", negotiated, frame('Z', "x"), "unknown_command"},
	{"OPTNEG too short", fresh, frame('O', "\x00\x00\x00\x06\x00\x00\x00\x00"), "malformed_optneg"},
	{"CONNECT empty", negotiated, frame('C', ""), "malformed_connect"},
	{"CONNECT without NUL after the host", negotiated, frame('C', "client.example"), "malformed_connect"},
	{"CONNECT ends after the host's NUL", negotiated, frame('C', "client.example\x00"), "malformed_connect"},
	{"CONNECT unknown family", negotiated, frame('C', "h\x00X\x00\x19127.0.0.1\x00"), "malformed_connect"},
	{"CONNECT family 4 without port", negotiated, frame('C', "h\x004"), "malformed_connect"},
	{"CONNECT family 4 with half a port", negotiated, frame('C', "h\x004\x00"), "malformed_connect"},
	{"CONNECT family 4 without address", negotiated, frame('C', "h\x004\x00\x19"), "malformed_connect"},
	{"CONNECT family 4 with an IPv6 address", negotiated, frame('C', "h\x004\x00\x192001:db8::1\x00"), "malformed_connect"},
	{"CONNECT family 6 without port", negotiated, frame('C', "h\x006"), "malformed_connect"},
	{"CONNECT family 6 without address", negotiated, frame('C', "h\x006\x00\x19\x00"), "malformed_connect"},
	{"CONNECT family 6 bad address", negotiated, frame('C', "h\x006\x00\x19IPv6:[zz::1]\x00"), "malformed_connect"},
	{"CONNECT family L without port", negotiated, frame('C', "h\x00L"), "malformed_connect"},
	{"MACRO empty", negotiated, frame('D', ""), "malformed_macro"},
	{"HELO empty", connected, frame('H', ""), "malformed_command"},
	{"MAIL without NUL", connected, frame('M', "<a@example.org>"), "malformed_command"},
	{"MAIL empty", connected, frame('M', ""), "malformed_command"},
	{"RCPT without NUL", connected, frame('R', "<b@example.net>"), "malformed_command"},
	{"HEADER one string", connected, frame('L', "Subject\x00"), "malformed_command"},
	{"HEADER three strings", connected, frame('L', "Subject\x00a\x00b\x00"), "malformed_command"},
	{"HEADER too short", connected, frame('L', "S"), "malformed_command"},
}

// dialRaw opens a milter connection and brings it to stage.
func (h *harness) dialRaw(t testing.TB, stage int) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if stage >= negotiated {
		writeAll(t, c, optneg)
		if code := readFrame(t, c); code != 'O' {
			t.Fatalf("negotiation answered %q", code)
		}
	}
	if stage >= connected {
		writeAll(t, c, connectFrame)
		if code := readFrame(t, c); code != 'c' {
			t.Fatalf("CONNECT answered %q", code)
		}
	}
	return c
}

func writeAll(t testing.TB, c net.Conn, b []byte) {
	t.Helper()
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

// readFrame reads one packet from the server and returns its command byte.
func readFrame(t testing.TB, c net.Conn) byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatalf("reading a reply: %v", err)
	}
	data := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(c, data); err != nil || len(data) == 0 {
		t.Fatalf("reading a reply: %v", err)
	}
	return data[0]
}

// waitClosed reads (and drops replies) until the server closes c. The
// deadline only bounds a failing test.
func waitClosed(t testing.TB, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the server did not close the connection")
		}
		return // EOF, or a reset when the server closed with our bytes unread
	}
}

// ordinarySession runs a full session through go-milter's client and
// expects the message accepted.
func (h *harness) ordinarySession(t testing.TB, addr string) {
	t.Helper()
	hh := *h
	hh.t = t
	m, act := hh.connect(addr)
	if act.StopProcessing() {
		t.Fatalf("ordinary session refused at connect: %v", act)
	}
	if act, stage := m.send("", 1, 100); act != nil {
		t.Fatalf("ordinary message refused at %s: %v", stage, act)
	}
	if err := m.s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestGuardClosesMalformedInput(t *testing.T) {
	for _, tc := range rawCases {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, limits.DefaultRules())
			c := h.dialRaw(t, tc.stage)
			writeAll(t, c, tc.send)
			if tc.reason == "truncated_frame" {
				_ = c.(*net.TCPConn).CloseWrite()
			}
			waitClosed(t, c)
			if got := value(t, h.reg, "sessioncap_milter_protocol_errors_total", "reason", tc.reason); got != 1 {
				t.Errorf("protocol errors{reason=%q} = %v, want 1\nlogs:\n%s", tc.reason, got, h.logs)
			}
			h.ordinarySession(t, "192.0.2.20")
			eventually(t, "sessions_active to return to 0", func() bool {
				return value(t, h.reg, "sessioncap_sessions_active") == 0
			})
			eventually(t, "open-session counts to return to 0", func() bool { return h.srv.OpenSessions() == 0 })
		})
	}
}

func TestGuardLogsOneLinePerProtocolError(t *testing.T) {
	h := start(t, limits.DefaultRules())
	c := h.dialRaw(t, negotiated)
	writeAll(t, c, frame('C', "client.example"))
	waitClosed(t, c)
	logs := h.logs.String()
	if n := strings.Count(logs, `"component":"milter-guard"`); n != 1 {
		t.Fatalf("%d guard log lines, want 1:\n%s", n, logs)
	}
	for _, want := range []string{`"reason":"malformed_connect"`, `"remote":"127.0.0.1:`, `"level":"WARN"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log has no %s:\n%s", want, logs)
		}
	}
}

func TestGuardReadTimeout(t *testing.T) {
	h := startWith(t, limits.DefaultRules(), func(c *milter.Config) { c.ReadTimeout = 50 * time.Millisecond })
	c := h.dialRaw(t, connected)
	waitClosed(t, c) // idle after CONNECT: the server must hang up by itself
	if got := value(t, h.reg, "sessioncap_milter_protocol_errors_total", "reason", "read_timeout"); got != 1 {
		t.Fatalf("read_timeout count %v, want 1", got)
	}
	eventually(t, "the idle session to be released", func() bool {
		return value(t, h.reg, "sessioncap_sessions_active") == 0 && h.srv.OpenSessions() == 0
	})
}

// A peer that connects and never negotiates is closed after the
// negotiation timeout, far shorter than the read timeout of a negotiated
// connection, and counted.
func TestGuardNegotiationTimeout(t *testing.T) {
	h := startWith(t, limits.DefaultRules(), func(c *milter.Config) {
		c.ReadTimeout = time.Hour
		milter.SetNegotiationTimeout(c, 50*time.Millisecond)
	})
	c, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitClosed(t, c) // silent from the start: the server must hang up by itself
	if got := value(t, h.reg, "sessioncap_milter_protocol_errors_total", "reason", "read_timeout"); got != 1 {
		t.Fatalf("read_timeout count %v, want 1", got)
	}
	if logs := h.logs.String(); !strings.Contains(logs, `"timeout":"50ms"`) {
		t.Errorf("the log line does not name the negotiation timeout:\n%s", logs)
	}
	h.ordinarySession(t, "192.0.2.80")
}

func TestGuardAllowList(t *testing.T) {
	h := startWith(t, limits.DefaultRules(), func(c *milter.Config) {
		c.Allow = mustPrefixes(t, "127.0.0.2/32")
	})
	// from 127.0.0.1: closed at accept, before a byte is read
	c, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write(optneg)
	waitClosed(t, c)
	if got := value(t, h.reg, "sessioncap_milter_refused_connections_total"); got != 1 {
		t.Fatalf("refused connections %v, want 1", got)
	}
	if logs := h.logs.String(); !strings.Contains(logs, `"component":"milter-guard"`) || !strings.Contains(logs, `"remote":"127.0.0.1:`) {
		t.Errorf("no refusal log line:\n%s", logs)
	}
	// from 127.0.0.2: a whole session
	h.local = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}
	h.ordinarySession(t, "192.0.2.30")
	if got := value(t, h.reg, "sessioncap_milter_refused_connections_total"); got != 1 {
		t.Fatalf("refused connections %v after the allowed session, want 1", got)
	}
}

func TestGuardMetricsExposition(t *testing.T) {
	h := start(t, limits.DefaultRules())
	for _, name := range []string{"sessioncap_milter_accept_errors_total", "sessioncap_milter_refused_connections_total"} {
		if got := value(t, h.reg, name); got != 0 {
			t.Errorf("%s = %v at start", name, got)
		}
	}
	reasons := map[string]bool{}
	for _, tc := range rawCases {
		reasons[tc.reason] = true
	}
	reasons["read_timeout"] = true
	for r := range reasons {
		if got := value(t, h.reg, "sessioncap_milter_protocol_errors_total", "reason", r); got != 0 {
			t.Errorf("reason %s = %v at start", r, got)
		}
	}
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "sessioncap_milter_protocol_errors_total" {
			continue
		}
		if n := len(mf.GetMetric()); n != len(reasons) {
			t.Errorf("%d reason series, want %d (every reason pre-initialised, each covered by a test)", n, len(reasons))
		}
		for r := range reasons {
			if !strings.Contains(mf.GetHelp(), r) {
				t.Errorf("Help does not list reason %s: %s", r, mf.GetHelp())
			}
		}
	}
}

// TestSecondConnectOnOneConnection: a second CONNECT on one milter
// connection must not leak the first session's admission. Postfix and
// Sendmail send one CONNECT per milter session (QUIT_NC before a reuse), so
// the guard closes the connection at the second one, and the first
// admission is released by the session's Cleanup. (session.Connect itself
// still overwrites the admission; see TestSecondConnectReleasesAdmission.)
func TestSecondConnectOnOneConnection(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Concurrency.MaxPerAddress = 1 }))
	c := h.dialRaw(t, connected) // CONNECT from 192.0.2.1
	writeAll(t, c, cat(connectFrame, frame('Q', "")))
	waitClosed(t, c)
	if got := value(t, h.reg, "sessioncap_milter_protocol_errors_total", "reason", "out_of_order"); got != 1 {
		t.Fatalf("out_of_order count %v, want 1", got)
	}
	eventually(t, "the first admission to be released", func() bool { return h.srv.OpenSessions() == 0 })
	h.ordinarySession(t, "192.0.2.1")
}

// TestQuitNCAllowsAnotherConnect: QUIT_NC starts a new SMTP session on the
// same milter connection; its CONNECT is in order.
func TestQuitNCAllowsAnotherConnect(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Concurrency.MaxPerAddress = 1 }))
	c := h.dialRaw(t, connected)
	writeAll(t, c, cat(frame('K', ""), connectFrame))
	if code := readFrame(t, c); code != 'c' {
		t.Fatalf("CONNECT after QUIT_NC answered %q, want continue", code)
	}
	writeAll(t, c, frame('Q', ""))
	waitClosed(t, c)
	eventually(t, "sessions to be released", func() bool { return h.srv.OpenSessions() == 0 })
	if got := value(t, h.reg, "sessioncap_milter_protocol_errors_total", "reason", "out_of_order"); got != 0 {
		t.Fatalf("out_of_order count %v, want 0", got)
	}
}

// TestBodyChunkOfTheNegotiatedSize: the largest packet an MTA sends after
// our negotiation (a 65535-byte body chunk) passes the guard, and the server
// never accepts a bigger data size.
func TestBodyChunkOfTheNegotiatedSize(t *testing.T) {
	h := start(t, limits.DefaultRules())
	c, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// offer SMFIP_MDS_1M (0x20000000) besides every protocol option
	writeAll(t, c, frame('O', "\x00\x00\x00\x06\x00\x00\x01\xff\x20\x1f\xff\xff"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(c, reply); err != nil || len(reply) < 13 {
		t.Fatalf("negotiation reply %q: %v", reply, err)
	}
	if proto := binary.BigEndian.Uint32(reply[9:13]); proto&0x30000000 != 0 {
		t.Fatalf("server accepted a data size above 64K: protocol %#x", proto)
	}
	writeAll(t, c, connectFrame)
	if code := readFrame(t, c); code != 'c' {
		t.Fatalf("CONNECT answered %q", code)
	}
	writeAll(t, c, cat(frame('M', "<a@example.org>\x00"), frame('R', "<b@example.net>\x00")))
	for i := 0; i < 2; i++ {
		if code := readFrame(t, c); code != 'c' {
			t.Fatalf("MAIL/RCPT answered %q", code)
		}
	}
	writeAll(t, c, cat(frame('L', "Subject\x00"+strings.Repeat("s", 100_000)+"\x00"), frame('B', strings.Repeat("x", 65535)), frame('E', "")))
	if code := readFrame(t, c); code != 'a' {
		t.Fatalf("end of message answered %q, want accept", code)
	}
	if got := value(t, h.reg, "sessioncap_messages_total"); got != 1 {
		t.Fatalf("messages_total %v", got)
	}
}

// FuzzMilterSocket sends arbitrary bytes to a real server over a socket,
// fresh or after a valid negotiation (and CONNECT), and then checks that an
// ordinary session still works and that no session stays counted.
func FuzzMilterSocket(f *testing.F) {
	for _, tc := range rawCases {
		f.Add(uint8(tc.stage), tc.send)
	}
	f.Add(uint8(fresh), cat(optneg, connectFrame, frame('M', "<a@b>\x00SIZE=10\x00"), frame('Q', "")))
	f.Add(uint8(connected), cat(frame('K', ""), connectFrame, frame('K', ""), connectFrame))
	h := startWith(f, rulesWith(func(r *limits.Rules) { r.Default.Frequency.MaxConnections = 0 }), func(c *milter.Config) {
		c.Logger = slog.New(slog.DiscardHandler)
	})
	f.Fuzz(func(t *testing.T, stage uint8, data []byte) {
		c := h.dialRaw(t, int(stage%3))
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write(data) // the server may hang up before taking it all
		_ = c.(*net.TCPConn).CloseWrite()
		waitClosed(t, c)
		h.ordinarySession(t, "192.0.2.40")
		eventually(t, "sessions_active to return to 0", func() bool {
			return value(t, h.reg, "sessioncap_sessions_active") == 0
		})
		eventually(t, "open-session counts to return to 0", func() bool { return h.srv.OpenSessions() == 0 })
	})
}

func mustPrefixes(t testing.TB, ss ...string) []netip.Prefix {
	t.Helper()
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = p
	}
	return out
}
