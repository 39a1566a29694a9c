package main

import (
	"bufio"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	postfixCmd = "/usr/sbin/postfix"
	// sinkDomain is the recipients' domain; every message is discarded.
	sinkDomain = "sink.test"
)

// postfix is one private Postfix instance: its own config dir, queue and
// log, listening on 127.0.0.1:port, delivering everything with discard(8).
type postfix struct {
	dir, conf, logPath string
	port               int
}

// startPostfix writes the instance's configuration (main.cf lines in extra
// come last), builds its queue with "postfix check" and starts its master.
func startPostfix(dir string, extra []string) (*postfix, error) {
	p := &postfix{dir: dir, conf: filepath.Join(dir, "etc"), logPath: filepath.Join(dir, "maillog")}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p.port = port
	pf, err := user.Lookup("postfix")
	if err != nil {
		return nil, err
	}
	uid, _ := strconv.Atoi(pf.Uid)
	gid, _ := strconv.Atoi(pf.Gid)
	for _, d := range []string{"etc", "queue", "data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.Chown(filepath.Join(dir, "data"), uid, gid); err != nil {
		return nil, err
	}
	main := []string{
		"compatibility_level = 3.6",
		"queue_directory = " + dir + "/queue",
		"data_directory = " + dir + "/data",
		"maillog_file = " + p.logPath,
		"maillog_file_prefixes = " + dir,
		"mail_owner = postfix",
		"setgid_group = postdrop",
		"myhostname = mx.bench.test",
		"mydestination =",
		"inet_interfaces = 127.0.0.1",
		"inet_protocols = ipv4",
		"mynetworks = 127.0.0.0/8",
		"smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
		"smtpd_error_sleep_time = 0",
		"alias_maps =",
		"alias_database =",
		"biff = no",
		"smtputf8_enable = no",
		"message_size_limit = 20480000",
		"smtpd_peername_lookup = no",
		"smtp_dns_support_level = disabled",
		// Every message is accepted into the queue and delivered by
		// discard(8): Postfix's whole path but the disk of a mailbox.
		"default_transport = discard:benchmark",
	}
	main = append(main, extra...)
	if err := os.WriteFile(filepath.Join(p.conf, "main.cf"), []byte(strings.Join(main, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(p.conf, "master.cf"), []byte(masterCF(port)), 0o644); err != nil {
		return nil, err
	}
	if out, err := p.postfix("check"); err != nil {
		return nil, fmt.Errorf("postfix -c %s check: %v %s\n%s", p.conf, err, out, readTail(p.logPath))
	}
	if out, err := p.postfix("start"); err != nil {
		return nil, fmt.Errorf("postfix -c %s start: %v %s\n%s", p.conf, err, out, readTail(p.logPath))
	}
	if err := waitPort(port, 15*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("postfix -c %s: %v\n%s", p.conf, err, readTail(p.logPath))
	}
	return p, nil
}

func (p *postfix) postfix(args ...string) (string, error) {
	b, err := exec.Command(postfixCmd, append([]string{"-c", p.conf}, args...)...).CombinedOutput()
	return string(b), err
}

func (p *postfix) masterPID() int { return readPID(filepath.Join(p.dir, "queue", "pid", "master.pid")) }

func (p *postfix) stop() {
	p.postfix("stop")
	deadline := time.Now().Add(10 * time.Second)
	for p.masterPID() > 0 && processAlive(p.masterPID()) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
}

// queued counts the messages in the instance's queue.
func (p *postfix) queued() int {
	n := 0
	for _, q := range []string{"maildrop", "incoming", "active", "deferred", "hold"} {
		filepath.WalkDir(filepath.Join(p.dir, "queue", q), func(_ string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				n++
			}
			return nil
		})
	}
	return n
}

// logSize is the length of the maillog, to read what a run appended.
func (p *postfix) logSize() int64 {
	st, err := os.Stat(p.logPath)
	if err != nil {
		return 0
	}
	return st.Size()
}

// countLog counts the lines appended to the maillog since offset that
// contain each of the given strings.
func (p *postfix) countLog(offset int64, subs ...string) []int {
	counts := make([]int, len(subs))
	f, err := os.Open(p.logPath)
	if err != nil {
		return counts
	}
	defer f.Close()
	f.Seek(offset, 0)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		for i, s := range subs {
			if strings.Contains(sc.Text(), s) {
				counts[i]++
			}
		}
	}
	return counts
}

// masterCF is Debian's master.cf without chroot, with smtpd on port.
func masterCF(port int) string {
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
`, port)
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitPort polls until something accepts on 127.0.0.1:port.
func waitPort(port int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on 127.0.0.1:%d after %v: %v", port, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func processAlive(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

func readTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
