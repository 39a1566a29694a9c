package milter

import (
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// TestBodyAndHeaderDoNotAllocate: the callbacks the MTA calls once per body
// chunk (up to 64 KiB) and once per header line count bytes without
// allocating. A plain test, so that it runs with every `go test`, not only
// under -bench.
func TestBodyAndHeaderDoNotAllocate(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage instrumentation allocates")
	}
	srv, err := NewServer(Config{
		Rules:   limits.DefaultRules(), // a byte cap: bodies and headers are counted
		Store:   counters.NewMemory(counters.MemoryOptions{MaxTracked: 10}),
		Metrics: NewMetrics(prometheus.NewRegistry()),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	sess := &session{srv: srv, rules: srv.Rules()}
	chunk := make([]byte, 65535)
	if allocs := testing.AllocsPerRun(100, func() {
		if _, err := sess.BodyChunk(chunk, nil); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("BodyChunk allocates %v times per call", allocs)
	}
	if allocs := testing.AllocsPerRun(100, func() {
		if _, err := sess.Header("Subject", "hello", nil); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("Header allocates %v times per call", allocs)
	}
	// The calls were counted: the test measured the real counting path.
	if want := int64(101*65535 + 101*(7+5+4)); sess.core.State().Bytes != want {
		t.Errorf("session counted %d bytes, want %d", sess.core.State().Bytes, want)
	}
}
