package limits

import (
	"net/netip"
	"testing"
	"time"
)

// mapStore runs Apply over a map: the stores' primitive with a fake clock.
type mapStore struct {
	now     time.Time
	windows map[string]Window
	bans    map[string]int64
	calls   int
}

func newMapStore() *mapStore {
	return &mapStore{now: time.UnixMilli(1_800_000_000_000), windows: map[string]Window{}, bans: map[string]int64{}}
}

func (m *mapStore) hit(key string, n int64, r Rate) (Hit, error) {
	m.calls++
	w := m.windows[key]
	h, until := Apply(&w, m.bans[key], m.now.UnixMilli(), n, r)
	if until != 0 {
		m.bans[key] = until
	}
	if n > 0 || h.Crossed {
		m.windows[key] = w
	}
	return h, nil
}

func TestSenderDomain(t *testing.T) {
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"<Alice@Example.ORG>", "example.org", true},
		{"bob@sub.example.org.", "sub.example.org", true},
		{"<>", "", false},
		{"", "", false},
		{"postmaster", "", false},
		{"a@[192.0.2.1]", "", false},
		{"a@exa:mple.org", "", false},
		{"a@exa mple.org", "", false},
		{"a@ÉCOLE.fr", "école.fr", true},
		{"a@" + string(make([]byte, 254)), "", false},
	} {
		got, ok := SenderDomain(c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("SenderDomain(%q) = %q, %v; want %q, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

// TestSenderNetworks: a domain seen from max_networks networks is refused
// only from a new network; counted networks keep sending; a refused network
// stores nothing; the window slides; exempt domains and subdomains match.
func TestSenderNetworks(t *testing.T) {
	sn := DefaultSenderNetworks()
	sn.MaxNetworks, sn.Window = 2, time.Hour
	sn.ExemptDomains = []string{"bigmail.example"}
	m := newMapStore()
	replies := DefaultReplies()
	check := func(domain, addr string) *Refusal {
		t.Helper()
		r, err := sn.Check(domain, netip.MustParseAddr(addr), m.hit, replies)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, a := range []string{"192.0.2.1", "192.0.2.200", "198.51.100.7", "192.0.2.9"} { // two /24s
		if r := check("example.org", a); r != nil {
			t.Fatalf("%s: refused %v", a, r)
		}
	}
	r := check("example.org", "203.0.113.5")
	if r == nil || r.Limit != LimitSenderNetworks || r.Stage != StageMail || r.Value != 3 || r.Cap != 2 || r.Code != 451 {
		t.Fatalf("third network: %+v", r)
	}
	if r.Text != "Mail from your sender domain comes from too many networks (limit 2 per 1h); try again later" {
		t.Errorf("reply text %q", r.Text)
	}
	if len(m.windows) != 3 { // sdom + 2 pairs: the refused network is not stored
		t.Errorf("%d keys stored, want 3: %v", len(m.windows), m.windows)
	}
	if r := check("example.org", "203.0.113.5"); r == nil {
		t.Error("the refused network got through on retry")
	}
	if r := check("example.org", "198.51.100.99"); r != nil {
		t.Errorf("a counted network refused: %v", r)
	}
	if r := check("other.example", "203.0.113.5"); r != nil {
		t.Errorf("another domain refused: %v", r)
	}
	if r := check("mx.bigmail.example", "203.0.113.5"); r != nil {
		t.Fatal("exempt domains are the caller's to skip; Check counts them")
	} else if !sn.Exempt("mx.bigmail.example") || !sn.Exempt("bigmail.example") || sn.Exempt("notbigmail.example") {
		t.Error("Exempt matches the domain and its subdomains only")
	}
	// two windows later everything is forgotten
	m.now = m.now.Add(2 * time.Hour)
	if r := check("example.org", "203.0.113.5"); r != nil {
		t.Errorf("after the window: refused %v", r)
	}
	// at most three store calls per MAIL
	m.calls = 0
	check("new.example", "192.0.2.1")
	check("new.example", "192.0.2.1")
	if m.calls != 5 {
		t.Errorf("%d store calls for a new and a known pair, want 3 + 2", m.calls)
	}
	// an IPv6 client counts per /64
	for _, a := range []string{"2001:db8:1::1", "2001:db8:1::ffff", "2001:db8:2::1"} {
		if r := check("v6.example", a); r != nil {
			t.Fatalf("%s: %v", a, r)
		}
	}
	if r := check("v6.example", "2001:db8:3::1"); r == nil {
		t.Error("third /64 not refused")
	}
	sn.MaxNetworks = 0
	if r := check("v6.example", "2001:db8:4::1"); r != nil {
		t.Error("rule off, refused")
	}
}
