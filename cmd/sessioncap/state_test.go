package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/sessioncap/sessioncap/config"
	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/internal/testkit"
)

// connectFrom opens a milter session for client and returns the connect
// reply; the session stays open until the test ends or close is called.
func (d *daemonProc) connectFrom(client string) (*gomilter.ClientSession, *gomilter.Action) {
	d.t.Helper()
	s, err := gomilter.NewClient("tcp", d.milter).Session(gomilter.NewMacroBag())
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { s.Close() })
	act, err := s.Conn("c.example", gomilter.FamilyInet, 1234, client)
	if err != nil {
		d.t.Fatal(err)
	}
	return s, act
}

// A ban made before a restart still holds after it, with the time left.
func TestDaemonStateSurvivesRestart(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	config := "[frequency]\nmax_connections = 1\nwindow = \"1h\"\nban = \"1h\"\n[store]\nstate_file = \"" + state + "\"\n"
	d := startDaemon(t, config)
	first, _ := d.connectFrom("192.0.2.44")
	second, act := d.connectFrom("192.0.2.44")
	if act.SMTPCode != 421 {
		t.Fatalf("second connection: %v, want the ban", act)
	}
	first.Close()
	second.Close()
	d.signal(syscall.SIGTERM)
	if code := d.waitExit(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if _, err := os.Stat(state); err != nil {
		t.Fatalf("no state file written at shutdown: %v", err)
	}
	d = startDaemon(t, config)
	d.waitLog("msg=\"state loaded\"")
	_, act = d.connectFrom("192.0.2.44")
	if act.SMTPCode != 421 || !regexp.MustCompile(`try again in (59m[0-9]+s|1h)$`).MatchString(act.SMTPReply) {
		t.Fatalf("after the restart: %d %q, want the ban with about 1h left", act.SMTPCode, act.SMTPReply)
	}
	if got := d.metric(`sessioncap_bans_active{mode="enforce"}`); got != "1" {
		t.Fatalf("bans_active %s after restart", got)
	}
}

// A corrupt state file is logged and kept aside; the daemon starts and serves.
func TestDaemonCorruptStateFile(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	writeFile(t, state, "sessioncap-state 1\n{\"k\":\"freq:192.0.2.0/24\",\"s\":\n")
	d := startDaemon(t, "[store]\nstate_file = \""+state+"\"\n")
	d.waitLog("state file unusable; starting without it")
	if _, act := d.connectFrom("192.0.2.44"); act.StopProcessing() {
		t.Fatalf("refused after a corrupt state file: %v", act)
	}
	if m, _ := filepath.Glob(state + ".bad-*"); len(m) != 1 {
		t.Fatalf("corrupt file not kept aside: %v", m)
	}
}

// SIGHUP during the graceful drain (logrotate, systemctl reload) must not
// cut the drain short: only a second TERM or INT does.
func TestDaemonHUPDuringDrain(t *testing.T) {
	d := startDaemon(t, "")
	s, act := d.connectFrom("192.0.2.44")
	if act.StopProcessing() {
		t.Fatalf("refused: %v", act)
	}
	d.signal(syscall.SIGTERM)
	d.waitLog("shutting down; waiting for open sessions")
	d.signal(syscall.SIGHUP)
	d.waitLog("SIGHUP during shutdown; ignored")
	// still draining: the open session can finish its transaction
	if _, err := s.Helo("c.example"); err != nil {
		t.Fatalf("session cut by SIGHUP during the drain: %v", err)
	}
	if act, err := s.Mail("a@example.org", ""); err != nil || act.StopProcessing() {
		t.Fatalf("mail during the drain: %v %v", act, err)
	}
	s.Close()
	if code := d.waitExit(); code != 0 {
		t.Fatalf("exit %d, want 0 after the drain", code)
	}
}

// banConfig bans an address at its second connection for an hour.
const banConfig = "[frequency]\nmax_connections = 1\nwindow = \"1h\"\nban = \"1h\"\n"

// banFrom makes the daemon ban client: two connections, the second refused.
func (d *daemonProc) banFrom(client string) {
	d.t.Helper()
	first, _ := d.connectFrom(client)
	second, act := d.connectFrom(client)
	if act.SMTPCode != 421 {
		d.t.Fatalf("second connection from %s: %v, want the ban", client, act)
	}
	first.Close()
	second.Close()
}

// stateBans reads a state file as the daemon would and returns the keys of
// its bans; ok is false while there is no file.
func stateBans(t *testing.T, path string) (keys []string, ok bool) {
	t.Helper()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := counters.NewMemory(counters.MemoryOptions{})
	if _, _, err := m.Load(f); err != nil {
		t.Fatalf("state file %s: %v", path, err)
	}
	bans, err := m.Bans(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bans {
		keys = append(keys, b.Key)
	}
	return keys, true
}

// state_file = "auto" is $STATE_DIRECTORY/state (systemd's StateDirectory=;
// the first directory when it lists several): written at SIGTERM, read at
// the next start. Without STATE_DIRECTORY it is no file at all.
func TestDaemonStateFileAuto(t *testing.T) {
	stateDir, second := t.TempDir(), t.TempDir()
	state := filepath.Join(stateDir, "state")
	config := banConfig + "[store]\nstate_file = \"auto\"\n"
	env := environ("STATE_DIRECTORY=" + stateDir + ":" + second)

	d := startDaemonEnv(t, config, env)
	d.banFrom("192.0.2.44")
	d.signal(syscall.SIGTERM)
	if code := d.waitExit(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	keys, ok := stateBans(t, state)
	if !ok || !slices.Contains(keys, "freq:192.0.2.44/32") {
		t.Fatalf("$STATE_DIRECTORY/state after SIGTERM: exists %v, bans %v; want the ban of 192.0.2.44", ok, keys)
	}
	if entries, _ := os.ReadDir(second); len(entries) != 0 {
		t.Fatalf("the second directory of STATE_DIRECTORY got %v; only the first is used", entries)
	}
	written, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}

	// without STATE_DIRECTORY, "auto" neither reads the file nor writes it
	d = startDaemonEnv(t, config, environ())
	s, act := d.connectFrom("192.0.2.44")
	if act.StopProcessing() {
		t.Fatalf("without STATE_DIRECTORY the saved ban was applied: %v", act)
	}
	s.Close()
	d.signal(syscall.SIGTERM)
	if code := d.waitExit(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if strings.Contains(d.logs(), "state loaded") {
		t.Fatalf("a state file was loaded without STATE_DIRECTORY:\n%s", d.logs())
	}
	if now, err := os.ReadFile(state); err != nil || !bytes.Equal(now, written) {
		t.Fatalf("a daemon without STATE_DIRECTORY changed %s: %v", state, err)
	}

	// with it again, the ban is back at start
	d = startDaemonEnv(t, config, env)
	d.waitLog(fmt.Sprintf(`msg="state loaded" state_file=%s windows=`, state))
	if !strings.Contains(d.logs(), " bans=1") {
		t.Fatalf("state loaded without the ban:\n%s", d.logs())
	}
	if _, act := d.connectFrom("192.0.2.44"); act.SMTPCode != 421 {
		t.Fatalf("after a restart with STATE_DIRECTORY: %v, want the saved ban", act)
	}
}

// Started as "go run ./cmd/sessioncap" would be, with no -config and no
// STATE_DIRECTORY (the test binary's built-in config path and admin socket
// are in a directory that does not exist, see TestMain), sessioncap writes
// no file: not in its working directory, HOME, TMPDIR or the XDG
// directories, neither while it serves nor at shutdown.
func TestDaemonNoConfigWritesNothing(t *testing.T) {
	root := t.TempDir()
	mkdir := func(name string) string {
		p := filepath.Join(root, name)
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var set []string
	for _, k := range []string{"HOME", "TMPDIR", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"} {
		set = append(set, k+"="+mkdir(k))
	}
	cmd := exec.Command(binary, "-listen", "inet:127.0.0.1:0", "-metrics-listen", "127.0.0.1:0")
	cmd.Dir = mkdir("cwd")
	cmd.Env = environ(set...)
	d := startProc(t, cmd)
	if !strings.Contains(d.logs(), ` config="" `) {
		t.Fatalf("not running on the built-in defaults:\n%s", d.logs())
	}
	d.waitLog("no admin socket: its directory does not exist")
	for i := 0; i < 3; i++ { // windows in the memory store, which a state file would hold
		s, act := d.connectFrom(fmt.Sprintf("192.0.2.%d", i+1))
		if act.StopProcessing() {
			t.Fatalf("refused: %v", act)
		}
		s.Close()
	}
	d.signal(syscall.SIGTERM)
	if code := d.waitExit(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	var written []string
	err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.IsDir() || filepath.Dir(path) != root && path != root {
			written = append(written, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(written) > 0 {
		t.Fatalf("with no config the daemon wrote %v", written)
	}
}

// The state file is also written while the daemon runs (every
// stateSaveInterval; here every 20ms), not only at shutdown: a ban is in
// the file while the daemon that made it still serves.
func TestDaemonSavesStatePeriodically(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	cfg, err := config.Parse("periodic.toml", []byte(banConfig+"[store]\nstate_file = \""+state+"\"\n[admin]\nlisten = \"\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	listen, metrics := "inet:127.0.0.1:0", ""
	opts := daemonOptions{listen: &listen, metricsListen: &metrics, stateSaveEvery: 20 * time.Millisecond}
	var logs testkit.SyncBuffer
	sigs := make(chan os.Signal, 2)
	exited, code := make(chan struct{}), 0
	go func() { code = runDaemon(context.Background(), cfg, opts, sigs, &logs); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			sigs <- syscall.SIGTERM
			sigs <- syscall.SIGTERM // the second signal: exit at once
			<-exited
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs.String())
		}
	})
	listening := regexp.MustCompile(`msg=listening milter=inet:(\S+) `)
	var addr string
	testkit.Eventually(t, "the daemon to listen", func() bool {
		if m := listening.FindStringSubmatch(logs.String()); m != nil {
			addr = m[1]
			return true
		}
		return false
	})
	d := &daemonProc{t: t, milter: addr}
	d.banFrom("192.0.2.44")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if keys, _ := stateBans(t, state); slices.Contains(keys, "freq:192.0.2.44/32") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the ban never reached %s while the daemon ran", state)
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-exited:
		t.Fatalf("the daemon exited (%d): the file must come from a save while it runs", code)
	default:
	}
	sigs <- syscall.SIGTERM
	<-exited
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
}
