package frontendtest_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/internal/frontendtest"
	"github.com/sessioncap/sessioncap/internal/testkit"
	"github.com/sessioncap/sessioncap/limits"
)

func quotaRules(qs ...limits.Quota) *limits.Rules {
	r := limits.DefaultRules()
	r.Default.Session = limits.Session{}
	r.Default.Frequency = limits.Frequency{}
	r.Quotas = qs
	return r
}

// A SASL user over its hourly quota gets 451 4.7.1 at MAIL, in new sessions
// too, on both front-ends alike; the session stays open; the window slides.
func TestQuotaUserAtMail(t *testing.T) {
	for _, k := range frontendtest.Kinds {
		t.Run(string(k), func(t *testing.T) {
			h := frontendtest.Start(t, k, quotaRules(limits.Quota{Name: "user-hourly", Key: limits.QuotaUser, Count: limits.CountMessages, Limit: 3, Window: time.Hour}))
			tx := frontendtest.Tx{Sender: "alice@example.com", User: "alice", Rcpts: 2, Bytes: 100}
			for i := range 3 {
				s := h.Connect("192.0.2.1") // a new session each time: quotas cross sessions
				if res := s.Send(tx); !res.Accepted || res.Reply != "" {
					t.Fatalf("message %d: %+v", i+1, res)
				}
				s.Close()
			}
			s := h.Connect("192.0.2.99")
			res := s.Send(tx)
			if res.Accepted || res.Closed || !strings.HasPrefix(res.Reply, "451 4.7.1 ") || !strings.Contains(res.Reply, "user-hourly") || !strings.Contains(res.Reply, "try again in") {
				t.Fatalf("fourth message: %+v", res)
			}
			// another user in the same session is not affected
			if res := s.Send(frontendtest.Tx{Sender: "bob@example.com", User: "bob", Rcpts: 1, Bytes: 100}); !res.Accepted {
				t.Fatalf("bob: %+v", res)
			}
			if got := testkit.Value(t, h.Reg, "sessioncap_quota_refusals_total", "rule", "user-hourly", "mode", "enforce"); got != 1 {
				t.Errorf("sessioncap_quota_refusals_total = %v", got)
			}
			if got := h.Refusals("quota", "mail", "enforce"); got != 1 {
				t.Errorf("refusals{quota,mail} = %v", got)
			}
			log := h.Logs.String()
			for _, want := range []string{`"rule":"user-hourly"`, `"key":"user"`, `"key_value":"alice"`, `"use":3`, `"quota_limit":3`, `"limit":"quota"`} {
				if !strings.Contains(log, want) {
					t.Errorf("refusal log lacks %s:\n%s", want, log)
				}
			}
			for _, line := range strings.Split(log, "\n") {
				if strings.Count(line, `"limit":`) > 1 { // a parser would keep the last
					t.Errorf("a log line names limit twice: %s", line)
				}
			}
			h.Clock.Add(2 * time.Hour)
			if res := s.Send(tx); !res.Accepted {
				t.Fatalf("two hours later: %+v", res)
			}
		})
	}
}

// A recipient over its rate gets 450 4.2.1 at RCPT; the other recipients
// of the message go on and the message is accepted.
func TestQuotaRecipientAtRcpt(t *testing.T) {
	for _, k := range frontendtest.Kinds {
		t.Run(string(k), func(t *testing.T) {
			h := frontendtest.Start(t, k, quotaRules(limits.Quota{Name: "mailbox", Key: limits.QuotaRecipient, Count: limits.CountMessages, Limit: 2, Window: 10 * time.Minute}))
			s := h.Connect("198.51.100.7")
			for i := range 2 { // two messages to r0@example.net
				if res := s.Send(frontendtest.Tx{Sender: "x@example.org", Rcpts: 1, Bytes: 100}); !res.Accepted {
					t.Fatalf("message %d: %+v", i+1, res)
				}
			}
			res := s.Send(frontendtest.Tx{Sender: "x@example.org", Rcpts: 3, Bytes: 100}) // r0 (full), r1, r2
			if !res.Accepted || res.Closed || !strings.HasPrefix(res.Reply, "450 4.2.1 ") || !strings.Contains(res.Reply, "mailbox") {
				t.Fatalf("third message: %+v", res)
			}
			if got := h.Refusals("quota", "rcpt", "enforce"); got != 1 {
				t.Errorf("refusals{quota,rcpt} = %v", got)
			}
			// r1 got the third message counted: one more fits, then r0 and r1
			// are both full and the message has no recipient left
			if res := s.Send(frontendtest.Tx{Sender: "x@example.org", Rcpts: 2, Bytes: 100}); !res.Accepted || !strings.HasPrefix(res.Reply, "450 4.2.1 ") {
				t.Fatalf("fourth message: %+v", res)
			}
			if res := s.Send(frontendtest.Tx{Sender: "x@example.org", Rcpts: 2, Bytes: 100}); res.Accepted || !strings.HasPrefix(res.Reply, "450 4.2.1 ") {
				t.Fatalf("fifth message: %+v", res)
			}
		})
	}
}

// Recipients per user are checked and counted at each RCPT; over the
// limit, the recipient is refused with the rule's reply.
func TestQuotaRecipientsPerUser(t *testing.T) {
	for _, k := range frontendtest.Kinds {
		t.Run(string(k), func(t *testing.T) {
			h := frontendtest.Start(t, k, quotaRules(limits.Quota{Name: "rcpts", Key: limits.QuotaUser, Count: limits.CountRecipients, Limit: 5, Window: time.Hour}))
			s := h.Connect("192.0.2.1")
			tx := frontendtest.Tx{Sender: "alice@example.com", User: "alice", Rcpts: 3, Bytes: 100}
			if res := s.Send(tx); !res.Accepted || res.Reply != "" {
				t.Fatalf("first: %+v", res)
			}
			res := s.Send(tx) // 2 more fit
			if !res.Accepted || !strings.HasPrefix(res.Reply, "451 4.7.1 ") {
				t.Fatalf("second: %+v", res)
			}
			if res := s.Send(tx); res.Accepted || !strings.HasPrefix(res.Reply, "451 4.7.1 ") {
				t.Fatalf("third: %+v", res)
			}
		})
	}
}

// Monitor mode logs and counts, refuses nothing; a byte quota counts the
// real size at end of message.
func TestQuotaMonitorAndBytes(t *testing.T) {
	for _, k := range frontendtest.Kinds {
		t.Run(string(k), func(t *testing.T) {
			h := frontendtest.Start(t, k, quotaRules(
				limits.Quota{Name: "net-bytes", Key: limits.QuotaNetwork, Count: limits.CountBytes, Limit: 1000, Window: time.Hour},
				limits.Quota{Name: "watch", Key: limits.QuotaSenderDomain, Count: limits.CountMessages, Limit: 1, Window: time.Hour, Mode: limits.ModeMonitor},
			))
			s := h.Connect("203.0.113.5")
			for i, want := range []bool{true, true, false} { // 600 bytes each: the third MAIL sees 1200
				res := s.Send(frontendtest.Tx{Sender: "a@Example.NET", Rcpts: 1, Bytes: 600})
				if res.Accepted != want {
					t.Fatalf("message %d: %+v", i+1, res)
				}
				if !want && !strings.Contains(res.Reply, "net-bytes") {
					t.Fatalf("message %d: %+v", i+1, res)
				}
			}
			if got := testkit.Value(t, h.Reg, "sessioncap_quota_refusals_total", "rule", "watch", "mode", "monitor"); got < 1 {
				t.Errorf("monitor refusals %v", got)
			}
		})
	}
}

// Quotas in tag mode: the milter adds one header per rule that would have
// refused; nothing is refused.
func TestQuotaTagMode(t *testing.T) {
	h := frontendtest.Start(t, frontendtest.Milter, quotaRules(
		limits.Quota{Name: "a", Key: limits.QuotaSender, Count: limits.CountMessages, Limit: 1, Window: time.Hour, Mode: limits.ModeTag},
		limits.Quota{Name: "b", Key: limits.QuotaNetwork, Count: limits.CountMessages, Limit: 1, Window: time.Hour, Mode: limits.ModeTag},
	))
	s := h.Connect("192.0.2.1")
	tx := frontendtest.Tx{Sender: "x@example.org", Rcpts: 1, Bytes: 100}
	if res := s.Send(tx); !res.Accepted || len(res.Tags) != 0 {
		t.Fatalf("first: %+v", res)
	}
	res := s.Send(tx)
	want := []string{"X-Sessioncap: limit=quota rule=a value=1 cap=1", "X-Sessioncap: limit=quota rule=b value=1 cap=1"}
	slices.Sort(res.Tags)
	if !res.Accepted || strings.Join(res.Tags, "\n") != strings.Join(want, "\n") {
		t.Fatalf("second: %+v; want tags %q", res, want)
	}
}
