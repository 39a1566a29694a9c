package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/sessioncap/sessioncap/admin"
	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// adminBackend lets the admin API act on the running daemon.
type adminBackend struct{ d *daemon }

var _ admin.Backend = adminBackend{}

func (b adminBackend) Bans(ctx context.Context) ([]counters.Ban, error) { return b.d.store.Bans(ctx) }

// Unban lifts every ban covering target: of every policy scope and of prefix
// lengths from before a reload.
func (b adminBackend) Unban(ctx context.Context, target string) ([]string, error) {
	bans, err := b.d.store.Bans(ctx)
	if err != nil {
		return nil, err
	}
	var lifted []string
	for _, key := range admin.CoveredKeys(bans, target) {
		was, err := b.d.store.Unban(ctx, key)
		if err != nil {
			return lifted, err
		}
		if was {
			lifted = append(lifted, key)
		}
	}
	b.d.log.Info("unbanned by operator", "target", target, "keys", lifted)
	return lifted, nil
}

// Ban bans the key that connections from target are counted under: an
// address, or a prefix of exactly the configured length.
func (b adminBackend) Ban(ctx context.Context, target string, d time.Duration, reason string) (counters.Ban, error) {
	r := b.d.srv.Rules()
	var addr netip.Addr
	if p, err := netip.ParsePrefix(target); err == nil {
		want := r.IPv6Prefix
		if p.Addr().Is4() {
			want = r.IPv4Prefix
		}
		if p.Bits() != want {
			return counters.Ban{}, fmt.Errorf("%w: connections are counted per /%d (addresses.ipv%d_prefix); ban an address or a /%d prefix",
				admin.ErrInvalid, want, map[bool]int{true: 4, false: 6}[p.Addr().Is4()], want)
		}
		addr = p.Addr()
	} else if addr, err = netip.ParseAddr(target); err != nil {
		return counters.Ban{}, fmt.Errorf("%w: %v", admin.ErrInvalid, err)
	}
	_, scope, exempt := r.ForConnect(addr)
	if exempt {
		return counters.Ban{}, fmt.Errorf("%w: %s is in exempt.networks, which skip every limit", admin.ErrInvalid, target)
	}
	key := limits.StoreKey(limits.KeyFrequency, scope, r.Key(addr))
	ban, err := b.d.store.Ban(ctx, key, d, counters.StoredReason(counters.OriginManual, reason))
	if err == nil {
		b.d.log.Warn("banned", "key", key, "prefix", r.Key(addr).String(), "origin", ban.Origin, "reason", ban.Reason,
			"ban", d.String(), "until", ban.Until.UTC().Format(time.RFC3339), "mode", string(r.LimitMode(&r.Default, limits.LimitBanned)))
	}
	return ban, err
}

func (b adminBackend) Reload(context.Context) error { return b.d.reload() }

func (b adminBackend) Status(ctx context.Context) (admin.Status, error) {
	st, err := b.d.store.Stats(ctx)
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return admin.Status{}, err
	}
	b.d.reloadMu.Lock()
	cfg, loaded := b.d.cfg, b.d.loadedAt
	b.d.reloadMu.Unlock()
	return admin.Status{
		Version:        version,
		Mode:           string(b.d.srv.Rules().Mode),
		StoreBackend:   b.d.boot.Store.Backend, // [store] changes wait for a restart
		StoreUp:        b.d.storeUp(),
		SessionsActive: b.d.srv.OpenSessions(),
		Bans:           st.Banned,
		Tracked:        st.Tracked,
		ConfigPath:     cfg.Path,
		ConfigLoaded:   loaded,
	}, nil
}
