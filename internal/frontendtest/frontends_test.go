package frontendtest_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/internal/frontendtest"
	"github.com/sessioncap/sessioncap/limits"
)

// out is the expected result of one transaction: the first refusal (a
// prefix of the reply; "" for none) and whether the message was accepted.
type out struct {
	reply    string
	accepted bool
}

var (
	ok = out{accepted: true}

	messages   = "421 4.7.0 Too many messages in this session (limit "
	data       = "421 4.7.0 Too much data in this session (limit "
	wouldExc   = "421 4.7.0 Message would exceed this session's data limit"
	overrun    = "452 4.3.1 Message exceeded this session's data limit"
	overrunHup = "421 4.3.1 Message exceeded this session's data limit"
	rcpts      = "452 4.5.3 Too many recipients in this session"
	frequency  = "421 4.7.0 Too many connections from your network"
	banned     = "421 4.7.0 Your network is temporarily banned"
	deny       = "554 5.7.1 Access denied"
	snet       = "451 4.7.1 Mail from your sender domain comes from too many networks"
	conc       = "421 4.7.0 Too many concurrent connections from your network"
	errs       = "421 4.7.0 Too many errors in this session"
	errsBanned = "421 4.7.0 Too many rejected recipients from your network"
)

func no(reply string) out   { return out{reply: reply} }
func part(reply string) out { return out{reply: reply, accepted: true} }

// sess is one SMTP session of a scenario.
type sess struct {
	client string
	txs    []frontendtest.Tx
	want   []out
	policy []out         // what the policy front-end answers where README says it differs; nil: want
	replay []out         // what replay answers where README says it differs; nil: want
	after  time.Duration // the clock moves on after the session
	open   bool          // the session stays open while the next ones run
}

// tx is a transaction of one recipient and a small message from
// a@example.org.
func tx() frontendtest.Tx {
	return frontendtest.Tx{Sender: "a@example.org", Rcpts: 1, Bytes: 100}
}

func txs(n int, f func(*frontendtest.Tx)) []frontendtest.Tx {
	out := make([]frontendtest.Tx, n)
	for i := range out {
		out[i] = tx()
		if f != nil {
			f(&out[i])
		}
	}
	return out
}

func oks(n int) []out {
	o := make([]out, n)
	for i := range o {
		o[i] = ok
	}
	return o
}

func rules(f func(r *limits.Rules)) func() *limits.Rules {
	return func() *limits.Rules {
		r := limits.DefaultRules()
		f(r)
		return r
	}
}

// scenario is a sequence of sessions under one set of rules, the refusals
// sessioncap_refusals_total must count ("limit/stage/mode"), and the tag
// headers the milter adds to the last accepted message (the policy path
// cannot tag).
type scenario struct {
	name     string
	rules    func() *limits.Rules
	sessions []sess
	refusals map[string]float64
	// policyRefusals replaces refusals for the policy front-end where
	// README says it differs.
	policyRefusals map[string]float64
	// replayRefusals replaces refusals for replay where README says it
	// differs.
	replayRefusals map[string]float64
	tags           []string
}

func scenarios() []scenario {
	user := func(u string) func(*frontendtest.Tx) { return func(t *frontendtest.Tx) { t.User = u } }
	sender := func(s string) func(*frontendtest.Tx) { return func(t *frontendtest.Tx) { t.Sender = s } }
	var all []scenario
	for _, mode := range limits.AllModes {
		m := string(mode)
		refused := func(o out) out {
			switch mode {
			case limits.ModeEnforce:
				return o
			}
			return ok
		}
		count := func(key string) map[string]float64 {
			if mode == limits.ModeOff {
				return map[string]float64{key[:strings.LastIndexByte(key, '/')+1] + "enforce": 0}
			}
			return map[string]float64{key: 1}
		}
		tagged := func(tag string) []string {
			if mode != limits.ModeTag {
				return nil
			}
			return []string{"X-Sessioncap: " + tag}
		}
		all = append(all,
			scenario{
				name:     "session_messages/" + m,
				rules:    rules(func(r *limits.Rules) { r.Default.Session = limits.Session{MaxMessages: 2, Mode: mode} }),
				sessions: []sess{{client: "192.0.2.1", txs: txs(3, nil), want: []out{ok, ok, refused(no(messages + "2)"))}}},
				refusals: count("session_messages/mail/" + m),
				tags:     tagged("limit=session_messages value=2 cap=2"),
			},
			scenario{
				name:  "session_bytes/" + m,
				rules: rules(func(r *limits.Rules) { r.Default.Session = limits.Session{MaxBytes: 1000, Mode: mode} }),
				sessions: []sess{{client: "192.0.2.2", txs: txs(3, func(t *frontendtest.Tx) { t.Bytes = 600 }),
					want: []out{ok, ok, refused(no(data + "1000 bytes)"))}}},
				refusals: count("session_bytes/mail/" + m),
				tags:     tagged("limit=session_bytes value=1200 cap=1000"),
			},
			scenario{
				name:  "session_bytes_size/" + m,
				rules: rules(func(r *limits.Rules) { r.Default.Session = limits.Session{MaxBytes: 1000, Mode: mode} }),
				sessions: []sess{{client: "192.0.2.3", txs: txs(2, func(t *frontendtest.Tx) { t.Bytes, t.Size = 600, 600 }),
					want:   []out{ok, refused(no(wouldExc))},
					replay: []out{ok, ok}}}, // the log has no SIZE=: the byte cap is decided at the next MAIL
				refusals:       count("session_bytes/mail/" + m),
				replayRefusals: map[string]float64{"session_bytes/mail/" + m: 0},
				tags:           tagged("limit=session_bytes value=1200 cap=1000"),
			},
			scenario{
				name: "overrun/" + m,
				rules: rules(func(r *limits.Rules) {
					r.Default.Session = limits.Session{MaxBytes: 1000, Overrun: limits.OverrunTempfail, Mode: mode}
				}),
				sessions: []sess{{client: "192.0.2.4", txs: txs(2, func(t *frontendtest.Tx) { t.Bytes = 600 }),
					want:   []out{ok, refused(no(overrun))},
					policy: []out{ok, refused(no(overrunHup))}}},
				refusals: count("session_bytes/eom/" + m),
				tags:     tagged("limit=session_bytes value=1200 cap=1000"),
			},
			scenario{
				name:  "session_recipients/" + m,
				rules: rules(func(r *limits.Rules) { r.Default.Session = limits.Session{MaxRecipients: 3, Mode: mode} }),
				sessions: []sess{{client: "192.0.2.5", txs: txs(1, func(t *frontendtest.Tx) { t.Rcpts = 4 }),
					want: []out{refused(part(rcpts))}}},
				refusals: count("session_recipients/rcpt/" + m),
				tags:     tagged("limit=session_recipients value=3 cap=3"),
			},
			scenario{
				name: "frequency/" + m,
				rules: rules(func(r *limits.Rules) {
					r.Default.Frequency = limits.Frequency{MaxConnections: 2, Window: time.Minute, Ban: time.Hour, Mode: mode}
				}),
				sessions: []sess{
					{client: "192.0.2.6", txs: txs(1, nil), want: []out{ok}},
					{client: "192.0.2.6", txs: txs(1, nil), want: []out{ok}},
					{client: "192.0.2.6", txs: txs(1, nil), want: []out{refused(no(frequency))}, after: time.Minute},
					{client: "192.0.2.6", txs: txs(1, nil), want: []out{refused(no(banned))}},
				},
				refusals: mergeCounts(count("frequency/connect/"+m), count("banned/connect/"+m)),
				tags:     tagged("limit=banned value=0 cap=2"),
			},
			scenario{
				name:  "deny/" + m,
				rules: rules(func(r *limits.Rules) { r.Deny = limits.Deny{Networks: prefixes("198.51.100.0/24"), Mode: mode} }),
				sessions: []sess{
					{client: "192.0.2.7", txs: txs(1, nil), want: []out{ok}},
					{client: "198.51.100.9", txs: txs(2, nil), want: []out{refused(no(deny)), refused(no(deny))}},
				},
				refusals: count("deny/connect/" + m),
				tags:     tagged("limit=deny value=0 cap=0"),
			},
			scenario{
				name: "sender_networks/" + m,
				rules: rules(func(r *limits.Rules) {
					r.SenderNetworks.MaxNetworks, r.SenderNetworks.Mode = 2, mode
				}),
				sessions: []sess{
					{client: "192.0.2.8", txs: txs(1, nil), want: []out{ok}},
					{client: "198.51.100.8", txs: txs(1, nil), want: []out{ok}},
					{client: "203.0.113.8", txs: txs(2, nil), want: []out{refused(no(snet)), refused(no(snet))}},
					{client: "203.0.113.8", txs: txs(1, sender("a@example.com")), want: []out{ok}},
				},
				refusals: map[string]float64{"sender_networks/mail/" + m: map[bool]float64{true: 0, false: 2}[mode == limits.ModeOff]},
				tags:     nil, // the last message is from another domain
			},
		)
	}
	override := func(o limits.Override) func() *limits.Rules {
		return rules(func(r *limits.Rules) {
			r.Default.Session.MaxMessages = 1
			o.Policy = r.Default
			o.Policy.Session.MaxMessages = 3
			r.Overrides = []limits.Override{o}
		})
	}
	yes := true
	all = append(all,
		scenario{
			name:  "override/networks",
			rules: override(limits.Override{Networks: prefixes("192.0.2.0/28")}),
			sessions: []sess{
				{client: "192.0.2.9", txs: txs(4, nil), want: []out{ok, ok, ok, no(messages + "3)")}},
				{client: "192.0.2.99", txs: txs(2, nil), want: []out{ok, no(messages + "1)")}},
			},
			refusals: map[string]float64{"session_messages/mail/enforce": 2},
		},
		scenario{
			name:  "override/users",
			rules: override(limits.Override{Users: []string{"bulk"}}),
			sessions: []sess{
				{client: "192.0.2.10", txs: txs(4, user("bulk")), want: []out{ok, ok, ok, no(messages + "3)")}},
				{client: "192.0.2.10", txs: txs(2, user("other")), want: []out{ok, no(messages + "1)")}},
			},
			refusals: map[string]float64{"session_messages/mail/enforce": 2},
		},
		scenario{
			name:  "override/sender_domains",
			rules: override(limits.Override{SenderDomains: []string{"example.org"}}),
			sessions: []sess{
				{client: "192.0.2.11", txs: txs(4, nil), want: []out{ok, ok, ok, no(messages + "3)")}},
				{client: "192.0.2.11", txs: txs(2, sender("a@example.com")), want: []out{ok, no(messages + "1)")}},
			},
			refusals: map[string]float64{"session_messages/mail/enforce": 2},
		},
		scenario{
			name:  "override/authenticated",
			rules: override(limits.Override{Authenticated: &yes}),
			sessions: []sess{
				{client: "192.0.2.12", txs: txs(4, user("anyone")), want: []out{ok, ok, ok, no(messages + "3)")}},
				{client: "192.0.2.12", txs: txs(2, nil), want: []out{ok, no(messages + "1)")}},
			},
			refusals: map[string]float64{"session_messages/mail/enforce": 2},
		},
		scenario{
			name: "override/monitor",
			rules: rules(func(r *limits.Rules) {
				o := limits.Override{Networks: prefixes("192.0.2.0/24"), Policy: r.Default}
				o.Policy.Session = limits.Session{MaxMessages: 1, Mode: limits.ModeMonitor}
				r.Overrides = []limits.Override{o}
			}),
			sessions: []sess{{client: "192.0.2.13", txs: txs(3, nil), want: oks(3)}},
			refusals: map[string]float64{"session_messages/mail/monitor": 2, "session_messages/mail/enforce": 0},
		},
		scenario{
			name: "exempt/networks",
			rules: rules(func(r *limits.Rules) {
				r.Default.Session.MaxMessages = 1
				r.Default.Frequency = limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: time.Hour}
				r.ExemptNetworks = prefixes("192.0.2.0/24")
			}),
			sessions: []sess{
				{client: "192.0.2.14", txs: txs(3, nil), want: oks(3)},
				{client: "192.0.2.14", txs: txs(1, nil), want: oks(1)},
				{client: "198.51.100.14", txs: txs(2, nil), want: []out{ok, no(messages + "1)")}},
				{client: "198.51.100.14", txs: txs(1, nil), want: []out{no(frequency)}},
			},
			refusals: map[string]float64{"session_messages/mail/enforce": 1, "frequency/connect/enforce": 1},
		},
		scenario{
			name: "exempt/authenticated",
			rules: rules(func(r *limits.Rules) {
				r.Default.Session.MaxMessages = 1
				r.ExemptAuthenticated = true
			}),
			sessions: []sess{
				{client: "192.0.2.15", txs: txs(3, user("alice")), want: oks(3)},
				{client: "192.0.2.15", txs: txs(2, nil), want: []out{ok, no(messages + "1)")}},
			},
			refusals: map[string]float64{"session_messages/mail/enforce": 1},
		},
		// The rules only the milter can enforce, with what the policy
		// front-end answers instead (README's front-end tables).
		scenario{
			name:  "concurrency",
			rules: rules(func(r *limits.Rules) { r.Default.Concurrency = limits.Concurrency{MaxPerAddress: 1} }),
			sessions: []sess{
				{client: "192.0.2.17", txs: txs(1, nil), want: oks(1), open: true},
				{client: "192.0.2.17", txs: txs(1, nil), want: []out{no(conc)}, policy: oks(1)},
				{client: "192.0.2.18", txs: txs(1, nil), want: oks(1)},
			},
		},
		scenario{
			name:  "errors/per_session",
			rules: rules(func(r *limits.Rules) { r.Default.Errors = limits.Errors{MaxPerSession: 2} }),
			sessions: []sess{{client: "192.0.2.19",
				txs:    txs(2, func(t *frontendtest.Tx) { t.Rejected = 1 }),
				want:   []out{ok, no(errs)},
				policy: []out{ok, ok}}},
		},
		scenario{
			name: "errors/window",
			rules: rules(func(r *limits.Rules) {
				r.Default.Errors = limits.Errors{MaxPerWindow: 2, Window: time.Hour, Ban: time.Hour}
			}),
			sessions: []sess{
				{client: "192.0.2.20", txs: txs(1, func(t *frontendtest.Tx) { t.Rejected = 3 }), want: []out{no(errsBanned)}, policy: oks(1)},
				{client: "192.0.2.20", txs: txs(1, nil), want: []out{no(errsBanned)}, policy: oks(1)},
			},
			refusals:       map[string]float64{"errors/rcpt/enforce": 1, "errors/connect/enforce": 1},
			policyRefusals: map[string]float64{"errors/rcpt/enforce": 0, "errors/connect/enforce": 0},
		},
		scenario{
			// an override's own window, matched from MAIL FROM on: its
			// ban holds in the next session (issue 15 item 12)
			name: "errors/override_window",
			rules: rules(func(r *limits.Rules) {
				o := limits.Override{SenderDomains: []string{"example.org"}, Policy: r.Default}
				o.Policy.Errors = limits.Errors{MaxPerWindow: 2, Window: time.Hour, Ban: time.Hour}
				r.Overrides = []limits.Override{o}
			}),
			sessions: []sess{
				{client: "192.0.2.21", txs: txs(1, func(t *frontendtest.Tx) { t.Rejected = 3 }), want: []out{no(errsBanned)}, policy: oks(1)},
				{client: "192.0.2.21", txs: txs(1, nil), want: []out{no(errsBanned)}, policy: oks(1)},
				{client: "192.0.2.21", txs: txs(1, sender("a@example.com")), want: oks(1)},
			},
			refusals:       map[string]float64{"errors/rcpt/enforce": 1, "errors/mail/enforce": 1},
			policyRefusals: map[string]float64{"errors/rcpt/enforce": 0, "errors/mail/enforce": 0},
		},
		scenario{
			name: "rules/off",
			rules: rules(func(r *limits.Rules) {
				r.Mode = limits.ModeOff
				r.Default.Session = limits.Session{MaxMessages: 1, MaxRecipients: 1}
				r.Deny.Networks = prefixes("192.0.2.16/32")
			}),
			sessions: []sess{{client: "192.0.2.16", txs: txs(3, func(t *frontendtest.Tx) { t.Rcpts = 3 }), want: oks(3)}},
			refusals: map[string]float64{"deny/connect/enforce": 0, "session_messages/mail/enforce": 0, "session_recipients/rcpt/enforce": 0},
		},
	)
	return all
}

func mergeCounts(a, b map[string]float64) map[string]float64 {
	for k, v := range b {
		a[k] = v
	}
	return a
}

func prefixes(ss ...string) []netip.Prefix {
	var p []netip.Prefix
	for _, s := range ss {
		p = append(p, netip.MustParsePrefix(s))
	}
	return p
}

// TestFrontendsGiveTheSameVerdicts runs every scenario through the milter
// and the policy server over their real sockets, and through replay (the
// events written as Postfix's log lines): each transaction must get
// the same reply (where README's front-end tables say the two differ, the
// policy's own), the same refusals must be counted, and the milter adds
// the tag headers of limits in tag mode.
func TestFrontendsGiveTheSameVerdicts(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			replies := map[frontendtest.Kind][]string{}
			for _, k := range frontendtest.Kinds {
				t.Run(string(k), func(t *testing.T) {
					h := frontendtest.Start(t, k, sc.rules())
					var last []string
					for i, s := range sc.sessions {
						want := s.want
						if k == frontendtest.Policy && s.policy != nil {
							want = s.policy
						}
						if k == frontendtest.Replay && s.replay != nil {
							want = s.replay
						}
						conn := h.Connect(s.client)
						for j, tx := range s.txs {
							got := conn.Send(tx)
							replies[k] = append(replies[k], got.Reply)
							if !strings.HasPrefix(got.Reply, want[j].reply) || (want[j].reply == "") != (got.Reply == "") || got.Accepted != want[j].accepted {
								t.Errorf("session %d (%s), transaction %d: reply %q accepted %v; want %q… accepted %v",
									i+1, s.client, j+1, got.Reply, got.Accepted, want[j].reply, want[j].accepted)
							}
							if got.Accepted {
								last = got.Tags
							}
						}
						if !s.open {
							conn.Close()
						}
						h.Clock.Add(s.after)
					}
					counts := sc.refusals
					if k == frontendtest.Policy && sc.policyRefusals != nil {
						counts = sc.policyRefusals
					}
					if k == frontendtest.Replay && sc.replayRefusals != nil {
						counts = sc.replayRefusals
					}
					for key, n := range counts {
						f := strings.Split(key, "/")
						if got := h.Refusals(f[0], f[1], f[2]); got != n {
							t.Errorf("sessioncap_refusals_total{limit=%q,stage=%q,mode=%q} = %v, want %v", f[0], f[1], f[2], got, n)
						}
					}
					if k == frontendtest.Milter && strings.Join(last, "\n") != strings.Join(sc.tags, "\n") {
						t.Errorf("tags of the last accepted message: %q, want %q", last, sc.tags)
					}
					if k != frontendtest.Milter && len(last) > 0 {
						t.Errorf("the %s front-end added headers: %q", k, last)
					}
				})
			}
			if !t.Failed() && !sameExceptDocumented(sc, replies, frontendtest.Policy, func(s sess) []out { return s.policy }) {
				t.Errorf("the front-ends answered differently:\nmilter %q\npolicy %q", replies[frontendtest.Milter], replies[frontendtest.Policy])
			}
			if !t.Failed() && !sameExceptDocumented(sc, replies, frontendtest.Replay, func(s sess) []out { return s.replay }) {
				t.Errorf("the front-ends answered differently:\nmilter %q\nreplay %q", replies[frontendtest.Milter], replies[frontendtest.Replay])
			}
		})
	}
}

// sameExceptDocumented reports whether front-end k gave the milter's full
// replies, apart from the transactions where the scenario documents a
// difference (documented returns k's own expectations, nil for none).
func sameExceptDocumented(sc scenario, replies map[frontendtest.Kind][]string, k frontendtest.Kind, documented func(sess) []out) bool {
	m, p := replies[frontendtest.Milter], replies[k]
	if len(m) != len(p) {
		return false
	}
	i := 0
	for _, s := range sc.sessions {
		d := documented(s)
		for j := range s.txs {
			if m[i] != p[i] && (d == nil || d[j] == s.want[j]) {
				return false
			}
			i++
		}
	}
	return true
}
