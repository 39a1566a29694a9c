package redisstore

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/redis/go-redis/v9"
)

// SetLogger sends go-redis's own messages (failed dials, Sentinel master
// switches) to l at level Warn with component=redis, instead of the
// standard logger. go-redis has one logger per process, so this is global.
func SetLogger(l *slog.Logger) { redis.SetLogger(slogger{l}) }

type slogger struct{ l *slog.Logger }

func (s slogger) Printf(ctx context.Context, format string, v ...any) {
	s.l.WarnContext(ctx, strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "), "component", "redis")
}
