package limits

import (
	"testing"
	"time"
)

func TestLimitModes(t *testing.T) {
	r := DefaultRules()
	r.Mode = ModeMonitor
	r.Default.Session.Mode = ModeTag
	r.Overrides = []Override{{Policy: r.Default}}
	o := &r.Overrides[0].Policy
	o.Frequency.Mode = ModeOff
	o.Concurrency.Mode = ModeEnforce
	for _, c := range []struct {
		p    *Policy
		l    Limit
		want Mode
	}{
		{&r.Default, LimitSessionMessages, ModeTag},
		{&r.Default, LimitSessionRecipients, ModeTag},
		{&r.Default, LimitFrequency, ModeMonitor},
		{&r.Default, LimitBanned, ModeMonitor},
		{&r.Default, LimitConcurrencyTotal, ModeMonitor},
		{&r.Default, LimitStoreUnavailable, ModeMonitor},
		{o, LimitFrequency, ModeOff},
		{o, LimitBanned, ModeMonitor}, // bans still hold under the top-level mode
		{o, LimitConcurrencyAddress, ModeEnforce},
	} {
		if got := r.LimitMode(c.p, c.l); got != c.want {
			t.Errorf("%s: %s, want %s", c.l, got, c.want)
		}
	}
	if !r.NeedsTagging() {
		t.Error("a tag mode configured, NeedsTagging false")
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	r.Default.Session.Mode = ModeOff
	r.Overrides[0].Policy.Session.Mode = ModeOff
	if r.NeedsTagging() || r.NeedsBodies() || r.NeedsRecipients() {
		t.Error("session caps off still need tags, bodies or recipients")
	}
	r.Default.Frequency.Mode = "strict"
	if err := r.Validate(); err == nil {
		t.Error("an unknown mode validated")
	}
	r.Default.Frequency.Mode = ModeTag
	r.TagHeader = "Bad Header:"
	if err := r.Validate(); err == nil {
		t.Error("an invalid tag header validated")
	}
}

func TestTagValue(t *testing.T) {
	var s SessionState
	s.Messages = 3
	r := s.CheckMail(Session{MaxMessages: 3}, DefaultReplies(), -1)
	if got := r.Tag(); got != "limit=session_messages value=3 cap=3" {
		t.Errorf("tag %q", got)
	}
}

// A frequency refusal without a ban reports the refused connection in its
// value, though the store did not count it.
func TestFrequencyNoBanValue(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	f := Frequency{MaxConnections: 2, Window: time.Minute}
	var w Window
	var a Admission
	for i := 0; i < 3; i++ {
		h, _ := Apply(&w, 0, now.UnixMilli(), 1, f.Rate())
		a = FrequencyVerdict(h)
	}
	if a.Verdict != RefusedFrequency || a.Connections != 3 {
		t.Fatalf("%+v, want refused with 3 connections", a)
	}
	if r := a.Refusal(Policy{Frequency: f}, DefaultReplies()); r.Tag() != "limit=frequency value=3 cap=2" {
		t.Errorf("tag %q", r.Tag())
	}
}
