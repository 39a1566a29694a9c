package redisstore

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
)

// records is a slog.Handler that keeps every record, at every level.
type records struct {
	mu  sync.Mutex
	all []slog.Record
}

func (h *records) Enabled(context.Context, slog.Level) bool { return true }
func (h *records) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.all = append(h.all, r.Clone())
	h.mu.Unlock()
	return nil
}
func (h *records) WithAttrs([]slog.Attr) slog.Handler { panic("not used") }
func (h *records) WithGroup(string) slog.Handler      { panic("not used") }

func (h *records) get() []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]slog.Record(nil), h.all...)
}

func attr(r slog.Record, key string) string {
	var v string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value.String()
			return false
		}
		return true
	})
	return v
}

// go-redis's routine connection messages go to Debug, where an outage does
// not flood the log; a Sentinel master switch and the other Sentinel news
// stay at Info. The formats are go-redis v9.17's own.
func TestLogLevels(t *testing.T) {
	refused := errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")
	for _, tc := range []struct {
		format string
		args   []any
		level  slog.Level
		msg    string
	}{
		// internal/pool: once per failed dial, after its retries
		{"redis: connection pool: failed to dial after %d attempts: %v", []any{5, refused}, slog.LevelDebug,
			"connection pool: failed to dial after 5 attempts: dial tcp 127.0.0.1:6379: connect: connection refused"},
		{"redis: connection pool: failed to get a usable connection after %d attempts", []any{3}, slog.LevelDebug,
			"connection pool: failed to get a usable connection after 3 attempts"},
		{"redis: failed to close connection: %v", []any{refused}, slog.LevelDebug,
			"failed to close connection: dial tcp 127.0.0.1:6379: connect: connection refused"},
		// osscluster: once per command while every node fails
		{"redis: all nodes are marked as failed, picking the temporarily failing node with lowest latency", nil, slog.LevelDebug,
			"all nodes are marked as failed, picking the temporarily failing node with lowest latency"},
		{"push: error processing pending notifications before reading reply: %v", []any{refused}, slog.LevelDebug,
			"push: error processing pending notifications before reading reply: dial tcp 127.0.0.1:6379: connect: connection refused"},
		// sentinel: a failed query is a connection failure (once per dial
		// while the sentinels are out of reach)
		{"sentinel: GetMasterAddrByName name=%q failed: %s", []any{"m", refused}, slog.LevelDebug,
			`sentinel: GetMasterAddrByName name="m" failed: dial tcp 127.0.0.1:6379: connect: connection refused`},
		{"sentinel: GetMasterAddrByName addr=%s, master=%q failed: %s", []any{"127.0.0.1:26379", "m", refused}, slog.LevelDebug,
			`sentinel: GetMasterAddrByName addr=127.0.0.1:26379, master="m" failed: dial tcp 127.0.0.1:6379: connect: connection refused`},
		{"sentinel: Sentinels master=%q failed: %s", []any{"m", refused}, slog.LevelDebug,
			`sentinel: Sentinels master="m" failed: dial tcp 127.0.0.1:6379: connect: connection refused`},
		// sentinel: news, such as a switch of the master
		{"sentinel: new master=%q addr=%q", []any{"m", "127.0.0.1:6380"}, slog.LevelInfo,
			`sentinel: new master="m" addr="127.0.0.1:6380"`},
		{"sentinel: selected addr=%s masterAddr=%s", []any{"127.0.0.1:26379", "127.0.0.1:6379"}, slog.LevelInfo,
			"sentinel: selected addr=127.0.0.1:26379 masterAddr=127.0.0.1:6379"},
		{"sentinel: discovered new sentinel=%q for master=%q", []any{"127.0.0.1:26380", "m"}, slog.LevelInfo,
			`sentinel: discovered new sentinel="127.0.0.1:26380" for master="m"`},
		{"sentinel: ignore addr for master=%q", []any{"other"}, slog.LevelInfo,
			`sentinel: ignore addr for master="other"`},
	} {
		h := &records{}
		slogger{slog.New(h)}.Printf(context.Background(), tc.format, tc.args...)
		got := h.get()
		if len(got) != 1 {
			t.Fatalf("%q: %d records", tc.format, len(got))
		}
		r := got[0]
		if r.Level != tc.level || r.Message != tc.msg || attr(r, "component") != "redis" {
			t.Errorf("%q:\n got %v %q component=%q\nwant %v %q component=redis", tc.format, r.Level, r.Message, attr(r, "component"), tc.level, tc.msg)
		}
	}
}
