package main

import (
	"path/filepath"
	"regexp"
	"testing"
)

// TestDaemonSaysWhereItsStateIs: at start the daemon logs where its state
// file is, or that it has none and that bans are then lost on restart:
// state_file = "auto" without STATE_DIRECTORY (sessioncap run by hand) must
// not silently mean no state.
func TestDaemonSaysWhereItsStateIs(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, config string
		env          []string
		want         string
	}{
		{"auto without STATE_DIRECTORY", `state_file = "auto"`, environ(),
			`level=WARN msg="no state file: bans and windows are lost on restart" state_file=auto reason="STATE_DIRECTORY is not set \(systemd's StateDirectory= sets it\); set store.state_file to a path to keep them"`},
		{"off", `state_file = ""`, environ("STATE_DIRECTORY=" + dir),
			`level=INFO msg="no state file: bans and windows are lost on restart" state_file="" reason="store.state_file is off"`},
		{"auto under systemd", `state_file = "auto"`, environ("STATE_DIRECTORY=" + dir),
			`level=INFO msg="no state file yet; it is written at shutdown and every minute" state_file=` + regexp.QuoteMeta(filepath.Join(dir, "state"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startDaemonEnv(t, "[store]\n"+tc.config+"\n", tc.env)
			if !regexp.MustCompile(tc.want).MatchString(d.logs()) {
				t.Errorf("start log lacks %s:\n%s", tc.want, d.logs())
			}
		})
	}
}
