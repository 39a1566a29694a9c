package config

import (
	"slices"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// TestDurationsTakeDaysAndWeeks: every duration of the file takes d and w
// as Prometheus writes them.
func TestDurationsTakeDaysAndWeeks(t *testing.T) {
	cfg, err := Parse("days.toml", []byte(`
[frequency]
window = "1d"
ban = "1w"
[errors]
max_per_window = 5
window = "1d12h"
ban = "2w"
[sender_networks]
window = "7d"
`))
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Rules.Default
	const day = 24 * time.Hour
	if p.Frequency.Window != day || p.Frequency.Ban != 7*day || p.Errors.Window != 36*time.Hour || p.Errors.Ban != 14*day ||
		cfg.Rules.SenderNetworks.Window != 7*day {
		t.Errorf("frequency %v/%v, errors %v/%v, sender_networks %v", p.Frequency.Window, p.Frequency.Ban,
			p.Errors.Window, p.Errors.Ban, cfg.Rules.SenderNetworks.Window)
	}
}

// TestKeys: the schema walk finds leaves of every depth, the override's
// own keys and its policy tables, and no table as a key.
func TestKeys(t *testing.T) {
	keys := Keys()
	for _, k := range []string{"listen", "mode", "session.max_messages", "store.redis.addresses", "replies.banned",
		"override.networks", "override.session.max_bytes", "override.errors.mode"} {
		if !slices.Contains(keys, k) {
			t.Errorf("Keys() lacks %s", k)
		}
	}
	for _, k := range []string{"session", "store", "store.redis", "override", "override.session"} {
		if slices.Contains(keys, k) {
			t.Errorf("Keys() lists the table %s as a key", k)
		}
	}
}

// TestBannedManualReply: replies.banned_manual is a reply key like the
// others: 4xx only.
func TestBannedManualReply(t *testing.T) {
	cfg, err := Parse("r.toml", []byte("[replies]\nbanned_manual = \"421 4.7.1 Blocked by the postmaster; try again in {ban}\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if r := cfg.Rules.Replies[limits.ReplyBannedManual]; r.Enhanced != "4.7.1" || r.Text != "Blocked by the postmaster; try again in {ban}" {
		t.Errorf("banned_manual: %+v", r)
	}
	_, err = Parse("r.toml", []byte("[replies]\nbanned_manual = \"550 5.7.1 go away\"\n"))
	if err == nil || err.Error() != `r.toml:2: replies.banned_manual: code 550 is not 4xx: every sessioncap limit is temporary, so the sender must keep the mail` {
		t.Errorf("a 5xx banned_manual: %v", err)
	}
}
