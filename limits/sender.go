package limits

import (
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// SenderNetworks is the rule on sender domains that send from too many
// networks (ASSP's maxSMTPdomainIP, done better): once a MAIL FROM domain
// has been seen from MaxNetworks networks within Window, MAIL FROM for that
// domain is refused, but only from networks not already counted for it, so
// the domain's real servers keep sending while a botnet forging it does
// not (see Check for how "within Window" is counted). A zero MaxNetworks
// disables the rule.
type SenderNetworks struct {
	MaxNetworks   int64
	Window        time.Duration
	IPv4Prefix    int      // bits of an IPv4 address that make its network
	IPv6Prefix    int      // bits of an IPv6 address that make its network
	ExemptDomains []string // lowercase; a domain and its subdomains are exempt
	Mode          Mode     // "" for Rules.Mode
}

// DefaultSenderNetworks is the built-in rule: off, with ASSP's network sizes.
func DefaultSenderNetworks() SenderNetworks {
	return SenderNetworks{Window: 24 * time.Hour, IPv4Prefix: 24, IPv6Prefix: 64}
}

// The key kinds of the sender-networks rule. Each key belongs to one fixed
// window of the rule (Window long, aligned to Unix time, numbered by
// Epoch): snet:<epoch>:<domain>:<network> says a network sent for a domain
// in that window; sdom:<epoch>:<domain> counts the networks that did;
// snew:<epoch>:<domain> counts those of them not seen in the window before.
const (
	KeySenderNetwork = "snet"
	KeySenderDomain  = "sdom"
	KeySenderNew     = "snew"
)

// maxDomain bounds a domain name (RFC 1035: 253 characters in text form).
const maxDomain = 253

// SenderDomain returns the lowercased domain of a MAIL FROM address ("<a@b>"
// or "a@b", ESMTP parameters not included), and false for the null sender,
// an address without a domain, or a domain that cannot be a key (white
// space, control characters, ':', brackets, longer than 253 bytes). An
// address literal ("a@[192.0.2.1]") has no domain to count. Internationalised
// domains are only lowercased, not converted to their A-label form
// (golang.org/x/net/idna is not a dependency): a domain written in U-labels
// and in A-labels counts as two domains.
func SenderDomain(from string) (string, bool) {
	from = strings.TrimSpace(from)
	from = strings.TrimSuffix(strings.TrimPrefix(from, "<"), ">")
	i := strings.LastIndexByte(from, '@')
	if i < 0 {
		return "", false
	}
	d := strings.TrimSuffix(from[i+1:], ".")
	if d == "" || len(d) > maxDomain {
		return "", false
	}
	for _, c := range d {
		if c <= ' ' || c == 0x7f || c == ':' || c == '[' || c == ']' || c == '@' || c == '<' || c == '>' || c == '\uFFFD' {
			return "", false
		}
	}
	return strings.ToLower(d), true
}

// Exempt reports whether domain (lowercase) is an exempt domain or below one.
func (sn *SenderNetworks) Exempt(domain string) bool {
	for _, e := range sn.ExemptDomains {
		if domain == e || strings.HasSuffix(domain, "."+e) {
			return true
		}
	}
	return false
}

// Network returns the network addr is counted under for this rule.
func (sn *SenderNetworks) Network(addr netip.Addr) netip.Prefix {
	addr = addr.Unmap().WithZone("")
	bits := sn.IPv6Prefix
	if addr.Is4() {
		bits = sn.IPv4Prefix
	}
	p, err := addr.Prefix(bits)
	if err != nil {
		return netip.PrefixFrom(addr, addr.BitLen())
	}
	return p
}

// HitFunc is a store's atomic primitive as a front-end calls it.
type HitFunc func(key string, n int64, r Rate) (Hit, error)

// Epoch numbers the fixed window of the rule that now falls in (a Window
// under 1ms counts as 1ms, the stores' unit).
func (sn *SenderNetworks) Epoch(now time.Time) int64 {
	return now.UnixMilli() / max(sn.Window.Milliseconds(), 1)
}

// keyRate is the store rule of every key of the rule: a key is read until
// the end of the window after its own, less than two windows after its
// first hit, so with a store window of two rule windows its count never
// slides (no fixed window of the store's rolls over while it is read). Max
// counts networks: Ban 0, so a hit over it is refused and not counted.
func (sn *SenderNetworks) keyRate(max int64) Rate {
	return Rate{Max: max, Window: 2 * sn.Window, Reason: string(LimitSenderNetworks)}
}

// unlimited is the Max of counts that never refuse.
const unlimited = 1 << 31

// KeyWindow is the store window of the rule's keys: how long the state
// file must keep them (see Rules.KeyWindow).
func (sn *SenderNetworks) KeyWindow() time.Duration { return 2 * sn.Window }

// Check decides MAIL FROM of domain from a client at addr at now through
// the store primitive hit. A network counts for the domain in every fixed
// window in which it sends; the networks counted within the window are
// those of the previous fixed window plus those new in this one (not seen
// in the previous). A network seen in this window or the previous is
// known, and is never refused: the domain's own servers keep sending, and
// as long as they do they keep the domain's count up (a known network is
// counted again in each new window by its first MAIL). A new network is
// refused when the networks counted within the window already reach
// MaxNetworks; a refused network is not counted. Store calls:
//
//  1. peek snet:<e>:<domain>:<network> (n = 0: counts and stores nothing):
//     seen in this window → allow (one call for a steady sender);
//  2. peek snet:<e-1>:…: seen in the previous window → count it in sdom:<e>
//     and snet:<e> and allow (four calls, once a window per network);
//  3. else peek sdom:<e-1> (the previous window's networks, p) and hit
//     snew:<e> under Max = MaxNetworks - p; crossed (or p already at the
//     limit) → refuse, nothing stored; else count it in sdom:<e> and snet:<e>
//     and allow (six calls, once per new network).
//
// The keys are not updated atomically together: two MAILs of one domain
// from two new networks at the same moment can both pass step 3 before
// either is stored. A race admits at most one or two networks more than
// MaxNetworks, for one window; that is acceptable for a rule that
// separates a handful of real servers from hundreds of bots, and keeps the
// store to its one atomic primitive (no script of its own). The fixed
// windows come from now, the caller's clock: in a fleet whose clocks
// differ, a network near a window's edge may be counted in both windows
// (counted once more, never lost). State is bounded: per domain and window
// at most about 2 × MaxNetworks network keys plus two counts (a refused
// network stores nothing), each key expiring after two store windows; the
// number of domains is bounded like prefixes (addresses.max_tracked in
// memory, TTLs in Redis).
func (sn *SenderNetworks) Check(domain string, addr netip.Addr, now time.Time, hit HitFunc, replies Replies) (*Refusal, error) {
	if sn.MaxNetworks <= 0 || sn.Window <= 0 {
		return nil, nil
	}
	e := sn.Epoch(now)
	network := sn.Network(addr).String()
	pair := func(e int64) string {
		return KeySenderNetwork + ":" + strconv.FormatInt(e, 10) + ":" + domain + ":" + network
	}
	count := func(kind string, e int64) string { return kind + ":" + strconv.FormatInt(e, 10) + ":" + domain }
	seen := sn.keyRate(unlimited)
	h, err := hit(pair(e), 0, seen)
	if err != nil || h.Count > 0 {
		return nil, err
	}
	if h, err = hit(pair(e-1), 0, seen); err != nil {
		return nil, err
	}
	if h.Count == 0 { // a new network
		prev, err := hit(count(KeySenderDomain, e-1), 0, seen)
		if err != nil {
			return nil, err
		}
		value := prev.Count + 1
		if prev.Count < sn.MaxNetworks {
			h, err := hit(count(KeySenderNew, e), 1, sn.keyRate(sn.MaxNetworks-prev.Count))
			if err != nil {
				return nil, err
			}
			if !h.Crossed {
				value = 0
			} else {
				value = prev.Count + h.Count + 1
			}
		}
		if value > 0 {
			return replies.refusal(ReplySenderNetworks, LimitSenderNetworks, StageMail, value, sn.MaxNetworks, sn.Window, 0), nil
		}
	}
	if _, err = hit(count(KeySenderDomain, e), 1, seen); err != nil {
		return nil, err
	}
	_, err = hit(pair(e), 1, seen)
	return nil, err
}
