package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomilter "github.com/d--j/go-milter"
	"github.com/redis/go-redis/v9"
)

// maxPrefixes is how many /24s 10.0.0.0/8 holds.
const maxPrefixes = 1 << 16

// clientAddr is the client address of connect i: prefix i mod prefixes in
// 10.0.0.0/8, its host byte varying with the round, so that a prefix is hit
// from several addresses as a /24 of a botnet would be.
func clientAddr(i, prefixes int) string {
	p, round := i%prefixes, i/prefixes
	return fmt.Sprintf("10.%d.%d.%d", p>>8, p&0xff, 1+round%254)
}

// banProbe is the /24 the fleet-wide ban check uses (198.18.0.0/15, the
// benchmark range, far from the load's 10.0.0.0/8).
const banProbe = "198.18.0."

// percentile is the nearest-rank p-th percentile (0 < p <= 100) of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// result is what one backend's run measured.
type result struct {
	backend      string
	done         int // connects answered
	errors       int // sessions that failed (dial, negotiation, no reply)
	refused      int
	elapsed      time.Duration
	p50, p99     time.Duration
	redis        *redisStats
	shared       sharedBan
	daemonErrors int
}

func (r result) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.done) / r.elapsed.Seconds()
}

// redisStats is the store's size after the load.
type redisStats struct {
	dbsize                int64
	windows               int // keys matching <prefix>*:w:*
	usedBefore, usedAfter int64
	usedDelta             int64
	datasetBefore         int64 // used_memory_dataset: used_memory less Redis's overhead (clients, script cache, ...)
	datasetAfter          int64
	clients               int64   // connected_clients after the load
	usageMean             float64 // MEMORY USAGE over the sampled window keys
	sampled               int
}

// sharedBan is the outcome of the fleet-wide ban check.
type sharedBan struct {
	backend  string
	sent     int // connects from the probe /24, spread over the daemons
	admitted int
	banned   int // daemons that refused the probe afterwards
	daemons  int
}

func (s sharedBan) ok() bool { return s.banned == s.daemons }

func (s sharedBan) String() string {
	detail := fmt.Sprintf("%d connects from %s0/24 over %d daemons, %d admitted; then refused by %d of %d daemons",
		s.sent, banProbe, s.daemons, s.admitted, s.banned, s.daemons)
	switch {
	case s.backend == "memory":
		return "shared ban: n/a, each daemon keeps its own state (" + detail + ")"
	case s.ok():
		return "shared ban: ok (" + detail + ")"
	default:
		return "shared ban: FAILED (" + detail + ")"
	}
}

// simulate starts the fleet for backend, drives the load, measures, checks
// the shared ban and stops everything it started.
func simulate(ctx context.Context, o options, backend string, progress io.Writer) (res result, err error) {
	res.backend = backend
	dir, err := os.MkdirTemp("", "sessioncap-fleetsim-")
	if err != nil {
		return res, err
	}
	var procs []*process
	defer func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
		os.RemoveAll(dir)
	}()

	cfg := daemonConfig{Backend: backend, MaxConnections: o.maxConns, Window: o.window, Ban: o.ban}
	var rc *redis.Client
	if backend == "redis" {
		rs, err := startRedis(ctx, o.redisServer, dir)
		if err != nil {
			return res, err
		}
		procs = append(procs, rs.process)
		cfg.RedisAddresses = []string{rs.addr}
		rc = redis.NewClient(&redis.Options{Addr: rs.addr})
		defer rc.Close()
	}
	var daemons []*daemon
	for i := range o.daemons {
		d, err := startDaemon(ctx, o.sessioncap, dir, i+1, cfg)
		if err != nil {
			return res, err
		}
		procs = append(procs, d.process)
		daemons = append(daemons, d)
	}
	defer func() {
		for _, d := range daemons {
			res.daemonErrors += d.errorLines()
		}
	}()
	addrs := make([]string, len(daemons))
	for i, d := range daemons {
		addrs[i] = d.milter
	}

	if rc != nil {
		if res.redis, err = usedMemory(ctx, rc); err != nil {
			return res, err
		}
	}
	lat, failures, refused, elapsed := drive(ctx, addrs, o.connects, o.concurrency, func(i int) string { return clientAddr(i, o.prefixes) }, progress)
	if ctx.Err() != nil {
		return res, fmt.Errorf("stopped after %d of %d connects: %w", len(lat), o.connects, ctx.Err())
	}
	slices.Sort(lat)
	res.done, res.errors, res.refused, res.elapsed = len(lat), failures, refused, elapsed
	res.p50, res.p99 = percentile(lat, 50), percentile(lat, 99)
	if rc != nil {
		if err := res.redis.measure(ctx, rc); err != nil {
			return res, err
		}
	}
	res.shared = checkSharedBan(ctx, addrs, o.maxConns, progress)
	res.shared.backend = backend
	return res, nil
}

// connect opens a milter session to addr, sends CONNECT from client and
// returns the reply's SMTP code (0: admitted) and how long the CONNECT took
// from sending it to its reply.
func connect(addr, client string) (code uint16, took time.Duration, err error) {
	c := gomilter.NewClient("tcp", addr, gomilter.WithReadTimeout(5*time.Second), gomilter.WithWriteTimeout(5*time.Second))
	s, err := c.Session(gomilter.NewMacroBag())
	if err != nil {
		return 0, 0, err
	}
	defer s.Close()
	start := time.Now()
	act, err := s.Conn("client.example", gomilter.FamilyInet, 40000, client)
	took = time.Since(start)
	if err != nil {
		return 0, took, err
	}
	if act.StopProcessing() {
		return act.SMTPCode, took, nil
	}
	return 0, took, nil
}

// drive sends n CONNECTs, connect i to daemon i mod len(addrs) from
// client(i), from concurrency goroutines, until done or ctx ends. It returns
// the latencies of the answered ones, the count of failed sessions (the
// first few are printed to progress), the count of refusals and the time it
// all took.
func drive(ctx context.Context, addrs []string, n, concurrency int, client func(int) string, progress io.Writer) (lat []time.Duration, failures, refused int, elapsed time.Duration) {
	var (
		next     atomic.Int64
		mu       sync.Mutex
		wg       sync.WaitGroup
		perCodes = map[uint16]int{}
	)
	lat = make([]time.Duration, 0, n)
	start := time.Now()
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				code, took, err := connect(addrs[i%len(addrs)], client(i))
				mu.Lock()
				switch {
				case err != nil:
					failures++
					if failures <= 5 {
						fmt.Fprintf(progress, "connect %d to %s: %v\n", i, addrs[i%len(addrs)], err)
					}
				default:
					lat = append(lat, took)
					if code != 0 {
						refused++
						perCodes[code]++
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed = time.Since(start)
	if refused > 0 {
		fmt.Fprintf(progress, "refusals by code: %v\n", perCodes)
	}
	return lat, failures, refused, elapsed
}

// checkSharedBan connects from banProbe one more time than maxConns,
// round-robin over the daemons, then once more to each daemon, and counts
// the daemons that refuse.
func checkSharedBan(ctx context.Context, addrs []string, maxConns int, progress io.Writer) sharedBan {
	s := sharedBan{daemons: len(addrs), sent: maxConns + 1}
	for i := 0; i < s.sent && ctx.Err() == nil; i++ {
		code, _, err := connect(addrs[i%len(addrs)], banProbe+strconv.Itoa(1+i%254))
		if err != nil {
			fmt.Fprintf(progress, "ban check connect %d: %v\n", i, err)
			continue
		}
		if code == 0 {
			s.admitted++
		}
	}
	for i, a := range addrs {
		code, _, err := connect(a, banProbe+"250")
		if err != nil {
			fmt.Fprintf(progress, "ban check probe of daemon %d: %v\n", i+1, err)
			continue
		}
		if code != 0 {
			s.banned++
		}
	}
	return s
}

// usedMemory starts redisStats with INFO memory's used_memory and
// used_memory_dataset.
func usedMemory(ctx context.Context, rc *redis.Client) (*redisStats, error) {
	info, err := infoFields(ctx, rc, "memory")
	if err != nil {
		return nil, err
	}
	r := &redisStats{}
	r.usedBefore, r.datasetBefore = info["used_memory"], info["used_memory_dataset"]
	return r, nil
}

// infoFields parses the integer fields of an INFO section.
func infoFields(ctx context.Context, rc *redis.Client, section string) (map[string]int64, error) {
	info, err := rc.Info(ctx, section).Result()
	if err != nil {
		return nil, err
	}
	fields := map[string]int64{}
	for _, line := range strings.Split(info, "\r\n") {
		k, v, ok := strings.Cut(line, ":")
		if n, err := strconv.ParseInt(v, 10, 64); ok && err == nil {
			fields[k] = n
		}
	}
	if _, ok := fields["used_memory"]; section == "memory" && !ok {
		return nil, fmt.Errorf("INFO memory has no used_memory")
	}
	return fields, nil
}

// measure reads DBSIZE, used_memory, and MEMORY USAGE of up to 100 window
// keys found by SCAN, counting every window key on the way.
func (r *redisStats) measure(ctx context.Context, rc *redis.Client) error {
	info, err := infoFields(ctx, rc, "memory")
	if err != nil {
		return err
	}
	r.usedAfter, r.datasetAfter = info["used_memory"], info["used_memory_dataset"]
	r.usedDelta = r.usedAfter - r.usedBefore
	clients, err := infoFields(ctx, rc, "clients")
	if err != nil {
		return err
	}
	r.clients = clients["connected_clients"]
	if r.dbsize, err = rc.DBSize(ctx).Result(); err != nil {
		return err
	}
	var total int64
	iter := rc.Scan(ctx, 0, keyPrefix+"*:w:*", 1000).Iterator()
	for iter.Next(ctx) {
		r.windows++
		if r.sampled >= 100 {
			continue
		}
		n, err := rc.MemoryUsage(ctx, iter.Val()).Result()
		if err != nil {
			return err
		}
		total += n
		r.sampled++
	}
	if err := iter.Err(); err != nil {
		return err
	}
	if r.sampled > 0 {
		r.usageMean = float64(total) / float64(r.sampled)
	}
	return nil
}
