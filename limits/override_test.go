package limits

import (
	"net/netip"
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
