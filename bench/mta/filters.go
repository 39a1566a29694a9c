package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// startProc starts a filter process in a process group of its own, its
// output in dir/name.log, and waits until it accepts on port.
func startProc(dir, name string, port int, path string, args ...string) (int, func(), error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return 0, nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return 0, nil, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	if err := waitPort(port, 15*time.Second); err != nil {
		stop()
		b, _ := os.ReadFile(filepath.Join(dir, name+".log"))
		return 0, nil, fmt.Errorf("%s: %v\n%s", name, err, b)
	}
	return cmd.Process.Pid, stop, nil
}

func milterCF(port int) []string {
	return []string{
		fmt.Sprintf("smtpd_milters = inet:127.0.0.1:%d", port),
		"milter_default_action = tempfail",
	}
}

// policyCF makes Postfix ask the policy server at RCPT and, with eom, after
// the end of each message.
func policyCF(port int, eom bool) []string {
	svc := fmt.Sprintf("check_policy_service inet:127.0.0.1:%d", port)
	cf := []string{"smtpd_recipient_restrictions = " + svc}
	if eom {
		cf = append(cf, "smtpd_end_of_data_restrictions = "+svc)
	}
	return cf
}

func startNoopMilter(b *bench, dir string) ([]string, int, func(), error) {
	port, err := freePort()
	if err != nil {
		return nil, 0, nil, err
	}
	pid, stop, err := startProc(dir, "noop-milter", port, b.self, "serve", "noop-milter", fmt.Sprintf("127.0.0.1:%d", port))
	return milterCF(port), pid, stop, err
}

func startMinimalPolicy(b *bench, dir string) ([]string, int, func(), error) {
	port, err := freePort()
	if err != nil {
		return nil, 0, nil, err
	}
	pid, stop, err := startProc(dir, "minimal-policy", port, b.self, "serve", "minimal-policy", fmt.Sprintf("127.0.0.1:%d", port))
	return policyCF(port, true), pid, stop, err
}

// sessioncapConfig is the daemon's configuration in the benchmark: the
// defaults, but the frequency rule must never ban the benchmark's single
// client address (every connection is still counted); no metrics listener,
// state file or system admin socket.
func sessioncapConfig(dir string, milterPort int, extra string) string {
	return fmt.Sprintf(`listen = "inet:127.0.0.1:%d"
[metrics]
listen = ""
[log]
level = "warn"
[admin]
listen = "unix:%s/admin.sock"
[store]
state_file = ""
[frequency]
max_connections = 1000000000
`, milterPort, dir) + extra
}

// startSessioncap checks the configuration with "sessioncap check-config"
// (a refusal skips the variant) and starts the daemon.
func startSessioncap(b *bench, dir, conf string, waitPortNo int) (int, func(), error) {
	path := filepath.Join(dir, "sessioncap.toml")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return 0, nil, err
	}
	if out, err := exec.Command(b.sessioncap, "check-config", "-config", path).CombinedOutput(); err != nil {
		return 0, nil, fmt.Errorf("%w: sessioncap refuses its configuration (%v): %s", errSkip, err, strings.TrimSpace(string(out)))
	}
	return startProc(dir, "sessioncap", waitPortNo, b.sessioncap, "-config", path)
}

func sessioncapMilter(extra string) func(*bench, string) ([]string, int, func(), error) {
	return func(b *bench, dir string) ([]string, int, func(), error) {
		port, err := freePort()
		if err != nil {
			return nil, 0, nil, err
		}
		pid, stop, err := startSessioncap(b, dir, sessioncapConfig(dir, port, extra), port)
		return milterCF(port), pid, stop, err
	}
}

// startSessioncapPolicy runs the daemon with its policy front-end
// ([policy] listen); Postfix uses only that, not the milter.
func startSessioncapPolicy(b *bench, dir string) ([]string, int, func(), error) {
	mport, err := freePort()
	if err != nil {
		return nil, 0, nil, err
	}
	pport, err := freePort()
	if err != nil {
		return nil, 0, nil, err
	}
	conf := sessioncapConfig(dir, mport, fmt.Sprintf("[policy]\nlisten = \"inet:127.0.0.1:%d\"\n", pport))
	pid, stop, err := startSessioncap(b, dir, conf, pport)
	return policyCF(pport, true), pid, stop, err
}

// startPostfwd runs postfwd2 (Debian package postfwd) with one rate rule
// like sessioncap's frequency rule, never reached: at most 10^9 requests
// per client address a minute, counted at RCPT. It daemonizes; its pid
// file names the root of its processes.
func startPostfwd(b *bench, dir string) ([]string, int, func(), error) {
	const bin = "/usr/sbin/postfwd2"
	if _, err := os.Stat(bin); err != nil {
		return nil, 0, nil, fmt.Errorf("%w: %v (apt-get install postfwd)", errSkip, err)
	}
	port, err := freePort()
	if err != nil {
		return nil, 0, nil, err
	}
	pdir := filepath.Join(dir, "postfwd")
	if err := os.Mkdir(pdir, 0o777); err != nil {
		return nil, 0, nil, err
	}
	os.Chmod(pdir, 0o777) // postfwd2 runs as nobody and makes its cache socket here
	rules := filepath.Join(pdir, "rules.cf")
	rule := "id=RATE01; protocol_state==RCPT; action=rate(client_address/1000000000/60/421 4.7.0 too many connections from $$client_address)\n"
	if err := os.WriteFile(rules, []byte(rule), 0o644); err != nil {
		return nil, 0, nil, err
	}
	pidfile := filepath.Join(pdir, "postfwd2.pid")
	out, err := exec.Command(bin, "--file", rules, "--interface", "127.0.0.1", "--port", fmt.Sprint(port),
		"--cache_port", filepath.Join(pdir, "cache.sock"), "--pidfile", pidfile,
		"-u", "nobody", "-g", "nogroup", "--nodns", "--perfmon").CombinedOutput()
	if err != nil {
		return nil, 0, nil, fmt.Errorf("postfwd2: %v %s", err, out)
	}
	stop := func() {
		if pid := readPID(pidfile); pid > 0 {
			syscall.Kill(-pid, syscall.SIGTERM) // the process group it made for itself
		}
	}
	if err := waitPort(port, 15*time.Second); err != nil {
		stop()
		return nil, 0, nil, fmt.Errorf("postfwd2: %v %s", err, out)
	}
	return policyCF(port, false), readPID(pidfile), stop, nil
}
