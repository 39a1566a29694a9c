package main

import (
	"bufio"
	"fmt"
	"net"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// policyMessagesUntilRefused runs one SMTP session through the policy
// front-end (RCPT and END-OF-MESSAGE per message, as Postfix asks with the
// README's recipe) until a RCPT is refused, and returns how many messages
// passed and the refusal.
func policyMessagesUntilRefused(t *testing.T, addr string, port, limit int) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	ask := func(attrs string) string {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "request=smtpd_access_policy\nclient_address=192.0.2.1\nclient_port=%d\nserver_address=127.0.0.1\nserver_port=25\n%s\n\n", port, attrs)
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		_, _ = br.ReadString('\n')
		return strings.TrimPrefix(strings.TrimSpace(line), "action=")
	}
	for i := 0; i < limit; i++ {
		inst := fmt.Sprintf("instance=1a.2b.3c.%x", i)
		if a := ask("protocol_state=RCPT\nsize=0\n" + inst); a != "DUNNO" {
			return i, a
		}
		if a := ask("protocol_state=END-OF-MESSAGE\nsize=100\nrecipient_count=1\n" + inst); a != "DUNNO" {
			t.Fatalf("END-OF-MESSAGE: %s", a)
		}
	}
	return limit, ""
}

// TestDaemonPolicyFrontEnd runs the binary with both front-ends: the policy
// socket answers, a reload reaches both, and its metrics are exported.
func TestDaemonPolicyFrontEnd(t *testing.T) {
	d := startDaemon(t, "[session]\nmax_messages = 2\n[policy]\nlisten = \"inet:127.0.0.1:0\"\n")
	m := regexp.MustCompile(`msg=listening .* policy=inet:(\S+)`).FindStringSubmatch(d.logs())
	if m == nil {
		t.Fatalf("no policy address in the log:\n%s", d.logs())
	}
	if n, reply := policyMessagesUntilRefused(t, m[1], 5000, 10); n != 2 || !strings.HasPrefix(reply, "421 4.7.0 Too many messages in this session (limit 2)") {
		t.Fatalf("policy: %d messages, then %q", n, reply)
	}
	if n, _ := d.messagesUntilRefused(10); n != 2 {
		t.Fatalf("milter: %d messages", n)
	}
	writeFile(t, d.config, "[session]\nmax_messages = 4\n[policy]\nlisten = \"inet:127.0.0.1:0\"\n[admin]\nlisten = \""+d.admin+"\"\n")
	d.signal(syscall.SIGHUP)
	d.waitLog("configuration reloaded")
	if n, _ := policyMessagesUntilRefused(t, m[1], 5001, 10); n != 4 {
		t.Fatalf("policy after reload: %d messages", n)
	}
	if n, _ := d.messagesUntilRefused(10); n != 4 {
		t.Fatalf("milter after reload: %d messages", n)
	}
	if got := d.metric(`sessioncap_refusals_total{limit="session_messages",mode="enforce",stage="mail"}`); got != "4" {
		t.Fatalf("refusals of both front-ends = %s, want 4", got)
	}
	if got := d.metric(`sessioncap_policy_requests_total{protocol_state="RCPT"}`); got != "8" {
		t.Fatalf("policy RCPT requests = %s, want 8", got)
	}
	d.signal(syscall.SIGTERM)
	if code := d.waitExit(); code != 0 {
		t.Fatalf("exit %d", code)
	}
}
