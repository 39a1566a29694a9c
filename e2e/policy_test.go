package e2e

import (
	"fmt"
	"strings"
	"testing"
)

// policyRecipe is the main.cf of README's "Postfix policy front-end": the
// policy server last in smtpd_recipient_restrictions (after every check
// that rejects) and in smtpd_end_of_data_restrictions.
func policyRecipe(policyPort int) []string {
	svc := fmt.Sprintf("check_policy_service inet:127.0.0.1:%d", policyPort)
	return []string{
		"smtpd_recipient_restrictions = reject_unauth_destination, " + svc,
		"smtpd_end_of_data_restrictions = " + svc,
		"smtpd_policy_service_timeout = 10s",
		"smtpd_policy_service_default_action = 451 4.3.5 Policy service unavailable",
	}
}

// startPostfixBehindPolicy starts a Postfix that asks sessioncap's policy
// front-end on a free port, then sessioncap with config listening there
// (its milter on another free port Postfix does not use). extra is more
// main.cf. As with startBehindSessioncap, Postfix starts first, and if a
// port is taken meanwhile both are started again.
func startPostfixBehindPolicy(t testing.TB, name, config string, extra ...string) (*postfixInstance, *daemon) {
	t.Helper()
	requirePostfix(t)
	requireSessioncap(t)
	type pair struct {
		m *postfixInstance
		d *daemon
	}
	p := startOnFreePort(t, "sessioncap policy behind Postfix", func(policyPort int) (pair, error) {
		m := startPostfix(t, name, postfixConfig{main: append(policyRecipe(policyPort), extra...)})
		cfg := config + fmt.Sprintf("\n[policy]\nlisten = %q\n", inetSpec(policyPort))
		d, err := tryStartSessioncap(t, freePort(t), cfg)
		if err != nil {
			m.stop(t)
			return pair{}, err
		}
		return pair{m, d}, nil
	})
	return p.m, p.d
}

// newPolicyEnv is newEnv with Postfix asking the policy front-end.
func newPolicyEnv(t *testing.T, config string, extra ...string) *env {
	t.Helper()
	m, d := startPostfixBehindPolicy(t, "mx", config, extra...)
	return &env{kind: policyKind, m: m, d: d, want: map[string]int{}}
}

// expectPolicyReply checks a reply Postfix built from a policy action:
// Postfix keeps the code and the enhanced status code and puts the
// restriction's context before sessioncap's text ("<rcpt>: Recipient
// address rejected: …").
func expectPolicyReply(t *testing.T, what string, r reply, code int, dsn, text string) {
	t.Helper()
	if r.code != code || !strings.HasPrefix(r.text(), dsn+" ") || !strings.Contains(r.text(), text) {
		t.Errorf("%s: got %v, want %d %s …%s…", what, r, code, dsn, text)
	}
}

// TestPolicySessionSurvivesPolicyReconnects: with
// smtpd_policy_service_request_limit = 1 Postfix closes the policy
// connection after every request, so the session's counts must survive
// policy reconnects. (The caps themselves run through every front-end in
// caps_test.go.)
func TestPolicySessionSurvivesPolicyReconnects(t *testing.T) {
	const capN = 3
	e := newPolicyEnv(t, fmt.Sprintf("[session]\nmax_messages = %d\n", capN), "smtpd_policy_service_request_limit = 1")
	c := e.dial(t, "first")
	for i := 1; i <= capN; i++ {
		e.mustAccept(t, c, fmt.Sprintf("pmsgcap-%d", i), 3000, i%2 == 0)
	}
	res := e.send(t, c, "pmsgcap-over", 3000, false)
	e.expectMailRefusal(t, "the transaction over the cap", res, 421, "4.7.0",
		fmt.Sprintf("Too many messages in this session (limit %d)", capN))
	expectClosedAfterReply(t, c, "the transaction over the cap")
	e.delivered(t)
	e.expectRefusals(t, "session_messages", "mail", "enforce", 1)
}
