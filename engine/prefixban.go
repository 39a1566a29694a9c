package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// A manual ban of a prefix whose length is not the one connections are
// counted under (addresses.ipv4_prefix, ipv6_prefix) is kept under the key
// limits.StoreKey(KeyFrequency, "", prefix), like any ban: it lists, lifts
// and crosses the fleet with the store. To find it, admission must know
// which other lengths hold bans: the store keeps them as the reason of one
// more ban, PrefixBanLengthsKey, ending when the longest such ban ends, and
// every engine caches that set and asks the store again at most every
// PrefixBanRefresh. With no such ban in force, admission costs no store call
// beyond that one peek per PrefixBanRefresh.

// PrefixBanLengthsKey is the store key whose ban records the prefix lengths
// that manual bans of other lengths than the counted one are keyed under.
// It is not a limits.StoreKey, so no unban of an address or prefix lifts it;
// listings leave it out (IsPrefixBanLengths).
const PrefixBanLengthsKey = "prefix-ban-lengths"

// PrefixBanRefresh is how often an engine re-reads the set of banned prefix
// lengths: how long a prefix ban of a new length made on another host of the
// fleet may take to hold here.
const PrefixBanRefresh = 5 * time.Second

// prefixLengthsText starts the text of the lengths ban's reason.
const prefixLengthsText = "prefix lengths:"

// IsPrefixBanLengths reports whether a listed ban is the store's record of
// banned prefix lengths rather than a ban of clients.
func IsPrefixBanLengths(b counters.Ban) bool { return b.Key == PrefixBanLengthsKey }

// prefixLengths is the cached set of banned prefix lengths.
type prefixLengths struct {
	v4, v6  []int
	until   time.Time // when the longest of those bans ends
	checked time.Time // when the store was last asked
}

type prefixCache struct {
	p atomic.Pointer[prefixLengths]
}

// parsePrefixLengths reads "prefix lengths: 4/24 6/48".
func parsePrefixLengths(reason string) (v4, v6 []int) {
	_, text := counters.SplitReason(reason)
	rest, ok := strings.CutPrefix(text, prefixLengthsText)
	if !ok {
		return nil, nil
	}
	for f := range strings.FieldsSeq(rest) {
		fam, n, ok := strings.Cut(f, "/")
		bits, err := strconv.Atoi(n)
		switch {
		case !ok || err != nil || bits < 0:
		case fam == "4" && bits <= 32 && !slices.Contains(v4, bits):
			v4 = append(v4, bits)
		case fam == "6" && bits <= 128 && !slices.Contains(v6, bits):
			v6 = append(v6, bits)
		}
	}
	slices.Sort(v4)
	slices.Sort(v6)
	return v4, v6
}

func formatPrefixLengths(v4, v6 []int) string {
	var b strings.Builder
	b.WriteString(prefixLengthsText)
	for _, n := range v4 {
		fmt.Fprintf(&b, " 4/%d", n)
	}
	for _, n := range v6 {
		fmt.Fprintf(&b, " 6/%d", n)
	}
	return b.String()
}

// prefixBanLengths returns the banned prefix lengths, asking the store when
// the cache is older than PrefixBanRefresh (one caller asks; the others use
// the cache meanwhile). A store error keeps the cached set.
func (e *Engine) prefixBanLengths(ctx context.Context, now time.Time) *prefixLengths {
	cur := e.prefixes.p.Load()
	if cur != nil && now.Sub(cur.checked) < PrefixBanRefresh && now.Sub(cur.checked) >= 0 {
		return cur
	}
	claim := &prefixLengths{checked: now}
	if cur != nil {
		c := *cur
		c.checked = now
		claim = &c
	}
	if !e.prefixes.p.CompareAndSwap(cur, claim) {
		return e.prefixes.p.Load()
	}
	c, cancel := e.callContext(ctx)
	h, err := e.store.Hit(c, PrefixBanLengthsKey, 0, limits.Rate{})
	cancel()
	if err != nil {
		e.log.Debug("store call failed; keeping the cached prefix lengths of manual bans", "err", err)
		return claim
	}
	fresh := &prefixLengths{checked: now, until: h.BannedUntil}
	if !h.BannedUntil.IsZero() {
		fresh.v4, fresh.v6 = parsePrefixLengths(h.BanReason)
	}
	e.prefixes.p.CompareAndSwap(claim, fresh)
	return fresh
}

// prefixBan looks for a manual ban in force on a prefix holding addr whose
// length is not the one the rules count addr under (key is addr's key now,
// not asked again). No store call unless such a ban may be in force.
func (e *Engine) prefixBan(ctx context.Context, addr netip.Addr, key string) (limits.Hit, error) {
	now := e.now()
	pl := e.prefixBanLengths(ctx, now)
	if pl == nil || !pl.until.After(now) {
		return limits.Hit{}, nil
	}
	lens := pl.v6
	if addr.Unmap().Is4() {
		addr, lens = addr.Unmap(), pl.v4
	}
	for _, bits := range lens {
		p, err := addr.Prefix(bits)
		if err != nil {
			continue
		}
		k := limits.StoreKey(limits.KeyFrequency, "", p)
		if k == key {
			continue
		}
		c, cancel := e.callContext(ctx)
		h, err := e.store.Hit(c, k, 0, limits.Rate{})
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

// banner is implemented by stores that take manual bans (counters.Store).
type banner interface {
	Ban(ctx context.Context, key string, d time.Duration, reason string) (counters.Ban, error)
}

// BanPrefix bans p for d by hand: reason is the stored reason
// (counters.StoredReason). A prefix of the length connections are counted
// under is banned under the key admission counts addr under (with its
// override's scope); any other length under its own key, which admission
// of an address inside p then also asks. The ban is made with ctx; so is
// the record of its length, which is kept at least as long as the ban.
func (e *Engine) BanPrefix(ctx context.Context, p netip.Prefix, d time.Duration, reason string) (counters.Ban, error) {
	b, ok := e.store.(banner)
	if !ok {
		return counters.Ban{}, errors.New("engine: the store takes no manual bans")
	}
	p = p.Masked()
	r := e.Rules()
	want := r.IPv6Prefix
	if p.Addr().Is4() {
		want = r.IPv4Prefix
	}
	if p.Bits() == want {
		_, scope, _ := r.ForConnect(p.Addr())
		return b.Ban(ctx, limits.StoreKey(limits.KeyFrequency, scope, p), d, reason)
	}
	ban, err := b.Ban(ctx, limits.StoreKey(limits.KeyFrequency, "", p), d, reason)
	if ban.Key == "" {
		return ban, err
	}
	// A ban made on this host only (the shared store unreachable) still
	// needs its length recorded here; err says what happened.
	// Record the length, kept until the longest such ban ends. A ban of
	// the lengths key replaces only a shorter one, so the new record ends
	// strictly later than the one it replaces: there is no moment without
	// one.
	now := e.now()
	h, herr := e.store.Hit(ctx, PrefixBanLengthsKey, 0, limits.Rate{})
	if herr != nil {
		return ban, fmt.Errorf("the ban of %s is in force, but its prefix length could not be recorded (admission will not find it): %w", p, herr)
	}
	var v4, v6 []int
	if !h.BannedUntil.IsZero() {
		v4, v6 = parsePrefixLengths(h.BanReason)
	}
	if p.Addr().Is4() {
		v4 = append(v4, p.Bits())
	} else {
		v6 = append(v6, p.Bits())
	}
	text := formatPrefixLengths(v4, v6)
	v4, v6 = parsePrefixLengths(counters.StoredReason(counters.OriginManual, text)) // sorted, once each
	until := ban.Until
	if h.BannedUntil.After(until) {
		until = h.BannedUntil
	}
	keep := until.Sub(now) + time.Millisecond
	if rb, rerr := b.Ban(ctx, PrefixBanLengthsKey, keep, counters.StoredReason(counters.OriginManual, text)); rb.Key == "" {
		return ban, fmt.Errorf("the ban of %s is in force, but its prefix length could not be recorded (admission will not find it): %w", p, rerr)
	}
	e.prefixes.p.Store(&prefixLengths{v4: v4, v6: v6, until: now.Add(keep), checked: now})
	return ban, err
}
