package engine_test

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/engine"
	"github.com/sessioncap/sessioncap/limits"
)

// TestMetricsShared: a second front-end on the same registry gets the same
// series, so a refusal is counted once whichever front-end gave it.
func TestMetricsShared(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, b := engine.NewMetrics(reg), engine.NewMetrics(reg)
	a.Messages.Inc()
	b.Messages.Inc()
	b.Refusals.WithLabelValues("session_messages", "mail", "enforce").Inc()
	if got := testutil.ToFloat64(a.Messages); got != 2 {
		t.Fatalf("messages = %v, want 2", got)
	}
	if got := testutil.ToFloat64(a.Refusals.WithLabelValues("session_messages", "mail", "enforce")); got != 1 {
		t.Fatalf("refusals = %v, want 1", got)
	}
	want := 0
	for _, l := range limits.AllLimits {
		want += len(engine.StagesOf(l)) * len(limits.AllModes)
	}
	if n, err := testutil.GatherAndCount(reg, "sessioncap_refusals_total"); err != nil || n != want || want < 14*3 {
		t.Fatalf("refusal series = %d (%v), want every limit × stage × mode once (%d)", n, err, want)
	}
}

// TestReloadKeepsBansOfOldPrefixes: a reload that changes the prefix
// length does not lift a ban keyed under the old one.
func TestReloadKeepsBansOfOldPrefixes(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	store := counters.NewMemory(counters.MemoryOptions{Now: clock})
	r := limits.DefaultRules()
	r.Default.Frequency = limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: time.Hour}
	e, err := engine.New(engine.Config{Rules: r, Store: store, Metrics: engine.NewMetrics(prometheus.NewRegistry()), Now: clock, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("192.0.2.9")
	e.Admit(e.Rules(), addr, "192.0.2.9")
	if a := e.Admit(e.Rules(), addr, "192.0.2.9"); a.Verdict != limits.RefusedFrequency {
		t.Fatalf("second connection: %v", a.Verdict)
	}
	r2 := *r
	r2.IPv4Prefix = 24
	if err := e.SetRules(&r2); err != nil {
		t.Fatal(err)
	}
	if a := e.Admit(e.Rules(), addr, "192.0.2.9"); a.Verdict != limits.RefusedBanned {
		t.Fatalf("after the reload: %v, want banned under the old /32 key", a.Verdict)
	}
	if _, err := store.Unban(context.Background(), "freq:192.0.2.9/32"); err != nil {
		t.Fatal(err)
	}
	if a := e.Admit(e.Rules(), addr, "192.0.2.9"); a.Verdict != limits.Admitted {
		t.Fatalf("after the unban: %v", a.Verdict)
	}
}
