// Package limits decides whether an SMTP session, transaction or connection
// stays within the configured caps. It is pure policy: no I/O, no goroutines,
// no clock of its own (every time is an argument).
package limits

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Limit names a rule that can refuse. The values are used as metric labels
// and log values, so the set is closed.
type Limit string

// The limits sessioncap enforces.
const (
	LimitSessionMessages    Limit = "session_messages"
	LimitSessionBytes       Limit = "session_bytes"
	LimitSessionRecipients  Limit = "session_recipients"
	LimitFrequency          Limit = "frequency"
	LimitBanned             Limit = "banned"
	LimitConcurrencyAddress Limit = "concurrency_address"
	LimitConcurrencyTotal   Limit = "concurrency_total"
	LimitStoreUnavailable   Limit = "store_unavailable"
	LimitDeny               Limit = "deny"
	LimitSenderNetworks     Limit = "sender_networks"
	LimitErrors             Limit = "errors"
	// LimitQuota (quota.go) is the limit of every [[rate]] rule.
)

// AllLimits lists every Limit, in documentation order.
var AllLimits = []Limit{
	LimitSessionMessages, LimitSessionBytes, LimitSessionRecipients,
	LimitFrequency, LimitBanned, LimitConcurrencyAddress, LimitConcurrencyTotal,
	LimitStoreUnavailable, LimitDeny, LimitSenderNetworks, LimitErrors, LimitQuota,
}

// Stage is the SMTP transaction boundary at which a refusal is given.
type Stage string

// The stages at which sessioncap answers.
const (
	StageConnect Stage = "connect"
	StageMail    Stage = "mail"
	StageRcpt    Stage = "rcpt"
	StageEOM     Stage = "eom"
)

// AllStages lists every Stage in SMTP order.
var AllStages = []Stage{StageConnect, StageMail, StageRcpt, StageEOM}

// Mode says what a rule does when it would refuse: give the reply
// (enforce), only log and count it (monitor), let the mail through with a
// header that says which limit it crossed (tag), or nothing at all, the rule
// being neither counted nor decided (off). The empty Mode in a Policy means
// the top-level Rules.Mode.
type Mode string

// The modes.
const (
	ModeEnforce Mode = "enforce"
	ModeMonitor Mode = "monitor"
	ModeTag     Mode = "tag"
	ModeOff     Mode = "off"
)

// AllModes lists the modes under which a refusal is counted (the values of
// the metrics' "mode" label); ModeOff decides nothing, so counts nothing.
var AllModes = []Mode{ModeEnforce, ModeMonitor, ModeTag}

// Valid reports whether m is one of the four modes.
func (m Mode) Valid() bool {
	switch m {
	case ModeEnforce, ModeMonitor, ModeTag, ModeOff:
		return true
	}
	return false
}

// Refuses reports whether a refusal under m is given to the client.
func (m Mode) Refuses() bool { return m == ModeEnforce }

// Decides reports whether a rule under m is counted and decided at all.
func (m Mode) Decides() bool { return m != ModeOff }

// Overrun says what happens to a message whose real size crosses the session
// byte cap when MAIL FROM gave no SIZE warning.
type Overrun string

// The overrun policies.
const (
	// OverrunAccept takes the crossing message and refuses the next MAIL.
	OverrunAccept Overrun = "accept"
	// OverrunTempfail answers 452 4.3.1 at end of message; the sender keeps
	// the message and retries it on a new connection.
	OverrunTempfail Overrun = "tempfail"
)

// Session holds the caps of one SMTP session. Zero disables a cap.
type Session struct {
	MaxMessages   int64
	MaxBytes      int64
	MaxRecipients int64
	Overrun       Overrun
	Mode          Mode // "" for Rules.Mode
}

// Frequency is the connection-frequency rule: more than MaxConnections
// connections within Window bans the address prefix for Ban. A zero
// MaxConnections disables the rule.
type Frequency struct {
	MaxConnections int64
	Window         time.Duration
	Ban            time.Duration
	Mode           Mode // "" for Rules.Mode; it also governs the bans the rule started
}

// Concurrency caps open sessions per address prefix and in total. Zero
// disables a cap.
type Concurrency struct {
	MaxPerAddress int64
	MaxTotal      int64
	Mode          Mode // "" for Rules.Mode
}

// Policy is the full set of caps that applies to one client.
type Policy struct {
	Session     Session
	Frequency   Frequency
	Concurrency Concurrency
	Errors      Errors
}

// Defaults returns the built-in policy.
func Defaults() Policy {
	return Policy{
		Session: Session{
			MaxMessages:   100,
			MaxBytes:      100 << 20,
			MaxRecipients: 1000,
			Overrun:       OverrunAccept,
		},
		Frequency: Frequency{
			MaxConnections: 120,
			Window:         time.Minute,
			Ban:            5 * time.Minute,
		},
		Concurrency: Concurrency{
			MaxPerAddress: 50,
			MaxTotal:      0,
		},
		Errors: Errors{Window: time.Hour, Ban: time.Hour},
	}
}

// Override replaces the policy for clients it matches. A nil Authenticated
// matches either; empty Networks matches every address; empty Users and
// SenderDomains match every session. An override with Users or
// SenderDomains matches from MAIL FROM on, never at connect.
type Override struct {
	Networks      []netip.Prefix
	Authenticated *bool
	// Users are SMTP AUTH identities ({auth_authen}): exact, or "@domain"
	// for every user ending in @domain (case-insensitive).
	Users []string
	// SenderDomains are MAIL FROM domains (lowercase), each matching itself
	// and its subdomains.
	SenderDomains []string
	// Name keys the override's store state (see Scope); "" keys it by
	// what it matches.
	Name   string
	Policy Policy // complete: the defaults with the override's values applied
	// Quotas replace the limit or mode of quotas ([[override.rate]]).
	Quotas []QuotaOverride
}

// Client is what is known of a client when a policy is chosen: at connect
// only its address, from MAIL FROM on its authentication and sender.
type Client struct {
	Addr          netip.Addr
	HasAddr       bool   // false for a session without an IP address
	Authenticated bool   // SMTP AUTH succeeded
	User          string // {auth_authen}, "" when unknown
	SenderDomain  string // lowercase MAIL FROM domain, "" for none (null sender, or not yet known)
}

func (o *Override) matches(c Client) bool {
	if o.Authenticated != nil && *o.Authenticated != c.Authenticated {
		return false
	}
	if len(o.Users) > 0 && !matchUser(o.Users, c.User) {
		return false
	}
	if len(o.SenderDomains) > 0 && !matchDomain(o.SenderDomains, c.SenderDomain) {
		return false
	}
	if len(o.Networks) == 0 {
		return true
	}
	return c.HasAddr && containsAddr(o.Networks, c.Addr)
}

// Scope is the scope of the store keys of clients o applies to (see
// StoreKey): "override.<Name>" for a named override, else "override-"
// and 12 hex digits of a hash of what it matches (its networks,
// authenticated, users and sender domains, each list in any order). It
// does not depend on the override's position, so adding or removing
// another override keeps every ban and window of this one; renaming it, or
// changing what an unnamed one matches, changes it (Engine.SetRules then
// keeps its bans in force under the old scope until they end).
func (o *Override) Scope() string {
	if o.Name != "" {
		return "override." + o.Name
	}
	var buf [len("override-") + 12]byte
	n := copy(buf[:], "override-")
	h := o.matchHash()
	for i := len(buf) - 1; i >= n; i-- {
		buf[i] = "0123456789abcdef"[h&0xf]
		h >>= 4
	}
	return string(buf[:])
}

// matchHash hashes what o matches without allocating (Scope runs at every
// connection): each list element is hashed alone (FNV-1a, then mixed), and
// a list is the sum of its elements' hashes, so the order of a list does
// not matter; the lists are told apart by a tag hashed into each element.
func (o *Override) matchHash() uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	fnvString := func(h uint64, s string) uint64 {
		for i := 0; i < len(s); i++ {
			h = (h ^ uint64(s[i])) * prime
		}
		return h
	}
	mix := func(h uint64) uint64 { // splitmix64's finalizer
		h ^= h >> 30
		h *= 0xbf58476d1ce4e5b9
		h ^= h >> 27
		h *= 0x94d049bb133111eb
		return h ^ h>>31
	}
	var sum uint64
	for _, n := range o.Networks {
		n = n.Masked()
		h := fnvString(offset, "n")
		for _, b := range n.Addr().As16() {
			h = (h ^ uint64(b)) * prime
		}
		if n.Addr().Is4() {
			h = (h ^ 4) * prime
		}
		sum += mix((h ^ uint64(n.Bits())) * prime)
	}
	for _, u := range o.Users {
		sum += mix(fnvString(fnvString(offset, "u"), u))
	}
	for _, d := range o.SenderDomains {
		sum += mix(fnvString(fnvString(offset, "d"), d))
	}
	auth := "a"
	if o.Authenticated != nil {
		auth = strconv.FormatBool(*o.Authenticated)
	}
	return mix(sum + mix(fnvString(offset, auth)))
}

// matchText is what o matches, in one canonical text.
func (o *Override) matchText() string {
	list := func(tag string, v []string) string {
		v = slices.Clone(v)
		slices.Sort(v)
		return tag + "=" + strings.Join(v, ",") + "\n"
	}
	nets := make([]string, len(o.Networks))
	for i, n := range o.Networks {
		nets[i] = n.Masked().String()
	}
	auth := "any"
	if o.Authenticated != nil {
		auth = strconv.FormatBool(*o.Authenticated)
	}
	return list("networks", nets) + "authenticated=" + auth + "\n" + list("users", o.Users) + list("sender_domains", o.SenderDomains)
}

// ValidOverrideName reports whether s can name an override: 1 to 64
// letters, digits, '-' and '_'.
func ValidOverrideName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// AfterConnect reports whether o can only match from MAIL FROM on.
func (o *Override) AfterConnect() bool {
	return len(o.Users) > 0 || len(o.SenderDomains) > 0 || (o.Authenticated != nil && *o.Authenticated)
}

func matchUser(users []string, user string) bool {
	if user == "" {
		return false
	}
	for _, u := range users {
		if strings.HasPrefix(u, "@") {
			if len(user) > len(u) && strings.EqualFold(user[len(user)-len(u):], u) {
				return true
			}
		} else if u == user {
			return true
		}
	}
	return false
}

func matchDomain(domains []string, d string) bool {
	if d == "" {
		return false
	}
	for _, e := range domains {
		if d == e || strings.HasSuffix(d, "."+e) {
			return true
		}
	}
	return false
}

func containsAddr(nets []netip.Prefix, addr netip.Addr) bool {
	for _, n := range nets {
		if n.Contains(addr) {
			return true
		}
	}
	return false
}

// Deny lists networks refused at connect whatever else applies: a policy,
// not a limit, so its reply may be 5xx.
type Deny struct {
	Networks []netip.Prefix
	Mode     Mode // "" for Rules.Mode
}

// Rules is a complete, validated configuration of the policy.
type Rules struct {
	Mode                Mode
	Deny                Deny
	SenderNetworks      SenderNetworks
	Default             Policy
	ExemptNetworks      []netip.Prefix
	ExemptAuthenticated bool
	Overrides           []Override
	IPv4Prefix          int // bits kept of an IPv4 address to form its key
	IPv6Prefix          int // bits kept of an IPv6 address to form its key
	Replies             Replies
	// TagHeader is the header added to the messages of a session that a
	// limit in tag mode would have refused.
	TagHeader string
	// Quotas are the [[rate]] rules, in configuration order (see quota.go).
	Quotas []Quota
}

// DefaultTagHeader is the built-in Rules.TagHeader.
const DefaultTagHeader = "X-Sessioncap"

// DefaultRules returns the built-in rules.
func DefaultRules() *Rules {
	return &Rules{
		Mode:       ModeEnforce,
		Default:    Defaults(),
		IPv4Prefix: 32,
		IPv6Prefix: 64,
		Replies:    DefaultReplies(),
		TagHeader:  DefaultTagHeader,

		SenderNetworks: DefaultSenderNetworks(),
	}
}

// Validate reports the first inconsistency in r, for rules built in code.
func (r *Rules) Validate() error {
	if !r.Mode.Valid() {
		return fmt.Errorf("limits: unknown mode %q", r.Mode)
	}
	bad := ""
	for _, m := range []Mode{r.Deny.Mode, r.SenderNetworks.Mode} {
		if m != "" && !m.Valid() {
			bad = string(m)
		}
	}
	r.any(func(p *Policy) bool {
		for _, m := range []Mode{p.Session.Mode, p.Frequency.Mode, p.Concurrency.Mode, p.Errors.Mode} {
			if m != "" && !m.Valid() {
				bad = string(m)
				return true
			}
		}
		return false
	})
	if bad != "" {
		return fmt.Errorf("limits: unknown mode %q", bad)
	}
	names := map[string]bool{}
	for i := range r.Overrides {
		n := r.Overrides[i].Name
		if n == "" {
			continue
		}
		if !ValidOverrideName(n) {
			return fmt.Errorf("limits: override name %q: use 1 to 64 letters, digits, '-' and '_'", n)
		}
		if names[n] {
			return fmt.Errorf("limits: override name %q given twice", n)
		}
		names[n] = true
	}
	var inert *Errors
	r.any(func(p *Policy) bool {
		if p.Errors.windowOn() && p.Errors.Ban <= 0 {
			inert = &p.Errors
		}
		return inert != nil
	})
	if inert != nil {
		return fmt.Errorf("limits: errors window (max %d per %v) without a ban refuses nothing: set a ban, or max_per_window 0", inert.MaxPerWindow, inert.Window)
	}
	if r.NeedsTagging() && !ValidHeaderName(r.TagHeader) {
		return fmt.Errorf("limits: tag header %q is not a valid header name", r.TagHeader)
	}
	if err := r.ValidateQuotas(); err != nil {
		return err
	}
	if r.IPv4Prefix < 1 || r.IPv4Prefix > 32 {
		return fmt.Errorf("limits: ipv4 prefix %d out of range 1..32", r.IPv4Prefix)
	}
	if r.IPv6Prefix < 1 || r.IPv6Prefix > 128 {
		return fmt.Errorf("limits: ipv6 prefix %d out of range 1..128", r.IPv6Prefix)
	}
	return r.Replies.Validate()
}

// Denied renders the refusal of a client in [deny] networks, nil for
// others. It is decided before exemptions: an address both exempt and
// denied is denied (list the exception narrower in exempt and leave it out
// of deny).
func (r *Rules) Denied(addr netip.Addr) *Refusal {
	if !containsAddr(r.Deny.Networks, addr) {
		return nil
	}
	return r.Replies.refusal(ReplyDeny, LimitDeny, StageConnect, 0, 0, 0, 0)
}

// ForConnect returns the policy for a new connection from addr, the scope of
// the store keys it counts under ("" for the default policy, the
// override's Scope for an override) and whether addr is exempt from every
// limit. At connect nobody is authenticated yet, so overrides that require
// authentication do not match.
func (r *Rules) ForConnect(addr netip.Addr) (p Policy, scope string, exempt bool) {
	if containsAddr(r.ExemptNetworks, addr) {
		return Policy{}, "", true
	}
	i := r.overrideFor(Client{Addr: addr, HasAddr: true})
	if i < 0 {
		return r.Default, "", false
	}
	return r.Overrides[i].Policy, r.Scope(i), false
}

// Scope names the store-key scope of override i (see StoreKey and
// Override.Scope): "" for the default policy (i < 0).
func (r *Rules) Scope(i int) string {
	if i < 0 {
		return ""
	}
	return r.Overrides[i].Scope()
}

// ScopeBefore returns the scope that r, rules a reload replaced by now,
// gave the override whose scope under now is scope, when that override
// matches from MAIL FROM on (its clients are not known at connect): the
// override of r with the same scope, or else the one matching the same
// clients (renamed). ok is false for any other scope, or when r has no
// such override.
func (r *Rules) ScopeBefore(now *Rules, scope string) (old string, ok bool) {
	if scope == "" {
		return "", false
	}
	var cur *Override
	for i := range now.Overrides {
		if now.Overrides[i].Scope() == scope {
			cur = &now.Overrides[i]
			break
		}
	}
	if cur == nil || !cur.AfterConnect() {
		return "", false
	}
	match := cur.matchText()
	for i := range r.Overrides {
		if o := &r.Overrides[i]; o.Scope() == scope || o.matchText() == match {
			return o.Scope(), true
		}
	}
	return "", false
}

// SameKeys reports whether every client gets the same store keys under r
// and o: the same prefix lengths, and the same overrides (by scope and by
// what they match) in the same order.
func (r *Rules) SameKeys(o *Rules) bool {
	if r.IPv4Prefix != o.IPv4Prefix || r.IPv6Prefix != o.IPv6Prefix || len(r.Overrides) != len(o.Overrides) {
		return false
	}
	for i := range r.Overrides {
		a, b := &r.Overrides[i], &o.Overrides[i]
		if a.Scope() != b.Scope() || a.matchText() != b.matchText() {
			return false
		}
	}
	return true
}

// ExemptAddr reports whether addr is in the exempt networks.
func (r *Rules) ExemptAddr(addr netip.Addr) bool { return containsAddr(r.ExemptNetworks, addr) }

// ForTransaction returns the session caps for a transaction of a client at
// addr (hasAddr false for a session without an IP address) and whether the
// session is exempt from them.
func (r *Rules) ForTransaction(addr netip.Addr, hasAddr, authenticated bool) (s Session, exempt bool) {
	return r.ForClient(Client{Addr: addr, HasAddr: hasAddr, Authenticated: authenticated})
}

// ForClient is ForTransaction with the user and sender known (from MAIL
// FROM on), so that overrides on users and sender domains apply.
func (r *Rules) ForClient(c Client) (s Session, exempt bool) {
	if c.HasAddr && containsAddr(r.ExemptNetworks, c.Addr) {
		return Session{}, true
	}
	if c.Authenticated && r.ExemptAuthenticated {
		return Session{}, true
	}
	return r.PolicyOf(c).Session, false
}

// PolicyOf returns the policy of the first override matching c, or the
// default policy; exemptions aside.
func (r *Rules) PolicyOf(c Client) Policy {
	if i := r.overrideFor(c); i >= 0 {
		return r.Overrides[i].Policy
	}
	return r.Default
}

// OverrideFor returns the index of the first override matching c, -1 for
// none (check-config -explain).
func (r *Rules) OverrideFor(c Client) int { return r.overrideFor(c) }

// overrideFor returns the index of the first matching override, -1 for none.
func (r *Rules) overrideFor(c Client) int {
	for i := range r.Overrides {
		if r.Overrides[i].matches(c) {
			return i
		}
	}
	return -1
}

// NeedsBodies reports whether any policy has a byte cap, i.e. whether the MTA
// must send headers and body chunks at all.
func (r *Rules) NeedsBodies() bool {
	return r.any(func(p *Policy) bool { return p.Session.MaxBytes > 0 && r.ModeOf(p.Session.Mode).Decides() }) ||
		r.quotasNeed(func(q *Quota) bool { return q.Count == CountBytes })
}

// NeedsRecipients reports whether any policy has a recipient cap.
func (r *Rules) NeedsRecipients() bool {
	return r.any(func(p *Policy) bool { return p.Session.MaxRecipients > 0 && r.ModeOf(p.Session.Mode).Decides() }) ||
		r.NeedsErrors() || r.quotasNeed(func(q *Quota) bool { return q.Key == QuotaRecipient || q.Count == CountRecipients })
}

// NeedsErrors reports whether any policy counts errors, i.e. whether the MTA
// must send rejected recipients and unknown commands.
func (r *Rules) NeedsErrors() bool {
	return r.any(func(p *Policy) bool { return p.Errors.On() && r.ModeOf(p.Errors.Mode).Decides() })
}

// ModeOf resolves a rule's mode: its own, or the top-level one when unset.
func (r *Rules) ModeOf(m Mode) Mode {
	if m == "" {
		return r.Mode
	}
	return m
}

// LimitMode resolves the mode of limit l under policy p. A ban is governed
// by the frequency rule's mode, or, when that rule is off, by the top-level
// mode, so that manual bans still hold; the shared store's unavailability by
// the top-level mode.
func (r *Rules) LimitMode(p *Policy, l Limit) Mode {
	switch l {
	case LimitSessionMessages, LimitSessionBytes, LimitSessionRecipients:
		return r.ModeOf(p.Session.Mode)
	case LimitFrequency:
		return r.ModeOf(p.Frequency.Mode)
	case LimitBanned:
		if m := r.ModeOf(p.Frequency.Mode); m != ModeOff {
			return m
		}
	case LimitConcurrencyAddress, LimitConcurrencyTotal:
		return r.ModeOf(p.Concurrency.Mode)
	case LimitDeny:
		return r.ModeOf(r.Deny.Mode)
	case LimitSenderNetworks:
		return r.ModeOf(r.SenderNetworks.Mode)
	case LimitErrors:
		return r.ModeOf(p.Errors.Mode)
	}
	return r.Mode
}

// NeedsTagging reports whether any rule is in tag mode, i.e. whether the MTA
// must let sessioncap add headers.
func (r *Rules) NeedsTagging() bool {
	return r.Mode == ModeTag || (len(r.Deny.Networks) > 0 && r.ModeOf(r.Deny.Mode) == ModeTag) ||
		(r.SenderNetworks.MaxNetworks > 0 && r.ModeOf(r.SenderNetworks.Mode) == ModeTag) || r.any(func(p *Policy) bool {
		return r.ModeOf(p.Session.Mode) == ModeTag || r.ModeOf(p.Frequency.Mode) == ModeTag ||
			r.ModeOf(p.Concurrency.Mode) == ModeTag || (p.Errors.On() && r.ModeOf(p.Errors.Mode) == ModeTag)
	}) || r.quotasTag()
}

// ValidHeaderName reports whether s is a header field name (RFC 5322 ftext:
// printable ASCII but colon).
func ValidHeaderName(s string) bool {
	if s == "" || len(s) > 76 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' || c == ':' {
			return false
		}
	}
	return true
}

// Tag is what a limit in tag mode records instead of refusing: the header
// value "limit=<limit> value=<n> cap=<n>".
func (r *Refusal) Tag() string {
	return r.TagKey() + "value=" + strconv.FormatInt(r.Value, 10) + " cap=" + strconv.FormatInt(r.Cap, 10)
}

// TagKey is the start of Tag that tells one limit's header from another's:
// "limit=<limit> ", and "rule=<name> " for a quota, whose rules each get
// their own header.
func (r *Refusal) TagKey() string {
	if r.Rule != "" {
		return "limit=" + string(r.Limit) + " rule=" + r.Rule + " "
	}
	return "limit=" + string(r.Limit) + " "
}

func (r *Rules) any(f func(*Policy) bool) bool {
	if f(&r.Default) {
		return true
	}
	for i := range r.Overrides {
		if f(&r.Overrides[i].Policy) {
			return true
		}
	}
	return false
}

// Key returns the address prefix under which addr is counted: the address
// with IPv4-mapped IPv6 unmapped, masked to the configured prefix length.
func (r *Rules) Key(addr netip.Addr) netip.Prefix {
	addr = addr.Unmap().WithZone("")
	bits := r.IPv6Prefix
	if addr.Is4() {
		bits = r.IPv4Prefix
	}
	p, err := addr.Prefix(bits)
	if err != nil { // only for an invalid addr; the caller checked validity
		return netip.PrefixFrom(addr, addr.BitLen())
	}
	return p
}

// LongestBan returns the longest frequency or errors ban of any policy: how
// long bans keyed under these rules can outlive them.
func (r *Rules) LongestBan() time.Duration {
	var d time.Duration
	r.any(func(p *Policy) bool {
		d = max(d, p.Frequency.Ban)
		if p.Errors.MaxPerWindow > 0 {
			d = max(d, p.Errors.Ban)
		}
		return false
	})
	return d
}

// LongestWindow returns the longest frequency window of any policy (the
// windows of the other rules are in KeyWindows).
func (r *Rules) LongestWindow() time.Duration {
	var d time.Duration
	r.any(func(p *Policy) bool { d = max(d, p.Frequency.Window); return false })
	return d
}

// KeyWindows returns, for every kind of store key the rules count (the
// text before the key's first ':'), the longest store window any rule
// counts a key of that kind under: a key's window has expired, and need
// not be kept (in a state file), once two of these have passed since it
// started. A rule that counts keys of a new kind adds it here.
func (r *Rules) KeyWindows() map[string]time.Duration {
	w := map[string]time.Duration{
		KeyFrequency:     0,
		KeyErrors:        0,
		KeySenderNetwork: r.SenderNetworks.KeyWindow(),
		KeySenderDomain:  r.SenderNetworks.KeyWindow(),
		KeySenderNew:     r.SenderNetworks.KeyWindow(),
	}
	r.any(func(p *Policy) bool {
		w[KeyFrequency] = max(w[KeyFrequency], p.Frequency.Window)
		w[KeyErrors] = max(w[KeyErrors], p.Errors.Window)
		return false
	})
	return w
}
