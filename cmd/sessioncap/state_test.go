package main

import (
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"

	gomilter "github.com/d--j/go-milter"
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
