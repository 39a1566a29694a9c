package milter_test

import (
	"bytes"
	"net"
	"strings"
	"testing"

	"github.com/sessioncap/sessioncap/limits"
)

// session is a whole milter session as raw packets, with the reply code each
// packet gets (0: none). The byte cap makes headers and body flow without
// replies; the header is larger than the guard's read buffer and the body
// chunk is a full 64 KiB one.
func rawSession() (packets [][]byte, replies []byte) {
	add := func(p []byte, reply byte) { packets = append(packets, p); replies = append(replies, reply) }
	add(optneg, 'O')
	add(frame('D', "C{client_addr}\x00192.0.2.1\x00"), 0)
	add(connectFrame, 'c')
	add(frame('D', "Mi\x004QUEUE1\x00"), 0)
	add(frame('M', "<a@example.org>\x00"), 'c')
	add(frame('R', "<b@example.net>\x00"), 'c')
	add(frame('L', "X-Long\x00"+strings.Repeat("v", 100000)+"\x00"), 0)
	add(frame('B', strings.Repeat("b", 65535)), 0)
	add(frame('E', ""), 'a')
	add(frame('A', ""), 0)
	add(frame('D', "Mi\x004QUEUE2\x00"), 0)
	add(frame('M', "<a@example.org>\x00"), 'c')
	return packets, replies
}

// TestGuardFramingIndependentOfSegmentation: the guard frames packets the
// same whether the MTA writes a whole session at once, packet by packet, or
// a byte at a time; oversized packets (a 100 KB header) take the pooled
// buffer and the session goes on.
func TestGuardFramingIndependentOfSegmentation(t *testing.T) {
	rules := rulesWith(func(r *limits.Rules) { r.Default.Session.MaxBytes = 1 << 20 })
	packets, replies := rawSession()
	var want []byte
	for _, r := range replies {
		if r != 0 {
			want = append(want, r)
		}
	}
	all := bytes.Join(packets, nil)
	// each writer returns the writes to make, in order
	write := map[string][][]byte{
		"all at once":      {all},
		"packet by packet": packets,
		"a byte at a time": func() (w [][]byte) { // OPTNEG to RCPT, then the rest
			for i := range 200 {
				w = append(w, all[i:i+1])
			}
			return append(w, all[200:])
		}(),
		"split inside the big packets": func() (w [][]byte) {
			for rest := all; len(rest) > 0; rest = rest[min(len(rest), 4093):] {
				w = append(w, rest[:min(len(rest), 4093)])
			}
			return w
		}(),
	}
	for name, w := range write {
		t.Run(name, func(t *testing.T) {
			h := start(t, rules)
			c, err := net.Dial("tcp", h.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			errc := make(chan error, 1)
			go func() {
				for _, b := range w {
					if _, err := c.Write(b); err != nil {
						errc <- err
						return
					}
				}
				errc <- nil
			}()
			var got []byte
			for range want {
				got = append(got, readFrame(t, c))
			}
			if err := <-errc; err != nil {
				t.Fatalf("writing: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("replies %q, want %q", got, want)
			}
			if n := value(t, h.reg, "sessioncap_milter_protocol_errors_total"); n != 0 {
				t.Fatalf("%v protocol errors", n)
			}
			if got := value(t, h.reg, "sessioncap_message_bytes_total"); got < 165000 {
				t.Fatalf("message bytes %v: the long header and the body were not counted", got)
			}
		})
	}
}
