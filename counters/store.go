// Package counters stores the state that outlives one SMTP session: sliding
// windows and bans per key, behind one policy-free atomic primitive (Hit)
// that the in-memory store runs in Go and the Redis store runs as a Lua
// script; and, in process only, the open-session leases of concurrency caps.
package counters

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// Store is what every backend implements. Keys are opaque to the store
// (limits.StoreKey makes them); every method is safe for concurrent use.
type Store interface {
	// Hit is the atomic primitive: if key is banned, say until when; else
	// add n to its sliding window and, if that goes over r.Max, ban it for
	// r.Ban (or, with r.Ban zero, refuse the hit uncounted). With r.Max zero
	// it only reports a ban. With n zero it is a peek: it reports the
	// window's count and stores nothing (an unseen key stays unseen).
	Hit(ctx context.Context, key string, n int64, r limits.Rate) (limits.Hit, error)
	// Ban bans key for d (a manual ban), replacing a shorter one. reason
	// is what the ban records: its origin, then optionally ": " and a text
	// (StoredReason makes it).
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
	Origin string    `json:"origin"`           // what banned: a rule ("frequency", …) or "manual"
	Reason string    `json:"reason,omitempty"` // free text given with a manual ban
	Since  time.Time `json:"since"`
	Until  time.Time `json:"until"`
	Host   string    `json:"host"` // the sessioncap host that banned
}

// OriginManual is the origin of a ban made on the admin socket; the other
// origins are the names of the rules that ban (limits.Limit values).
const OriginManual = "manual"

// StoredReason is the reason string the stores record with a ban: the
// origin, then ": " and text when there is one. Both stores keep it as one
// string, so that no store format changes with the origin.
func StoredReason(origin, text string) string {
	if text == "" {
		return origin
	}
	return origin + ": " + text
}

// SplitReason undoes StoredReason. A recorded reason that starts with no
// known origin is the free text of a manual ban made before bans had an
// origin.
func SplitReason(stored string) (origin, text string) {
	head, rest, _ := strings.Cut(stored, ": ")
	if knownOrigin(head) {
		return head, rest
	}
	if stored == "" {
		return "", ""
	}
	return OriginManual, stored
}

func knownOrigin(s string) bool {
	if s == OriginManual {
		return true
	}
	for _, l := range limits.AllLimits {
		if string(l) == s {
			return true
		}
	}
	return false
}

// withReason sets b's origin and text from a stored reason.
func (b Ban) withReason(stored string) Ban {
	b.Origin, b.Reason = SplitReason(stored)
	return b
}

// NewBan is a ban as a store records it, its reason split into origin and
// text.
func NewBan(key, stored string, since, until time.Time, host string) Ban {
	return Ban{Key: key, Since: since, Until: until, Host: host}.withReason(stored)
}

// Stats is a snapshot of a store for metrics and status.
type Stats struct {
	Tracked   int64  `json:"tracked"`   // keys with a window (-1: unknown)
	Banned    int64  `json:"banned"`    // bans in force
	Evictions uint64 `json:"evictions"` // windows and bans dropped to stay within bounds
}

// ErrClosed is returned by a store used after Close.
var ErrClosed = errors.New("counters: store closed")
