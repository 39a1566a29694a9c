package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/admin"
	"github.com/sessioncap/sessioncap/counters"
)

// cliBackend is a fake daemon behind the real admin server; nil fields
// answer harmlessly. It records the calls it got.
type cliBackend struct {
	mu     sync.Mutex
	calls  []string
	bans   []counters.Ban
	reload error
	status admin.Status
}

func (b *cliBackend) record(call string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, call)
}

func (b *cliBackend) Calls() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.calls)
}

func (b *cliBackend) Bans(context.Context) ([]counters.Ban, error) {
	b.record("bans")
	return b.bans, nil
}

func (b *cliBackend) Unban(_ context.Context, target string) ([]string, error) {
	b.record("unban " + target)
	if target == "203.0.113.9" {
		return nil, nil
	}
	return []string{"freq:192.0.2.0/24", "freq:override1:192.0.2.0/24"}, nil
}

func (b *cliBackend) Ban(_ context.Context, target string, d time.Duration, reason string) (counters.Ban, error) {
	b.record("ban " + target + " " + d.String() + " " + reason)
	since := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	return counters.Ban{Key: "freq:192.0.2.0/24", Origin: counters.OriginManual, Reason: reason, Since: since, Until: since.Add(d), Host: "mx1"}, nil
}

func (b *cliBackend) Reload(context.Context) error {
	b.record("reload")
	return b.reload
}

func (b *cliBackend) Status(context.Context) (admin.Status, error) {
	b.record("status")
	return b.status, nil
}

// startAdmin serves b on a real unix socket and returns its spec.
func startAdmin(t *testing.T, b admin.Backend, spec, tokenFile string) string {
	t.Helper()
	ln, err := admin.Listen(spec, tokenFile, "")
	if err != nil {
		t.Fatal(err)
	}
	srv := admin.NewServer(ln, b, admin.Options{})
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.(*admin.Listener).Spec()
}

func adminSock(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sccli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return "unix:" + filepath.Join(dir, "admin.sock")
}

func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestCLIBans: the table lists bans soonest ending first, with the prefix
// and policy parsed from the key and the time left; -json prints the array.
func TestCLIBans(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	b := &cliBackend{bans: []counters.Ban{
		{Key: "freq:override1:2001:db8::/64", Origin: "manual", Reason: "spam run", Since: now.Add(-time.Hour), Until: now.Add(26*time.Hour + 30*time.Minute), Host: "mx2"},
		{Key: "freq:192.0.2.0/24", Origin: "frequency", Since: now.Add(-time.Minute), Until: now.Add(4*time.Minute + 30*time.Second), Host: "mx1"},
		{Key: "odd-key", Since: now, Until: now.Add(2 * time.Hour)},
	}}
	sock := startAdmin(t, b, adminSock(t), "")

	code, out, errOut := runCLI("bans", "-admin", sock)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("want a header and 3 rows:\n%s", out)
	}
	header := regexp.MustCompile(`^PREFIX +POLICY +ORIGIN +SINCE +UNTIL +REMAINING +HOST +REASON$`)
	rows := []*regexp.Regexp{
		regexp.MustCompile(`^192\.0\.2\.0/24 +default +frequency +` + regexp.QuoteMeta(now.Add(-time.Minute).Format(time.RFC3339)) + ` +` + regexp.QuoteMeta(now.Add(4*time.Minute+30*time.Second).Format(time.RFC3339)) + ` +4m(29|30)s +mx1 +-$`),
		regexp.MustCompile(`^odd-key +- +- +\S+ +\S+ +(1h59m|2h00m) +- +-$`),
		regexp.MustCompile(`^2001:db8::/64 +override1 +manual +\S+ +\S+ +1d2h +mx2 +spam run$`),
	}
	if !header.MatchString(lines[0]) {
		t.Errorf("header %q", lines[0])
	}
	for i, re := range rows {
		if !re.MatchString(lines[i+1]) {
			t.Errorf("row %d: %q does not match %s\n%s", i+1, lines[i+1], re, out)
		}
	}

	// -json prints what GET /v1/bans answers: {"now", "bans"}, the bans
	// sorted as in the table.
	code, out, _ = runCLI("bans", "-json", "-admin", sock)
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &fields); code != exitOK || err != nil {
		t.Fatalf("exit %d, %v:\n%s", code, err, out)
	}
	if len(fields) != 2 || fields["now"] == nil || fields["bans"] == nil {
		t.Errorf("-json: want exactly the keys now and bans of /v1/bans:\n%s", out)
	}
	var got admin.BansResponse
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	want := []counters.Ban{b.bans[1], b.bans[2], b.bans[0]}
	if !reflect.DeepEqual(got.Bans, want) || got.Now.IsZero() {
		t.Errorf("-json: got %+v\nwant now and %+v", got, want)
	}

	b.bans = nil
	if code, out, _ := runCLI("bans", "-admin", sock); code != exitOK || out != "no bans in force\n" {
		t.Errorf("no bans: exit %d, %q", code, out)
	}
	code, out, _ = runCLI("bans", "-admin", sock, "-json")
	if err := json.Unmarshal([]byte(out), &fields); code != exitOK || err != nil || string(fields["bans"]) != "[]" {
		t.Errorf("no bans, -json: exit %d, %q (want \"bans\": [])", code, out)
	}
}

// TestCLIUnbanAndBan: flags before or after the address; the address is
// sent canonical; what was lifted or set is printed.
func TestCLIUnbanAndBan(t *testing.T) {
	b := &cliBackend{}
	sock := startAdmin(t, b, adminSock(t), "")

	code, out, errOut := runCLI("unban", "192.0.2.7", "-admin", sock)
	if code != exitOK || out != "lifted the ban of freq:192.0.2.0/24\nlifted the ban of freq:override1:192.0.2.0/24\n" {
		t.Errorf("unban: exit %d, %q %q", code, out, errOut)
	}
	if code, out, _ := runCLI("unban", "-admin", sock, "203.0.113.9"); code != exitOK || out != "no ban in force covers 203.0.113.9\n" {
		t.Errorf("unban of nothing: exit %d, %q", code, out)
	}
	code, out, errOut = runCLI("ban", "-admin", sock, "::ffff:192.0.2.1", "-for", "6h", "-reason", "spam run")
	if code != exitOK || out != "banned freq:192.0.2.0/24 until 2026-12-01T16:00:00Z (6h), origin manual: spam run\n" {
		t.Errorf("ban: exit %d, %q %q", code, out, errOut)
	}
	if code, _, errOut := runCLI("ban", "192.0.2.0/24", "-admin="+sock, "-for=90m", "--"); code != exitOK {
		t.Errorf("ban with -flag=value: exit %d: %s", code, errOut)
	}
	// Days and weeks, as Prometheus writes them.
	if code, out, errOut := runCLI("ban", "192.0.2.9", "-for", "7d", "-admin", sock); code != exitOK || !strings.Contains(out, "(1w)") {
		t.Errorf("ban -for 7d: exit %d, %q %q", code, out, errOut)
	}
	if code, _, errOut := runCLI("ban", "192.0.2.9", "-for", "1w1d", "-admin", sock); code != exitOK {
		t.Errorf("ban -for 1w1d: exit %d: %s", code, errOut)
	}
	want := []string{"unban 192.0.2.7", "unban 203.0.113.9", "ban 192.0.2.1 6h0m0s spam run", "ban 192.0.2.0/24 1h30m0s ",
		"ban 192.0.2.9 168h0m0s ", "ban 192.0.2.9 192h0m0s "}
	if got := b.Calls(); !reflect.DeepEqual(got, want) {
		t.Errorf("backend got %q, want %q", got, want)
	}
}

// TestCLIStatusAndReload: status prints the daemon's state; a refused
// reload exits 1 with the daemon's reason.
func TestCLIStatusAndReload(t *testing.T) {
	b := &cliBackend{status: admin.Status{Version: "1.2.3", Mode: "enforce", StoreBackend: "redis", StoreUp: false,
		SessionsActive: 7, Bans: 2, Tracked: -1, ConfigPath: "/etc/sessioncap/sessioncap.toml",
		ConfigLoaded: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)}}
	sock := startAdmin(t, b, adminSock(t), "")

	code, out, _ := runCLI("status", "-admin", sock)
	want := `version   1.2.3
mode      enforce
store     redis (DOWN)
sessions  7 active
bans      2
tracked   unknown
config    /etc/sessioncap/sessioncap.toml, loaded 2026-12-01T09:00:00Z
`
	if code != exitOK || out != want {
		t.Errorf("status: exit %d:\n%s\nwant:\n%s", code, out, want)
	}
	code, out, _ = runCLI("status", "-json", "-admin", sock)
	var st admin.Status
	if err := json.Unmarshal([]byte(out), &st); code != exitOK || err != nil || st != b.status {
		t.Errorf("status -json: exit %d, %v: %s", code, err, out)
	}

	if code, out, _ := runCLI("reload", "-admin", sock); code != exitOK || out != "configuration reloaded\n" {
		t.Errorf("reload: exit %d, %q", code, out)
	}
	b.reload = errors.New(`/etc/sessioncap/sessioncap.toml:3: frequency.max_conections: unknown key`)
	code, out, errOut := runCLI("reload", "-admin", sock)
	if code != exitRuntime || out != "" || errOut != "sessioncap reload: reload failed; the running configuration is kept: /etc/sessioncap/sessioncap.toml:3: frequency.max_conections: unknown key\n" {
		t.Errorf("failed reload: exit %d, %q %q", code, out, errOut)
	}
}

// TestCLIUnreachable: no daemon is exit 1 with where it looked and what to
// check.
func TestCLIUnreachable(t *testing.T) {
	sock := adminSock(t)
	for _, cmd := range [][]string{{"bans"}, {"unban", "192.0.2.1"}, {"ban", "192.0.2.1", "-for", "1h"}, {"reload"}, {"status"}} {
		code, out, errOut := runCLI(append(cmd, "-admin", sock)...)
		if code != exitRuntime || out != "" ||
			!strings.HasPrefix(errOut, "sessioncap "+cmd[0]+": cannot reach sessioncap at "+sock+": ") ||
			!strings.HasSuffix(errOut, "(is the daemon running? is -admin right?)\n") {
			t.Errorf("%s: exit %d, %q", cmd[0], code, errOut)
		}
	}
}

// TestCLITokenOverTCP: over TCP the CLI sends the token of -token-file; a
// missing one is exit 1 with a hint.
func TestCLITokenOverTCP(t *testing.T) {
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("t0ken-for-cli\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &cliBackend{status: admin.Status{Version: "x"}}
	spec := startAdmin(t, b, "inet:127.0.0.1:0", token)
	if code, out, errOut := runCLI("status", "-admin", spec, "-token-file", token); code != exitOK || !strings.HasPrefix(out, "version   x\n") {
		t.Errorf("with the token: exit %d, %q %q", code, out, errOut)
	}
	if code, _, errOut := runCLI("reload", "-admin", spec); code != exitRuntime || !strings.Contains(errOut, "unauthorized") || !strings.Contains(errOut, "-token-file") {
		t.Errorf("without the token: exit %d, %q", code, errOut)
	}
	if got := b.Calls(); !reflect.DeepEqual(got, []string{"status"}) {
		t.Errorf("backend got %q", got)
	}
}

// TestCLIUsageErrors: bad usage exits exitConfig with a message and the
// usage, and never reaches the daemon.
func TestCLIUsageErrors(t *testing.T) {
	b := &cliBackend{}
	sock := startAdmin(t, b, adminSock(t), "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"unban"}, "want an address or a prefix"},
		{[]string{"unban", "192.0.2.1", "192.0.2.2"}, `unexpected argument "192.0.2.2"`},
		{[]string{"unban", "mx.example.com"}, `"mx.example.com" is not an address or a prefix`},
		{[]string{"unban", "192.0.2.1/24"}, "did you mean 192.0.2.0/24?"},
		{[]string{"ban", "192.0.2.1"}, "want -for DURATION"},
		{[]string{"ban", "192.0.2.1", "-for", "7x"}, `invalid value "7x" for flag -for: invalid duration "7x"`},
		{[]string{"ban", "192.0.2.1", "-for", "1.5d"}, `invalid value "1.5d" for flag -for`},
		{[]string{"ban", "192.0.2.1", "-for", "-1h"}, "want more than 0"},
		{[]string{"ban", "192.0.2.1", "-for", "9000h"}, "at most 8760h"},
		{[]string{"bans", "extra"}, `unexpected argument "extra"`},
		{[]string{"bans", "-for", "1h"}, "flag provided but not defined: -for"},
		{[]string{"reload", "now"}, `unexpected argument "now"`},
		{[]string{"status", "-admin", "tcp:127.0.0.1:1"}, `unknown socket type "tcp"`},
		{[]string{"status", "-admin", "unix:admin.sock"}, "must be absolute"},
	} {
		args := tc.args
		if !strings.Contains(strings.Join(args, " "), "-admin") {
			args = append(args, "-admin", sock)
		}
		code, out, errOut := runCLI(args...)
		// One line that says what is wrong and where the usage is, not
		// the usage itself.
		if code != exitConfig || out != "" || !strings.Contains(errOut, tc.want) || strings.Count(errOut, "\n") != 1 ||
			!strings.Contains(errOut, "-h") || strings.Contains(errOut, "Usage:") {
			t.Errorf("%q: exit %d (want %d), stdout %q, stderr %q; want one line with %q", tc.args, code, exitConfig, out, errOut, tc.want)
		}
	}
	if got := b.Calls(); len(got) != 0 {
		t.Errorf("bad usage reached the daemon: %q", got)
	}
	// Asked for, the usage goes to stdout.
	if code, out, _ := runCLI("bans", "-h"); code != exitOK || !strings.Contains(out, "sessioncap unban ADDRESS|PREFIX") {
		t.Errorf("-h: exit %d, %q", code, out)
	}
	for _, args := range [][]string{{"-no-such-flag"}, {"-config"}, {"check-config", "-bogus"}, {"surplus"}} {
		if code, out, errOut := runCLI(args...); code != exitConfig || out != "" || strings.Count(errOut, "\n") != 1 || strings.Contains(errOut, "Usage:") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit %d and one line", args, code, out, errOut, exitConfig)
		}
	}
	if code, out, _ := runCLI("help"); code != exitOK || !strings.Contains(out, "sessioncap ban ADDRESS|PREFIX -for DURATION") {
		t.Errorf("help does not list the admin commands:\n%s", out)
	}
}
