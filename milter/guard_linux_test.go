//go:build linux

package milter_test

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// TestAcceptSurvivesEMFILE runs itself again as a child process with a low
// RLIMIT_NOFILE: the child starts a server, uses up its file descriptors so
// that accept fails with EMFILE, frees them, and runs an ordinary session.
// The parent checks the child's exit status and report.
func TestAcceptSurvivesEMFILE(t *testing.T) {
	if os.Getenv("SESSIONCAP_EMFILE_CHILD") == "1" {
		emfileChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestAcceptSurvivesEMFILE$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "SESSIONCAP_EMFILE_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	for _, want := range []string{"emfile-child: accept failed with EMFILE", "emfile-child: ordinary session ok", "--- PASS: TestAcceptSurvivesEMFILE"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("child output lacks %q:\n%s", want, out)
		}
	}
}

func emfileChild(t *testing.T) {
	h := start(t, limits.DefaultRules())
	open, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	low := old
	low.Cur = uint64(len(open) + 16)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old)

	var fillers []*os.File
	defer func() {
		for _, f := range fillers {
			f.Close()
		}
	}()
	for {
		f, err := os.Open(os.DevNull)
		if errors.Is(err, syscall.EMFILE) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		fillers = append(fillers, f)
	}
	// Free one descriptor for the client's socket: the connection completes
	// in the kernel and waits in the backlog, and the server's accept has
	// no descriptor left for it.
	fillers[len(fillers)-1].Close()
	fillers = fillers[:len(fillers)-1]
	c, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial with one descriptor left: %v", err)
	}
	// The counter moves before the log line is written: wait for both.
	eventually(t, "accept to fail, counted and logged", func() bool {
		logs := h.logs.String()
		return value(t, h.reg, "sessioncap_milter_accept_errors_total") >= 1 &&
			strings.Contains(logs, "too many open files") && strings.Contains(logs, `"msg":"accept failed; retrying"`)
	})
	t.Logf("emfile-child: accept failed with EMFILE (%v times)", value(t, h.reg, "sessioncap_milter_accept_errors_total"))
	for _, f := range fillers {
		f.Close()
	}
	fillers = nil
	c.Close()
	h.ordinarySession(t, "192.0.2.50")
	t.Log("emfile-child: ordinary session ok")
}
