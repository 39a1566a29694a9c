package config

import (
	"fmt"
	"strings"

	"github.com/sessioncap/sessioncap/limits"
)

// summary describes a loaded configuration for check-
func (cfg *Config) Summary() string {
	r := cfg.Rules
	var b strings.Builder
	fmt.Fprintf(&b, "%s: OK\n", cfg.Path)
	fmt.Fprintf(&b, "mode %s; milter %s; metrics %q\n", r.Mode, cfg.Listen, cfg.MetricsListen)
	if r.NeedsTagging() {
		fmt.Fprintf(&b, "tag: header %s\n", r.TagHeader)
	}
	fmt.Fprintf(&b, "milter: allow %v, read_timeout %s\n", cfg.MilterAllow, cfg.ReadTimeout)
	if cfg.PolicyListen == "" {
		b.WriteString("policy: off\n")
	} else {
		fmt.Fprintf(&b, "policy: listen %s, allow %v, read_timeout %s, max_sessions %d, session_idle %s\n",
			cfg.PolicyListen, cfg.PolicyAllow, cfg.PolicyReadTimeout, cfg.PolicyMaxSessions, cfg.PolicySessionIdle)
	}
	describe := func(p limits.Policy) {
		s, f, c := p.Session, p.Frequency, p.Concurrency
		fmt.Fprintf(&b, "  session: max_messages %s, max_bytes %s, max_recipients %s, overrun %s, mode %s\n",
			capString(s.MaxMessages), capString(s.MaxBytes), capString(s.MaxRecipients), s.Overrun, r.ModeOf(s.Mode))
		fmt.Fprintf(&b, "  frequency: max_connections %s per %s, ban %s, mode %s\n", capString(f.MaxConnections), f.Window, f.Ban, r.ModeOf(f.Mode))
		fmt.Fprintf(&b, "  concurrency: max_per_address %s, max_total %s, mode %s\n", capString(c.MaxPerAddress), capString(c.MaxTotal), r.ModeOf(c.Mode))
		if e := p.Errors; e.On() {
			fmt.Fprintf(&b, "  errors: max_per_session %s, max_per_window %s per %s, ban %s, mode %s\n",
				capString(e.MaxPerSession), capString(e.MaxPerWindow), e.Window, e.Ban, r.ModeOf(e.Mode))
		}
	}
	b.WriteString("default:\n")
	describe(r.Default)
	for i, o := range r.Overrides {
		auth := "any"
		if o.Authenticated != nil {
			auth = fmt.Sprint(*o.Authenticated)
		}
		fmt.Fprintf(&b, "override[%d]: ", i)
		if o.Name != "" {
			fmt.Fprintf(&b, "name %q, ", o.Name)
		}
		fmt.Fprintf(&b, "networks %v, authenticated %s", o.Networks, auth)
		if len(o.Users) > 0 {
			fmt.Fprintf(&b, ", users %v", o.Users)
		}
		if len(o.SenderDomains) > 0 {
			fmt.Fprintf(&b, ", sender_domains %v", o.SenderDomains)
		}
		fmt.Fprintln(&b)
		describe(o.Policy)
	}
	fmt.Fprintf(&b, "exempt: networks %v, authenticated %v\n", r.ExemptNetworks, r.ExemptAuthenticated)
	if sn := r.SenderNetworks; sn.MaxNetworks > 0 {
		fmt.Fprintf(&b, "sender_networks: max_networks %d per %s, networks /%d and /%d, %d exempt domains, mode %s\n",
			sn.MaxNetworks, sn.Window, sn.IPv4Prefix, sn.IPv6Prefix, len(sn.ExemptDomains), r.ModeOf(sn.Mode))
	}
	for _, q := range r.Quotas {
		fmt.Fprintf(&b, "rate %q: %d %s per %s by %s, mode %s", q.Name, q.Limit, q.Count, q.Window, q.Key, r.ModeOf(q.Mode))
		if q.Only != "" {
			fmt.Fprintf(&b, ", only %s", q.Only)
		}
		fmt.Fprintln(&b)
	}
	if len(r.Deny.Networks) > 0 {
		fmt.Fprintf(&b, "deny: networks %v, mode %s, reply %q\n", r.Deny.Networks, r.ModeOf(r.Deny.Mode), r.Replies[limits.ReplyDeny].String())
	}
	fmt.Fprintf(&b, "addresses: ipv4 /%d, ipv6 /%d, max_tracked %d, max_bans %d\n", r.IPv4Prefix, r.IPv6Prefix, cfg.MaxTracked, cfg.MaxBans)
	st := cfg.Store
	fmt.Fprintf(&b, "store: %s, timeout %s, on_error %s, state_file %q\n", st.Backend, st.Timeout, st.OnError, st.StateFile)
	if st.Backend == "redis" {
		kind := "standalone"
		switch {
		case st.Redis.MasterName != "":
			kind = "sentinel, master " + st.Redis.MasterName
		case st.Redis.Cluster:
			kind = "cluster"
		}
		fmt.Fprintf(&b, "  redis: %s %v, db %d, tls %v, key_prefix %q\n", kind, st.Redis.Addresses, st.Redis.DB, st.Redis.TLS, st.Redis.KeyPrefix)
	}
	fmt.Fprintf(&b, "admin: %q\n", cfg.AdminListen)
	return b.String()
}

// ConcurrencyConfigured reports whether any policy has a concurrency cap.
func ConcurrencyConfigured(r *limits.Rules) bool {
	c := func(p limits.Policy) bool { return p.Concurrency.MaxPerAddress > 0 || p.Concurrency.MaxTotal > 0 }
	if c(r.Default) {
		return true
	}
	for _, o := range r.Overrides {
		if c(o.Policy) {
			return true
		}
	}
	return false
}

func capString(n int64) string {
	if n == 0 {
		return "off"
	}
	return fmt.Sprint(n)
}
