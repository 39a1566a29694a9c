package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const replayLog = "../../replay/testdata/postfix-monitor.log"

// TestReplayCommand: sessioncap replay reads a recorded Postfix log under a
// configuration file, from a path and from standard input, and reports the
// refusals in text, JSON and HTML; bad arguments are usage errors (78), a
// missing log a runtime error (1).
func TestReplayCommand(t *testing.T) {
	cfg := "../../replay/testdata/monitor.toml"
	var out, errb bytes.Buffer
	if code := run([]string{"replay", "-config", cfg, "-year", "2026", replayLog}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"session_recipients  monitor  35", "session.max_messages (messages per session): max seen 4, suggest 8"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, out.String())
		}
	}

	data, err := os.ReadFile(replayLog)
	if err != nil {
		t.Fatal(err)
	}
	html := filepath.Join(t.TempDir(), "report.html")
	out.Reset()
	if code := replayCommand([]string{"-config", cfg, "-year", "2026", "-json", "-html", html, "-"}, bytes.NewReader(data), &out, &errb); code != exitOK {
		t.Fatalf("stdin: exit %d: %s", code, errb.String())
	}
	var rep struct {
		Refusals []struct {
			Limit, Stage, Mode string
			ClientIP           string `json:"client_ip"`
		}
		Lines int
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("-json: %v\n%s", err, out.String())
	}
	if len(rep.Refusals) != 47 || rep.Refusals[0].ClientIP != "127.0.0.1" || rep.Refusals[0].Mode != "monitor" {
		t.Errorf("-json from stdin: %d refusals, first %+v; want 47 from 127.0.0.1 in monitor mode", len(rep.Refusals), rep.Refusals[0])
	}
	if page, err := os.ReadFile(html); err != nil || !bytes.Contains(page, []byte("<svg")) {
		t.Errorf("-html: %v, %d bytes", err, len(page))
	}

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"replay"}, exitConfig, "no LOG given"},
		{[]string{"replay", "-since", "yesterday", replayLog}, exitConfig, `-since: bad time "yesterday"`},
		{[]string{"replay", "-year", "-3", replayLog}, exitConfig, "not a year"},
		{[]string{"replay", "-config", filepath.Join(t.TempDir(), "none.toml"), replayLog}, exitConfig, "bad configuration"},
		{[]string{"replay", "-config", cfg, filepath.Join(t.TempDir(), "missing.log")}, exitRuntime, "no such file"},
	} {
		errb.Reset()
		if code := run(c.args, &out, &errb); code != c.code || !strings.Contains(errb.String(), c.want) {
			t.Errorf("%v: exit %d, %q; want %d and %q", c.args, code, errb.String(), c.code, c.want)
		}
	}
}
