package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// relayScenario is one zero-loss run: a sending Postfix relay with a real
// queue delivers a batch into the receiving Postfix with sessioncap.
type relayScenario struct {
	messages, size int
	// sessioncap is the daemon's config (limits for the receiving side).
	sessioncap string
	// sender is extra main.cf for the sending relay.
	sender []string
	// policy runs sessioncap as the receiving Postfix's policy server
	// (README's recipe) instead of its milter.
	policy bool
}

// relayStats is what a run measured.
type relayStats struct {
	delivered     int           // distinct Message-IDs in the Maildir
	sessions      int           // receiving sessions that carried a MAIL
	maxPerSession int           // most messages accepted in one session
	refusals421   int           // 421s (and quotas' 451s) at MAIL in the receiving log
	deferrals     int           // status=deferred in the sending log
	metricRefused float64       // sessioncap_refusals_total, enforce, summed
	drain         time.Duration // release of the queue to the last delivery
}

func (s relayStats) String() string {
	return fmt.Sprintf("delivered=%d sessions=%d max_per_session=%d refusals_421=%d deferrals=%d metric_refusals=%v drain=%v",
		s.delivered, s.sessions, s.maxPerSession, s.refusals421, s.deferrals, s.metricRefused, s.drain.Round(time.Millisecond))
}

// relayMessages is the batch size: SESSIONCAP_RELAY_MESSAGES, default
// small enough for CI.
func relayMessages(t *testing.T, def int) int {
	v := os.Getenv("SESSIONCAP_RELAY_MESSAGES")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 100000 {
		t.Fatalf("SESSIONCAP_RELAY_MESSAGES=%q: want a number of messages, 1 to 100000", v)
	}
	return n
}

// runRelay submits the batch into the sending relay, where it is held;
// releases it all at once; waits until every message is in the Maildir and
// the relay's queue is empty; and checks that nothing was lost, bounced or
// duplicated, and that no session was cut during DATA.
func runRelay(t *testing.T, sc relayScenario) relayStats {
	t.Helper()
	requirePostfix(t)
	requireSessioncap(t)
	var mx *postfixInstance
	var d *daemon
	if sc.policy {
		mx, d = startPostfixBehindPolicy(t, "mx", sc.sessioncap)
	} else {
		mx, d = startBehindSessioncap(t, sc.sessioncap, func(milterPort int) *postfixInstance {
			return startPostfix(t, "mx", postfixConfig{milter: inetSpec(milterPort)})
		})
	}
	relay := startPostfix(t, "relay", postfixConfig{
		relayhost: fmt.Sprintf("[127.0.0.1]:%d", mx.port),
		main: append([]string{
			// Retry fast: a refused message waits minimal_backoff_time.
			"minimal_backoff_time = 1s",
			"maximal_backoff_time = 2s",
			"queue_run_delay = 1s",
			"maximal_queue_lifetime = 1h",
			"bounce_queue_lifetime = 1h",
			// Hold what is submitted; the test releases the whole batch.
			"smtpd_recipient_restrictions = check_client_access static:HOLD, permit_mynetworks, reject",
			// Few connections, so that each carries many messages.
			"smtp_destination_concurrency_limit = 2",
		}, sc.sender...),
	})

	// Submit over one connection into the relay.
	want := map[string]int{}
	c := dialSMTP(t, "submit", relay.smtpAddr())
	c.timeout = 120 * time.Second
	if c.greeting.code != 220 || c.ehlo("client.test").code != 250 {
		t.Fatalf("relay greeting %v", c.greeting)
	}
	submitStart := time.Now()
	for i := 0; i < sc.messages; i++ {
		data, id := newMessage(fmt.Sprintf("relay-%d", i), sc.size)
		res := c.send(message{from: "sender@client.test", rcpts: []string{fmt.Sprintf("r%d@%s", i, sinkDomain)}, data: data, size: len(data)})
		if !res.accepted {
			t.Fatalf("submitting message %d into the relay: %+v", i, res)
		}
		want[id] = 1
	}
	c.quit()
	t.Logf("submitted %d messages of %d bytes into the relay in %v", sc.messages, sc.size, time.Since(submitStart).Round(time.Millisecond))

	// Release the batch.
	release := time.Now()
	for _, args := range [][]string{
		{"postsuper", "-c", relay.conf, "-H", "ALL"},
		{"postqueue", "-c", relay.conf, "-f"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	var st relayStats
	timeout := 60*time.Second + time.Duration(sc.messages)*200*time.Millisecond
	err := waitFor(timeout, func() error {
		got := maildirMessageIDs(t, mx.maildir)
		if len(got) < len(want) {
			return fmt.Errorf("%w: %d of %d delivered", errNotYet, len(got), len(want))
		}
		return nil
	})
	st.drain = time.Since(release)
	if err != nil {
		t.Fatalf("delivery: %v", err)
	}
	if err := waitFor(30*time.Second, func() error {
		out, err := exec.Command("postqueue", "-c", relay.conf, "-p").CombinedOutput()
		if err != nil {
			return fmt.Errorf("postqueue -p: %v %s", err, out)
		}
		if !strings.Contains(string(out), "Mail queue is empty") {
			return fmt.Errorf("%w: relay queue not empty:\n%s", errNotYet, out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	assertDelivered(t, mx, want, 10*time.Second)
	st.delivered = len(want)

	sendLog, recvLog := relay.log(), mx.log()
	if n := strings.Count(sendLog, "status=bounced"); n != 0 {
		t.Errorf("%d bounces in the sending relay's log", n)
	}
	if n := strings.Count(sendLog, "status=sent"); n != sc.messages {
		t.Errorf("%d status=sent in the sending relay's log, want %d", n, sc.messages)
	}
	for _, bad := range []string{"lost connection after DATA", "lost connection after END-OF-MESSAGE", "reject: END-OF-MESSAGE"} {
		if n := strings.Count(recvLog, bad); n != 0 {
			t.Errorf("%d × %q in the receiving log", n, bad)
		}
	}
	st.deferrals = strings.Count(sendLog, "status=deferred")
	// 421 (session caps) or 451 (quotas)
	refused := `milter-reject: MAIL from [^:]*: 4[25]1 `
	if sc.policy { // the policy server gives MAIL-stage decisions at the first RCPT
		refused = `reject: RCPT from [^:]*: 4[25]1 `
	}
	st.refusals421 = len(regexp.MustCompile(refused).FindAllString(recvLog, -1))
	for _, m := range regexp.MustCompile(`disconnect from .* mail=(\d+)(?:/\d+)? .*data=(\d+)`).FindAllStringSubmatch(recvLog, -1) {
		st.sessions++
		if n, _ := strconv.Atoi(m[2]); n > st.maxPerSession {
			st.maxPerSession = n
		}
	}
	metrics := d.metrics(t)
	for k, v := range metrics {
		if strings.HasPrefix(k, "sessioncap_refusals_total{") && strings.Contains(k, `mode="enforce"`) {
			st.metricRefused += v
		}
	}
	if st.metricRefused != float64(st.refusals421) {
		t.Errorf("sessioncap counted %v refusals, the receiving log has %d 421s", st.metricRefused, st.refusals421)
	}
	t.Logf("relay run: %s", st)
	return st
}

// TestRelayZeroLoss: a real sending Postfix, with its queue and retries,
// delivers a batch of ~300 KB messages through sessioncap's message and
// byte caps. Every message arrives exactly once, nothing bounces, no
// session is cut during DATA, each refusal is a 421 at MAIL that sessioncap
// counted, and each costs the sender exactly one deferral.
//
// SESSIONCAP_RELAY_MESSAGES=1000 runs the full batch.
func TestRelayZeroLoss(t *testing.T) { relayZeroLoss(t, false) }

// TestPolicyRelayZeroLoss is TestRelayZeroLoss through the policy
// front-end: the refusals are 421s at RCPT.
func TestPolicyRelayZeroLoss(t *testing.T) { relayZeroLoss(t, true) }

func relayZeroLoss(t *testing.T, policy bool) {
	const msgCap, byteCap = 50, 5000000
	st := runRelay(t, relayScenario{
		messages: relayMessages(t, 120),
		size:     300000,
		sessioncap: fmt.Sprintf("[session]\nmax_messages = %d\nmax_bytes = %d\n"+
			"[frequency]\nmax_connections = 0\n", msgCap, byteCap),
		policy: policy,
	})
	if st.refusals421 == 0 {
		t.Errorf("no session reached a cap: the run proves nothing (%s)", st)
	}
	if st.deferrals != st.refusals421 {
		t.Errorf("%d deferrals for %d refusals: each refused message should be deferred once", st.deferrals, st.refusals421)
	}
	// 16 messages of 300 KB fit in 5 MB; the 17th is refused at MAIL.
	if limit := byteCap / 300000; st.maxPerSession > limit {
		t.Errorf("a session carried %d messages, more than the %d that fit in %d bytes", st.maxPerSession, limit, byteCap)
	}
}

// TestRelayReuseLimitNoDeferrals: a sender that closes its connections
// itself after cap messages (Postfix smtp_connection_reuse_count_limit =
// cap-1: a connection is used for at most limit+1 messages) never meets the
// cap: zero refusals, zero deferrals, sessions of exactly cap messages. The
// same batch without the setting meets the cap and is deferred, which shows
// that the setting is what makes the difference.
func TestRelayReuseLimitNoDeferrals(t *testing.T) {
	const msgCap = 50
	scenario := func(sender ...string) relayScenario {
		return relayScenario{
			messages: relayMessages(t, 120),
			size:     20000,
			sessioncap: fmt.Sprintf("[session]\nmax_messages = %d\n"+
				"[frequency]\nmax_connections = 0\n", msgCap),
			sender: sender,
		}
	}
	t.Run("without-reuse-limit", func(t *testing.T) {
		st := runRelay(t, scenario())
		if st.refusals421 == 0 || st.deferrals != st.refusals421 {
			t.Errorf("without a reuse limit: %d refusals, %d deferrals; want some, one deferral each", st.refusals421, st.deferrals)
		}
	})
	t.Run(fmt.Sprintf("smtp_connection_reuse_count_limit=%d", msgCap-1), func(t *testing.T) {
		st := runRelay(t, scenario(fmt.Sprintf("smtp_connection_reuse_count_limit = %d", msgCap-1)))
		if st.deferrals != 0 || st.refusals421 != 0 {
			t.Errorf("with smtp_connection_reuse_count_limit = cap-1: %d deferrals, %d refusals, want none", st.deferrals, st.refusals421)
		}
		if st.maxPerSession != msgCap {
			t.Errorf("the busiest session carried %d messages, want exactly the cap %d (sessions long enough to meet it)", st.maxPerSession, msgCap)
		}
	})
}
