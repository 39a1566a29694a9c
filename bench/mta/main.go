// Command mta measures what a milter or a policy server costs Postfix, end
// to end: Postfix's smtp-source sends messages to a private Postfix instance
// on loopback that discards them, once per variant (Postfix alone, with a
// no-op go-milter, with the sessioncap milter with and without its byte
// cap, with the sessioncap policy front-end, with a minimal policy server,
// with postfwd2 and a rate rule), interleaved round-robin so that the ratios
// to Postfix alone hold on a noisy machine. It needs root, Postfix
// (smtp-source comes with it) and, for the postfwd2 variant, Debian's
// postfwd package:
//
//	apt-get install -y postfwd
//	go run ./bench/mta -sizes 30k,300k -messages 2000 -sessions 10 -rounds 5
//
// Each variant has its own Postfix instance, started once; its filter runs
// in processes of its own, so that the CPU time each spends is read from
// /proc. Throughput is messages over the time smtp-source took; the CPU
// times run to the end of the delivery of the run's messages (the queue is
// empty before the next run starts). It prints a markdown table.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "serve" {
		serveMain(os.Args[2:])
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// variant is one way of running Postfix.
type variant struct {
	name string
	desc string
	// start starts the filter, if any, and returns the main.cf lines that
	// make Postfix use it, the pid of the root of its processes, and how
	// to stop it. errSkip skips the variant.
	start func(b *bench, dir string) (mainCF []string, pid int, stop func(), err error)
}

var errSkip = errors.New("skipped")

var variants = []variant{
	{"postfix-alone", "Postfix without milter or policy server", nil},
	{"noop-milter", "go-milter v0.10.1 NoOpMilter, default options (in this program)", startNoopMilter},
	{"sessioncap-milter", "sessioncap milter, defaults (frequency limit raised: one client address)", sessioncapMilter("")},
	{"sessioncap-milter-nobytes", "the same with [session] max_bytes = 0", sessioncapMilter("[session]\nmax_bytes = 0\n")},
	{"sessioncap-policy", "sessioncap policy front-end (RCPT and END-OF-MESSAGE)", startSessioncapPolicy},
	{"minimal-policy", "Go policy server answering DUNNO (RCPT and END-OF-MESSAGE; in this program)", startMinimalPolicy},
	{"postfwd2", "postfwd2 (Debian) with one rate rule per client_address at RCPT", startPostfwd},
}

// bench is one run of the benchmark.
type bench struct {
	dir        string // everything the run writes
	sessioncap string // the daemon's binary
	self       string // this program, for its own servers
	log        io.Writer
}

// run is one measurement: one variant, one size, one round.
type result struct {
	variant, size, round int
	wall                 time.Duration
	postfixCPU           time.Duration
	filterCPU            time.Duration
	sourceCPU            time.Duration
	stealPct             float64
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mta", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sizesFlag := fs.String("sizes", "30k,300k", "message payload sizes (k = 1000 bytes)")
	messages := fs.Int("messages", 2000, "messages per measurement")
	sessions := fs.Int("sessions", 10, "parallel SMTP sessions of smtp-source (-s)")
	rounds := fs.Int("rounds", 3, "rounds: every variant and size once per round")
	reuse := fs.Bool("reuse", false, "send every message of a session over one connection (smtp-source -d); default one message per connection")
	seq := fs.Bool("N", false, "non-repeating recipients (smtp-source -N)")
	names := fs.String("variants", "all", "comma-separated variants, or all: "+variantNames())
	keep := fs.Bool("keep", false, "keep the work directory")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var sizes []int
	for s := range strings.SplitSeq(*sizesFlag, ",") {
		n, err := parseSize(s)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 2
		}
		sizes = append(sizes, n)
	}
	chosen := variants
	if *names != "all" {
		chosen = nil
		for n := range strings.SplitSeq(*names, ",") {
			i := slices.IndexFunc(variants, func(v variant) bool { return v.name == n })
			if i < 0 {
				fmt.Fprintf(stderr, "unknown variant %q (known: %s)\n", n, variantNames())
				return 2
			}
			chosen = append(chosen, variants[i])
		}
		if chosen[0].name != "postfix-alone" {
			chosen = append([]variant{variants[0]}, chosen...) // the reference
		}
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "mta: needs root (private Postfix instances)")
		return 1
	}
	for _, tool := range []string{postfixCmd, "/usr/sbin/smtp-source"} {
		if _, err := os.Stat(tool); err != nil {
			fmt.Fprintf(stderr, "mta: %v (apt-get install postfix)\n", err)
			return 1
		}
	}

	dir, err := os.MkdirTemp("", "sessioncap-bench-")
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	os.Chmod(dir, 0o755)
	if !*keep {
		defer os.RemoveAll(dir)
	}
	b := &bench{dir: dir, log: stderr, sessioncap: filepath.Join(dir, "sessioncap")}
	if b.self, err = os.Executable(); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintln(stderr, "building sessioncap …")
	if out, err := exec.Command("go", "build", "-o", b.sessioncap, "github.com/sessioncap/sessioncap/cmd/sessioncap").CombinedOutput(); err != nil {
		fmt.Fprintf(stderr, "go build: %v\n%s", err, out)
		return 1
	}

	// Start every variant's filter and Postfix once.
	type instance struct {
		v        variant
		pf       *postfix
		filter   int
		stopFltr func()
	}
	var insts []*instance
	defer func() {
		for _, in := range insts {
			in.pf.stop()
			if in.stopFltr != nil {
				in.stopFltr()
			}
		}
	}()
	for _, v := range chosen {
		vdir := filepath.Join(dir, v.name)
		if err := os.Mkdir(vdir, 0o755); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		in := &instance{v: v}
		var mainCF []string
		if v.start != nil {
			mainCF, in.filter, in.stopFltr, err = v.start(b, vdir)
			if errors.Is(err, errSkip) {
				fmt.Fprintf(stderr, "%s: %v\n", v.name, err)
				continue
			}
			if err != nil {
				fmt.Fprintf(stderr, "%s: %v\n", v.name, err)
				return 1
			}
		}
		if in.pf, err = startPostfix(vdir, mainCF); err != nil {
			if in.stopFltr != nil {
				in.stopFltr()
			}
			fmt.Fprintf(stderr, "%s: %v\n", v.name, err)
			return 1
		}
		insts = append(insts, in)
	}

	// A warm-up run per instance, not counted: the first connections of an
	// instance start its processes.
	for _, in := range insts {
		if _, err := b.measure(ctx, in.pf, in.filter, sizes[0], max(*messages/10, *sessions), *sessions, *reuse, *seq); err != nil {
			fmt.Fprintf(stderr, "warm-up, %s: %v\n", in.v.name, err)
			return 1
		}
	}

	var results []result
	for round := range *rounds {
		for si, size := range sizes {
			for k := range insts {
				// rotate the order each round: no variant always runs
				// right after the same one
				vi := (k + round) % len(insts)
				in := insts[vi]
				if ctx.Err() != nil {
					return 1
				}
				r, err := b.measure(ctx, in.pf, in.filter, size, *messages, *sessions, *reuse, *seq)
				if err != nil {
					fmt.Fprintf(stderr, "round %d, %s, %s: %v\n", round+1, sizeName(size), in.v.name, err)
					return 1
				}
				r.variant, r.size, r.round = vi, si, round
				results = append(results, r)
				fmt.Fprintf(stderr, "round %d/%d %5s %-26s %6.0f msg/s  postfix %.2f ms/msg  filter %.2f ms/msg  steal %.1f%%\n",
					round+1, *rounds, sizeName(size), in.v.name, float64(*messages)/r.wall.Seconds(),
					ms(r.postfixCPU, *messages), ms(r.filterCPU, *messages), r.stealPct)
			}
		}
	}

	vs := make([]variant, len(insts))
	for i, in := range insts {
		vs[i] = in.v
	}
	report(stdout, vs, sizes, results, *messages, *sessions, *rounds, *reuse, *seq)
	return 0
}

// measure sends messages with smtp-source, waits until the instance has
// delivered them all, and checks that each was delivered.
func (b *bench) measure(ctx context.Context, pf *postfix, filter, size, messages, sessions int, reuse, seq bool) (result, error) {
	offset := pf.logSize()
	args := []string{"-s", strconv.Itoa(sessions), "-m", strconv.Itoa(messages), "-l", strconv.Itoa(size),
		"-M", "client.bench.test", "-f", "sender@client.bench.test", "-t", "rcpt@" + sinkDomain}
	if reuse {
		args = append(args, "-d")
	}
	if seq {
		args = append(args, "-N")
	}
	args = append(args, fmt.Sprintf("127.0.0.1:%d", pf.port))
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "/usr/sbin/smtp-source", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	master := pf.masterPID()
	pf0, f0 := treeCPU(master), treeCPU(filter)
	t0, s0 := steal()
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return result{}, fmt.Errorf("smtp-source %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	r := result{wall: time.Since(start)}
	r.sourceCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	// Wait for the queue to empty and the log to show every delivery.
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if pf.queued() == 0 {
			if c := pf.countLog(offset, "status=sent"); c[0] >= messages {
				break
			}
		}
		if time.Now().After(deadline) {
			c := pf.countLog(offset, "status=sent", "reject", "milter")
			return r, fmt.Errorf("after 5 minutes %d messages queued, %d delivered, %d rejects, %d milter lines\n%s", pf.queued(), c[0], c[1], c[2], readTail(pf.logPath))
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.postfixCPU, r.filterCPU = treeCPU(master)-pf0, treeCPU(filter)-f0
	t1, s1 := steal()
	if t1 > t0 {
		r.stealPct = 100 * float64(s1-s0) / float64(t1-t0)
	}
	if c := pf.countLog(offset, "reject", "milter-reject", "defer"); c[0]+c[1]+c[2] > 0 {
		return r, fmt.Errorf("%d rejects, %d milter rejects, %d deferrals in the maillog", c[0], c[1], c[2])
	}
	return r, nil
}

// report prints the medians per variant and size as a markdown table.
func report(w io.Writer, vs []variant, sizes []int, results []result, messages, sessions, rounds int, reuse, seq bool) {
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for l := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	pv, _ := exec.Command("/usr/sbin/postconf", "-d", "-h", "mail_version").Output()
	mode := "one message per connection"
	if reuse {
		mode = "every message of a session over one connection (-d)"
	}
	fmt.Fprintf(w, "\n%d CPUs (%s), Postfix %s, %s; smtp-source -s %d -m %d, %s", runtime.NumCPU(), cpu, strings.TrimSpace(string(pv)), runtime.Version(), sessions, messages, mode)
	if seq {
		fmt.Fprint(w, ", -N")
	}
	fmt.Fprintf(w, "; %d rounds, medians (min–max over rounds)\n\n", rounds)
	fmt.Fprintln(w, "| variant | size | msg/s | × Postfix alone | filter CPU ms/msg | Postfix CPU ms/msg |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for si, size := range sizes {
		// the reference throughput of each round
		ref := map[int]float64{}
		for _, r := range results {
			if r.variant == 0 && r.size == si {
				ref[r.round] = float64(messages) / r.wall.Seconds()
			}
		}
		for vi, v := range vs {
			var thr, rel, fcpu, pcpu []float64
			for _, r := range results {
				if r.variant != vi || r.size != si {
					continue
				}
				t := float64(messages) / r.wall.Seconds()
				thr = append(thr, t)
				rel = append(rel, t/ref[r.round])
				fcpu = append(fcpu, ms(r.filterCPU, messages))
				pcpu = append(pcpu, ms(r.postfixCPU, messages))
			}
			if len(thr) == 0 {
				continue
			}
			relText := "1"
			fText := "–"
			if vi > 0 {
				relText = spread(rel, "%.2f")
				fText = spread(fcpu, "%.2f")
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", v.name, sizeName(size), spread(thr, "%.0f"), relText, fText, spread(pcpu, "%.2f"))
		}
	}
	fmt.Fprintln(w)
	for _, v := range vs {
		fmt.Fprintf(w, "- %s: %s\n", v.name, v.desc)
	}
}

// spread formats the median and, with more than one value, the range.
func spread(xs []float64, f string) string {
	s := slices.Clone(xs)
	slices.Sort(s)
	var med float64
	if n := len(s); n%2 == 1 {
		med = s[n/2]
	} else {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	if len(s) == 1 {
		return fmt.Sprintf(f, med)
	}
	return fmt.Sprintf(f+" ("+f+"–"+f+")", med, s[0], s[len(s)-1])
}

func ms(d time.Duration, n int) float64 { return float64(d.Microseconds()) / 1000 / float64(n) }

func parseSize(s string) (int, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	mul := 1
	if t, ok := strings.CutSuffix(s, "k"); ok {
		s, mul = t, 1000
	} else if t, ok := strings.CutSuffix(s, "m"); ok {
		s, mul = t, 1000_000
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mul, nil
}

func sizeName(n int) string {
	if n%1000 == 0 && n > 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return strconv.Itoa(n)
}

func variantNames() string {
	var n []string
	for _, v := range variants {
		n = append(n, v.name)
	}
	return strings.Join(n, ",")
}
