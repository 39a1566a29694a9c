// Package redistest starts throwaway Redis servers on loopback ports for
// tests: standalone, a three-primary Cluster, and a primary with a replica
// watched by one Sentinel. Every process is killed in t.Cleanup.
package redistest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Require skips the test when redis-server is not installed, or fails it
// when CI=true (CI must run these tests).
func Require(t testing.TB) {
	t.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not installed (CI=true: not skipping): %v", bin, err)
			}
			t.Skipf("%s not installed; skipping the Redis tests (install the redis-server package)", bin)
		}
	}
}

// Server is one redis-server (or redis-sentinel) process on 127.0.0.1.
type Server struct {
	t      testing.TB
	Port   int
	bin    string   // redis-server or redis-sentinel
	conf   string   // a config file, first argument, or ""
	args   []string // more arguments; the port and log file are added
	log    string
	cmd    *exec.Cmd
	exited chan error
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

// freePort lets the OS choose a port: listen on :0, close, use. Another
// process may take it before the server binds it; callers retry.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs redis-server with args (the port and log file are added) on
// port, or on a port the OS chose when port is 0, and waits until it answers
// INFO; with a chosen port it retries (bounded) on another when the port was
// taken in between.
func start(t testing.TB, dir string, port int, args []string) *Server {
	t.Helper()
	for attempt := 0; ; attempt++ {
		p := port
		if p == 0 {
			p = freePort(t)
		}
		s := &Server{t: t, Port: p, bin: "redis-server", args: args, log: filepath.Join(dir, "redis-"+strconv.Itoa(p)+".log")}
		err := s.run()
		if err == nil {
			t.Cleanup(s.Kill)
			return s
		}
		if port != 0 || attempt == 4 || !strings.Contains(err.Error(), "already in use") {
			t.Fatalf("redis on port %d: %v", p, err)
		}
	}
}

// run starts the process and waits up to 10s for it to answer INFO with
// its own process id.
func (s *Server) run() error {
	var args []string
	if s.conf != "" {
		args = append(args, s.conf)
	}
	args = append(args, "--port", strconv.Itoa(s.Port))
	args = append(args, s.args...)
	args = append(args, "--logfile", s.log)
	bin := s.bin
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(s.log)
			return fmt.Errorf("%s exited: %v\n%s", bin, err, tail(string(log)))
		default:
		}
		// the server answering must be ours, not another that took the port
		pid := "process_id:" + strconv.Itoa(cmd.Process.Pid) + "\r\n"
		if r, err := Do(s.Addr(), "INFO", "server"); (err == nil && strings.Contains(r, pid)) || (err != nil && strings.Contains(err.Error(), "NOAUTH")) {
			s.cmd = cmd
			s.exited = exited
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Kill()
	<-exited
	return fmt.Errorf("%s on %d did not answer INFO in 10s", bin, s.Port)
}

func tail(s string) string {
	if len(s) > 2000 {
		return s[len(s)-2000:]
	}
	return s
}

// Kill stops the server at once (SIGKILL) and waits for it to exit.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Pause stops the server (SIGSTOP): it keeps its connections and accepts
// new ones in the kernel's backlog but answers nothing, like a hung host.
func (s *Server) Pause() { s.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume lets a paused server run again (SIGCONT).
func (s *Server) Resume() { s.cmd.Process.Signal(syscall.SIGCONT) }

// Restart starts the server again on the same port.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.run(); err != nil {
		s.t.Fatalf("restart: %v", err)
	}
}

// Log returns the end of the server's log file.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.log)
	return tail(string(b))
}

// Standalone starts a redis-server without persistence, with more
// arguments (such as "--requirepass", "pw") when given.
func Standalone(t testing.TB, args ...string) *Server {
	t.Helper()
	Require(t)
	dir := t.TempDir()
	return start(t, dir, 0, append([]string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir}, args...))
}

// Cluster starts three primaries without replicas, creates the Cluster and
// waits until every node reports cluster_state:ok. It returns the nodes.
func Cluster(t testing.TB) []*Server {
	t.Helper()
	return ClusterVia(t, nil)
}

// ClusterVia is Cluster with a front for each node: front(i, addr) is
// called with the node's own address before it starts and returns the
// port of a proxy to it on 127.0.0.1, which the node announces to clients
// (cluster-announce-port) in CLUSTER SLOTS, SHARDS and redirections, so
// that every command a Cluster client sends goes through the proxies. The
// Cluster bus stays on the nodes' own ports. A nil front announces the
// nodes themselves.
func ClusterVia(t testing.TB, front func(i int, addr string) int) []*Server {
	t.Helper()
	Require(t)
	dir := t.TempDir()
	var nodes []*Server
	var addrs []string
	for i := 0; i < 3; i++ {
		// the node's config file is named by a per-node index, not the
		// port, so that a retry on another port does not find a stale one
		args := []string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir,
			"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, fmt.Sprintf("nodes-%d.conf", i)),
			"--cluster-node-timeout", "2000"}
		port := 0
		if front != nil {
			// the bus port is 10000 above, and must exist
			for port = freePort(t); port > 55535; port = freePort(t) {
			}
			args = append(args, "--cluster-announce-ip", "127.0.0.1",
				"--cluster-announce-port", strconv.Itoa(front(i, "127.0.0.1:"+strconv.Itoa(port))),
				"--cluster-announce-bus-port", strconv.Itoa(port+10000))
		}
		s := start(t, dir, port, args)
		nodes = append(nodes, s)
		addrs = append(addrs, s.Addr())
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	waitFor(t, 20*time.Second, "cluster_state:ok on every node", func() bool {
		for _, s := range nodes {
			info, err := Do(s.Addr(), "CLUSTER", "INFO")
			if err != nil || !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_known_nodes:3") {
				return false
			}
		}
		return true
	})
	return nodes
}

// Sentinel starts a primary, a replica of it and one redis-sentinel
// monitoring it as master name "m" with quorum 1 and short timeouts. It
// waits until the replica is in sync and the sentinel knows it.
func Sentinel(t testing.TB) (sentinel, primary, replica *Server) {
	t.Helper()
	Require(t)
	if _, err := exec.LookPath("redis-sentinel"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-sentinel not installed (CI=true: not skipping)")
		}
		t.Skip("redis-sentinel not installed")
	}
	dir := t.TempDir()
	base := []string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir}
	primary = start(t, dir, 0, base)
	replica = start(t, dir, 0, append(base, "--replicaof", "127.0.0.1", strconv.Itoa(primary.Port)))
	waitFor(t, 20*time.Second, "replica in sync", func() bool {
		info, err := Do(replica.Addr(), "INFO", "replication")
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	conf := filepath.Join(dir, "sentinel.conf")
	cfg := fmt.Sprintf("bind 127.0.0.1\ndir %s\nsentinel resolve-hostnames no\n"+
		"sentinel monitor m 127.0.0.1 %d 1\n"+
		"sentinel down-after-milliseconds m 1000\n"+
		"sentinel failover-timeout m 5000\n"+
		"sentinel parallel-syncs m 1\n", dir, primary.Port)
	// redis-sentinel rewrites its config file; each attempt starts from a
	// fresh copy so that a retry on another port is clean
	for attempt := 0; ; attempt++ {
		if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		s := &Server{t: t, Port: freePort(t), bin: "redis-sentinel", conf: conf, log: filepath.Join(dir, "sentinel.log")}
		if err := s.run(); err != nil {
			if attempt == 4 {
				t.Fatalf("redis-sentinel: %v", err)
			}
			continue
		}
		t.Cleanup(s.Kill)
		sentinel = s
		break
	}
	waitFor(t, 30*time.Second, "the sentinel to know the replica", func() bool {
		r, err := Do(sentinel.Addr(), "SENTINEL", "REPLICAS", "m")
		return err == nil && strings.Contains(r, strconv.Itoa(replica.Port))
	})
	return sentinel, primary, replica
}

// MasterPort asks the sentinel which port master "m" is on.
func MasterPort(sentinel *Server) (int, error) {
	r, err := Do(sentinel.Addr(), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "m")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(r)
	if len(f) != 2 {
		return 0, fmt.Errorf("master address %q", r)
	}
	return strconv.Atoi(f[1])
}

func waitFor(t testing.TB, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Do sends one command in RESP and returns the reply flattened to text
// (array elements separated by spaces), for setup without a client.
func Do(addr string, args ...string) (string, error) {
	return do(addr, nil, args)
}

// DoAuth is Do on a connection that first authenticates with AUTH as user
// (the default user when user is "") with password.
func DoAuth(addr, user, password string, args ...string) (string, error) {
	auth := []string{"AUTH", password}
	if user != "" {
		auth = []string{"AUTH", user, password}
	}
	return do(addr, auth, args)
}

// do sends first (when not nil) and then args on one connection and
// returns the reply to args.
func do(addr string, first, args []string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	r := bufio.NewReader(c)
	send := func(args []string) ([]string, error) {
		var b strings.Builder
		fmt.Fprintf(&b, "*%d\r\n", len(args))
		for _, a := range args {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
		if _, err := c.Write([]byte(b.String())); err != nil {
			return nil, err
		}
		var out []string
		err := readReply(r, &out)
		return out, err
	}
	if first != nil {
		if _, err := send(first); err != nil {
			return "", err
		}
	}
	out, err := send(args)
	if err != nil {
		return "", err
	}
	return strings.Join(out, " "), nil
}

func readReply(r *bufio.Reader, out *[]string) error {
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return fmt.Errorf("empty reply line")
	}
	switch line[0] {
	case '+', ':':
		*out = append(*out, line[1:])
	case '-':
		return fmt.Errorf("redis: %s", line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return err
		}
		*out = append(*out, string(buf[:n]))
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			if err := readReply(r, out); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unexpected reply %q", line)
	}
	return nil
}
