package limits

import (
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Quotas ([[rate]] in the configuration) count what clients send across
// sessions: messages, recipients or bytes per SASL user, sender, sender
// domain, recipient or client network within a sliding window. They are
// checked at MAIL (would one more message, or the SIZE= prediction, exceed
// the limit?) and at RCPT, and counted at end of message with the real size
// (recipients: at each accepted RCPT). The arithmetic is here; the stores
// keep the windows (counters.Store.Quota), the session core asks them.

// LimitQuota is the Limit of every quota refusal; the rule's name tells
// them apart in logs and in sessioncap_quota_refusals_total.
const LimitQuota Limit = "quota"

// QuotaKey is what a quota counts under.
type QuotaKey string

// The quota keys.
const (
	QuotaNetwork      QuotaKey = "network"       // the client's address prefix (addresses.ipv4_prefix/ipv6_prefix)
	QuotaUser         QuotaKey = "user"          // the SASL login; sessions without one skip the rule
	QuotaSender       QuotaKey = "sender"        // MAIL FROM, lowercase; the null sender is not counted
	QuotaSenderDomain QuotaKey = "sender_domain" // MAIL FROM's domain, lowercase; the null sender is not counted
	QuotaRecipient    QuotaKey = "recipient"     // each RCPT TO, lowercase
)

// AllQuotaKeys lists the quota keys in documentation order.
var AllQuotaKeys = []QuotaKey{QuotaNetwork, QuotaUser, QuotaSender, QuotaSenderDomain, QuotaRecipient}

// Valid reports whether k is a quota key.
func (k QuotaKey) Valid() bool {
	for _, x := range AllQuotaKeys {
		if k == x {
			return true
		}
	}
	return false
}

// QuotaCount is what a quota counts.
type QuotaCount string

// The quota counts.
const (
	CountMessages   QuotaCount = "messages"
	CountRecipients QuotaCount = "recipients"
	CountBytes      QuotaCount = "bytes"
)

// AllQuotaCounts lists the quota counts.
var AllQuotaCounts = []QuotaCount{CountMessages, CountRecipients, CountBytes}

// Valid reports whether c is a quota count.
func (c QuotaCount) Valid() bool {
	return c == CountMessages || c == CountRecipients || c == CountBytes
}

// The values of Quota.Only.
const (
	OnlyAuthenticated   = "authenticated"
	OnlyUnauthenticated = "unauthenticated"
)

// Quota is one [[rate]] rule.
type Quota struct {
	Name   string // unique; the metric label, the log value, the CLI name and part of the store key
	Key    QuotaKey
	Count  QuotaCount
	Limit  int64
	Window time.Duration
	Mode   Mode   // "" for Rules.Mode
	Reply  *Reply // nil for the default reply (DefaultQuotaReply)
	// ExemptNetworks and ExemptUsers (as Override.Users: exact, or
	// "@domain") are not counted by this rule.
	ExemptNetworks []netip.Prefix
	ExemptUsers    []string
	Only           string // "", OnlyAuthenticated or OnlyUnauthenticated
}

// QuotaOverride replaces the limit or the mode of the quota named Name for
// the clients of an override ([[override.rate]]). Zero values keep the
// rule's.
type QuotaOverride struct {
	Name  string
	Limit int64
	Mode  Mode
}

// DefaultQuotaReply is the reply of q when it has none of its own: 451
// 4.7.1 at MAIL, and for a recipient key 450 4.2.1 at RCPT (that recipient
// only). The text names the quota; {retry} says when to try again.
func DefaultQuotaReply(q *Quota) Reply {
	what := "Quota {rule} exceeded (limit {cap} " + string(q.Count) + " per {window}"
	switch q.Key {
	case QuotaRecipient:
		return Reply{450, "4.2.1", "The recipient is receiving mail at a rate that prevents additional messages from being delivered: " + what + "); try again in {retry}"}
	case QuotaUser:
		return Reply{451, "4.7.1", what + " for your account); try again in {retry}"}
	}
	return Reply{451, "4.7.1", what + " for your " + strings.ReplaceAll(string(q.Key), "_", " ") + "); try again in {retry}"}
}

// quotaPlaceholders are the placeholders of a quota's reply.
var quotaPlaceholders = []string{"{rule}", "{cap}", "{value}", "{window}", "{retry}"}

// ParseQuotaReply parses the reply of a quota: as ParseReply, with the
// placeholders {rule}, {cap}, {value}, {window} and {retry}.
func ParseQuotaReply(s string) (Reply, error) {
	// ParseReplyFor checks the placeholders of the other replies; the
	// quota's own are swapped for a known one first.
	masked := s
	for _, p := range quotaPlaceholders {
		masked = strings.ReplaceAll(masked, p, "{cap}")
	}
	if _, err := ParseReplyFor("", masked); err != nil {
		if strings.HasPrefix(err.Error(), "unknown placeholder") {
			return Reply{}, fmt.Errorf("%s (known: %s)", strings.SplitN(err.Error(), " (", 2)[0], strings.Join(quotaPlaceholders, " "))
		}
		return Reply{}, err
	}
	code, rest, _ := strings.Cut(strings.TrimSpace(s), " ")
	n, _ := strconv.Atoi(code)
	r := Reply{Code: n, Text: strings.TrimSpace(rest)}
	if first, text, ok := strings.Cut(r.Text, " "); ok || first != "" {
		if isEnhanced(first) {
			r.Enhanced, r.Text = first, strings.TrimSpace(text)
		}
	}
	return r, nil
}

// KindQuota is the kind of the store keys of quotas.
const KindQuota = "quota"

// QuotaStoreKey is the store key of the window of rule name for key value
// v: "quota:NAME:KEYKIND:VALUE". It is derived from the rule's name, never
// its position, so a reload that adds or reorders rules keeps every
// window; a rule renamed starts afresh.
func QuotaStoreKey(name string, kind QuotaKey, v string) string {
	return KindQuota + ":" + name + ":" + string(kind) + ":" + v
}

// QuotaWindow is the sliding window of one quota key, approximated by two
// fixed windows as Window is, with 64-bit counts (a byte quota counts more
// than 2^32). Times are Unix milliseconds. The zero value is a key never
// seen.
type QuotaWindow struct {
	Start      int64
	Prev, Curr int64
}

// Roll moves w forward to now (a clock that steps back is clamped to the
// window's start) and returns the sliding window's count at now.
func (w *QuotaWindow) Roll(now, window int64) float64 {
	if window <= 0 {
		window = 1
	}
	if now < w.Start {
		now = w.Start
	}
	switch elapsed := now - w.Start; {
	case w.Start == 0 || elapsed >= 2*window:
		w.Start, w.Prev, w.Curr = now, 0, 0
	case elapsed >= window:
		w.Start, w.Prev, w.Curr = w.Start+window, w.Curr, 0
	}
	overlap := float64(window-(now-w.Start)) / float64(window)
	return float64(w.Prev)*overlap + float64(w.Curr)
}

// QuotaOp is one key of a batch the stores run atomically
// (counters.Store.Quota): check whether Need more fit under Limit, then,
// unless an op of the batch marked Hard was refused, add Add.
type QuotaOp struct {
	Key    string
	Window time.Duration
	Limit  int64
	Need   int64 // checked when > 0
	Add    int64 // counted when > 0 and no Hard op of the batch was refused
	Hard   bool  // a refusal of this op stops the batch from counting (enforce mode)
}

// QuotaUse is what a store answers for one QuotaOp: the window as it was
// at Now, before anything was added, and whether the op was refused.
type QuotaUse struct {
	Window  QuotaWindow
	Now     int64 // Unix ms, the store's clock
	Refused bool
}

// Used is the sliding window's count at u.Now, rounded.
func (u QuotaUse) Used(window time.Duration) int64 {
	w := u.Window
	return int64(math.Round(w.Roll(u.Now, window.Milliseconds())))
}

// QuotaRefuses is the check every store runs for op on a window rolled to
// now whose count is est: whether Need more would exceed Limit. The
// never-loop rule: a need larger than the limit by itself (a message bigger
// than a byte quota) passes when the key has counted nothing in the
// current fixed window, so it waits at most one window, never forever.
func QuotaRefuses(w QuotaWindow, est float64, op QuotaOp) bool {
	if op.Need <= 0 || op.Limit <= 0 {
		return false
	}
	if est+float64(op.Need) <= float64(op.Limit) {
		return false
	}
	return !(op.Need > op.Limit && w.Curr == 0)
}

// ApplyQuotas runs a batch on the windows ws (one per op, rolled here) at
// now: the stores that run Go call it under their lock (the Redis store runs
// the same steps in Lua). ws are updated in place.
func ApplyQuotas(ws []QuotaWindow, ops []QuotaOp, now int64) []QuotaUse {
	uses := make([]QuotaUse, len(ops))
	hardRefused := false
	for i, op := range ops {
		est := ws[i].Roll(now, op.Window.Milliseconds())
		uses[i] = QuotaUse{Window: ws[i], Now: now, Refused: QuotaRefuses(ws[i], est, op)}
		hardRefused = hardRefused || (uses[i].Refused && op.Hard)
	}
	if !hardRefused {
		for i, op := range ops {
			if op.Add > 0 {
				ws[i].Curr = satAdd64(ws[i].Curr, op.Add)
			}
		}
	}
	return uses
}

func satAdd64(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// RetryIn is how long after u.Now the op that u answered would pass, if
// nothing more is counted: while the sliding window's count decays.
func RetryIn(u QuotaUse, op QuotaOp) time.Duration {
	W := float64(op.Window.Milliseconds())
	if W <= 0 {
		return 0
	}
	w := u.Window
	L, need := float64(op.Limit), float64(op.Need)
	S, P, C := float64(w.Start), float64(w.Prev), float64(w.Curr)
	var at float64
	switch {
	case C+need <= L && P > 0: // within the current fixed window, as the previous one decays
		at = S + W*(1-(L-need-C)/P)
	case need > L: // never-loop: when the next fixed window starts
		at = S + W
	case C > 0: // in the next fixed window, as this one decays
		at = S + W + W*(1-(L-need)/C)
	default:
		at = S + W
	}
	d := time.Duration(math.Ceil(at-float64(u.Now))) * time.Millisecond
	return max(d, time.Second)
}

// quotaPolicy is a quota with an override's replacements applied.
type quotaPolicy struct {
	*Quota
	limit int64
	mode  Mode
}

// QuotaSubject is what a stage knows of the client that quotas key on.
type QuotaSubject struct {
	Client    Client
	Sender    string // MAIL FROM without brackets, "" for the null sender
	Recipient string // the RCPT TO of this op, "" outside RCPT
	// Network is r.Key(Client.Addr) as text when the caller keeps it, ""
	// to compute it.
	Network string
	// Known are checks already made in this transaction (at MAIL), whose
	// store keys QuotaCounts reuses.
	Known []QuotaCheck
}

// QuotaKeyValue returns the value rule q counts s under, false when q does
// not count s (no SASL user for a user key, the null sender for sender
// keys, no address for a network key, or the rule's exemptions and only).
func (r *Rules) QuotaKeyValue(q *Quota, s QuotaSubject) (string, bool) {
	c := s.Client
	switch q.Only {
	case OnlyAuthenticated:
		if !c.Authenticated {
			return "", false
		}
	case OnlyUnauthenticated:
		if c.Authenticated {
			return "", false
		}
	}
	if c.HasAddr && containsAddr(q.ExemptNetworks, c.Addr) {
		return "", false
	}
	if len(q.ExemptUsers) > 0 && matchUser(q.ExemptUsers, c.User) {
		return "", false
	}
	switch q.Key {
	case QuotaNetwork:
		if !c.HasAddr {
			return "", false
		}
		if s.Network != "" {
			return s.Network, true
		}
		return r.Key(c.Addr).String(), true
	case QuotaUser:
		return c.User, c.User != ""
	case QuotaSender:
		from := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s.Sender), "<"), ">")
		return strings.ToLower(from), from != ""
	case QuotaSenderDomain:
		if s.Sender == "" {
			return "", false
		}
		return SenderDomain(s.Sender)
	case QuotaRecipient:
		rcpt := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s.Recipient), "<"), ">")
		return strings.ToLower(rcpt), rcpt != ""
	}
	return "", false
}

// QuotaCheck is one quota asked at a stage: the op for the store and what
// its refusal renders.
type QuotaCheck struct {
	Rule  *Quota
	Mode  Mode
	Value string // the key's value (a user, a sender, a network, …)
	Op    QuotaOp
}

// QuotaMode resolves the mode of quota q for client c: an override's, the
// rule's, or the top-level one.
func (r *Rules) QuotaMode(q *Quota, c Client) Mode { return r.quotaFor(q, c).mode }

// QuotaLimit resolves the limit of quota q for client c.
func (r *Rules) QuotaLimit(q *Quota, c Client) int64 { return r.quotaFor(q, c).limit }

func (r *Rules) quotaFor(q *Quota, c Client) quotaPolicy {
	p := quotaPolicy{Quota: q, limit: q.Limit, mode: r.ModeOf(q.Mode)}
	if i := r.overrideFor(c); i >= 0 {
		for _, o := range r.Overrides[i].Quotas {
			if o.Name != q.Name {
				continue
			}
			if o.Limit > 0 {
				p.limit = o.Limit
			}
			if o.Mode != "" {
				p.mode = o.Mode
			}
		}
	}
	return p
}

// QuotaChecks returns the ops of stage for subject s: at StageMail the
// checks of every rule but recipient keys (one more message, the SIZE=
// prediction size for bytes, one more recipient); at StageRcpt the checks
// and counts of recipient counts, and the checks of recipient keys (size is
// SIZE= or -1). Rules that are off, or that do not count s, are left out.
// The checks are appended to buf.
func (r *Rules) QuotaChecks(buf []QuotaCheck, stage Stage, s QuotaSubject, size int64) []QuotaCheck {
	if len(r.Quotas) == 0 || (s.Client.HasAddr && containsAddr(r.ExemptNetworks, s.Client.Addr)) {
		return buf
	}
	for i := range r.Quotas {
		q := &r.Quotas[i]
		switch stage {
		case StageMail:
			if q.Key == QuotaRecipient {
				continue
			}
		case StageRcpt:
			if q.Key != QuotaRecipient && q.Count != CountRecipients {
				continue
			}
		default:
			continue
		}
		p := r.quotaFor(q, s.Client)
		if !p.mode.Decides() {
			continue
		}
		v, ok := r.QuotaKeyValue(q, s)
		if !ok {
			continue
		}
		op := QuotaOp{Key: QuotaStoreKey(q.Name, q.Key, v), Window: q.Window, Limit: p.limit, Need: 1, Hard: p.mode.Refuses()}
		if q.Count == CountBytes {
			op.Need = max(size, 1)
		}
		if stage == StageRcpt && q.Count == CountRecipients {
			op.Add = 1
		}
		buf = append(buf, QuotaCheck{Rule: q, Mode: p.mode, Value: v, Op: op})
	}
	return buf
}

// QuotaCounts returns the ops that count an accepted message of size bytes
// at end of message: messages and bytes of every rule (for recipient keys,
// once per recipient in rcpts), and extra recipients the MTA reported that
// the session did not see (recipient counts of non-recipient keys).
func (r *Rules) QuotaCounts(buf []QuotaOp, s QuotaSubject, rcpts []string, size, extraRcpts int64) []QuotaOp {
	if len(r.Quotas) == 0 || (s.Client.HasAddr && containsAddr(r.ExemptNetworks, s.Client.Addr)) {
		return buf
	}
	for i := range r.Quotas {
		q := &r.Quotas[i]
		var n int64
		switch q.Count {
		case CountMessages:
			n = 1
		case CountBytes:
			n = size
		case CountRecipients:
			if q.Key == QuotaRecipient {
				continue
			}
			n = extraRcpts
		}
		if n <= 0 {
			continue
		}
		p := r.quotaFor(q, s.Client)
		if !p.mode.Decides() {
			continue
		}
		if q.Key != QuotaRecipient {
			if k := knownKey(s.Known, q); k != "" {
				buf = append(buf, QuotaOp{Key: k, Window: q.Window, Limit: p.limit, Add: n})
			} else if v, ok := r.QuotaKeyValue(q, s); ok {
				buf = append(buf, QuotaOp{Key: QuotaStoreKey(q.Name, q.Key, v), Window: q.Window, Limit: p.limit, Add: n})
			}
			continue
		}
		for _, rc := range rcpts {
			s.Recipient = rc
			if v, ok := r.QuotaKeyValue(q, s); ok {
				buf = append(buf, QuotaOp{Key: QuotaStoreKey(q.Name, q.Key, v), Window: q.Window, Limit: p.limit, Add: n})
			}
		}
	}
	return buf
}

// Refusal renders the refusal of c at stage given the store's answer u.
func (c *QuotaCheck) Refusal(stage Stage, u QuotaUse) *Refusal {
	t := DefaultQuotaReply(c.Rule)
	if c.Rule.Reply != nil {
		t = *c.Rule.Reply
	}
	used := u.Used(c.Op.Window)
	text := strings.NewReplacer(
		"{rule}", c.Rule.Name,
		"{cap}", strconv.FormatInt(c.Op.Limit, 10),
		"{value}", strconv.FormatInt(used, 10),
		"{window}", formatDuration(c.Op.Window),
		"{retry}", formatDuration(RetryIn(u, c.Op)),
	).Replace(t.Text)
	return &Refusal{Limit: LimitQuota, Stage: stage, Code: t.Code, Enhanced: t.Enhanced, Text: text, Value: used, Cap: c.Op.Limit, Rule: c.Rule.Name}
}

// QuotaByName returns the quota named name, nil for none.
func (r *Rules) QuotaByName(name string) *Quota {
	for i := range r.Quotas {
		if r.Quotas[i].Name == name {
			return &r.Quotas[i]
		}
	}
	return nil
}

// ValidateQuotas reports the first inconsistency of r's quotas.
func (r *Rules) ValidateQuotas() error {
	seen := map[string]bool{}
	for i := range r.Quotas {
		q := &r.Quotas[i]
		switch {
		case q.Name == "":
			return fmt.Errorf("limits: rate %d has no name", i+1)
		case seen[q.Name]:
			return fmt.Errorf("limits: rate %q defined twice", q.Name)
		case !q.Key.Valid():
			return fmt.Errorf("limits: rate %q: unknown key %q", q.Name, q.Key)
		case !q.Count.Valid():
			return fmt.Errorf("limits: rate %q: unknown count %q", q.Name, q.Count)
		case q.Limit <= 0:
			return fmt.Errorf("limits: rate %q: limit %d must be > 0", q.Name, q.Limit)
		case q.Window < time.Second:
			return fmt.Errorf("limits: rate %q: window %s is under 1s", q.Name, q.Window)
		case q.Mode != "" && !q.Mode.Valid():
			return fmt.Errorf("limits: rate %q: unknown mode %q", q.Name, q.Mode)
		}
		seen[q.Name] = true
	}
	for _, o := range r.Overrides {
		for _, qo := range o.Quotas {
			if !seen[qo.Name] {
				return fmt.Errorf("limits: override.rate %q names no rate", qo.Name)
			}
		}
	}
	return nil
}

// LongestQuotaWindow returns the longest window of any quota.
func (r *Rules) LongestQuotaWindow() time.Duration {
	var d time.Duration
	for i := range r.Quotas {
		d = max(d, r.Quotas[i].Window)
	}
	return d
}

// quotasNeed reports whether a quota that some client may have on (its
// own mode, or an override's) satisfies f.
func (r *Rules) quotasNeed(f func(*Quota) bool) bool {
	for i := range r.Quotas {
		q := &r.Quotas[i]
		if !f(q) {
			continue
		}
		if r.ModeOf(q.Mode).Decides() {
			return true
		}
		for _, o := range r.Overrides {
			for _, qo := range o.Quotas {
				if qo.Name == q.Name && qo.Mode.Decides() && qo.Mode != "" {
					return true
				}
			}
		}
	}
	return false
}

// quotasTag reports whether a quota is in tag mode, its own or an
// override's.
func (r *Rules) quotasTag() bool {
	for i := range r.Quotas {
		if r.ModeOf(r.Quotas[i].Mode) == ModeTag {
			return true
		}
	}
	for _, o := range r.Overrides {
		for _, qo := range o.Quotas {
			if qo.Mode == ModeTag {
				return true
			}
		}
	}
	return false
}

// QuotaValue turns what an operator typed for a key of kind into the value
// the quotas count under: a network's address or prefix becomes its prefix
// under r, senders and recipients are lowercased, a sender domain is taken
// alone or from an address.
func (r *Rules) QuotaValue(kind QuotaKey, v string) (string, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return "", fmt.Errorf("empty %s", kind)
	}
	switch kind {
	case QuotaNetwork:
		if p, err := netip.ParsePrefix(v); err == nil {
			return r.Key(p.Addr()).String(), nil
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			return "", fmt.Errorf("network %q is neither an address nor a prefix", v)
		}
		return r.Key(a).String(), nil
	case QuotaUser:
		return v, nil
	case QuotaSender, QuotaRecipient:
		return strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(v, "<"), ">")), nil
	case QuotaSenderDomain:
		if !strings.Contains(v, "@") {
			v = "@" + v
		}
		d, ok := SenderDomain(v)
		if !ok {
			return "", fmt.Errorf("%q is not a domain", v)
		}
		return d, nil
	}
	return "", fmt.Errorf("unknown key %q (want %s)", kind, strings.Join(func() []string {
		s := make([]string, len(AllQuotaKeys))
		for i, k := range AllQuotaKeys {
			s[i] = string(k)
		}
		return s
	}(), ", "))
}

// knownKey is the store key of a check of q among known, "" for none.
func knownKey(known []QuotaCheck, q *Quota) string {
	for i := range known {
		if known[i].Rule == q {
			return known[i].Op.Key
		}
	}
	return ""
}
