package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	gomilter "github.com/d--j/go-milter"

	"github.com/sessioncap/sessioncap/admin"
	"github.com/sessioncap/sessioncap/internal/redistest"
)

// sendAs sends one message as SASL user from a new milter session of d and
// returns the reply to MAIL FROM ("" when the message was accepted).
func (d *daemonProc) sendAs(user string) string {
	d.t.Helper()
	macros := gomilter.NewMacroBag()
	s, err := gomilter.NewClient("tcp", d.milter).Session(macros)
	if err != nil {
		d.t.Fatal(err)
	}
	defer s.Close()
	if act, err := s.Conn("c.example", gomilter.FamilyInet, 1234, "192.0.2.1"); err != nil || act.StopProcessing() {
		d.t.Fatalf("conn: %v %v", act, err)
	}
	if _, err := s.Helo("c.example"); err != nil {
		d.t.Fatal(err)
	}
	macros.Set(gomilter.MacroAuthAuthen, user)
	act, err := s.Mail(user, "")
	if err != nil {
		d.t.Fatal(err)
	}
	if act.StopProcessing() {
		return act.SMTPReply
	}
	s.Rcpt("b@example.net", "")
	s.DataStart()
	s.HeaderField("Subject", "x", nil)
	s.HeaderEnd()
	s.BodyChunk([]byte("hello\r\n"))
	if _, act, err := s.End(); err != nil || act.Type != gomilter.ActionAccept {
		d.t.Fatalf("eom: %v %v", act, err)
	}
	return ""
}

// Two daemons on one real Redis share a user's quota; "sessioncap quota
// show" on one host sees what both counted, "quota reset" on the other
// clears it for both.
func TestFleetSharesQuotaThroughRedis(t *testing.T) {
	rds := redistest.Standalone(t)
	fleetSharesQuota(t, fmt.Sprintf("[store.redis]\naddresses = [\"%s\"]\n", rds.Addr()))
}

// The same on a real Redis Cluster: the user's windows live on whatever
// slot their key hashes to.
func TestFleetSharesQuotaThroughRedisCluster(t *testing.T) {
	var seeds []string
	for _, n := range redistest.Cluster(t) {
		seeds = append(seeds, fmt.Sprintf("%q", n.Addr()))
	}
	fleetSharesQuota(t, "[store.redis]\ncluster = true\naddresses = ["+strings.Join(seeds, ", ")+"]\n")
}

func fleetSharesQuota(t *testing.T, redis string) {
	config := "[[rate]]\nname = \"user-hourly\"\nkey = \"user\"\ncount = \"messages\"\nlimit = 3\nwindow = \"1h\"\n" +
		"[store]\nbackend = \"redis\"\ntimeout = \"2s\"\n" + redis
	a, b := startDaemon(t, config), startDaemon(t, config)
	for i, d := range []*daemonProc{a, b, a} {
		if reply := d.sendAs("alice@example.com"); reply != "" {
			t.Fatalf("message %d refused: %s", i+1, reply)
		}
	}
	if reply := b.sendAs("alice@example.com"); !strings.HasPrefix(reply, "451 4.7.1 ") || !strings.Contains(reply, "user-hourly") {
		t.Fatalf("the 4th message over two hosts: %q; want 451 4.7.1 naming the quota", reply)
	}
	if reply := b.sendAs("bob@example.com"); reply != "" {
		t.Fatalf("bob: %s", reply)
	}
	out, err := exec.Command(binary, "quota", "show", "-admin", a.admin, "user", "alice@example.com").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "user-hourly") || !strings.Contains(string(out), "user alice@example.com  3    3") {
		t.Fatalf("quota show: %v\n%s", err, out)
	}
	out, err = exec.Command(binary, "quota", "reset", "-json", "-admin", b.admin, "user", "alice@example.com").Output()
	if err != nil {
		t.Fatalf("quota reset: %v\n%s", err, out)
	}
	var resp admin.QuotaResponse
	if err := json.Unmarshal(out, &resp); err != nil || !resp.Reset || len(resp.Rules) != 1 || resp.Rules[0].Use != 3 || resp.Rules[0].Limit != 3 {
		t.Fatalf("quota reset -json: %v\n%s", err, out)
	}
	if reply := a.sendAs("alice@example.com"); reply != "" {
		t.Fatalf("after the reset on the other host: %s", reply)
	}
	b.waitLog("quota reset by operator")
	if got := a.metric(`sessioncap_quota_refusals_total{key="user",mode="enforce",rule="user-hourly"}`); got != "0" {
		t.Errorf("host a counted %s quota refusals, want 0", got)
	}
	if got := b.metric(`sessioncap_quota_refusals_total{key="user",mode="enforce",rule="user-hourly"}`); got != "1" {
		t.Errorf("host b counted %s quota refusals, want 1", got)
	}
	// usage errors: flags come before the words, kinds are checked
	for _, args := range [][]string{{"quota", "show", "user"}, {"quota", "show", "login", "x"}, {"quota"}} {
		if err := exec.Command(binary, args...).Run(); exitCode(err) != exitConfig {
			t.Errorf("%v: exit %d, want %d", args, exitCode(err), exitConfig)
		}
	}
}

func TestExplainQuotas(t *testing.T) {
	path := t.TempDir() + "/explain.toml"
	writeFile(t, path, `
[[rate]]
name = "user-hourly"
key = "user"
count = "messages"
limit = 200
window = "1h"
[[rate]]
name = "domain-bytes"
key = "sender_domain"
count = "bytes"
limit = "1GB"
window = "24h"
only = "unauthenticated"
[[rate]]
name = "mailbox"
key = "recipient"
count = "messages"
limit = 300
window = "10m"
[[override]]
users = ["big@example.com"]
[[override.rate]]
name = "user-hourly"
limit = 5000
`)
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"-explain", "192.0.2.1", "-user", "big@example.com", "-sender", "Big@Example.COM"}, []string{
			`rate "user-hourly": 5000 messages per 1h0m0s by user, mode enforce (override.rate): key user big@example.com`,
			`rate "domain-bytes": 1000000000 bytes per 24h0m0s by sender_domain, mode enforce: skipped: only unauthenticated`,
			`rate "mailbox": 300 messages per 10m0s by recipient, mode enforce: counted per recipient at RCPT`,
		}},
		{[]string{"-explain", "192.0.2.1", "-sender", "a@Example.org"}, []string{
			`rate "user-hourly": 200 messages per 1h0m0s by user, mode enforce: skipped: no SASL user`,
			`rate "domain-bytes": 1000000000 bytes per 24h0m0s by sender_domain, mode enforce: key sender_domain example.org`,
		}},
	} {
		code, out, errOut := runCLI(append([]string{"check-config", "-config", path}, c.args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", c.args, code, errOut)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: no %q in:\n%s", c.args, w, out)
			}
		}
	}
}
