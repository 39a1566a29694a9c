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

// connectAt admits one connection at t0+at and returns its verdict.
func connectAt(w *Window, p Policy, at time.Duration) Verdict {
	return Admit(w, 0, 0, t0.Add(at), p, ModeEnforce).Verdict
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
			{5*time.Minute - time.Nanosecond, RefusedBanned},
			// not re-banned by the connections that caused the ban
			{5 * time.Minute, Admitted}, {5*time.Minute + 1, Admitted}, {5*time.Minute + 2, Admitted},
			{5*time.Minute + 3, RefusedFrequency},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w Window
			for i, h := range tt.hits {
				if got := connectAt(&w, p, h.at); got != h.want {
					t.Fatalf("hit %d at %v: verdict %d, want %d (window %+v)", i, h.at, got, h.want, w)
				}
			}
		})
	}
}

func TestBanDisabled(t *testing.T) {
	p := freqPolicy(1, time.Minute, 0)
	var w Window
	if v := connectAt(&w, p, 0); v != Admitted {
		t.Fatalf("first: %d", v)
	}
	if v := connectAt(&w, p, time.Second); v != RefusedFrequency {
		t.Fatalf("second: %d, want frequency refusal", v)
	}
	if w.Banned(t0.Add(2 * time.Second)) {
		t.Fatal("ban = 0 must not ban")
	}
}

func TestAdmissionReplies(t *testing.T) {
	p := freqPolicy(1, time.Minute, 5*time.Minute)
	var w Window
	connectAt(&w, p, 0)
	a := Admit(&w, 0, 0, t0.Add(time.Second), p, ModeEnforce)
	r := a.Refusal(p, DefaultReplies(), t0.Add(time.Second))
	want := "4.7.0 Too many connections from your network (limit 1 per 1m); banned for 5m, try again later"
	if r == nil || r.Limit != LimitFrequency || r.Reason() != want || r.Code != 421 || r.Value != 2 {
		t.Fatalf("got %+v, want %q", r, want)
	}
	a = Admit(&w, 0, 0, t0.Add(time.Minute+time.Second), p, ModeEnforce)
	r = a.Refusal(p, DefaultReplies(), t0.Add(time.Minute+time.Second))
	if r == nil || r.Limit != LimitBanned || r.Reason() != "4.7.0 Your network is temporarily banned for too many connections; try again in 4m" {
		t.Fatalf("banned reply: %+v", r)
	}
}

func TestConcurrency(t *testing.T) {
	p := Policy{Concurrency: Concurrency{MaxPerAddress: 2, MaxTotal: 10}}
	tests := []struct {
		active, total int64
		mode          Mode
		want          Verdict
		open          bool
	}{
		{0, 0, ModeEnforce, Admitted, true},
		{1, 5, ModeEnforce, Admitted, true},
		{2, 5, ModeEnforce, RefusedConcurrencyAddress, false},
		{1, 10, ModeEnforce, RefusedConcurrencyTotal, false},
		{2, 5, ModeMonitor, RefusedConcurrencyAddress, true},
	}
	for _, tt := range tests {
		var w Window
		a := Admit(&w, tt.active, tt.total, t0, p, tt.mode)
		if a.Verdict != tt.want || a.Open != tt.open {
			t.Errorf("active %d total %d %s: verdict %d open %v, want %d %v", tt.active, tt.total, tt.mode, a.Verdict, a.Open, tt.want, tt.open)
		}
	}
}

func TestMonitorModeKeepsState(t *testing.T) {
	p := freqPolicy(1, time.Minute, time.Minute)
	var w Window
	Admit(&w, 0, 0, t0, p, ModeMonitor)
	a := Admit(&w, 0, 0, t0.Add(time.Second), p, ModeMonitor)
	if a.Verdict != RefusedFrequency || !a.Open {
		t.Fatalf("monitor: verdict %d open %v; want the would-be refusal and an open session", a.Verdict, a.Open)
	}
	if a = Admit(&w, 0, 0, t0.Add(2*time.Second), p, ModeMonitor); a.Verdict != RefusedBanned || !a.Open {
		t.Fatalf("monitor during ban: verdict %d open %v", a.Verdict, a.Open)
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

	if _, exempt := r.ForConnect(in("10.1.2.3")); !exempt {
		t.Error("10.1.2.3 must be exempt at connect")
	}
	if _, exempt := r.ForTransaction(in("10.1.2.3"), true, false); !exempt {
		t.Error("10.1.2.3 must be exempt at MAIL")
	}
	if p, _ := r.ForConnect(in("192.0.2.9")); p.Frequency.MaxConnections != 9999 {
		t.Errorf("network override at connect: %d", p.Frequency.MaxConnections)
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
