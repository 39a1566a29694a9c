// Package counters stores the state that outlives one SMTP session: sliding
// windows and bans per key, behind one policy-free atomic primitive (Hit)
// that the in-memory store runs in Go and the Redis store runs as a Lua
// script; and, in process only, the open-session leases of concurrency caps.
package counters

import (
	"context"
	"errors"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// Store is what every backend implements. Keys are opaque to the store
// (limits.StoreKey makes them); every method is safe for concurrent use.
type Store interface {
	// Hit is the atomic primitive: if key is banned, say until when; else
	// add n to its sliding window and, if that goes over r.Max, ban it for
	// r.Ban (or, with r.Ban zero, refuse the hit uncounted). With r.Max zero
	// it only reports a ban.
	Hit(ctx context.Context, key string, n int64, r limits.Rate) (limits.Hit, error)
	// Ban bans key for d with reason (a manual ban), replacing a shorter one.
	Ban(ctx context.Context, key string, d time.Duration, reason string) (Ban, error)
	// Unban lifts the ban of key and forgets its window; it reports whether
	// key was banned.
	Unban(ctx context.Context, key string) (bool, error)
	// Bans lists the bans in force, soonest ending first.
	Bans(ctx context.Context) ([]Ban, error)
	// Stats counts what the store holds.
	Stats(ctx context.Context) (Stats, error)
	// Close releases the store's connections.
	Close() error
}

// Ban is one ban in force.
type Ban struct {
	Key    string    `json:"key"`
	Reason string    `json:"reason"` // the rule that banned ("frequency", "manual", …)
	Since  time.Time `json:"since"`
	Until  time.Time `json:"until"`
	Host   string    `json:"host"` // the sessioncap host that banned
}

// Stats is a snapshot of a store for metrics and status.
type Stats struct {
	Tracked   int64  `json:"tracked"`   // keys with a window (-1: unknown)
	Banned    int64  `json:"banned"`    // bans in force
	Evictions uint64 `json:"evictions"` // windows and bans dropped to stay within bounds
}

// ErrClosed is returned by a store used after Close.
var ErrClosed = errors.New("counters: store closed")
