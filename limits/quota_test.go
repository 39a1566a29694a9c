package limits

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// quotaStore is the memory store's batch in miniature: windows by key,
// ApplyQuotas under an injected clock.
type quotaStore map[string]*QuotaWindow

func (st quotaStore) run(ops []QuotaOp, now time.Time) []QuotaUse {
	ws := make([]QuotaWindow, len(ops))
	for i, op := range ops {
		if w := st[op.Key]; w != nil {
			ws[i] = *w
		}
	}
	uses := ApplyQuotas(ws, ops, now.UnixMilli())
	for i, op := range ops {
		w := ws[i]
		st[op.Key] = &w
	}
	return uses
}

var q0 = time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC)

func quotaRules(qs ...Quota) *Rules {
	r := DefaultRules()
	r.Quotas = qs
	return r
}

func TestQuotaCountKinds(t *testing.T) {
	alice := QuotaSubject{Client: Client{Addr: netip.MustParseAddr("192.0.2.1"), HasAddr: true, Authenticated: true, User: "alice"}, Sender: "Alice@Example.COM"}
	for _, c := range []struct {
		name  string
		q     Quota
		stage Stage
		size  int64
		// each message: checked at stage, then (when let through) counted
		// at end of message with msgSize bytes
		msgSize    int64
		wantPassed int // messages let through at q0 out of 10
	}{
		{"messages per user", Quota{Name: "u", Key: QuotaUser, Count: CountMessages, Limit: 3, Window: time.Hour}, StageMail, -1, 100, 3},
		{"bytes per sender, SIZE= predicted", Quota{Name: "b", Key: QuotaSender, Count: CountBytes, Limit: 1000, Window: time.Hour}, StageMail, 300, 300, 3},
		{"bytes per sender, no SIZE: counted at EOM", Quota{Name: "b", Key: QuotaSender, Count: CountBytes, Limit: 1000, Window: time.Hour}, StageMail, -1, 300, 4},
		{"bytes, message bigger than the quota: the first passes", Quota{Name: "b", Key: QuotaSenderDomain, Count: CountBytes, Limit: 1000, Window: time.Hour}, StageMail, 5000, 5000, 1},
		{"messages per network", Quota{Name: "n", Key: QuotaNetwork, Count: CountMessages, Limit: 5, Window: time.Minute}, StageMail, -1, 1, 5},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := quotaRules(c.q)
			st := quotaStore{}
			passed := 0
			for range 10 {
				checks := r.QuotaChecks(nil, c.stage, alice, c.size)
				if len(checks) != 1 {
					t.Fatalf("%d checks, want 1", len(checks))
				}
				u := st.run([]QuotaOp{checks[0].Op}, q0)
				if u[0].Refused {
					ref := checks[0].Refusal(c.stage, u[0])
					if ref.Code != 451 || ref.Enhanced != "4.7.1" || !strings.Contains(ref.Text, c.q.Name) || !strings.Contains(ref.Text, "try again in") {
						t.Errorf("refusal %v", ref)
					}
					continue
				}
				passed++
				st.run(r.QuotaCounts(nil, alice, nil, c.msgSize, 0), q0)
			}
			if passed != c.wantPassed {
				t.Errorf("%d passed, want %d", passed, c.wantPassed)
			}
		})
	}
}

func TestQuotaRecipients(t *testing.T) {
	r := quotaRules(
		Quota{Name: "rcpt-per-user", Key: QuotaUser, Count: CountRecipients, Limit: 3, Window: time.Hour, Mode: ModeEnforce},
		Quota{Name: "mailbox", Key: QuotaRecipient, Count: CountMessages, Limit: 2, Window: time.Hour},
	)
	st := quotaStore{}
	s := QuotaSubject{Client: Client{Authenticated: true, User: "bob"}, Sender: "bob@example.org"}
	rcpt := func(to string) (refused string) {
		s.Recipient = to
		checks := r.QuotaChecks(nil, StageRcpt, s, -1)
		ops := make([]QuotaOp, len(checks))
		for i := range checks {
			ops[i] = checks[i].Op
		}
		for i, u := range st.run(ops, q0) {
			if u.Refused {
				ref := checks[i].Refusal(StageRcpt, u)
				return ref.Error()
			}
		}
		return ""
	}
	// recipient key: two messages to X@, the third is refused 450 4.2.1
	for i := range 2 {
		if got := rcpt("X@Example.net"); got != "" {
			t.Fatalf("message %d: %s", i, got)
		}
		st.run(r.QuotaCounts(nil, s, []string{"X@Example.net"}, 10, 0), q0)
	}
	// user bob has counted 2 recipients of his 3
	if got := rcpt("x@example.NET"); !strings.HasPrefix(got, "450 4.2.1 ") || !strings.Contains(got, "mailbox") {
		t.Fatalf("third to the mailbox: %q", got)
	}
	// the refused RCPT was not counted against bob (the batch is atomic)
	if got := rcpt("y@example.net"); got != "" {
		t.Fatalf("bob's third recipient: %q", got)
	}
	if got := rcpt("z@example.net"); !strings.HasPrefix(got, "451 4.7.1 ") || !strings.Contains(got, "rcpt-per-user") {
		t.Fatalf("bob's fourth recipient: %q", got)
	}
}

func TestQuotaWindowSlidesAndNeverLoops(t *testing.T) {
	r := quotaRules(Quota{Name: "disk", Key: QuotaNetwork, Count: CountBytes, Limit: 1000, Window: time.Hour})
	s := QuotaSubject{Client: Client{Addr: netip.MustParseAddr("198.51.100.9"), HasAddr: true}}
	st := quotaStore{}
	try := func(now time.Time, size int64) bool {
		c := r.QuotaChecks(nil, StageMail, s, size)[0]
		u := st.run([]QuotaOp{c.Op}, now)
		if u[0].Refused {
			return false
		}
		st.run(r.QuotaCounts(nil, s, nil, size, 0), now)
		return true
	}
	// a 5000-byte message against a 1000-byte quota passes on an unused key
	if !try(q0, 5000) {
		t.Fatal("a lone message on an unused key was refused")
	}
	// then every message is refused until the next fixed window starts …
	for _, d := range []time.Duration{time.Minute, 30 * time.Minute, time.Hour - time.Second} {
		if try(q0.Add(d), 10) {
			t.Fatalf("a message at +%s passed", d)
		}
		if try(q0.Add(d), 5000) {
			t.Fatalf("a big message at +%s passed", d)
		}
	}
	// … where a big message passes again: delayed at most one window
	if !try(q0.Add(time.Hour), 5000) {
		t.Fatal("the big message was refused a window later")
	}
	// a small one now waits until the decayed window leaves room:
	// 5000×(1-x)+5000 + 10 > 1000 for the whole next window
	if try(q0.Add(time.Hour+time.Minute), 10) {
		t.Fatal("small message passed while the window is full")
	}
	if !try(q0.Add(3*time.Hour), 10) {
		t.Fatal("small message refused after two windows")
	}
}

func TestQuotaRetryIn(t *testing.T) {
	op := QuotaOp{Window: time.Hour, Limit: 10, Need: 1}
	// 10 counted at the window's start: full until the next fixed window,
	// then the previous window decays; one fits when 10×(1-x) ≤ 9, x = 0.1
	u := QuotaUse{Window: QuotaWindow{Start: q0.UnixMilli(), Curr: 10}, Now: q0.Add(10 * time.Minute).UnixMilli()}
	if got, want := RetryIn(u, op), 50*time.Minute+6*time.Minute; got != want {
		t.Errorf("retry %s, want %s", got, want)
	}
	// the retry is when the check passes: not a millisecond before
	w := u.Window
	at := q0.Add(66 * time.Minute).UnixMilli()
	if est := w.Roll(at, op.Window.Milliseconds()); QuotaRefuses(w, est, op) {
		t.Errorf("still refused at the retry time (est %v)", est)
	}
	w = u.Window
	if est := w.Roll(at-1000, op.Window.Milliseconds()); !QuotaRefuses(w, est, op) {
		t.Errorf("passes a second before the retry time (est %v)", est)
	}
}

func TestQuotaKeys(t *testing.T) {
	r := quotaRules()
	r.IPv4Prefix = 24
	a := netip.MustParseAddr("192.0.2.77")
	for _, c := range []struct {
		name   string
		q      Quota
		s      QuotaSubject
		want   string
		counts bool
	}{
		{"network prefix", Quota{Key: QuotaNetwork}, QuotaSubject{Client: Client{Addr: a, HasAddr: true}}, "192.0.2.0/24", true},
		{"no address", Quota{Key: QuotaNetwork}, QuotaSubject{}, "", false},
		{"user as given", Quota{Key: QuotaUser}, QuotaSubject{Client: Client{Authenticated: true, User: "Alice@x"}}, "Alice@x", true},
		{"no SASL user skips", Quota{Key: QuotaUser}, QuotaSubject{Sender: "a@b"}, "", false},
		{"sender lowercased", Quota{Key: QuotaSender}, QuotaSubject{Sender: "<A@B.Example>"}, "a@b.example", true},
		{"null sender not counted", Quota{Key: QuotaSender}, QuotaSubject{Sender: ""}, "", false},
		{"sender domain", Quota{Key: QuotaSenderDomain}, QuotaSubject{Sender: "a@B.Example"}, "b.example", true},
		{"null sender, domain", Quota{Key: QuotaSenderDomain}, QuotaSubject{}, "", false},
		{"recipient lowercased", Quota{Key: QuotaRecipient}, QuotaSubject{Recipient: "<Box@Example.ORG>"}, "box@example.org", true},
		{"only authenticated", Quota{Key: QuotaSender, Only: OnlyAuthenticated}, QuotaSubject{Sender: "a@b"}, "", false},
		{"only unauthenticated", Quota{Key: QuotaSender, Only: OnlyUnauthenticated}, QuotaSubject{Client: Client{Authenticated: true, User: "u"}, Sender: "a@b"}, "", false},
		{"exempt network", Quota{Key: QuotaSender, ExemptNetworks: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}, QuotaSubject{Client: Client{Addr: a, HasAddr: true}, Sender: "a@b"}, "", false},
		{"exempt user by domain", Quota{Key: QuotaUser, ExemptUsers: []string{"@relay.example"}}, QuotaSubject{Client: Client{Authenticated: true, User: "x@relay.example"}}, "", false},
	} {
		got, ok := r.QuotaKeyValue(&c.q, c.s)
		if got != c.want || ok != c.counts {
			t.Errorf("%s: %q %v, want %q %v", c.name, got, ok, c.want, c.counts)
		}
	}
	if k := QuotaStoreKey("user-hourly", QuotaUser, "alice"); k != "quota:user-hourly:user:alice" {
		t.Errorf("store key %q", k)
	}
}

func TestQuotaOverrides(t *testing.T) {
	r := quotaRules(Quota{Name: "user-hourly", Key: QuotaUser, Count: CountMessages, Limit: 2, Window: time.Hour})
	r.Overrides = []Override{
		{Users: []string{"big@example.com"}, Policy: r.Default, Quotas: []QuotaOverride{{Name: "user-hourly", Limit: 5}}},
		{Users: []string{"quiet@example.com"}, Policy: r.Default, Quotas: []QuotaOverride{{Name: "user-hourly", Mode: ModeMonitor}}},
		{Users: []string{"off@example.com"}, Policy: r.Default, Quotas: []QuotaOverride{{Name: "user-hourly", Mode: ModeOff}}},
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		user   string
		passed int
		mode   Mode
		checks int
	}{
		{"small@example.com", 2, ModeEnforce, 1},
		{"big@example.com", 5, ModeEnforce, 1},
		{"quiet@example.com", 2, ModeMonitor, 1},
		{"off@example.com", 0, "", 0},
	} {
		st := quotaStore{}
		s := QuotaSubject{Client: Client{Authenticated: true, User: c.user}}
		passed := 0
		for range 10 {
			checks := r.QuotaChecks(nil, StageMail, s, -1)
			if len(checks) != c.checks {
				t.Fatalf("%s: %d checks", c.user, len(checks))
			}
			if len(checks) == 0 {
				break
			}
			if checks[0].Mode != c.mode || checks[0].Op.Hard != (c.mode == ModeEnforce) {
				t.Errorf("%s: mode %s hard %v", c.user, checks[0].Mode, checks[0].Op.Hard)
			}
			if !st.run([]QuotaOp{checks[0].Op}, q0)[0].Refused {
				passed++
				st.run(r.QuotaCounts(nil, s, nil, 1, 0), q0)
			}
		}
		if passed != c.passed {
			t.Errorf("%s: %d passed, want %d", c.user, passed, c.passed)
		}
	}
	r.Overrides[0].Quotas[0].Name = "nope"
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), `override.rate "nope" names no rate`) {
		t.Errorf("validate: %v", err)
	}
}

func TestQuotaReplies(t *testing.T) {
	if _, err := ParseQuotaReply("451 4.7.1 {rule}: {value} of {cap} per {window}; retry in {retry}"); err != nil {
		t.Error(err)
	}
	if _, err := ParseQuotaReply("550 5.7.1 over {rule}"); err == nil || !strings.Contains(err.Error(), "not 4xx") {
		t.Errorf("5xx: %v", err)
	}
	if _, err := ParseQuotaReply("451 4.7.1 over {who}"); err == nil || !strings.Contains(err.Error(), "{retry}") {
		t.Errorf("unknown placeholder: %v", err)
	}
	q := &Quota{Name: "mailbox", Key: QuotaRecipient, Count: CountMessages}
	if r := DefaultQuotaReply(q); r.Code != 450 || r.Enhanced != "4.2.1" {
		t.Errorf("recipient default %v", r)
	}
}
