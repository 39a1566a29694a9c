// Command rediscost measures what Redis itself spends per store call
// (INFO commandstats, usec_per_call), for the hit script of the frequency
// rule, the quota script (one MAIL check of two rules, one end-of-message
// count of two rules) and, as a yardstick, INCR on the same server. Point it
// at a scratch Redis: it runs CONFIG RESETSTAT.
//
//	redis-server --port 6399 --save '' --appendonly no &
//	go run ./bench/rediscost -addr 127.0.0.1:6399 [-n 50000]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	redisstore "github.com/sessioncap/sessioncap/counters/redis"
	"github.com/sessioncap/sessioncap/limits"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rediscost", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:6379", "a scratch Redis (its stats are reset)")
	n := fs.Int("n", 50_000, "calls per kind")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx := context.Background()
	s, err := redisstore.New(redisstore.Options{Addresses: []string{*addr}, KeyPrefix: "rediscost:"})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer s.Close()
	c := s.Client()
	freq := limits.Frequency{MaxConnections: 120, Window: time.Minute, Ban: 5 * time.Minute}.Rate()
	prefix := func(i int) string {
		return limits.StoreKey(limits.KeyFrequency, "", netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32))
	}
	ops := func(i int, check bool) []limits.QuotaOp {
		u := fmt.Sprintf("user%d@example.com", i%5000)
		o := []limits.QuotaOp{
			{Key: limits.QuotaStoreKey("user-hourly", limits.QuotaUser, u), Window: time.Hour, Limit: 1 << 40},
			{Key: limits.QuotaStoreKey("user-daily", limits.QuotaUser, u), Window: 24 * time.Hour, Limit: 1 << 40},
		}
		for j := range o {
			if check {
				o[j].Need, o[j].Hard = 1, true
			} else {
				o[j].Add = 1
			}
		}
		return o
	}
	kinds := []struct {
		name, cmd string
		call      func(i int) error
	}{
		{"hit (frequency rule, counted)", "evalsha", func(i int) error { _, err := s.Hit(ctx, prefix(i%5000), 1, freq); return err }},
		{"hit (a peek: ban check only)", "evalsha", func(i int) error { _, err := s.Hit(ctx, prefix(i%5000), 0, limits.Rate{}); return err }},
		{"quota: MAIL check of 2 rules", "evalsha", func(i int) error { _, err := s.Quota(ctx, ops(i, true)); return err }},
		{"quota: end-of-message count of 2 rules", "evalsha", func(i int) error { _, err := s.Quota(ctx, ops(i, false)); return err }},
		{"INCR", "incr", func(i int) error { return c.Incr(ctx, "rediscost:incr").Err() }},
	}
	fmt.Fprintf(stdout, "| call | Redis µs per call (usec_per_call) | calls |\n|---|---|---|\n")
	for _, k := range kinds {
		if err := k.call(0); err != nil { // loads the script
			fmt.Fprintln(stderr, err)
			return 1
		}
		if err := c.ConfigResetStat(ctx).Err(); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		for i := 0; i < *n; i++ {
			if err := k.call(i); err != nil {
				fmt.Fprintln(stderr, err)
				return 1
			}
		}
		usec, calls := commandstat(ctx, c, k.cmd)
		fmt.Fprintf(stdout, "| %s | %s | %s |\n", k.name, usec, calls)
	}
	return 0
}

// commandstat reads usec_per_call and calls of cmd from INFO commandstats.
func commandstat(ctx context.Context, c redis.UniversalClient, cmd string) (usec, calls string) {
	info, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		return err.Error(), ""
	}
	for _, line := range strings.Split(info, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+cmd+":")
		if !ok {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "usec_per_call":
				usec = v
			case "calls":
				calls = v
			}
		}
	}
	return usec, calls
}
