package milter_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
	"github.com/sessioncap/sessioncap/milter"
)

// relayOverride is an override on cidr (named name, "" for none) whose
// clients are banned for an hour at their second connection.
func relayOverride(r *limits.Rules, name, cidr string) limits.Override {
	p := r.Default
	p.Frequency = limits.Frequency{MaxConnections: 1, Window: time.Hour, Ban: time.Hour}
	return limits.Override{Name: name, Networks: []netip.Prefix{netip.MustParsePrefix(cidr)}, Policy: p}
}

// banThrough bans addr through the frequency rule: two connections.
func (h *harness) banThrough(t *testing.T, addr string) {
	t.Helper()
	h.connect(addr)
	if _, act := h.connect(addr); !act.StopProcessing() {
		t.Fatalf("the second connection of %s was not refused", addr)
	}
}

// An override's bans and windows are keyed by what lasts (its name, or
// what it matches), never by its position: adding an override before
// others, or removing one, keeps the bans and windows of every other.
func TestAddingAnOverrideKeepsTheOthersBans(t *testing.T) {
	for _, name := range []string{"relays", ""} {
		t.Run("name="+name, func(t *testing.T) {
			h := start(t, rulesWith(func(r *limits.Rules) {
				r.Overrides = []limits.Override{relayOverride(r, name, "198.51.100.0/24"), relayOverride(r, "", "192.0.2.0/24")}
			}))
			h.banThrough(t, "198.51.100.7")
			h.connect("192.0.2.7") // one connection in the window of the second override
			after := rulesWith(func(r *limits.Rules) {
				r.Overrides = []limits.Override{relayOverride(r, "new", "203.0.113.0/24"), relayOverride(r, name, "198.51.100.0/24"), relayOverride(r, "", "192.0.2.0/24")}
			})
			if err := h.srv.SetRules(after); err != nil {
				t.Fatal(err)
			}
			h.clock.Add(time.Minute)
			if _, act := h.connect("198.51.100.7"); !act.StopProcessing() {
				t.Fatal("an override added before it lifted the ban of 198.51.100.7")
			}
			if _, act := h.connect("192.0.2.7"); !act.StopProcessing() {
				t.Fatal("an override added before it emptied the window of 192.0.2.7: its second connection was let in")
			}
			if keys := h.bannedKeys(t); len(keys) != 2 {
				t.Fatalf("bans %v, want 198.51.100.7 and 192.0.2.7", keys)
			}
		})
	}
}

// A reload that renames an override, or changes what an unnamed override
// matches, keeps the bans of its clients until they end (as a reload that
// changes the prefix lengths does).
func TestRenamingAnOverrideKeepsItsBans(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Overrides = []limits.Override{relayOverride(r, "relays", "198.51.100.0/24"), relayOverride(r, "", "192.0.2.0/24")}
	}))
	h.banThrough(t, "198.51.100.7")
	h.banThrough(t, "192.0.2.7")
	renamed := rulesWith(func(r *limits.Rules) {
		r.Overrides = []limits.Override{relayOverride(r, "partners", "198.51.100.0/24"), relayOverride(r, "", "192.0.0.0/16")}
	})
	if err := h.srv.SetRules(renamed); err != nil {
		t.Fatal(err)
	}
	h.clock.Add(time.Minute)
	for _, a := range []string{"198.51.100.7", "192.0.2.7"} {
		_, act := h.connect(a)
		wantReply(t, act, 421, "421 4.7.0 Your network is temporarily banned for too many connections; try again in 59m")
	}
	h.clock.Add(59 * time.Minute)
	for _, a := range []string{"198.51.100.7", "192.0.2.7"} {
		if _, act := h.connect(a); act.StopProcessing() {
			t.Fatalf("%s after its ban ended: %v", a, act)
		}
	}
}

// bannedKeys lists the keys banned in the store.
func (h *harness) bannedKeys(t *testing.T) []string {
	t.Helper()
	bans, err := h.store.Bans(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, b := range bans {
		keys = append(keys, b.Key)
	}
	return keys
}

// An errors ban of an override matched from MAIL FROM on (sender_domains)
// holds after a reload that renames the override, and after one that
// inserts another override before it.
func TestRenamingAMailOverrideKeepsItsErrorsBan(t *testing.T) {
	lists := func(r *limits.Rules, name string) limits.Override {
		o := limits.Override{Name: name, SenderDomains: []string{"example.org"}, Policy: r.Default}
		o.Policy.Errors = limits.Errors{MaxPerWindow: 2, Window: time.Hour, Ban: time.Hour}
		return o
	}
	h := start(t, rulesWith(func(r *limits.Rules) { r.Overrides = []limits.Override{lists(r, "lists")} }))
	harvest := func(rejected int) *gomilter.Action {
		t.Helper()
		m, act := h.connect("192.0.2.41")
		if act.StopProcessing() {
			t.Fatalf("connect refused: %v", act)
		}
		if act, err := m.s.Mail("a@example.org", ""); err != nil || act.StopProcessing() {
			return act
		}
		m.macros.Set(gomilter.MacroRcptMailer, "error")
		for range rejected {
			if _, err := m.s.Rcpt("nobody@example.net", ""); err != nil {
				t.Fatal(err)
			}
		}
		m.macros.Set(gomilter.MacroRcptMailer, "local")
		act, err := m.s.Rcpt("someone@example.net", "")
		if err != nil {
			t.Fatal(err)
		}
		return act
	}
	if act := harvest(3); act.SMTPCode != 421 {
		t.Fatalf("the session that crossed the window: %v, want 421", act)
	}
	for i, rules := range []*limits.Rules{
		rulesWith(func(r *limits.Rules) { r.Overrides = []limits.Override{lists(r, "mailing-lists")} }),
		rulesWith(func(r *limits.Rules) {
			r.Overrides = []limits.Override{relayOverride(r, "", "203.0.113.0/24"), lists(r, "mailing-lists")}
		}),
	} {
		if err := h.srv.SetRules(rules); err != nil {
			t.Fatal(err)
		}
		h.clock.Add(time.Minute)
		act := harvest(0)
		wantReply(t, act, 421, fmt.Sprintf("421 4.7.0 Too many rejected recipients from your network (limit 2 per 1h); try again in %dm", 59-i))
	}
}

// A restart with an override added before another keeps that other
// override's bans: the state file holds keys that do not depend on
// positions.
func TestRestartWithAnAddedOverrideKeepsBans(t *testing.T) {
	before := rulesWith(func(r *limits.Rules) { r.Overrides = []limits.Override{relayOverride(r, "", "198.51.100.0/24")} })
	h := start(t, before)
	h.banThrough(t, "198.51.100.7")
	var state bytes.Buffer
	if err := h.store.Save(&state, before.KeyWindows()); err != nil {
		t.Fatal(err)
	}
	after := rulesWith(func(r *limits.Rules) {
		r.Overrides = []limits.Override{relayOverride(r, "new", "203.0.113.0/24"), relayOverride(r, "", "198.51.100.0/24")}
	})
	h2 := startWith(t, after, func(c *milter.Config) {
		m := counters.NewMemory(counters.MemoryOptions{Now: c.Now})
		if _, bans, err := m.Load(&state); err != nil || bans != 1 {
			t.Fatalf("load: %d bans, %v", bans, err)
		}
		c.Store = m
	})
	h2.clock.Add(time.Minute)
	_, act := h2.connect("198.51.100.7")
	wantReply(t, act, 421, "421 4.7.0 Your network is temporarily banned for too many connections; try again in 59m")
}
