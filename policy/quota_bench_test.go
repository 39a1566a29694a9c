package policy_test

import (
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/limits"
	"github.com/sessioncap/sessioncap/policy"
)

// BenchmarkPolicyQuotaTransaction asks about one message (RCPT,
// END-OF-MESSAGE) without and with two quota rules in turn per iteration
// (memory store) and reports the ratio of their throughputs:
//
//	go test -run '^$' -bench PolicyQuotaTransaction -benchtime 5000x ./policy/
//
// With QB_SAME=1 both sides run without quotas: the ratio then shows the
// machine's noise.
func BenchmarkPolicyQuotaTransaction(b *testing.B) {
	type side struct {
		p *pconn
		s *smtp
	}
	var sides [2]side
	for i := range sides {
		h := startWith(b, rulesWith(func(r *limits.Rules) {
			r.Default.Session = limits.Session{MaxMessages: 1 << 40, MaxBytes: 1 << 40, MaxRecipients: 1 << 40, Overrun: limits.OverrunTempfail}
			r.Default.Frequency = limits.Frequency{MaxConnections: 1 << 30, Window: time.Minute, Ban: time.Minute}
			if i == 1 && os.Getenv("QB_SAME") == "" {
				r.Quotas = []limits.Quota{
					{Name: "sender-hourly", Key: limits.QuotaSender, Count: limits.CountMessages, Limit: 1 << 40, Window: time.Hour},
					{Name: "network-bytes", Key: limits.QuotaNetwork, Count: limits.CountBytes, Limit: 1 << 50, Window: time.Hour},
				}
			}
		}), func(c *policy.Config) { c.Logger = slog.New(slog.DiscardHandler) })
		sides[i] = side{p: h.dial(), s: newSMTP("192.0.2.1", 100+i)}
	}
	var spent [2]time.Duration
	n := 0
	for b.Loop() {
		for j := range sides {
			k := (n + j) % len(sides)
			sd := &sides[k]
			t0 := time.Now()
			sd.s.mail()
			rcpt := strings.Join(sd.s.rcpt(0, 3000), "\n") + "\n\n"
			eom := strings.Join(sd.s.eom(3000, 1), "\n") + "\n\n"
			for _, req := range []string{rcpt, eom} {
				if _, err := sd.p.c.Write([]byte(req)); err != nil {
					b.Fatal(err)
				}
				if line, err := sd.p.br.ReadString('\n'); err != nil || line != "action=DUNNO\n" {
					b.Fatalf("%q %v", line, err)
				}
				_, _ = sd.p.br.ReadString('\n')
			}
			spent[k] += time.Since(t0)
		}
		n++
	}
	b.ReportMetric(float64(spent[0].Microseconds())/float64(n), "without-µs/txn")
	b.ReportMetric(float64(spent[1].Microseconds())/float64(n), "quotas-µs/txn")
	b.ReportMetric(float64(spent[0])/float64(spent[1]), "throughput-ratio")
}
