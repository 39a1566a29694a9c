package milter_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
	"github.com/sessioncap/sessioncap/milter"
)

// A client whose override allows it more must never be refused by the
// counts or bans of its neighbours in the same prefix, nor use up theirs.
func TestOverrideIsCountedApartFromItsPrefix(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.IPv4Prefix = 24
		r.Default.Frequency = limits.Frequency{MaxConnections: 2, Window: time.Minute, Ban: time.Hour}
		r.Default.Concurrency = limits.Concurrency{MaxPerAddress: 1}
		relay := limits.Defaults()
		relay.Frequency = limits.Frequency{}
		relay.Concurrency = limits.Concurrency{}
		r.Overrides = []limits.Override{{Networks: []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32")}, Policy: relay}}
	}))
	// the relay opens five sessions and keeps them open
	for i := 0; i < 5; i++ {
		if _, act := h.connect("192.0.2.10"); act.StopProcessing() {
			t.Fatalf("relay connection %d refused: %v", i+1, act)
		}
	}
	// its neighbour still has its own one session, and its own window
	if _, act := h.connect("192.0.2.11"); act.StopProcessing() {
		t.Fatalf("neighbour refused because of the relay's sessions: %v", act)
	}
	_, act := h.connect("192.0.2.12")
	wantReply(t, act, 421, "421 4.7.0 Too many concurrent connections from your network (limit 1); try again later")
	_, act = h.connect("192.0.2.13") // the neighbours' third connection: banned
	wantReply(t, act, 421, "421 4.7.0 Too many connections from your network (limit 2 per 1m); banned for 1h, try again later")
	// the ban of the /24 does not touch the relay
	if _, act := h.connect("192.0.2.10"); act.StopProcessing() {
		t.Fatalf("relay refused by its neighbours' ban: %v", act)
	}
}

// A reload that changes the prefix length keeps the bans made under the old
// one until they end.
func TestReloadOfPrefixLengthKeepsBans(t *testing.T) {
	rules := rulesWith(func(r *limits.Rules) {
		r.IPv4Prefix = 24
		r.Default.Frequency = limits.Frequency{MaxConnections: 1, Window: time.Minute, Ban: 10 * time.Minute}
	})
	h := start(t, rules)
	h.connect("192.0.2.1")
	if _, act := h.connect("192.0.2.2"); !act.StopProcessing() {
		t.Fatal("second connection of the /24 not refused")
	}
	h.reloadWithIPv4Prefix(rules, 32)
	h.clock.Add(time.Minute)
	_, act := h.connect("192.0.2.3")
	wantReply(t, act, 421, "421 4.7.0 Your network is temporarily banned for too many connections; try again in 9m")
	h.clock.Add(9 * time.Minute)
	if _, act := h.connect("192.0.2.3"); act.StopProcessing() {
		t.Fatalf("after the old ban ended: %v", act)
	}
}

// A manual ban longer than any rule's ban survives a reload that changes
// the prefix length too, until it ends.
func TestReloadOfPrefixLengthKeepsManualBans(t *testing.T) {
	rules := rulesWith(func(r *limits.Rules) {
		r.IPv4Prefix = 24
		r.Default.Frequency = limits.Frequency{MaxConnections: 100, Window: time.Minute, Ban: 5 * time.Minute}
	})
	h := start(t, rules)
	if _, err := h.store.Ban(context.Background(), "freq:192.0.2.0/24", 24*time.Hour, "manual: ticket 7"); err != nil {
		t.Fatal(err)
	}
	h.reloadWithIPv4Prefix(rules, 32)
	h.clock.Add(time.Hour)
	_, act := h.connect("192.0.2.3")
	wantReply(t, act, 421, "421 4.7.0 Your network is temporarily banned by the administrator of this server; try again in 23h")
	h.clock.Add(23 * time.Hour)
	if _, act := h.connect("192.0.2.3"); act.StopProcessing() {
		t.Fatalf("after the manual ban ended: %v", act)
	}
}

// frequency.ban = 0 refuses the connections over the limit without banning:
// a client that keeps trying gets through again once its rate drops, and the
// reply does not speak of a ban.
func TestFrequencyWithoutBan(t *testing.T) {
	h := start(t, rulesWith(func(r *limits.Rules) {
		r.Default.Frequency = limits.Frequency{MaxConnections: 2, Window: time.Minute}
	}))
	for i := 0; i < 2; i++ {
		h.connect("198.51.100.7")
	}
	for i := 0; i < 20; i++ { // keeps trying, once a second
		_, act := h.connect("198.51.100.7")
		wantReply(t, act, 421, "421 4.7.0 Too many connections from your network (limit 2 per 1m); try again later")
		h.clock.Add(time.Second)
	}
	h.clock.Add(2 * time.Minute)
	if _, act := h.connect("198.51.100.7"); act.StopProcessing() {
		t.Fatalf("refused attempts kept the client over its limit: %v", act)
	}
	if got := value(t, h.reg, "sessioncap_bans_total", "mode", "enforce"); got != 0 {
		t.Fatalf("bans_total %v without a ban configured", got)
	}
}

// A reused milter connection (QUIT_NC) negotiated without body events keeps
// the rules it negotiated with after a reload adds a byte cap; a new milter
// connection enforces the new cap.
func TestReusedConnectionKeepsNegotiatedRules(t *testing.T) {
	noBytes := rulesWith(func(r *limits.Rules) {
		r.Default.Session = limits.Session{MaxMessages: 2}
	})
	h := start(t, noBytes)
	m, _ := h.connect("192.0.2.1")
	if m.s.ProtocolOption(gomilter.OptNoBody) == false {
		t.Fatal("body events negotiated without a byte cap")
	}
	withBytes := *noBytes
	withBytes.Default.Session = limits.Session{MaxMessages: 2, MaxBytes: 1000, Overrun: limits.OverrunAccept}
	if err := h.srv.SetRules(&withBytes); err != nil {
		t.Fatal(err)
	}
	if err := m.s.Reset(m.macros); err != nil {
		t.Fatal(err)
	}
	if _, err := m.s.Conn("client.example", gomilter.FamilyInet, 40000, "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.s.Helo("client.example"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // the message cap of the old rules still holds
		if act, stage := m.send("SIZE=5000", 1, 500); act != nil {
			t.Fatalf("message %d refused at %s: %v", i+1, stage, act)
		}
	}
	act, _ := m.send("", 1, 10)
	wantReply(t, act, 421, "421 4.7.0 Too many messages in this session (limit 2); reconnect to send more")
	if !strings.Contains(h.logs.String(), "keeps the previous rules") {
		t.Fatalf("no log line about the kept rules:\n%s", h.logs)
	}
	// a new milter connection negotiates bodies and enforces the byte cap
	n, _ := h.connect("192.0.2.2")
	if n.s.ProtocolOption(gomilter.OptNoBody) {
		t.Fatal("new connection did not negotiate body events for the byte cap")
	}
	n.send("", 1, 2000)
	act, _ = n.send("SIZE=10", 1, 10)
	wantReply(t, act, 421, "421 4.7.0 Too much data in this session (limit 1000 bytes); reconnect to send more")
}

// With store.on_error = "tempfail" a store that is down refuses the
// connection with 421 at connect instead of letting it through unchecked.
func TestStoreUnavailableRefuses(t *testing.T) {
	h := startWith(t, limits.DefaultRules(), func(c *milter.Config) { c.Store = unavailableStore{} })
	_, act := h.connect("192.0.2.1")
	wantReply(t, act, 421, "421 4.3.0 Temporary problem with the connection limits; try again later")
	if got := h.refusals("store_unavailable", "connect", "enforce"); got != 1 {
		t.Fatalf("store_unavailable refusals %v", got)
	}
}

type unavailableStore struct{}

func (unavailableStore) Hit(context.Context, string, int64, limits.Rate) (limits.Hit, error) {
	return limits.Hit{}, fmt.Errorf("redis: %w", counters.ErrUnavailable)
}

// reloadWithIPv4Prefix reloads rules with another IPv4 prefix length.
func (h *harness) reloadWithIPv4Prefix(rules *limits.Rules, bits int) {
	h.t.Helper()
	r := *rules
	r.IPv4Prefix = bits
	if err := h.srv.SetRules(&r); err != nil {
		h.t.Fatal(err)
	}
}
