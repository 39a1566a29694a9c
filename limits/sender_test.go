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
		r, err := sn.Check(domain, netip.MustParseAddr(addr), m.now, m.hit, replies)
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
	if len(m.windows) != 4 { // sdom, snew + 2 pairs: the refused network is not stored
		t.Errorf("%d keys stored, want 4: %v", len(m.windows), m.windows)
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
	// six store calls for a new network, one for a network seen in this
	// window, four for one seen in the previous window only
	m.calls = 0
	check("new.example", "192.0.2.1")
	check("new.example", "192.0.2.1")
	if m.calls != 7 {
		t.Errorf("%d store calls for a new and a known pair, want 6 + 1", m.calls)
	}
	m.calls = 0
	m.now = m.now.Add(time.Hour)
	check("new.example", "192.0.2.1")
	if m.calls != 4 {
		t.Errorf("%d store calls for a network of the previous window, want 4", m.calls)
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

// A domain's own networks that keep sending keep the domain counted: with
// max_networks = 2 and a 1h window, two servers that send every 10 minutes
// for hours still fill the two places, so a third network is refused at any
// time; and one steady server fills one place only, so a second network is
// let in. (The count once decayed to zero after two windows while its
// networks kept sending.)
func TestSenderNetworksKnownNetworksKeepTheDomainCounted(t *testing.T) {
	sn := DefaultSenderNetworks()
	sn.MaxNetworks, sn.Window = 2, time.Hour
	m := newMapStore()
	m.now = m.now.Add(17 * time.Minute) // not at a window's edge
	replies := DefaultReplies()
	check := func(domain, addr string) *Refusal {
		t.Helper()
		r, err := sn.Check(domain, netip.MustParseAddr(addr), m.now, m.hit, replies)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if check("example.org", "192.0.2.1") != nil || check("example.org", "198.51.100.1") != nil {
		t.Fatal("the domain's two servers refused")
	}
	if check("steady.example", "192.0.2.1") != nil {
		t.Fatal("steady.example refused")
	}
	for i := 1; i <= 36; i++ { // six hours, every 10 minutes
		m.now = m.now.Add(10 * time.Minute)
		if r := check("example.org", "192.0.2.1"); r != nil {
			t.Fatalf("after %dm: a counted server refused: %v", 10*i, r)
		}
		if r := check("example.org", "198.51.100.1"); r != nil {
			t.Fatalf("after %dm: a counted server refused: %v", 10*i, r)
		}
		if check("steady.example", "192.0.2.1") != nil {
			t.Fatalf("after %dm: steady.example's server refused", 10*i)
		}
		if r := check("example.org", "203.0.113.1"); r == nil || r.Value != 3 || r.Cap != 2 {
			t.Fatalf("after %dm: a third network of example.org: %+v, want refused with value 3", 10*i, r)
		}
	}
	if r := check("steady.example", "198.51.100.1"); r != nil {
		t.Fatalf("one steady server took both places of steady.example: %v", r)
	}
	if r := check("steady.example", "203.0.113.1"); r == nil {
		t.Fatal("a third network of steady.example let in")
	}
	// when its servers stop, the domain is forgotten within two windows
	m.now = m.now.Add(2 * time.Hour)
	if r := check("example.org", "203.0.113.1"); r != nil {
		t.Fatalf("two windows after the last mail: refused %v", r)
	}
}

// The networks counted within the window are those of the previous fixed
// window and those new in this one: a domain cannot get max_networks new
// networks in every window while the earlier ones still count.
func TestSenderNetworksCountsThePreviousWindow(t *testing.T) {
	sn := DefaultSenderNetworks()
	sn.MaxNetworks, sn.Window = 3, time.Hour
	m := newMapStore()
	replies := DefaultReplies()
	check := func(addr string) *Refusal {
		t.Helper()
		r, err := sn.Check("example.org", netip.MustParseAddr(addr), m.now, m.hit, replies)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	m.now = m.now.Add(50 * time.Minute)
	if check("192.0.2.1") != nil || check("198.51.100.1") != nil {
		t.Fatal("first two networks refused")
	}
	m.now = m.now.Add(20 * time.Minute) // the next fixed window, 20 minutes later
	if check("203.0.113.1") != nil {
		t.Fatal("the third network refused")
	}
	if r := check("203.0.114.1"); r == nil || r.Value != 4 {
		t.Fatalf("a fourth network 20 minutes after the first two: %+v, want refused with value 4", r)
	}
}

// KeyWindows gives each key kind the longest window a rule counts it under,
// the sender-networks keys included (two rule windows: see keyRate).
func TestKeyWindows(t *testing.T) {
	r := DefaultRules()
	r.Default.Errors = Errors{MaxPerWindow: 5, Window: time.Hour, Ban: time.Hour}
	o := Override{Policy: r.Default}
	o.Policy.Frequency.Window = 10 * time.Minute
	r.Overrides = []Override{o}
	r.SenderNetworks.MaxNetworks = 3
	got := r.KeyWindows()
	want := map[string]time.Duration{"freq": 10 * time.Minute, "err": time.Hour, "snet": 48 * time.Hour, "sdom": 48 * time.Hour, "snew": 48 * time.Hour}
	if len(got) != len(want) {
		t.Fatalf("%v, want %v", got, want)
	}
	for k, d := range want {
		if got[k] != d {
			t.Errorf("%s: %v, want %v", k, got[k], d)
		}
	}
}

// A window under the stores' 1ms unit neither divides by zero nor refuses
// a domain's first network.
func TestSenderNetworksSubMillisecondWindow(t *testing.T) {
	sn := DefaultSenderNetworks()
	sn.MaxNetworks, sn.Window = 1, 500*time.Microsecond
	m := newMapStore()
	if r, err := sn.Check("example.org", netip.MustParseAddr("192.0.2.1"), m.now, m.hit, DefaultReplies()); r != nil || err != nil {
		t.Fatalf("first network: %v %v", r, err)
	}
}
