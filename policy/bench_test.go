package policy_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/limits"
	"github.com/sessioncap/sessioncap/policy"
)

// BenchmarkPolicyTransaction is one message as Postfix asks about it with
// README's recipe (RCPT, END-OF-MESSAGE) over a real socket, every limit
// on, including the byte cap. Each SMTP session carries 50 messages.
func BenchmarkPolicyTransaction(b *testing.B) {
	h := startWith(b, rulesWith(func(r *limits.Rules) {
		r.Default.Session = limits.Session{MaxMessages: 1000, MaxBytes: 1 << 40, MaxRecipients: 100000, Overrun: limits.OverrunTempfail}
		r.Default.Frequency = limits.Frequency{MaxConnections: 1 << 30, Window: time.Minute, Ban: time.Minute}
	}), func(c *policy.Config) { c.Logger = slog.New(slog.DiscardHandler) })
	p := h.dial()
	var s *smtp
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%50 == 0 {
			s = newSMTP("192.0.2.1", 100)
		}
		s.mail()
		rcpt := strings.Join(s.rcpt(0, 3000), "\n") + "\n\n"
		eom := strings.Join(s.eom(3000, 1), "\n") + "\n\n"
		for _, req := range []string{rcpt, eom} {
			if _, err := p.c.Write([]byte(req)); err != nil {
				b.Fatal(err)
			}
			if line, err := p.br.ReadString('\n'); err != nil || line != "action=DUNNO\n" {
				b.Fatalf("%q %v", line, err)
			}
			_, _ = p.br.ReadString('\n')
		}
	}
}
