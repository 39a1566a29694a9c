package milter_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/sessioncap/sessioncap/limits"
)

// sendTagged runs one accepted transaction (one recipient, a small body)
// and returns the headers sessioncap added, as "Name: value".
func (m *mta) sendTagged() (added []string, eom *gomilter.Action) {
	m.t.Helper()
	if act, err := m.s.Mail("sender@example.org", ""); err != nil || act.StopProcessing() {
		m.t.Fatalf("mail: %v %v", act, err)
	}
	if act, err := m.s.Rcpt("rcpt@example.net", ""); err != nil || act.StopProcessing() {
		m.t.Fatalf("rcpt: %v %v", act, err)
	}
	if _, err := m.s.DataStart(); err != nil {
		m.t.Fatal(err)
	}
	if _, err := m.s.HeaderField("Subject", "test", nil); err != nil {
		m.t.Fatal(err)
	}
	if _, err := m.s.HeaderEnd(); err != nil {
		m.t.Fatal(err)
	}
	if _, err := m.s.BodyChunk([]byte("hello\r\n")); err != nil {
		m.t.Fatal(err)
	}
	mods, act, err := m.s.End()
	if err != nil {
		m.t.Fatalf("eom: %v", err)
	}
	_ = m.s.Abort(nil)
	for _, mod := range mods {
		if mod.Type == gomilter.ActionAddHeader {
			added = append(added, mod.HeaderName+": "+mod.HeaderValue)
		}
	}
	return added, act
}

// TestTagMode: limits in tag mode refuse nothing; every message of a
// session they would have refused gets one header per such limit, the
// refusals are counted with mode="tag", and a limit in enforce mode beside
// them still refuses.
func TestTagMode(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Frequency = limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: 0, Mode: limits.ModeTag}
		r.Default.Session = limits.Session{MaxMessages: 1, Mode: limits.ModeTag}
		r.Default.Concurrency = limits.Concurrency{MaxPerAddress: 1, Mode: limits.ModeEnforce}
		r.TagHeader = "X-Test-Cap"
	}))
	first, act := h.connect("192.0.2.10")
	if act.StopProcessing() {
		t.Fatalf("first connection: %v", act)
	}
	if !first.s.ActionOption(gomilter.OptAddHeader) {
		t.Fatal("tag mode configured but adding headers was not negotiated")
	}
	added, eom := first.sendTagged()
	if eom.Type != gomilter.ActionAccept || len(added) != 0 {
		t.Fatalf("first message: %v, headers %q", eom, added)
	}
	added, _ = first.sendTagged()
	if want := []string{"X-Test-Cap: limit=session_messages value=1 cap=1"}; strings.Join(added, "|") != strings.Join(want, "|") {
		t.Fatalf("second message: headers %q, want %q", added, want)
	}
	// concurrency is enforced: a second open session from the address is refused
	_, act = h.connect("192.0.2.10")
	wantReply(t, act, 421, "421 4.7.0 Too many concurrent connections from your network (limit 1); try again later")
	if err := first.s.Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "first session end", func() bool { return h.srv.OpenSessions() == 0 })

	// over the frequency cap (2 earlier connections in the window): tagged
	// at connect, so every message of the session gets the header
	m, act := h.connect("192.0.2.10")
	if act.StopProcessing() {
		t.Fatalf("tag mode refused at connect: %v", act)
	}
	for i, want := range [][]string{
		{"X-Test-Cap: limit=frequency value=2 cap=1"},
		{"X-Test-Cap: limit=frequency value=2 cap=1", "X-Test-Cap: limit=session_messages value=1 cap=1"},
		{"X-Test-Cap: limit=frequency value=2 cap=1", "X-Test-Cap: limit=session_messages value=2 cap=1"},
	} {
		added, eom := m.sendTagged()
		if eom.Type != gomilter.ActionAccept || strings.Join(added, "|") != strings.Join(want, "|") {
			t.Errorf("message %d: %v, headers %q, want %q", i+1, eom, added, want)
		}
	}
	for _, c := range []struct {
		limit, stage, mode string
		want               float64
	}{
		{"frequency", "connect", "tag", 2}, // the refused concurrency connection counted too
		{"session_messages", "mail", "tag", 3},
		{"concurrency_address", "connect", "enforce", 1},
		{"frequency", "connect", "enforce", 0},
	} {
		if got := h.refusals(c.limit, c.stage, c.mode); got != c.want {
			t.Errorf("refusals %s/%s/%s = %v, want %v", c.limit, c.stage, c.mode, got, c.want)
		}
	}
	if got := value(t, h.reg, "sessioncap_tag_headers_total"); got != 6 {
		t.Errorf("tag headers counted %v, want 6", got)
	}
	if !strings.Contains(h.logs.String(), `"msg":"tagged"`) || !strings.Contains(h.logs.String(), `"mode":"tag"`) {
		t.Errorf("no tag log line:\n%s", h.logs)
	}
}

// TestModesPerLimit: the top-level mode is the default of every table; each
// table's own mode wins, and "off" neither counts nor asks for the events.
func TestModesPerLimit(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Mode = limits.ModeMonitor
		r.Default.Frequency = limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: time.Minute, Mode: limits.ModeEnforce}
		r.Default.Session = limits.Session{MaxMessages: 1, MaxRecipients: 1}
	}))
	m, act := h.connect("192.0.2.20")
	if act.StopProcessing() {
		t.Fatal(act)
	}
	if m.s.ActionOption(gomilter.OptAddHeader) {
		t.Error("adding headers negotiated without any tag mode")
	}
	for i := 0; i < 2; i++ {
		if act, stage := m.send("", 2, 10); act != nil {
			t.Fatalf("session caps in monitor mode refused at %s: %v", stage, act)
		}
	}
	_, act = h.connect("192.0.2.20")
	wantReply(t, act, 421, "421 4.7.0 Too many connections from your network (limit 1 per 1m); banned for 1m, try again later")
	if got := h.refusals("session_messages", "mail", "monitor"); got != 1 {
		t.Errorf("session_messages monitor = %v, want 1", got)
	}
	if got := h.refusals("frequency", "connect", "enforce"); got != 1 {
		t.Errorf("frequency enforce = %v, want 1", got)
	}
	if got := value(t, h.reg, "sessioncap_bans_total", "mode", "enforce"); got != 1 {
		t.Errorf("bans enforce = %v, want 1", got)
	}

	// session caps off: nothing counted, recipients not asked for; the
	// ban (frequency off → top-level monitor) is only logged
	if err := h.srv.SetRules(rulesWith(func(r *limits.Rules) {
		r.Mode = limits.ModeMonitor
		r.Default.Frequency.Mode = limits.ModeOff
		r.Default.Session = limits.Session{MaxMessages: 1, MaxRecipients: 1, Mode: limits.ModeOff}
	})); err != nil {
		t.Fatal(err)
	}
	m2, act := h.connect("192.0.2.20")
	if act.StopProcessing() {
		t.Fatalf("banned prefix refused with the ban's mode monitor: %v", act)
	}
	if !m2.s.ProtocolOption(gomilter.OptNoRcptTo) {
		t.Error("recipients asked for with the session caps off")
	}
	for i := 0; i < 3; i++ {
		if act, stage := m2.send("", 1, 10); act != nil {
			t.Fatalf("session caps off refused at %s: %v", stage, act)
		}
	}
	if got := h.refusals("session_messages", "mail", "monitor"); got != 1 {
		t.Errorf("session_messages monitor = %v after mode off, want still 1", got)
	}
	if got := h.refusals("banned", "connect", "monitor"); got != 1 {
		t.Errorf("banned monitor = %v, want 1", got)
	}
	if got := h.refusals("frequency", "connect", "monitor"); got != 0 {
		t.Errorf("frequency counted with the rule off: %v", got)
	}
}

// TestTagNeedsAddHeader: an MTA that does not allow adding headers cannot
// serve rules with a tag mode; a connection negotiated before a reload to
// such rules keeps the rules it negotiated with.
func TestTagNeedsAddHeader(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) { r.Default.Session.MaxMessages = 1 }))
	c := gomilter.NewClient("tcp", h.addr, gomilter.WithReadTimeout(5*time.Second),
		gomilter.WithActions(gomilter.AllClientSupportedActionMasks&^gomilter.OptAddHeader))
	macros := gomilter.NewMacroBag()
	s, err := c.Session(macros)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := &mta{t: t, s: s, macros: macros}
	session := func() {
		if act, err := s.Conn("client.example", gomilter.FamilyInet, 40000, "192.0.2.30"); err != nil || act.StopProcessing() {
			t.Fatalf("conn: %v %v", act, err)
		}
		if _, err := s.Helo("client.example"); err != nil {
			t.Fatal(err)
		}
		if act, _ := m.send("", 1, 10); act != nil {
			t.Fatalf("first message: %v", act)
		}
	}
	session()
	if err := h.srv.SetRules(rulesWith(func(r *limits.Rules) {
		r.Default.Session = limits.Session{MaxMessages: 1, Mode: limits.ModeTag}
	})); err != nil {
		t.Fatal(err)
	}
	// the MTA reuses the milter connection for a new SMTP session
	if err := s.Reset(nil); err != nil {
		t.Fatal(err)
	}
	session()
	act, stage := m.send("", 1, 10)
	if stage != "mail" {
		t.Fatalf("second message: %v at %q, want the enforced cap of the previous rules", act, stage)
	}
	if !strings.Contains(h.logs.String(), "keeps the previous rules") {
		t.Errorf("no log line about keeping the previous rules:\n%s", h.logs)
	}
}

// TestDenyList: a client in [deny] networks gets the deny reply (5xx
// allowed) at connect, even when exempt; monitor mode lets it through.
func TestDenyList(t *testing.T) {
	deny := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/28")}
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Deny.Networks = deny
		r.ExemptNetworks = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	}))
	_, act := h.connect("192.0.2.5")
	wantReply(t, act, 554, "554 5.7.1 Access denied")
	if _, act := h.connect("192.0.2.50"); act.StopProcessing() {
		t.Fatalf("exempt client outside deny refused: %v", act)
	}
	if got := h.refusals("deny", "connect", "enforce"); got != 1 {
		t.Errorf("deny refusals %v, want 1", got)
	}
	if err := h.srv.SetRules(rulesWith(func(r *limits.Rules) {
		r.Deny = limits.Deny{Networks: deny, Mode: limits.ModeMonitor}
		r.Replies[limits.ReplyDeny] = limits.Reply{Code: 450, Enhanced: "4.7.1", Text: "Go away for now"}
	})); err != nil {
		t.Fatal(err)
	}
	if _, act := h.connect("192.0.2.5"); act.StopProcessing() {
		t.Fatalf("deny in monitor mode refused: %v", act)
	}
	if got := h.refusals("deny", "connect", "monitor"); got != 1 {
		t.Errorf("deny monitor refusals %v, want 1", got)
	}
}

// TestSenderNetworks: over a real milter connection, MAIL FROM of a domain
// already seen from max_networks networks is refused with 451 from a new
// network only; counted networks, the null sender, authenticated sessions
// and exempt domains go through.
func TestSenderNetworks(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.SenderNetworks.MaxNetworks = 1
		r.SenderNetworks.Window = time.Hour
		r.SenderNetworks.ExemptDomains = []string{"bigmail.example"}
	}))
	mail := func(addr, from, auth string) *gomilter.Action {
		t.Helper()
		m, act := h.connect(addr)
		if act.StopProcessing() {
			t.Fatalf("connect %s: %v", addr, act)
		}
		m.macros.Set(gomilter.MacroAuthAuthen, auth)
		act, err := m.s.Mail(from, "")
		if err != nil {
			t.Fatal(err)
		}
		_ = m.s.Close()
		return act
	}
	if act := mail("192.0.2.1", "<a@Example.org>", ""); act.StopProcessing() {
		t.Fatalf("first network: %v", act)
	}
	wantReply(t, mail("198.51.100.1", "<b@example.ORG>", ""), 451,
		"451 4.7.1 Mail from your sender domain comes from too many networks (limit 1 per 1h); try again later")
	for _, c := range []struct{ addr, from, auth string }{
		{"192.0.2.77", "<c@example.org>", ""},          // the counted /24
		{"198.51.100.1", "<>", ""},                     // null sender
		{"198.51.100.1", "<d@example.org>", "alice"},   // authenticated
		{"198.51.100.1", "<e@mx.bigmail.example>", ""}, // exempt domain
		{"198.51.100.1", "<f@other.example>", ""},      // another domain
	} {
		if act := mail(c.addr, c.from, c.auth); act.StopProcessing() {
			t.Errorf("%s from %s (auth %q): %v", c.from, c.addr, c.auth, act)
		}
	}
	if got := h.refusals("sender_networks", "mail", "enforce"); got != 1 {
		t.Errorf("refusals %v, want 1", got)
	}
	if !strings.Contains(h.logs.String(), `"sender_domain":"example.org"`) {
		t.Errorf("refusal line without the sender domain:\n%s", h.logs)
	}
}

// TestErrorsPerSession: rejected recipients ({rcpt_mailer} "error") and
// unknown commands count; after max_per_session of them the next RCPT or
// MAIL gets 421. The MTA is asked for them only while the rule is on.
func TestErrorsPerSession(t *testing.T) {
	h := start(t, limits.DefaultRules())
	m, _ := h.connect("192.0.2.40")
	if m.s.ProtocolOption(gomilter.OptRcptRej) || !m.s.ProtocolOption(gomilter.OptNoUnknown) {
		t.Error("rejected recipients or unknown commands asked for without the errors rule")
	}
	if err := h.srv.SetRules(rulesWith(func(r *limits.Rules) { r.Default.Errors.MaxPerSession = 3 })); err != nil {
		t.Fatal(err)
	}
	m, _ = h.connect("192.0.2.40")
	if !m.s.ProtocolOption(gomilter.OptRcptRej) || m.s.ProtocolOption(gomilter.OptNoUnknown) || !m.s.ProtocolOption(gomilter.OptNoUnknownReply) {
		t.Fatal("errors rule on: rejected recipients and unknown commands (without reply) not negotiated")
	}
	if act, err := m.s.Mail("a@example.org", ""); err != nil || act.StopProcessing() {
		t.Fatalf("mail: %v %v", act, err)
	}
	rcpt := func(mailer string) *gomilter.Action {
		t.Helper()
		m.macros.Set(gomilter.MacroRcptMailer, mailer)
		act, err := m.s.Rcpt("x@example.net", "")
		if err != nil {
			t.Fatal(err)
		}
		return act
	}
	for i := 0; i < 2; i++ {
		if act := rcpt("error"); act.StopProcessing() {
			t.Fatalf("rejected recipient %d: %v", i, act)
		}
	}
	if act := rcpt("local"); act.StopProcessing() {
		t.Fatalf("valid recipient after 2 errors: %v", act)
	}
	if _, err := m.s.Unknown("XFOO", nil); err != nil {
		t.Fatal(err)
	}
	wantReply(t, rcpt("local"), 421, "421 4.7.0 Too many errors in this session (limit 3); closing connection")
	if got := h.refusals("errors", "rcpt", "enforce"); got != 1 {
		t.Errorf("errors refusals %v, want 1", got)
	}
	// a new session starts from zero
	m2, _ := h.connect("192.0.2.40")
	if act, _ := m2.send("", 1, 10); act != nil {
		t.Fatalf("new session: %v", act)
	}
}

// TestErrorsAcrossSessions: rejected recipients of a prefix across
// sessions start a ban over max_per_window; the session that crossed it is
// refused at its next RCPT, and every new connection from the prefix at
// connect, until the ban ends.
func TestErrorsAcrossSessions(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Errors = limits.Errors{MaxPerWindow: 2, Window: time.Hour, Ban: 10 * time.Minute}
	}))
	session := func(addr string, rejected int) *mta {
		t.Helper()
		m, act := h.connect(addr)
		if act.StopProcessing() {
			t.Fatalf("connect: %v", act)
		}
		if act, err := m.s.Mail("a@example.org", ""); err != nil || act.StopProcessing() {
			t.Fatalf("mail: %v %v", act, err)
		}
		m.macros.Set(gomilter.MacroRcptMailer, "error")
		for i := 0; i < rejected; i++ {
			if _, err := m.s.Rcpt("nobody@example.net", ""); err != nil {
				t.Fatal(err)
			}
		}
		m.macros.Set(gomilter.MacroRcptMailer, "local")
		return m
	}
	session("192.0.2.41", 2)
	m := session("192.0.2.41", 1) // the third across sessions starts the ban
	act, err := m.s.Rcpt("someone@example.net", "")
	if err != nil {
		t.Fatal(err)
	}
	wantReply(t, act, 421, "421 4.7.0 Too many rejected recipients from your network (limit 2 per 1h); try again in 10m")
	_, act = h.connect("192.0.2.41")
	wantReply(t, act, 421, "421 4.7.0 Too many rejected recipients from your network (limit 2 per 1h); try again in 10m")
	if _, act := h.connect("192.0.2.42"); act.StopProcessing() {
		t.Fatalf("another address refused: %v", act)
	}
	bans, err := h.store.Bans(context.Background())
	if err != nil || len(bans) != 1 || bans[0].Key != "err:192.0.2.41/32" || bans[0].Origin != "errors" {
		t.Fatalf("bans %+v, %v", bans, err)
	}
	h.clock.Add(11 * time.Minute)
	if _, act := h.connect("192.0.2.41"); act.StopProcessing() {
		t.Fatalf("after the ban: %v", act)
	}
	if got := h.refusals("errors", "connect", "enforce"); got != 1 {
		t.Errorf("errors at connect %v, want 1", got)
	}
	if !strings.Contains(h.logs.String(), `"origin":"errors"`) {
		t.Errorf("no banned line with origin errors:\n%s", h.logs)
	}
}

// TestErrorsBanSurvivesPrefixReload: a reload that narrows the prefix
// length keeps an errors ban made under the old one, as it does frequency
// bans.
func TestErrorsBanSurvivesPrefixReload(t *testing.T) {
	rules := rulesWith(func(r *limits.Rules) {
		r.IPv4Prefix = 24
		r.Default.Errors = limits.Errors{MaxPerWindow: 1, Window: time.Hour, Ban: 10 * time.Minute}
	})
	h := start(t, rules)
	m, _ := h.connect("192.0.2.51")
	if act, err := m.s.Mail("a@example.org", ""); err != nil || act.StopProcessing() {
		t.Fatalf("mail: %v %v", act, err)
	}
	m.macros.Set(gomilter.MacroRcptMailer, "error")
	for i := 0; i < 2; i++ {
		if _, err := m.s.Rcpt("nobody@example.net", ""); err != nil {
			t.Fatal(err)
		}
	}
	if bans, _ := h.store.Bans(context.Background()); len(bans) != 1 || bans[0].Key != "err:192.0.2.0/24" {
		t.Fatalf("bans %+v, want the /24 banned for errors", bans)
	}
	h.reloadWithIPv4Prefix(rules, 32)
	h.clock.Add(time.Minute)
	_, act := h.connect("192.0.2.52")
	wantReply(t, act, 421, "421 4.7.0 Too many rejected recipients from your network (limit 1 per 1h); try again in 9m")
	h.clock.Add(9 * time.Minute)
	if _, act := h.connect("192.0.2.52"); act.StopProcessing() {
		t.Fatalf("after the old ban ended: %v", act)
	}
}

// TestOverrideOnUser: an override on an SMTP AUTH user changes the session
// caps from MAIL FROM on.
func TestOverrideOnUser(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Session.MaxMessages = 1
		o := limits.Override{Users: []string{"@example.org"}, Policy: r.Default}
		o.Policy.Session.MaxMessages = 3
		r.Overrides = []limits.Override{o}
	}))
	m, _ := h.connect("192.0.2.70")
	m.macros.Set(gomilter.MacroAuthAuthen, "alice@example.org")
	for i := 0; i < 3; i++ {
		if act, stage := m.send("", 1, 10); act != nil {
			t.Fatalf("message %d of the user: %v at %s", i+1, act, stage)
		}
	}
	if act, stage := m.send("", 1, 10); stage != "mail" {
		t.Fatalf("4th message: %v at %q, want the override's cap", act, stage)
	}
	m2, _ := h.connect("192.0.2.71")
	m2.macros.Set(gomilter.MacroAuthAuthen, "mallory@example.net")
	m2.send("", 1, 10)
	if act, stage := m2.send("", 1, 10); stage != "mail" {
		t.Fatalf("another user's 2nd message: %v at %q, want the default cap", act, stage)
	}
}
