package engine_test

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/engine"
	"github.com/sessioncap/sessioncap/limits"
)

// TestManualBanOfAnyPrefixHolds: a manual ban of a /24 while connections
// are counted per /32 refuses an address inside it, on this engine at once
// and on another engine sharing the store within engine.PrefixBanRefresh;
// it lists as the /24 and an unban of it lets the address in again.
func TestManualBanOfAnyPrefixHolds(t *testing.T) {
	now := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	store := counters.NewMemory(counters.MemoryOptions{Now: clock})
	newEngine := func() *engine.Engine {
		r := limits.DefaultRules()
		r.Default.Frequency = limits.Frequency{MaxConnections: 100, Window: time.Minute, Ban: time.Hour}
		e, err := engine.New(engine.Config{Rules: r, Store: store, Metrics: engine.NewMetrics(prometheus.NewRegistry()), Now: clock, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	mx1, mx2 := newEngine(), newEngine()
	inside, outside := netip.MustParseAddr("203.0.113.77"), netip.MustParseAddr("203.0.114.1")
	if a := mx2.Admit(mx2.Rules(), inside, "203.0.113.77"); a.Verdict != limits.Admitted {
		t.Fatalf("before the ban: %v", a.Verdict)
	}
	ban, err := mx1.BanPrefix(context.Background(), netip.MustParsePrefix("203.0.113.0/24"), 6*time.Hour, counters.StoredReason(counters.OriginManual, "spam run"))
	if err != nil || ban.Key != "freq:203.0.113.0/24" {
		t.Fatalf("ban: %+v, %v", ban, err)
	}
	if a := mx1.Admit(mx1.Rules(), inside, "203.0.113.77"); a.Verdict != limits.RefusedBanned {
		t.Fatalf("an address inside the banned /24 on the banning host: %v", a.Verdict)
	}
	if a := mx1.Admit(mx1.Rules(), outside, "203.0.114.1"); a.Verdict != limits.Admitted {
		t.Fatalf("an address outside: %v", a.Verdict)
	}
	now = now.Add(engine.PrefixBanRefresh)
	if a := mx2.Admit(mx2.Rules(), inside, "203.0.113.77"); a.Verdict != limits.RefusedBanned {
		t.Fatalf("on another host sharing the store, after %v: %v", engine.PrefixBanRefresh, a.Verdict)
	}
	bans, _ := store.Bans(context.Background())
	listed := false
	for _, b := range bans {
		listed = listed || (b.Key == "freq:203.0.113.0/24" && b.Origin == counters.OriginManual && !engine.IsPrefixBanLengths(b))
	}
	if !listed {
		t.Fatalf("the /24 is not listed: %+v", bans)
	}
	if was, err := store.Unban(context.Background(), "freq:203.0.113.0/24"); !was || err != nil {
		t.Fatalf("unban: %v, %v", was, err)
	}
	if a := mx1.Admit(mx1.Rules(), inside, "203.0.113.77"); a.Verdict != limits.Admitted {
		t.Fatalf("after the unban: %v", a.Verdict)
	}
}
