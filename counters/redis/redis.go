// Package redisstore keeps sessioncap's windows and bans in Redis
// (standalone, Sentinel or Cluster) so that a fleet of MX hosts shares them:
// one Lua script per hit, the server's clock, and keys that expire by
// themselves.
//
// # Key layout
//
// A counted key K (made by limits.StoreKey) falls in bucket N = FNV-1a-32(K)
// mod 256, and every Redis key of that bucket carries the hash tag {bN}, so a
// script touches one Cluster slot and the ban index of a bucket lives in the
// slot of the keys it indexes. With the default prefix "sessioncap:":
//
//	sessioncap:{bN}:w:K   hash s, p, c: the sliding window of K (limits.Window:
//	                      start in Unix ms, previous and current counts);
//	                      PEXPIRE 2 × window (+ how far start is ahead of now)
//	                      whenever the window starts or rolls: it expires 2
//	                      windows after its start, when it would be empty
//	sessioncap:{bN}:bans  ZSET member K, score the Unix ms K's ban ends;
//	                      PTTL raised to the longest remaining ban at every ban
//	sessioncap:{bN}:info  hash K → "since hostlen host..reason" of K's ban;
//	                      same TTL rule as the ZSET
//
// No key is ever written without a TTL: a window lives two windows after its
// start, so at most two after its last hit; a bucket's index at most as long
// as its longest ban. Expired entries of an index are filtered on every read
// and up to 64 of them are dropped at every new ban in the bucket.
//
// The store is bounded by time, not by a count: a window costs about 120
// to 140 bytes (MEMORY USAGE, Redis 7.0, an IPv4 or IPv6 prefix key) for at
// most two windows after its last hit. Run Redis with maxmemory
// and a volatile-* eviction policy: since every key has a TTL, Redis may
// evict any of them rather than refuse writes.
//
// Wrap the store in counters.Fallback: a call that fails (Redis down, a
// failover in progress) is then answered from the local store.
package redisstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// Buckets is the number of hash tags (and ban indexes) keys are spread over.
const Buckets = 256

// DefaultKeyPrefix starts every key the store writes.
const DefaultKeyPrefix = "sessioncap:"

// Options configure New. Exactly one topology is chosen:
//
//   - standalone: one address, MasterName empty, Cluster false;
//   - Sentinel: MasterName set, Addresses are the sentinels (Username and
//     Password are those of the Redis servers, not of the sentinels);
//   - Cluster: Cluster true, Addresses are seed nodes (DB must be 0).
type Options struct {
	Addresses  []string // host:port
	MasterName string   // the Sentinel master name
	Cluster    bool

	Username string
	Password string // the caller reads it from a file; never from the config itself
	DB       int
	TLS      bool // TLS 1.2 or later, verifying the server with the system roots

	KeyPrefix string // DefaultKeyPrefix when empty; must not hold '{' or '}'
	Host      string // recorded with the bans this store makes

	// Now replaces the Redis server's clock (TIME). Tests only: in
	// production every host must read the one clock of Redis.
	Now func() time.Time

	// Zero values take the defaults: 1s to dial, 1s per read and write (a
	// caller's context deadline, when sooner, bounds a call first) and
	// go-redis's pool of 10 connections per CPU (per node in a Cluster).
	DialTimeout, ReadTimeout, WriteTimeout time.Duration
	PoolSize                               int
}

// Store is a counters.Store in Redis, safe for concurrent use.
type Store struct {
	c      redis.UniversalClient
	tags   [Buckets]string // prefix + "{bN}:" of every bucket
	host   string
	now    func() time.Time
	closed atomic.Bool
}

var _ counters.Store = (*Store)(nil)

// New returns a store over the Redis that o names. It does not connect:
// the first call does (see Ping).
func New(o Options) (*Store, error) {
	prefix := o.KeyPrefix
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	if strings.ContainsAny(prefix, "{}") {
		return nil, fmt.Errorf("redisstore: key prefix %q holds a brace (it would change the hash tag)", prefix)
	}
	switch {
	case len(o.Addresses) == 0:
		return nil, errors.New("redisstore: no address")
	case o.Cluster && o.MasterName != "":
		return nil, errors.New("redisstore: both a Sentinel master name and Cluster")
	case o.Cluster && o.DB != 0:
		return nil, errors.New("redisstore: a Cluster has only database 0")
	case !o.Cluster && o.MasterName == "" && len(o.Addresses) > 1:
		return nil, errors.New("redisstore: several addresses without a Sentinel master name or Cluster")
	}
	u := &redis.UniversalOptions{
		Addrs:                 o.Addresses,
		MasterName:            o.MasterName,
		IsClusterMode:         o.Cluster,
		Username:              o.Username,
		Password:              o.Password,
		DB:                    o.DB,
		DialTimeout:           durationOr(o.DialTimeout, time.Second),
		ReadTimeout:           durationOr(o.ReadTimeout, time.Second),
		WriteTimeout:          durationOr(o.WriteTimeout, time.Second),
		ContextTimeoutEnabled: true, // the caller's deadline bounds every call
		// A hit is not idempotent: a retry after a lost reply would count
		// twice. A failed call is answered by the caller's fallback.
		MaxRetries: -1,
		// Under Cluster, MaxRetries does not stop go-redis (v9.23.0,
		// osscluster.go process and processPipeline) from sending a
		// command again after EOF, a timeout or READONLY, up to
		// MaxRedirects (3 by default): a hit whose reply was lost would be
		// counted again (TestClusterAppliesALostHitOnce, on a real
		// Cluster: twice with the default). -1 makes it one attempt; a
		// MOVED or ASK reply (a reshard or failover) then fails that call,
		// unapplied, which the Fallback answers, and go-redis reloads the
		// slots in the background (TestClusterFollowsAMovedSlotOnTheNextCall).
		MaxRedirects:    -1,
		PoolSize:        o.PoolSize,
		DisableIdentity: true, // no CLIENT SETINFO round trip per connection
		// go-redis ≥ 9.15 sends CLIENT MAINT_NOTIFICATIONS on connect,
		// which Redis 7.0 rejects (noMaintNotifications in redis_test.go
		// checks on the servers that it is never sent).
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if o.TLS {
		u.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	s := &Store{c: redis.NewUniversalClient(u), host: o.Host, now: o.Now}
	for b := range s.tags {
		s.tags[b] = prefix + "{b" + strconv.Itoa(b) + "}:"
	}
	return s, nil
}

func durationOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Client returns the go-redis client (for tests and diagnostics).
func (s *Store) Client() redis.UniversalClient { return s.c }

// bucket is FNV-1a-32 of key mod Buckets.
func bucket(key string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return h % Buckets
}

func (s *Store) tag(b uint32) string { return s.tags[b] }

// keys returns the window, index and details keys of key.
func (s *Store) keys(key string) []string {
	t := s.tag(bucket(key))
	return []string{t + "w:" + key, t + "bans", t + "info"}
}

// nowArg is the time argument of the scripts: "" to use Redis's clock.
func (s *Store) nowArg() string {
	if s.now == nil {
		return ""
	}
	return strconv.FormatInt(s.now().UnixMilli(), 10)
}

func (s *Store) check() error {
	if s.closed.Load() {
		return counters.ErrClosed
	}
	return nil
}

// Hit implements counters.Store in one round trip (EVALSHA, or EVAL once
// per server after a restart).
func (s *Store) Hit(ctx context.Context, key string, n int64, r limits.Rate) (limits.Hit, error) {
	if err := s.check(); err != nil {
		return limits.Hit{}, err
	}
	var window, ban int64
	if r.Max > 0 && r.Window > 0 {
		window, ban = r.Window.Milliseconds(), r.Ban.Milliseconds()
		if window <= 0 {
			window = 1 // a sub-millisecond window counts as 1 ms rather than divide by zero
		}
	}
	reply, err := hitScript.Run(ctx, s.c, s.keys(key), s.nowArg(), key, n, r.Max, window, ban, r.Reason, s.host).Slice()
	if err != nil {
		return limits.Hit{}, fmt.Errorf("redisstore: hit: %w", err)
	}
	if len(reply) != 4 && len(reply) != 5 {
		return limits.Hit{}, fmt.Errorf("redisstore: hit: %d values in the reply", len(reply))
	}
	var v [4]int64
	for i := range v {
		n, ok := reply[i].(int64)
		if !ok {
			return limits.Hit{}, fmt.Errorf("redisstore: hit: value %d of the reply is %T, not an integer", i+1, reply[i])
		}
		v[i] = n
	}
	h := limits.Hit{Count: v[0], Crossed: v[2] == 1, Now: time.UnixMilli(v[3])}
	if v[1] != 0 {
		h.BannedUntil = time.UnixMilli(v[1])
		h.BanReason = r.Reason // a ban this hit started
	}
	if len(reply) == 5 { // a ban already in force, with its details
		h.BanReason = ""
		if info, ok := reply[4].(string); ok && info != "" {
			if b, err := parseBan(key, v[1], info); err == nil {
				h.BanReason = counters.StoredReason(b.Origin, b.Reason)
			}
		}
	}
	return h, nil
}

// Ban implements counters.Store.
func (s *Store) Ban(ctx context.Context, key string, d time.Duration, reason string) (counters.Ban, error) {
	if err := s.check(); err != nil {
		return counters.Ban{}, err
	}
	v, err := banScript.Run(ctx, s.c, s.keys(key), s.nowArg(), key, d.Milliseconds(), reason, s.host).Slice()
	if err != nil {
		return counters.Ban{}, fmt.Errorf("redisstore: ban: %w", err)
	}
	until, ok1 := v[0].(int64)
	since, ok2 := v[1].(int64)
	info, ok3 := v[2].(string)
	if len(v) != 3 || !ok1 || !ok2 || !ok3 {
		return counters.Ban{}, fmt.Errorf("redisstore: ban: unexpected reply %v", v)
	}
	b := counters.NewBan(key, reason, time.UnixMilli(since), time.UnixMilli(until), s.host)
	if info != "" { // a longer ban was kept
		if b, err = parseBan(key, until, info); err != nil {
			return counters.Ban{}, err
		}
	}
	return b, nil
}

// parseBan decodes the details of a ban: "since hostlen host..reason".
func parseBan(key string, until int64, info string) (counters.Ban, error) {
	since, rest, ok1 := strings.Cut(info, " ")
	hl, rest, ok2 := strings.Cut(rest, " ")
	ms, err1 := strconv.ParseInt(since, 10, 64)
	n, err2 := strconv.Atoi(hl)
	if !ok1 || !ok2 || err1 != nil || err2 != nil || n < 0 || n > len(rest) {
		return counters.Ban{}, fmt.Errorf("redisstore: malformed ban details of %q: %q", key, info)
	}
	return counters.NewBan(key, rest[n:], time.UnixMilli(ms), time.UnixMilli(until), rest[:n]), nil
}

// Unban implements counters.Store.
func (s *Store) Unban(ctx context.Context, key string) (bool, error) {
	if err := s.check(); err != nil {
		return false, err
	}
	v, err := unbanScript.Run(ctx, s.c, s.keys(key), s.nowArg(), key).Int64()
	if err != nil {
		return false, fmt.Errorf("redisstore: unban: %w", err)
	}
	return v == 1, nil
}

// clock returns the time in Unix ms: the injected clock, else Redis's.
func (s *Store) clock(ctx context.Context) (int64, error) {
	if s.now != nil {
		return s.now().UnixMilli(), nil
	}
	t, err := s.c.Time(ctx).Result()
	if err != nil {
		return 0, err
	}
	return t.UnixMilli(), nil
}

// Bans implements counters.Store. Listing costs three round trips: TIME, a
// pipeline of one ZRANGEBYSCORE per bucket (256, which go-redis splits by
// node under Cluster and sends in parallel), and a pipeline of one HMGET per
// bucket holding bans; the work on the servers is O(Buckets + bans).
func (s *Store) Bans(ctx context.Context) ([]counters.Ban, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	now, err := s.clock(ctx)
	if err != nil {
		return nil, fmt.Errorf("redisstore: bans: %w", err)
	}
	min := "(" + strconv.FormatInt(now, 10)
	idx := make([]*redis.ZSliceCmd, Buckets)
	if _, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for b := range idx {
			idx[b] = p.ZRangeByScoreWithScores(ctx, s.tag(uint32(b))+"bans", &redis.ZRangeBy{Min: min, Max: "+inf"})
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("redisstore: bans: %w", err)
	}
	type found struct {
		zs   []redis.Z
		info *redis.SliceCmd
	}
	var hits []found
	if _, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for b, c := range idx {
			zs := c.Val()
			if len(zs) == 0 {
				continue
			}
			fields := make([]string, len(zs))
			for i, z := range zs {
				fields[i], _ = z.Member.(string)
			}
			hits = append(hits, found{zs, p.HMGet(ctx, s.tag(uint32(b))+"info", fields...)})
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redisstore: bans: %w", err)
	}
	var out []counters.Ban
	for _, f := range hits {
		infos := f.info.Val()
		for i, z := range f.zs {
			key, _ := z.Member.(string)
			info, _ := infos[i].(string)
			b, err := parseBan(key, int64(z.Score), info)
			if err != nil { // lost details (cannot happen but by hand): list the ban still
				b = counters.Ban{Key: key, Until: time.UnixMilli(int64(z.Score))}
			}
			out = append(out, b)
		}
	}
	sortBans(out)
	return out, nil
}

// Stats implements counters.Store: Banned counts the bans in force (TIME,
// then one pipelined ZCOUNT per bucket). Tracked is -1, unknown: counting
// windows would take a SCAN of the whole keyspace. Evictions is 0: keys
// leave Redis by their TTL.
func (s *Store) Stats(ctx context.Context) (counters.Stats, error) {
	if err := s.check(); err != nil {
		return counters.Stats{}, err
	}
	now, err := s.clock(ctx)
	if err != nil {
		return counters.Stats{}, fmt.Errorf("redisstore: stats: %w", err)
	}
	min := "(" + strconv.FormatInt(now, 10)
	cmds := make([]*redis.IntCmd, Buckets)
	if _, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for b := range cmds {
			cmds[b] = p.ZCount(ctx, s.tag(uint32(b))+"bans", min, "+inf")
		}
		return nil
	}); err != nil {
		return counters.Stats{}, fmt.Errorf("redisstore: stats: %w", err)
	}
	st := counters.Stats{Tracked: -1}
	for _, c := range cmds {
		st.Banned += c.Val()
	}
	return st, nil
}

// Ping checks that Redis answers: under Cluster every primary must.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.check(); err != nil {
		return err
	}
	if cc, ok := s.c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return c.Ping(ctx).Err()
		})
	}
	return s.c.Ping(ctx).Err()
}

// probeKey is the key Probe writes: a window that expires by itself.
const probeKey = "probe"

// Probe checks that Redis takes writes through the path hits take: Ping
// (every primary under Cluster), then a hit on probeKey through the hit
// script. A Redis that answers PING but refuses writes (maxmemory with
// noeviction, a read-only replica after a failover) fails it, so a
// counters.Fallback does not close its breaker on it. Under Cluster the
// write reaches the primary of probeKey's slot only.
func (s *Store) Probe(ctx context.Context) error {
	if err := s.Ping(ctx); err != nil {
		return err
	}
	_, err := s.Hit(ctx, probeKey, 1, limits.Rate{Max: 1 << 30, Window: time.Second})
	return err
}

// Close implements counters.Store.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	return s.c.Close()
}

// sortBans orders bans soonest ending first, then by key, as the memory
// store lists them.
func sortBans(bs []counters.Ban) {
	slices.SortFunc(bs, func(a, b counters.Ban) int {
		if c := a.Until.Compare(b.Until); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
}
