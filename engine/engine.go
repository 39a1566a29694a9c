// Package engine is what sessioncap's front-ends (the milter and the Postfix
// policy server) share between the pure decisions of package limits and
// their protocols: the rules in force, the connection-frequency admission
// against the store (with the keys of replaced prefix lengths), and the one
// log line and the counters of every refusal and ban.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// Store keeps the state that outlives a session: sliding windows and bans
// per key. counters.Store implements it (memory, Redis, or Redis with a local
// fallback). counters.ErrUnavailable from it (store on_error = "tempfail")
// makes a front-end refuse the new session with the store_unavailable reply;
// any other error lets the session through.
type Store interface {
	// Hit is the stores' atomic primitive (see counters.Store).
	Hit(ctx context.Context, key string, n int64, r limits.Rate) (limits.Hit, error)
}

// Config is what an Engine needs.
type Config struct {
	Rules   *limits.Rules
	Store   Store
	Metrics *Metrics
	Logger  *slog.Logger
	Now     func() time.Time // time.Now when nil
	// StoreTimeout bounds one store call (default 1s).
	StoreTimeout time.Duration
}

// Engine holds the rules in force and decides admissions; it is safe for
// concurrent use. One Engine may serve several front-ends, so that a reload
// reaches all of them at once.
type Engine struct {
	mu           sync.Mutex // serialises SetRules
	rules        atomic.Pointer[limits.Rules]
	prevRules    atomic.Pointer[limits.Rules] // the rules before the last SetRules
	legacy       atomic.Pointer[[]legacyKeys] // prefix lengths of earlier rules whose bans may still be in force
	prefixes     prefixCache                  // prefix lengths of manual bans on other prefixes (prefixban.go)
	store        Store
	metrics      *Metrics
	log          *slog.Logger
	now          func() time.Time
	storeTimeout time.Duration
}

// legacyKeys are rules replaced by a reload that keyed clients otherwise
// (other prefix lengths, overrides renamed or matching otherwise), kept
// until the longest ban they could have keyed has ended: a reload that
// changes addresses.ipv4_prefix or ipv6_prefix, or renames an override,
// must not lift bans.
type legacyKeys struct {
	rules *limits.Rules
	until time.Time
}

// New returns an engine with cfg.Rules in force.
func New(cfg Config) (*Engine, error) {
	if cfg.Rules == nil || cfg.Store == nil || cfg.Metrics == nil {
		return nil, errors.New("engine: Rules, Store and Metrics are required")
	}
	if err := cfg.Rules.Validate(); err != nil {
		return nil, err
	}
	e := &Engine{store: cfg.Store, metrics: cfg.Metrics, log: cfg.Logger, now: cfg.Now, storeTimeout: cfg.StoreTimeout}
	if e.log == nil {
		e.log = slog.Default()
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.storeTimeout <= 0 {
		e.storeTimeout = time.Second
	}
	e.rules.Store(cfg.Rules)
	e.initQuotaMetrics(cfg.Rules)
	return e, nil
}

// Store returns the store the engine decides with, for rules a front-end
// counts itself (errors, sender networks).
func (e *Engine) Store() Store { return e.store }

// StoreContext bounds one store call by the configured store timeout.
func (e *Engine) StoreContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), e.storeTimeout)
}

// Rules returns the rules new sessions get.
func (e *Engine) Rules() *limits.Rules { return e.rules.Load() }

// PrevRules returns the rules replaced by the last SetRules, nil before the
// first.
func (e *Engine) PrevRules() *limits.Rules { return e.prevRules.Load() }

// Metrics returns the shared counters.
func (e *Engine) Metrics() *Metrics { return e.metrics }

// Now reads the engine's clock.
func (e *Engine) Now() time.Time { return e.now() }

// SetRules atomically replaces the rules. Sessions already connected keep the
// rules they started with; new sessions get r. When r keys a client
// otherwise (other prefix lengths; an override renamed, or an unnamed one
// that matches otherwise), the bans keyed under the old rules stay in
// force until they end. Overrides are keyed by name or by what they match,
// never by position, so adding or removing an override changes no other's
// keys.
func (e *Engine) SetRules(r *limits.Rules) error {
	if err := r.Validate(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.rules.Load()
	now := e.now()
	var keep []legacyKeys
	if l := e.legacy.Load(); l != nil {
		for _, k := range *l {
			if k.until.After(now) && !k.rules.SameKeys(r) {
				keep = append(keep, k)
			}
		}
	}
	if !old.SameKeys(r) {
		if until := e.lastBanEnd(old, now); until.After(now) {
			keep = append(keep, legacyKeys{rules: old, until: until})
		}
	}
	e.legacy.Store(&keep)
	e.prevRules.Store(old)
	e.rules.Store(r)
	e.initQuotaMetrics(r)
	return nil
}

// banLister is implemented by stores that list their bans
// (counters.Store).
type banLister interface {
	Bans(ctx context.Context) ([]counters.Ban, error)
}

// listTimeout bounds listing the store's bans at a reload: far longer than
// one hit takes (counters.DefaultAdminTimeout).
const listTimeout = counters.DefaultAdminTimeout

// lastBanEnd returns until when bans keyed under the prefix lengths of old
// may be in force: the longest ban old's rules can start, or the end of
// the last ban in the store if that is later (a manual ban may be longer
// than any rule's). A store that cannot list its bans is logged and only
// the rules' bans are kept.
func (e *Engine) lastBanEnd(old *limits.Rules, now time.Time) time.Time {
	until := now.Add(old.LongestBan())
	l, ok := e.store.(banLister)
	if !ok {
		return until
	}
	ctx, cancel := context.WithTimeout(context.Background(), listTimeout)
	defer cancel()
	bans, err := l.Bans(ctx)
	if err != nil {
		e.log.Warn("reload changed the prefix lengths and the store's bans could not be listed; manual bans longer than the rules' longest ban may end early",
			"longest_ban", old.LongestBan().String(), "err", err)
		return until
	}
	for _, b := range bans {
		if b.Until.After(until) {
			until = b.Until
		}
	}
	return until
}

// AdmitFrequency asks the store about key under the frequency rule f, after
// checking the keys of replaced prefix lengths and of manual bans on other
// prefixes for bans still in force. One store round trip unless a reload
// changed the prefix lengths or such a manual ban is in force. Every store
// call gets a budget of its own (store.timeout): a slow store answering
// each call in time is not failed for the sum of them.
func (e *Engine) AdmitFrequency(addr netip.Addr, scope, key string, f limits.Frequency) (limits.Admission, error) {
	ctx := context.Background()
	h, err := e.LegacyBan(ctx, limits.KeyFrequency, scope, addr, key)
	if err != nil {
		return limits.Admission{}, err
	}
	if h.BannedUntil.IsZero() {
		if h, err = e.prefixBan(ctx, addr, key); err != nil {
			return limits.Admission{}, err
		}
	}
	if h.BannedUntil.IsZero() {
		c, cancel := e.callContext(ctx)
		h, err = e.store.Hit(c, key, 1, f.Rate())
		cancel()
		if err != nil {
			return limits.Admission{}, err
		}
	}
	return limits.FrequencyVerdict(h), nil
}

// callContext bounds one store call by the store timeout. It keeps the
// cancellation of parent but not its deadline: a caller that makes several
// store calls under one context gives each its own budget, so that a store
// answering every call within store.timeout is not failed for their sum (a
// failure the Fallback would blame on the caller and never count).
func (e *Engine) callContext(parent context.Context) (context.Context, context.CancelFunc) {
	c, cancel := context.WithTimeout(context.WithoutCancel(parent), e.storeTimeout)
	stop := context.AfterFunc(parent, func() {
		if !errors.Is(parent.Err(), context.DeadlineExceeded) {
			cancel()
		}
	})
	return c, func() { stop(); cancel() }
}

// LegacyBan looks for a ban in force on the key of kind that addr had
// under rules a reload replaced that keyed it otherwise (its prefix under
// their prefix lengths, its scope under their overrides); key is its key
// now, not asked again, and scope its scope. The old scope is that of the
// same override under the old rules when scope is an override matched
// from MAIL FROM on (see limits.Rules.ScopeBefore), else the one the old
// rules gave addr at connect. It returns the store's answer for the first
// such ban, a zero Hit when there is none: no store call unless a reload
// changed the keys within the longest ban. Each store call gets its own
// budget of store.timeout; ctx's cancellation stops them, its deadline does
// not shorten them.
func (e *Engine) LegacyBan(ctx context.Context, kind, scope string, addr netip.Addr, key string) (limits.Hit, error) {
	l := e.legacy.Load()
	if l == nil {
		return limits.Hit{}, nil
	}
	now := e.now()
	for _, k := range *l {
		if !k.until.After(now) {
			continue
		}
		oldScope, ok := k.rules.ScopeBefore(e.rules.Load(), scope)
		if !ok {
			var exempt bool
			if _, oldScope, exempt = k.rules.ForConnect(addr); exempt {
				continue // nothing was keyed
			}
		}
		old := limits.StoreKey(kind, oldScope, k.rules.Key(addr))
		if old == key {
			continue
		}
		c, cancel := e.callContext(ctx)
		h, err := e.store.Hit(c, old, 0, limits.Rate{})
		cancel()
		if err != nil {
			return limits.Hit{}, err
		}
		if !h.BannedUntil.IsZero() {
			return h, nil
		}
	}
	return limits.Hit{}, nil
}

// LogRefusal writes the one structured line per refusal and counts it.
func (e *Engine) LogRefusal(r *limits.Refusal, mode limits.Mode, client, queueID string, attrs ...any) {
	e.metrics.Refusals.WithLabelValues(string(r.Limit), string(r.Stage), string(mode)).Inc()
	line := []any{
		"client_ip", client,
		"queue_id", queueID,
		"limit", string(r.Limit),
		"stage", string(r.Stage),
	}
	if r.Cap > 0 { // a refusal with no cap (deny list, store down, manual ban) has no count either
		line = append(line, "value", r.Value, "cap", r.Cap)
	}
	line = append(line, "mode", string(mode), "reply", fmt.Sprintf("%d %s", r.Code, r.Reason()))
	e.log.Warn("refused", append(line, attrs...)...)
}

// LogBan writes the one structured line of a ban that admission a started,
// and counts it. It does nothing unless a started a ban.
func (e *Engine) LogBan(a limits.Admission, f limits.Frequency, mode limits.Mode, client string, prefix netip.Prefix, key string) {
	if a.Verdict != limits.RefusedFrequency || a.BanUntil.IsZero() {
		return
	}
	e.metrics.Bans.WithLabelValues(string(mode)).Inc()
	e.log.Warn("banned",
		"client_ip", client, "prefix", prefix.String(), "key", key, "limit", string(limits.LimitFrequency),
		"value", a.Connections, "cap", f.MaxConnections,
		"window", f.Window.String(), "ban", f.Ban.String(),
		"until", a.BanUntil.UTC().Format(time.RFC3339), "mode", string(mode), "origin", string(limits.LimitFrequency))
}

// Observe records how long deciding an event at stage took; use it as
// defer e.Observe(stage, time.Now()).
func (e *Engine) Observe(stage limits.Stage, start time.Time) {
	e.metrics.Duration[stage].Observe(time.Since(start).Seconds())
}

// Admission is the decision on a new session from an IP client under the
// frequency rule: the policy that applies, where it is counted, and the
// verdict. Concurrency is left to the caller (only the milter sees sessions
// end).
type Admission struct {
	limits.Admission
	Policy limits.Policy
	Scope  string       // "" or the override's Scope, see limits.StoreKey
	Prefix netip.Prefix // the address prefix counted
	Key    string       // the frequency store key
	Exempt bool         // addr is exempt from every limit; nothing was counted
	// Unavailable is set when the store is down and store.on_error is
	// tempfail: refuse with Rules.Replies.Unavailable().
	Unavailable bool
}

// Refusal renders the reply of the admission, nil when admitted.
func (a *Admission) Refusal(r *limits.Rules) *limits.Refusal {
	if a.Unavailable {
		return r.Replies.Unavailable()
	}
	return a.Admission.Refusal(a.Policy, r.Replies)
}

// Admit counts a new session of addr (client is its log form) under the
// frequency rule of r, logs and counts a ban it starts, and handles store
// errors: counters.ErrUnavailable (on_error = tempfail) sets Unavailable,
// any other error lets the session through. Both are counted in
// sessioncap_store_errors_total and logged. With the frequency rule off the
// store is only asked whether the prefix is banned (manual bans), unless
// the top-level mode is off too; then nothing is asked.
func (e *Engine) Admit(r *limits.Rules, addr netip.Addr, client string) Admission {
	var a Admission
	a.Policy, a.Scope, a.Exempt = r.ForConnect(addr)
	if a.Exempt {
		return a
	}
	a.Prefix = r.Key(addr)
	a.Key = limits.StoreKey(limits.KeyFrequency, a.Scope, a.Prefix)
	fmode := r.LimitMode(&a.Policy, limits.LimitFrequency)
	if !r.LimitMode(&a.Policy, limits.LimitBanned).Decides() {
		return a
	}
	f := a.Policy.Frequency
	if !fmode.Decides() {
		f = limits.Frequency{} // only ask whether the prefix is banned
	}
	adm, err := e.AdmitFrequency(addr, a.Scope, a.Key, f)
	if err != nil {
		e.metrics.StoreErrors.WithLabelValues("hit").Inc()
		if errors.Is(err, counters.ErrUnavailable) {
			e.log.Debug("store unavailable; refusing the connection for now", "client_ip", client, "err", err)
			a.Unavailable = true
			return a
		}
		e.log.Error("store call failed; letting the connection through", "client_ip", client, "key", a.Key, "err", err)
		adm = limits.Admission{}
	}
	a.Admission = adm
	e.LogBan(adm, f, fmode, client, a.Prefix, a.Key)
	return a
}

// LogAttrs are the attributes the refusal line of a gets beside the
// refusal's own: the origin of a ban in force.
func (a *Admission) LogAttrs() []any {
	if a.Verdict != limits.RefusedBanned {
		return nil
	}
	origin, _ := counters.SplitReason(a.BanReason)
	if origin == "" {
		return nil // a ban whose details were lost
	}
	return []any{"origin", origin}
}

// Sender is the outcome of the sender-networks rule for one MAIL FROM.
type Sender struct {
	Refusal *limits.Refusal // nil: allowed, skipped, or the store failed
	Mode    limits.Mode     // the rule's mode
	// Attrs are the log attributes of a refusal: the sender domain and the
	// network it was counted under.
	Attrs []any
}

// CheckSender applies r's sender-networks rule to MAIL FROM from, sent by
// a client at addr (hasAddr false for none). It is skipped for the null
// sender, authenticated sessions, clients without an IP address, exempt
// networks and exempt domains, and when the rule is off. A store error lets
// the sender through; it is logged and counted.
func (e *Engine) CheckSender(r *limits.Rules, addr netip.Addr, hasAddr bool, from string, authenticated bool, client, queueID string) Sender {
	sn := &r.SenderNetworks
	out := Sender{Mode: r.LimitMode(&r.Default, limits.LimitSenderNetworks)}
	if sn.MaxNetworks <= 0 || !out.Mode.Decides() || authenticated || !hasAddr || r.ExemptAddr(addr) {
		return out
	}
	domain, ok := limits.SenderDomain(from)
	if !ok || sn.Exempt(domain) {
		return out
	}
	ctx, cancel := e.StoreContext()
	defer cancel()
	ref, err := sn.Check(domain, addr, e.now(), func(key string, n int64, rate limits.Rate) (limits.Hit, error) {
		return e.store.Hit(ctx, key, n, rate)
	}, r.Replies)
	if err != nil {
		e.metrics.StoreErrors.WithLabelValues("hit").Inc()
		e.log.Error("store call failed; letting the sender through", "client_ip", client, "queue_id", queueID, "limit", string(limits.LimitSenderNetworks), "err", err)
		return out
	}
	if ref != nil {
		out.Refusal = ref
		out.Attrs = []any{"sender_domain", domain, "network", sn.Network(addr).String()}
	}
	return out
}
