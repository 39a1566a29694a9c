package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// sendmailRoot is where install-deps.sh extracts sendmail-bin, sendmail-cf
// and sendmail-base (they conflict with the installed Postfix).
func sendmailRoot() string {
	if r := os.Getenv("SESSIONCAP_SENDMAIL_ROOT"); r != "" {
		return r
	}
	return "/opt/sessioncap-e2e/sendmail"
}

func sendmailBinary() string { return filepath.Join(sendmailRoot(), "usr/libexec/sendmail/sendmail") }

func requireSendmail(t testing.TB) {
	t.Helper()
	requireRoot(t)
	if _, err := os.Stat(sendmailBinary()); err != nil {
		unavailable(t, "Sendmail is not extracted (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(sendmailRoot(), "usr/share/sendmail/cf/m4/cf.m4")); err != nil {
		unavailable(t, "sendmail-cf is not extracted (%v)", err)
	}
	for _, tool := range []string{"m4", "unshare", "mount", "hostname"} {
		if _, err := exec.LookPath(tool); err != nil {
			unavailable(t, "%s is not installed", tool)
		}
	}
}

// sendmailInstance is one private Sendmail daemon (sendmail -bD) in its own
// UTS and mount namespace: hostname mx.test, and a private /dev whose
// /dev/log is a socket the test reads, so its syslog lines land in maillog.
type sendmailInstance struct {
	dir     string
	port    int
	maildir string
	logPath string
	daemon  *proc
	syslog  *syslogSink
	sasl    bool // AUTH PLAIN and LOGIN are offered (startSendmailWith)
}

func (s *sendmailInstance) mtaName() string  { return "sendmail" }
func (s *sendmailInstance) smtpAddr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }
func (s *sendmailInstance) mailDir() string  { return s.maildir }

// log is the syslog output followed by the SMTP traffic log (-X).
func (s *sendmailInstance) log() string {
	return readFileString(s.logPath) + "---- traffic.log (-X) ----\n" +
		readFileString(filepath.Join(s.dir, "traffic.log"))
}

// startSendmail generates a .cf with m4 and runs the daemon in the
// foreground. milterPort 0 runs it without the milter.
// The SMTP port is picked free; if another process binds it first, the
// instance is started again on another port (startOnFreePort).
func startSendmail(t testing.TB, name string, milterPort int) *sendmailInstance {
	t.Helper()
	return startSendmailWith(t, name, milterPort, nil)
}

// startSendmailWith is startSendmail offering AUTH PLAIN and LOGIN to
// saslUsers (user@realm → password) when it is not nil: Cyrus SASL with a
// sasldb of the instance's own, seen by Sendmail at the system's SASL
// plugin directory through a bind mount in its private mount namespace
// (the host's directories are not touched).
func startSendmailWith(t testing.TB, name string, milterPort int, saslUsers map[string]string) *sendmailInstance {
	t.Helper()
	requireSendmail(t)
	return startOnFreePort(t, "sendmail "+name, func(port int) (*sendmailInstance, error) {
		return tryStartSendmail(t, name, milterPort, port, saslUsers)
	})
}

// saslPluginDir is where libsasl2 looks for its plugins and, among other
// places, for Sendmail.conf.
func saslPluginDir(t testing.TB) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/*/sasl2")
	for _, d := range append(dirs, "/usr/lib/sasl2") {
		if m, _ := filepath.Glob(filepath.Join(d, "libplain.so*")); len(m) > 0 {
			if s, _ := filepath.Glob(filepath.Join(d, "libsasldb.so*")); len(s) > 0 {
				return d
			}
		}
	}
	unavailable(t, "Cyrus SASL's PLAIN and sasldb plugins are not installed (libsasl2-modules, libsasl2-modules-db: e2e/install-deps.sh)")
	return ""
}

// setupSASL writes dir/sasl2: the system's SASL plugins, a Sendmail.conf
// that authenticates against the sasldb beside it, and that sasldb with
// users. It returns the system directory to mount it over.
func setupSASL(t testing.TB, dir string, users map[string]string) string {
	t.Helper()
	sys := saslPluginDir(t)
	if _, err := exec.LookPath("saslpasswd2"); err != nil {
		unavailable(t, "saslpasswd2 is not installed (sasl2-bin: e2e/install-deps.sh)")
	}
	own := filepath.Join(dir, "sasl2")
	if err := os.Mkdir(own, 0o755); err != nil {
		t.Fatal(err)
	}
	plugins, _ := filepath.Glob(filepath.Join(sys, "*.so*"))
	for _, p := range plugins {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(own, filepath.Base(p)), string(data), 0o644)
	}
	// As Sendmail sees it, the sasldb is in the mounted directory.
	writeFile(t, filepath.Join(own, "Sendmail.conf"), "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: "+filepath.Join(sys, "sasldb2")+"\n", 0o644)
	db := filepath.Join(own, "sasldb2")
	for user, password := range users {
		name, realm, _ := strings.Cut(user, "@")
		cmd := exec.Command("saslpasswd2", "-f", db, "-c", "-p", "-u", realm, name)
		cmd.Stdin = strings.NewReader(password)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("saslpasswd2 %s: %v\n%s", user, err, out)
		}
	}
	if err := os.Chmod(db, 0o600); err != nil {
		t.Fatal(err)
	}
	return sys
}

func tryStartSendmail(t testing.TB, name string, milterPort, port int, saslUsers map[string]string) (*sendmailInstance, error) {
	t.Helper()
	dir := instanceDir(t, "sendmail-"+name)
	s := &sendmailInstance{
		dir:     dir,
		port:    port,
		maildir: filepath.Join(dir, "mail", "sink"),
		logPath: filepath.Join(dir, "maillog"),
		sasl:    saslUsers != nil,
	}
	saslMount := ""
	if saslUsers != nil {
		saslMount = "mount --bind " + dir + "/sasl2 " + setupSASL(t, dir, saslUsers)
	}
	if err := os.Mkdir(filepath.Join(dir, "queue"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"mail", "mail/sink", "mail/sink/tmp", "mail/sink/new", "mail/sink/cur", "dev"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(d, "mail") {
			if err := os.Chown(filepath.Join(dir, d), 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}
	}
	writeFile(t, filepath.Join(dir, "deliver"), `#!/bin/sh
# The sink mailer: store the message from stdin in the Maildir.
set -e
n=$(date +%s.%N).$$.$1
cat > `+s.maildir+`/tmp/$n
mv `+s.maildir+`/tmp/$n `+s.maildir+`/new/$n
`, 0o755)
	writeFile(t, filepath.Join(dir, "service.switch"), "hosts files\naliases files\n", 0o644)
	writeFile(t, filepath.Join(dir, "aliases"), "", 0o644)
	writeFile(t, filepath.Join(dir, "statistics"), "", 0o600)
	writeFile(t, filepath.Join(dir, "sendmail.mc"), s.mc(milterPort), 0o644)
	cf, err := exec.Command("m4", filepath.Join(dir, "sendmail.mc")).CombinedOutput()
	if err != nil {
		t.Fatalf("m4 sendmail.mc: %v\n%s", err, cf)
	}
	writeFile(t, filepath.Join(dir, "sendmail.cf"), string(cf), 0o644)

	sink, err := newSyslogSink(filepath.Join(dir, "log.sock"), s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	s.syslog = sink
	t.Cleanup(func() { s.shutdown(t) })

	script := strings.Join([]string{
		"set -e",
		// A private /dev holding only what Sendmail needs, and /dev/log.
		"mount -t tmpfs -o mode=755 e2edev " + dir + "/dev",
		"for n in null zero full random urandom; do : > " + dir + "/dev/$n; mount --bind /dev/$n " + dir + "/dev/$n; done",
		"ln -s " + dir + "/log.sock " + dir + "/dev/log",
		"ln -s /proc/self/fd " + dir + "/dev/fd",
		"mount --bind " + dir + "/dev /dev",
		saslMount,
		// An unqualified hostname stalls every sendmail call for 60s.
		"hostname mx.test",
		"cd " + dir,
		"exec " + sendmailBinary() + " -C " + dir + "/sendmail.cf -bD -X " + dir + "/traffic.log",
	}, "\n")
	s.daemon = startProc(t, "sendmail", filepath.Join(dir, "output"), nil, "unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script)
	if err := waitGreeting(s.smtpAddr(), s.daemon, 20*time.Second, s.banner()); err != nil {
		log := s.log()
		s.shutdown(t)
		if portTakenIn(log) {
			err = fmt.Errorf("%w: %v", errPortTaken, err)
		}
		return nil, fmt.Errorf("%w\noutput: %s\nlog:\n%s", err, s.daemon.output(), log)
	}
	return s, nil
}

// banner is the instance's own text in its SMTP greeting, telling it apart
// from any other server on the port.
func (s *sendmailInstance) banner() string {
	return fmt.Sprintf("e2e-%d-%s", os.Getpid(), filepath.Base(s.dir))
}

// queueEmpty reports whether the queue directory holds no file: Sendmail
// writes every accepted message there before its 250 and removes it once
// delivered (or bounced), so an empty queue means the Maildir can change no
// more.
func (s *sendmailInstance) queueEmpty() (bool, string) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "queue"))
	if err != nil {
		return false, err.Error()
	}
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if len(left) == 0 {
		return true, ""
	}
	return false, "queue files: " + strings.Join(left, " ")
}

func (s *sendmailInstance) stop(t testing.TB) { s.shutdown(t) }

func (s *sendmailInstance) mc(milterPort int) string {
	d := s.dir
	cfDir := filepath.Join(sendmailRoot(), "usr/share/sendmail/cf")
	var b strings.Builder
	fmt.Fprintf(&b, "divert(-1)\ndivert(0)dnl\n")
	fmt.Fprintf(&b, "include(`%s/m4/cf.m4')dnl\n", cfDir)
	fmt.Fprintf(&b, "VERSIONID(`sessioncap e2e')dnl\n")
	fmt.Fprintf(&b, "OSTYPE(`linux')dnl\n")
	defs := [][2]string{
		{"confDOMAIN_NAME", "mx.test"},
		{"QUEUE_DIR", d + "/queue"},
		{"confPID_FILE", d + "/sendmail.pid"},
		{"ALIAS_FILE", d + "/aliases"},
		{"STATUS_FILE", d + "/statistics"},
		{"confSERVICE_SWITCH_FILE", d + "/service.switch"},
		{"confHOSTS_FILE", "/etc/hosts"},
		{"confHELP_FILE", d + "/helpfile"},
		{"confDEF_USER_ID", "65534:65534"},
		{"confLOG_LEVEL", "14"},
		{"confMILTER_LOG_LEVEL", "14"},
		{"confMAX_MESSAGE_SIZE", "20480000"},
		{"confTO_IDENT", "0"},
		{"confBIND_OPTS", "-DNSRCH -DEFNAMES"},
		{"confREFUSE_LA", "200"},
		{"confQUEUE_LA", "200"},
		{"confDELAY_LA", "0"},
		{"confCONNECTION_RATE_THROTTLE", "0"},
		{"confMAX_DAEMON_CHILDREN", "0"},
		{"confDONT_PROBE_INTERFACES", "True"},
		{"confSMTP_LOGIN_MSG", "$j Sendmail $v/$Z; $b; " + s.banner()},
		{"confMILTER_MACROS_CONNECT", "j, _, {daemon_name}, {if_name}, {if_addr}, {client_addr}, {client_port}"},
		{"confMILTER_MACROS_HELO", "{tls_version}, {cipher}, {cipher_bits}, {cert_subject}, {cert_issuer}"},
		{"confMILTER_MACROS_ENVFROM", "i, {auth_type}, {auth_authen}, {auth_ssf}, {auth_author}, {mail_mailer}, {mail_host}, {mail_addr}, {client_addr}"},
		{"confMILTER_MACROS_ENVRCPT", "i, {rcpt_mailer}, {rcpt_host}, {rcpt_addr}"},
		{"confMILTER_MACROS_EOM", "i, {msg_id}, {msg_size}"},
	}
	for _, kv := range defs {
		fmt.Fprintf(&b, "define(`%s', `%s')dnl\n", kv[0], kv[1])
	}
	if s.sasl {
		fmt.Fprintf(&b, "define(`confAUTH_MECHANISMS', `PLAIN LOGIN')dnl\nTRUST_AUTH_MECH(`PLAIN LOGIN')dnl\n")
	}
	fmt.Fprintf(&b, "FEATURE(`no_default_msa')dnl\n")
	fmt.Fprintf(&b, "FEATURE(`nocanonify')dnl\n")
	fmt.Fprintf(&b, "FEATURE(`accept_unresolvable_domains')dnl\n")
	fmt.Fprintf(&b, "FEATURE(`accept_unqualified_senders')dnl\n")
	fmt.Fprintf(&b, "RELAY_DOMAIN(`%s')dnl\n", sinkDomain)
	fmt.Fprintf(&b, "DAEMON_OPTIONS(`Port=%d, Addr=127.0.0.1, Name=MTA')dnl\n", s.port)
	if milterPort != 0 {
		fmt.Fprintf(&b, "INPUT_MAIL_FILTER(`sessioncap', `S=inet:%d@127.0.0.1, F=T, T=C:10s;S:10s;R:10s;E:30s')dnl\n", milterPort)
	}
	fmt.Fprintf(&b, "MAILER(`local')dnl\nMAILER(`smtp')dnl\n")
	// The sink mailer delivers every recipient in sink.test to the
	// Maildir, as nobody (numeric: a user name silently drops the mailer).
	fmt.Fprintf(&b, "MAILER_DEFINITIONS\n")
	fmt.Fprintf(&b, "Msink, P=%s/deliver, F=lsDFMn, S=EnvFromL, R=EnvToL, U=65534:65534, A=deliver $u\n", d)
	fmt.Fprintf(&b, "LOCAL_RULE_0\n")
	fmt.Fprintf(&b, "R$+ < @ %s . >\t$#sink $: $1\n", sinkDomain)
	fmt.Fprintf(&b, "R$+ < @ %s >\t$#sink $: $1\n", sinkDomain)
	// One recipient the MTA rejects itself, for the errors rule: in
	// check_rcpt, whose rejections Sendmail passes to a milter that asked
	// for them (SMFIP_RCPT_REJ); a ruleset 0 error is not passed.
	fmt.Fprintf(&b, "LOCAL_RULESETS\nSLocal_check_rcpt\n")
	fmt.Fprintf(&b, "R$* %s @ %s $*\t$#error $@ 5.1.1 $: \"550 No such user here\"\n", rejectedUser, sinkDomain)
	return b.String()
}

func (s *sendmailInstance) shutdown(t testing.TB) {
	if s.daemon != nil {
		s.daemon.stop(t, 5*time.Second)
	}
	// Sendmail renames its processes; what is left of it is found by the
	// files it holds open in the instance dir.
	killMatching(t, "sendmail", func(pi procInfo) bool {
		return strings.Contains(pi.cmdline, s.dir+"/") || holdsFileUnder(pi.pid, s.dir+"/")
	})
	if s.syslog != nil {
		s.syslog.close()
	}
	if t.Failed() {
		logTail(t, "sendmail log", s.log(), 64<<10)
	}
}

// holdsFileUnder reports whether pid has its cwd or an open file under dir.
func holdsFileUnder(pid int, dir string) bool {
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil && strings.HasPrefix(cwd+"/", dir) {
		return true
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return false
	}
	for _, fd := range fds {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && strings.HasPrefix(target, dir) {
			return true
		}
	}
	return false
}

// syslogSink is a /dev/log stand-in: a unixgram socket whose datagrams are
// appended, one per line, to a file.
type syslogSink struct {
	conn *net.UnixConn
	wg   sync.WaitGroup
}

func newSyslogSink(sock, logPath string) (*syslogSink, error) {
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		conn.Close()
		return nil, err
	}
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		conn.Close()
		return nil, err
	}
	s := &syslogSink{conn: conn}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer f.Close()
		buf := make([]byte, 64<<10)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			line := strings.TrimRight(string(buf[:n]), "\x00\n")
			fmt.Fprintf(f, "%s %s\n", time.Now().Format("15:04:05.000"), line)
		}
	}()
	return s, nil
}

func (s *syslogSink) close() {
	s.conn.Close()
	s.wg.Wait()
}
