package milter_test

import (
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/sessioncap/sessioncap/limits"
)

// TestErrorsBanOfMailOverrideHoldsInLaterSessions: an [override.errors]
// window on an override matched from MAIL FROM on (here sender_domains)
// bans the prefix that crossed it, and the ban holds in the sessions it
// reconnects with: 421 at MAIL when the override applies again. A session
// of that prefix under another policy (another sender domain) is not
// refused by the override's ban.
func TestErrorsBanOfMailOverrideHoldsInLaterSessions(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		o := limits.Override{SenderDomains: []string{"example.org"}, Policy: r.Default}
		o.Policy.Errors = limits.Errors{MaxPerWindow: 2, Window: time.Hour, Ban: time.Hour}
		r.Overrides = []limits.Override{o}
	}))
	harvest := func(from string, rejected int) *gomilter.Action {
		t.Helper()
		m, act := h.connect("192.0.2.41")
		if act.StopProcessing() {
			t.Fatalf("connect refused: %v", act)
		}
		act, err := m.s.Mail(from, "")
		if err != nil {
			t.Fatal(err)
		}
		if act.StopProcessing() {
			return act
		}
		m.macros.Set(gomilter.MacroRcptMailer, "error")
		for i := 0; i < rejected; i++ {
			if _, err := m.s.Rcpt("nobody@example.net", ""); err != nil {
				t.Fatal(err)
			}
		}
		m.macros.Set(gomilter.MacroRcptMailer, "local")
		if act, err = m.s.Rcpt("someone@example.net", ""); err != nil {
			t.Fatal(err)
		}
		return act
	}
	if act := harvest("a@example.org", 3); !act.StopProcessing() || act.SMTPCode != 421 {
		t.Fatalf("the session that crossed the window: RCPT answered %v, want 421", act)
	}
	h.clock.Add(time.Minute)
	act := harvest("b@example.org", 0)
	wantReply(t, act, 421, "421 4.7.0 Too many rejected recipients from your network (limit 2 per 1h); try again in 59m")
	if got := h.refusals("errors", "mail", "enforce"); got != 1 {
		t.Errorf("errors refusals at mail = %v, want 1", got)
	}
	if act := harvest("c@example.com", 0); act.StopProcessing() {
		t.Errorf("a session of the banned prefix under the default policy: %v, want it let through", act)
	}
	h.clock.Add(time.Hour)
	if act := harvest("d@example.org", 0); act.StopProcessing() {
		t.Errorf("after the ban ended: %v, want it let through", act)
	}
}
