package limits

import (
	"net/netip"
	"strings"
	"time"
)

// SenderNetworks is the rule on sender domains that send from too many
// networks (ASSP's maxSMTPdomainIP, done better): once a MAIL FROM domain
// has been seen from more than MaxNetworks networks within Window, MAIL FROM
// for that domain is refused, but only from networks not already counted for
// it, so the domain's real servers keep sending while a botnet forging it
// does not. A zero MaxNetworks disables the rule.
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

// The key kinds of the sender-networks rule.
const (
	KeySenderNetwork = "snet" // snet:<domain>:<network>: one network seen sending for a domain
	KeySenderDomain  = "sdom" // sdom:<domain>: the networks counted for a domain
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

// pairRate keeps a (domain, network) pair seen for Window; it never
// refuses (a pair is "seen" while its sliding count rounds to at least 1).
func (sn *SenderNetworks) pairRate() Rate {
	return Rate{Max: 1 << 31, Window: sn.Window}
}

// domainRate counts the networks of a domain: Ban 0, so a network over the
// limit is refused and not counted.
func (sn *SenderNetworks) domainRate() Rate {
	return Rate{Max: sn.MaxNetworks, Window: sn.Window, Reason: string(LimitSenderNetworks)}
}

// Check decides MAIL FROM of domain from a client at addr through the
// store primitive hit, in at most three calls:
//
//  1. peek the pair snet:<domain>:<network> (n = 0: counts and stores
//     nothing); seen within the window → hit it (n = 1, keeping it fresh)
//     and allow;
//  2. else hit sdom:<domain> under Rate{Max: MaxNetworks, Ban: 0}; crossed
//     → refuse, and the new network is not stored;
//  3. else hit the pair and allow.
//
// The two keys are not updated atomically together: two MAILs of one
// domain from two new networks at the same moment can both pass step 2
// before either pair is stored, and a network can be counted again in step
// 2 while its first pair write is in flight. A race admits at most one or
// two networks more than MaxNetworks, for one window; that is acceptable
// for a rule that separates a handful of real servers from hundreds of bots,
// and keeps the store to its one atomic primitive (no script of its own).
// State is bounded: per domain at most MaxNetworks pairs plus the domain
// key (a refused network stores nothing), and every key expires after two
// windows without hits; the number of domains is bounded like prefixes
// (addresses.max_tracked in memory, TTLs in Redis).
func (sn *SenderNetworks) Check(domain string, addr netip.Addr, hit HitFunc, replies Replies) (*Refusal, error) {
	if sn.MaxNetworks <= 0 || sn.Window <= 0 {
		return nil, nil
	}
	network := sn.Network(addr)
	pair := KeySenderNetwork + ":" + domain + ":" + network.String()
	h, err := hit(pair, 0, sn.pairRate())
	if err != nil {
		return nil, err
	}
	if h.Count > 0 {
		_, err = hit(pair, 1, sn.pairRate())
		return nil, err
	}
	h, err = hit(KeySenderDomain+":"+domain, 1, sn.domainRate())
	if err != nil {
		return nil, err
	}
	if h.Crossed {
		return replies.refusal(ReplySenderNetworks, LimitSenderNetworks, StageMail, h.Count+1, sn.MaxNetworks, sn.Window, 0), nil
	}
	_, err = hit(pair, 1, sn.pairRate())
	return nil, err
}
