package packaging

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// unitSetting returns every value of key in the [section] of a systemd unit
// file, in order (a unit may repeat a key).
func unitSetting(t *testing.T, path, section, key string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var vals []string
	cur := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			cur = line[1 : len(line)-1]
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if ok && cur == section && strings.TrimSpace(k) == key {
			vals = append(vals, strings.TrimSpace(v))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return vals
}

// TestUnitDoesNotRestartOnConfigError: the status the real binary exits with
// on a bad configuration is exactly the unit's RestartPreventExitStatus, and
// it is not 2, the Go runtime's exit status on a panic (a crash must be
// restarted).
func TestUnitDoesNotRestartOnConfigError(t *testing.T) {
	vals := unitSetting(t, "sessioncap.service", "Service", "RestartPreventExitStatus")
	if len(vals) != 1 {
		t.Fatalf("RestartPreventExitStatus in [Service]: %q, want exactly one", vals)
	}
	fields := strings.Fields(vals[0])
	if len(fields) != 1 {
		t.Fatalf("RestartPreventExitStatus=%s, want the single config-error status", vals[0])
	}
	unitCode, err := strconv.Atoi(fields[0])
	if err != nil {
		t.Fatalf("RestartPreventExitStatus=%s: %v", vals[0], err)
	}
	if unitCode == 2 {
		t.Fatal("RestartPreventExitStatus=2 would keep a panicked daemon down (the Go runtime exits 2 on a panic)")
	}
	if r := unitSetting(t, "sessioncap.service", "Service", "Restart"); len(r) != 1 || r[0] != "on-failure" {
		t.Errorf("Restart=%q, want on-failure", r)
	}

	if testing.Short() {
		t.Skip("builds the daemon; drop -short")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the daemon with")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "sessioncap")
	if out, err := exec.Command(gobin, "build", "-o", bin, "github.com/sessioncap/sessioncap/cmd/sessioncap").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[session]\nmax_messages = \"many\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"-config", bad, "-listen", "inet:127.0.0.1:0", "-metrics-listen", ""},
		{"check-config", "-config", bad},
	} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("sessioncap %s: %v, want a non-zero exit\n%s", strings.Join(args, " "), err, out)
		}
		if got := ee.ExitCode(); got != unitCode {
			t.Errorf("sessioncap %s exited %d; the unit's RestartPreventExitStatus is %d\n%s", strings.Join(args, " "), got, unitCode, out)
		}
	}
}
