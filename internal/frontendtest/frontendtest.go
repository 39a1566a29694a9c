// Package frontendtest runs one of sessioncap's front-ends in process over
// its real socket — the milter, driven by go-milter's client as Postfix
// drives it, or the Postfix policy server, driven over TCP as smtpd asks it
// with the recommended recipe (RCPT and END-OF-MESSAGE requests) — behind
// one SMTP-session driver, so that a scenario can be run through both and
// their verdicts compared. It is test code: failures go to the testing.TB.
package frontendtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/internal/testkit"
	"github.com/sessioncap/sessioncap/limits"
	"github.com/sessioncap/sessioncap/milter"
	"github.com/sessioncap/sessioncap/policy"
	"github.com/sessioncap/sessioncap/replay"
)

// Kind names a front-end.
type Kind string

const (
	Milter Kind = "milter"
	Policy Kind = "policy"
	// Replay is sessioncap replay: each event is written as the Postfix
	// log line that tells it and the replayer decides it.
	Replay Kind = "replay"
)

// Kinds are the front-ends, for tables over all of them.
var Kinds = []Kind{Milter, Policy, Replay}

// Epoch is the injected clock's start.
var Epoch = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// Harness is one front-end serving on 127.0.0.1 with an in-memory store and
// an injected clock.
type Harness struct {
	Kind  Kind
	Reg   *prometheus.Registry
	Store *counters.Memory
	Clock *testkit.Clock
	Logs  *testkit.SyncBuffer

	t    testing.TB
	addr string
	rp   *replay.Replayer
	qid  int
	port atomic.Int32 // the next SMTP client port (policy)
	pid  atomic.Int32 // the next smtpd pid (policy)
}

// Start runs front-end k with rules on 127.0.0.1:0 until the test ends.
func Start(t testing.TB, k Kind, rules *limits.Rules) *Harness {
	t.Helper()
	h := &Harness{Kind: k, t: t, Reg: prometheus.NewRegistry(), Clock: testkit.NewClock(Epoch), Logs: &testkit.SyncBuffer{}}
	h.port.Store(40000)
	h.pid.Store(1000)
	h.Store = counters.NewMemory(counters.MemoryOptions{MaxTracked: 1000, Now: h.Clock.Now})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	var serve func(net.Listener) error
	var shutdown func(context.Context) error
	switch k {
	case Milter:
		srv, err := milter.NewServer(milter.Config{Rules: rules, Store: h.Store, Metrics: milter.NewMetrics(h.Reg),
			Logger: testkit.SlogJSON(h.Logs), Now: h.Clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		serve, shutdown = srv.Serve, srv.Shutdown
	case Policy:
		srv, err := policy.NewServer(policy.Config{Rules: rules, Store: h.Store, Metrics: policy.NewMetrics(h.Reg),
			Logger: testkit.SlogJSON(h.Logs), Now: h.Clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		serve, shutdown = srv.Serve, srv.Shutdown
	case Replay:
		rp, err := replay.New(replay.Options{Rules: rules, Metrics: h.Reg, Logger: testkit.SlogJSON(h.Logs), Lag: time.Nanosecond})
		if err != nil {
			t.Fatal(err)
		}
		h.rp = rp
		ln.Close()
		return h
	default:
		t.Fatalf("frontendtest: unknown front-end %q", k)
	}
	done := make(chan error, 1)
	go func() { done <- serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := shutdown(ctx); err != nil {
			t.Errorf("%s shutdown: %v", k, err)
		}
		if err := <-done; err != nil {
			t.Errorf("%s serve: %v", k, err)
		}
	})
	return h
}

// Refusals reads sessioncap_refusals_total{limit, stage, mode}.
func (h *Harness) Refusals(limit, stage, mode string) float64 {
	h.t.Helper()
	return testkit.Value(h.t, h.Reg, "sessioncap_refusals_total", "limit", limit, "stage", stage, "mode", mode)
}

// Tx is one transaction.
type Tx struct {
	Sender string // MAIL FROM without brackets ("" for the null sender)
	User   string // SASL login, "" for none
	Size   int64  // SIZE= of MAIL FROM, 0 for none
	Rcpts  int    // recipients
	// Rejected recipients the MTA refused itself before the others (an
	// unknown user): the milter hears of them (errors rule), a policy
	// service does not.
	Rejected int
	Bytes    int // message size: header and body bytes (at least 16)
}

// Result is what the MTA would have answered in one transaction.
type Result struct {
	// Reply is the first refusal ("421 4.7.0 …"), "" when every step was
	// let through.
	Reply string
	// Accepted reports that the message was accepted at end of message
	// (some recipients may have been refused).
	Accepted bool
	// Tags are the headers added ("Name: value"), milter only.
	Tags []string
	// Closed reports that the session ended (a 421, or a refusal at
	// connect): later transactions of the session are not tried.
	Closed bool
}

// Session is one SMTP session from a client.
type Session struct {
	h      *Harness
	closed bool
	reply  string // a refusal at connect (milter) that every transaction gets

	// milter
	ms     *gomilter.ClientSession
	macros *gomilter.MacroBag

	gone bool // replay: the disconnect line is written

	// policy
	c                    net.Conn
	br                   *bufio.Reader
	client               string
	cport, pid, seq      int
	arrival              int64
	instance, sasl, from string
}

// Connect opens an SMTP session from client (an IP address). The milter
// decides at connect; the policy server hears of the session at its
// first request.
func (h *Harness) Connect(client string) *Session {
	h.t.Helper()
	s := &Session{h: h}
	switch h.Kind {
	case Milter:
		s.macros = gomilter.NewMacroBag()
		s.macros.Set(gomilter.MacroClientAddr, client)
		c := gomilter.NewClient("tcp", h.addr, gomilter.WithReadTimeout(5*time.Second))
		ms, err := c.Session(s.macros)
		if err != nil {
			h.t.Fatal(err)
		}
		s.ms = ms
		h.t.Cleanup(func() { _ = ms.Close() })
		family := gomilter.FamilyInet
		if strings.Contains(client, ":") {
			family = gomilter.FamilyInet6
		}
		act, err := ms.Conn("client.example", family, 40000, client)
		if err != nil {
			h.t.Fatalf("milter connect: %v", err)
		}
		if act.StopProcessing() {
			s.reply, s.closed = reply(act), true
			return s
		}
		if _, err := ms.Helo("client.example"); err != nil {
			h.t.Fatalf("milter helo: %v", err)
		}
	case Replay:
		s.client, s.pid = client, int(h.pid.Add(1))
		s.reply, s.closed = s.replayed(func() { s.log("connect from client.example[%s]", client) }, true)
	case Policy:
		c, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
		if err != nil {
			h.t.Fatal(err)
		}
		h.t.Cleanup(func() { _ = c.Close() })
		s.c, s.br, s.client = c, bufio.NewReader(c), client
		s.cport, s.pid, s.arrival = int(h.port.Add(1)), int(h.pid.Add(1)), 1_790_000_000
	}
	return s
}

// reply renders a milter refusal as the MTA's reply line.
func reply(act *gomilter.Action) string {
	if act.SMTPReply != "" {
		return act.SMTPReply
	}
	return fmt.Sprintf("%d", act.SMTPCode)
}

// Close ends the session as the client's QUIT does: the milter hears of
// it (its concurrency lease ends); the policy server never does.
func (s *Session) Close() {
	if s.ms != nil {
		_ = s.ms.Close()
	}
	if s.h.Kind == Replay && !s.gone {
		s.log("disconnect from client.example[%s]", s.client)
		s.h.rp.Flush()
		s.gone = true
	}
	s.closed = true
}

// Closed reports whether the session has ended.
func (s *Session) Closed() bool { return s.closed }

// Send runs one transaction as the MTA would: recipients refused one by
// one go on to the next, a refused MAIL or a refusal that ends the session
// stops it.
func (s *Session) Send(tx Tx) Result {
	s.h.t.Helper()
	if s.closed {
		return Result{Reply: s.reply, Closed: true}
	}
	switch s.h.Kind {
	case Milter:
		return s.sendMilter(tx)
	case Replay:
		return s.sendReplay(tx)
	}
	return s.sendPolicy(tx)
}

// log feeds the replayer one smtpd line of this session at the clock's
// time.
func (s *Session) log(format string, a ...any) {
	s.logAs("postfix/smtpd", s.pid, format, a...)
}

func (s *Session) logAs(prog string, pid int, format string, a ...any) {
	s.h.rp.Line(replay.Line{Time: s.h.Clock.Now(), Host: "mx", Prog: prog, PID: strconv.Itoa(pid), Msg: fmt.Sprintf(format, a...)})
}

// replayed runs write, decides what it wrote, and returns the first
// refusal in enforce mode and whether the session ended (a 421, or any
// refusal at connect).
func (s *Session) replayed(write func(), atConnect bool) (reply string, closed bool) {
	before := len(s.h.rp.Refusals())
	write()
	s.h.rp.Flush()
	for _, f := range s.h.rp.Refusals()[before:] {
		if f.Mode != string(limits.ModeEnforce) {
			continue
		}
		if reply == "" {
			reply = f.Reply
		}
		if atConnect || strings.HasPrefix(f.Reply, "421") {
			closed = true
		}
	}
	return reply, closed
}

// sendReplay writes the lines Postfix logs for tx as if it had been let
// through (a server without sessioncap, or in monitor mode): the
// recipients it rejected itself, the queue file with the SASL login, the
// queue manager's size and count, a delivery per recipient.
func (s *Session) sendReplay(tx Tx) Result {
	var res Result
	before := len(s.h.rp.Refusals())
	res.Reply, res.Closed = s.replayed(func() {
		for i := 0; i < tx.Rejected; i++ {
			s.log("NOQUEUE: reject: RCPT from client.example[%s]: 550 5.1.1 <unknown%d@example.net>: Recipient address rejected: User unknown; from=<%s> to=<unknown%d@example.net> proto=ESMTP helo=<client.example>",
				s.client, i, tx.Sender, i)
		}
		if tx.Rcpts == 0 {
			return
		}
		s.h.qid++
		qid := fmt.Sprintf("4Q%06X", s.h.qid)
		if tx.User != "" {
			s.log("%s: client=client.example[%s], sasl_method=PLAIN, sasl_username=%s", qid, s.client, tx.User)
		} else {
			s.log("%s: client=client.example[%s]", qid, s.client)
		}
		s.logAs("postfix/qmgr", 7, "%s: from=<%s>, size=%d, nrcpt=%d (queue active)", qid, tx.Sender, max(tx.Bytes, 16), tx.Rcpts)
		for i := 0; i < tx.Rcpts; i++ {
			s.logAs("postfix/virtual", 8, "%s: to=<r%d@example.net>, relay=virtual, delay=0, delays=0/0/0/0, dsn=2.0.0, status=sent (delivered to maildir)", qid, i)
		}
	}, false)
	refusedRcpts, refusedMsg := 0, false
	for _, f := range s.h.rp.Refusals()[before:] {
		if f.Mode != string(limits.ModeEnforce) {
			continue
		}
		if f.Stage == string(limits.StageRcpt) {
			refusedRcpts++
		} else {
			refusedMsg = true
		}
	}
	res.Accepted = tx.Rcpts > 0 && !refusedMsg && refusedRcpts < tx.Rcpts && !res.Closed
	if res.Closed {
		s.closed, s.reply = true, res.Reply
		s.Close()
	}
	return res
}

func (s *Session) sendMilter(tx Tx) Result {
	t := s.h.t
	var res Result
	stop := func(act *gomilter.Action) Result {
		res.Reply = reply(act)
		if act.SMTPCode == 421 {
			res.Closed, s.closed, s.reply = true, true, res.Reply
		}
		return res
	}
	s.macros.Set(gomilter.MacroAuthAuthen, tx.User)
	s.macros.Set(gomilter.MacroQueueId, "")
	var args string
	if tx.Size > 0 {
		args = fmt.Sprintf("SIZE=%d", tx.Size)
	}
	act, err := s.ms.Mail(tx.Sender, args)
	if err != nil {
		t.Fatalf("milter mail: %v", err)
	}
	if act.StopProcessing() {
		_ = s.ms.Abort(nil)
		return stop(act)
	}
	if tx.Rejected > 0 {
		s.macros.Set(gomilter.MacroRcptMailer, "error")
		for i := 0; i < tx.Rejected; i++ {
			if _, err := s.ms.Rcpt(fmt.Sprintf("unknown%d@example.net", i), ""); err != nil {
				t.Fatalf("milter rejected rcpt: %v", err)
			}
		}
		s.macros.Set(gomilter.MacroRcptMailer, "local")
	}
	accepted := 0
	for i := 0; i < tx.Rcpts; i++ {
		act, err := s.ms.Rcpt(fmt.Sprintf("r%d@example.net", i), "")
		if err != nil {
			t.Fatalf("milter rcpt: %v", err)
		}
		if act.StopProcessing() {
			if res.Reply == "" {
				res.Reply = reply(act)
			}
			if act.SMTPCode == 421 {
				return stop(act)
			}
			continue
		}
		accepted++
	}
	if accepted == 0 {
		_ = s.ms.Abort(nil)
		return res
	}
	s.macros.Set(gomilter.MacroQueueId, "4QUEUE1")
	if _, err := s.ms.DataStart(); err != nil {
		t.Fatalf("milter data: %v", err)
	}
	if _, err := s.ms.HeaderField("Subject", "test", nil); err != nil { // 7+2+4+2 = 15 bytes
		t.Fatalf("milter header: %v", err)
	}
	if _, err := s.ms.HeaderEnd(); err != nil {
		t.Fatalf("milter eoh: %v", err)
	}
	chunk := bytes.Repeat([]byte("x"), 65535)
	for left := max(tx.Bytes-15, 1); left > 0; left -= len(chunk) {
		if _, err := s.ms.BodyChunk(chunk[:min(left, len(chunk))]); err != nil {
			t.Fatalf("milter body: %v", err)
		}
	}
	mods, eom, err := s.ms.End()
	if err != nil {
		t.Fatalf("milter eom: %v", err)
	}
	_ = s.ms.Abort(nil) // Postfix sends an abort after every end of message
	for _, m := range mods {
		if m.Type == gomilter.ActionAddHeader {
			res.Tags = append(res.Tags, m.HeaderName+": "+m.HeaderValue)
		}
	}
	if eom.Type != gomilter.ActionAccept {
		if res.Reply == "" {
			res.Reply = reply(eom)
		}
		if eom.SMTPCode == 421 {
			return stop(eom)
		}
		return res
	}
	res.Accepted = true
	return res
}

func (s *Session) sendPolicy(tx Tx) Result {
	var res Result
	s.arrival++
	s.instance = fmt.Sprintf("%x.%x.%x.%x", s.pid, s.arrival, 12345, s.seq)
	s.seq++
	s.sasl, s.from = tx.User, tx.Sender
	stop := func(a string) Result {
		if res.Reply == "" {
			res.Reply = a
		}
		if strings.HasPrefix(a, "421") {
			res.Closed, s.closed, s.reply = true, true, a
		}
		return res
	}
	accepted := 0
	for i := 0; i < tx.Rcpts; i++ {
		a := s.ask("RCPT", fmt.Sprintf("recipient=r%d@example.net", i), fmt.Sprintf("size=%d", tx.Size), "recipient_count=0", "queue_id=")
		if a == "DUNNO" {
			accepted++
			continue
		}
		if res = stop(a); res.Closed {
			return res
		}
	}
	if accepted == 0 {
		return res
	}
	a := s.ask("END-OF-MESSAGE", "recipient=", fmt.Sprintf("size=%d", max(tx.Bytes, 16)), fmt.Sprintf("recipient_count=%d", accepted), "queue_id=4QUEUE1")
	if a != "DUNNO" {
		return stop(a)
	}
	res.Accepted = true
	return res
}

// ask sends one policy request and returns its action.
func (s *Session) ask(state string, extra ...string) string {
	t := s.h.t
	t.Helper()
	attrs := append([]string{
		"request=smtpd_access_policy",
		"protocol_state=" + state,
		"protocol_name=ESMTP",
		"client_address=" + s.client,
		"client_name=unknown",
		fmt.Sprintf("client_port=%d", s.cport),
		"server_address=127.0.0.1",
		"server_port=25",
		"helo_name=client.example",
		"sender=" + s.from,
		"instance=" + s.instance,
		"sasl_username=" + s.sasl,
	}, extra...)
	_ = s.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(s.c, strings.Join(attrs, "\n")+"\n\n"); err != nil {
		t.Fatalf("policy request: %v", err)
	}
	line, err := s.br.ReadString('\n')
	if err != nil {
		t.Fatalf("policy reply: %v", err)
	}
	if end, err := s.br.ReadString('\n'); err != nil || end != "\n" {
		t.Fatalf("policy reply %q not ended by an empty line (%q, %v)", line, end, err)
	}
	action, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "action=")
	if !ok {
		t.Fatalf("policy reply %q has no action", line)
	}
	return action
}
