package limits_test

import (
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// TestManualBanReply: a ban an administrator set is refused with
// replies.banned_manual and no count or cap; a ban the frequency rule set
// keeps replies.banned with its cap. The reason is read as the stores write
// it (counters.StoredReason), a legacy free-text reason being manual.
func TestManualBanReply(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	p := limits.DefaultRules().Default
	p.Frequency = limits.Frequency{MaxConnections: 5, Window: time.Minute, Ban: time.Hour}
	replies := limits.DefaultReplies()
	for _, tc := range []struct {
		reason   string
		want     limits.ReplyKey
		text     string
		withCaps bool
	}{
		{counters.StoredReason(counters.OriginManual, "ticket 7"), limits.ReplyBannedManual,
			"Your network is temporarily banned by the administrator of this server; try again in 1w", false},
		{counters.StoredReason(counters.OriginManual, ""), limits.ReplyBannedManual, "", false},
		{"spam run (before bans had an origin)", limits.ReplyBannedManual, "", false},
		{counters.StoredReason(string(limits.LimitFrequency), ""), limits.ReplyBanned,
			"Your network is temporarily banned for too many connections; try again in 1w", true},
		{"", limits.ReplyBanned, "", true}, // a ban whose details were lost
	} {
		a := limits.FrequencyVerdict(limits.Hit{Count: 3, BannedUntil: now.Add(7 * 24 * time.Hour), Now: now, BanReason: tc.reason})
		r := a.Refusal(p, replies)
		if r == nil || r.Reply != tc.want || r.Limit != limits.LimitBanned || r.Code != 421 {
			t.Errorf("reason %q: %+v, want reply %s", tc.reason, r, tc.want)
			continue
		}
		if tc.text != "" && r.Text != tc.text {
			t.Errorf("reason %q: text %q, want %q", tc.reason, r.Text, tc.text)
		}
		if got := r.Cap > 0; got != tc.withCaps {
			t.Errorf("reason %q: cap %d value %d", tc.reason, r.Cap, r.Value)
		}
	}
	replies[limits.ReplyBannedManual] = limits.Reply{Code: 421, Enhanced: "4.7.1", Text: "Blocked by postmaster@example.org until {ban} from now"}
	r := limits.FrequencyVerdict(limits.Hit{BannedUntil: now.Add(90 * time.Minute), Now: now, BanReason: "manual"}).Refusal(p, replies)
	if r.Error() != "421 4.7.1 Blocked by postmaster@example.org until 1h30m from now" {
		t.Errorf("configured reply: %q", r.Error())
	}
}
