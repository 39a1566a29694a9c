package engine_test

import (
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/engine"
	"github.com/sessioncap/sessioncap/limits"
)

func newEngine(t *testing.T, r *limits.Rules) *engine.Engine {
	t.Helper()
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	e, err := engine.New(engine.Config{Rules: r, Store: counters.NewMemory(counters.MemoryOptions{Now: clock}),
		Metrics: engine.NewMetrics(prometheus.NewRegistry()), Now: clock, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestSessionCarriesTheTransaction: what later rules key on (quotas, a
// replayed log) is on the Session: the sender, its domain, the SASL user
// and the recipients let through in the transaction, and the size of the
// accepted message; a refused recipient is not among them, and the next
// transaction starts empty.
func TestSessionCarriesTheTransaction(t *testing.T) {
	r := limits.DefaultRules()
	r.Default.Session.MaxRecipients = 2
	s := newEngine(t, r).NewSession(nil, engine.Options{})
	if v := s.Connect(netip.MustParseAddr("::ffff:192.0.2.1")); v.Refusal != nil {
		t.Fatalf("connect: %v", v.Refusal)
	}
	if s.Client() != "192.0.2.1" {
		t.Errorf("client %q, want the unmapped address", s.Client())
	}
	if v := s.Mail(engine.Mail{Sender: "a@Example.ORG", Size: -1, User: "alice", QueueID: "Q1"}); v.Refusal != nil {
		t.Fatalf("mail: %v", v.Refusal)
	}
	for _, rcpt := range []string{"x@example.net", "y@example.net"} {
		if v := s.Rcpt(rcpt); v.Refusal != nil {
			t.Fatalf("rcpt %s: %v", rcpt, v.Refusal)
		}
	}
	if v := s.Rcpt("z@example.net"); v.Refusal == nil || v.Refusal.Limit != limits.LimitSessionRecipients || v.HangUp {
		t.Fatalf("third recipient: %+v, want the recipient cap without hanging up", v)
	}
	s.Bytes(700)
	s.Bytes(300)
	if s.Sender() != "a@Example.ORG" || s.SenderDomain() != "example.org" || s.User() != "alice" || s.QueueID() != "Q1" {
		t.Errorf("sender %q domain %q user %q queue id %q", s.Sender(), s.SenderDomain(), s.User(), s.QueueID())
	}
	if got := s.Recipients(); !slices.Equal(got, []string{"x@example.net", "y@example.net"}) {
		t.Errorf("recipients %q", got)
	}
	if v := s.EndOfMessage(-1, -1); v.Refusal != nil {
		t.Fatalf("end of message: %v", v.Refusal)
	}
	if s.MessageSize() != 1000 || s.InTransaction() {
		t.Errorf("after end of message: size %d, in transaction %v", s.MessageSize(), s.InTransaction())
	}
	s.Mail(engine.Mail{Sender: "", Size: -1})
	if len(s.Recipients()) != 0 || s.User() != "" || s.SenderDomain() != "" {
		t.Errorf("next transaction starts with recipients %q user %q domain %q", s.Recipients(), s.User(), s.SenderDomain())
	}
	s.End()
	s.End()
}

// TestSessionEndOfMessageReportsOfTheMTA: the size and recipient count the
// MTA reports at end of message (the policy path) are counted: the size
// toward the byte cap, the count correcting recipients the session did
// not see; the front-end's EOMRefusal rewrites the overrun's reply, and the
// verdict says it hangs up.
func TestSessionEndOfMessageReportsOfTheMTA(t *testing.T) {
	r := limits.DefaultRules()
	r.Default.Session = limits.Session{MaxBytes: 1000, MaxRecipients: 3, Overrun: limits.OverrunTempfail}
	hangUp := func(r *limits.Refusal) *limits.Refusal { c := *r; c.Code = 421; return &c }
	s := newEngine(t, r).NewSession(nil, engine.Options{EOMRefusal: hangUp})
	s.Connect(netip.Addr{})
	s.Resume(engine.Mail{Sender: "a@example.org", Size: -1})
	if v := s.EndOfMessage(600, 3); v.Refusal != nil {
		t.Fatalf("first message: %v", v.Refusal)
	}
	if st := s.State(); st.Bytes != 600 || st.Recipients != 3 || st.Messages != 1 {
		t.Fatalf("counted %+v, want 600 bytes, 3 recipients, 1 message", st)
	}
	s.Mail(engine.Mail{Sender: "a@example.org", Size: -1})
	if v := s.Rcpt("r@example.net"); v.Refusal == nil || v.Refusal.Limit != limits.LimitSessionRecipients {
		t.Fatalf("a recipient after the MTA reported 3: %+v", v)
	}
	v := s.EndOfMessage(600, -1)
	if v.Refusal == nil || v.Refusal.Code != 421 || v.Refusal.Stage != limits.StageEOM || !v.HangUp || v.Mode != limits.ModeEnforce {
		t.Fatalf("overrun: %+v, want the rewritten 421 that hangs up", v)
	}
}
