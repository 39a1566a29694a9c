package e2e

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
)

// saslServer is a Dovecot authentication server as Postfix's
// smtpd_sasl_type = dovecot speaks to it (the auth protocol, version 1.2),
// that accepts PLAIN for any user whose password is saslPassword. It lets
// the e2e tests log in as SASL users without Dovecot or a Cyrus database.
type saslServer struct {
	ln net.Listener
	wg sync.WaitGroup
}

const saslPassword = "secret"

func startSASL(t testing.TB) *saslServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &saslServer{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() { defer s.wg.Done(); s.serve(c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

// mainCf is what the receiving Postfix needs to offer AUTH through s.
func (s *saslServer) mainCf() []string {
	return []string{
		"smtpd_sasl_auth_enable = yes",
		"smtpd_sasl_type = dovecot",
		"smtpd_sasl_path = inet:" + s.ln.Addr().String(),
		"smtpd_sasl_security_options = noanonymous",
	}
}

func (s *saslServer) serve(c net.Conn) {
	defer c.Close()
	fmt.Fprint(c, "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t4242\nCUID\t1\nCOOKIE\t0123456789abcdef0123456789abcdef\nDONE\n")
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		f := strings.Split(strings.TrimRight(line, "\n"), "\t")
		if f[0] != "AUTH" || len(f) < 3 {
			continue // VERSION, CPID
		}
		id, resp := f[1], ""
		for _, p := range f[3:] {
			if v, ok := strings.CutPrefix(p, "resp="); ok {
				resp = v
			}
		}
		if resp == "" { // no initial response: ask for it
			fmt.Fprintf(c, "CONT\t%s\t\n", id)
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			g := strings.Split(strings.TrimRight(line, "\n"), "\t")
			if len(g) >= 3 {
				resp = g[2]
			}
		}
		raw, _ := base64.StdEncoding.DecodeString(resp)
		parts := bytes.Split(raw, []byte{0})
		if len(parts) == 3 && string(parts[2]) == saslPassword && len(parts[1]) > 0 {
			fmt.Fprintf(c, "OK\t%s\tuser=%s\n", id, parts[1])
		} else {
			fmt.Fprintf(c, "FAIL\t%s\n", id)
		}
	}
}

// login authenticates c as user with AUTH PLAIN.
func login(t *testing.T, c *smtpClient, user string) {
	t.Helper()
	resp := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + saslPassword))
	if r := c.cmd("AUTH", "AUTH PLAIN "+resp); r.code != 235 {
		t.Fatalf("AUTH as %s: %v", user, r)
	}
}

// saslUsers are the users Sendmail's sasldb knows, with saslPassword.
var saslUsers = map[string]string{"alice@example.com": saslPassword, "bob@example.com": saslPassword}

// newSASLFrontEnd is newFrontEnd with AUTH: Postfix through the milter or
// the policy front-end (a Dovecot auth server of the test's own), Sendmail
// through the milter (Cyrus SASL with a sasldb, see startSendmailWith).
func newSASLFrontEnd(t *testing.T, kind, config string) *env {
	t.Helper()
	if kind == "sendmail" {
		requireSendmail(t)
		m, d := startBehindSessioncap(t, config, func(milterPort int) *sendmailInstance {
			return startSendmailWith(t, "mx", milterPort, saslUsers)
		})
		return &env{kind: kind, m: m, d: d, want: map[string]int{}}
	}
	sasl := startSASL(t)
	if kind == policyKind {
		return newPolicyEnv(t, config, sasl.mainCf()...)
	}
	requirePostfix(t)
	m, d := startBehindSessioncap(t, config, func(milterPort int) *postfixInstance {
		return startPostfix(t, "mx", postfixConfig{milter: inetSpec(milterPort), main: sasl.mainCf()})
	})
	return &env{kind: kind, m: m, d: d, want: map[string]int{}}
}

// TestQuotaSASLUserAtMail: a SASL user over its hourly quota gets 451 4.7.1
// at MAIL (at the first RCPT through the policy front-end) in a new
// session, which stays open; another user goes on; every accepted message
// is delivered once. Postfix through the milter and the policy front-end.
func TestQuotaSASLUserAtMail(t *testing.T) {
	for _, kind := range []string{"postfix", "sendmail", policyKind} {
		t.Run(kind, func(t *testing.T) {
			e := newSASLFrontEnd(t, kind, "[[rate]]\nname = \"user-hourly\"\nkey = \"user\"\ncount = \"messages\"\nlimit = 2\nwindow = \"1h\"\n")
			c := e.dial(t, "first")
			login(t, c, "alice@example.com")
			e.mustAccept(t, c, "sasl-1", 3000, true)
			e.mustAccept(t, c, "sasl-2", 3000, false)
			c.quit()
			c2 := e.dial(t, "second")
			login(t, c2, "alice@example.com")
			res := e.send(t, c2, "sasl-over", 3000, true)
			e.expectMailRefusal(t, "alice over her quota", res, 451, "4.7.1",
				"Quota user-hourly exceeded (limit 2 messages per 1h for your account)")
			if c2.closed {
				t.Fatal("the server hung up after the quota's 451")
			}
			c2.quit()
			c3 := e.dial(t, "bob")
			login(t, c3, "bob@example.com")
			e.mustAccept(t, c3, "sasl-bob", 3000, true)
			c3.quit()
			e.delivered(t)
			e.expectRefusals(t, "quota", "mail", "enforce", 1)
			if !strings.Contains(e.d.p.output(), "key_value=alice@example.com") {
				t.Errorf("the refusal's log line does not name the user:\n%s", e.d.p.output())
			}
			if kind != policyKind { // replay reads the SASL login from the MTA's log too
				expectReplayAgrees(t, e)
			}
		})
	}
}
