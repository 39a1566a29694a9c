package policy_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// TestDenyList: a client in [deny] networks gets the deny reply (the one
// 5xx) at every request of its session, even when it is also exempt; the
// refusal is logged and counted once per session; monitor mode only counts.
func TestDenyList(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Deny.Networks = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8:bad::/48")}
		r.ExemptNetworks = []netip.Prefix{netip.MustParsePrefix("192.0.2.128/25")}
	}))
	p := h.dial()
	for _, client := range []string{"192.0.2.5", "192.0.2.200", "2001:db8:bad::1"} {
		s := newSMTP(client, 100)
		for i := 0; i < 2; i++ {
			if a, st := p.send(s, 2, 100, 0); st != "RCPT" || a != "554 5.7.1 Access denied" {
				t.Fatalf("%s transaction %d: %s %q", client, i+1, st, a)
			}
		}
	}
	if got := h.refusals("deny", "connect", "enforce"); got != 3 {
		t.Fatalf("deny refusals = %v, want one per session (3)", got)
	}
	if !strings.Contains(h.logs.String(), `"msg":"refused","client_ip":"2001:db8:bad::1","queue_id":"","limit":"deny","stage":"connect","mode":"enforce","reply":"554 5.7.1 Access denied"`) {
		t.Fatalf("no deny log line:\n%s", h.logs)
	}
	if a, st := p.send(newSMTP("198.51.100.1", 100), 1, 100, 0); a != "" {
		t.Fatalf("client outside the deny list refused at %s: %s", st, a)
	}

	// monitor: counted and logged, not refused
	r := rulesWith(func(r *limits.Rules) {
		r.Deny = limits.Deny{Networks: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, Mode: limits.ModeMonitor}
	})
	if err := h.srv.SetRules(r); err != nil {
		t.Fatal(err)
	}
	if a, st := p.send(newSMTP("192.0.2.5", 101), 1, 100, 0); a != "" {
		t.Fatalf("deny in monitor mode refused at %s: %s", st, a)
	}
	if got := h.refusals("deny", "connect", "monitor"); got != 1 {
		t.Fatalf("monitor deny refusals = %v", got)
	}
}

// TestSenderNetworks: a sender domain seen from more than max_networks
// networks is refused only from networks not already counted for it, at the
// first RCPT and every later RCPT of that transaction; the null sender and
// authenticated sessions are not counted.
func TestSenderNetworks(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.SenderNetworks.MaxNetworks = 2
		r.SenderNetworks.Window = time.Hour
	}))
	p := h.dial()
	from := func(client, sender, sasl string, rcpts int) string {
		s := newSMTP(client, 100)
		s.sender, s.sasl = sender, sasl
		a, _ := p.send(s, rcpts, 100, 0)
		return a
	}
	const want = "451 4.7.1 Mail from your sender domain comes from too many networks (limit 2 per 1h); try again later"
	for _, c := range []string{"192.0.2.1", "198.51.100.1"} {
		if a := from(c, "news@Forged.Example", "", 1); a != "" {
			t.Fatalf("network of %s refused: %s", c, a)
		}
	}
	// a third network: refused at each RCPT, counted once
	if a := from("203.0.113.1", "x@forged.example", "", 3); a != want {
		t.Fatalf("third network: %q", a)
	}
	if got := h.refusals("sender_networks", "mail", "enforce"); got != 1 {
		t.Fatalf("refusals = %v, want 1", got)
	}
	if !strings.Contains(h.logs.String(), `"limit":"sender_networks","stage":"mail","value":3,"cap":2,"mode":"enforce","reply":"`+want+`","sender_domain":"forged.example","network":"203.0.113.0/24"`) {
		t.Fatalf("no refusal log line with the domain and network:\n%s", h.logs)
	}
	// the domain's own networks keep sending, other hosts in them too
	if a := from("198.51.100.77", "y@forged.example", "", 1); a != "" {
		t.Fatalf("counted network refused: %s", a)
	}
	// other domains, the null sender and authenticated senders are not affected
	for _, c := range [][3]string{{"203.0.113.1", "a@other.example", ""}, {"203.0.113.1", "", ""}, {"203.0.113.1", "x@forged.example", "alice"}} {
		if a := from(c[0], c[1], c[2], 1); a != "" {
			t.Fatalf("%q from %s (sasl %q) refused: %s", c[1], c[0], c[2], a)
		}
	}
	// the window passes: the domain starts over
	h.clock.Add(3 * time.Hour)
	if a := from("203.0.113.1", "x@forged.example", "", 1); a != "" {
		t.Fatalf("after the window: %s", a)
	}
}

// TestOverrideUsersAndSenderDomains: overrides on SMTP AUTH users and on
// MAIL FROM domains choose the session caps and their mode, first match
// first.
func TestOverrideUsersAndSenderDomains(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Session.MaxMessages = 3
		users := limits.Override{Users: []string{"@example.com"}, Policy: r.Default}
		users.Policy.Session.MaxMessages = 1
		bulk := limits.Override{SenderDomains: []string{"bulk.example"}, Policy: r.Default}
		bulk.Policy.Session.MaxMessages = 1
		bulk.Policy.Session.Mode = limits.ModeMonitor
		r.Overrides = []limits.Override{users, bulk}
	}))
	p := h.dial()
	const refused = "421 4.7.0 Too many messages in this session (limit 1); reconnect to send more"

	s := newSMTP("192.0.2.50", 100)
	s.sasl = "bob@Example.COM"
	p.send(s, 1, 100, 0)
	if a, _ := p.send(s, 1, 100, 0); a != refused {
		t.Fatalf("user override, 2nd message: %q", a)
	}

	// a user the override does not list gets the default caps
	s = newSMTP("192.0.2.51", 100)
	s.sasl = "carol@example.net"
	for i := 0; i < 3; i++ {
		if a, _ := p.send(s, 1, 100, 0); a != "" {
			t.Fatalf("other user, message %d: %s", i+1, a)
		}
	}

	// a sender domain (and its subdomains) in monitor mode: counted, not refused
	s = newSMTP("192.0.2.52", 100)
	s.sender = "list@news.bulk.example"
	for i := 0; i < 3; i++ {
		if a, _ := p.send(s, 1, 100, 0); a != "" {
			t.Fatalf("monitored sender domain, message %d: %s", i+1, a)
		}
	}
	if got := h.refusals("session_messages", "mail", "monitor"); got != 2 {
		t.Fatalf("monitor refusals = %v, want 2", got)
	}
	if got := h.refusals("session_messages", "mail", "enforce"); got != 1 {
		t.Fatalf("enforced refusals = %v, want 1", got)
	}
}

// TestFrequencyOffStillHonoursBans: with the frequency rule off nothing is
// counted and nobody is banned for connecting often, but a manual ban still
// holds (its refusal line names its origin), as on the milter.
func TestFrequencyOffStillHonoursBans(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Frequency = limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: time.Hour, Mode: limits.ModeOff}
	}))
	p := h.dial()
	for i := 0; i < 5; i++ {
		if a, st := p.send(newSMTP("192.0.2.60", 100), 1, 100, 0); a != "" {
			t.Fatalf("session %d refused at %s with the frequency rule off: %s", i+1, st, a)
		}
	}
	if got := value(t, h.reg, "sessioncap_bans_total", "mode", "enforce"); got != 0 {
		t.Fatalf("bans_total = %v with the frequency rule off", got)
	}
	if _, err := h.store.Ban(t.Context(), "freq:192.0.2.61/32", time.Hour, "manual: ticket 9"); err != nil {
		t.Fatal(err)
	}
	if a, _ := p.send(newSMTP("192.0.2.61", 100), 1, 100, 0); !strings.HasPrefix(a, "421 4.7.0 Your network is temporarily banned") {
		t.Fatalf("manually banned client: %q, want the ban reply", a)
	}
	if !strings.Contains(h.logs.String(), `"limit":"banned","stage":"connect"`) || !strings.Contains(h.logs.String(), `"origin":"manual"`) {
		t.Fatalf("no refusal line with the ban's origin:\n%s", h.logs)
	}
}
