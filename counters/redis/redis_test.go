package redisstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
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
	"github.com/sessioncap/sessioncap/internal/testkit"
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
	t.Run("TTLs cover two windows and the bans", func(t *testing.T) { ttlsCover(t, base) })
	t.Run("no CLIENT MAINT_NOTIFICATIONS", func(t *testing.T) { noMaintNotifications(t, base) })
}

// ttlsCover writes windows, bans from hits and manual bans under a prefix of
// its own (on Redis's clock), then reads the PTTL of every key under that
// prefix: each must be positive, a window's at least 2 × its window and a
// bucket's ban index and details at least the longest remaining ban in it,
// less the time since the write measured here (and 1 ms for Redis's
// rounding to the ms), and none above what was set.
func ttlsCover(t *testing.T, base redisstore.Options) {
	o := base
	o.KeyPrefix, o.Host = newPrefix(), "mx1"
	s := open(t, o)
	type write struct {
		at  time.Time     // just before the write
		ttl time.Duration // the TTL it must set
	}
	windows := map[string]write{} // counted key → the first write of its window, 2 × window
	bans := map[string]write{}    // counted key → its ban, the ban's length
	hit := func(key string, r limits.Rate) limits.Hit {
		t.Helper()
		at := time.Now()
		h, err := s.Hit(ctx, key, 1, r)
		if err != nil {
			t.Fatal(err)
		}
		if h.BannedUntil.IsZero() {
			// the key expires 2 windows after its window started: later
			// writes in the same window leave its TTL as it is
			if _, ok := windows[key]; !ok {
				windows[key] = write{at, 2 * r.Window}
			}
		} else {
			delete(windows, key) // a ban starts the window over
			bans[key] = write{at, r.Ban}
		}
		return h
	}
	for _, w := range []time.Duration{10 * time.Second, time.Minute, time.Hour} {
		for i := 0; i < 3; i++ {
			hit("w"+w.String(), limits.Rate{Max: 100, Window: w})
		}
	}
	// a refused hit without a ban writes its window too
	for i, want := range []bool{false, true} {
		if h := hit("refused", limits.Rate{Max: 1, Window: time.Minute}); h.Crossed != want {
			t.Fatalf("hit %d of refused: %+v", i, h)
		}
	}
	// bans from hits: one shorter than two windows, one longer
	for _, ban := range []time.Duration{30 * time.Second, 2 * time.Hour} {
		r := limits.Rate{Max: 1, Window: time.Minute, Ban: ban, Reason: "frequency"}
		hit("banned"+ban.String(), r)
		if h := hit("banned"+ban.String(), r); h.BannedUntil.Sub(h.Now) != ban {
			t.Fatalf("ban %v: %+v", ban, h)
		}
	}
	// manual bans, each shorter than the one before: 300 keys in 256
	// buckets, so some bucket gets a shorter ban after a longer one, which
	// must not shorten its index's TTL
	for i := 0; i < 300; i++ {
		key, d := "m"+strconv.Itoa(i), time.Hour+time.Duration(300-i)*time.Minute
		at := time.Now()
		if _, err := s.Ban(ctx, key, d, "manual"); err != nil {
			t.Fatal(err)
		}
		bans[key] = write{at, d}
	}

	seenWindows, seenBans, shared := map[string]bool{}, map[string]bool{}, 0
	check := func(k string, pttl time.Duration, read time.Time, ws ...write) {
		t.Helper()
		var least, most time.Duration
		for _, w := range ws {
			least = max(least, w.ttl-read.Sub(w.at)-time.Millisecond)
			most = max(most, w.ttl)
		}
		if pttl <= 0 || pttl < least || pttl > most {
			t.Errorf("%s: PTTL %v; want at least %v, at most %v", k, pttl, least, most)
		}
	}
	forEachPrimary(t, s.Client(), func(c *redis.Client) {
		iter := c.Scan(ctx, 0, o.KeyPrefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			k := iter.Val()
			pttl, err := c.PTTL(ctx, k).Result()
			read := time.Now()
			if err != nil {
				t.Error(err) // not Fatal: under Cluster f runs on another goroutine
				return
			}
			_, rest, _ := strings.Cut(k, "}:")
			switch {
			case strings.HasPrefix(rest, "w:"):
				key := strings.TrimPrefix(rest, "w:")
				w, ok := windows[key]
				if !ok {
					t.Errorf("%s: a window of no counted key (PTTL %v)", k, pttl)
					continue
				}
				seenWindows[key] = true
				check(k, pttl, read, w)
			case rest == "bans" || rest == "info":
				var members []string
				if rest == "bans" {
					members, err = c.ZRange(ctx, k, 0, -1).Result()
				} else {
					members, err = c.HKeys(ctx, k).Result()
				}
				if err != nil || len(members) == 0 {
					t.Errorf("%s: members %v, %v", k, members, err)
					continue
				}
				var ws []write
				for _, m := range members {
					w, ok := bans[m]
					if !ok {
						t.Errorf("%s: %q was not banned", k, m)
						continue
					}
					ws = append(ws, w)
					if rest == "bans" {
						seenBans[m] = true
					}
				}
				if len(members) > 1 && rest == "bans" {
					shared++
				}
				check(k, pttl, read, ws...)
			default:
				t.Errorf("%s: a key of no known kind (PTTL %v)", k, pttl)
			}
		}
		if err := iter.Err(); err != nil {
			t.Error(err)
		}
	})
	if len(seenWindows) != len(windows) || len(seenBans) != len(bans) {
		t.Fatalf("found %d of %d windows and %d of %d bans", len(seenWindows), len(windows), len(seenBans), len(bans))
	}
	if shared == 0 {
		t.Fatal("no ban index holds two bans: a shorter ban never followed a longer one in a bucket")
	}
}

// noMaintNotifications checks that the store never sends CLIENT
// MAINT_NOTIFICATIONS (go-redis ≥ 9.15 does on connect unless told not to).
//
// It looks for the command's trace in the servers' statistics rather than
// at the go-redis options New builds: that is what reaches Redis, whatever
// go-redis does with its options. Redis 7.0 rejects the unknown subcommand
// with "ERR unknown subcommand", counted in errorstat_ERR only (a rejected
// call has no cmdstat line); a Redis that knows the subcommand counts
// cmdstat_client|maint_notifications. The statistics are reset and read
// with redistest.Do, a bare RESP connection that sends no handshake. A
// go-redis client with default options must leave the trace on every
// primary, else this check could not see the command on the installed Redis.
func noMaintNotifications(t *testing.T, base redisstore.Options) {
	traces := func() map[string]string {
		t.Helper()
		found := map[string]string{}
		for _, addr := range base.Addresses {
			for _, section := range []string{"commandstats", "errorstats"} {
				info, err := redistest.Do(addr, "INFO", section)
				if err != nil {
					t.Fatal(err)
				}
				for _, line := range strings.Split(info, "\r\n") {
					if strings.HasPrefix(line, "cmdstat_client|maint_notifications:") || strings.HasPrefix(line, "errorstat_ERR:") {
						found[addr] += line + " "
					}
				}
			}
		}
		return found
	}
	for _, addr := range base.Addresses {
		if _, err := redistest.Do(addr, "CONFIG", "RESETSTAT"); err != nil {
			t.Fatal(err)
		}
	}
	if tr := traces(); len(tr) != 0 {
		t.Fatalf("traces after CONFIG RESETSTAT: %v", tr)
	}

	o := base
	o.KeyPrefix = newPrefix()
	s := open(t, o)
	r := limits.Rate{Max: 1, Window: time.Minute, Ban: time.Minute, Reason: "frequency"}
	for i := 0; i < 2; i++ {
		if _, err := s.Hit(ctx, "k", 1, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Bans(ctx); err != nil { // a pipeline to every primary
		t.Fatal(err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if tr := traces(); len(tr) != 0 {
		t.Fatalf("the store sent CLIENT MAINT_NOTIFICATIONS: %v", tr)
	}

	control := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: base.Addresses, IsClusterMode: base.Cluster, DisableIdentity: true})
	defer control.Close()
	forEachPrimary(t, control, func(c *redis.Client) {
		if err := c.Ping(ctx).Err(); err != nil {
			t.Error(err)
		}
	})
	if tr := traces(); len(tr) != len(base.Addresses) {
		t.Fatalf("a default go-redis client left a trace on %d of %d primaries (%v): this check cannot see CLIENT MAINT_NOTIFICATIONS", len(tr), len(base.Addresses), tr)
	}
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

// Without an injected clock every script reads Redis's TIME, so hosts with
// skewed clocks agree. Two stores (hosts mx-a and mx-b) take turns on one
// key: the time each hit answers with lies between two TIME calls to the
// same Redis around it, and a ban one host makes is seen by the other with
// the same end. On one machine Redis and the host share a clock, so this
// bracket alone could not tell Redis's time from the host's: the time
// argument each store sends to its scripts is also checked to be empty,
// which makes the script read TIME (script.go), never a host's clock.
func TestServerClock(t *testing.T) {
	srv := redistest.Standalone(t)
	prefix := newPrefix()
	var timeArgs []string
	a := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, KeyPrefix: prefix, Host: "mx-a"})
	b := open(t, redisstore.Options{Addresses: []string{srv.Addr()}, KeyPrefix: prefix, Host: "mx-b"})
	a.Client().AddHook(scriptTimeHook{&timeArgs})
	b.Client().AddHook(scriptTimeHook{&timeArgs})
	direct := redis.NewClient(&redis.Options{Addr: srv.Addr(), DisableIdentity: true})
	defer direct.Close()
	redisMs := func() int64 {
		t.Helper()
		tm, err := direct.Time(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		return tm.UnixMilli()
	}
	bracket := func(what string, f func() time.Time) time.Time {
		t.Helper()
		before := redisMs()
		got := f()
		after := redisMs()
		if ms := got.UnixMilli(); ms < before || ms > after {
			t.Fatalf("%s at %d ms; Redis's TIME was %d ms before and %d ms after", what, ms, before, after)
		}
		return got
	}
	r := limits.Rate{Max: 1, Window: time.Minute, Ban: time.Hour, Reason: "frequency"}
	hit := func(s *redisstore.Store) limits.Hit {
		t.Helper()
		h, err := s.Hit(ctx, "k", 1, r)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}

	var h1, h2, h3 limits.Hit
	bracket("mx-a's first hit", func() time.Time { h1 = hit(a); return h1.Now })
	bracket("mx-b's hit", func() time.Time { h2 = hit(b); return h2.Now })
	bracket("mx-a's hit on the ban", func() time.Time { h3 = hit(a); return h3.Now })
	if h1.Count != 1 || h1.Crossed || !h2.Crossed || h2.BannedUntil.Sub(h2.Now) != time.Hour {
		t.Fatalf("hits %+v, %+v; want count 1, then crossed and banned for an hour", h1, h2)
	}
	if !h3.BannedUntil.Equal(h2.BannedUntil) || h3.BanReason == "" {
		t.Fatalf("mx-a sees the ban of mx-b as %+v; want until %v with its reason", h3, h2.BannedUntil)
	}
	manual := bracket("mx-b's manual ban", func() time.Time {
		ban, err := b.Ban(ctx, "j", time.Hour, "manual")
		if err != nil {
			t.Fatal(err)
		}
		if ban.Until.Sub(ban.Since) != time.Hour {
			t.Fatalf("manual ban %+v", ban)
		}
		return ban.Since
	})
	bans, err := a.Bans(ctx)
	if err != nil || len(bans) != 2 {
		t.Fatalf("mx-a lists %+v, %v; want mx-b's 2 bans", bans, err)
	}
	for _, ban := range bans {
		if want := map[string]time.Time{"k": h2.Now, "j": manual}[ban.Key]; !ban.Since.Equal(want) || ban.Host != "mx-b" {
			t.Fatalf("mx-a lists %+v; want mx-b's ban since %v", ban, want)
		}
	}
	if len(timeArgs) == 0 {
		t.Fatal("no script call seen")
	}
	for _, arg := range timeArgs {
		if arg != "" {
			t.Fatalf("a store sent the time %q to its script; want \"\" (read Redis's TIME)", arg)
		}
	}
}

// scriptTimeHook records ARGV[1], the time argument, of every script call.
type scriptTimeHook struct{ args *[]string }

func (h scriptTimeHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h scriptTimeHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if name := cmd.Name(); name == "evalsha" || name == "eval" {
			args := cmd.Args() // name, script, numkeys, keys..., ARGV...
			if nk, ok := args[2].(int); ok && len(args) > 3+nk {
				*h.args = append(*h.args, fmt.Sprint(args[3+nk]))
			}
		}
		return next(ctx, cmd)
	}
}
func (h scriptTimeHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A failed dial: go-redis's own message about it reaches the logger that
// SetLogger set, at Debug with component=redis (an outage is logged once
// by the store's caller; go-redis would log it once per connection).
func TestDialFailureLoggedAtDebug(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now: connection refused
	logs := captureRedisLog(t)
	s := open(t, redisstore.Options{Addresses: []string{addr}})
	if _, err := s.Hit(ctx, "k", 1, limits.Rate{Max: 10, Window: time.Minute}); err == nil {
		t.Fatalf("a hit on %s (nothing listening) succeeded", addr)
	}
	dials := 0
	for _, rec := range logRecords(t, logs) {
		if !strings.Contains(rec.Msg, addr) {
			continue // another test's leftover connection
		}
		if rec.Level != "DEBUG" || rec.Component != "redis" {
			t.Errorf("logged %+v; want level DEBUG, component redis", rec)
		}
		if strings.Contains(rec.Msg, "dial") {
			dials++
		}
	}
	if dials == 0 {
		t.Fatalf("no message of the failed dial to %s in:\n%s", addr, logs.String())
	}
}

// captureRedisLog sends go-redis's messages, at every level, to the buffer
// it returns until the test ends.
func captureRedisLog(t *testing.T) *testkit.SyncBuffer {
	buf := &testkit.SyncBuffer{}
	redisstore.SetLogger(slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() { redisstore.SetLogger(testLogger) })
	return buf
}

type logRecord struct{ Level, Msg, Component string }

// records decodes the JSON lines logged so far.
func logRecords(t *testing.T, b *testkit.SyncBuffer) []logRecord {
	t.Helper()
	var out []logRecord
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if line == "" {
			continue
		}
		var rec logRecord
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("%v: %q", err, line)
		}
		out = append(out, rec)
	}
	return out
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
