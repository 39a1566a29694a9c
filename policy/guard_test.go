package policy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
	"github.com/sessioncap/sessioncap/policy"
)

const goodRequest = "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.1\nclient_port=1234\nserver_address=127.0.0.1\nserver_port=25\ninstance=1.2.3.0\nsize=0\n\n"

// malformedCases are requests that break the protocol: each closes its
// connection, counted under reason, and nothing else. They are also the
// seed corpus of FuzzPolicySocket.
var malformedCases = []struct {
	name, send, reason string
}{
	{"line without =", "request=smtpd_access_policy\nprotocol_state\n\n", "malformed_line"},
	{"empty name", "=x\n\n", "malformed_line"},
	{"NUL in a value", "request=smtpd_access_policy\nsender=a\x00b\n\n", "malformed_line"},
	{"line too long", "request=smtpd_access_policy\nsender=" + strings.Repeat("a", 9000) + "\n\n", "line_too_long"},
	{"too many attributes", "request=smtpd_access_policy\n" + strings.Repeat("x=y\n", 300) + "\n", "request_too_large"},
	{"request too large", "request=smtpd_access_policy\n" + strings.Repeat("x="+strings.Repeat("y", 8000)+"\n", 9) + "\n", "request_too_large"},
	{"empty request", "\n", "bad_request"},
	{"no request attribute", "protocol_state=RCPT\nclient_address=192.0.2.1\n\n", "bad_request"},
	{"other request type", "request=junk\nprotocol_state=RCPT\n\n", "bad_request"},
	{"size not a number", "request=smtpd_access_policy\nprotocol_state=RCPT\nsize=12a\n\n", "malformed_number"},
	{"negative size", "request=smtpd_access_policy\nprotocol_state=RCPT\nsize=-1\n\n", "malformed_number"},
	{"huge recipient_count", "request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nrecipient_count=99999999999999999999\n\n", "malformed_number"},
	{"hang-up inside a request", "request=smtpd_access_policy\nprotocol_state=RCPT\n", "truncated_request"},
	{"hang-up inside a line", "request=smtpd_access_po", "truncated_request"},
	{"HTTP", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "malformed_line"},
}

func TestMalformedRequestsCloseTheConnection(t *testing.T) {
	h := start(t, limits.DefaultRules())
	for _, tc := range malformedCases {
		t.Run(tc.name, func(t *testing.T) {
			before := value(t, h.reg, "sessioncap_policy_protocol_errors_total", "reason", tc.reason)
			p := h.dialFor(t)
			_ = p.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, _ = p.c.Write([]byte(tc.send))
			_ = p.c.(*net.TCPConn).CloseWrite()
			waitClosed(t, p.c)
			eventually(t, "the protocol error to be counted", func() bool {
				return value(t, h.reg, "sessioncap_policy_protocol_errors_total", "reason", tc.reason) == before+1
			})
			if a := h.dialFor(t).ask(strings.Split(strings.TrimSuffix(goodRequest, "\n\n"), "\n")); a != "DUNNO" {
				t.Fatalf("a good request after it: %q", a)
			}
		})
	}
	if !strings.Contains(h.logs.String(), `"msg":"closing policy connection: protocol error"`) {
		t.Fatalf("no log line:\n%s", h.logs)
	}
}

func TestUnknownAttributesAndStatesAreIgnored(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxMessages = 1 }))
	p := h.dial()
	s := newSMTP("192.0.2.2", 100)
	if a := p.ask(append(s.attrs("RCPT"), "attribute_of_postfix_9=x", "tls_sni=", "x-y.z=1=2")); a != "DUNNO" {
		t.Fatalf("unknown attributes: %q", a)
	}
	if a := p.ask(s.attrs("SOMETHING-NEW")); a != "DUNNO" {
		t.Fatalf("unknown protocol_state: %q", a)
	}
	if got := value(t, h.reg, "sessioncap_policy_requests_total", "protocol_state", "other"); got != 1 {
		t.Fatalf("requests{other} = %v", got)
	}
	// CRLF line ends, as typed into telnet, are taken too
	if a := p.ask([]string{"request=smtpd_access_policy\r", "protocol_state=VRFY\r"}); a != "DUNNO" {
		t.Fatalf("CRLF: %q", a)
	}
}

func TestAllowList(t *testing.T) {
	h := startWith(t, limits.DefaultRules(), func(c *policy.Config) {
		c.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	})
	p := h.dial()
	waitClosed(t, p.c)
	eventually(t, "the refusal to be counted", func() bool {
		return value(t, h.reg, "sessioncap_policy_refused_connections_total", "reason", "allow") == 1
	})
}

// blockingStore is a store whose calls wait until release is closed: a
// request being decided, deterministically not idle.
type blockingStore struct {
	entered, release chan struct{}
	once             sync.Once
}

func (b *blockingStore) Hit(ctx context.Context, _ string, _ int64, _ limits.Rate) (limits.Hit, error) {
	b.once.Do(func() { close(b.entered) })
	select {
	case <-b.release:
		return limits.Hit{}, nil
	case <-ctx.Done():
		return limits.Hit{}, ctx.Err()
	}
}

// TestConnectionLimit: beyond MaxConnections with none idle (every one in
// the middle of a request) a new connection is refused.
func TestConnectionLimit(t *testing.T) {
	store := &blockingStore{entered: make(chan struct{}), release: make(chan struct{})}
	h := startWith(t, limits.DefaultRules(), func(c *policy.Config) {
		c.MaxConnections = 1
		c.Store = store
		c.StoreTimeout = time.Minute
	})
	p := h.dial()
	if _, err := io.WriteString(p.c, goodRequest); err != nil {
		t.Fatal(err)
	}
	<-store.entered // p's request is being decided
	q := h.dial()
	waitClosed(t, q.c)
	if got := value(t, h.reg, "sessioncap_policy_refused_connections_total", "reason", "limit"); got != 1 {
		t.Fatalf("refused{limit} = %v", got)
	}
	close(store.release)
	if line, err := p.br.ReadString('\n'); err != nil || line != "action=DUNNO\n" {
		t.Fatalf("the request in progress: %q, %v", line, err)
	}
	_ = p.c.Close()
	eventually(t, "a connection to be taken again", func() bool {
		r := h.dial()
		return r.ask(strings.Split(strings.TrimSuffix(goodRequest, "\n\n"), "\n")) == "DUNNO"
	})
}

// TestReadTimeout: a connection that answered a request and then waits
// longer than ReadTimeout for the next is closed.
func TestReadTimeout(t *testing.T) {
	h := startWith(t, limits.DefaultRules(), func(c *policy.Config) { c.ReadTimeout = 50 * time.Millisecond })
	p := h.dial()
	if a := p.ask(strings.Split(strings.TrimSuffix(goodRequest, "\n\n"), "\n")); a != "DUNNO" {
		t.Fatalf("request: %q", a)
	}
	waitClosed(t, p.c)
	eventually(t, "the timeout to be counted", func() bool {
		return value(t, h.reg, "sessioncap_policy_protocol_errors_total", "reason", "read_timeout") == 1
	})
}

// TestFirstRequestTimeout: Postfix connects when it has a request to send,
// so a connection silent for FirstRequestTimeout from the start is closed,
// while one that answered a request may wait for ReadTimeout.
func TestFirstRequestTimeout(t *testing.T) {
	h := startWith(t, limits.DefaultRules(), func(c *policy.Config) { c.FirstRequestTimeout = 50 * time.Millisecond })
	used := h.dial()
	if a := used.ask(strings.Split(strings.TrimSuffix(goodRequest, "\n\n"), "\n")); a != "DUNNO" {
		t.Fatalf("request: %q", a)
	}
	silent := h.dial()
	waitClosed(t, silent.c)
	eventually(t, "the timeout to be counted", func() bool {
		return value(t, h.reg, "sessioncap_policy_protocol_errors_total", "reason", "read_timeout") == 1
	})
	// used has now waited longer than the silent one lived
	if a := used.ask(strings.Split(strings.TrimSuffix(goodRequest, "\n\n"), "\n")); a != "DUNNO" {
		t.Fatalf("a used connection after FirstRequestTimeout: %q", a)
	}
}

// dialFrom connects from the loopback address from, another peer.
func (h *harness) dialFrom(from string) *pconn {
	h.t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = c.Close() })
	return &pconn{t: h.t, c: c, br: bufio.NewReader(c)}
}

// closed reports whether the server has closed c, waiting at most briefly.
func closed(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	ne, ok := err.(net.Error)
	return err != nil && !(ok && ne.Timeout())
}

// TestIdleConnectionsCannotLockPostfixOut: with every connection slot held
// by connections that never send a request, a new connection (Postfix's)
// is still served: the idle one that waited longest is closed for it.
func TestIdleConnectionsCannotLockPostfixOut(t *testing.T) {
	h := startWith(t, limits.DefaultRules(), func(c *policy.Config) { c.MaxConnections = 3 })
	postfix := h.dial()
	if a := postfix.ask(strings.Split(strings.TrimSuffix(goodRequest, "\n\n"), "\n")); a != "DUNNO" {
		t.Fatalf("request: %q", a)
	}
	var idle []*pconn
	for range 2 {
		idle = append(idle, h.dial())
	}
	eventually(t, "3 open connections", func() bool { return value(t, h.reg, "sessioncap_policy_connections") == 3 })
	// the next one closes an idle one that never sent a request, not
	// Postfix's, although Postfix's waited longest
	if a := h.dial().ask(strings.Split(strings.TrimSuffix(goodRequest, "\n\n"), "\n")); a != "DUNNO" {
		t.Fatalf("a new connection while all slots are held: %q", a)
	}
	waitClosed(t, idle[0].c)
	if closed(idle[1].c) {
		t.Error("a second idle connection was closed")
	}
	if a := postfix.ask(strings.Split(strings.TrimSuffix(goodRequest, "\n\n"), "\n")); a != "DUNNO" {
		t.Fatalf("Postfix's connection: %q", a)
	}
	if got := value(t, h.reg, "sessioncap_policy_connection_evictions_total"); got != 1 {
		t.Errorf("connection evictions = %v, want 1", got)
	}
	if got := value(t, h.reg, "sessioncap_policy_refused_connections_total", "reason", "limit"); got != 0 {
		t.Errorf("refused{limit} = %v, want 0", got)
	}
}

// TestConnectionsPerPeerBounded: one peer opening connections without end
// closes only its own idle ones; another peer's stay.
func TestConnectionsPerPeerBounded(t *testing.T) {
	h := startWith(t, limits.DefaultRules(), func(c *policy.Config) {
		c.MaxConnections = 10
		c.MaxConnectionsPerPeer = 2
	})
	var postfix []*pconn
	for range 2 {
		p := h.dialFrom("127.0.0.2")
		if a := p.ask(strings.Split(strings.TrimSuffix(goodRequest, "\n\n"), "\n")); a != "DUNNO" {
			t.Fatalf("request: %q", a)
		}
		postfix = append(postfix, p)
	}
	var flood []*pconn
	for range 6 {
		flood = append(flood, h.dialFrom("127.0.0.3"))
	}
	eventually(t, "the flood to be bounded", func() bool {
		return value(t, h.reg, "sessioncap_policy_connection_evictions_total") == 4 &&
			value(t, h.reg, "sessioncap_policy_connections") == 4
	})
	for _, p := range flood[:4] { // the oldest, closed for the newer ones
		waitClosed(t, p.c)
	}
	for i, p := range postfix {
		if a := p.ask(strings.Split(strings.TrimSuffix(goodRequest, "\n\n"), "\n")); a != "DUNNO" {
			t.Fatalf("the other peer's connection %d: %q", i, a)
		}
	}
}

func TestShutdownClosesIdleConnections(t *testing.T) {
	h := start(t, limits.DefaultRules())
	p := h.dial()
	if a := p.ask(strings.Split(strings.TrimSuffix(goodRequest, "\n\n"), "\n")); a != "DUNNO" {
		t.Fatalf("request: %q", a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with an idle connection: %v", err)
	}
	waitClosed(t, p.c)
	if _, err := net.DialTimeout("tcp", h.addr, time.Second); err == nil {
		t.Fatal("the listener is still open")
	}
	if got := value(t, h.reg, "sessioncap_policy_protocol_errors_total", "reason", "read_timeout"); got != 0 {
		t.Fatalf("shutdown counted as a read timeout")
	}
}

// FuzzPolicySocket sends arbitrary bytes to a real server over a socket and
// then checks that the server still answers a good request and holds no
// connection open.
func FuzzPolicySocket(f *testing.F) {
	for _, tc := range malformedCases {
		f.Add([]byte(tc.send))
	}
	f.Add([]byte(goodRequest + goodRequest))
	f.Add([]byte(strings.Replace(goodRequest, "RCPT", "END-OF-MESSAGE", 1) + "request=smtpd_access_policy\n"))
	h := startWith(f, rulesWith(func(r *limits.Rules) {
		r.Default.Session = limits.Session{MaxMessages: 2, MaxBytes: 1000, MaxRecipients: 3, Overrun: limits.OverrunTempfail}
	}), func(c *policy.Config) { c.Logger = slog.New(slog.DiscardHandler) })
	f.Fuzz(func(t *testing.T, data []byte) {
		p := h.dialFor(t)
		_ = p.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = p.c.Write(data) // the server may hang up before taking it all
		_ = p.c.(*net.TCPConn).CloseWrite()
		// every reply is action=... and an empty line, until the server closes
		_ = p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			line, err := p.br.ReadString('\n')
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatal("the server did not close the connection")
				}
				break
			}
			if !strings.HasPrefix(line, "action=") {
				t.Fatalf("reply line %q", line)
			}
			if end, err := p.br.ReadString('\n'); err != nil || end != "\n" {
				t.Fatalf("reply %q not ended by an empty line", line)
			}
		}
		if a := h.dialFor(t).ask(strings.Split(strings.TrimSuffix(goodRequest, "\n\n"), "\n")); a == "" {
			t.Fatal("the server stopped answering")
		}
	})
}

// TestUnixPeersCountedByUser: on a unix socket the peer is the user of the
// connecting process (SO_PEERCRED): one user's connections are bounded by
// MaxConnectionsPerPeer, and another user's connection (run as nobody when
// the test runs as root) does not close them.
func TestUnixPeersCountedByUser(t *testing.T) {
	if path := os.Getenv("SESSIONCAP_TEST_UNIX_DIAL"); path != "" {
		holdUnixConnection(path) // the child process
		return
	}
	reg := prometheus.NewRegistry()
	srv, err := policy.NewServer(policy.Config{
		Rules: limits.DefaultRules(), Store: counters.NewMemory(counters.MemoryOptions{MaxTracked: 10}),
		Metrics: policy.NewMetrics(reg), Logger: slog.New(slog.DiscardHandler), MaxConnectionsPerPeer: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} { // nobody must reach the socket
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "policy.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o777); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	dial := func() *pconn {
		c, err := net.DialTimeout("unix", path, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return &pconn{t: t, c: c, br: bufio.NewReader(c)}
	}
	first := dial()
	eventually(t, "the first connection", func() bool { return value(t, reg, "sessioncap_policy_connections") == 1 })
	if a := dial().ask(strings.Split(strings.TrimSuffix(goodRequest, "\n\n"), "\n")); a != "DUNNO" {
		t.Fatalf("second connection of the same user: %q", a)
	}
	waitClosed(t, first.c)
	if got := value(t, reg, "sessioncap_policy_connection_evictions_total"); got != 1 {
		t.Errorf("connection evictions = %v, want 1", got)
	}

	if os.Geteuid() != 0 {
		t.Skip("another user's connection needs root")
	}
	// the test binary's directory is private to root: run a copy
	bin, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	self := filepath.Join(dir, "policy.test")
	if err := os.WriteFile(self, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^TestUnixPeersCountedByUser$")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SESSIONCAP_TEST_UNIX_DIAL="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stdin.Close(); _ = cmd.Wait() }()
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "connected\n" {
		t.Fatalf("child as nobody: %q, %v", line, err)
	}
	eventually(t, "nobody's connection", func() bool { return value(t, reg, "sessioncap_policy_connections") == 2 })
	if got := value(t, reg, "sessioncap_policy_connection_evictions_total"); got != 1 {
		t.Errorf("another user's connection closed one: evictions = %v, want 1", got)
	}
}

// holdUnixConnection connects to path, says so on stdout, and holds the
// connection until stdin closes.
func holdUnixConnection(path string) {
	c, err := net.Dial("unix", path)
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(1)
	}
	fmt.Println("connected")
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = c.Close()
	os.Exit(0)
}
