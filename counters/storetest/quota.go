package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

func quotaStore(t *testing.T, s counters.Store) counters.QuotaStore {
	t.Helper()
	qs, ok := s.(counters.QuotaStore)
	if !ok {
		t.Fatalf("%T is not a counters.QuotaStore", s)
	}
	return qs
}

func mustQuota(t *testing.T, s counters.QuotaStore, ops ...limits.QuotaOp) []limits.QuotaUse {
	t.Helper()
	uses, err := s.Quota(ctx, ops)
	if err != nil {
		t.Fatal(err)
	}
	if len(uses) != len(ops) {
		t.Fatalf("%d uses for %d ops", len(uses), len(ops))
	}
	return uses
}

// RunQuota is the conformance suite of counters.QuotaStore: the batch's
// check and count, its atomicity, peeks, the never-loop rule, reset and
// expiry.
func RunQuota(t *testing.T, newStore Factory) {
	msgs := func(key string) limits.QuotaOp {
		return limits.QuotaOp{Key: key, Window: time.Minute, Limit: 3, Need: 1, Hard: true}
	}
	count := func(key string, n int64) limits.QuotaOp {
		return limits.QuotaOp{Key: key, Window: time.Minute, Limit: 3, Add: n}
	}
	t.Run("check at MAIL, count at end of message, slide", func(t *testing.T) {
		clock := NewClock()
		s := quotaStore(t, newStore(t, clock, "mx"))
		k := "quota:user-hourly:user:alice@example.com"
		for i := range 3 {
			if u := mustQuota(t, s, msgs(k))[0]; u.Refused || u.Used(time.Minute) != int64(i) {
				t.Fatalf("message %d: %+v", i+1, u)
			}
			mustQuota(t, s, count(k, 1))
		}
		u := mustQuota(t, s, msgs(k))[0]
		if !u.Refused || u.Used(time.Minute) != 3 || u.Now != clock.Now().UnixMilli() {
			t.Fatalf("fourth message: %+v", u)
		}
		if d := limits.RetryIn(u, msgs(k)); d != time.Minute+20*time.Second {
			t.Errorf("retry in %s, want 1m20s", d) // 3×(1-x) ≤ 2 at x = 1/3 of the next window
		}
		clock.Add(time.Minute + 20*time.Second)
		if u := mustQuota(t, s, msgs(k))[0]; u.Refused {
			t.Fatalf("after the retry time: %+v", u)
		}
		clock.Add(2 * time.Minute)
		if u := mustQuota(t, s, msgs(k))[0]; u.Refused || u.Used(time.Minute) != 0 {
			t.Fatalf("two windows later: %+v", u)
		}
	})
	t.Run("a hard refusal stops the batch from counting", func(t *testing.T) {
		clock := NewClock()
		s := quotaStore(t, newStore(t, clock, "mx"))
		full, other := "quota:mailbox:recipient:x@example.net", "quota:rcpts:user:bob"
		mustQuota(t, s, count(full, 3))
		rcpt := func(hard bool) []limits.QuotaUse {
			a := msgs(full)
			a.Hard = hard
			b := limits.QuotaOp{Key: other, Window: time.Minute, Limit: 100, Need: 1, Add: 1, Hard: true}
			return mustQuota(t, s, a, b)
		}
		if u := rcpt(true); !u[0].Refused || u[1].Refused {
			t.Fatalf("%+v", u)
		}
		if u := mustQuota(t, s, limits.QuotaOp{Key: other, Window: time.Minute, Limit: 100})[0]; u.Window.Curr != 0 {
			t.Fatalf("a batch with a hard refusal counted: %+v", u)
		}
		if u := rcpt(false); !u[0].Refused { // monitor mode: refused, yet counted
			t.Fatalf("%+v", u)
		}
		if u := mustQuota(t, s, limits.QuotaOp{Key: other, Window: time.Minute, Limit: 100})[0]; u.Window.Curr != 1 {
			t.Fatalf("a batch with a soft refusal did not count: %+v", u)
		}
	})
	t.Run("peeks store nothing; reset forgets", func(t *testing.T) {
		clock := NewClock()
		s := quotaStore(t, newStore(t, clock, "mx"))
		mustQuota(t, s, msgs("quota:a:user:peeked"))
		if n, err := s.ResetQuota(ctx, []string{"quota:a:user:peeked"}); err != nil || n != 0 {
			t.Fatalf("reset of a peeked key: %d %v", n, err)
		}
		mustQuota(t, s, count("quota:a:user:counted", 2))
		if n, err := s.ResetQuota(ctx, []string{"quota:a:user:counted", "quota:a:user:never"}); err != nil || n != 1 {
			t.Fatalf("reset: %d %v", n, err)
		}
		if u := mustQuota(t, s, msgs("quota:a:user:counted"))[0]; u.Used(time.Minute) != 0 || u.Refused {
			t.Fatalf("after reset: %+v", u)
		}
	})
	t.Run("never loop: a lone message bigger than the quota passes once a window", func(t *testing.T) {
		clock := NewClock()
		s := quotaStore(t, newStore(t, clock, "mx"))
		k := "quota:disk:network:192.0.2.0/24"
		big := limits.QuotaOp{Key: k, Window: time.Hour, Limit: 1000, Need: 5000, Hard: true}
		if u := mustQuota(t, s, big)[0]; u.Refused {
			t.Fatalf("first: %+v", u)
		}
		mustQuota(t, s, limits.QuotaOp{Key: k, Window: time.Hour, Limit: 1000, Add: 5000})
		clock.Add(59 * time.Minute)
		if u := mustQuota(t, s, big)[0]; !u.Refused {
			t.Fatalf("second in the same window: %+v", u)
		}
		clock.Add(time.Minute)
		if u := mustQuota(t, s, big)[0]; u.Refused {
			t.Fatalf("a window later: %+v", u)
		}
	})
	t.Run("bytes beyond 2^32 and many keys in one batch", func(t *testing.T) {
		clock := NewClock()
		s := quotaStore(t, newStore(t, clock, "mx"))
		var ops []limits.QuotaOp
		for i := range 40 {
			ops = append(ops, limits.QuotaOp{Key: fmt.Sprintf("quota:b:sender:s%d@example.org", i), Window: time.Hour, Limit: 1 << 40, Add: 5 << 30})
		}
		mustQuota(t, s, ops...)
		for i := range ops {
			ops[i].Add, ops[i].Need = 0, 1
		}
		for i, u := range mustQuota(t, s, ops...) {
			if u.Window.Curr != 5<<30 || u.Refused {
				t.Fatalf("key %d: %+v", i, u)
			}
		}
	})
}

// runQuotaShared checks that two hosts on one store share a quota.
func runQuotaShared(t *testing.T, a, b counters.Store, clock *Clock) {
	qa, qb := quotaStore(t, a), quotaStore(t, b)
	k := "quota:shared:user:alice"
	check := limits.QuotaOp{Key: k, Window: time.Hour, Limit: 2, Need: 1, Hard: true}
	add := limits.QuotaOp{Key: k, Window: time.Hour, Limit: 2, Add: 1}
	mustQuota(t, qa, add)
	mustQuota(t, qb, add)
	if u := mustQuota(t, qa, check)[0]; !u.Refused || u.Used(time.Hour) != 2 {
		t.Fatalf("a quota counted on two hosts: %+v", u)
	}
	if n, err := qb.ResetQuota(ctx, []string{k}); err != nil || n != 1 {
		t.Fatalf("reset on the other host: %d %v", n, err)
	}
	if u := mustQuota(t, qa, check)[0]; u.Refused {
		t.Fatalf("after a reset on the other host: %+v", u)
	}
}
