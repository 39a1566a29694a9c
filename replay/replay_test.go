package replay

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/config"
	"github.com/sessioncap/sessioncap/limits"
)

// The logs in testdata were written by the real Postfix and Sendmail of
// the e2e harness (Sendmail's as the datagrams its syslog(3) sent, <PRI>
// and no host), with sessioncap in front of them under monitor.toml and
// enforce.toml; the .daemon files are the daemon's refused and banned
// lines of the same runs.

func rulesOf(t testing.TB, path string) *limits.Rules {
	t.Helper()
	cfg, err := config.Load(path, true)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Rules
}

// replayString replays text under rules, reading classic timestamps in
// year 2026, UTC.
func replayString(t testing.TB, rules *limits.Rules, text string) *Report {
	t.Helper()
	return replayInputs(t, rules, func(dir string) []string {
		p := filepath.Join(dir, "mail.log")
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return []string{p}
	})
}

func replayInputs(t testing.TB, rules *limits.Rules, files func(dir string) []string) *Report {
	t.Helper()
	r, err := New(Options{Rules: rules})
	if err != nil {
		t.Fatal(err)
	}
	ins, err := OpenInputs(files(t.TempDir()), nil, 2026, time.UTC)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range ins {
		if err := r.Read(in); err != nil {
			t.Fatal(err)
		}
		in.Close()
	}
	return r.Finish()
}

// refusals lists a report's refusals and bans by their Idents.
func refusals(rep *Report) []string { return Idents(rep.Refusals, rep.Bans) }

// daemonLines reads a daemon's refused and banned lines by their Idents.
func daemonLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fs, bs, err := ReadDaemonLog(f)
	if err != nil {
		t.Fatal(err)
	}
	return Idents(fs, bs)
}

func sameLines(t *testing.T, what string, want, got []string) {
	t.Helper()
	if strings.Join(want, "\n") != strings.Join(got, "\n") {
		t.Errorf("%s:\nwant (%d):\n  %s\ngot (%d):\n  %s", what, len(want), strings.Join(want, "\n  "), len(got), strings.Join(got, "\n  "))
	}
}

// TestRecordedLogsAgreeWithDaemon: replaying each recorded log under the
// configuration it was written with predicts the refusals and bans the
// daemon logged, in monitor mode (every session ran to its end) and in
// enforce mode (the log shows the refusals).
func TestRecordedLogsAgreeWithDaemon(t *testing.T) {
	for _, mta := range []string{"postfix", "sendmail"} {
		for _, mode := range []string{"monitor", "enforce"} {
			t.Run(mta+"-"+mode, func(t *testing.T) {
				data, err := os.ReadFile("testdata/" + mta + "-" + mode + ".log")
				if err != nil {
					t.Fatal(err)
				}
				rep := replayString(t, rulesOf(t, "testdata/"+mode+".toml"), string(data))
				want := daemonLines(t, "testdata/"+mta+"-"+mode+".daemon")
				if len(want) == 0 {
					t.Fatal("the recorded daemon refused nothing")
				}
				sameLines(t, "replayed refusals", want, refusals(rep))
				if rep.Unplaced != 0 || rep.Unparsed != 0 {
					t.Errorf("%d lines unplaced, %d unparsed in a log the MTA wrote", rep.Unplaced, rep.Unparsed)
				}
				if got := rep.Used + rep.Ignored + rep.Unplaced + rep.OutOfRange + rep.Unparsed; got != rep.Lines {
					t.Errorf("lines used+ignored+unplaced+out of range+unparsed = %d, read %d", got, rep.Lines)
				}
			})
		}
	}
}

// classicRe matches the timestamp and host of the recorded Postfix log.
var classicRe = regexp.MustCompile(`^Dec 03 (\d\d:\d\d:\d\d) mx `)

// TestEveryTimestampFormat: the same Postfix log written with classic
// syslog timestamps (space- and zero-padded days), rsyslog's RFC 3339
// timestamps, journalctl's short-iso and short-precise, and as raw
// datagrams with no host, replays to the same refusals; journalctl's
// "-- Boot" lines are counted as not syslog lines.
func TestEveryTimestampFormat(t *testing.T) {
	data, err := os.ReadFile("testdata/postfix-monitor.log")
	if err != nil {
		t.Fatal(err)
	}
	rules := rulesOf(t, "testdata/monitor.toml")
	base := refusals(replayString(t, rules, string(data)))
	formats := map[string]func(hms string, i int) string{
		"classic":       func(hms string, _ int) string { return "Dec  3 " + hms + " mx " },
		"rfc3339":       func(hms string, i int) string { return fmt.Sprintf("2026-12-03T%s.%06d+00:00 mx ", hms, i) },
		"rfc3339-zone":  func(hms string, _ int) string { return "2026-12-04T" + addHours(hms, 1) + "+01:00 mx " },
		"short-iso":     func(hms string, _ int) string { return "2026-12-03T" + hms + "+0000 mx " },
		"short-precise": func(hms string, i int) string { return fmt.Sprintf("Dec 03 %s.%06d mx ", hms, i) },
		"datagram":      func(hms string, _ int) string { return "<22>Dec  3 " + hms + " " },
	}
	for name, f := range formats {
		t.Run(name, func(t *testing.T) {
			var b strings.Builder
			b.WriteString("-- Logs begin at Thu 2026-12-03 00:00:00 UTC. --\n")
			for i, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
				m := classicRe.FindStringSubmatch(l)
				if m == nil {
					t.Fatalf("line %d has no timestamp: %q", i+1, l)
				}
				b.WriteString(f(m[1], i) + l[len(m[0]):] + "\n")
			}
			rep := replayString(t, rules, b.String())
			sameLines(t, name, base, refusals(rep))
			if rep.Unparsed != 1 {
				t.Errorf("%d lines not read as syslog lines, want 1 (the journal's header)", rep.Unparsed)
			}
		})
	}
}

// addHours adds h hours to "15:04:05" (no day change in the recorded log).
func addHours(hms string, h int) string {
	t, _ := time.Parse("15:04:05", hms)
	return t.Add(time.Duration(h) * time.Hour).Format("15:04:05")
}

// TestInstancesAndInterleavedSessions: two smtpd instances whose processes
// have the same pid (postfix/smtpd and postfix/submission/smtpd) and a
// second Postfix instance (postfix-out) with its own queue, their lines
// interleaved, are three sessions: the SASL user's quota counts only the
// submission session's messages, and each message finds its own queue
// manager line.
func TestInstancesAndInterleavedSessions(t *testing.T) {
	const log = `Dec  3 10:00:00 mx postfix/smtpd[100]: connect from a.example[192.0.2.1]
Dec  3 10:00:00 mx postfix/submission/smtpd[100]: connect from b.example[198.51.100.7]
Dec  3 10:00:00 mx postfix-out/smtpd[100]: connect from c.example[203.0.113.9]
Dec  3 10:00:01 mx postfix/submission/smtpd[100]: 1A: client=b.example[198.51.100.7], sasl_method=PLAIN, sasl_username=alice
Dec  3 10:00:01 mx postfix/smtpd[100]: 2A: client=a.example[192.0.2.1]
Dec  3 10:00:01 mx postfix-out/smtpd[100]: 1A: client=c.example[203.0.113.9]
Dec  3 10:00:01 mx postfix/qmgr[50]: 2A: from=<x@a.example>, size=1000, nrcpt=1 (queue active)
Dec  3 10:00:01 mx postfix/qmgr[50]: 1A: from=<alice@b.example>, size=2000, nrcpt=2 (queue active)
Dec  3 10:00:01 mx postfix-out/qmgr[51]: 1A: from=<z@c.example>, size=3000, nrcpt=3 (queue active)
Dec  3 10:00:02 mx postfix/submission/smtpd[100]: 1B: client=b.example[198.51.100.7], sasl_method=PLAIN, sasl_username=alice
Dec  3 10:00:02 mx postfix/smtpd[100]: 2B: client=a.example[192.0.2.1]
Dec  3 10:00:02 mx postfix/qmgr[50]: 1B: from=<alice@b.example>, size=2000, nrcpt=2 (queue active)
Dec  3 10:00:02 mx postfix/qmgr[50]: 2B: from=<x@a.example>, size=1000, nrcpt=1 (queue active)
Dec  3 10:00:03 mx postfix/submission/smtpd[100]: 1C: client=b.example[198.51.100.7], sasl_method=PLAIN, sasl_username=alice
Dec  3 10:00:03 mx postfix/qmgr[50]: 1C: from=<alice@b.example>, size=2000, nrcpt=2 (queue active)
Dec  3 10:00:04 mx postfix/submission/smtpd[100]: disconnect from b.example[198.51.100.7] ehlo=1 auth=1 mail=3 rcpt=6 data=3 quit=1 commands=15
Dec  3 10:00:04 mx postfix/smtpd[100]: disconnect from a.example[192.0.2.1] ehlo=1 mail=2 rcpt=2 data=2 quit=1 commands=8
Dec  3 10:00:04 mx postfix-out/smtpd[100]: disconnect from c.example[203.0.113.9] ehlo=1 mail=1 rcpt=3 data=1 quit=1 commands=6
`
	rules := limits.DefaultRules()
	rules.Quotas = []limits.Quota{{Name: "user-hourly", Key: limits.QuotaUser, Count: limits.CountMessages, Limit: 2, Window: time.Hour}}
	rep := replayString(t, rules, log)
	sameLines(t, "refusals", []string{"quota mail 198.51.100.7 enforce user-hourly"}, refusals(rep))
	if rep.Sessions != 3 || rep.Messages != 6 {
		t.Errorf("%d sessions and %d transactions, want 3 and 6", rep.Sessions, rep.Messages)
	}
	if rep.Refusals[0].KeyValue != "alice" {
		t.Errorf("refused key %q, want alice", rep.Refusals[0].KeyValue)
	}
	q := quantity(t, rep, "recipients per session")
	if q.Max != 6 || q.Count != 3 { // alice's third message was refused at MAIL, but her client sent it
		t.Errorf("recipients per session: max %d over %d sessions, want 6 over 3", q.Max, q.Count)
	}
	if q := quantity(t, rep, "bytes per session"); q.Max != 6000 {
		t.Errorf("bytes per session max %d, want 6000 (alice's three messages)", q.Max)
	}
	if rep.OpenPeak != 3 {
		t.Errorf("open sessions peak %d, want 3", rep.OpenPeak)
	}
}

func quantity(t *testing.T, rep *Report, prefix string) *Quantity {
	t.Helper()
	for _, q := range rep.Quantities {
		if strings.HasPrefix(q.Name, prefix) {
			return q
		}
	}
	t.Fatalf("no quantity %q", prefix)
	return nil
}

// TestRotatedFilesInAnyOrder: a log split into a gzipped oldest part and
// two plain parts, given newest first, replays as the whole log does.
func TestRotatedFilesInAnyOrder(t *testing.T) {
	data, err := os.ReadFile("testdata/postfix-enforce.log")
	if err != nil {
		t.Fatal(err)
	}
	rules := rulesOf(t, "testdata/enforce.toml")
	whole := replayString(t, rules, string(data))
	lines := strings.SplitAfter(string(data), "\n")
	third := len(lines) / 3
	rep := replayInputs(t, rules, func(dir string) []string {
		var zb bytes.Buffer
		zw := gzip.NewWriter(&zb)
		zw.Write([]byte(strings.Join(lines[:third], "")))
		zw.Close()
		files := map[string][]byte{
			"mail.log.2.gz": zb.Bytes(),
			"mail.log.1":    []byte(strings.Join(lines[third:2*third], "")),
			"mail.log":      []byte(strings.Join(lines[2*third:], "")),
		}
		var names []string
		for _, n := range []string{"mail.log", "mail.log.2.gz", "mail.log.1"} {
			p := filepath.Join(dir, n)
			if err := os.WriteFile(p, files[n], 0o644); err != nil {
				t.Fatal(err)
			}
			names = append(names, p)
		}
		return names
	})
	sameLines(t, "rotated", refusals(whole), refusals(rep))
	if rep.Lines != whole.Lines || rep.Sessions != whole.Sessions {
		t.Errorf("rotated: %d lines and %d sessions, whole: %d and %d", rep.Lines, rep.Sessions, whole.Lines, whole.Sessions)
	}
}

// TestHostileLinesAreCounted: garbage, binary, truncated and overlong lines
// between the recorded ones change no refusal; each is counted.
func TestHostileLinesAreCounted(t *testing.T) {
	data, err := os.ReadFile("testdata/postfix-monitor.log")
	if err != nil {
		t.Fatal(err)
	}
	rules := rulesOf(t, "testdata/monitor.toml")
	base := replayString(t, rules, string(data))
	junk := []string{
		"\x00\x01\x02\xff\xfe garbage",
		"Dec 03 23:17:5",                              // cut in the timestamp
		"Dec 03 23:17:54 mx",                          // cut before the tag
		"Dec 03 23:17:54 mx postfix/smtpd[",           // cut in the tag
		"Dec 33 23:17:54 mx postfix/smtpd[1]: x",      // no such day
		"2026-13-03T23:17:54Z mx postfix/smtpd[1]: x", // no such month
		strings.Repeat("Dec 03 23:17:54 mx x", 1<<13), // 160 KiB, over the line limit
		"Dec 03 23:17:54 mx postfix/qmgr[1]: ZZZ: from=<a@b>, size=x, nrcpt=1 (queue active)",   // bad size
		"Dec 03 23:17:54 mx postfix/smtpd[9]: NOQUEUE: reject: RCPT from x[192.0.2.1]: 450 cut", // no from=/to=
	}
	wantUnparsed, wantUnplaced := 7, 2
	var b strings.Builder
	for i, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		b.WriteString(l + "\n")
		if i%10 == 0 && i/10 < len(junk) {
			b.WriteString(junk[i/10] + "\n")
		}
	}
	if len(strings.Split(strings.TrimSpace(string(data)), "\n")) < 10*len(junk) {
		t.Fatal("the recorded log is too short for this test")
	}
	rep := replayString(t, rules, b.String())
	sameLines(t, "with junk", refusals(base), refusals(rep))
	if rep.Unparsed != int64(wantUnparsed) || rep.Unplaced != int64(wantUnplaced) {
		t.Errorf("unparsed %d, unplaced %d; want %d and %d", rep.Unparsed, rep.Unplaced, wantUnparsed, wantUnplaced)
	}
}

// TestSinceUntil: lines outside the range are counted and not replayed.
func TestSinceUntil(t *testing.T) {
	data, err := os.ReadFile("testdata/postfix-monitor.log")
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Options{Rules: rulesOf(t, "testdata/monitor.toml"), Since: time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	ins, err := OpenInputs([]string{"-"}, bytes.NewReader(data), 2026, time.UTC)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Read(ins[0]); err != nil {
		t.Fatal(err)
	}
	rep := r.Finish()
	if rep.OutOfRange != rep.Lines || rep.Lines == 0 || len(rep.Refusals) != 0 {
		t.Errorf("since after the log: %d of %d lines out of range, %d refusals", rep.OutOfRange, rep.Lines, len(rep.Refusals))
	}
}

// TestClassicYear: classic timestamps take the year that puts them at or
// before the file's time (December's lines in a file written in January
// are last year's), or -year's, which rolls over at New Year.
func TestClassicYear(t *testing.T) {
	c := clock{Loc: time.UTC, Ref: time.Date(2027, 1, 2, 0, 0, 0, 0, time.UTC)}
	l, ok := c.parseLine("Dec 31 23:59:59 mx postfix/smtpd[1]: connect from x[192.0.2.1]")
	if !ok || l.Time.Year() != 2026 {
		t.Errorf("December line in a January file: %v %v, want 2026", l.Time, ok)
	}
	if l, _ := c.parseLine("Jan  1 00:00:01 mx postfix/smtpd[1]: x"); l.Time.Year() != 2027 {
		t.Errorf("January line in a January file: %v, want 2027", l.Time)
	}
	y := clock{Loc: time.UTC, Year: 2026}
	y.parseLine("Dec 31 23:59:59 mx postfix/smtpd[1]: x")
	if l, _ := y.parseLine("Jan  1 00:00:01 mx postfix/smtpd[1]: x"); l.Time.Year() != 2027 {
		t.Errorf("-year 2026 after December 31: %v, want 2027", l.Time)
	}
}

// TestSuggestion: the suggestion is twice the largest value seen, rounded
// up to a power of two, and says so.
func TestSuggestion(t *testing.T) {
	var h hist
	for v := int64(1); v <= 31; v++ {
		h.add(v)
	}
	q := &Quantity{Of: "sessions", Unit: "messages", Cap: 20}
	q.fill(&h)
	if q.Max != 31 || q.Suggest != 64 || !strings.HasPrefix(q.Reason, "max seen 31, suggest 64") {
		t.Errorf("max %d suggest %d reason %q", q.Max, q.Suggest, q.Reason)
	}
	if q.AboveCap != 11 {
		t.Errorf("above cap 20: %d, want 11", q.AboveCap)
	}
	if q.P50 != 16 || q.P90 != 28 || q.P99 != 31 {
		t.Errorf("p50 %d p90 %d p99 %d, want 16 28 31", q.P50, q.P90, q.P99)
	}
}

// TestHistBounds: a percentile read from the histogram is never below the
// true one and at most 1/32 above it, at every scale.
func TestHistBounds(t *testing.T) {
	for _, scale := range []int64{1, 7, 1000, 1 << 20, 1 << 40} {
		var h hist
		var vals []int64
		for i := int64(1); i <= 1000; i++ {
			v := i * scale
			h.add(v)
			vals = append(vals, v)
		}
		for _, q := range []float64{0.5, 0.9, 0.99, 1} {
			exact := vals[int(q*1000+0.5)-1]
			got := h.quantile(q)
			if got < exact || float64(got-exact) > float64(exact)/32+1 {
				t.Errorf("scale %d q%.2f: %d, exact %d", scale, q, got, exact)
			}
		}
	}
}

// FuzzReplay: any input is read without a panic, and every line read is
// accounted for.
func FuzzReplay(f *testing.F) {
	for _, name := range []string{"testdata/postfix-monitor.log", "testdata/sendmail-enforce.log"} {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data[:min(len(data), 4096)])
	}
	f.Add([]byte("Dec  3 10:00:00 mx postfix/smtpd[1]: connect from x[::1]\n"))
	f.Add([]byte("Dec  3 10:00:00 mx postfix/smtpd[1]: connect from x[::1]\nDec  3 10:00:00 mx postfix/smtpd[1]: Q: client=x[::1]\n" +
		"Dec  3 10:00:00 mx postfix/qmgr[2]: Q: from=<a@b>, size=1, nrcpt=999999999999 (queue active)\n"))
	rules := limits.DefaultRules()
	rules.Quotas = []limits.Quota{{Name: "r", Key: limits.QuotaRecipient, Count: limits.CountMessages, Limit: 1, Window: time.Minute}}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := New(Options{Rules: rules})
		if err != nil {
			t.Fatal(err)
		}
		ins, err := OpenInputs([]string{"-"}, bytes.NewReader(data), 2026, time.UTC)
		if err != nil {
			return // not gzip after a gzip magic
		}
		_ = r.Read(ins[0])
		rep := r.Finish()
		if rep.Used+rep.Ignored+rep.Unplaced+rep.OutOfRange+rep.Unparsed != rep.Lines {
			t.Errorf("lines: %+v", rep)
		}
		var b bytes.Buffer
		if err := rep.WriteText(&b); err != nil {
			t.Fatal(err)
		}
		if err := rep.WriteHTML(&b, "x"); err != nil {
			t.Fatal(err)
		}
	})
}

// TestFormatFixtures: the hand-kept fixtures of one Postfix log in each
// timestamp format (classic syslog, rsyslog's RFC 3339, journalctl's
// short-iso and short-precise with their header lines) replay to the same
// refusals: the second and third messages to ann over her mailbox quota
// (at RCPT; bob is counted under his original address); the second, its
// only recipient refused, never reached DATA, so the third is only the
// session's second message (max_messages = 2 lets it through); nothing for
// the authenticated IPv6 session or the connection lost after CONNECT.
func TestFormatFixtures(t *testing.T) {
	rules := limits.DefaultRules()
	rules.Default.Session.MaxMessages = 2
	rules.Quotas = []limits.Quota{{Name: "mailbox", Key: limits.QuotaRecipient, Count: limits.CountMessages, Limit: 1, Window: time.Hour}}
	want := []string{
		"quota rcpt 192.0.2.25 enforce mailbox",
		"quota rcpt 192.0.2.25 enforce mailbox",
	}
	for _, name := range []string{"classic", "rsyslog-rfc3339", "journal-short-iso", "journal-short-precise"} {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile("testdata/formats/" + name + ".log")
			if err != nil {
				t.Fatal(err)
			}
			rep := replayString(t, rules, string(data))
			sameLines(t, name, want, refusals(rep))
			if rep.Sessions != 3 || rep.Messages != 4 || rep.Unplaced != 0 {
				t.Errorf("%d sessions, %d transactions, %d unplaced; want 3, 4, 0", rep.Sessions, rep.Messages, rep.Unplaced)
			}
			wantUnparsed := int64(0)
			if strings.HasPrefix(name, "journal") {
				wantUnparsed = 1 // the journal's header line
			}
			if rep.Unparsed != wantUnparsed {
				t.Errorf("%d lines not syslog lines, want %d", rep.Unparsed, wantUnparsed)
			}
			for _, f := range rep.Refusals {
				if f.Limit == "quota" && f.KeyValue != "ann@mx.example" {
					t.Errorf("quota refused %q, want ann@mx.example", f.KeyValue)
				}
			}
			if q := quantity(t, rep, "messages per recipient"); q.Max != 3 || q.Count != 3 {
				t.Errorf("messages per recipient: max %d over %d recipients, want 3 (ann) over 3 (ann, robert, carol; not the rejected gone@)", q.Max, q.Count)
			}
		})
	}
}

// TestMailCommandsWithoutLines: MAIL commands that left no line (MAIL then
// RSET, MAIL then QUIT) are decided from the count at disconnect, as the
// milter decided them: in monitor mode over max_messages = 1, the two MAILs
// after the one message are refused (logged); a MAIL the milter refused
// (its own line) is not counted again.
func TestMailCommandsWithoutLines(t *testing.T) {
	const log = `Dec  3 10:00:00 mx postfix/smtpd[1]: connect from a.example[192.0.2.1]
Dec  3 10:00:01 mx postfix/smtpd[1]: 1A: client=a.example[192.0.2.1]
Dec  3 10:00:01 mx postfix/qmgr[5]: 1A: from=<x@a.example>, size=1000, nrcpt=1 (queue active)
Dec  3 10:00:02 mx postfix/smtpd[1]: disconnect from a.example[192.0.2.1] ehlo=1 mail=3 rcpt=1 data=1 rset=2 quit=1 commands=9
Dec  3 10:00:03 mx postfix/smtpd[1]: connect from b.example[192.0.2.2]
Dec  3 10:00:04 mx postfix/smtpd[1]: 1B: client=b.example[192.0.2.2]
Dec  3 10:00:04 mx postfix/qmgr[5]: 1B: from=<y@b.example>, size=1000, nrcpt=1 (queue active)
Dec  3 10:00:05 mx postfix/smtpd[1]: NOQUEUE: milter-reject: MAIL from b.example[192.0.2.2]: 421 4.7.0 Too many messages; from=<y@b.example> proto=ESMTP helo=<b.example>
Dec  3 10:00:05 mx postfix/smtpd[1]: disconnect from b.example[192.0.2.2] ehlo=1 mail=1/2 rcpt=1 data=1 commands=4/5
`
	rules := limits.DefaultRules()
	rules.Mode = limits.ModeMonitor
	rules.Default.Session.MaxMessages = 1
	rep := replayString(t, rules, log)
	sameLines(t, "refusals", []string{
		"session_messages mail 192.0.2.1 monitor ",
		"session_messages mail 192.0.2.1 monitor ",
		"session_messages mail 192.0.2.2 monitor ",
	}, refusals(rep))
	if rep.Messages != 5 {
		t.Errorf("%d transactions, want 5", rep.Messages)
	}
}
