// Command replay measures "sessioncap replay" on a day of a busy MX: it
// writes a Postfix log of -lines lines (interleaved smtpd sessions from a
// pool of clients, some authenticated on the submission instance, some
// rejected recipients, deliveries and queue manager lines over 24 hours),
// then replays it under a configuration with session caps, the frequency
// rule, sender networks and two quotas, and prints the time taken, the
// rate and the process's peak resident memory. Memory grows with the
// distinct keys (clients, recipients, users), not with the lines: compare
// -lines 500000 with -lines 2000000 at the same -clients.
//
//	go run ./bench/replay -lines 2000000
package main

import (
	"bufio"
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/sessioncap/sessioncap/config"
	"github.com/sessioncap/sessioncap/replay"
)

const benchConfig = `mode = "monitor"
[session]
max_messages = 50
max_recipients = 200
[frequency]
max_connections = 60
window = "1h"
ban = "10m"
[sender_networks]
max_networks = 20
window = "1h"
[[rate]]
name = "user-hourly"
key = "user"
count = "messages"
limit = 200
window = "1h"
[[rate]]
name = "mailbox"
key = "recipient"
count = "messages"
limit = 100
window = "1h"
`

func main() {
	lines := flag.Int("lines", 2_000_000, "log lines to generate")
	gz := flag.Bool("gzip", false, "write the log gzipped")
	keep := flag.String("log", "", "write the log here and keep it (default: a temporary file)")
	clients := flag.Int("clients", 20000, "distinct client addresses")
	flag.Parse()

	dir, err := os.MkdirTemp("", "sessioncap-bench-replay-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := *keep
	if path == "" {
		path = filepath.Join(dir, "mail.log")
		if *gz {
			path += ".gz"
		}
	}
	start := time.Now()
	size, err := generate(path, *lines, *gz, *clients)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("generated %d lines (%.0f MiB%s) in %v\n", *lines, float64(size)/(1<<20), map[bool]string{true: " gzipped"}[*gz], time.Since(start).Round(time.Millisecond))

	cfgPath := filepath.Join(dir, "bench.toml")
	if err := os.WriteFile(cfgPath, []byte(benchConfig), 0o644); err != nil {
		log.Fatal(err)
	}
	cfg, err := config.Load(cfgPath, true)
	if err != nil {
		log.Fatal(err)
	}
	runtime.GC()
	start = time.Now()
	r, err := replay.New(replay.Options{Rules: cfg.Rules})
	if err != nil {
		log.Fatal(err)
	}
	ins, err := replay.OpenInputs([]string{path}, nil, 2026, time.UTC)
	if err != nil {
		log.Fatal(err)
	}
	for _, in := range ins {
		if err := r.Read(in); err != nil {
			log.Fatal(err)
		}
		in.Close()
	}
	rep := r.Finish()
	took := time.Since(start)
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	fmt.Printf("replayed %d lines in %v: %.0f lines/s; %d sessions, %d transactions, %d refusals; %d unplaced\n",
		rep.Lines, took.Round(time.Millisecond), float64(rep.Lines)/took.Seconds(), rep.Sessions, rep.Messages,
		len(rep.Refusals)+rep.RefusalsDropped, rep.Unplaced)
	fmt.Printf("peak resident memory %.0f MiB (GOMAXPROCS %d)\n", float64(ru.Maxrss)/1024, runtime.GOMAXPROCS(0))
}

// generate writes n lines of a busy MX's day.
func generate(path string, n int, gz bool, clients int) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var w io.Writer = f
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(f)
		w = zw
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	g := &gen{rng: rand.New(rand.NewPCG(1, 2)), t: time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC), clients: max(clients, 1)}
	g.step = 24 * time.Hour / time.Duration(n)
	active := make([]*sess, 0, 64)
	for written := 0; written < n; {
		for len(active) < 40 {
			active = append(active, g.newSession())
		}
		i := g.rng.IntN(len(active))
		s := active[i]
		line := s.lines[0]
		s.lines = s.lines[1:]
		g.t = g.t.Add(g.step)
		fmt.Fprintf(bw, "%s mx %s\n", g.t.Format("Jan _2 15:04:05"), line)
		written++
		if len(s.lines) == 0 {
			active[i] = active[len(active)-1]
			active = active[:len(active)-1]
		}
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return 0, err
		}
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

type gen struct {
	rng  *rand.Rand
	t    time.Time
	step time.Duration
	pid  int
	qid  int

	clients int
}

type sess struct{ lines []string }

// newSession is one SMTP session's lines, in order.
func (g *gen) newSession() *sess {
	g.pid++
	pid := 10000 + g.pid%50000
	// a few heavy senders, many occasional ones
	var ip string
	if g.rng.IntN(10) == 0 {
		ip = fmt.Sprintf("198.51.100.%d", 1+g.rng.IntN(3))
	} else {
		c := g.rng.IntN(g.clients)
		ip = fmt.Sprintf("10.%d.%d.%d", c>>16&255, c>>8&255, c&255)
	}
	smtpd, user := "postfix/smtpd", ""
	if g.rng.IntN(8) == 0 {
		smtpd, user = "postfix/submission/smtpd", fmt.Sprintf("user%d", g.rng.IntN(500))
	}
	tag := fmt.Sprintf("%s[%d]:", smtpd, pid)
	host := fmt.Sprintf("host%d.example", g.rng.IntN(100000))
	s := &sess{}
	add := func(format string, a ...any) { s.lines = append(s.lines, fmt.Sprintf(format, a...)) }
	add("%s connect from %s[%s]", tag, host, ip)
	msgs := 1 + g.rng.IntN(3)
	if g.rng.IntN(20) == 0 {
		msgs = 10 + g.rng.IntN(40)
	}
	domain := fmt.Sprintf("d%d.example", g.rng.IntN(3000))
	rcpts := 0
	for m := 0; m < msgs; m++ {
		g.qid++
		qid := fmt.Sprintf("%X", 0x4A000000+g.qid)
		sender := fmt.Sprintf("s%d@%s", g.rng.IntN(20), domain)
		if g.rng.IntN(15) == 0 {
			add("%s NOQUEUE: reject: RCPT from %s[%s]: 550 5.1.1 <nobody@mx.example>: Recipient address rejected: User unknown in virtual mailbox table; from=<%s> to=<nobody@mx.example> proto=ESMTP helo=<%s>", tag, host, ip, sender, host)
		}
		if user != "" {
			add("%s %s: client=%s[%s], sasl_method=PLAIN, sasl_username=%s", tag, qid, host, ip, user)
		} else {
			add("%s %s: client=%s[%s]", tag, qid, host, ip)
		}
		add("postfix/cleanup[900]: %s: message-id=<%d@%s>", qid, g.qid, domain)
		n := 1 + g.rng.IntN(3)
		rcpts += n
		add("postfix/qmgr[800]: %s: from=<%s>, size=%d, nrcpt=%d (queue active)", qid, sender, 2000+g.rng.IntN(200000), n)
		for r := 0; r < n; r++ {
			add("postfix/virtual[%d]: %s: to=<u%d@mx.example>, relay=virtual, delay=0.1, delays=0.05/0/0/0.05, dsn=2.0.0, status=sent (delivered to maildir)", 700+r, qid, g.rng.IntN(5000))
		}
		add("postfix/qmgr[800]: %s: removed", qid)
	}
	add("%s disconnect from %s[%s] ehlo=1 mail=%d rcpt=%d data=%d quit=1 commands=%d", tag, host, ip, msgs, rcpts, msgs, 2+2*msgs+rcpts)
	return s
}
