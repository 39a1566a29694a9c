package limits

import (
	"net/netip"
	"strings"
	"testing"
)

func TestOverridesOnUsersAndSenders(t *testing.T) {
	r := DefaultRules()
	mk := func(f func(o *Override), maxMessages int64) Override {
		o := Override{Policy: r.Default}
		o.Policy.Session.MaxMessages = maxMessages
		f(&o)
		return o
	}
	r.Overrides = []Override{
		mk(func(o *Override) { o.Users = []string{"alice", "@relay.example"} }, 1),
		mk(func(o *Override) { o.SenderDomains = []string{"lists.example.net"} }, 2),
		mk(func(o *Override) { o.Networks = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")} }, 3),
	}
	a := netip.MustParseAddr("192.0.2.7")
	for _, c := range []struct {
		name string
		c    Client
		want int
	}{
		{"connect: users and senders unknown", Client{Addr: a, HasAddr: true}, 2},
		{"exact user", Client{Addr: a, HasAddr: true, Authenticated: true, User: "alice"}, 0},
		{"user is case-sensitive when exact", Client{Addr: a, HasAddr: true, Authenticated: true, User: "Alice"}, 2},
		{"@domain, any case", Client{Addr: a, HasAddr: true, Authenticated: true, User: "bob@Relay.Example"}, 0},
		{"@domain is a suffix, not a substring", Client{Addr: a, HasAddr: true, Authenticated: true, User: "bob@relay.example.evil"}, 2},
		{"sender domain", Client{Addr: a, HasAddr: true, SenderDomain: "lists.example.net"}, 1},
		{"sender subdomain", Client{Addr: a, HasAddr: true, SenderDomain: "a.lists.example.net"}, 1},
		{"other sender", Client{Addr: a, HasAddr: true, SenderDomain: "example.net"}, 2},
		{"first match wins", Client{Addr: a, HasAddr: true, Authenticated: true, User: "alice", SenderDomain: "lists.example.net"}, 0},
		{"nothing", Client{Addr: netip.MustParseAddr("198.51.100.1"), HasAddr: true}, -1},
	} {
		if got := r.OverrideFor(c.c); got != c.want {
			t.Errorf("%s: override %d, want %d", c.name, got, c.want)
		}
	}
	if _, _, _ = r.ForConnect(a); r.OverrideFor(Client{Addr: a, HasAddr: true}) != 2 {
		t.Error("ForConnect must not match users or senders")
	}
	if s, _ := r.ForClient(Client{Addr: a, HasAddr: true, Authenticated: true, User: "alice"}); s.MaxMessages != 1 {
		t.Errorf("ForClient: %+v", s)
	}
	if !r.Overrides[0].AfterConnect() || !r.Overrides[1].AfterConnect() || r.Overrides[2].AfterConnect() {
		t.Error("AfterConnect")
	}
}

// An override's store scope is its name, or a hash of what it matches:
// never its position, so inserting or removing another override keeps it;
// the order of its lists does not matter; what it matches does.
func TestOverrideScopeLasts(t *testing.T) {
	nets := func(s ...string) []netip.Prefix {
		var p []netip.Prefix
		for _, n := range s {
			p = append(p, netip.MustParsePrefix(n))
		}
		return p
	}
	yes := true
	relays := Override{Networks: nets("192.0.2.0/24", "198.51.100.0/24"), Users: []string{"b", "a"}}
	same := Override{Networks: nets("198.51.100.0/24", "192.0.2.0/24"), Users: []string{"a", "b"}}
	if relays.Scope() != same.Scope() || !strings.HasPrefix(relays.Scope(), "override-") || len(relays.Scope()) != len("override-")+12 {
		t.Fatalf("scopes %q and %q: the order of the lists must not matter", relays.Scope(), same.Scope())
	}
	for _, other := range []Override{
		{Networks: nets("192.0.2.0/24")},
		{Networks: relays.Networks, Users: relays.Users, Authenticated: &yes},
		{Networks: relays.Networks, Users: relays.Users, SenderDomains: []string{"example.org"}},
	} {
		if other.Scope() == relays.Scope() {
			t.Errorf("%+v has the scope of %+v", other, relays)
		}
	}
	named := relays
	named.Name = "relays"
	if named.Scope() != "override.relays" {
		t.Errorf("named: %q", named.Scope())
	}
	r := DefaultRules()
	r.Overrides = []Override{named, {Networks: nets("203.0.113.0/24")}}
	_, before, _ := r.ForConnect(netip.MustParseAddr("203.0.113.1"))
	r2 := DefaultRules()
	r2.Overrides = []Override{{Name: "new", Networks: nets("10.0.0.0/8")}, r.Overrides[1], named}
	_, after, _ := r2.ForConnect(netip.MustParseAddr("203.0.113.1"))
	if before != after || before == "" {
		t.Errorf("scope %q before an override was inserted, %q after", before, after)
	}
	if r.SameKeys(r2) || !r.SameKeys(r) {
		t.Error("SameKeys")
	}
	for _, bad := range []string{"a b", "a:b", "ü", string(make([]byte, 65))} {
		r2.Overrides[0].Name = bad
		if r2.Validate() == nil || ValidOverrideName(bad) {
			t.Errorf("name %q accepted", bad)
		}
	}
	r2.Overrides[0].Name = "relays"
	if err := r2.Validate(); err == nil || err.Error() != `limits: override name "relays" given twice` {
		t.Errorf("a name given twice: %v", err)
	}
}
