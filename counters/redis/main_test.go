package redisstore_test

import (
	"flag"
	"io"
	"log/slog"
	"os"
	"testing"

	redisstore "github.com/sessioncap/sessioncap/counters/redis"
)

// testLogger receives go-redis's messages; a test that sets another logger
// puts it back.
var testLogger *slog.Logger

func TestMain(m *testing.M) {
	flag.Parse()
	// go-redis logs every failed dial of the outage tests; with -v they go
	// to stderr through slog, else nowhere
	w := io.Discard
	if testing.Verbose() {
		w = os.Stderr
	}
	testLogger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	redisstore.SetLogger(testLogger)
	os.Exit(m.Run())
}
