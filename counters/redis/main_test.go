package redisstore_test

import (
	"flag"
	"io"
	"log/slog"
	"os"
	"testing"

	redisstore "github.com/sessioncap/sessioncap/counters/redis"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// go-redis logs every failed dial of the outage tests; with -v they go
	// to stderr through slog, else nowhere
	w := io.Discard
	if testing.Verbose() {
		w = os.Stderr
	}
	redisstore.SetLogger(slog.New(slog.NewTextHandler(w, nil)))
	os.Exit(m.Run())
}
