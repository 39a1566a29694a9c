package redisstore_test

import (
	"fmt"
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
