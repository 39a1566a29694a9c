package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sessioncap/sessioncap/admin"
	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

var _ admin.QuotaBackend = adminBackend{}

// quotaOps are the peeks (or the keys) of value under every rule of kind.
func (b adminBackend) quotaKeys(kind, value string) (*limits.Rules, string, []limits.QuotaOp, error) {
	r := b.d.srv.Rules()
	k := limits.QuotaKey(kind)
	if !k.Valid() {
		return nil, "", nil, fmt.Errorf("%w: unknown key kind %q (want network, user, sender, sender_domain or recipient)", admin.ErrInvalid, kind)
	}
	v, err := r.QuotaValue(k, value)
	if err != nil {
		return nil, "", nil, fmt.Errorf("%w: %v", admin.ErrInvalid, err)
	}
	var ops []limits.QuotaOp
	for i := range r.Quotas {
		if q := &r.Quotas[i]; q.Key == k {
			ops = append(ops, limits.QuotaOp{Key: limits.QuotaStoreKey(q.Name, k, v), Window: q.Window, Limit: q.Limit})
		}
	}
	return r, v, ops, nil
}

// Quota implements admin.QuotaBackend: one peek of every rule of kind, on
// the shared store (fleet-wide on Redis).
func (b adminBackend) Quota(ctx context.Context, kind, value string) (admin.QuotaResponse, error) {
	r, v, ops, err := b.quotaKeys(kind, value)
	if err != nil {
		return admin.QuotaResponse{}, err
	}
	resp := admin.QuotaResponse{Key: kind, Value: v, Now: time.Now().UTC(), Rules: []admin.QuotaRule{}}
	qs, ok := b.d.store.(counters.QuotaStore)
	if !ok || len(ops) == 0 {
		return resp, nil
	}
	uses, err := qs.Quota(ctx, ops)
	if err != nil {
		return resp, err
	}
	j := 0
	for i := range r.Quotas {
		q := &r.Quotas[i]
		if string(q.Key) != kind {
			continue
		}
		resp.Rules = append(resp.Rules, admin.QuotaRule{Rule: q.Name, Count: string(q.Count), Use: uses[j].Used(q.Window),
			Limit: q.Limit, Window: q.Window.String(), Mode: string(r.ModeOf(q.Mode))})
		resp.Now = time.UnixMilli(uses[j].Now).UTC()
		j++
	}
	return resp, nil
}

// ResetQuota implements admin.QuotaBackend.
func (b adminBackend) ResetQuota(ctx context.Context, kind, value string) (admin.QuotaResponse, error) {
	resp, err := b.Quota(ctx, kind, value)
	if err != nil {
		return resp, err
	}
	_, _, ops, _ := b.quotaKeys(kind, value)
	qs, ok := b.d.store.(counters.QuotaStore)
	if !ok || len(ops) == 0 {
		return resp, nil
	}
	keys := make([]string, len(ops))
	for i, op := range ops {
		keys[i] = op.Key
	}
	if _, err := qs.ResetQuota(ctx, keys); err != nil {
		return resp, err
	}
	resp.Reset = true
	b.d.log.Info("quota reset by operator", "key", kind, "key_value", resp.Value, "rules", len(keys))
	return resp, nil
}

var quotaUsageText = `Usage:
  sessioncap quota show [-json] [-admin SPEC] [-token-file FILE] KEYKIND VALUE
  sessioncap quota reset [-json] [-admin SPEC] [-token-file FILE] KEYKIND VALUE

KEYKIND is network, user, sender, sender_domain or recipient; VALUE an
address or prefix, a SASL login, a sender, a domain or a recipient. show
lists each [[rate]] rule of that key with its use and limit; reset clears
them (after fixing a compromised account). With the Redis store both act on
every host. Flags come before KEYKIND.

Options:
  -admin SPEC        the daemon's admin socket: unix:/PATH or inet:HOST:PORT
                     (default ` + admin.DefaultListen + `)
  -token-file FILE   file holding the bearer token (needed over inet)
  -json              print the daemon's JSON answer

Exit status: 0 done, 1 the daemon is unreachable or refused, ` + fmt.Sprint(exitConfig) + ` usage error.
`

// quotaCommand runs "sessioncap quota show|reset".
func quotaCommand(args []string, stdout, stderr io.Writer) int {
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "sessioncap quota: %s\n\n%s", fmt.Sprintf(format, a...), quotaUsageText)
		return exitConfig
	}
	if len(args) == 0 || (args[0] != "show" && args[0] != "reset") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
			fmt.Fprint(stdout, quotaUsageText)
			return exitOK
		}
		return usage("want show or reset")
	}
	verb := args[0]
	fs := flag.NewFlagSet("sessioncap quota "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, quotaUsageText) }
	spec := fs.String("admin", admin.DefaultListen, "")
	tokenFile := fs.String("token-file", "", "")
	asJSON := fs.Bool("json", false, "")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitConfig
	}
	pos := fs.Args()
	if len(pos) != 2 {
		return usage("want KEYKIND VALUE, got %d words", len(pos))
	}
	if !limits.QuotaKey(pos[0]).Valid() {
		return usage("unknown key kind %q (want network, user, sender, sender_domain or recipient)", pos[0])
	}
	if _, _, err := admin.ParseSpec(*spec); err != nil {
		return usage("-admin: %v", err)
	}
	c := admin.Dial(*spec, *tokenFile)
	ctx := context.Background()
	var resp admin.QuotaResponse
	var err error
	if verb == "show" {
		resp, err = c.Quota(ctx, pos[0], pos[1])
	} else {
		resp, err = c.ResetQuota(ctx, pos[0], pos[1])
	}
	if err != nil {
		fmt.Fprintf(stderr, "sessioncap quota %s: %s\n", verb, invalidText(err))
		return exitRuntime
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(resp)
		return exitOK
	}
	printQuota(stdout, resp)
	return exitOK
}

func printQuota(w io.Writer, resp admin.QuotaResponse) {
	if len(resp.Rules) == 0 {
		fmt.Fprintf(w, "no [[rate]] rule is keyed on %s\n", resp.Key)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "RULE\tKEY\tUSE\tLIMIT\tCOUNT\tWINDOW\tMODE")
	for _, r := range resp.Rules {
		fmt.Fprintf(tw, "%s\t%s %s\t%d\t%d\t%s\t%s\t%s\n", r.Rule, resp.Key, resp.Value, r.Use, r.Limit, r.Count, strings.TrimSuffix(strings.TrimSuffix(r.Window, "0s"), "0m"), r.Mode)
	}
	tw.Flush()
	if resp.Reset {
		fmt.Fprintf(w, "reset: the %d rule(s) above start afresh for %s %s\n", len(resp.Rules), resp.Key, resp.Value)
	}
}
