package milter_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/sessioncap/sessioncap/limits"
)

// FuzzMailArgs drives MAIL FROM with arbitrary ESMTP arguments through the
// real server over a socket, on a session that already had one message
// accepted (so the first-message rule no longer lets every size through)
// under a byte cap, and checks the decision against an oracle computed from
// the SIZE value alone: refused with the SIZE reply iff a well-formed SIZE is
// more than what is left of the cap; a malformed SIZE never refuses and is
// counted in sessioncap_malformed_input_total{what="size_param"}.
func FuzzMailArgs(f *testing.F) {
	for _, s := range []string{
		"", "SIZE=0", "SIZE=100", "SIZE=600", "SIZE=601", "size=601", "SiZe=5000 BODY=8BITMIME",
		"BODY=8BITMIME SIZE=601", "BODY=8BITMIME SIZE=600", "SIZE=abc", "size=-1 BODY=8BITMIME",
		"SIZE=99999999999999999999", "SIZE=9223372036854775807", "SIZE= SIZE=5000", "SIZE=5000 SIZE=1",
		"SIZE=", "SIZE=1e9", " SIZE=601", "XSIZE=601", "SIZE=601\tBODY=7BIT",
	} {
		f.Add(s)
	}
	const (
		capBytes = 1000
		first    = 400 // bytes of the accepted first message: 600 are left
	)
	f.Fuzz(func(t *testing.T, args string) {
		if strings.ContainsRune(args, 0) || len(args) > 4000 {
			t.Skip("an MTA passes the arguments as one C string of bounded length")
		}
		h := start(t, rulesWith(func(r *limits.Rules) {
			r.Default.Session = limits.Session{MaxBytes: capBytes, Overrun: limits.OverrunAccept}
		}))
		m, _ := h.connect("192.0.2.120")
		if act, stage := m.send("", 1, first); act != nil {
			t.Fatalf("first message refused at %s: %v", stage, act)
		}
		malformedBefore := value(t, h.reg, "sessioncap_malformed_input_total", "what", "size_param")

		size, present, valid := sizeOracle(args)
		wantRefused := present && valid && size > capBytes-first

		act, err := m.s.Mail("sender@example.org", args)
		if err != nil {
			t.Fatalf("MAIL %q: %v", args, err)
		}
		if act.StopProcessing() != wantRefused {
			t.Fatalf("MAIL %q (SIZE present %v, valid %v, value %d; %d bytes left): refused=%v (%d %q), want refused=%v",
				args, present, valid, size, capBytes-first, act.StopProcessing(), act.SMTPCode, act.SMTPReply, wantRefused)
		}
		if wantRefused {
			wantReply(t, act, 421, fmt.Sprintf("421 4.7.0 Message would exceed this session's data limit (limit %d bytes); reconnect to send it", capBytes))
		}
		wantMalformed := malformedBefore
		if present && !valid {
			wantMalformed++
		}
		if got := value(t, h.reg, "sessioncap_malformed_input_total", "what", "size_param"); got != wantMalformed {
			t.Fatalf("MAIL %q: malformed size_param counter %v, want %v", args, got, wantMalformed)
		}
	})
}

// sizeOracle reads the SIZE parameter of MAIL FROM arguments as an MTA passes
// them (space-separated keyword=value, keywords case-insensitive, the first
// SIZE= counts). present is whether there is a SIZE= at all; valid is whether
// its value is a non-negative decimal number that fits in int64.
func sizeOracle(args string) (size int64, present, valid bool) {
	for _, f := range strings.Split(args, " ") {
		k, v, ok := strings.Cut(f, "=")
		if !ok || !strings.EqualFold(k, "SIZE") {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0, true, false
		}
		return n, true, true
	}
	return 0, false, false
}
