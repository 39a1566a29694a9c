package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

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
