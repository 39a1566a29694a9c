package e2e

import (
	"fmt"
	"sort"
	"testing"
	"time"
)

// TestNoDelayedAckStall guards against a 40 ms stall per milter round trip.
// Both MTAs send several small milter packets before one that needs a reply
// (macros before a command; headers and body chunks without replies before
// end of message) with Nagle's algorithm on, so the last packet waits for the
// ACK of the earlier ones; a milter that lets the kernel delay that ACK makes
// every MAIL (Sendmail) and every end of message (both) take about 42-47 ms
// instead of well under a millisecond (measured before the fix: Postfix end
// of data 42.6 ms, Sendmail MAIL 44.7 ms; after: 0.7 ms and 0.4 ms). The
// stall is the kernel's fixed delayed-ACK timer, so the bound below is far
// from both sides.
func TestNoDelayedAckStall(t *testing.T) {
	const bound = 20 * time.Millisecond
	forEachMTA(t, func(t *testing.T, kind string) {
		e := newEnv(t, kind, "[session]\nmax_messages = 1000\n")
		c := e.dial(t, "latency")
		var mail, eom []time.Duration
		for i := 0; i < 25; i++ {
			start := time.Now()
			if r := c.cmd("MAIL", "MAIL FROM:<latency@client.test>"); r.code != 250 {
				t.Fatalf("MAIL %d: %v\n%s", i, r, c.transcript())
			}
			mail = append(mail, time.Since(start))
			if r := c.cmd("RCPT", "RCPT TO:<rcpt@"+sinkDomain+">"); r.code != 250 {
				t.Fatalf("RCPT %d: %v", i, r)
			}
			if r := c.cmd("DATA", "DATA"); r.code != 354 {
				t.Fatalf("DATA %d: %v", i, r)
			}
			id := fmt.Sprintf("<latency-%s-%d@client.test>", kind, i)
			start = time.Now()
			if err := c.write("DATA", []byte("Subject: latency\r\nMessage-ID: "+id+"\r\n\r\nhello\r\n.\r\n")); err != nil {
				t.Fatal(err)
			}
			if r := c.readReply("end of data"); r.code != 250 {
				t.Fatalf("end of data %d: %v", i, r)
			}
			eom = append(eom, time.Since(start))
			e.want[id]++
		}
		c.quit()
		for _, m := range []struct {
			what string
			d    []time.Duration
		}{{"MAIL", mail}, {"end of data", eom}} {
			med := median(m.d)
			t.Logf("%s %s: median %v over %d round trips", kind, m.what, med, len(m.d))
			if med > bound {
				t.Errorf("%s %s: median %v, want under %v (a delayed-ACK stall is ~40 ms)", kind, m.what, med, bound)
			}
		}
		e.delivered(t)
	})
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
