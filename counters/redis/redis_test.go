package redisstore_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sessioncap/sessioncap/counters"
	redisstore "github.com/sessioncap/sessioncap/counters/redis"
	"github.com/sessioncap/sessioncap/counters/storetest"
	"github.com/sessioncap/sessioncap/internal/redistest"
	"github.com/sessioncap/sessioncap/limits"
)

var ctx = context.Background()

// prefixes gives every store of a conformance table its own keyspace.
var prefixes atomic.Int64

func newPrefix() string { return "t" + strconv.FormatInt(prefixes.Add(1), 10) + ":" }

func open(t *testing.T, o redisstore.Options) *redisstore.Store {
	t.Helper()
	s, err := redisstore.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// suite runs the conformance suite, the shared-state suite and the TTL scan
// against one Redis deployment.
func suite(t *testing.T, base redisstore.Options) {
	factory := func(t *testing.T, clock *storetest.Clock, host string) counters.Store {
		o := base
		o.KeyPrefix, o.Now, o.Host = newPrefix(), clock.Now, host
		return open(t, o)
	}
	t.Run("conformance", func(t *testing.T) { storetest.Run(t, factory) })
	t.Run("shared", func(t *testing.T) {
		clock := storetest.NewClock()
		o := base
		o.KeyPrefix, o.Now = newPrefix(), clock.Now
		o.Host = "mx-a"
		a := open(t, o)
		o.Host = "mx-b"
		b := open(t, o)
		storetest.RunShared(t, a, b, clock)
	})
	t.Run("every key has a TTL", func(t *testing.T) {
		s := open(t, base)
		var n int
		forEachPrimary(t, s.Client(), func(c *redis.Client) {
			iter := c.Scan(ctx, 0, "*", 1000).Iterator()
			for iter.Next(ctx) {
				n++
				if ttl := c.PTTL(ctx, iter.Val()).Val(); ttl <= 0 {
					t.Errorf("key %q has PTTL %v", iter.Val(), ttl)
				}
			}
			if err := iter.Err(); err != nil {
				t.Error(err)
			}
		})
		if n == 0 {
			t.Fatal("no keys after the conformance run")
		}
		t.Logf("%d keys, each with a TTL", n)
	})
}

func forEachPrimary(t *testing.T, c redis.UniversalClient, f func(*redis.Client)) {
	t.Helper()
	switch c := c.(type) {
	case *redis.ClusterClient:
		// ForEachMaster calls in parallel: f runs one primary at a time
		var mu sync.Mutex
		if err := c.ForEachMaster(ctx, func(_ context.Context, c *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			f(c)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	case *redis.Client:
		f(c)
	default:
		t.Fatalf("client %T", c)
	}
}

func TestStandalone(t *testing.T) {
	srv := redistest.Standalone(t)
	suite(t, redisstore.Options{Addresses: []string{srv.Addr()}})
}

func TestCluster(t *testing.T) {
	nodes := redistest.Cluster(t)
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.Addr())
	}
	base := redisstore.Options{Addresses: addrs, Cluster: true}
	suite(t, base)

	// Bans made in every bucket are listed and counted from every node.
	t.Run("listing spans every node", func(t *testing.T) {
		clock := storetest.NewClock()
		o := base
		o.KeyPrefix, o.Now, o.Host = newPrefix(), clock.Now, "mx1"
		s := open(t, o)
		const n = 300
		for i := 0; i < n; i++ {
			if _, err := s.Ban(ctx, fmt.Sprintf("freq:10.0.%d.%d/32", i/256, i%256), time.Duration(i+1)*time.Minute, "manual"); err != nil {
				t.Fatal(err)
			}
		}
		holding := 0
		forEachPrimary(t, s.Client(), func(c *redis.Client) {
			if keys, _ := c.Keys(ctx, o.KeyPrefix+"*").Result(); len(keys) > 0 {
				holding++
			}
		})
		if holding != 3 {
			t.Fatalf("bans on %d of 3 primaries; buckets are not spread", holding)
		}
		bans, err := s.Bans(ctx)
		if err != nil || len(bans) != n {
			t.Fatalf("%d bans listed, %v; want %d", len(bans), err, n)
		}
		for i := 1; i < len(bans); i++ {
			if bans[i].Until.Before(bans[i-1].Until) {
				t.Fatalf("not sorted at %d: %v then %v", i, bans[i-1].Until, bans[i].Until)
			}
		}
		clock.Add(n/2*time.Minute + time.Millisecond) // half of them end
		if st, err := s.Stats(ctx); err != nil || st.Banned != n/2 || st.Tracked != -1 {
			t.Fatalf("stats %+v, %v; want %d banned, tracked unknown", st, err, n/2)
		}
	})

	// Ping asks every primary: one dead primary is an outage.
	t.Run("ping fails with a primary down", func(t *testing.T) {
		s := open(t, base)
		if err := s.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		nodes[2].Kill()
		c, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if err := s.Ping(c); err == nil {
			t.Fatal("Ping succeeded with a primary down")
		}
	})
}

// The Redis store and limits.Apply (through the memory store) answer every
// hit of a random walk alike: same counts, bans, crossings and clock.
func TestSameAnswersAsMemory(t *testing.T) {
	srv := redistest.Standalone(t)
	clock := storetest.NewClock()
	mem := counters.NewMemory(counters.MemoryOptions{Now: clock.Now, Host: "mx1"})
	red := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, KeyPrefix: newPrefix(), Now: clock.Now, Host: "mx1"})
	rates := []limits.Rate{
		{Max: 3, Window: time.Minute, Ban: 10 * time.Minute, Reason: "frequency"},
		{Max: 5, Window: 7 * time.Second},
		{Max: 1, Window: 333 * time.Millisecond, Ban: time.Second},
		{},
		{Max: 1 << 40, Window: 3 * time.Second}, // counts saturate at 2^32-1 (satAdd)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 3000; i++ {
		switch rng.IntN(10) {
		case 0:
			clock.Add(-time.Duration(rng.IntN(5000)) * time.Millisecond) // a clock stepping back
		default:
			clock.Add(time.Duration(rng.IntN(20000)) * time.Millisecond)
		}
		key := "k" + strconv.Itoa(rng.IntN(3))
		r := rates[rng.IntN(len(rates))]
		n := int64(rng.IntN(4))
		if rng.IntN(20) == 0 {
			n = 1<<31 + int64(rng.IntN(1000))
		}
		if rng.IntN(50) == 0 {
			for _, s := range []counters.Store{mem, red} {
				if _, err := s.Unban(ctx, key); err != nil {
					t.Fatal(err)
				}
			}
			continue
		}
		hm, err := mem.Hit(ctx, key, n, r)
		if err != nil {
			t.Fatal(err)
		}
		hr, err := red.Hit(ctx, key, n, r)
		if err != nil {
			t.Fatal(err)
		}
		if hm.Count != hr.Count || !hm.BannedUntil.Equal(hr.BannedUntil) || hm.Crossed != hr.Crossed || !hm.Now.Equal(hr.Now) {
			t.Fatalf("step %d (%s +%d, %+v): memory %+v, redis %+v", i, key, n, r, hm, hr)
		}
	}
}

// Without an injected clock the script reads Redis's TIME.
func TestServerClock(t *testing.T) {
	srv := redistest.Standalone(t)
	s := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, KeyPrefix: newPrefix()})
	before := time.Now()
	h, err := s.Hit(ctx, "k", 1, limits.Rate{Max: 1, Window: time.Minute, Ban: time.Hour, Reason: "frequency"})
	if err != nil {
		t.Fatal(err)
	}
	if d := h.Now.Sub(before); d < -time.Second || d > 5*time.Second || h.Count != 1 {
		t.Fatalf("hit %+v at %v", h, before)
	}
	h, _ = s.Hit(ctx, "k", 1, limits.Rate{Max: 1, Window: time.Minute, Ban: time.Hour, Reason: "frequency"})
	if !h.Crossed || h.BannedUntil.Sub(h.Now) != time.Hour {
		t.Fatalf("second hit %+v", h)
	}
	bans, err := s.Bans(ctx)
	if err != nil || len(bans) != 1 || !bans[0].Since.Equal(h.Now) {
		t.Fatalf("bans %+v, %v", bans, err)
	}
}

// After SCRIPT FLUSH (a restarted or new server) EVALSHA fails with NOSCRIPT
// and the store falls back to EVAL.
func TestScriptFlushed(t *testing.T) {
	srv := redistest.Standalone(t)
	s := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, KeyPrefix: newPrefix()})
	r := limits.Rate{Max: 10, Window: time.Minute}
	if _, err := s.Hit(ctx, "k", 1, r); err != nil {
		t.Fatal(err)
	}
	if err := s.Client().ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if h, err := s.Hit(ctx, "k", 1, r); err != nil || h.Count != 2 {
		t.Fatalf("after SCRIPT FLUSH: %+v, %v", h, err)
	}
}

// Hit is one round trip: one command reaches the server per hit.
func TestHitIsOneRoundTrip(t *testing.T) {
	srv := redistest.Standalone(t)
	s := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, KeyPrefix: newPrefix()})
	r := limits.Rate{Max: 10, Window: time.Minute}
	if _, err := s.Hit(ctx, "k", 1, r); err != nil { // loads the script (EVALSHA, then EVAL)
		t.Fatal(err)
	}
	var cmds atomic.Int64
	s.Client().AddHook(countHook{&cmds})
	for i := 0; i < 5; i++ {
		if _, err := s.Hit(ctx, "k", 1, r); err != nil {
			t.Fatal(err)
		}
	}
	if n := cmds.Load(); n != 5 {
		t.Fatalf("%d commands for 5 hits", n)
	}
}

type countHook struct{ n *atomic.Int64 }

func (h countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.n.Add(int64(len(cmds))); return next(ctx, cmds) }
}

// A caller's deadline bounds a call even when the server accepts the
// connection and never answers.
func TestDeadlineBoundsCall(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, c) // reads, never answers
		}
	}()
	s := open(t, redisstore.Options{Addresses: []string{l.Addr().String()}, ReadTimeout: time.Minute})
	const timeout = 100 * time.Millisecond
	for _, call := range []func(context.Context) error{
		func(c context.Context) error {
			_, err := s.Hit(c, "k", 1, limits.Rate{Max: 10, Window: time.Minute})
			return err
		},
		func(c context.Context) error { _, err := s.Bans(c); return err },
		s.Ping,
	} {
		c, cancel := context.WithTimeout(ctx, timeout)
		start := time.Now()
		err := call(c)
		cancel()
		if d := time.Since(start); err == nil || d > 2*timeout {
			t.Fatalf("call to a silent server: %v after %v (timeout %v)", err, d, timeout)
		}
	}
}

// An ACL user confined to the key prefix can run everything the store does.
func TestACLUser(t *testing.T) {
	srv := redistest.Standalone(t, "--requirepass", "admin-secret", "--user", "mx", "on", ">mx-secret", "~sessioncap:*", "+@all")
	s := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, Username: "mx", Password: "mx-secret", Host: "mx1"})
	r := limits.Rate{Max: 1, Window: time.Minute, Ban: time.Hour, Reason: "frequency"}
	for i, want := range []bool{false, true} {
		if h, err := s.Hit(ctx, "k", 1, r); err != nil || h.Crossed != want {
			t.Fatalf("hit %d: %+v, %v", i, h, err)
		}
	}
	if _, err := s.Ban(ctx, "j", time.Hour, "manual"); err != nil {
		t.Fatal(err)
	}
	if bans, err := s.Bans(ctx); err != nil || len(bans) != 2 {
		t.Fatalf("bans %+v, %v", bans, err)
	}
	if st, err := s.Stats(ctx); err != nil || st.Banned != 2 {
		t.Fatalf("stats %+v, %v", st, err)
	}
	if was, err := s.Unban(ctx, "k"); err != nil || !was {
		t.Fatalf("unban: %v, %v", was, err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	bad := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, Username: "mx", Password: "wrong"})
	if _, err := bad.Hit(ctx, "k", 1, r); err == nil {
		t.Fatal("a wrong password was accepted")
	}
}

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		o    redisstore.Options
		want string
	}{
		{redisstore.Options{}, "no address"},
		{redisstore.Options{Addresses: []string{"a:1", "b:1"}}, "several addresses"},
		{redisstore.Options{Addresses: []string{"a:1"}, Cluster: true, MasterName: "m"}, "both"},
		{redisstore.Options{Addresses: []string{"a:1"}, Cluster: true, DB: 1}, "database 0"},
		{redisstore.Options{Addresses: []string{"a:1"}, KeyPrefix: "x{y}:"}, "brace"},
	} {
		if _, err := redisstore.New(tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v): %v; want an error with %q", tc.o, err, tc.want)
		}
	}
	s, err := redisstore.New(redisstore.Options{Addresses: []string{"127.0.0.1:1"}, TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := s.Hit(ctx, "k", 1, limits.Rate{}); err != counters.ErrClosed {
		t.Fatalf("hit after Close: %v", err)
	}
}

func BenchmarkHit(b *testing.B) {
	srv := redistest.Standalone(b)
	s, err := redisstore.New(redisstore.Options{Addresses: []string{srv.Addr()}, KeyPrefix: newPrefix()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	r := limits.Rate{Max: 1 << 40, Window: time.Minute, Ban: time.Minute, Reason: "frequency"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Hit(ctx, "freq:192.0.2.0/24", 1, r); err != nil {
			b.Fatal(err)
		}
	}
}
