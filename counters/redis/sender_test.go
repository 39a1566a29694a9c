package redisstore_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	redisstore "github.com/sessioncap/sessioncap/counters/redis"
	"github.com/sessioncap/sessioncap/counters/storetest"
	"github.com/sessioncap/sessioncap/internal/redistest"
	"github.com/sessioncap/sessioncap/limits"
)

// The sender-networks rule decides alike on Redis and in memory, over
// hours of a domain's servers sending steadily while new networks try:
// its per-window keys (peeks, counts with a reduced Max) mean the same to
// both stores.
func TestSenderNetworksSameOnRedisAsInMemory(t *testing.T) {
	srv := redistest.Standalone(t)
	clock := storetest.NewClock()
	mem := counters.NewMemory(counters.MemoryOptions{Now: clock.Now})
	red := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, KeyPrefix: newPrefix(), Now: clock.Now})
	sn := limits.DefaultSenderNetworks()
	sn.MaxNetworks, sn.Window = 2, time.Hour
	replies := limits.DefaultReplies()
	check := func(s counters.Store, addr string) *limits.Refusal {
		t.Helper()
		r, err := sn.Check("example.org", netip.MustParseAddr(addr), clock.Now(), func(key string, n int64, rate limits.Rate) (limits.Hit, error) {
			return s.Hit(ctx, key, n, rate)
		}, replies)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	refused := 0
	for i := range 60 { // ten hours, every ten minutes
		for j, addr := range []string{"192.0.2.1", "198.51.100.1", "203.0.113.1", "203.0.114.1"} {
			if i < 3 && j >= 1 {
				continue // the second server, then the others, start 30 minutes in
			}
			rm, rr := check(mem, addr), check(red, addr)
			if (rm == nil) != (rr == nil) || rm != nil && rm.Value != rr.Value {
				t.Fatalf("at %dm from %s: memory %v, redis %v", 10*i, addr, rm, rr)
			}
			if rm != nil {
				refused++
				if j < 2 {
					t.Fatalf("at %dm a server of the domain was refused: %v", 10*i, rm)
				}
			}
		}
		clock.Add(10 * time.Minute)
	}
	if refused < 100 {
		t.Fatalf("%d refusals of the two new networks in 60 rounds", refused)
	}
}
