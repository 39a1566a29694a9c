// Package e2e drives the real sessioncap binary behind real Postfix and
// Sendmail instances on loopback, with an SMTP client of its own that records
// when and how the server answered or hung up.
//
// The suite needs root and the MTAs installed by e2e/install-deps.sh. Without
// them it skips, unless CI is set, where a missing MTA fails the run.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
)

var (
	// workRoot holds every instance directory of this run. It is mode 0755
	// so that the postfix and nobody users can reach queues and Maildirs.
	workRoot string
	// sessioncapBin is the daemon built once by TestMain; buildErr is why
	// it could not be built.
	sessioncapBin string
	buildErr      error
	instanceSeq   atomic.Int64
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "sessioncap-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	workRoot = dir
	keep := os.Getenv("SESSIONCAP_E2E_KEEP") != ""
	defer func() {
		if keep {
			fmt.Fprintln(os.Stderr, "e2e: kept", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	sessioncapBin = filepath.Join(dir, "sessioncap")
	buildErr = buildSessioncap(sessioncapBin)
	return m.Run()
}

// buildSessioncap builds ./cmd/sessioncap from the repository root. With
// SESSIONCAP_E2E_RACE set the daemon itself runs under the race detector.
func buildSessioncap(out string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	args := []string{"build", "-o", out}
	if os.Getenv("SESSIONCAP_E2E_RACE") != "" {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/sessioncap")
	cmd := exec.Command(goBin, args...)
	cmd.Dir = ".."
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// unavailable skips the test, or fails it when CI is set: in CI the e2e
// suite must run, a missing MTA is a broken install step.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (CI is set, so this fails instead of skipping; .ci/run must call e2e/install-deps.sh)", msg)
	}
	t.Skipf("%s: run e2e/install-deps.sh as root", msg)
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		unavailable(t, "the e2e suite runs MTAs and must run as root")
	}
}

func requireSessioncap(t testing.TB) {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("cannot build sessioncap: %v", buildErr)
	}
}

// instanceDir makes a fresh directory under workRoot for one MTA or daemon.
// It is kept on failure when SESSIONCAP_E2E_KEEP is set.
func instanceDir(t testing.TB, name string) string {
	t.Helper()
	dir := filepath.Join(workRoot, fmt.Sprintf("%s-%d", name, instanceSeq.Add(1)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if os.Getenv("SESSIONCAP_E2E_KEEP") != "" {
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("removing %s: %v", dir, err)
		}
	})
	return dir
}

func writeFile(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}
