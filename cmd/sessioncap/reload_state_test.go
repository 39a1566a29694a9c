package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/sessioncap/sessioncap/config"
	"github.com/sessioncap/sessioncap/internal/testkit"
)

// A reload that changes store.state_file says the change takes effect at
// the next restart, and it does: the running daemon keeps loading and
// saving the file it started with.
func TestReloadKeepsTheRunningStateFile(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	d := startDaemon(t, banConfig+"[store]\nstate_file = \""+a+"\"\n")
	d.banFrom("192.0.2.44")
	writeFile(t, d.config, banConfig+"[store]\nstate_file = \""+b+"\"\n[admin]\nlisten = \""+d.admin+"\"\n")
	d.signal(syscall.SIGHUP)
	d.waitLog("configuration reloaded")
	if !strings.Contains(d.logs(), `msg="setting changed; it takes effect at the next restart" key=store`) {
		t.Fatalf("the reload did not say that store changes wait for a restart:\n%s", d.logs())
	}
	d.signal(syscall.SIGTERM)
	if code := d.waitExit(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if keys, ok := stateBans(t, a); !ok || len(keys) != 1 {
		t.Fatalf("the state file the daemon started with holds %v (complete: %v), want the ban", keys, ok)
	}
	if _, err := os.Stat(b); !os.IsNotExist(err) {
		t.Fatalf("the state file of the reloaded config was written before a restart (stat: %v)", err)
	}
}

// Reloads while the state saver runs share no unguarded state (go test
// -race fails this test otherwise).
func TestReloadWhileSavingState(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	path := filepath.Join(dir, "s.toml")
	writeFile(t, path, banConfig+"[store]\nstate_file = \""+state+"\"\n[admin]\nlisten = \"\"\n")
	cfg, err := config.Load(path, true)
	if err != nil {
		t.Fatal(err)
	}
	listen, metrics := "inet:127.0.0.1:0", ""
	opts := daemonOptions{configPath: path, configRequired: true, listen: &listen, metricsListen: &metrics, stateSaveEvery: time.Millisecond}
	var logs testkit.SyncBuffer
	sigs := make(chan os.Signal, 2)
	exited, code := make(chan struct{}), -1
	go func() { code = runDaemon(context.Background(), cfg, opts, sigs, &logs); close(exited) }()
	testkit.Eventually(t, "the daemon to listen", func() bool { return strings.Contains(logs.String(), "msg=listening") })
	modTime := func() time.Time {
		fi, err := os.Stat(state)
		if err != nil {
			return time.Time{}
		}
		return fi.ModTime()
	}
	for i := 1; i <= 20; i++ {
		before := modTime()
		sigs <- syscall.SIGHUP
		testkit.Eventually(t, "the reload", func() bool { return strings.Count(logs.String(), "configuration reloaded") == i })
		testkit.Eventually(t, "a save after the reload", func() bool { return modTime().After(before) })
	}
	sigs <- syscall.SIGTERM
	<-exited
	if code != exitOK {
		t.Fatalf("exit %d:\n%s", code, logs.String())
	}
}

// session opens a milter session from client with its own macros (so that
// a test can mark recipients as rejected by the MTA) and sends HELO.
func (d *daemonProc) session(client string) (*gomilter.ClientSession, *gomilter.MacroBag) {
	d.t.Helper()
	macros := gomilter.NewMacroBag()
	s, err := gomilter.NewClient("tcp", d.milter).Session(macros)
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { s.Close() })
	if act, err := s.Conn("c.example", gomilter.FamilyInet, 1234, client); err != nil || act.StopProcessing() {
		d.t.Fatalf("connect from %s: %v %v", client, act, err)
	}
	if _, err := s.Helo("c.example"); err != nil {
		d.t.Fatal(err)
	}
	return s, macros
}

// A restart keeps the windows of every rule until they expire under their
// own rule, not only those younger than two frequency windows: here the
// frequency window is 1s (the shortest allowed), and the errors and sender-networks windows
// (1h) outlive it across the restart.
func TestDaemonRestartKeepsEveryRulesWindows(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	cfg := "[frequency]\nwindow = \"1s\"\n" +
		"[errors]\nmax_per_window = 3\nwindow = \"1h\"\nban = \"1h\"\n" +
		"[sender_networks]\nmax_networks = 1\nwindow = \"1h\"\n" +
		"[store]\nstate_file = \"" + state + "\"\n"
	d := startDaemon(t, cfg)
	s, macros := d.session("192.0.2.44")
	if act, err := s.Mail("<a@example.org>", ""); err != nil || act.StopProcessing() {
		t.Fatalf("MAIL: %v %v", act, err)
	}
	macros.Set(gomilter.MacroRcptMailer, "error")
	for range 2 { // two recipients the MTA rejected: 2 of 3 in the window
		if act, err := s.Rcpt("<nobody@example.net>", ""); err != nil || act.StopProcessing() {
			t.Fatalf("rejected RCPT: %v %v", act, err)
		}
	}
	s.Close()
	start := time.Now()
	testkit.Eventually(t, "two frequency windows to pass", func() bool { return time.Since(start) > 2500*time.Millisecond })
	d.signal(syscall.SIGTERM)
	if code := d.waitExit(); code != 0 {
		t.Fatalf("exit %d", code)
	}

	d = startDaemon(t, cfg)
	d.waitLog(`msg="state loaded"`)
	// the sender-networks window: example.org's one network is still counted
	other, _ := d.session("198.51.100.1")
	if act, err := other.Mail("<b@example.org>", ""); err != nil || act.SMTPCode != 451 {
		t.Fatalf("MAIL of example.org from a second network after the restart: %v %v, want 451", act, err)
	}
	// the errors window: two more rejected recipients cross 3
	s, macros = d.session("192.0.2.44")
	if act, err := s.Mail("<a@example.org>", ""); err != nil || act.StopProcessing() {
		t.Fatalf("MAIL after the restart: %v %v", act, err)
	}
	macros.Set(gomilter.MacroRcptMailer, "error")
	for range 2 {
		if _, err := s.Rcpt("<nobody@example.net>", ""); err != nil {
			t.Fatal(err)
		}
	}
	macros.Set(gomilter.MacroRcptMailer, "local")
	if act, err := s.Rcpt("<someone@example.net>", ""); err != nil || act.SMTPCode != 421 {
		t.Fatalf("RCPT after 4 rejected recipients in the window across a restart: %v %v, want 421", act, err)
	}
}
