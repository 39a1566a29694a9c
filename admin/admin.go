// Package admin is the operator's API to a running sessioncap: list, lift
// and set bans, reload the configuration and read the status, as JSON over a
// unix socket (file mode is the access control) or over TCP with a bearer
// token; and the client the sessioncap command uses to speak it.
package admin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/internal/duration"
	"github.com/sessioncap/sessioncap/limits"
)

// DefaultListen is where the daemon listens and the client dials unless told
// otherwise.
const DefaultListen = "unix:/run/sessioncap/admin.sock"

// MaxBan is the longest ban the API sets by hand.
const MaxBan = 365 * 24 * time.Hour

// Backend is what the daemon implements for the API. Targets reach it
// already validated and canonical: an address ("192.0.2.7", "2001:db8::1")
// or a masked prefix ("192.0.2.0/24").
type Backend interface {
	// Bans lists the bans in force.
	Bans(ctx context.Context) ([]counters.Ban, error)
	// Unban lifts every ban covering target and returns the keys it lifted
	// (none when no ban was in force).
	Unban(ctx context.Context, target string) ([]string, error)
	// Ban bans target (its prefix under the rules in force) for d.
	Ban(ctx context.Context, target string, d time.Duration, reason string) (counters.Ban, error)
	// Reload re-reads the configuration; the error says why it was refused
	// (the running configuration is then kept).
	Reload(ctx context.Context) error
	// Status describes the running daemon.
	Status(ctx context.Context) (Status, error)
}

// Status is what GET /v1/status answers.
type Status struct {
	Version        string    `json:"version"`
	Mode           string    `json:"mode"`          // enforce, monitor
	StoreBackend   string    `json:"store_backend"` // memory, redis
	StoreUp        bool      `json:"store_up"`
	SessionsActive int64     `json:"sessions_active"`
	Bans           int64     `json:"bans"`
	Tracked        int64     `json:"tracked"` // -1: unknown
	ConfigPath     string    `json:"config_path"`
	ConfigLoaded   time.Time `json:"config_loaded"`
}

// ErrInvalid marks a request the API refuses as bad (HTTP 400). A Backend
// wraps it to refuse a target it cannot act on.
var ErrInvalid = errors.New("admin: invalid request")

// The JSON bodies of the API.
type (
	// BansResponse answers GET /v1/bans; Now is the daemon's clock, against
	// which the remaining time of each ban is measured.
	BansResponse struct {
		Now  time.Time      `json:"now"`
		Bans []counters.Ban `json:"bans"`
	}
	// UnbanRequest is the body of POST /v1/unban.
	UnbanRequest struct {
		Target string `json:"target"`
	}
	// UnbanResponse answers it: the keys whose ban was lifted, none when
	// no ban covered the target.
	UnbanResponse struct {
		Target string   `json:"target"`
		Keys   []string `json:"keys"`
	}
	// BanRequest is the body of POST /v1/ban; For is a Go duration ("6h").
	BanRequest struct {
		Target string `json:"target"`
		For    string `json:"for"`
		Reason string `json:"reason,omitempty"`
	}
	// BanResponse answers it with the ban in force.
	BanResponse struct {
		Ban counters.Ban `json:"ban"`
	}
	// ReloadResponse answers a successful POST /v1/reload.
	ReloadResponse struct {
		Reloaded bool `json:"reloaded"`
	}
	// ErrorResponse is the body of every 4xx and 5xx answer.
	ErrorResponse struct {
		Error string `json:"error"`
	}
)

// ParseTarget validates an address or a network prefix and returns it in
// canonical form. An IPv4-mapped IPv6 address counts as IPv4; a prefix must
// have no bits set past its length, so that a typo does not ban a network the
// operator did not mean.
func ParseTarget(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", fmt.Errorf("%w: empty target; want an address (192.0.2.7) or a prefix (192.0.2.0/24)", ErrInvalid)
	}
	if len(s) > 64 {
		return "", fmt.Errorf("%w: target too long; want an address (192.0.2.7) or a prefix (192.0.2.0/24)", ErrInvalid)
	}
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return "", fmt.Errorf("%w: %q is not an address or a prefix (want 192.0.2.7, 2001:db8::1 or 192.0.2.0/24)", ErrInvalid, s)
		}
		return a.Unmap().String(), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return "", fmt.Errorf("%w: %q is not an address or a prefix (want 192.0.2.7, 2001:db8::1 or 192.0.2.0/24)", ErrInvalid, s)
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return "", fmt.Errorf("%w: %q: an IPv4-mapped prefix shorter than /96", ErrInvalid, s)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	if m := p.Masked(); m != p {
		return "", fmt.Errorf("%w: %q has bits set past /%d; did you mean %s?", ErrInvalid, s, p.Bits(), m)
	}
	return p.String(), nil
}

// ParseBanDuration validates the length of a manual ban.
func ParseBanDuration(s string) (time.Duration, error) {
	d, err := duration.Parse(s)
	if err != nil {
		return 0, fmt.Errorf("%w: ban duration %q: want a duration such as 90m, 6h, 7d or 2w", ErrInvalid, s)
	}
	return d, CheckBanDuration(d)
}

// CheckBanDuration refuses a manual ban that is not positive or longer than
// MaxBan.
func CheckBanDuration(d time.Duration) error {
	if d <= 0 || d > MaxBan {
		return fmt.Errorf("%w: ban duration %s: want more than 0 and at most %s (365 days)", ErrInvalid, d, MaxBan)
	}
	return nil
}

// maxReason bounds the reason recorded with a manual ban.
const maxReason = 200

func checkReason(s string) error {
	if len(s) > maxReason {
		return fmt.Errorf("%w: reason longer than %d bytes", ErrInvalid, maxReason)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return fmt.Errorf("%w: reason %q has control characters or invalid UTF-8", ErrInvalid, s)
		}
	}
	return nil
}

// CoveredKeys returns the keys of bans whose prefix covers target (as
// ParseTarget returns it): for an address, the bans whose prefix contains
// it; for a prefix, the bans whose prefix overlaps it. Every policy's key
// counts, and so do keys of prefix lengths no longer configured. A Backend
// may use it to resolve Unban; keys that do not parse are skipped.
func CoveredKeys(bans []counters.Ban, target string) []string {
	var t netip.Prefix
	if a, err := netip.ParseAddr(target); err == nil {
		t = netip.PrefixFrom(a, a.BitLen())
	} else if t, err = netip.ParsePrefix(target); err != nil {
		return nil
	}
	var keys []string
	for _, b := range bans {
		_, _, p, err := limits.ParseStoreKey(b.Key)
		if err == nil && p.Overlaps(t) {
			keys = append(keys, b.Key)
		}
	}
	return keys
}
