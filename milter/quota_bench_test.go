package milter

import (
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// benchQuotas are two quota rules that every benchmark transaction is
// checked and counted against, never refused: messages per sender and bytes
// per client network.
func benchQuotas() []limits.Quota {
	return []limits.Quota{
		{Name: "sender-hourly", Key: limits.QuotaSender, Count: limits.CountMessages, Limit: 1 << 40, Window: time.Hour},
		{Name: "network-bytes", Key: limits.QuotaNetwork, Count: limits.CountBytes, Limit: 1 << 50, Window: time.Hour},
	}
}

// BenchmarkQuotaTransaction runs one transaction through sessioncap without
// and with two quota rules in turn per iteration (memory store) and
// reports the ratio of their throughputs (with/without ≥ 0.95 is the aim):
//
//	go test -run '^$' -bench QuotaTransaction -benchtime 5000x ./milter/
func BenchmarkQuotaTransaction(b *testing.B) {
	var ts [2]*transactor
	for i := range ts {
		rules := limits.DefaultRules()
		rules.Default.Session = limits.Session{MaxBytes: 1 << 62, MaxRecipients: 1 << 62, Overrun: limits.OverrunAccept}
		if i == 1 {
			rules.Quotas = benchQuotas()
		}
		srv := benchServer(b, rules)
		ts[i] = newTransactor(b, srv.Serve, func() { srv.Close() }, false)
		defer ts[i].close()
	}
	var spent [2]time.Duration
	n := 0
	for b.Loop() {
		for j := range ts {
			k := (n + j) % len(ts)
			t0 := time.Now()
			ts[k].transaction(b)
			spent[k] += time.Since(t0)
		}
		n++
	}
	b.ReportMetric(float64(spent[0].Microseconds())/float64(n), "without-µs/txn")
	b.ReportMetric(float64(spent[1].Microseconds())/float64(n), "quotas-µs/txn")
	b.ReportMetric(float64(spent[0])/float64(spent[1]), "throughput-ratio")
}
