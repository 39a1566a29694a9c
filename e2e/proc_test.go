package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
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

// proc is a child process in a process group of its own, so that it and
// everything it forks can be signalled at once.
type proc struct {
	name    string
	cmd     *exec.Cmd
	outPath string
	done    chan struct{}
	err     error // set before done is closed
}

// output is what the process wrote to stdout and stderr so far.
func (p *proc) output() string { return readFileString(p.outPath) }

// startProc starts argv with stdout and stderr going to outPath (a file, not
// a pipe: daemons that fork must not keep Wait waiting on a pipe). The
// caller stops it with stop; a t.Cleanup registered here kills whatever is
// left.
func startProc(t testing.TB, name, outPath string, env []string, argv ...string) *proc {
	t.Helper()
	out, err := os.OpenFile(outPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout = out
	cmd.Stderr = out
	p := &proc{name: name, cmd: cmd, outPath: outPath, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(t, 5*time.Second) })
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, waits up to grace, then sends
// SIGKILL to the group and to any process still carrying the group id.
func (p *proc) stop(t testing.TB, grace time.Duration) {
	pgid := p.pid()
	if !p.exited() {
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			t.Logf("%s did not stop within %v after SIGTERM; killing it", p.name, grace)
		}
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		t.Errorf("%s (pid %d) survived SIGKILL for 5s", p.name, pgid)
	}
	killMatching(t, p.name, func(pi procInfo) bool { return pi.pgid == pgid })
}

// procInfo is what /proc says about one process.
type procInfo struct {
	pid, ppid, pgid, sid int
	cmdline, environ     string
}

func listProcs() []procInfo {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []procInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command name is in parentheses and may contain spaces.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 4 {
			continue
		}
		pi := procInfo{pid: pid}
		pi.ppid, _ = strconv.Atoi(f[1])
		pi.pgid, _ = strconv.Atoi(f[2])
		pi.sid, _ = strconv.Atoi(f[3])
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil {
			pi.cmdline = strings.ReplaceAll(string(b), "\x00", " ")
		}
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ")); err == nil {
			pi.environ = string(b)
		}
		out = append(out, pi)
	}
	return out
}

// killMatching SIGKILLs, by pid, every process that match selects, and
// reports it: a process left behind is a harness bug worth seeing.
func killMatching(t testing.TB, what string, match func(procInfo) bool) {
	self := os.Getpid()
	for round := 0; round < 3; round++ {
		var left []procInfo
		for _, pi := range listProcs() {
			if pi.pid != self && match(pi) {
				left = append(left, pi)
			}
		}
		if len(left) == 0 {
			return
		}
		for _, pi := range left {
			t.Logf("%s: killing leftover process %d: %s", what, pi.pid, pi.cmdline)
			_ = syscall.Kill(pi.pid, syscall.SIGKILL)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// freePort returns a loopback TCP port that was free a moment ago. Another
// process may take it before the instance it is meant for binds it: callers
// that hand it to a subprocess retry with startOnFreePort.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// errPortTaken says that a port picked by freePort was bound by someone else
// before the instance it was meant for bound it.
var errPortTaken = errors.New("the port picked was taken by another process")

// bindAttempts bounds how often an instance is started on a new port after
// errPortTaken.
const bindAttempts = 4

// startOnFreePort calls start with a fresh free port until it returns
// something other than errPortTaken, at most bindAttempts times. start must
// have stopped what it started when it returns an error.
func startOnFreePort[T any](t testing.TB, what string, start func(port int) (T, error)) T {
	t.Helper()
	for attempt := 1; ; attempt++ {
		port := freePort(t)
		v, err := start(port)
		if err == nil {
			return v
		}
		if !errors.Is(err, errPortTaken) || attempt == bindAttempts {
			t.Fatalf("%s (attempt %d of %d, port %d): %v", what, attempt, bindAttempts, port, err)
		}
		t.Logf("%s: port %d: %v; starting again on another port", what, port, err)
	}
}

// portTakenIn reports whether a log says a bind failed because the address
// was in use.
func portTakenIn(log string) bool {
	l := strings.ToLower(log)
	return strings.Contains(l, "address already in use")
}

// probeSource is the address readiness probes connect from. An MTA's
// probe is an SMTP session that its milter may see (Sendmail connects to
// sessioncap for it once sessioncap listens): from 127.0.0.1, the tests'
// own client address, it would count against the frequency cap the tests
// measure.
var probeSource = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 254)}

// probeDial connects to addr for a readiness probe, from probeSource when
// addr is an IPv4 address.
func probeDial(addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if host, _, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.To4() != nil {
			d.LocalAddr = probeSource
		}
	}
	return d.Dial("tcp", addr)
}

// waitListening polls until addr accepts TCP connections, the process dies,
// or timeout passes.
func waitListening(addr string, p *proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := probeDial(addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited before listening on %s: %v", p.name, addr, p.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listening on %s after %v: %v", addr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitGreeting waits until an SMTP server on addr answers a connection with
// a greeting line (any code), then quits. Unlike a bare connect, it returns
// only once the server has dealt with the connection, milter included. A
// greeting that lacks token (the instance's own banner text) comes from some
// other server that took the port: errPortTaken.
func waitGreeting(addr string, p *proc, timeout time.Duration, token string) error {
	if err := waitListening(addr, p, timeout); err != nil {
		return err
	}
	c, err := probeDial(addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("no greeting from %s: %v", addr, err)
	}
	if len(line) < 3 || line[0] < '2' || line[0] > '5' {
		return fmt.Errorf("bad greeting from %s: %q", addr, line)
	}
	if line[0] == '2' && !strings.Contains(line, token) {
		return fmt.Errorf("%w: greeting %q from %s lacks this instance's %q", errPortTaken, strings.TrimSpace(line), addr, token)
	}
	_, _ = c.Write([]byte("QUIT\r\n"))
	return nil
}

// waitFor polls cond every 100ms until it returns nil or timeout passes, and
// returns cond's last error.
func waitFor(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var errNotYet = errors.New("not yet")
