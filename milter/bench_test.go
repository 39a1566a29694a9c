package milter

import (
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

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
// client, as Postfix does, through a no-op go-milter server (NoOpMilter with
// go-milter's default options: the baseline), through sessioncap with the
// default byte cap and through sessioncap with max_bytes = 0. The round
// trips dominate, not the policy.
//
// The sub-benchmarks noop, sessioncap, sessioncap-msgsize and
// sessioncap-nobytes report each alone (with its allocations);
// "interleaved" runs one transaction through each in turn per iteration
// (rotating the order) and reports the mean time of each and its ratio to
// the no-op milter, which holds on a noisy machine:
//
//	go test -run '^$' -bench 'Transaction/interleaved' -benchtime 2000x ./milter/
func BenchmarkTransaction(b *testing.B) {
	variants := []struct {
		name     string
		maxBytes int64 // -1: the no-op go-milter
		msgSize  bool  // the MTA reports {msg_size} at end of message
	}{{"noop", -1, false}, {"sessioncap", 1 << 62, false}, {"sessioncap-msgsize", 1 << 62, true}, {"sessioncap-nobytes", 0, false}}
	start := func(b *testing.B, maxBytes int64, msgSize bool) *transactor {
		if maxBytes < 0 {
			srv := gomilter.NewServer(gomilter.WithMilter(func() gomilter.Milter { return gomilter.NoOpMilter{} }))
			return newTransactor(b, srv.Serve, func() { srv.Close() }, false)
		}
		// the default byte cap (or none), without a message cap that would
		// end the loop
		rules := limits.DefaultRules()
		rules.Default.Session = limits.Session{MaxBytes: maxBytes, MaxRecipients: 1 << 62, Overrun: limits.OverrunAccept}
		srv := benchServer(b, rules)
		if msgSize {
			// one message on a first milter connection, as an MTA that
			// reports {msg_size} sends it, before the measured one opens
			first := newTransactor(b, srv.Serve, func() {}, true)
			first.transaction(b)
			first.close()
		}
		return newTransactor(b, srv.Serve, func() { srv.Close() }, msgSize)
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			t := start(b, v.maxBytes, v.msgSize)
			defer t.close()
			b.ReportAllocs()
			b.SetBytes(int64(len(t.body)))
			for b.Loop() {
				t.transaction(b)
			}
		})
	}
	b.Run("interleaved", func(b *testing.B) {
		ts := make([]*transactor, len(variants))
		for i, v := range variants {
			ts[i] = start(b, v.maxBytes, v.msgSize)
			defer ts[i].close()
		}
		spent := make([]time.Duration, len(ts))
		n := 0
		for b.Loop() {
			for j := range ts {
				k := (n + j) % len(ts)
				t0 := time.Now()
				ts[k].transaction(b)
				spent[k] += time.Since(t0)
			}
			n++
		}
		for i, v := range variants {
			b.ReportMetric(float64(spent[i].Microseconds())/float64(n), v.name+"-µs/txn")
			if i > 0 {
				b.ReportMetric(float64(spent[i])/float64(spent[0]), v.name+"/noop")
			}
		}
	})
}

// transactor is one milter session of go-milter's client to a server
// serving on a loopback listener.
type transactor struct {
	cs    *gomilter.ClientSession
	body  []byte
	close func()
}

// newTransactor connects; with msgSize, every end of message carries
// {msg_size} as Sendmail sends it.
func newTransactor(b *testing.B, serve func(net.Listener) error, stop func(), msgSize bool) *transactor {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go serve(ln)
	macros := gomilter.NewMacroBag()
	if msgSize {
		macros.Set("{msg_size}", "30023")
	}
	cs, err := gomilter.NewClient("tcp", ln.Addr().String()).Session(macros)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := cs.Conn("c.example", gomilter.FamilyInet, 1, "192.0.2.1"); err != nil {
		b.Fatal(err)
	}
	if _, err := cs.Helo("c.example"); err != nil {
		b.Fatal(err)
	}
	return &transactor{cs: cs, body: make([]byte, 30_000), close: func() { cs.Close(); stop() }}
}

// transaction sends one 30 KB message and expects it accepted.
func (t *transactor) transaction(b *testing.B) {
	cs := t.cs
	if act, err := cs.Mail("a@example.org", "SIZE=30000"); err != nil || act.StopProcessing() {
		b.Fatalf("mail: %v %v", act, err)
	}
	cs.Rcpt("b@example.net", "")
	cs.DataStart()
	cs.HeaderField("Subject", "bench", nil)
	cs.HeaderEnd()
	cs.BodyChunk(t.body)
	if _, act, err := cs.End(); err != nil || act.Type != gomilter.ActionAccept {
		b.Fatalf("eom: %v %v", act, err)
	}
	cs.Abort(nil)
}
