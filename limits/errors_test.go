package limits

import (
	"testing"
	"time"
)

func TestErrorsRule(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	e := Errors{MaxPerSession: 2, MaxPerWindow: 3, Window: time.Hour, Ban: 30 * time.Minute}
	replies := DefaultReplies()
	var s SessionState
	if r := s.CheckErrors(e, replies, StageMail, time.Time{}, now); r != nil {
		t.Fatalf("no errors: %v", r)
	}
	s.AddError()
	if r := s.CheckErrors(e, replies, StageRcpt, time.Time{}, now); r != nil {
		t.Fatalf("1 error: %v", r)
	}
	s.AddError()
	r := s.CheckErrors(e, replies, StageRcpt, time.Time{}, now)
	if r == nil || r.Limit != LimitErrors || r.Stage != StageRcpt || r.Code != 421 || r.Value != 2 ||
		r.Text != "Too many errors in this session (limit 2); closing connection" {
		t.Fatalf("2 errors: %+v", r)
	}

	// the window: the 4th rejected recipient within the hour bans for 30m
	m := newMapStore()
	m.now = now
	var h Hit
	for i := 0; i < 4; i++ {
		h, _ = m.hit("err:192.0.2.1/32", 1, e.Rate())
	}
	if !h.Crossed || h.Count != 4 || !h.BannedUntil.Equal(now.Add(30*time.Minute)) {
		t.Fatalf("4th rejected recipient: %+v", h)
	}
	if b, _ := m.bans["err:192.0.2.1/32"]; b == 0 {
		t.Fatal("no ban recorded")
	}
	var fresh SessionState
	r = fresh.CheckErrors(e, replies, StageMail, h.BannedUntil, now.Add(10*time.Minute))
	if r == nil || r.Reply != ReplyErrorsBanned || r.Text != "Too many rejected recipients from your network (limit 3 per 1h); try again in 20m" {
		t.Fatalf("banned: %+v", r)
	}
	if r := e.BanRefusal(replies, StageConnect, h.BannedUntil, now.Add(31*time.Minute)); r != nil {
		t.Fatalf("after the ban: %+v", r)
	}
	if (Errors{MaxPerSession: 1}).Rate() != (Rate{}) || !(Errors{MaxPerSession: 1}).On() || (Errors{Window: time.Hour}).On() {
		t.Error("On/Rate of partial rules")
	}
}

// The rejected-recipients window refuses only by banning: rules with a
// window and no ban (which would refuse nothing) are invalid, in the
// default policy and in an override.
func TestErrorsWindowNeedsABan(t *testing.T) {
	r := DefaultRules()
	r.Default.Errors = Errors{MaxPerWindow: 2, Window: time.Hour}
	if err := r.Validate(); err == nil || err.Error() != "limits: errors window (max 2 per 1h0m0s) without a ban refuses nothing: set a ban, or max_per_window 0" {
		t.Fatalf("default policy: %v", err)
	}
	r = DefaultRules()
	o := Override{Policy: r.Default}
	o.Policy.Errors.MaxPerWindow, o.Policy.Errors.Ban = 3, 0
	r.Overrides = []Override{o}
	if err := r.Validate(); err == nil {
		t.Fatal("override: accepted")
	}
	r.Overrides[0].Policy.Errors.MaxPerWindow = 0 // the window off: no ban needed
	if err := r.Validate(); err != nil {
		t.Fatalf("window off: %v", err)
	}
}
