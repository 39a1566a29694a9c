package limits

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sessioncap/sessioncap/internal/duration"
)

// ReplyKey names one configurable reply. Several replies can belong to one
// Limit (the byte cap answers differently for a used budget, a SIZE
// prediction and an overrun at end of message).
type ReplyKey string

// The configurable replies.
const (
	ReplySessionMessages    ReplyKey = "session_messages"
	ReplySessionBytes       ReplyKey = "session_bytes"
	ReplySessionBytesSize   ReplyKey = "session_bytes_size"
	ReplyOverrun            ReplyKey = "overrun"
	ReplySessionRecipients  ReplyKey = "session_recipients"
	ReplyFrequency          ReplyKey = "frequency"
	ReplyFrequencyNoBan     ReplyKey = "frequency_no_ban"
	ReplyBanned             ReplyKey = "banned"
	ReplyBannedManual       ReplyKey = "banned_manual"
	ReplyConcurrencyAddress ReplyKey = "concurrency_address"
	ReplyConcurrencyTotal   ReplyKey = "concurrency_total"
	ReplyStoreUnavailable   ReplyKey = "store_unavailable"
	ReplyDeny               ReplyKey = "deny"
	ReplySenderNetworks     ReplyKey = "sender_networks"
	ReplyErrors             ReplyKey = "errors"
	ReplyErrorsBanned       ReplyKey = "errors_banned"
)

// AllReplyKeys lists every ReplyKey.
var AllReplyKeys = []ReplyKey{
	ReplySessionMessages, ReplySessionBytes, ReplySessionBytesSize, ReplyOverrun,
	ReplySessionRecipients, ReplyFrequency, ReplyFrequencyNoBan, ReplyBanned, ReplyBannedManual, ReplyConcurrencyAddress,
	ReplyConcurrencyTotal, ReplyStoreUnavailable, ReplyDeny, ReplySenderNetworks,
	ReplyErrors, ReplyErrorsBanned,
}

// permanentAllowed reports whether the reply of k may be 5xx: only the deny
// list's, which is policy, not a limit that lifts.
func permanentAllowed(k ReplyKey) bool { return k == ReplyDeny }

// Reply is an SMTP reply template: a 4xx code, an enhanced status code and a
// single line of text in which {cap}, {value}, {window} and {ban} are
// replaced when the reply is given.
type Reply struct {
	Code     int
	Enhanced string
	Text     string
}

// Replies maps each ReplyKey to its template.
type Replies map[ReplyKey]Reply

// DefaultReplies returns the built-in reply for every key.
func DefaultReplies() Replies {
	return Replies{
		ReplySessionMessages:    {421, "4.7.0", "Too many messages in this session (limit {cap}); reconnect to send more"},
		ReplySessionBytes:       {421, "4.7.0", "Too much data in this session (limit {cap} bytes); reconnect to send more"},
		ReplySessionBytesSize:   {421, "4.7.0", "Message would exceed this session's data limit (limit {cap} bytes); reconnect to send it"},
		ReplyOverrun:            {452, "4.3.1", "Message exceeded this session's data limit (limit {cap} bytes); reconnect and send it again"},
		ReplySessionRecipients:  {452, "4.5.3", "Too many recipients in this session (limit {cap}); send the rest in a new session"},
		ReplyFrequency:          {421, "4.7.0", "Too many connections from your network (limit {cap} per {window}); banned for {ban}, try again later"},
		ReplyFrequencyNoBan:     {421, "4.7.0", "Too many connections from your network (limit {cap} per {window}); try again later"},
		ReplyBanned:             {421, "4.7.0", "Your network is temporarily banned for too many connections; try again in {ban}"},
		ReplyBannedManual:       {421, "4.7.0", "Your network is temporarily banned by the administrator of this server; try again in {ban}"},
		ReplyConcurrencyAddress: {421, "4.7.0", "Too many concurrent connections from your network (limit {cap}); try again later"},
		ReplyConcurrencyTotal:   {421, "4.7.0", "Server busy (limit {cap} concurrent sessions); try again later"},
		ReplyStoreUnavailable:   {421, "4.3.0", "Temporary problem with the connection limits; try again later"},
		ReplyDeny:               {554, "5.7.1", "Access denied"},
		ReplyErrors:             {421, "4.7.0", "Too many errors in this session (limit {cap}); closing connection"},
		ReplyErrorsBanned:       {421, "4.7.0", "Too many rejected recipients from your network (limit {cap} per {window}); try again in {ban}"},
		ReplySenderNetworks:     {451, "4.7.1", "Mail from your sender domain comes from too many networks (limit {cap} per {window}); try again later"},
	}
}

var placeholders = []string{"{cap}", "{value}", "{window}", "{ban}"}

// ParseReply parses "CODE X.Y.Z text" (the enhanced code is optional). The
// code must be 4xx: every limit here is temporary.
func ParseReply(s string) (Reply, error) { return ParseReplyFor("", s) }

// ParseReplyFor parses the reply of key k: 4xx, or 4xx or 5xx for the
// deny list.
func ParseReplyFor(k ReplyKey, s string) (Reply, error) {
	if strings.ContainsAny(s, "\r\n") {
		return Reply{}, errors.New("must be a single line")
	}
	code, rest, _ := strings.Cut(strings.TrimSpace(s), " ")
	n, err := strconv.Atoi(code)
	if err != nil || len(code) != 3 {
		return Reply{}, fmt.Errorf("must start with a 3-digit SMTP code, got %q", code)
	}
	r := Reply{Code: n, Text: strings.TrimSpace(rest)}
	if first, text, ok := strings.Cut(r.Text, " "); ok || first != "" {
		if isEnhanced(first) {
			r.Enhanced, r.Text = first, strings.TrimSpace(text)
		}
	}
	return r, r.validate(k)
}

func isEnhanced(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if p == "" || len(p) > 3 || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

func (r Reply) validate(k ReplyKey) error {
	switch {
	case permanentAllowed(k) && (r.Code < 400 || r.Code > 599):
		return fmt.Errorf("code %d is not 4xx or 5xx", r.Code)
	case !permanentAllowed(k) && (r.Code < 400 || r.Code > 499):
		return fmt.Errorf("code %d is not 4xx: every sessioncap limit is temporary, so the sender must keep the mail", r.Code)
	}
	class := byte('0' + r.Code/100)
	if r.Enhanced != "" && (r.Enhanced[0] != class || !isEnhanced(r.Enhanced)) {
		return fmt.Errorf("enhanced status code %q must be %c.X.Y like the code", r.Enhanced, class)
	}
	if r.Text == "" {
		return errors.New("text is empty: say which limit was hit and what to do")
	}
	if strings.ContainsAny(r.Text, "\r\n\x00") {
		return errors.New("must be a single line")
	}
	rest := r.Text
	for _, p := range placeholders {
		rest = strings.ReplaceAll(rest, p, "")
	}
	if i := strings.IndexByte(rest, '{'); i >= 0 {
		end := strings.IndexByte(rest[i:], '}')
		if end < 0 {
			end = len(rest) - i - 1
		}
		return fmt.Errorf("unknown placeholder %s (known: %s)", rest[i:i+end+1], strings.Join(placeholders, " "))
	}
	return nil
}

// String renders the template in configuration syntax.
func (r Reply) String() string {
	if r.Enhanced == "" {
		return fmt.Sprintf("%d %s", r.Code, r.Text)
	}
	return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text)
}

// Validate checks that every key has a valid 4xx reply.
func (rs Replies) Validate() error {
	for _, k := range AllReplyKeys {
		r, ok := rs[k]
		if !ok {
			return fmt.Errorf("limits: no reply for %s", k)
		}
		if err := r.validate(k); err != nil {
			return fmt.Errorf("limits: reply %s: %w", k, err)
		}
	}
	return nil
}

// Refusal is a decision to refuse, carrying what the SMTP client is told and
// what the log and metrics record.
type Refusal struct {
	Limit    Limit
	Stage    Stage
	Reply    ReplyKey
	Code     int
	Enhanced string
	Text     string // rendered, without code and enhanced code
	Value    int64  // what was seen (messages, bytes, connections, …)
	Cap      int64  // the configured cap
	Rule     string // the quota's name for LimitQuota, "" otherwise
}

// Error makes a Refusal usable as an error value; it reads like the reply.
func (r *Refusal) Error() string {
	return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text)
}

// Reason is the reply text after the code: enhanced code and text.
func (r *Refusal) Reason() string {
	if r.Enhanced == "" {
		return r.Text
	}
	return r.Enhanced + " " + r.Text
}

// refusal renders the reply for key.
func (rs Replies) refusal(key ReplyKey, limit Limit, stage Stage, value, cap int64, window, ban time.Duration) *Refusal {
	t, ok := rs[key]
	if !ok {
		t = DefaultReplies()[key]
	}
	text := t.Text
	if strings.IndexByte(text, '{') >= 0 {
		text = strings.NewReplacer(
			"{cap}", strconv.FormatInt(cap, 10),
			"{value}", strconv.FormatInt(value, 10),
			"{window}", formatDuration(window),
			"{ban}", formatDuration(ban),
		).Replace(text)
	}
	return &Refusal{Limit: limit, Stage: stage, Reply: key, Code: t.Code, Enhanced: t.Enhanced, Text: text, Value: value, Cap: cap}
}

// bannedReply is the refusal of a client whose prefix is banned, by the
// reason the ban was stored with: a ban a rule set names that rule first
// ("frequency"), anything else is a manual ban ("manual: ticket 7", or the
// bare text of one made before bans had an origin, as counters.SplitReason
// reads it). A manual ban says an administrator set it and carries no
// count or cap, the frequency rule having nothing to do with it.
func (rs Replies) bannedReply(reason string, connections int64, f Frequency, left time.Duration) *Refusal {
	if head, _, _ := strings.Cut(reason, ": "); reason != "" && !slices.Contains(AllLimits, Limit(head)) {
		return rs.refusal(ReplyBannedManual, LimitBanned, StageConnect, 0, 0, 0, left)
	}
	return rs.refusal(ReplyBanned, LimitBanned, StageConnect, connections, f.MaxConnections, f.Window, left)
}

// formatDuration prints whole seconds the way an admin writes them ("5m0s"
// becomes "5m", "90s" stays "1m30s", 36h "1d12h").
func formatDuration(d time.Duration) string {
	d = d.Round(time.Second)
	if d <= 0 {
		return "0s"
	}
	return duration.Format(d)
}

// Unavailable renders the reply given at connect while the shared store is
// down and store.on_error is "tempfail".
func (rs Replies) Unavailable() *Refusal {
	return rs.refusal(ReplyStoreUnavailable, LimitStoreUnavailable, StageConnect, 0, 0, 0, 0)
}
