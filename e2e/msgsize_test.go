package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestMessageSizeSource: with a byte cap, Sendmail reports the message size
// in {msg_size} (sessioncap asks for the macro; the .mc does not list it), so
// after the first message new milter connections get neither headers nor
// body and the cap is enforced from the macro. Postfix sends no
// {msg_size}: it keeps streaming, and the cap is enforced the same.
func TestMessageSizeSource(t *testing.T) {
	forEachMTA(t, func(t *testing.T, kind string) {
		e := newEnv(t, kind, "[session]\nmax_bytes = 100000\n")
		first := e.dial(t, "learn")
		e.mustAccept(t, first, "size-source-learn", 2000, false)
		first.quit()
		c := e.dial(t, "capped")
		e.mustAccept(t, c, "size-source-1", 60000, false)
		e.mustAccept(t, c, "size-source-2", 60000, false)
		next := e.send(t, c, "size-source-3", 2000, false)
		expectReply(t, "MAIL after 120000 bytes", next.mail, 421, "4.7.0 Too much data in this session (limit 100000 bytes)")
		e.delivered(t)

		var m map[string]float64
		err := waitFor(5*time.Second, func() error {
			m = e.d.metrics(t)
			if n := m[`sessioncap_message_size_source_total{source="stream"}`] + m[`sessioncap_message_size_source_total{source="msg_size"}`]; n != 3 {
				return fmt.Errorf("%w: %v sized messages", errNotYet, n)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%v\n%v", err, m)
		}
		stream, macro, unknown := m[`sessioncap_message_size_source_total{source="stream"}`],
			m[`sessioncap_message_size_source_total{source="msg_size"}`], m[`sessioncap_message_size_source_total{source="unknown"}`]
		switch kind {
		case "sendmail":
			if stream != 1 || macro != 2 {
				t.Errorf("sendmail: sizes from the stream %v, from {msg_size} %v; want 1 (the first message) and 2", stream, macro)
			}
		case "postfix":
			if stream != 3 || macro != 0 {
				t.Errorf("postfix: sizes from the stream %v, from {msg_size} %v; want 3 and 0", stream, macro)
			}
		}
		if unknown != 0 {
			t.Errorf("%v messages of unknown size", unknown)
		}
		// sessioncap counts what the MTA counts (Sendmail counts line ends
		// as one byte): within 5 % of the bytes sent.
		if b, sent := m["sessioncap_message_bytes_total"], float64(2000+2*60000); b < 0.95*sent || b > 1.05*sent {
			t.Errorf("message bytes %v, want within 5%% of %v", b, sent)
		}
	})
}
