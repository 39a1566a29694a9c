package limits

import (
	"net/netip"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func freqPolicy(max int64, window, ban time.Duration) Policy {
	return Policy{Frequency: Frequency{MaxConnections: max, Window: window, Ban: ban}}
}

// key is what a store holds for one key: a window and the end of a ban.
type key struct {
	w     Window
	until int64
}

// connect applies one connection at t0+at through Apply, as a store does.
func (k *key) connect(p Policy, at time.Duration) Admission {
	h, until := Apply(&k.w, k.until, t0.Add(at).UnixMilli(), 1, p.Frequency.Rate())
	k.until = until
	return FrequencyVerdict(h)
}

func TestFrequencyWindow(t *testing.T) {
	p := freqPolicy(3, time.Minute, 5*time.Minute)
	type hit struct {
		at   time.Duration
		want Verdict
	}
	tests := []struct {
		name string
		hits []hit
	}{
		{"the crossing connection is refused and bans", []hit{
			{0, Admitted}, {time.Second, Admitted}, {2 * time.Second, Admitted},
			{3 * time.Second, RefusedFrequency}, {4 * time.Second, RefusedBanned},
		}},
		{"spread out connections stay under the cap", []hit{
			{0, Admitted}, {30 * time.Second, Admitted}, {61 * time.Second, Admitted},
			{100 * time.Second, Admitted}, {150 * time.Second, Admitted}, {200 * time.Second, Admitted},
		}},
		{"no burst at a fixed-window edge", []hit{
			// three at the end of one window, three at the start of the next:
			// a fixed window would admit all six.
			{57 * time.Second, Admitted}, {58 * time.Second, Admitted}, {59 * time.Second, Admitted},
			{61 * time.Second, RefusedFrequency},
		}},
		{"the previous window fades out as the window slides", []hit{
			{0, Admitted}, {1 * time.Second, Admitted}, {2 * time.Second, Admitted},
			// at 90s half of the previous window overlaps: 3*0.5 + 1 = 2.5 <= 3
			{90 * time.Second, Admitted},
			// at 91s: 3*(29/60) + 1 + 1 = 3.45 > 3
			{91 * time.Second, RefusedFrequency},
		}},
		{"an idle address starts over after two windows", []hit{
			{0, Admitted}, {1 * time.Second, Admitted}, {2 * time.Second, Admitted},
			{125 * time.Second, Admitted}, {126 * time.Second, Admitted}, {127 * time.Second, Admitted},
		}},
		{"ban expires and the window starts empty", []hit{
			{0, Admitted}, {0, Admitted}, {0, Admitted}, {0, RefusedFrequency},
			{5*time.Minute - time.Millisecond, RefusedBanned},
			// not re-banned by the connections that caused the ban
			{5 * time.Minute, Admitted}, {5*time.Minute + 1, Admitted}, {5*time.Minute + 2, Admitted},
			{5*time.Minute + 3, RefusedFrequency},
		}},
		{"a clock stepping back 30s is clamped, not a fresh window", []hit{
			{60 * time.Second, Admitted}, {61 * time.Second, Admitted}, {62 * time.Second, Admitted},
			{32 * time.Second, RefusedFrequency},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var k key
			for i, h := range tt.hits {
				if got := k.connect(p, h.at).Verdict; got != h.want {
					t.Fatalf("hit %d at %v: verdict %d, want %d (window %+v)", i, h.at, got, h.want, k.w)
				}
			}
		})
	}
}

func TestBanDisabled(t *testing.T) {
	p := freqPolicy(1, time.Minute, 0)
	var k key
	if v := k.connect(p, 0).Verdict; v != Admitted {
		t.Fatalf("first: %d", v)
	}
	a := k.connect(p, time.Second)
	if a.Verdict != RefusedFrequency || !a.BanUntil.IsZero() || k.until != 0 {
		t.Fatalf("second: %+v, want a frequency refusal without a ban", a)
	}
	r := a.Refusal(p, DefaultReplies())
	if r.Reply != ReplyFrequencyNoBan || r.Reason() != "4.7.0 Too many connections from your network (limit 1 per 1m); try again later" {
		t.Fatalf("reply %+v", r)
	}
}

func TestAdmissionReplies(t *testing.T) {
	p := freqPolicy(1, time.Minute, 5*time.Minute)
	var k key
	k.connect(p, 0)
	a := k.connect(p, time.Second)
	r := a.Refusal(p, DefaultReplies())
	want := "4.7.0 Too many connections from your network (limit 1 per 1m); banned for 5m, try again later"
	if r == nil || r.Limit != LimitFrequency || r.Reason() != want || r.Code != 421 || r.Value != 2 {
		t.Fatalf("got %+v, want %q", r, want)
	}
	a = k.connect(p, time.Minute+time.Second)
	r = a.Refusal(p, DefaultReplies())
	if r == nil || r.Limit != LimitBanned || r.Reason() != "4.7.0 Your network is temporarily banned for too many connections; try again in 4m" {
		t.Fatalf("banned reply: %+v", r)
	}
}

func TestConcurrency(t *testing.T) {
	c := Concurrency{MaxPerAddress: 2, MaxTotal: 10}
	tests := []struct {
		active, total int64
		want          Verdict
	}{
		{0, 0, Admitted},
		{1, 5, Admitted},
		{2, 5, RefusedConcurrencyAddress},
		{1, 10, RefusedConcurrencyTotal},
	}
	for _, tt := range tests {
		if v := c.Verdict(tt.active, tt.total); v != tt.want {
			t.Errorf("active %d total %d: verdict %d, want %d", tt.active, tt.total, v, tt.want)
		}
	}
}

func TestStoreKeys(t *testing.T) {
	for _, tt := range []struct{ kind, scope, prefix, key string }{
		{KeyFrequency, "", "192.0.2.0/24", "freq:192.0.2.0/24"},
		{KeyFrequency, "override2", "2001:db8::/64", "freq:override2:2001:db8::/64"},
	} {
		k := StoreKey(tt.kind, tt.scope, netip.MustParsePrefix(tt.prefix))
		if k != tt.key {
			t.Fatalf("StoreKey: %q, want %q", k, tt.key)
		}
		kind, scope, p, err := ParseStoreKey(k)
		if err != nil || kind != tt.kind || scope != tt.scope || p.String() != tt.prefix {
			t.Fatalf("ParseStoreKey(%q): %q %q %v %v", k, kind, scope, p, err)
		}
	}
	if _, _, _, err := ParseStoreKey("freq:nonsense"); err == nil {
		t.Fatal("ParseStoreKey accepted a key without a prefix")
	}
}

func TestKeyPrefixAggregation(t *testing.T) {
	r := DefaultRules()
	r.IPv4Prefix, r.IPv6Prefix = 24, 48
	tests := []struct{ addr, want string }{
		{"192.0.2.77", "192.0.2.0/24"},
		{"::ffff:192.0.2.77", "192.0.2.0/24"},
		{"2001:db8:1:2::5", "2001:db8:1::/48"},
		{"2001:db8:1:ffff::1", "2001:db8:1::/48"},
	}
	for _, tt := range tests {
		if got := r.Key(netip.MustParseAddr(tt.addr)).String(); got != tt.want {
			t.Errorf("Key(%s) = %s, want %s", tt.addr, got, tt.want)
		}
	}
	d := DefaultRules()
	if got := d.Key(netip.MustParseAddr("192.0.2.77")).String(); got != "192.0.2.77/32" {
		t.Errorf("default v4 key %s", got)
	}
	if got := d.Key(netip.MustParseAddr("2001:db8:1:2:3:4:5:6")).String(); got != "2001:db8:1:2::/64" {
		t.Errorf("default v6 key %s", got)
	}
}

func TestRulesResolution(t *testing.T) {
	yes, no := true, false
	r := DefaultRules()
	r.ExemptNetworks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	r.ExemptAuthenticated = false
	big := r.Default
	big.Session.MaxMessages = 1000
	big.Frequency.MaxConnections = 9999
	authed := r.Default
	authed.Session.MaxMessages = 500
	anon := r.Default
	anon.Session.MaxMessages = 7
	r.Overrides = []Override{
		{Networks: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, Policy: big},
		{Authenticated: &yes, Policy: authed},
		{Networks: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}, Authenticated: &no, Policy: anon},
	}
	in := func(s string) netip.Addr { return netip.MustParseAddr(s) }

	if _, _, exempt := r.ForConnect(in("10.1.2.3")); !exempt {
		t.Error("10.1.2.3 must be exempt at connect")
	}
	if _, exempt := r.ForTransaction(in("10.1.2.3"), true, false); !exempt {
		t.Error("10.1.2.3 must be exempt at MAIL")
	}
	if p, scope, _ := r.ForConnect(in("192.0.2.9")); p.Frequency.MaxConnections != 9999 || scope != r.Overrides[0].Scope() {
		t.Errorf("network override at connect: %d, scope %q", p.Frequency.MaxConnections, scope)
	}
	if _, scope, _ := r.ForConnect(in("198.51.100.1")); scope != "" {
		t.Errorf("default policy at connect: scope %q", scope)
	}
	// first match wins: the network override beats the authenticated one
	if s, _ := r.ForTransaction(in("192.0.2.9"), true, true); s.MaxMessages != 1000 {
		t.Errorf("first match: %d, want 1000", s.MaxMessages)
	}
	if s, _ := r.ForTransaction(in("198.51.100.1"), true, true); s.MaxMessages != 500 {
		t.Errorf("authenticated override: %d, want 500", s.MaxMessages)
	}
	if s, _ := r.ForTransaction(in("198.51.100.1"), true, false); s.MaxMessages != 100 {
		t.Errorf("default: %d, want 100", s.MaxMessages)
	}
	if s, _ := r.ForTransaction(in("2001:db8::1"), true, false); s.MaxMessages != 7 {
		t.Errorf("unauthenticated v6 override: %d, want 7", s.MaxMessages)
	}
	if s, _ := r.ForTransaction(in("2001:db8::1"), true, true); s.MaxMessages != 500 {
		t.Errorf("authenticated v6: %d, want 500 (the authenticated=false override must not match)", s.MaxMessages)
	}
	// a session without an IP matches no network override
	if s, _ := r.ForTransaction(netip.Addr{}, false, false); s.MaxMessages != 100 {
		t.Errorf("no-IP session: %d, want defaults", s.MaxMessages)
	}
	r.ExemptAuthenticated = true
	if _, exempt := r.ForTransaction(in("198.51.100.1"), true, true); !exempt {
		t.Error("exempt.authenticated must exempt an authenticated session")
	}
	if !r.NeedsBodies() || !r.NeedsRecipients() {
		t.Error("defaults need bodies and recipients")
	}
	r2 := DefaultRules()
	r2.Default.Session.MaxBytes, r2.Default.Session.MaxRecipients = 0, 0
	if r2.NeedsBodies() || r2.NeedsRecipients() {
		t.Error("no byte or recipient cap: neither is needed")
	}
	r2.Overrides = []Override{{Authenticated: &yes, Policy: r.Default}}
	if !r2.NeedsBodies() {
		t.Error("an override with a byte cap needs bodies")
	}
}
