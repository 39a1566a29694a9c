package redisstore_test

import (
	"log/slog"
	"os"
	"strings"

	"github.com/sessioncap/sessioncap/counters"
	redisstore "github.com/sessioncap/sessioncap/counters/redis"
)

// The daemon's [store] wiring: a Redis store behind a Fallback that answers
// from the local store while Redis is down, and logs once per outage.
func Example() {
	password, err := os.ReadFile("/etc/sessioncap/redis.password")
	if err != nil {
		slog.Error("redis password", "err", err)
		return
	}
	redisstore.SetLogger(slog.Default())
	shared, err := redisstore.New(redisstore.Options{
		Addresses:  []string{"sentinel1.example.net:26379", "sentinel2.example.net:26379", "sentinel3.example.net:26379"},
		MasterName: "sessioncap", // Sentinel
		Password:   strings.TrimSpace(string(password)),
		Host:       "mx1.example.org",
	})
	if err != nil {
		slog.Error("redis store", "err", err)
		return
	}
	store, err := counters.NewFallback(shared, counters.NewMemory(counters.MemoryOptions{Host: "mx1.example.org"}), counters.FallbackOptions{
		OnError: counters.OnErrorLocal,
		OnStateChange: func(up bool) {
			if up {
				slog.Info("shared store back", "component", "redis")
			} else {
				slog.Warn("shared store down: answering from the local store", "component", "redis")
			}
		},
	})
	if err != nil {
		slog.Error("store", "err", err)
		return
	}
	defer store.Close()
	// use store as the daemon's counters.Store
}
