package redisstore_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	redisstore "github.com/sessioncap/sessioncap/counters/redis"
	"github.com/sessioncap/sessioncap/counters/storetest"
	"github.com/sessioncap/sessioncap/internal/redistest"
	"github.com/sessioncap/sessioncap/limits"
)

// The quota ops of one stage, whatever their number, cost one command on a
// standalone Redis (one script), like a hit.
func TestQuotaIsOneRoundTrip(t *testing.T) {
	srv := redistest.Standalone(t)
	s := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, KeyPrefix: newPrefix()})
	ops := []limits.QuotaOp{
		{Key: "quota:user-hourly:user:alice", Window: time.Hour, Limit: 200, Need: 1, Hard: true},
		{Key: "quota:user-daily:user:alice", Window: 24 * time.Hour, Limit: 1000, Need: 1, Hard: true},
		{Key: "quota:domain:sender_domain:example.com", Window: time.Hour, Limit: 5000, Need: 1, Hard: true},
	}
	if _, err := s.Quota(ctx, ops); err != nil { // loads the script
		t.Fatal(err)
	}
	var cmds atomic.Int64
	s.Client().AddHook(countHook{&cmds})
	for range 5 {
		if _, err := s.Quota(ctx, ops); err != nil {
			t.Fatal(err)
		}
	}
	if n := cmds.Load(); n != 5 {
		t.Fatalf("%d commands for 5 stages of 3 quota rules", n)
	}
}

// In a Cluster the ops of one stage are grouped by bucket: one pipeline,
// one script per bucket, and every op answered.
func TestQuotaClusterBuckets(t *testing.T) {
	var addrs []string
	for _, n := range redistest.Cluster(t) {
		addrs = append(addrs, n.Addr())
	}
	s := open(t, redisstore.Options{Addresses: addrs, Cluster: true, KeyPrefix: newPrefix()})
	var ops []limits.QuotaOp
	for i := range 12 {
		ops = append(ops, limits.QuotaOp{Key: fmt.Sprintf("quota:r:recipient:u%d@example.net", i), Window: time.Hour, Limit: 1, Need: 1, Add: 1})
	}
	for round := range 2 {
		uses, err := s.Quota(ctx, ops)
		if err != nil {
			t.Fatal(err)
		}
		for i, u := range uses {
			if u.Refused != (round == 1) || u.Window.Curr != int64(round) {
				t.Fatalf("round %d op %d: %+v", round, i, u)
			}
		}
	}
}

// The quota conformance suite through a Sentinel.
func TestQuotaSentinel(t *testing.T) {
	sentinel, _, _ := redistest.Sentinel(t)
	base := redisstore.Options{Addresses: []string{sentinel.Addr()}, MasterName: "m"}
	storetest.RunQuota(t, func(t *testing.T, clock *storetest.Clock, host string) counters.Store {
		o := base
		o.KeyPrefix, o.Now, o.Host = newPrefix(), clock.Now, host
		return open(t, o)
	})
}

// Within one fixed window a hit and a quota count write the count only: no
// PEXPIRE (the key already expires two windows after the window's start,
// set when the window started), so Redis does less per call; the key keeps
// its TTL.
func TestScriptsSkipExpireWithinAWindow(t *testing.T) {
	srv := redistest.Standalone(t)
	s := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, KeyPrefix: newPrefix()})
	r := limits.Rate{Max: 100, Window: time.Hour}
	q := []limits.QuotaOp{{Key: "quota:u:user:alice", Window: time.Hour, Limit: 100, Add: 1}}
	for i := range 2 { // the first call of each loads its script and starts the window
		if _, err := s.Hit(ctx, "freq:192.0.2.1/32", 1, r); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Quota(ctx, q); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := s.Client().ConfigResetStat(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	info, err := s.Client().Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(info, "cmdstat_pexpire:") {
		t.Errorf("PEXPIRE was called within one window:\n%s", info)
	}
	if !strings.Contains(info, "cmdstat_hincrby:calls=1,") {
		t.Errorf("the quota count did not HINCRBY once:\n%s", info)
	}
	keys, err := s.Client().Keys(ctx, "*").Result()
	if err != nil || len(keys) < 2 {
		t.Fatalf("keys %v %v", keys, err)
	}
	for _, k := range keys {
		if ttl := s.Client().PTTL(ctx, k).Val(); ttl <= 0 || ttl > 2*time.Hour {
			t.Errorf("key %s has PTTL %v, want (0, 2h]", k, ttl)
		}
	}
}
