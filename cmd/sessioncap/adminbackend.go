package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/sessioncap/sessioncap/admin"
	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/engine"
	"github.com/sessioncap/sessioncap/limits"
)

// adminBackend lets the admin API act on the running daemon.
type adminBackend struct{ d *daemon }

var _ admin.Backend = adminBackend{}

// Bans lists the bans of clients in force, without the store's record of
// banned prefix lengths (engine.PrefixBanLengthsKey).
func (b adminBackend) Bans(ctx context.Context) ([]counters.Ban, error) {
	bans, err := b.d.store.Bans(ctx)
	return slices.DeleteFunc(bans, engine.IsPrefixBanLengths), err
}

// Unban lifts every ban covering target: of every policy scope and of prefix
// lengths from before a reload.
func (b adminBackend) Unban(ctx context.Context, target string) ([]string, error) {
	bans, err := b.d.store.Bans(ctx)
	if err != nil {
		// Lifting only what this host can see would look like success
		// while the shared store keeps the ban.
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

// Ban bans target: an address is banned under the key its connections are
// counted under; a prefix of any length is banned as a whole, and a
// connection from any address inside it is refused (engine.BanPrefix).
func (b adminBackend) Ban(ctx context.Context, target string, d time.Duration, reason string) (counters.Ban, error) {
	r := b.d.srv.Rules()
	p, err := netip.ParsePrefix(target)
	if err != nil {
		addr, err := netip.ParseAddr(target)
		if err != nil {
			return counters.Ban{}, fmt.Errorf("%w: %v", admin.ErrInvalid, err)
		}
		p = r.Key(addr)
	}
	if _, _, exempt := r.ForConnect(p.Addr()); exempt {
		return counters.Ban{}, fmt.Errorf("%w: %s is in exempt.networks, which skip every limit", admin.ErrInvalid, target)
	}
	ban, err := b.d.eng.BanPrefix(ctx, p, d, counters.StoredReason(counters.OriginManual, reason))
	if err == nil || ban.Key != "" {
		b.d.log.Warn("banned", "key", ban.Key, "prefix", p.String(), "origin", ban.Origin, "reason", ban.Reason,
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
