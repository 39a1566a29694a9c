// Package storetest is the conformance suite every counters.Store passes:
// the sliding window, bans, expiry, unban, manual bans, listing and clock
// skew, with a fake clock the store under test must read.
package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// Clock is a settable time source; stores under test read Now.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock at a fixed, millisecond-aligned instant.
func NewClock() *Clock { return &Clock{t: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

// Add moves the clock by d (back when negative).
func (c *Clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// Factory returns a new, empty store that reads clock and records host with
// its bans. Stores sharing state (two hosts on one Redis) are made by
// calling it twice: RunShared takes two such stores.
type Factory func(t *testing.T, clock *Clock, host string) counters.Store

var ctx = context.Background()

// step is one hit and what the store must answer.
type step struct {
	advance   time.Duration
	key       string
	n         int64
	wantCount int64
	wantBan   time.Duration // remaining ban after the hit; 0 for none
	crossed   bool
}

var freq = limits.Rate{Max: 3, Window: time.Minute, Ban: 10 * time.Minute, Reason: "frequency"}

// Run runs every conformance table against stores made by newStore.
func Run(t *testing.T, newStore Factory) {
	t.Run("quota", func(t *testing.T) { RunQuota(t, newStore) })
	tables := []struct {
		name  string
		rate  limits.Rate
		steps []step
	}{
		{"window fills then bans", freq, []step{
			{0, "a", 1, 1, 0, false},
			{time.Second, "a", 1, 2, 0, false},
			{time.Second, "a", 1, 3, 0, false},
			{time.Second, "a", 1, 4, 10 * time.Minute, true},
			{time.Minute, "a", 1, 0, 9 * time.Minute, false}, // banned: not counted
			{time.Second, "b", 1, 1, 0, false},               // other keys are apart
		}},
		{"previous window weighs by its overlap", freq, []step{
			{0, "a", 3, 3, 0, false},
			{time.Minute + 30*time.Second, "a", 1, 3, 0, false}, // 3 × 0.5 + 1 = 2.5 → 3
			{15 * time.Second, "a", 1, 3, 0, false},             // 3 × 0.25 + 2 = 2.75 → 3
			{0, "a", 1, 4, 10 * time.Minute, true},              // 3 × 0.25 + 3 = 3.75
		}},
		{"an idle key starts over", freq, []step{
			{0, "a", 3, 3, 0, false},
			{2 * time.Minute, "a", 3, 3, 0, false},
		}},
		{"n counts at once", freq, []step{
			{0, "a", 2, 2, 0, false},
			{0, "a", 2, 4, 10 * time.Minute, true},
		}},
		{"ban expires and the key starts over", freq, []step{
			{0, "a", 4, 4, 10 * time.Minute, true},
			{10*time.Minute - time.Millisecond, "a", 1, 0, time.Millisecond, false},
			{time.Millisecond, "a", 1, 1, 0, false},
		}},
		{"without a ban a refused hit is not counted", limits.Rate{Max: 2, Window: time.Minute}, []step{
			{0, "a", 1, 1, 0, false},
			{0, "a", 1, 2, 0, false},
			{0, "a", 1, 2, 0, true},
			{0, "a", 1, 2, 0, true},                             // a client that keeps trying does not lock itself out
			{time.Minute + 30*time.Second, "a", 1, 2, 0, false}, // 2 × 0.5 + 1
		}},
		{"a clock stepping back is clamped", freq, []step{
			{0, "a", 2, 2, 0, false},
			{-30 * time.Second, "a", 1, 3, 0, false}, // the window does not empty
			{0, "a", 1, 4, 10 * time.Minute, true},
		}},
		{"max zero only reports bans", limits.Rate{}, []step{
			{0, "a", 5, 0, 0, false},
			{0, "a", 5, 0, 0, false},
		}},
	}
	for _, tc := range tables {
		t.Run(tc.name, func(t *testing.T) {
			clock := NewClock()
			s := newStore(t, clock, "mx1")
			for i, st := range tc.steps {
				clock.Add(st.advance)
				h, err := s.Hit(ctx, st.key, st.n, tc.rate)
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				var ban time.Duration
				if !h.BannedUntil.IsZero() {
					ban = h.BannedUntil.Sub(clock.Now())
				}
				if h.Count != st.wantCount || ban != st.wantBan || h.Crossed != st.crossed {
					t.Fatalf("step %d (%s +%d): count %d, ban %v, crossed %v; want %d, %v, %v",
						i, st.key, st.n, h.Count, ban, h.Crossed, st.wantCount, st.wantBan, st.crossed)
				}
				if !h.Now.Equal(clock.Now()) {
					t.Fatalf("step %d: store time %v, clock %v", i, h.Now, clock.Now())
				}
			}
		})
	}

	t.Run("a peek (n = 0) counts and stores nothing", func(t *testing.T) {
		clock := NewClock()
		s := newStore(t, clock, "mx1")
		before, err := s.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			if h := mustHit(t, s, fmt.Sprintf("peek:%d", i), 0, freq); h.Count != 0 || h.Crossed || !h.BannedUntil.IsZero() {
				t.Fatalf("peek of an unseen key: %+v", h)
			}
		}
		if after, err := s.Stats(ctx); err != nil || after.Tracked != before.Tracked {
			t.Fatalf("peeks stored keys: tracked %d → %d (%v)", before.Tracked, after.Tracked, err)
		}
		mustHit(t, s, "peek:0", 2, freq)
		for i := 0; i < 5; i++ {
			if h := mustHit(t, s, "peek:0", 0, freq); h.Count != 2 || h.Crossed {
				t.Fatalf("peek %d of a key with 2 hits: %+v", i, h)
			}
		}
		if h := mustHit(t, s, "peek:0", 1, freq); h.Count != 3 || h.Crossed {
			t.Fatalf("peeks were counted: %+v", h)
		}
		// the count decays as the window slides, peeked or not
		clock.Add(time.Minute + 45*time.Second) // 3 × 0.25 = 0.75 → 1
		if h := mustHit(t, s, "peek:0", 0, freq); h.Count != 1 {
			t.Fatalf("peek after 1m45s: %+v, want count 1", h)
		}
		clock.Add(time.Minute)
		if h := mustHit(t, s, "peek:0", 0, freq); h.Count != 0 {
			t.Fatalf("peek after the window: %+v, want count 0", h)
		}
	})

	t.Run("bans list, unban and manual bans", func(t *testing.T) {
		clock := NewClock()
		s := newStore(t, clock, "mx1")
		if h := mustHit(t, s, "freq:192.0.2.0/24", 4, freq); !h.Crossed || h.BanReason != freq.Reason {
			t.Fatalf("the hit that bans: %+v, want reason %q", h, freq.Reason)
		}
		clock.Add(time.Minute)
		b, err := s.Ban(ctx, "freq:198.51.100.7/32", time.Hour, counters.StoredReason(counters.OriginManual, "spam run: ticket 7"))
		if err != nil {
			t.Fatal(err)
		}
		if !b.Until.Equal(clock.Now().Add(time.Hour)) || b.Origin != "manual" || b.Reason != "spam run: ticket 7" || b.Host != "mx1" {
			t.Fatalf("manual ban %+v", b)
		}
		// a reason recorded before bans had an origin is a manual ban's text
		if b, err := s.Ban(ctx, "freq:203.0.113.9/32", time.Hour, "legacy text"); err != nil || b.Origin != "manual" || b.Reason != "legacy text" {
			t.Fatalf("legacy manual ban %+v, %v", b, err)
		}
		if was, err := s.Unban(ctx, "freq:203.0.113.9/32"); err != nil || !was {
			t.Fatalf("unban legacy: %v, %v", was, err)
		}
		bans, err := s.Bans(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := []counters.Ban{
			{Key: "freq:192.0.2.0/24", Origin: "frequency", Since: clock.Now().Add(-time.Minute), Until: clock.Now().Add(9 * time.Minute), Host: "mx1"},
			{Key: "freq:198.51.100.7/32", Origin: "manual", Reason: "spam run: ticket 7", Since: clock.Now(), Until: clock.Now().Add(time.Hour), Host: "mx1"},
		}
		if err := sameBans(bans, want); err != nil {
			t.Fatal(err)
		}
		if st, err := s.Stats(ctx); err != nil || st.Banned != 2 {
			t.Fatalf("stats %+v, %v; want 2 banned", st, err)
		}
		h := mustHit(t, s, "freq:198.51.100.7/32", 1, freq)
		if !h.BannedUntil.Equal(clock.Now().Add(time.Hour)) || h.BanReason != "manual: spam run: ticket 7" {
			t.Fatalf("manual ban not in force, or without its reason: %+v", h)
		}
		// a hit on a key its own rate banned tells that rate's reason
		if h := mustHit(t, s, "freq:192.0.2.0/24", 1, freq); h.BannedUntil.IsZero() || h.BanReason != freq.Reason {
			t.Fatalf("hit on a banned key: %+v, want reason %q", h, freq.Reason)
		}
		if h := mustHit(t, s, "freq:192.0.2.99/32", 1, freq); h.BanReason != "" {
			t.Fatalf("reason on a key never banned: %+v", h)
		}
		if was, err := s.Unban(ctx, "freq:198.51.100.7/32"); err != nil || !was {
			t.Fatalf("unban: %v, %v", was, err)
		}
		if was, err := s.Unban(ctx, "freq:203.0.113.0/24"); err != nil || was {
			t.Fatalf("unban of a key never banned: %v, %v", was, err)
		}
		if h := mustHit(t, s, "freq:198.51.100.7/32", 1, freq); !h.BannedUntil.IsZero() || h.Count != 1 {
			t.Fatalf("after unban: %+v", h)
		}
		// a shorter manual ban does not cut a longer one short
		if b, _ := s.Ban(ctx, "freq:192.0.2.0/24", time.Second, "manual"); !b.Until.Equal(clock.Now().Add(9 * time.Minute)) {
			t.Fatalf("shorter ban replaced a longer one: %+v", b)
		}
		clock.Add(9 * time.Minute)
		bans, _ = s.Bans(ctx)
		if len(bans) != 0 {
			t.Fatalf("expired bans listed: %+v", bans)
		}
		if st, _ := s.Stats(ctx); st.Banned != 0 {
			t.Fatalf("expired bans counted: %+v", st)
		}
	})

	t.Run("keys with every character a key may hold", func(t *testing.T) {
		clock := NewClock()
		s := newStore(t, clock, "mx1")
		for _, k := range []string{"freq:2001:db8::/64", "freq:override3:10.0.0.0/8", "x:{tag}:a b"} {
			mustHit(t, s, k, 4, freq)
			if h := mustHit(t, s, k, 1, freq); h.BannedUntil.IsZero() {
				t.Fatalf("%s: not banned", k)
			}
		}
	})

	t.Run("concurrent hits count exactly", func(t *testing.T) {
		clock := NewClock()
		s := newStore(t, clock, "mx1")
		r := limits.Rate{Max: 1 << 30, Window: time.Hour}
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 50; i++ {
					if _, err := s.Hit(ctx, "k", 1, r); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if h := mustHit(t, s, "k", 0, r); h.Count != 400 {
			t.Fatalf("count %d after 400 concurrent hits", h.Count)
		}
	})
}

// RunShared checks that two stores made over the same shared state (two
// hosts on one Redis) see each other's windows and bans.
func RunShared(t *testing.T, a, b counters.Store, clock *Clock) {
	runQuotaShared(t, a, b, clock)
	// hits alternate between the hosts and count in one window
	for i, s := range []counters.Store{b, a, b} {
		if h := mustHit(t, s, "freq:192.0.2.0/24", 1, freq); h.Count != int64(i+1) || h.Crossed || !h.BannedUntil.IsZero() {
			t.Fatalf("hit %d over two hosts: %+v; want count %d", i+1, h, i+1)
		}
	}
	h := mustHit(t, a, "freq:192.0.2.0/24", 1, freq)
	if !h.Crossed || h.Count != 4 || !h.BannedUntil.Equal(clock.Now().Add(freq.Ban)) {
		t.Fatalf("4 hits over two hosts did not cross a limit of 3: %+v", h)
	}
	if h := mustHit(t, b, "freq:192.0.2.0/24", 1, freq); h.BannedUntil.IsZero() {
		t.Fatal("a ban made on host a does not hold on host b")
	}
	bans, err := b.Bans(ctx)
	if err != nil || len(bans) != 1 || bans[0].Host != "mx-a" {
		t.Fatalf("bans seen from b: %+v, %v", bans, err)
	}
	if was, err := b.Unban(ctx, "freq:192.0.2.0/24"); err != nil || !was {
		t.Fatalf("unban from b: %v, %v", was, err)
	}
	if h := mustHit(t, a, "freq:192.0.2.0/24", 1, freq); !h.BannedUntil.IsZero() {
		t.Fatal("an unban on host b does not lift the ban on host a")
	}
}

func mustHit(t *testing.T, s counters.Store, key string, n int64, r limits.Rate) limits.Hit {
	t.Helper()
	h, err := s.Hit(ctx, key, n, r)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func sameBans(got, want []counters.Ban) error {
	if len(got) != len(want) {
		return fmt.Errorf("bans %+v, want %+v", got, want)
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Key != w.Key || g.Origin != w.Origin || g.Reason != w.Reason || g.Host != w.Host || !g.Since.Equal(w.Since) || !g.Until.Equal(w.Until) {
			return fmt.Errorf("ban %d: %+v, want %+v", i, g, w)
		}
	}
	return nil
}
