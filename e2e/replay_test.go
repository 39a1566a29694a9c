package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/replay"
)

// replayConfig crosses every kind of rule the mixed load below reaches:
// session caps, the frequency rule and its ban, the deny list, the errors
// rule (Postfix), sender networks and two quotas.
const replayConfig = `
[session]
max_messages = 3
max_recipients = 5
[frequency]
max_connections = 4
window = "1h"
ban = "1h"
[deny]
networks = ["127.0.9.1/32"]
[errors]
max_per_session = 2
[sender_networks]
max_networks = 2
window = "1h"
ipv4_prefix = 32
[[rate]]
name = "domain-hourly"
key = "sender_domain"
count = "messages"
limit = 5
window = "1h"
[[rate]]
name = "mailbox"
key = "recipient"
count = "messages"
limit = 3
window = "1h"
`

// TestReplayAgreesWithDaemon: real Postfix and Sendmail with sessioncap in
// monitor mode, then in enforce mode, under a mixed load from several
// client addresses that crosses the session caps, the frequency rule and
// its ban, the deny list, sender networks and two quotas; then "sessioncap
// replay" of the MTA's own log with the daemon's own configuration file
// predicts exactly the refusals (limit, stage, client, mode) the daemon
// logged, and the bans.
func TestReplayAgreesWithDaemon(t *testing.T) {
	for _, mode := range []string{"monitor", "enforce"} {
		t.Run(mode, func(t *testing.T) {
			forEachMTA(t, func(t *testing.T, kind string) {
				e := newErrorsEnv(t, kind, "mode = \""+mode+"\"\n"+replayConfig)
				replayLoad(t, e)
				e.delivered(t)
				want := expectReplayAgrees(t, e)
				// the load reached every rule it was written for
				limitsSeen := map[string]bool{}
				for _, w := range want {
					limitsSeen[strings.Fields(w)[0]] = true
				}
				rules := []string{"frequency", "banned", "deny", "session_messages", "session_recipients", "sender_networks", "quota"}
				if kind == "postfix" {
					rules = append(rules, "errors")
				}
				for _, l := range rules {
					if !limitsSeen[l] {
						t.Errorf("the daemon logged no %s refusal: the load does not test the replay of that rule", l)
					}
				}
			})
		})
	}
}

// expectReplayAgrees replays the MTA's log with the daemon's own
// configuration file and checks that it predicts exactly the refusals and
// bans the daemon logged; it returns them.
func expectReplayAgrees(t *testing.T, e *env) []string {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "mail.log")
	var want, got []string
	var report string
	// The daemon logs a refusal after it answered, and the MTA logs
	// deliveries after the Maildir has them: poll for the two to agree,
	// and show the difference if they never do.
	err := waitFor(15*time.Second, func() error {
		writeFile(t, logPath, mtaSyslog(e.m), 0o644)
		want = daemonRefusals(t, e.d.p.output())
		got, report = replayRefusals(t, e.d.configPath, logPath)
		if strings.Join(want, "\n") != strings.Join(got, "\n") {
			return errNotYet
		}
		return nil
	})
	if err != nil {
		t.Errorf("replay of the %s log does not predict the daemon's refusals:\n%s", e.kind, lineDiff(want, got))
		logTail(t, "replay report", report, 16<<10)
		logTail(t, "the log replayed", readFileString(logPath), 64<<10)
	}
	return want
}

// replayLoad sends the mixed load. A session the server hangs up on, or
// refuses at connect, ends there, as a real client's would.
func replayLoad(t *testing.T, e *env) {
	t.Helper()
	session := func(from, name string, msgs ...message) {
		c := dialSMTPFrom(t, e.kind+" "+name, e.m.smtpAddr(), from)
		if c.greeting.code != 220 {
			return
		}
		if r := c.ehlo("client.test"); r.code != 250 {
			return
		}
		for _, m := range msgs {
			res := c.send(m)
			if res.accepted {
				for _, r := range res.rcpts {
					if r.code == 250 || r.code == 251 {
						e.want[messageIDOf(m.data)]++
					}
				}
			}
			if c.closed {
				return
			}
		}
		c.quit()
	}
	n := 0
	msg := func(from string, rcpts ...string) message {
		n++
		data, _ := newMessage(fmt.Sprintf("replay-%d", n), 1500)
		return message{from: from, rcpts: rcpts, data: data}
	}
	at := func(local string) string { return local + "@" + sinkDomain }
	// frequency: the fifth connection within the hour is refused and bans, the sixth is banned
	for i := 1; i <= 6; i++ {
		session("127.0.1.1", fmt.Sprintf("freq-%d", i), msg("a@one.test", at("one")))
	}
	// session caps: the fourth MAIL and the sixth recipient
	session("127.0.2.1", "caps",
		msg("b@two.test", at("r1"), at("r2")), msg("b@two.test", at("r3"), at("r4")),
		msg("b@two.test", at("r5"), at("r6")), msg("b@two.test", at("r7"), at("r8")))
	// the sender domain's quota (5 per hour) and its networks (2 per hour)
	for i, from := range []string{"127.0.3.1", "127.0.3.2", "127.0.3.3"} {
		session(from, fmt.Sprintf("flood-%d", i+1),
			msg("x@flood.test", at("f1")), msg("y@flood.test", at("f2")))
	}
	// the mailbox quota: the fourth message to hot@ within the hour
	session("127.0.4.1", "hot-1", msg("h@hot.test", at("hot")), msg("h@hot.test", at("hot"), at("cold")))
	session("127.0.4.2", "hot-2", msg("h@hot.test", at("hot")), msg("h@hot.test", at("hot"), at("cold")))
	// the deny list
	session("127.0.9.1", "denied", msg("d@deny.test", at("d")))
	// the errors rule: recipients Postfix rejects itself (Debian's Sendmail
	// does not pass them to milters, see sendmailPassesRejections)
	if e.kind == "postfix" {
		session("127.0.5.1", "errors", msg("e@err.test", at(rejectedUser), at(rejectedUser), at(rejectedUser), at("ok")))
	}
}

var messageIDRe = regexp.MustCompile(`(?mi)^Message-ID:\s*<([^>]+)>`)

func messageIDOf(data []byte) string {
	if m := messageIDRe.FindSubmatch(data); m != nil {
		return "<" + string(m[1]) + ">"
	}
	return ""
}

// mtaSyslog is the MTA's syslog lines as a mail log has them: Postfix's
// maillog_file as is; for Sendmail the datagrams its syslog(3) sent to the
// harness's /dev/log, without the harness's clock in front.
func mtaSyslog(m mta) string {
	if m.mtaName() != "sendmail" {
		return m.log()
	}
	var b strings.Builder
	for _, l := range strings.Split(m.log(), "\n") {
		if _, rest, ok := strings.Cut(l, " "); ok && strings.HasPrefix(rest, "<") {
			b.WriteString(rest + "\n")
		}
	}
	return b.String()
}

// daemonRefusals reads the daemon's refused and banned lines by their
// keys ("limit stage client_ip mode rule", "ban client_ip prefix mode").
func daemonRefusals(t *testing.T, out string) []string {
	fs, bs, err := replay.ReadDaemonLog(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	return replay.Idents(fs, bs)
}

// replayRefusals runs sessioncap replay -json and returns the keys of its
// refusals and bans, and its text report.
func replayRefusals(t *testing.T, configPath, logPath string) ([]string, string) {
	t.Helper()
	out, err := exec.Command(sessioncapBin, "replay", "-json", "-config", configPath, logPath).Output()
	if err != nil {
		t.Fatalf("sessioncap replay: %v\n%s", err, stderrOf(err))
	}
	var rep replay.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("sessioncap replay -json: %v", err)
	}
	text, _ := exec.Command(sessioncapBin, "replay", "-config", configPath, logPath).CombinedOutput()
	return replay.Idents(rep.Refusals, rep.Bans), string(text)
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// lineDiff shows the entries only one side has.
func lineDiff(want, got []string) string {
	count := map[string]int{}
	for _, w := range want {
		count[w]++
	}
	for _, g := range got {
		count[g]--
	}
	var b strings.Builder
	keys := make([]string, 0, len(count))
	for k := range count {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch n := count[k]; {
		case n > 0:
			fmt.Fprintf(&b, "  logged by the daemon, not predicted (%d): %s\n", n, k)
		case n < 0:
			fmt.Fprintf(&b, "  predicted, not logged by the daemon (%d): %s\n", -n, k)
		}
	}
	fmt.Fprintf(&b, "  (%d logged, %d predicted)", len(want), len(got))
	return b.String()
}
