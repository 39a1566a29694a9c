package policy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/internal/testkit"
	"github.com/sessioncap/sessioncap/limits"
	"github.com/sessioncap/sessioncap/policy"
)

// The shared test helpers, under the names the tests use.
type (
	clock      = testkit.Clock
	syncBuffer = testkit.SyncBuffer
)

var (
	value      = testkit.Value
	eventually = testkit.Eventually
)

type harness struct {
	t     testing.TB
	srv   *policy.Server
	addr  string
	reg   *prometheus.Registry
	store *counters.Memory
	clock *clock
	logs  *syncBuffer
}

func rulesWith(f func(r *limits.Rules)) *limits.Rules {
	r := limits.DefaultRules()
	f(r)
	return r
}

func start(t testing.TB, rules *limits.Rules) *harness {
	t.Helper()
	return startWith(t, rules, nil)
}

// startWith runs a real policy server on 127.0.0.1:0 with edit applied to
// its Config.
func startWith(t testing.TB, rules *limits.Rules, edit func(*policy.Config)) *harness {
	t.Helper()
	h := &harness{t: t, reg: prometheus.NewRegistry(),
		clock: testkit.NewClock(time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)), logs: &syncBuffer{}}
	h.store = counters.NewMemory(counters.MemoryOptions{MaxTracked: 1000, Now: h.clock.Now})
	cfg := policy.Config{
		Rules:   rules,
		Store:   h.store,
		Metrics: policy.NewMetrics(h.reg),
		Logger:  testkit.SlogJSON(h.logs),
		Now:     h.clock.Now,
	}
	if edit != nil {
		edit(&cfg)
	}
	srv, err := policy.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.srv, h.addr = srv, ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return h
}

// pconn is one policy connection, as one Postfix smtpd process keeps it.
type pconn struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func (h *harness) dial() *pconn { return h.dialFor(h.t) }

// dialFor is dial for a test other than the harness's (a fuzz target).
func (h *harness) dialFor(t testing.TB) *pconn {
	t.Helper()
	c, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &pconn{t: t, c: c, br: bufio.NewReader(c)}
}

// ask sends one request (attribute lines, without the empty line) and
// returns the action, or "" when the server closed the connection.
func (p *pconn) ask(attrs []string) string {
	p.t.Helper()
	_ = p.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(p.c, strings.Join(attrs, "\n")+"\n\n"); err != nil {
		return ""
	}
	line, err := p.br.ReadString('\n')
	if err != nil {
		return ""
	}
	if end, err := p.br.ReadString('\n'); err != nil || end != "\n" {
		p.t.Fatalf("reply %q not ended by an empty line (%q, %v)", line, end, err)
	}
	action, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "action=")
	if !ok {
		p.t.Fatalf("reply %q has no action", line)
	}
	return action
}

// smtp is one SMTP session as Postfix's smtpd describes it in policy
// requests: its endpoints, smtpd's pid, and the instance of the current
// transaction.
type smtp struct {
	client, server string
	cport, sport   int
	pid            int
	seq            int // transactions begun (MAIL commands)
	instance       string
	sasl           string
	sender         string // MAIL FROM, without brackets; "" for the null sender
	arrival        int64
}

var nextPort atomic.Int32

func init() { nextPort.Store(40000) }

// newSMTP is a new SMTP connection from client to 127.0.0.1:25, served by
// smtpd process pid.
func newSMTP(client string, pid int) *smtp {
	return &smtp{client: client, server: "127.0.0.1", cport: int(nextPort.Add(1)), sport: 25, pid: pid, arrival: 1_790_000_000, sender: "a@example.org"}
}

func (s *smtp) attrs(state string, extra ...string) []string {
	instance := s.instance
	switch state {
	case "CONNECT", "EHLO", "HELO", "MAIL":
		instance = "" // smtpd sets it after the MAIL restrictions
	}
	a := []string{
		"request=smtpd_access_policy",
		"protocol_state=" + state,
		"protocol_name=ESMTP",
		"client_address=" + s.client,
		"client_name=unknown",
		"reverse_client_name=unknown",
		fmt.Sprintf("client_port=%d", s.cport),
		"server_address=" + s.server,
		fmt.Sprintf("server_port=%d", s.sport),
		"helo_name=client.example",
		"sender=" + s.sender,
		"queue_id=",
		"instance=" + instance,
		"sasl_method=",
		"sasl_username=" + s.sasl,
		"sasl_sender=",
		"ccert_subject=",
		"encryption_protocol=",
		"encryption_keysize=0",
		"etrn_domain=",
		"stress=",
		"policy_context=",
		"compatibility_level=3.6",
		"mail_version=3.7.11",
	}
	return append(a, extra...)
}

// mail begins a transaction as Postfix does at MAIL FROM: a new instance.
func (s *smtp) mail() {
	s.arrival++
	s.instance = fmt.Sprintf("%x.%x.%x.%x", s.pid, s.arrival, 12345, s.seq)
	s.seq++
}

func (s *smtp) connect() []string { return s.attrs("CONNECT", "size=0", "recipient_count=0") }

// rcpt is a RCPT request; size is the SIZE= of MAIL FROM (0 for none).
func (s *smtp) rcpt(n int, size int64) []string {
	return s.attrs("RCPT", fmt.Sprintf("recipient=r%d@example.net", n), fmt.Sprintf("size=%d", size), "recipient_count=0")
}

// eom is an END-OF-MESSAGE request with the real size and the recipients
// Postfix accepted.
func (s *smtp) eom(size int64, rcpts int) []string {
	return s.attrs("END-OF-MESSAGE", "recipient=", fmt.Sprintf("size=%d", size), fmt.Sprintf("recipient_count=%d", rcpts), "queue_id=4ABCDEF012")
}

// send runs one transaction (RCPT for each recipient, END-OF-MESSAGE) and
// returns the first refusal and its state, or "" when all passed.
func (p *pconn) send(s *smtp, rcpts int, size int64, sizeParam int64) (action, state string) {
	p.t.Helper()
	s.mail()
	for i := 0; i < rcpts; i++ {
		if a := p.ask(s.rcpt(i, sizeParam)); a != "DUNNO" {
			return a, "RCPT"
		}
	}
	if a := p.ask(s.eom(size, rcpts)); a != "DUNNO" {
		return a, "END-OF-MESSAGE"
	}
	return "", ""
}

func (h *harness) refusals(limit, stage, mode string) float64 {
	h.t.Helper()
	return value(h.t, h.reg, "sessioncap_refusals_total", "limit", limit, "stage", stage, "mode", mode)
}

// waitClosed waits for the server to close c.
func waitClosed(t testing.TB, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("the server did not close the connection")
			}
			return
		}
	}
}
