package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	"github.com/sessioncap/sessioncap/internal/testkit"
)

var binary string // built once by TestMain

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sessioncap-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "sessioncap")
	// The binary's built-in config file and admin socket are in a directory
	// that does not exist: a daemon started without -config never reads the
	// host's /etc/sessioncap/sessioncap.toml nor binds its admin socket.
	absent := filepath.Join(dir, "absent")
	ldflags := fmt.Sprintf("-X 'main.config.DefaultPath=%s' -X 'main.config.DefaultAdminListen=unix:%s'",
		filepath.Join(absent, "sessioncap.toml"), filepath.Join(absent, "admin.sock"))
	build := exec.Command("go", "build", "-race", "-ldflags", ldflags, "-o", binary, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the binary:", err)
		os.Exit(1)
	}
	// The binary is built with -race, whose runtime sleeps 1s at exit:
	// every CLI command the tests run would pay it.
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// daemonProc is the real binary running under test.
type daemonProc struct {
	t       *testing.T
	cmd     *exec.Cmd
	mu      sync.Mutex
	log     strings.Builder
	milter  string // host:port
	metrics string // host:port
	admin   string // the admin socket spec
	config  string // the config file
	exited  chan struct{}
	code    int
}

func startDaemon(t *testing.T, config string) *daemonProc {
	t.Helper()
	return startDaemonEnv(t, config, environ())
}

// startDaemonEnv runs the binary on config (with an admin socket of its own
// unless config has [admin]) in the environment env.
func startDaemonEnv(t *testing.T, config string, env []string) *daemonProc {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "sessioncap.toml")
	admin := "unix:" + filepath.Join(dir, "admin.sock")
	if !strings.Contains(config, "[admin]") { // never the host's /run/sessioncap/admin.sock
		config += "\n[admin]\nlisten = \"" + admin + "\"\n"
	}
	writeFile(t, path, config)
	cmd := exec.Command(binary, "-config", path, "-listen", "inet:127.0.0.1:0", "-metrics-listen", "127.0.0.1:0")
	cmd.Env = env
	d := startProc(t, cmd)
	d.admin, d.config = admin, path
	return d
}

// environ is the test's environment without STATE_DIRECTORY (a test runner
// under systemd may have one: state_file = "auto" would write there) and
// with the variables in set (KEY=VALUE) added.
func environ(set ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "STATE_DIRECTORY=") {
			env = append(env, kv)
		}
	}
	return append(env, set...)
}

// startProc starts cmd, the binary with -listen inet:… and -metrics-listen,
// and waits until it logs where it listens.
func startProc(t *testing.T, cmd *exec.Cmd) *daemonProc {
	t.Helper()
	d := &daemonProc{t: t, cmd: cmd, exited: make(chan struct{})}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		listening := regexp.MustCompile(`msg=listening milter=inet:(\S+) metrics=(\S+)`)
		for sc.Scan() {
			d.mu.Lock()
			d.log.WriteString(sc.Text() + "\n")
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				d.milter, d.metrics = m[1], m[2]
				close(ready)
			}
			d.mu.Unlock()
		}
		_ = d.cmd.Wait() // the exit code is what the tests check
		d.code = d.cmd.ProcessState.ExitCode()
		close(d.exited)
	}()
	t.Cleanup(func() {
		_ = d.cmd.Process.Kill()
		<-d.exited
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.logs())
		}
	})
	select {
	case <-ready:
	case <-d.exited:
		t.Fatalf("daemon exited with %d before listening:\n%s", d.code, d.logs())
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon did not start:\n%s", d.logs())
	}
	return d
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (d *daemonProc) logs() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.log.String()
}

func (d *daemonProc) signal(sig syscall.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatal(err)
	}
}

func (d *daemonProc) waitLog(substr string) {
	d.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.logs(), substr) {
		if time.Now().After(deadline) {
			d.t.Fatalf("log never said %q:\n%s", substr, d.logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (d *daemonProc) waitExit() int {
	d.t.Helper()
	select {
	case <-d.exited:
		return d.code
	case <-time.After(15 * time.Second):
		d.t.Fatalf("daemon did not exit:\n%s", d.logs())
		return -1
	}
}

func (d *daemonProc) scrape() string {
	d.t.Helper()
	resp, err := http.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		d.t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

func (d *daemonProc) metric(series string) string {
	d.t.Helper()
	for _, line := range strings.Split(d.scrape(), "\n") {
		if strings.HasPrefix(line, series+" ") {
			return strings.TrimPrefix(line, series+" ")
		}
	}
	d.t.Fatalf("no series %s", series)
	return ""
}

// messagesUntilRefused sends messages in one milter session until MAIL is
// refused and returns how many were accepted and the refusal text.
func (d *daemonProc) messagesUntilRefused(limit int) (int, string) {
	d.t.Helper()
	macros := gomilter.NewMacroBag()
	s, err := gomilter.NewClient("tcp", d.milter).Session(macros)
	if err != nil {
		d.t.Fatal(err)
	}
	defer s.Close()
	if act, err := s.Conn("c.example", gomilter.FamilyInet, 1234, "192.0.2.1"); err != nil || act.StopProcessing() {
		d.t.Fatalf("conn: %v %v", act, err)
	}
	if _, err := s.Helo("c.example"); err != nil {
		d.t.Fatal(err)
	}
	for i := 0; i < limit; i++ {
		act, err := s.Mail("a@example.org", "")
		if err != nil {
			d.t.Fatal(err)
		}
		if act.StopProcessing() {
			return i, act.SMTPReply
		}
		s.Rcpt("b@example.net", "")
		s.DataStart()
		s.HeaderField("Subject", "x", nil)
		s.HeaderEnd()
		s.BodyChunk([]byte("hello\r\n"))
		if _, act, err := s.End(); err != nil || act.Type != gomilter.ActionAccept {
			d.t.Fatalf("eom: %v %v", act, err)
		}
	}
	return limit, ""
}

func TestDaemonReloadAndMetrics(t *testing.T) {
	d := startDaemon(t, "[session]\nmax_messages = 2\n")
	n, reply := d.messagesUntilRefused(10)
	if n != 2 || reply != "421 4.7.0 Too many messages in this session (limit 2); reconnect to send more" {
		t.Fatalf("accepted %d, reply %q", n, reply)
	}
	if got := d.metric(`sessioncap_refusals_total{limit="session_messages",mode="enforce",stage="mail"}`); got != "1" {
		t.Fatalf("refusals %s", got)
	}
	cfgPath := d.cmd.Args[2]

	// a bad file keeps the running configuration and says why
	writeFile(t, cfgPath, "[session]\nmax_messages = \"many\"\n")
	d.signal(syscall.SIGHUP)
	d.waitLog("reload failed; keeping the running configuration")
	if !strings.Contains(d.logs(), "session.max_messages: must be a whole number") {
		t.Fatalf("reload error does not name the key:\n%s", d.logs())
	}
	if got := d.metric("sessioncap_config_last_reload_successful"); got != "0" {
		t.Fatalf("reload gauge %s after a bad reload", got)
	}
	if n, _ := d.messagesUntilRefused(10); n != 2 {
		t.Fatalf("after a failed reload the cap is %d, want the old 2", n)
	}

	// a good file takes effect for new sessions
	writeFile(t, cfgPath, "[session]\nmax_messages = 4\n")
	d.signal(syscall.SIGHUP)
	d.waitLog("configuration reloaded")
	if got := d.metric("sessioncap_config_last_reload_successful"); got != "1" {
		t.Fatalf("reload gauge %s after a good reload", got)
	}
	if n, _ := d.messagesUntilRefused(10); n != 4 {
		t.Fatalf("after reload the cap is %d, want 4", n)
	}
	scrape := d.scrape()
	for _, want := range []string{
		"sessioncap_sessions_total 3", "sessioncap_messages_total 8", `sessioncap_build_info{goversion="go`,
		`sessioncap_bans_active{mode="enforce"} 0`, `sessioncap_bans_active{mode="monitor"} 0`, "sessioncap_tracked_addresses 1", "go_goroutines", "process_open_fds",
		`sessioncap_callback_duration_seconds_count{stage="mail"} 11`,
	} {
		if !strings.Contains(scrape, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	d.signal(syscall.SIGTERM)
	if code := d.waitExit(); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
}

func TestDaemonSecondSignalExitsAtOnce(t *testing.T) {
	d := startDaemon(t, "")
	s, err := gomilter.NewClient("tcp", d.milter).Session(gomilter.NewMacroBag())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Conn("c.example", gomilter.FamilyInet, 1234, "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	// an open session holds the graceful shutdown: once the daemon has
	// logged that it handled SIGTERM, the open session still gets an answer
	// to MAIL, which only a running daemon can give
	d.signal(syscall.SIGTERM)
	d.waitLog("shutting down; waiting for open sessions")
	if _, err := s.Helo("c.example"); err != nil {
		t.Fatal(err)
	}
	if act, err := s.Mail("a@example.org", ""); err != nil || act.StopProcessing() {
		t.Fatalf("MAIL on the open session after SIGTERM: %v %v; want continue from a daemon still running", act, err)
	}
	select {
	case <-d.exited:
		t.Fatalf("exited with %d while a session was open", d.code)
	default:
	}
	d.signal(syscall.SIGINT)
	if code := d.waitExit(); code != exitRuntime {
		t.Fatalf("exit %d after the second signal, want %d", code, exitRuntime)
	}
}

func TestDaemonGracefulStopWaitsForSession(t *testing.T) {
	d := startDaemon(t, "")
	s, err := gomilter.NewClient("tcp", d.milter).Session(gomilter.NewMacroBag())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Conn("c.example", gomilter.FamilyInet, 1234, "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGTERM)
	d.waitLog("shutting down")
	s.Close() // the MTA ends the session
	if code := d.waitExit(); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// TestDaemonBadConfigExits78: a configuration error exits 78 (EX_CONFIG),
// the status the systemd unit does not restart after; never 2, which is what
// the Go runtime exits with on a panic. The number is spelled out here, not
// taken from exitConfig, so that changing the constant fails this test.
func TestDaemonBadConfigExits78(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.toml")
	writeFile(t, path, "mode = \"block\"\n")
	out, err := exec.Command(binary, "-config", path, "-listen", "inet:127.0.0.1:0", "-metrics-listen", "").CombinedOutput()
	var ee *exec.ExitError
	if err == nil || !errors.As(err, &ee) || ee.ExitCode() != 78 {
		t.Fatalf("err %v, want exit 78\n%s", err, out)
	}
	if !strings.Contains(string(out), path+":1: mode: must be \"enforce\", \"monitor\", \"tag\" or \"off\"") {
		t.Fatalf("output:\n%s", out)
	}
}

func TestDaemonUnixSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "milter.sock")
	// A config file of its own: without -config the daemon would read the
	// host's /etc/sessioncap/sessioncap.toml when the package is installed.
	cfg := filepath.Join(dir, "sessioncap.toml")
	writeFile(t, cfg, "")
	cmd := exec.Command(binary, "-config", cfg, "-listen", "unix:"+sock, "-metrics-listen", "")
	cmd.Env = environ("HOME=" + dir)
	var logs testkit.SyncBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	defer func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs.String())
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Stat(sock); err == nil {
			if fi.Mode().Perm() != 0o660 {
				t.Fatalf("socket mode %v, want 0660", fi.Mode().Perm())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	s, err := gomilter.NewClient("unix", sock).Session(gomilter.NewMacroBag())
	if err != nil {
		t.Fatal(err)
	}
	if act, err := s.Conn("local", gomilter.FamilyUnix, 0, "/var/run/x"); err != nil || act.StopProcessing() {
		t.Fatalf("%v %v", act, err)
	}
	s.Close()
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
}

// The admin socket lists, lifts and makes bans of the running daemon, and
// the metrics listener no longer takes admin actions.
func TestDaemonAdminSocket(t *testing.T) {
	d := startDaemon(t, "[frequency]\nmax_connections = 1\nwindow = \"1h\"\nban = \"1h\"\n")
	cli := func(args ...string) (string, int) {
		t.Helper()
		out, err := exec.Command(binary, append(args, "-admin", d.admin)...).CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return string(out), exitCode(err)
	}
	first, _ := d.connectFrom("192.0.2.44")
	first.Close()
	if _, act := d.connectFrom("192.0.2.44"); act.SMTPCode != 421 {
		t.Fatalf("second connection: %v, want the ban", act)
	}
	if out, code := cli("bans"); code != 0 || !strings.Contains(out, "192.0.2.44/32") || !strings.Contains(out, "frequency") {
		t.Fatalf("bans: exit %d\n%s", code, out)
	}
	if out, code := cli("status", "-json"); code != 0 || !strings.Contains(out, `"bans": 1`) && !strings.Contains(out, `"bans":1`) {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	for _, path := range []string{"/-/unban?address=192.0.2.44", "/-/reload"} {
		resp, err := http.Post("http://"+d.metrics+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			t.Fatalf("POST %s on the metrics listener answered %d: admin actions must not be there", path, resp.StatusCode)
		}
	}
	if out, code := cli("unban", "192.0.2.44"); code != 0 || !strings.Contains(out, "freq:192.0.2.44/32") {
		t.Fatalf("unban: exit %d\n%s", code, out)
	}
	if _, act := d.connectFrom("192.0.2.44"); act.StopProcessing() {
		t.Fatalf("after unban: %v", act)
	}
	if out, code := cli("ban", "198.51.100.7", "-for", "2h", "-reason", "manual"); code != 0 {
		t.Fatalf("ban: exit %d\n%s", code, out)
	}
	_, act := d.connectFrom("198.51.100.7")
	if act.SMTPCode != 421 || !regexp.MustCompile(`try again in (2h|1h59m[0-9]+s)$`).MatchString(act.SMTPReply) {
		t.Fatalf("after a manual ban: %d %q", act.SMTPCode, act.SMTPReply)
	}
	if got := d.metric(`sessioncap_bans_active{mode="enforce"}`); got != "1" {
		t.Fatalf("bans_active %s", got)
	}
	// a failed reload answers an error, not success
	writeFile(t, d.config, "[session]\nmax_messages = \"many\"\n")
	if out, code := cli("reload"); code != 1 || !strings.Contains(out, "max_messages") {
		t.Fatalf("reload of a bad file: exit %d\n%s", code, out)
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}
