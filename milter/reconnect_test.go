package milter

import (
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// TestSecondConnectReleasesAdmission drives one milter session's callbacks
// directly, below the guard: CONNECT, CONNECT again, end. The second Connect
// must give back the first admission before it asks for another one. (On
// the socket the guard refuses a second CONNECT without QUIT_NC; this holds
// below it too.)
func TestSecondConnectReleasesAdmission(t *testing.T) {
	rules := limits.DefaultRules()
	rules.Default.Concurrency.MaxPerAddress = 1
	store := counters.NewMemory(counters.MemoryOptions{MaxTracked: 10})
	srv, err := NewServer(Config{Rules: rules, Store: store, Metrics: NewMetrics(prometheus.NewRegistry()),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	m := srv.newSession(6, 0, 0, 0)
	if err := m.NewConnection(nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := m.Connect("client.example", "tcp4", 40000, "192.0.2.1", nil); err != nil {
			t.Fatal(err)
		}
	}
	m.Cleanup(nil)
	if n := srv.OpenSessions(); n != 0 {
		t.Fatalf("after the session ended %d sessions are still counted open", n)
	}
}
