package milter

import (
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// FuzzMailArgs: whatever ESMTP arguments the MTA passes, MAIL FROM never
// panics, and a SIZE it cannot read never refuses the first message.
func FuzzMailArgs(f *testing.F) {
	for _, s := range []string{"", "SIZE=100", "SIZE=abc", "size=-1 BODY=8BITMIME", "SIZE=99999999999999999999", "SIZE= SIZE=5", "\x00SIZE=1"} {
		f.Add(s)
	}
	srv, err := NewServer(Config{
		Rules:   limits.DefaultRules(),
		Store:   counters.NewMemory(counters.MemoryOptions{MaxTracked: 10}),
		Metrics: NewMetrics(prometheus.NewRegistry()),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, args string) {
		s := &session{srv: srv, rules: srv.Rules()}
		if n := s.sizeParam(args); n < -1 {
			t.Fatalf("sizeParam(%q) = %d", args, n)
		}
		if r := s.state.CheckMail(s.rules.Default.Session, s.rules.Replies, s.sizeParam(args)); r != nil {
			t.Fatalf("first MAIL refused for %q: %v", args, r)
		}
	})
}
