// Command sessions measures what 10 000 concurrent milter sessions cost the
// sessioncap daemon: it starts the daemon (built from this tree) with its
// defaults, opens milter sessions as Postfix does (go-milter's client,
// CONNECT from a distinct address each, HELO) that then stay idle, and
// compares the MAIL round trip of a session sending whole transactions
// while 10 sessions are open, while 10 000 are, and after they closed,
// with the daemon's resident memory and goroutines from its /metrics.
//
//	go run ./bench/sessions [-sessions 10000] [-samples 5000]
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	gomilter "github.com/d--j/go-milter"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

type phase struct {
	name       string
	open       int
	p50, p99   time.Duration
	rss        float64
	goroutines float64
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sessions", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sessions := fs.Int("sessions", 10_000, "idle milter sessions to hold open")
	baseline := fs.Int("baseline", 10, "idle milter sessions open during the baseline")
	samples := fs.Int("samples", 5000, "transactions timed per phase")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// Every session is a file descriptor here and one in the daemon (which
	// inherits the limit).
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		if need := uint64(*sessions + *baseline + 100); lim.Cur < need {
			fmt.Fprintf(stderr, "sessions: RLIMIT_NOFILE is %d, need %d (ulimit -n)\n", lim.Cur, need)
			return 1
		}
	}
	dir, err := os.MkdirTemp("", "sessioncap-sessions-")
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "sessioncap")
	fmt.Fprintln(stderr, "building sessioncap …")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/sessioncap/sessioncap/cmd/sessioncap").CombinedOutput(); err != nil {
		fmt.Fprintf(stderr, "go build: %v\n%s", err, out)
		return 1
	}
	mport, metricsPort := freePort(), freePort()
	conf := fmt.Sprintf(`listen = "inet:127.0.0.1:%d"
[metrics]
listen = "127.0.0.1:%d"
[log]
level = "warn"
[admin]
listen = "unix:%s/admin.sock"
[store]
state_file = ""
`, mport, metricsPort, dir)
	confPath := filepath.Join(dir, "sessioncap.toml")
	os.WriteFile(confPath, []byte(conf), 0o644)
	logf, _ := os.Create(filepath.Join(dir, "sessioncap.log"))
	cmd := exec.Command(bin, "-config", confPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		logf.Close()
	}()
	addr := fmt.Sprintf("127.0.0.1:%d", mport)
	if err := waitPort(addr, 15*time.Second); err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "sessioncap.log"))
		fmt.Fprintf(stderr, "sessioncap: %v\n%s", err, b)
		return 1
	}
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)

	client := gomilter.NewClient("tcp", addr, gomilter.WithMacroRequest(gomilter.StageConnect, []gomilter.MacroName{gomilter.MacroClientAddr}))
	var idle []*gomilter.ClientSession
	next := 0 // the next client address
	open := func(n int) error {
		var mu sync.Mutex
		var firstErr error
		var wg sync.WaitGroup
		work := make(chan int)
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range work {
					cs, err := connect(client, i)
					mu.Lock()
					if err != nil && firstErr == nil {
						firstErr = err
					}
					if err == nil {
						idle = append(idle, cs)
					}
					mu.Unlock()
				}
			}()
		}
		for range n {
			work <- next
			next++
		}
		close(work)
		wg.Wait()
		return firstErr
	}
	probes := 0
	measure := func(name string) (phase, error) {
		p := phase{name: name, open: len(idle)}
		lat := make([]time.Duration, 0, *samples)
		var cs *gomilter.ClientSession
		defer func() {
			if cs != nil {
				cs.Close()
			}
		}()
		for i := range *samples {
			if ctx.Err() != nil {
				return p, ctx.Err()
			}
			// A new session every 50 messages, from an address of its
			// own: the default session cap is 100 messages.
			if i%50 == 0 {
				if cs != nil {
					cs.Close()
				}
				probes++
				var err error
				if cs, err = connectFrom(client, fmt.Sprintf("192.168.%d.%d", byte(probes>>8), byte(probes))); err != nil {
					return p, err
				}
			}
			d, err := transaction(cs)
			if err != nil {
				return p, err
			}
			lat = append(lat, d)
		}
		slices.Sort(lat)
		p.p50, p.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
		var err error
		p.rss, p.goroutines, err = metrics(metricsURL)
		return p, err
	}

	var phases []phase
	step := func(name string, f func() error) bool {
		if err := f(); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", name, err)
			return false
		}
		return true
	}
	for _, s := range []struct {
		name string
		f    func() error
	}{
		{"open the baseline sessions", func() error { return open(*baseline) }},
		{"baseline", func() error { p, err := measure("baseline"); phases = append(phases, p); return err }},
		{"open the sessions", func() error { return open(*sessions - *baseline) }},
		{"loaded", func() error { p, err := measure("loaded"); phases = append(phases, p); return err }},
		{"close the sessions", func() error {
			for _, cs := range idle[*baseline:] {
				cs.Close()
			}
			idle = idle[:*baseline]
			return waitGoroutines(metricsURL, phases[0].goroutines+50, 30*time.Second)
		}},
		{"baseline again", func() error { p, err := measure("baseline again"); phases = append(phases, p); return err }},
	} {
		fmt.Fprintf(stderr, "%s …\n", s.name)
		if !step(s.name, s.f) {
			return 1
		}
	}
	for _, cs := range idle {
		cs.Close()
	}

	fmt.Fprintf(stdout, "%d timed transactions per phase (MAIL, RCPT, DATA, a header, 1 KB body, end of message); MAIL latency is the MAIL round trip\n\n", *samples)
	fmt.Fprintln(stdout, "| phase | sessions open (with the timing one) | MAIL p50 | MAIL p99 | p99 × baseline | daemon RSS | goroutines |")
	fmt.Fprintln(stdout, "|---|---|---|---|---|---|---|")
	base := (phases[0].p99 + phases[2].p99) / 2
	for _, p := range phases {
		fmt.Fprintf(stdout, "| %s | %d | %v | %v | %.2f | %.1f MB | %.0f |\n", p.name, p.open+1, p.p50.Round(time.Microsecond), p.p99.Round(time.Microsecond), float64(p.p99)/float64(base), p.rss/1e6, p.goroutines)
	}
	l := phases[1]
	fmt.Fprintf(stdout, "\nper idle session: %.1f KB resident, %.2f goroutines\n", (l.rss-phases[0].rss)/float64(l.open-phases[0].open)/1e3, (l.goroutines-phases[0].goroutines)/float64(l.open-phases[0].open))
	return 0
}

// connect opens a milter session as Postfix does: CONNECT from the i-th
// address of 10.0.0.0/8 (each its own prefix: no per-address cap applies),
// then HELO.
func connect(c *gomilter.Client, i int) (*gomilter.ClientSession, error) {
	return connectFrom(c, fmt.Sprintf("10.%d.%d.%d", byte(i>>16), byte(i>>8), byte(i)))
}

func connectFrom(c *gomilter.Client, ip string) (*gomilter.ClientSession, error) {
	macros := gomilter.NewMacroBag()
	macros.Set(gomilter.MacroClientAddr, ip)
	cs, err := c.Session(macros)
	if err != nil {
		return nil, err
	}
	if act, err := cs.Conn("client.example", gomilter.FamilyInet, 25, ip); err != nil || act.StopProcessing() {
		cs.Close()
		return nil, fmt.Errorf("connect from %s: %v %v", ip, act, err)
	}
	if _, err := cs.Helo("client.example"); err != nil {
		cs.Close()
		return nil, err
	}
	return cs, nil
}

var body = make([]byte, 1000)

// transaction sends one message and returns the MAIL round trip.
func transaction(cs *gomilter.ClientSession) (time.Duration, error) {
	t0 := time.Now()
	act, err := cs.Mail("sender@client.example", "")
	d := time.Since(t0)
	if err != nil || act.StopProcessing() {
		return 0, fmt.Errorf("mail: %v %v", act, err)
	}
	cs.Rcpt("rcpt@example.net", "")
	cs.DataStart()
	cs.HeaderField("Subject", "bench", nil)
	cs.HeaderEnd()
	cs.BodyChunk(body)
	if _, act, err := cs.End(); err != nil || act.Type != gomilter.ActionAccept {
		return 0, fmt.Errorf("end of message: %v %v", act, err)
	}
	return d, cs.Abort(nil)
}

// metrics reads the daemon's resident memory and goroutines.
func metrics(url string) (rss, goroutines float64, err error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		switch name {
		case "process_resident_memory_bytes":
			rss, _ = strconv.ParseFloat(value, 64)
		case "go_goroutines":
			goroutines, _ = strconv.ParseFloat(value, 64)
		}
	}
	return rss, goroutines, sc.Err()
}

// waitGoroutines polls until the daemon runs at most n goroutines: the
// closed sessions are gone.
func waitGoroutines(url string, n float64, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		_, g, err := metrics(url)
		if err == nil && g <= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%.0f goroutines %v after closing the sessions (%v)", g, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func waitPort(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
