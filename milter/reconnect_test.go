package milter

import (
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// TestSecondConnectReleasesAdmission drives one milter session's callbacks
// directly, below the guard: CONNECT, CONNECT again, end. The second Connect
// must give back the first admission before it asks for another one.
//
// KNOWN BUG, left to the rewrite of session.go: Connect overwrites s.open and
// s.key, so the first admission stays counted forever. On the socket the
// guard refuses a second CONNECT without QUIT_NC (TestSecondConnectOnOneConnection),
// so no MTA or attacker can reach this today. Run it with
// SESSIONCAP_TEST_KNOWN_BUGS=1; drop the skip once Connect starts with an
// s.end()-style release.
func TestSecondConnectReleasesAdmission(t *testing.T) {
	if os.Getenv("SESSIONCAP_TEST_KNOWN_BUGS") == "" {
		t.Skip("known bug: session.Connect leaks the first admission on a second CONNECT (fixed by the session.go rewrite); set SESSIONCAP_TEST_KNOWN_BUGS=1 to run")
	}
	rules := limits.DefaultRules()
	rules.Default.Concurrency.MaxPerAddress = 1
	store := counters.NewMemory(10)
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
	if st := store.Stats(srv.now()); st.Active != 0 {
		t.Fatalf("after the session ended %d sessions are still counted open", st.Active)
	}
}
