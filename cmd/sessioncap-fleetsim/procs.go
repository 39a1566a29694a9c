package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// keyPrefix is the store.redis.key_prefix every daemon is given.
const keyPrefix = "sessioncap:"

// daemonConfig is what differs between the daemons' configuration files.
type daemonConfig struct {
	Backend        string   // "memory" or "redis"
	RedisAddresses []string // host:port, with the redis backend
	MaxConnections int
	Window, Ban    time.Duration
	AdminSocket    string // a path
}

// renderConfig writes a sessioncap TOML configuration: the frequency rule
// under test counted per /24, concurrency off (the simulation measures the
// frequency decision only), no state file, nothing exempt.
func renderConfig(c daemonConfig) string {
	var b strings.Builder
	b.WriteString("# written by sessioncap-fleetsim\nmode = \"enforce\"\n\n")
	fmt.Fprintf(&b, "[frequency]\nmax_connections = %d\nwindow = %q\nban = %q\n\n", c.MaxConnections, c.Window.String(), c.Ban.String())
	b.WriteString("[concurrency]\nmax_per_address = 0\nmax_total = 0\n\n")
	b.WriteString("[addresses]\nipv4_prefix = 24\n\n")
	fmt.Fprintf(&b, "[store]\nbackend = %q\nstate_file = \"\"\n\n", c.Backend)
	if c.Backend == "redis" {
		quoted := make([]string, len(c.RedisAddresses))
		for i, a := range c.RedisAddresses {
			quoted[i] = strconv.Quote(a)
		}
		fmt.Fprintf(&b, "[store.redis]\naddresses = [%s]\nkey_prefix = %q\n\n", strings.Join(quoted, ", "), keyPrefix)
	}
	fmt.Fprintf(&b, "[admin]\nlisten = %q\n\n", "unix:"+c.AdminSocket)
	b.WriteString("[exempt]\nnetworks = []\n")
	return b.String()
}

var listeningRE = regexp.MustCompile(`\bmsg=listening milter=inet:(\S+) metrics=(\S+)`)

// parseListening finds the milter and metrics addresses (host:port) in the
// daemon's "msg=listening" log line.
func parseListening(line string) (milter, metrics string, ok bool) {
	m := listeningRE.FindStringSubmatch(line)
	if m == nil {
		return "", "", false
	}
	return m[1], m[2], true
}

// process is a child process with its stderr drained.
type process struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}

	mu     sync.Mutex
	tail   []string // the last lines of stderr
	errors int      // lines at level=ERROR
}

const tailLines = 20

func startProcess(name string, cmd *exec.Cmd, onLine func(string)) (*process, error) {
	p := &process{name: name, cmd: cmd, exited: make(chan struct{})}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.tail = append(p.tail, line)
			if len(p.tail) > tailLines {
				p.tail = p.tail[1:]
			}
			if strings.Contains(line, "level=ERROR") {
				p.errors++
			}
			p.mu.Unlock()
			if onLine != nil {
				onLine(line)
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = cmd.Wait() // the exit status is not the point; stop reports what it saw
		close(p.exited)
	}()
	return p, nil
}

func (p *process) logTail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

func (p *process) errorLines() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.errors
}

// stop sends SIGTERM, waits up to 5s, then kills.
func (p *process) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// daemon is one running sessioncap.
type daemon struct {
	*process
	milter, metrics string
}

// startDaemon writes config i into dir and starts the binary on loopback
// ports it chooses, returning once it logged its listening line.
func startDaemon(ctx context.Context, bin, dir string, i int, c daemonConfig) (*daemon, error) {
	c.AdminSocket = filepath.Join(dir, fmt.Sprintf("admin-%d.sock", i))
	path := filepath.Join(dir, fmt.Sprintf("sessioncap-%d.toml", i))
	if err := os.WriteFile(path, []byte(renderConfig(c)), 0o600); err != nil {
		return nil, err
	}
	type addrs struct{ milter, metrics string }
	ready := make(chan addrs, 1)
	cmd := exec.Command(bin, "-config", path, "-listen", "inet:127.0.0.1:0", "-metrics-listen", "127.0.0.1:0")
	p, err := startProcess(fmt.Sprintf("sessioncap-%d", i), cmd, func(line string) {
		if m, x, ok := parseListening(line); ok {
			select {
			case ready <- addrs{m, x}:
			default:
			}
		}
	})
	if err != nil {
		return nil, err
	}
	select {
	case a := <-ready:
		return &daemon{process: p, milter: a.milter, metrics: a.metrics}, nil
	case <-p.exited:
		return nil, fmt.Errorf("%s exited before listening:\n%s", p.name, p.logTail())
	case <-time.After(20 * time.Second):
		p.stop()
		return nil, fmt.Errorf("%s did not log its listening line in 20s:\n%s", p.name, p.logTail())
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	}
}

// redisServer is a throwaway redis-server on a free loopback port.
type redisServer struct {
	*process
	addr string
}

// startRedis runs redis-server on a port the OS chose (listen on :0, close,
// use), without persistence, and retries on another port if that one was
// taken in between. It returns once the server answering is this process.
func startRedis(ctx context.Context, bin, dir string) (*redisServer, error) {
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		logFile := filepath.Join(dir, "redis.log")
		cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir, "--logfile", logFile)
		p, err := startProcess("redis-server", cmd, nil)
		if err != nil {
			return nil, err
		}
		err = waitRedis(ctx, p, addr)
		if err == nil {
			return &redisServer{process: p, addr: addr}, nil
		}
		p.stop()
		log, _ := os.ReadFile(logFile)
		if attempt < 4 && strings.Contains(string(log), "already in use") {
			continue
		}
		return nil, fmt.Errorf("redis-server on %s: %v\n%s", addr, err, lastLines(string(log), tailLines))
	}
}

// waitRedis waits up to 10s for INFO on addr to name p's process id.
func waitRedis(ctx context.Context, p *process, addr string) error {
	rc := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer rc.Close()
	want := "process_id:" + strconv.Itoa(p.cmd.Process.Pid) + "\r\n"
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			return errors.New("exited")
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if info, err := rc.Info(ctx, "server").Result(); err == nil && strings.Contains(info, want) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return errors.New("no answer to INFO in 10s")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
