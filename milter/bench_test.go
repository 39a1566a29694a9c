package milter

import (
	"io"
	"log/slog"
	"net"
	"testing"

	gomilter "github.com/d--j/go-milter"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

func benchServer(b *testing.B, rules *limits.Rules) *Server {
	b.Helper()
	s, err := NewServer(Config{
		Rules:   rules,
		Store:   counters.NewMemory(counters.MemoryOptions{MaxTracked: 1000}),
		Metrics: NewMetrics(prometheus.NewRegistry()),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkBodyChunk measures the per-chunk cost of counting: it must not
// allocate or lock (the MTA sends up to 64 KiB per chunk).
func BenchmarkBodyChunk(b *testing.B) {
	srv := benchServer(b, limits.DefaultRules())
	sess := &session{srv: srv, rules: srv.Rules()}
	chunk := make([]byte, 65535)
	b.ReportAllocs()
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		if _, err := sess.BodyChunk(chunk, nil); err != nil {
			b.Fatal(err)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { sess.BodyChunk(chunk, nil) }); allocs != 0 {
		b.Fatalf("BodyChunk allocates %v times per call", allocs)
	}
}

// BenchmarkTransaction drives whole transactions (MAIL, RCPT, header, one
// 30 KB body chunk, end of message) over a real socket with go-milter's
// client, as Postfix does: the round trips dominate, not the policy.
func BenchmarkTransaction(b *testing.B) {
	// the default byte cap, without a message cap that would end the loop
	rules := limits.DefaultRules()
	rules.Default.Session = limits.Session{MaxBytes: 1 << 62, MaxRecipients: 1 << 62, Overrun: limits.OverrunAccept}
	srv := benchServer(b, rules)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	macros := gomilter.NewMacroBag()
	cs, err := gomilter.NewClient("tcp", ln.Addr().String()).Session(macros)
	if err != nil {
		b.Fatal(err)
	}
	defer cs.Close()
	if _, err := cs.Conn("c.example", gomilter.FamilyInet, 1, "192.0.2.1"); err != nil {
		b.Fatal(err)
	}
	if _, err := cs.Helo("c.example"); err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 30_000)
	b.ReportAllocs()
	for b.Loop() {
		if act, err := cs.Mail("a@example.org", "SIZE=30000"); err != nil || act.StopProcessing() {
			b.Fatalf("mail: %v %v", act, err)
		}
		cs.Rcpt("b@example.net", "")
		cs.DataStart()
		cs.HeaderField("Subject", "bench", nil)
		cs.HeaderEnd()
		cs.BodyChunk(body)
		if _, act, err := cs.End(); err != nil || act.Type != gomilter.ActionAccept {
			b.Fatalf("eom: %v %v", act, err)
		}
		cs.Abort(nil)
	}
}
