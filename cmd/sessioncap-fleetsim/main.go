// Command sessioncap-fleetsim runs a fleet of sessioncap daemons on loopback,
// each with its own memory store or all sharing one throwaway Redis, drives
// milter CONNECTs at them with go-milter's client and reports decisions per
// second, decision latency, refusals, Redis memory per tracked prefix, and
// whether a ban made through one daemon holds on all of them.
//
// It builds nothing: -sessioncap names a binary built beforehand. It is a
// measurement tool, not a test: nothing runs it in the unit suite.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1 // the simulation could not run, or the shared ban did not hold
	exitUsage = 64
)

// options are the command line.
type options struct {
	sessioncap  string
	redisServer string
	daemons     int
	connects    int
	prefixes    int
	concurrency int
	backends    []string
	timeout     time.Duration
	maxConns    int
	window      time.Duration
	ban         time.Duration
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sessioncap-fleetsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	backend := fs.String("backend", "both", `"memory", "redis" or "both"`)
	fs.StringVar(&o.sessioncap, "sessioncap", "", "the sessioncap binary (required; go build -o /tmp/sessioncap ./cmd/sessioncap)")
	fs.StringVar(&o.redisServer, "redis-server", "redis-server", "the redis-server binary")
	fs.IntVar(&o.daemons, "n", 4, "daemons in the fleet")
	fs.IntVar(&o.connects, "connects", 20000, "milter CONNECTs in total, round-robin over the daemons")
	fs.IntVar(&o.prefixes, "prefixes", 5000, "distinct client /24s (10.x.y.0/24), at most 65536")
	fs.IntVar(&o.concurrency, "concurrency", 32, "milter sessions in flight at once")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "the whole run, every backend included")
	fs.IntVar(&o.maxConns, "max-connections", 1000, "frequency.max_connections of every daemon")
	fs.DurationVar(&o.window, "window", time.Minute, "frequency.window")
	fs.DurationVar(&o.ban, "ban", 5*time.Minute, "frequency.ban")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	switch *backend {
	case "memory", "redis":
		o.backends = []string{*backend}
	case "both":
		o.backends = []string{"memory", "redis"}
	default:
		fmt.Fprintf(stderr, "sessioncap-fleetsim: -backend %q: want memory, redis or both\n", *backend)
		return exitUsage
	}
	var problems []string
	if o.sessioncap == "" {
		problems = append(problems, "-sessioncap is required")
	}
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	}
	if o.daemons < 1 || o.connects < 1 || o.concurrency < 1 || o.maxConns < 1 {
		problems = append(problems, "-n, -connects, -concurrency and -max-connections must be at least 1")
	}
	if o.prefixes < 1 || o.prefixes > maxPrefixes {
		problems = append(problems, fmt.Sprintf("-prefixes must be 1 to %d", maxPrefixes))
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(stderr, "sessioncap-fleetsim:", p)
		}
		return exitUsage
	}
	if abs, err := filepath.Abs(o.sessioncap); err == nil {
		o.sessioncap = abs
	}

	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	var results []result
	code := exitOK
	for _, b := range o.backends {
		fmt.Fprintf(stderr, "%s: %d daemons, %d connects over %d prefixes, %d in flight\n", b, o.daemons, o.connects, o.prefixes, o.concurrency)
		r, err := simulate(ctx, o, b, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "sessioncap-fleetsim: %s: %v\n", b, err)
			return exitFail
		}
		if b == "redis" && !r.shared.ok() {
			code = exitFail
		}
		results = append(results, r)
	}
	report(stdout, o, results)
	return code
}

// report prints the table and the fleet-wide ban check of every backend.
func report(w io.Writer, o options, results []result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "backend\tdaemons\tconnects\terrors\tdecisions/s\tp50\tp99\trefused\tredis keys\tused_memory Δ\tΔ/prefix\tMEMORY USAGE/prefix\t")
	for _, r := range results {
		keys, delta, perDelta, usage := "-", "-", "-", "-"
		if r.redis != nil {
			keys = fmt.Sprint(r.redis.dbsize)
			delta = fmt.Sprintf("%d B", r.redis.usedDelta)
			if r.redis.windows > 0 {
				perDelta = fmt.Sprintf("%d B", perKey(r.redis.usedDelta, r.redis.windows))
			}
			usage = fmt.Sprintf("%.0f B (n=%d)", r.redis.usageMean, r.redis.sampled)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.0f\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t\n",
			r.backend, o.daemons, r.done, r.errors, r.rate(), fmtDuration(r.p50), fmtDuration(r.p99), r.refused,
			keys, delta, perDelta, usage)
	}
	tw.Flush()
	for _, r := range results {
		fmt.Fprintf(w, "%s: %s\n", r.backend, r.shared.String())
		if r.redis != nil {
			fmt.Fprintf(w, "%s: %d window keys for %d prefixes; used_memory %d → %d B, used_memory_dataset %d → %d B (%d B per window key), %d clients connected\n",
				r.backend, r.redis.windows, o.prefixes, r.redis.usedBefore, r.redis.usedAfter,
				r.redis.datasetBefore, r.redis.datasetAfter, perKey(r.redis.datasetAfter-r.redis.datasetBefore, r.redis.windows), r.redis.clients)
		}
		if r.daemonErrors > 0 {
			fmt.Fprintf(w, "%s: the daemons logged %d lines at level=ERROR\n", r.backend, r.daemonErrors)
		}
	}
}

func perKey(bytes int64, keys int) int64 {
	if keys == 0 {
		return 0
	}
	return bytes / int64(keys)
}

// fmtDuration rounds d for the table: µs below 10 ms.
func fmtDuration(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
	return d.Round(100 * time.Microsecond).String()
}
