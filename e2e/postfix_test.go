package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	postfixCmd    = "/usr/sbin/postfix"
	postfixDaemon = "/usr/lib/postfix/sbin"
	// sinkDomain is the domain the receiving MTAs deliver to their Maildir.
	sinkDomain = "sink.test"
)

func requirePostfix(t testing.TB) {
	t.Helper()
	requireRoot(t)
	if _, err := os.Stat(postfixCmd); err != nil {
		unavailable(t, "Postfix is not installed (%v)", err)
	}
	if _, err := user.Lookup("postfix"); err != nil {
		unavailable(t, "no postfix user (%v)", err)
	}
}

// postfixConfig is what differs between the private Postfix instances.
type postfixConfig struct {
	// milter is an smtpd_milters value such as inet:127.0.0.1:10029;
	// empty runs without milter.
	milter string
	// relayhost makes the instance a sending relay; empty makes it a
	// receiving MX that delivers sink.test to its Maildir.
	relayhost string
	// main holds further main.cf lines, applied last.
	main []string
}

// postfixInstance is one private Postfix: its own config dir, queue, log
// and Maildir, listening on 127.0.0.1:port.
type postfixInstance struct {
	name    string
	dir     string // instance root: etc, queue, data, mail, maillog
	conf    string // the config dir, dir/etc
	port    int
	maildir string // the Maildir sink.test is delivered to
	logPath string
	master  *proc
}

func (p *postfixInstance) mtaName() string  { return "postfix" }
func (p *postfixInstance) smtpAddr() string { return fmt.Sprintf("127.0.0.1:%d", p.port) }
func (p *postfixInstance) mailDir() string  { return p.maildir }
func (p *postfixInstance) log() string      { return readFileString(p.logPath) }

// startPostfix creates a config dir, checks it (which builds the queue) and
// runs the master in the foreground. It is stopped, and its log shown if
// the test failed, by t.Cleanup.
// The SMTP port is picked free; if another process binds it first, the
// instance is started again on another port (startOnFreePort).
func startPostfix(t testing.TB, name string, cfg postfixConfig) *postfixInstance {
	t.Helper()
	requirePostfix(t)
	return startOnFreePort(t, "postfix "+name, func(port int) (*postfixInstance, error) {
		return tryStartPostfix(t, name, cfg, port)
	})
}

func tryStartPostfix(t testing.TB, name string, cfg postfixConfig, port int) (*postfixInstance, error) {
	t.Helper()
	dir := instanceDir(t, name)
	p := &postfixInstance{
		name:    name,
		dir:     dir,
		conf:    filepath.Join(dir, "etc"),
		port:    port,
		maildir: filepath.Join(dir, "mail", "sink"),
		logPath: filepath.Join(dir, "maillog"),
	}
	pf, err := user.Lookup("postfix")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(pf.Uid)
	gid, _ := strconv.Atoi(pf.Gid)
	for _, d := range []string{"etc", "queue", "data", "mail"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(dir, "data"), uid, gid); err != nil {
		t.Fatal(err)
	}
	// virtual(8) delivers as nobody and creates the Maildir itself.
	if err := os.Chown(filepath.Join(dir, "mail"), 65534, 65534); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(p.conf, "main.cf"), p.mainCF(cfg), 0o644)
	writeFile(t, filepath.Join(p.conf, "master.cf"), p.masterCF(), 0o644)

	if out, err := p.postfix("check"); err != nil {
		t.Fatalf("postfix -c %s check: %v\n%s\nmaillog:\n%s", p.conf, err, out, p.log())
	}
	p.master = startProc(t, "postfix master "+name, filepath.Join(dir, "output"), nil, postfixCmd, "-c", p.conf, "start-fg")
	// Registered after startProc's cleanup, so it runs before it: the
	// master runs in a process group of its own and is stopped by
	// "postfix stop", not by signalling the start-fg wrapper.
	t.Cleanup(func() { p.shutdown(t) })
	if err := waitGreeting(p.smtpAddr(), p.master, 15*time.Second, p.banner()); err != nil {
		log := p.log()
		p.shutdown(t)
		if portTakenIn(log) {
			err = fmt.Errorf("%w: %v", errPortTaken, err)
		}
		return nil, fmt.Errorf("%w\noutput: %s\nmaillog:\n%s", err, p.master.output(), log)
	}
	return p, nil
}

// banner is the instance's own text in its SMTP greeting, telling it apart
// from any other server on the port.
func (p *postfixInstance) banner() string {
	return fmt.Sprintf("e2e-%d-%s", os.Getpid(), filepath.Base(p.dir))
}

func (p *postfixInstance) postfix(args ...string) (string, error) {
	cmd := exec.Command(postfixCmd, append([]string{"-c", p.conf}, args...)...)
	b, err := cmd.CombinedOutput()
	return string(b), err
}

func (p *postfixInstance) mainCF(cfg postfixConfig) string {
	d := p.dir
	lines := []string{
		"compatibility_level = 3.6",
		"queue_directory = " + d + "/queue",
		"data_directory = " + d + "/data",
		"maillog_file = " + p.logPath,
		"maillog_file_prefixes = " + d,
		"mail_owner = postfix",
		"setgid_group = postdrop",
		"myhostname = " + p.name + ".test",
		"mydomain = test",
		"myorigin = $myhostname",
		"mydestination =",
		"inet_interfaces = 127.0.0.1",
		"inet_protocols = ipv4",
		"mynetworks = 127.0.0.0/8",
		"smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
		"smtpd_banner = $myhostname ESMTP " + p.banner(),
		"smtpd_error_sleep_time = 0",
		"alias_maps =",
		"alias_database =",
		"biff = no",
		"append_dot_mydomain = no",
		"smtputf8_enable = no",
		"message_size_limit = 20480000",
		// Loopback only: never look anything up.
		"smtp_dns_support_level = disabled",
		"smtp_host_lookup = native",
		"smtpd_peername_lookup = no",
	}
	if cfg.relayhost != "" {
		lines = append(lines, "relayhost = "+cfg.relayhost)
	} else {
		lines = append(lines,
			"virtual_mailbox_domains = "+sinkDomain,
			"virtual_mailbox_base = "+d+"/mail",
			"virtual_mailbox_maps = static:sink/",
			"virtual_uid_maps = static:65534",
			"virtual_gid_maps = static:65534",
			"virtual_minimum_uid = 1",
		)
	}
	if cfg.milter != "" {
		lines = append(lines,
			"smtpd_milters = "+cfg.milter,
			"milter_default_action = tempfail",
			"milter_connect_timeout = 10s",
			"milter_command_timeout = 10s",
		)
	}
	lines = append(lines, cfg.main...)
	return strings.Join(lines, "\n") + "\n"
}

// masterCF is Debian's master.cf without chroot, with smtpd on our port.
func (p *postfixInstance) masterCF() string {
	return fmt.Sprintf(`127.0.0.1:%d inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`, p.port)
}

// shutdown stops the instance with "postfix stop", then kills by pid
// whatever is left: the master's process group and every process whose
// environment names this config dir (Postfix passes MAIL_CONFIG to its
// children). On failure it logs the maillog.
func (p *postfixInstance) shutdown(t testing.TB) {
	if p.master != nil && !p.master.exited() {
		if out, err := p.postfix("stop"); err != nil {
			t.Logf("postfix -c %s stop: %v %s", p.conf, err, out)
		}
		select {
		case <-p.master.done:
		case <-time.After(10 * time.Second):
			t.Logf("postfix %s: master still running 10s after postfix stop", p.name)
		}
		p.master.stop(t, 2*time.Second)
	}
	marker := "MAIL_CONFIG=" + p.conf + "\x00"
	killMatching(t, "postfix "+p.name, func(pi procInfo) bool {
		return strings.Contains(pi.environ, marker) || strings.Contains(pi.cmdline, " "+p.conf+" ")
	})
	if t.Failed() {
		logTail(t, "postfix "+p.name+" maillog", p.log(), 64<<10)
	}
}

func readFileString(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	return string(b)
}

// logTail logs the last max bytes of a log.
func logTail(t testing.TB, what, s string, max int) {
	if len(s) > max {
		s = "…" + s[len(s)-max:]
	}
	t.Logf("==== %s ====\n%s==== end of %s ====", what, s, what)
}

// queueEmpty reports whether nothing is left in the instance's queue
// (maildrop, incoming, active, deferred, hold): every message it accepted is
// delivered, bounced or refused, so the Maildir can change no more. The
// string says what is left.
func (p *postfixInstance) queueEmpty() (bool, string) {
	out, err := exec.Command("postqueue", "-c", p.conf, "-p").CombinedOutput()
	if err != nil {
		return false, fmt.Sprintf("postqueue -c %s -p: %v %s", p.conf, err, out)
	}
	if strings.Contains(string(out), "Mail queue is empty") {
		return true, ""
	}
	return false, string(out)
}

func (p *postfixInstance) stop(t testing.TB) { p.shutdown(t) }
