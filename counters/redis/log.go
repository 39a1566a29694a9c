package redisstore

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// SetLogger sends go-redis's own messages to l with component=redis,
// instead of the standard logger: connection failures at Debug, Sentinel
// news (a new master) at Info; see level. go-redis has one logger per
// process, so this is global. go-redis reads its logger variable without
// synchronisation, so it is set only once, to a forwarder; later calls
// swap the forwarder's target atomically and are safe while clients run.
func SetLogger(l *slog.Logger) {
	target.Store(l)
	installOnce.Do(func() { redis.SetLogger(forwarder{}) })
}

var (
	target      atomic.Pointer[slog.Logger]
	installOnce sync.Once
)

// forwarder is the logger go-redis holds: it passes each message to the
// logger SetLogger set last.
type forwarder struct{}

func (forwarder) Printf(ctx context.Context, format string, v ...any) {
	if l := target.Load(); l != nil {
		slogger{l}.Printf(ctx, format, v...)
	}
}

type slogger struct{ l *slog.Logger }

func (s slogger) Printf(ctx context.Context, format string, v ...any) {
	msg := strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: ")
	s.l.Log(ctx, level(msg), msg, "component", "redis")
}

// level is the slog level of one go-redis message (its "redis: " prefix
// removed).
//
// During an outage go-redis logs a line per failed dial (after its own
// retries: up to one per pooled connection, 10 per CPU), per failed query of
// a Sentinel and per connection it fails to close, while the store's caller
// (counters.Fallback in the daemon) logs the outage once: those routine
// connection messages, and any other go-redis message, go to Debug. The
// Sentinel client's news stays at Info: the master it switched to (after a
// failover, and the first one it finds when it connects, which go-redis
// words alike), the sentinel it chose, a sentinel it discovered. A Sentinel
// message that reports a failure is a connection failure.
func level(msg string) slog.Level {
	if strings.HasPrefix(msg, "sentinel:") && !strings.Contains(msg, "failed") {
		return slog.LevelInfo
	}
	return slog.LevelDebug
}
