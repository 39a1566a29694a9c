package engine_test

import (
	"context"
	"errors"
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

func quotaEngine(tb testing.TB, qs []limits.Quota, now func() time.Time) (*engine.Engine, *counters.Memory) {
	r := limits.DefaultRules()
	r.Default.Session = limits.Session{MaxBytes: 1 << 40, MaxRecipients: 1 << 40, Overrun: limits.OverrunAccept}
	r.Default.Frequency = limits.Frequency{}
	r.Quotas = qs
	m := counters.NewMemory(counters.MemoryOptions{Now: now})
	e, err := engine.New(engine.Config{Rules: r, Store: m, Metrics: engine.NewMetrics(prometheus.NewRegistry()), Now: now, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	return e, m
}

// A reload that adds a rule before another, or reorders them, keeps every
// window: they are keyed by the rule's name, never its position.
func TestQuotaWindowsSurviveReload(t *testing.T) {
	now := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	user := limits.Quota{Name: "user-hourly", Key: limits.QuotaUser, Count: limits.CountMessages, Limit: 2, Window: time.Hour}
	e, _ := quotaEngine(t, []limits.Quota{user}, clock)
	send := func() *limits.Refusal {
		s := e.NewSession(nil, engine.Options{})
		s.Connect(netip.MustParseAddr("192.0.2.1"))
		defer s.End()
		if v := s.Mail(engine.Mail{Sender: "a@example.com", User: "alice", Size: -1}); v.Refusal != nil {
			return v.Refusal
		}
		s.Rcpt("b@example.net")
		s.Bytes(100)
		s.EndOfMessage(-1, -1)
		return nil
	}
	for range 2 {
		if ref := send(); ref != nil {
			t.Fatal(ref)
		}
	}
	r := *e.Rules()
	r.Quotas = []limits.Quota{
		{Name: "net", Key: limits.QuotaNetwork, Count: limits.CountMessages, Limit: 100, Window: time.Hour},
		user,
	}
	if err := e.SetRules(&r); err != nil {
		t.Fatal(err)
	}
	if ref := send(); ref == nil || ref.Limit != limits.LimitQuota {
		t.Fatalf("after a reload that added a rule before it: %v", ref)
	}
}

// BenchmarkSessionQuotas is one transaction through the session core with
// and without two quota rules (memory store): what quotas cost in process.
//
//	go test -run '^$' -bench SessionQuotas -benchmem ./engine/
func BenchmarkSessionQuotas(b *testing.B) {
	for _, c := range []struct {
		name string
		qs   []limits.Quota
	}{{"without", nil}, {"two-quotas", []limits.Quota{
		{Name: "sender-hourly", Key: limits.QuotaSender, Count: limits.CountMessages, Limit: 1 << 40, Window: time.Hour},
		{Name: "network-bytes", Key: limits.QuotaNetwork, Count: limits.CountBytes, Limit: 1 << 50, Window: time.Hour},
	}}} {
		b.Run(c.name, func(b *testing.B) {
			e, _ := quotaEngine(b, c.qs, time.Now)
			s := e.NewSession(nil, engine.Options{})
			s.Connect(netip.MustParseAddr("192.0.2.1"))
			b.ReportAllocs()
			for b.Loop() {
				if v := s.Mail(engine.Mail{Sender: "a@example.org", Size: 30000}); v.Refusal != nil {
					b.Fatal(v.Refusal)
				}
				s.Rcpt("b@example.net")
				s.Bytes(30000)
				s.EndOfMessage(-1, -1)
			}
		})
	}
}

// failingQuotas is the memory store whose quota calls fail with err (fault
// injection).
type failingQuotas struct {
	*counters.Memory
	err error
}

func (f failingQuotas) Quota(context.Context, []limits.QuotaOp) ([]limits.QuotaUse, error) {
	return nil, f.err
}

// With the store down, store.on_error applies to quotas as to the frequency
// rule: "tempfail" (ErrUnavailable) refuses MAIL with 451 4.3.0 and keeps
// the session; any other failure lets the transaction through.
func TestQuotaStoreDown(t *testing.T) {
	for _, c := range []struct {
		name   string
		err    error
		refuse bool
	}{{"tempfail", counters.ErrUnavailable, true}, {"other error", errors.New("boom"), false}} {
		t.Run(c.name, func(t *testing.T) {
			r := limits.DefaultRules()
			r.Quotas = []limits.Quota{{Name: "user-hourly", Key: limits.QuotaUser, Count: limits.CountMessages, Limit: 10, Window: time.Hour}}
			reg := prometheus.NewRegistry()
			e, err := engine.New(engine.Config{Rules: r, Store: failingQuotas{counters.NewMemory(counters.MemoryOptions{}), c.err},
				Metrics: engine.NewMetrics(reg), Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			s := e.NewSession(nil, engine.Options{})
			s.Connect(netip.MustParseAddr("192.0.2.1"))
			v := s.Mail(engine.Mail{Sender: "a@example.com", User: "alice", Size: -1})
			switch {
			case c.refuse && (v.Refusal == nil || v.Refusal.Code != 451 || v.Refusal.Enhanced != "4.3.0" || v.HangUp):
				t.Fatalf("verdict %+v, want 451 4.3.0 without hanging up", v)
			case !c.refuse && v.Refusal != nil:
				t.Fatalf("verdict %+v, want the transaction through", v)
			}
			if got := testutil.ToFloat64(engine.NewMetrics(reg).StoreErrors.WithLabelValues("quota")); got != 1 {
				t.Errorf("sessioncap_store_errors_total{op=quota} = %v", got)
			}
		})
	}
}

// Recipients the MTA reports at end of message beyond those the session
// saw (the policy path's recipient_count) are counted against recipient
// quotas; a message is counted once per recipient key it was accepted for.
func TestQuotaRecipientsCorrectedAtEndOfMessage(t *testing.T) {
	now := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	e, m := quotaEngine(t, []limits.Quota{
		{Name: "rcpts", Key: limits.QuotaUser, Count: limits.CountRecipients, Limit: 100, Window: time.Hour},
		{Name: "mailbox", Key: limits.QuotaRecipient, Count: limits.CountMessages, Limit: 100, Window: time.Hour},
	}, clock)
	s := e.NewSession(nil, engine.Options{})
	s.Connect(netip.MustParseAddr("192.0.2.1"))
	s.Mail(engine.Mail{Sender: "a@example.com", User: "alice", Size: -1})
	s.Rcpt("One@Example.net")
	s.EndOfMessage(500, 4) // the MTA accepted 4 recipients; the session saw 1
	use := func(key string) int64 {
		u, err := m.Quota(context.Background(), []limits.QuotaOp{{Key: key, Window: time.Hour, Limit: 100}})
		if err != nil {
			t.Fatal(err)
		}
		return u[0].Window.Curr
	}
	if got := use(limits.QuotaStoreKey("rcpts", limits.QuotaUser, "alice")); got != 4 {
		t.Errorf("alice's recipients: %d, want 4 (1 at RCPT, 3 at end of message)", got)
	}
	if got := use(limits.QuotaStoreKey("mailbox", limits.QuotaRecipient, "one@example.net")); got != 1 {
		t.Errorf("the recipient's messages: %d, want 1", got)
	}
}
