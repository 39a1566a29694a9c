package config

import (
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/sessioncap/sessioncap/limits"
)

// explain prints which rules and which override apply to a client at addr
// (at connect), and to its transactions as user (SMTP AUTH, "" for none)
// with sender (MAIL FROM, "" for the null sender): what check-config
// -explain shows.
func (cfg *Config) Explain(w io.Writer, addrText, user, sender string) error {
	addr, err := netip.ParseAddr(strings.TrimPrefix(addrText, "IPv6:"))
	if err != nil {
		return fmt.Errorf("-explain: %q is not an IP address", addrText)
	}
	addr = addr.Unmap().WithZone("")
	r := cfg.Rules
	domain, hasDomain := limits.SenderDomain(sender)
	fmt.Fprintf(w, "client %s", addr)
	if user != "" {
		fmt.Fprintf(w, ", user %q", user)
	}
	if sender != "" {
		fmt.Fprintf(w, ", sender %q (domain %q)", sender, domain)
	}
	fmt.Fprintln(w, ":")
	if d := r.Denied(addr); d != nil {
		fmt.Fprintf(w, "  deny: in deny.networks, refused at connect with %d %s (mode %s)\n", d.Code, d.Reason(), r.ModeOf(r.Deny.Mode))
		if r.ModeOf(r.Deny.Mode).Refuses() {
			return nil
		}
	}
	if r.ExemptAddr(addr) {
		fmt.Fprintln(w, "  exempt: in exempt.networks, no limit applies")
		return nil
	}
	policyName := func(i int) string {
		if i < 0 {
			return "default policy"
		}
		o := r.Overrides[i]
		var match []string
		if len(o.Networks) > 0 {
			match = append(match, fmt.Sprintf("networks %v", o.Networks))
		}
		if o.Authenticated != nil {
			match = append(match, fmt.Sprintf("authenticated %v", *o.Authenticated))
		}
		if len(o.Users) > 0 {
			match = append(match, fmt.Sprintf("users %v", o.Users))
		}
		if len(o.SenderDomains) > 0 {
			match = append(match, fmt.Sprintf("sender_domains %v", o.SenderDomains))
		}
		if o.Name != "" {
			return fmt.Sprintf("override[%d] %q (%s)", i, o.Name, strings.Join(match, ", "))
		}
		return fmt.Sprintf("override[%d] (%s)", i, strings.Join(match, ", "))
	}
	connect := limits.Client{Addr: addr, HasAddr: true}
	ci := r.OverrideFor(connect)
	p := r.PolicyOf(connect)
	fmt.Fprintf(w, "  at connect: %s, key %s\n", policyName(ci), r.Key(addr))
	fmt.Fprintf(w, "    frequency: max_connections %s per %s, ban %s, mode %s\n", capString(p.Frequency.MaxConnections), p.Frequency.Window, p.Frequency.Ban, r.ModeOf(p.Frequency.Mode))
	fmt.Fprintf(w, "    concurrency: max_per_address %s, max_total %s, mode %s\n", capString(p.Concurrency.MaxPerAddress), capString(p.Concurrency.MaxTotal), r.ModeOf(p.Concurrency.Mode))
	tx := limits.Client{Addr: addr, HasAddr: true, Authenticated: user != "", User: user, SenderDomain: domain}
	ti := r.OverrideFor(tx)
	s, exempt := r.ForClient(tx)
	fmt.Fprintf(w, "  from MAIL FROM: %s\n", policyName(ti))
	if exempt {
		fmt.Fprintln(w, "    session: exempt (exempt.authenticated)")
	} else {
		fmt.Fprintf(w, "    session: max_messages %s, max_bytes %s, max_recipients %s, overrun %s, mode %s\n",
			capString(s.MaxMessages), capString(s.MaxBytes), capString(s.MaxRecipients), s.Overrun, r.ModeOf(s.Mode))
	}
	if e := r.PolicyOf(tx).Errors; e.On() {
		fmt.Fprintf(w, "    errors: max_per_session %s, max_per_window %s per %s, ban %s, mode %s\n",
			capString(e.MaxPerSession), capString(e.MaxPerWindow), e.Window, e.Ban, r.ModeOf(e.Mode))
	}
	if sn := r.SenderNetworks; sn.MaxNetworks > 0 {
		why := ""
		switch {
		case user != "":
			why = "skipped: authenticated"
		case !hasDomain:
			why = "skipped: no sender domain"
		case sn.Exempt(domain):
			why = "skipped: exempt domain"
		default:
			why = fmt.Sprintf("domain %s from network %s, max_networks %d per %s, mode %s", domain, sn.Network(addr), sn.MaxNetworks, sn.Window, r.ModeOf(sn.Mode))
		}
		fmt.Fprintf(w, "    sender_networks: %s\n", why)
	}
	explainQuotas(w, r, tx, sender)
	return nil
}

// explainQuotas prints each [[rate]] rule with the key it counts this
// client's transactions under, or why it skips them.
func explainQuotas(w io.Writer, r *limits.Rules, c limits.Client, sender string) {
	for i := range r.Quotas {
		q := &r.Quotas[i]
		mode, limit := r.QuotaMode(q, c), r.QuotaLimit(q, c)
		head := fmt.Sprintf("    rate %q: %d %s per %s by %s, mode %s", q.Name, limit, q.Count, q.Window, q.Key, mode)
		if limit != q.Limit || mode != r.ModeOf(q.Mode) {
			head += " (override.rate)"
		}
		switch v, ok := r.QuotaKeyValue(q, limits.QuotaSubject{Client: c, Sender: sender, Recipient: "x"}); {
		case !mode.Decides():
			fmt.Fprintf(w, "%s: off\n", head)
		case q.Key == limits.QuotaRecipient && ok:
			fmt.Fprintf(w, "%s: counted per recipient at RCPT\n", head)
		case ok:
			fmt.Fprintf(w, "%s: key %s %s\n", head, q.Key, v)
		default:
			fmt.Fprintf(w, "%s: %s\n", head, quotaSkip(q, c, sender))
		}
	}
}

// quotaSkip says why q does not count a client.
func quotaSkip(q *limits.Quota, c limits.Client, sender string) string {
	switch {
	case q.Only == limits.OnlyAuthenticated && !c.Authenticated:
		return "skipped: only authenticated"
	case q.Only == limits.OnlyUnauthenticated && c.Authenticated:
		return "skipped: only unauthenticated"
	case q.Key == limits.QuotaUser && c.User == "":
		return "skipped: no SASL user"
	case (q.Key == limits.QuotaSender || q.Key == limits.QuotaSenderDomain) && sender == "":
		return "skipped: null sender"
	}
	return "skipped: exempt"
}
