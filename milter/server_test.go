package milter_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/internal/testkit"
	"github.com/sessioncap/sessioncap/limits"
	"github.com/sessioncap/sessioncap/milter"
)

// The shared test helpers, under the names the tests use.
type (
	clock      = testkit.Clock
	syncBuffer = testkit.SyncBuffer
)

var (
	slogJSON   = testkit.SlogJSON
	value      = testkit.Value
	eventually = testkit.Eventually
)

type harness struct {
	t     testing.TB
	srv   *milter.Server
	addr  string
	reg   *prometheus.Registry
	store *counters.Memory
	clock *clock
	logs  *syncBuffer
	local net.Addr // dial from this address when set
}

func rulesWith(f func(r *limits.Rules)) *limits.Rules {
	r := limits.DefaultRules()
	f(r)
	return r
}

// start runs a real milter server on 127.0.0.1:0.
func start(t testing.TB, rules *limits.Rules) *harness {
	t.Helper()
	return startWith(t, rules, nil)
}

// startWith is start with edit applied to the server's Config.
func startWith(t testing.TB, rules *limits.Rules, edit func(*milter.Config)) *harness {
	t.Helper()
	h := &harness{t: t, reg: prometheus.NewRegistry(),
		clock: testkit.NewClock(time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)), logs: &syncBuffer{}}
	h.store = counters.NewMemory(counters.MemoryOptions{MaxTracked: 1000, Now: h.clock.Now})
	cfg := milter.Config{
		Rules:   rules,
		Store:   h.store,
		Metrics: milter.NewMetrics(h.reg),
		Logger:  slogJSON(h.logs),
		Now:     h.clock.Now,
	}
	if edit != nil {
		edit(&cfg)
	}
	srv, err := milter.NewServer(cfg)
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

// mta is one SMTP session as Postfix drives it: connect info, HELO, then
// transactions, with the macros Postfix would send.
type mta struct {
	t      testing.TB
	s      *gomilter.ClientSession
	macros *gomilter.MacroBag
	conn   net.Conn // under s, to drop it without QUIT
}

func (h *harness) connect(addr string) (*mta, *gomilter.Action) {
	h.t.Helper()
	macros := gomilter.NewMacroBag()
	macros.Set(gomilter.MacroClientAddr, addr)
	d := &recordingDialer{local: h.local}
	c := gomilter.NewClient("tcp", h.addr, gomilter.WithReadTimeout(5*time.Second), gomilter.WithDialer(d))
	s, err := c.Session(macros)
	if err != nil {
		h.t.Fatal(err)
	}
	m := &mta{t: h.t, s: s, macros: macros, conn: d.conn}
	h.t.Cleanup(func() { _ = s.Close() })
	family := gomilter.FamilyInet
	switch {
	case addr == "":
		family = gomilter.FamilyUnknown
	case strings.HasPrefix(addr, "/"):
		family = gomilter.FamilyUnix
	case strings.Contains(addr, ":"):
		family = gomilter.FamilyInet6
	}
	act, err := s.Conn("client.example", family, 40000, addr)
	if err != nil {
		h.t.Fatalf("conn: %v", err)
	}
	if !act.StopProcessing() {
		if _, err := s.Helo("client.example"); err != nil {
			h.t.Fatalf("helo: %v", err)
		}
	}
	return m, act
}

// send runs one transaction and returns the first refusing action (nil when
// the message was accepted) and the stage it came at.
func (m *mta) send(sizeArg string, rcpts int, body int) (*gomilter.Action, string) {
	m.t.Helper()
	act, err := m.s.Mail("sender@example.org", sizeArg)
	if err != nil {
		m.t.Fatalf("mail: %v", err)
	}
	if act.StopProcessing() {
		_ = m.s.Abort(nil)
		return act, "mail"
	}
	accepted := 0
	for i := 0; i < rcpts; i++ {
		act, err := m.s.Rcpt("rcpt@example.net", "")
		if err != nil {
			m.t.Fatalf("rcpt: %v", err)
		}
		if act.StopProcessing() {
			if i == rcpts-1 && accepted == 0 {
				_ = m.s.Abort(nil)
				return act, "rcpt"
			}
			continue
		}
		accepted++
	}
	if accepted < rcpts {
		act = &gomilter.Action{Type: gomilter.ActionRejectWithCode}
	}
	m.macros.Set(gomilter.MacroQueueId, "4QUEUE1")
	if _, err := m.s.DataStart(); err != nil {
		m.t.Fatalf("data: %v", err)
	}
	if _, err := m.s.HeaderField("Subject", "test", nil); err != nil { // 7+2+4+2 = 15 bytes
		m.t.Fatalf("header: %v", err)
	}
	if _, err := m.s.HeaderEnd(); err != nil {
		m.t.Fatalf("eoh: %v", err)
	}
	chunk := bytes.Repeat([]byte("x"), 65535)
	for left := max(body-15, 1); left > 0; left -= len(chunk) {
		if _, err := m.s.BodyChunk(chunk[:min(left, len(chunk))]); err != nil {
			m.t.Fatalf("body: %v", err)
		}
	}
	_, eom, err := m.s.End()
	if err != nil {
		m.t.Fatalf("eom: %v", err)
	}
	_ = m.s.Abort(nil) // Postfix sends an abort after every end of message
	if eom.Type != gomilter.ActionAccept {
		return eom, "eom"
	}
	if accepted < rcpts {
		return act, "rcpt"
	}
	return nil, ""
}

func wantReply(t *testing.T, act *gomilter.Action, code uint16, text string) {
	t.Helper()
	if act == nil {
		t.Fatalf("accepted; want %d %s", code, text)
	}
	if act.SMTPCode != code || act.SMTPReply != text {
		t.Fatalf("got %d %q, want %d %q", act.SMTPCode, act.SMTPReply, code, text)
	}
}

func (h *harness) refusals(limit, stage, mode string) float64 {
	h.t.Helper()
	return value(h.t, h.reg, "sessioncap_refusals_total", "limit", limit, "stage", stage, "mode", mode)
}

func TestMessageCap(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxMessages = 3 }))
	m, _ := h.connect("192.0.2.10")
	for i := 0; i < 3; i++ {
		if act, stage := m.send("", 1, 100); act != nil {
			t.Fatalf("message %d refused at %s: %v", i+1, stage, act)
		}
	}
	act, stage := m.send("", 1, 100)
	if stage != "mail" {
		t.Fatalf("refused at %q, want mail", stage)
	}
	wantReply(t, act, 421, "421 4.7.0 Too many messages in this session (limit 3); reconnect to send more")
	// a new connection can send again
	m2, _ := h.connect("192.0.2.10")
	if act, _ := m2.send("", 1, 100); act != nil {
		t.Fatalf("fresh session refused: %v", act)
	}
	if got := h.refusals("session_messages", "mail", "enforce"); got != 1 {
		t.Fatalf("refusal counter %v, want 1", got)
	}
	if got := value(t, h.reg, "sessioncap_messages_total"); got != 4 {
		t.Fatalf("messages_total %v, want 4", got)
	}
}

func TestByteCap(t *testing.T) {
	const capBytes = 100_000
	tests := []struct {
		name    string
		overrun limits.Overrun
		msgs    []struct {
			size string
			body int
		}
		wantStage []string // per message, "" for accepted
		wantLast  string
		wantCode  uint16 // the SMTP code of the last reply
	}{
		{"SIZE predicts overflow at MAIL", limits.OverrunAccept,
			[]struct {
				size string
				body int
			}{{"SIZE=60000", 60000}, {"SIZE=60000", 60000}},
			[]string{"", "mail"}, "421 4.7.0 Message would exceed this session's data limit (limit 100000 bytes); reconnect to send it", 421},
		{"overrun accept takes the crossing message, then 421", limits.OverrunAccept,
			[]struct {
				size string
				body int
			}{{"", 60000}, {"", 60000}, {"", 10}},
			[]string{"", "", "mail"}, "421 4.7.0 Too much data in this session (limit 100000 bytes); reconnect to send more", 421},
		{"overrun tempfail answers 452 after the dot", limits.OverrunTempfail,
			[]struct {
				size string
				body int
			}{{"", 60000}, {"", 60000}},
			[]string{"", "eom"}, "452 4.3.1 Message exceeded this session's data limit (limit 100000 bytes); reconnect and send it again", 452},
		{"first message bigger than the cap is accepted", limits.OverrunTempfail,
			[]struct {
				size string
				body int
			}{{"SIZE=300000", 300000}, {"", 10}},
			[]string{"", "mail"}, "421 4.7.0 Too much data in this session (limit 100000 bytes); reconnect to send more", 421},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, rulesWith(func(r *limits.Rules) {
				r.Default.Session.MaxBytes = capBytes
				r.Default.Session.Overrun = tt.overrun
			}))
			m, _ := h.connect("192.0.2.11")
			var last *gomilter.Action
			for i, msg := range tt.msgs {
				act, stage := m.send(msg.size, 1, msg.body)
				if stage != tt.wantStage[i] {
					t.Fatalf("message %d: refused at %q (%v), want %q", i+1, stage, act, tt.wantStage[i])
				}
				last = act
			}
			wantReply(t, last, tt.wantCode, tt.wantLast)
		})
	}
}

func TestRecipientCap(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxRecipients = 3 }))
	m, _ := h.connect("192.0.2.12")
	if act, _ := m.send("", 2, 10); act != nil {
		t.Fatalf("first message: %v", act)
	}
	if _, err := m.s.Mail("a@example.org", ""); err != nil {
		t.Fatal(err)
	}
	if act, _ := m.s.Rcpt("b@example.net", ""); act.StopProcessing() {
		t.Fatalf("third recipient refused: %v", act)
	}
	act, err := m.s.Rcpt("c@example.net", "")
	if err != nil {
		t.Fatal(err)
	}
	wantReply(t, act, 452, "452 4.5.3 Too many recipients in this session (limit 3); send the rest in a new session")
	if got := h.refusals("session_recipients", "rcpt", "enforce"); got != 1 {
		t.Fatalf("counter %v", got)
	}
}

func TestFrequencyBanAndExpiry(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Frequency = limits.Frequency{MaxConnections: 3, Window: time.Minute, Ban: 10 * time.Minute}
	}))
	for i := 0; i < 3; i++ {
		if _, act := h.connect("198.51.100.7"); act.StopProcessing() {
			t.Fatalf("connection %d refused: %v", i+1, act)
		}
		h.clock.Add(time.Second)
	}
	_, act := h.connect("198.51.100.7")
	wantReply(t, act, 421, "421 4.7.0 Too many connections from your network (limit 3 per 1m); banned for 10m, try again later")
	h.clock.Add(time.Minute)
	_, act = h.connect("198.51.100.7")
	wantReply(t, act, 421, "421 4.7.0 Your network is temporarily banned for too many connections; try again in 9m")
	// other addresses are not affected
	if _, act := h.connect("198.51.100.8"); act.StopProcessing() {
		t.Fatalf("another address refused: %v", act)
	}
	h.clock.Add(9 * time.Minute)
	if _, act := h.connect("198.51.100.7"); act.StopProcessing() {
		t.Fatalf("after the ban: %v", act)
	}
	if h.refusals("frequency", "connect", "enforce") != 1 || h.refusals("banned", "connect", "enforce") != 1 {
		t.Fatal("frequency/banned counters wrong")
	}
	if got := value(t, h.reg, "sessioncap_bans_total", "mode", "enforce"); got != 1 {
		t.Fatalf("bans_total %v", got)
	}
	if !strings.Contains(h.logs.String(), `"msg":"banned"`) || !strings.Contains(h.logs.String(), `"origin":"frequency"`) {
		t.Fatalf("no ban log line with its origin in:\n%s", h.logs)
	}
	// the refusal line of a banned client names the ban's origin
	if !regexp.MustCompile(`"msg":"refused","client_ip":"198.51.100.7".*"limit":"banned".*"origin":"frequency"`).MatchString(h.logs.String()) {
		t.Fatalf("the refusal of the banned client does not name the ban's origin:\n%s", h.logs)
	}
	if _, err := h.store.Ban(t.Context(), "freq:198.51.100.9/32", time.Hour, "manual: ticket 9"); err != nil {
		t.Fatal(err)
	}
	// a manual ban has its own reply (replies.banned_manual), and its
	// refusal line no connection count and cap it has nothing to do with
	_, act = h.connect("198.51.100.9")
	wantReply(t, act, 421, "421 4.7.0 Your network is temporarily banned by the administrator of this server; try again in 1h")
	manual := regexp.MustCompile(`(?m)^.*"msg":"refused","client_ip":"198.51.100.9".*$`).FindString(h.logs.String())
	if !regexp.MustCompile(`"limit":"banned".*"origin":"manual"`).MatchString(manual) {
		t.Fatalf("the refusal of a manually banned client does not name the ban's origin:\n%s", h.logs)
	}
	if strings.Contains(manual, `"cap"`) || strings.Contains(manual, `"value"`) {
		t.Fatalf("the refusal of a manually banned client carries a cap and value of the frequency rule: %s", manual)
	}
}

func TestPrefixAggregationV6(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Frequency = limits.Frequency{MaxConnections: 2, Window: time.Minute, Ban: time.Minute}
	}))
	// three addresses of one /64 share a window
	for i, a := range []string{"2001:db8:1:2::1", "2001:db8:1:2::2"} {
		if _, act := h.connect(a); act.StopProcessing() {
			t.Fatalf("connection %d refused", i)
		}
	}
	if _, act := h.connect("2001:db8:1:2:ffff::9"); !act.StopProcessing() {
		t.Fatal("third address of the /64 was not refused")
	}
	if _, act := h.connect("2001:db8:1:3::1"); act.StopProcessing() {
		t.Fatal("another /64 was refused")
	}
}

func TestConcurrencyComesBackDown(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Concurrency = limits.Concurrency{MaxPerAddress: 2, MaxTotal: 3}
	}))
	active := func() float64 {
		return value(t, h.reg, "sessioncap_sessions_active")
	}
	a, _ := h.connect("203.0.113.1")
	b, _ := h.connect("203.0.113.1")
	_, act := h.connect("203.0.113.1")
	wantReply(t, act, 421, "421 4.7.0 Too many concurrent connections from your network (limit 2); try again later")
	c, _ := h.connect("203.0.113.2")
	_, act = h.connect("203.0.113.3")
	wantReply(t, act, 421, "421 4.7.0 Server busy (limit 3 concurrent sessions); try again later")

	// end sessions three ways: QUIT, a dropped milter connection mid-message,
	// and a reused milter connection (the MTA's "quit, new connection")
	_ = a.s.Close()
	if _, err := b.s.Mail("x@example.org", ""); err != nil {
		t.Fatal(err)
	}
	b.s.Rcpt("y@example.net", "")
	b.s.DataStart()
	b.s.HeaderField("From", "x", nil)
	if err := b.conn.Close(); err != nil { // as when the MTA process dies
		t.Fatal(err)
	}
	if err := c.s.Reset(gomilter.NewMacroBag()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "open-session counts to come back to 0", func() bool { return h.srv.OpenSessions() == 0 })
	// Reset keeps c's milter connection open, but its SMTP session ended; the
	// two refused sessions still count as active until their connections close.
	eventually(t, "sessions_active to drop to the 2 refused sessions", func() bool { return active() == 2 })
	for i := 0; i < 2; i++ {
		if _, act := h.connect("203.0.113.1"); act.StopProcessing() {
			t.Fatalf("after the sessions ended, connection %d refused: %v", i+1, act)
		}
	}
	// Connect is answered after it is counted: exactly the 2 refused
	// sessions and the 2 new ones, so an ended session counted down twice
	// (or not at all) shows here.
	if got := active(); got != 4 {
		t.Fatalf("sessions_active %v with 2 refused and 2 new sessions open, want 4", got)
	}
}

func TestExemptions(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Session.MaxMessages = 1
		r.Default.Concurrency.MaxPerAddress = 1
		r.ExemptNetworks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		r.ExemptAuthenticated = true
	}))
	a, _ := h.connect("10.1.1.1")
	b, act := h.connect("10.1.1.1")
	if act.StopProcessing() {
		t.Fatal("exempt network hit the concurrency cap")
	}
	for i := 0; i < 3; i++ {
		if act, _ := a.send("", 1, 10); act != nil {
			t.Fatalf("exempt network refused: %v", act)
		}
	}
	_ = b
	m, _ := h.connect("192.0.2.50")
	m.macros.Set(gomilter.MacroAuthAuthen, "alice")
	for i := 0; i < 3; i++ {
		if act, _ := m.send("", 1, 10); act != nil {
			t.Fatalf("authenticated session refused: %v", act)
		}
	}
	m.macros.Set(gomilter.MacroAuthAuthen, "")
	if act, stage := m.send("", 1, 10); stage != "mail" {
		t.Fatalf("unauthenticated transaction after 3 messages: %v at %q, want the message cap", act, stage)
	}
}

func TestMonitorMode(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Mode = limits.ModeMonitor
		r.Default.Session.MaxMessages = 1
		r.Default.Session.MaxRecipients = 1
		r.Default.Frequency = limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: time.Minute}
	}))
	h.connect("192.0.2.60")
	m, act := h.connect("192.0.2.60")
	if act.StopProcessing() {
		t.Fatalf("monitor refused at connect: %v", act)
	}
	for i := 0; i < 3; i++ {
		if act, stage := m.send("", 2, 10); act != nil {
			t.Fatalf("monitor refused at %s: %v", stage, act)
		}
	}
	checks := []struct {
		limit, stage string
		want         float64
	}{
		{"frequency", "connect", 1}, {"session_messages", "mail", 2}, {"session_recipients", "rcpt", 5},
	}
	for _, c := range checks {
		if got := h.refusals(c.limit, c.stage, "monitor"); got != c.want {
			t.Errorf("%s/%s monitor = %v, want %v", c.limit, c.stage, got, c.want)
		}
		if got := h.refusals(c.limit, c.stage, "enforce"); got != 0 {
			t.Errorf("%s/%s enforce = %v, want 0", c.limit, c.stage, got)
		}
	}
}

func TestSessionWithoutIP(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Session.MaxMessages = 1
		r.Default.Frequency = limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: time.Minute}
	}))
	for _, addr := range []string{"", "/var/run/local.sock", ""} {
		m, act := h.connect(addr)
		if act.StopProcessing() {
			t.Fatalf("session without IP (%q) refused at connect", addr)
		}
		if act, _ := m.send("", 1, 10); act != nil {
			t.Fatalf("first message: %v", act)
		}
		if _, stage := m.send("", 1, 10); stage != "mail" {
			t.Fatalf("session caps do not apply without an IP (stage %q)", stage)
		}
	}
	if st, _ := h.store.Stats(context.Background()); st.Tracked != 0 {
		t.Fatalf("sessions without IP were tracked: %+v", st)
	}
}

func TestMalformedInputNeverRefuses(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxBytes = 1000 }))
	m, _ := h.connect("192.0.2.70")
	for _, arg := range []string{"SIZE=abc", "SIZE=-5", "SIZE=99999999999999999999999", "SIZE=", "size=10 BODY=8BITMIME", "BODY=8BITMIME SIZE="} {
		if act, stage := m.send(arg, 1, 20); act != nil {
			t.Fatalf("%q: refused at %s: %v", arg, stage, act)
		}
		if act, stage := m.send("", 1, 20); act != nil {
			t.Fatalf("after %q: refused at %s: %v", arg, stage, act)
		}
	}
	if got := value(t, h.reg, "sessioncap_malformed_input_total", "what", "size_param"); got != 5 {
		t.Fatalf("malformed size counter %v, want 5", got)
	}
}

func TestNegotiatesOnlyWhatTheRulesNeed(t *testing.T) {
	h := start(t, limits.DefaultRules())
	m, _ := h.connect("192.0.2.80")
	for _, opt := range []gomilter.OptProtocol{gomilter.OptNoHelo, gomilter.OptNoData, gomilter.OptNoEOH, gomilter.OptNoUnknown, gomilter.OptNoHeaderReply, gomilter.OptNoBodyReply} {
		if !m.s.ProtocolOption(opt) {
			t.Errorf("defaults: %v not negotiated", opt)
		}
	}
	if m.s.ProtocolOption(gomilter.OptNoBody) || m.s.ProtocolOption(gomilter.OptNoRcptTo) || m.s.ProtocolOption(gomilter.OptNoMailReply) {
		t.Error("defaults: body, rcpt or MAIL replies switched off")
	}
	// after a reload without byte or recipient caps, new sessions skip those events
	if err := h.srv.SetRules(rulesWith(func(r *limits.Rules) {
		r.Default.Session.MaxBytes, r.Default.Session.MaxRecipients = 0, 0
	})); err != nil {
		t.Fatal(err)
	}
	m2, _ := h.connect("192.0.2.80")
	for _, opt := range []gomilter.OptProtocol{gomilter.OptNoBody, gomilter.OptNoHeaders, gomilter.OptNoRcptTo} {
		if !m2.s.ProtocolOption(opt) {
			t.Errorf("no byte/recipient cap: %v not negotiated", opt)
		}
	}
	if act, _ := m2.send("", 1, 100); act != nil {
		t.Fatalf("lean session: %v", act)
	}
}

func TestRefusalLogLine(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxMessages = 1 }))
	m, _ := h.connect("192.0.2.90")
	m.send("", 1, 10)
	m.send("", 1, 10)
	var found bool
	for _, line := range strings.Split(strings.TrimSpace(h.logs.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("bad log line %q: %v", line, err)
		}
		if rec["msg"] != "refused" {
			continue
		}
		found = true
		want := map[string]any{"level": "WARN", "client_ip": "192.0.2.90", "limit": "session_messages", "stage": "mail",
			"value": float64(1), "cap": float64(1), "mode": "enforce"}
		for k, v := range want {
			if rec[k] != v {
				t.Errorf("log %s = %v, want %v", k, rec[k], v)
			}
		}
		if _, ok := rec["queue_id"]; !ok {
			t.Error("log line has no queue_id key")
		}
	}
	if !found {
		t.Fatalf("no refusal logged:\n%s", h.logs)
	}
}

func TestMetricsExposition(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxMessages = 1 }))
	m, _ := h.connect("192.0.2.100")
	m.send("", 1, 500)
	m.send("", 1, 500)
	_ = m.s.Close()
	eventually(t, "session end", func() bool {
		return value(t, h.reg, "sessioncap_sessions_active") == 0
	})
	want := `
# HELP sessioncap_messages_total Messages accepted at end of message.
# TYPE sessioncap_messages_total counter
sessioncap_messages_total 1
# HELP sessioncap_message_bytes_total Header and body bytes of messages that reached end of message (counted only while a byte cap is configured).
# TYPE sessioncap_message_bytes_total counter
sessioncap_message_bytes_total 500
# HELP sessioncap_sessions_total SMTP sessions the MTA reported, refused ones included.
# TYPE sessioncap_sessions_total counter
sessioncap_sessions_total 1
# HELP sessioncap_sessions_active SMTP sessions open now.
# TYPE sessioncap_sessions_active gauge
sessioncap_sessions_active 0
`
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(want),
		"sessioncap_messages_total", "sessioncap_message_bytes_total", "sessioncap_sessions_total", "sessioncap_sessions_active"); err != nil {
		t.Fatal(err)
	}
	// every limit/stage/mode series exists from the start, at 0 unless hit
	n, err := testutil.GatherAndCount(h.reg, "sessioncap_refusals_total")
	if err != nil || n != 48 {
		t.Fatalf("refusal series: %d (%v), want 48 (16 limit/stage pairs × 3 modes)", n, err)
	}
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(`
# HELP sessioncap_malformed_input_total Macros or arguments from the MTA that could not be parsed and were ignored, by what (client_addr, size_param).
# TYPE sessioncap_malformed_input_total counter
sessioncap_malformed_input_total{what="client_addr"} 0
sessioncap_malformed_input_total{what="size_param"} 0
`), "sessioncap_malformed_input_total"); err != nil {
		t.Fatal(err)
	}
}

func TestStoreFailureLetsConnectionsThrough(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv, err := milter.NewServer(milter.Config{
		Rules: limits.DefaultRules(), Store: failingStore{}, Metrics: milter.NewMetrics(reg), Logger: slogJSON(&syncBuffer{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	h := &harness{t: t, addr: ln.Addr().String(), reg: reg}
	m, act := h.connect("192.0.2.110")
	if act.StopProcessing() {
		t.Fatalf("store failure refused the connection: %v", act)
	}
	if act, _ := m.send("", 1, 10); act != nil {
		t.Fatalf("message refused: %v", act)
	}
	if got := value(t, reg, "sessioncap_store_errors_total", "op", "hit"); got != 1 {
		t.Fatalf("store errors %v", got)
	}
}

// failingStore injects store faults.
type failingStore struct{}

func (failingStore) Hit(context.Context, string, int64, limits.Rate) (limits.Hit, error) {
	return limits.Hit{}, context.DeadlineExceeded
}

type recordingDialer struct {
	conn  net.Conn
	local net.Addr
}

func (d *recordingDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{Timeout: 5 * time.Second, LocalAddr: d.local}).Dial(network, addr)
	d.conn = c
	return c, err
}
