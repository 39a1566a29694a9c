package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sessioncap/sessioncap/admin"
	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/internal/duration"
	"github.com/sessioncap/sessioncap/limits"
)

var adminUsageText = `Usage:
  sessioncap bans [-json]
  sessioncap ban ADDRESS|PREFIX -for DURATION [-reason TEXT]
  sessioncap unban ADDRESS|PREFIX
  sessioncap reload
  sessioncap status [-json]

These commands talk to the running daemon over its admin socket. An address
stands for its prefix under the daemon's rules ([addresses] ipv4_prefix,
ipv6_prefix); unban lifts every ban covering it, whichever policy set it.
With the Redis store a ban or unban on one host holds on every host.

Options (before or after the address):
  -admin SPEC        the daemon's admin socket: unix:/PATH or inet:HOST:PORT
                     (default ` + admin.DefaultListen + `)
  -token-file FILE   file holding the bearer token (needed over inet)
  -json              print the daemon's JSON answer: bans prints what GET
                     /v1/bans returns, {"now": TIME, "bans": [BAN...]};
                     status what GET /v1/status returns
  -for DURATION      length of a manual ban: 90m, 6h, 7d, 2w (at most 365d)
  -reason TEXT       free text recorded with a manual ban (its origin is "manual")

Exit status: 0 done, 1 the daemon is unreachable or refused, ` + fmt.Sprint(exitConfig) + ` usage error.
`

// adminArgs are the flags of an admin command; nil where the command has
// no such flag.
type adminArgs struct {
	spec, tokenFile *string
	asJSON          *bool
	banFor          *durationFlag
	reason          *string
	positional      int // how many arguments besides the flags
}

func adminFlags(name string) (*flag.FlagSet, adminArgs) {
	fs := flag.NewFlagSet("sessioncap "+name, flag.ContinueOnError)
	a := adminArgs{
		spec:      fs.String("admin", admin.DefaultListen, ""),
		tokenFile: fs.String("token-file", "", ""),
	}
	switch name {
	case "bans", "status":
		a.asJSON = fs.Bool("json", false, "")
	case "unban":
		a.positional = 1
	case "ban":
		a.positional = 1
		a.banFor = new(durationFlag)
		fs.Var(a.banFor, "for", "")
		a.reason = fs.String("reason", "", "")
	}
	return fs, a
}

// durationFlag is a flag that reads durations as the configuration does:
// "90m", "6h", "7d", "2w".
type durationFlag time.Duration

func (d *durationFlag) String() string { return duration.Format(time.Duration(*d)) }

func (d *durationFlag) Set(s string) error {
	v, err := duration.Parse(s)
	if err != nil {
		return err
	}
	*d = durationFlag(v)
	return nil
}

// adminCommand runs one of the commands that drive a running daemon
// through its admin API, in the manner of fail2ban-client.
func adminCommand(name string, args []string, stdout, stderr io.Writer) int {
	fs, a := adminFlags(name)
	spec, tokenFile := a.spec, a.tokenFile
	var pos []string
	if code, ok := parseFlags(fs, func() (err error) { pos, err = parseInterspersed(fs, args); return err }, adminUsageText, stdout, stderr); !ok {
		return code
	}
	usage := func(format string, args ...any) int { return usageError(stderr, fs.Name(), format, args...) }
	want := a.positional
	switch {
	case len(pos) > want:
		return usage("unexpected argument %q", pos[want])
	case len(pos) < want:
		return usage("want an address or a prefix")
	}
	if _, _, err := admin.ParseSpec(*spec); err != nil {
		return usage("-admin: %v", err)
	}
	var target string
	var err error
	if want == 1 {
		if target, err = admin.ParseTarget(pos[0]); err != nil {
			return usage("%s", invalidText(err))
		}
	}
	var banFor time.Duration
	if name == "ban" {
		banFor = time.Duration(*a.banFor)
		if banFor == 0 {
			return usage("want -for DURATION, the length of the ban")
		}
		if err := admin.CheckBanDuration(banFor); err != nil {
			return usage("-for: %s", invalidText(err))
		}
	}

	c := admin.Dial(*spec, *tokenFile)
	ctx := context.Background()
	switch name {
	case "bans":
		err = printBans(ctx, c, *a.asJSON, stdout)
	case "unban":
		err = unban(ctx, c, target, stdout)
	case "ban":
		err = ban(ctx, c, target, banFor, *a.reason, stdout)
	case "reload":
		if err = c.Reload(ctx); err == nil {
			fmt.Fprintln(stdout, "configuration reloaded")
		}
	case "status":
		err = printStatus(ctx, c, *a.asJSON, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "sessioncap %s: %s\n", name, invalidText(err))
		return exitRuntime
	}
	return exitOK
}

// parseInterspersed parses flags before and after the positional
// arguments ("ban 192.0.2.1 -for 6h"), which the flag package alone stops
// at; after "--" everything is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// invalidText drops the sentinel's prefix from a refusal the operator reads.
func invalidText(err error) string {
	return strings.TrimPrefix(err.Error(), admin.ErrInvalid.Error()+": ")
}

func printBans(ctx context.Context, c *admin.Client, asJSON bool, w io.Writer) error {
	resp, err := c.Bans(ctx)
	if err != nil {
		return err
	}
	bans := resp.Bans
	slices.SortStableFunc(bans, func(a, b counters.Ban) int {
		if c := a.Until.Compare(b.Until); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	if asJSON {
		// The shape of GET /v1/bans: {"now": ..., "bans": [...]}.
		if resp.Bans == nil {
			resp.Bans = []counters.Ban{}
		}
		out, err := json.MarshalIndent(resp, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", out)
		return err
	}
	if len(bans) == 0 {
		fmt.Fprintln(w, "no bans in force")
		return nil
	}
	now := resp.Now
	if now.IsZero() {
		now = time.Now()
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PREFIX\tPOLICY\tORIGIN\tSINCE\tUNTIL\tREMAINING\tHOST\tREASON")
	for _, b := range bans {
		prefix, policy := b.Key, "-"
		if _, scope, p, err := limits.ParseStoreKey(b.Key); err == nil {
			prefix, policy = p.String(), scope
			if policy == "" {
				policy = "default"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", prefix, policy, orDash(b.Origin),
			stamp(b.Since), stamp(b.Until), remaining(b.Until.Sub(now)), orDash(b.Host), orDash(b.Reason))
	}
	return tw.Flush()
}

func unban(ctx context.Context, c *admin.Client, target string, w io.Writer) error {
	keys, err := c.Unban(ctx, target)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		fmt.Fprintf(w, "no ban in force covers %s\n", target)
		return nil
	}
	for _, k := range keys {
		fmt.Fprintf(w, "lifted the ban of %s\n", k)
	}
	return nil
}

func ban(ctx context.Context, c *admin.Client, target string, d time.Duration, reason string, w io.Writer) error {
	b, err := c.Ban(ctx, target, d, reason)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "banned %s until %s (%s), origin %s", b.Key, stamp(b.Until), duration.Format(d), orDash(b.Origin))
	if b.Reason != "" {
		fmt.Fprintf(w, ": %s", b.Reason)
	}
	fmt.Fprintln(w)
	return nil
}

func printStatus(ctx context.Context, c *admin.Client, asJSON bool, w io.Writer) error {
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		out, err := json.MarshalIndent(st, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", out)
		return err
	}
	health := "up"
	if !st.StoreUp {
		health = "DOWN"
	}
	tracked := fmt.Sprint(st.Tracked)
	if st.Tracked < 0 {
		tracked = "unknown"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "version\t%s\n", st.Version)
	fmt.Fprintf(tw, "mode\t%s\n", st.Mode)
	fmt.Fprintf(tw, "store\t%s (%s)\n", st.StoreBackend, health)
	fmt.Fprintf(tw, "sessions\t%d active\n", st.SessionsActive)
	fmt.Fprintf(tw, "bans\t%d\n", st.Bans)
	fmt.Fprintf(tw, "tracked\t%s\n", tracked)
	fmt.Fprintf(tw, "config\t%s, loaded %s\n", orDash(st.ConfigPath), stamp(st.ConfigLoaded))
	return tw.Flush()
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// remaining writes a ban's time left compactly: 3d4h, 5h07m, 4m09s, 12s.
func remaining(d time.Duration) string {
	if d <= 0 {
		return "expired"
	}
	s := int64((d + time.Second/2) / time.Second)
	switch {
	case s >= 86400:
		return fmt.Sprintf("%dd%dh", s/86400, s%86400/3600)
	case s >= 3600:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	case s >= 60:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	}
	return fmt.Sprintf("%ds", s)
}
