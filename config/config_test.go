package config

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

func TestBadConfigs(t *testing.T) {
	want := map[string]string{
		"bad-listen.toml": `bad-listen.toml:1: listen: listen "tcp:127.0.0.1:25": unknown socket type "tcp" (want inet, inet6 or unix)`,
		"bad-milter.toml": `bad-milter.toml:3: milter.allow: must list at least one network, or no MTA could connect over TCP (the default is ["127.0.0.0/8", "::1/128"])
bad-milter.toml:4: milter.read_timeout: a duration must be a string with a unit such as "90s" or "5m", got the bare number 300`,
		"bad-milter-values.toml": `bad-milter-values.toml:3: milter.allow: network "127.0.0.1/8" has host bits set; did you mean "127.0.0.0/8"?
bad-milter-values.toml:4: milter.read_timeout: must be at least 1s, got "0s": MTAs stay silent for minutes while their SMTP client types (the default is "1h")`,
		"bad-policy.toml": `bad-policy.toml:3: policy.listen: listen "tcp:127.0.0.1:10030": unknown socket type "tcp" (want inet, inet6 or unix)
bad-policy.toml:4: policy.allow: must list at least one network, or no MTA could connect over TCP (the default is ["127.0.0.0/8", "::1/128"])
bad-policy.toml:5: policy.read_timeout: a duration must be a string with a unit such as "90s" or "5m", got the bare number 300
bad-policy.toml:6: policy.session_idle: a duration must be a string with a unit such as "90s" or "5m", got the bare number 3600`,
		"bad-policy-values.toml": `bad-policy-values.toml:2: policy.listen: listen "inet:127.0.0.1": address 127.0.0.1: missing port in address
bad-policy-values.toml:3: policy.allow: network "10.1.2.3/8" has host bits set; did you mean "10.0.0.0/8"?
bad-policy-values.toml:4: policy.read_timeout: must be at least 1s, got "500ms": Postfix keeps idle policy connections open for smtpd_policy_service_max_idle (300s) (the default is "5m30s")
bad-policy-values.toml:5: policy.max_sessions: must be at least 1000, got 10: each open policy connection may be serving a session (the default is 100000)
bad-policy-values.toml:6: policy.session_idle: must be at least 5m, got "1m0s": a session may be silent that long between two requests (smtpd_timeout is 300s), and one forgotten is counted again (the default is "1h")`,
		"bad-override.toml": `bad-override.toml:6: override[1]: frequency and concurrency are decided at connect, before AUTH and MAIL FROM: an override with authenticated = true, users or sender_domains can only change [session] and [errors] values
bad-override.toml:11: override[2]: must set networks, authenticated, users or sender_domains (an override that matches everyone belongs in the top-level tables)
bad-override.toml:15: override[3]: frequency and concurrency are decided at connect, before AUTH and MAIL FROM: an override with authenticated = true, users or sender_domains can only change [session] and [errors] values
bad-override.toml:16: override[3].users: "" is not a user name or @domain
bad-override.toml:16: override[3].users: "a@b@c" is not a user name or @domain
bad-override.toml:17: override[3].sender_domains: "x@example.org" is not a domain`,
		"bad-rate.toml": `bad-rate.toml:11: rate[1].name: "user-hourly" is also the name of rate[0]: names must be unique (they key the rule's windows)
bad-rate.toml:12: rate[1].key: must be "network", "user", "sender", "sender_domain", "recipient", got "login"
bad-rate.toml:13: rate[1].count: must be "messages", "recipients", "bytes", got "mails"
bad-rate.toml:14: rate[1].limit: must be more than 0, got 0 (set mode = "off" to turn the rule off)
bad-rate.toml:15: rate[1].window: must be at least 1s, got "500ms"
bad-rate.toml:17: rate[2]: must set name (it labels the rule's metrics and logs, and keys its windows)
bad-rate.toml:22: rate[2].reply: code 550 is not 4xx: every sessioncap limit is temporary, so the sender must keep the mail
bad-rate.toml:28: override[0].rate[0].name: "user-daily" names no [[rate]]`,
		"bad-reply.toml": `bad-reply.toml:2: replies.session_messages: code 550 is not 4xx: every sessioncap limit is temporary, so the sender must keep the mail
bad-reply.toml:3: replies.banned: unknown placeholder {minutes} (known: {cap} {value} {window} {ban})`,
		"bad-syntax.toml": `bad-syntax.toml:3: session.max_bytes: strings cannot contain newlines`,
		"bad-unknown-keys.toml": `bad-unknown-keys.toml:4: session.max_mesages: unknown key; did you mean "max_messages"?
bad-unknown-keys.toml:6: frequncy: unknown key; did you mean "frequency"?
bad-unknown-keys.toml:10: concurrency.max_connections: unknown key; did you mean "frequency.max_connections"?
bad-unknown-keys.toml:13: store.timout: unknown key; did you mean "timeout"?
bad-unknown-keys.toml:14: store.completely_unrelated: unknown key
bad-unknown-keys.toml:19: override.session.max_recipents: unknown key; did you mean "max_recipients"?`,
		"bad-lists.toml": `bad-lists.toml:3: exempt.networks: invalid network "10.0.0.0/33": want a CIDR such as "192.0.2.0/24"
bad-lists.toml:3: exempt.networks: invalid network "2001:db8::/129": want a CIDR such as "192.0.2.0/24"
bad-lists.toml:3: exempt.networks: invalid network "192.168.1": want an address or CIDR such as "192.0.2.0/24"
bad-lists.toml:6: deny.networks: must be a network string such as "192.0.2.0/24", got the integer 7
bad-lists.toml:9: sender_networks.exempt_domains: must be a string, got the integer 1
bad-lists.toml:9: sender_networks.exempt_domains: must be a string, got true`,
		"bad-deny.toml": `bad-deny.toml:3: deny.networks: network "198.51.100.7/24" has host bits set; did you mean "198.51.100.0/24"?
bad-deny.toml:4: deny.mode: must be "enforce", "monitor", "tag" or "off", got "block"
bad-deny.toml:7: replies.deny: code 250 is not 4xx or 5xx
bad-deny.toml:8: replies.banned: code 554 is not 4xx: every sessioncap limit is temporary, so the sender must keep the mail`,
		"bad-windows.toml": `bad-windows.toml:3: frequency.window: must be at least 1s, got "500µs"
bad-windows.toml:7: errors.window: must be at least 1s, got "500µs"
bad-windows.toml:11: sender_networks.window: must be at least 1s, got "500µs"
bad-windows.toml:16: override[0].frequency.window: must be at least 1s, got "999ms"`,
		"bad-sender-networks.toml": `bad-sender-networks.toml:4: sender_networks.window: must be longer than 0s while max_networks is set
bad-sender-networks.toml:5: sender_networks.ipv4_prefix: must be between 1 and 32, got 0
bad-sender-networks.toml:6: sender_networks.ipv6_prefix: must be between 1 and 128, got 129
bad-sender-networks.toml:7: sender_networks.exempt_domains: "user@example.org" is not a domain
bad-sender-networks.toml:7: sender_networks.exempt_domains: "" is not a domain
bad-sender-networks.toml:8: sender_networks.mode: must be "enforce", "monitor", "tag" or "off", got "loud"
bad-sender-networks.toml:11: replies.sender_networks: code 550 is not 4xx: every sessioncap limit is temporary, so the sender must keep the mail`,
		"bad-errors.toml": `bad-errors.toml:4: errors.window: must be longer than 0s while max_per_window is set
bad-errors.toml:5: errors.max_per_session: must not be negative (0 disables the limit), got -2
bad-errors.toml:10: override[0].errors.mode: must be "enforce", "monitor", "tag" or "off", got "ban"
bad-errors.toml:13: replies.errors_banned: unknown placeholder {minutes} (known: {cap} {value} {window} {ban})`,
		"bad-modes.toml": `bad-modes.toml:5: session.mode: must be "enforce", "monitor", "tag" or "off", got "strict"
bad-modes.toml:11: tag.header: "X Sessioncap:" is not a header name (printable ASCII without spaces or colons, at most 76 characters)
bad-modes.toml:16: override[0].concurrency.mode: must be "enforce", "monitor", "tag" or "off", got "warn"`,
		"bad-values.toml": `bad-values.toml:2: mode: must be "enforce", "monitor", "tag" or "off", got "block"
bad-values.toml:5: session.max_messages: must not be negative (0 disables the limit), got -1
bad-values.toml:6: session.max_bytes: invalid size "ten megabytes": use bytes or a number with a unit such as "50MB" or "10MiB"
bad-values.toml:7: session.overrun: must be "accept" or "tempfail", got "drop"
bad-values.toml:10: frequency.window: a duration must be a string with a unit such as "90s" or "5m", got the bare number 60
bad-values.toml:11: frequency.ban: invalid duration "5 minutes": use a number with a unit such as "90s", "5m", "1h", "7d" or "2w"
bad-values.toml:14: addresses.ipv4_prefix: must be between 1 and 32, got 33
bad-values.toml:17: exempt.networks: network "10.1.2.3/8" has host bits set; did you mean "10.0.0.0/8"?
bad-values.toml:17: exempt.networks: invalid network "not-a-network": want an address or CIDR such as "192.0.2.0/24"`,
		"bad-redis-password-missing.toml": `bad-redis-password-missing.toml:8: store.redis.password_file: cannot read "/nonexistent/redis.password": no such file or directory`,
		"bad-redis-password-dir.toml":     `bad-redis-password-dir.toml:5: store.redis.password_file: cannot read "/": is a directory`,
		"bad-redis-standalone.toml":       `bad-redis-standalone.toml:4: store.redis.addresses: lists 2 servers: a standalone Redis has one address (set master_name for Sentinel or cluster = true for Cluster)`,
		"bad-store.toml": `bad-store.toml:2: store.backend: must be "memory" or "redis", got "etcd"
bad-store.toml:3: store.timeout: must be longer than 0s
bad-store.toml:4: store.on_error: must be "local" or "tempfail", got "ignore"
bad-store.toml:5: store.state_file: must be "auto", "" (off) or an absolute path, got "state.json"
bad-store.toml:8: store.redis.addresses: "localhost" is not HOST:PORT
bad-store.toml:9: store.redis.cluster: cannot be true with master_name set: Sentinel and Cluster exclude each other
bad-store.toml:11: store.redis.master_name_typo: unknown key
bad-store.toml:12: store.redis.db: must be 0 with cluster = true (Redis Cluster has one database)
bad-store.toml:13: store.redis.key_prefix: must not contain braces or white space (braces would break the Cluster hash tags)
bad-store.toml:16: admin.listen: an admin listener on TCP needs admin.token_file (bearer token); use a unix socket otherwise
bad-store.toml:19: addresses.max_bans: must be at least 1 (it bounds the memory bans use)`,
		"bad-errors-ban.toml": `bad-errors-ban.toml:5: errors.ban: must be longer than 0s while max_per_window is set: the window refuses only by banning (max_per_window = 0 turns it off)
bad-errors-ban.toml:10: override[0].errors.max_per_window: needs errors.ban longer than 0s, and it is 0s: the window refuses only by banning (max_per_window = 0 turns it off)`,
		"bad-override-name.toml": `bad-override-name.toml:7: override[1].name: "relays" is also the name of override[0]: names must be unique (they key the override's bans and windows)
bad-override-name.toml:11: override[2].name: "our relays" is not a name: use 1 to 64 letters, digits, '-' and '_'`,
	}
	files, err := filepath.Glob("../testdata/config/bad-*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no bad configs: %v", err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			exp, ok := want[name]
			if !ok {
				t.Fatalf("no expected message for %s: add it to this table", name)
			}
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Parse(name, data)
			if err == nil {
				t.Fatal("accepted")
			}
			if got := err.Error(); got != exp {
				t.Fatalf("got:\n%s\nwant:\n%s", got, exp)
			}
		})
	}
}

func TestGoodConfig(t *testing.T) {
	cfg, err := Load("../testdata/config/good-full.toml", true)
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	r := cfg.Rules
	wantDefault := limits.Policy{
		Session:     limits.Session{MaxMessages: 50, MaxBytes: 5_000_000, MaxRecipients: 200, Overrun: limits.OverrunTempfail},
		Frequency:   limits.Frequency{MaxConnections: 30, Window: 90 * time.Second, Ban: 10 * time.Minute},
		Concurrency: limits.Concurrency{MaxPerAddress: 5, MaxTotal: 500},
		Errors:      limits.Errors{MaxPerSession: 10, MaxPerWindow: 50, Window: 30 * time.Minute, Ban: 2 * time.Hour},
	}
	if r.Default != wantDefault {
		t.Errorf("default policy %+v\nwant %+v", r.Default, wantDefault)
	}
	if len(r.Overrides) != 2 {
		t.Fatalf("%d overrides", len(r.Overrides))
	}
	o0 := wantDefault
	o0.Session.MaxMessages, o0.Session.MaxBytes, o0.Concurrency.MaxPerAddress = 1000, 1<<30, 100
	if r.Overrides[0].Policy != o0 || r.Overrides[0].Authenticated != nil ||
		!reflect.DeepEqual(r.Overrides[0].Networks, []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}) {
		t.Errorf("override 0: %+v", r.Overrides[0])
	}
	o1 := wantDefault
	o1.Session.MaxMessages = 500
	if r.Overrides[1].Policy != o1 || r.Overrides[1].Authenticated == nil || *r.Overrides[1].Authenticated != yes {
		t.Errorf("override 1: %+v", r.Overrides[1])
	}
	if cfg.Listen != "inet:127.0.0.1:10030" || cfg.MetricsListen != "127.0.0.1:9830" || cfg.LogFormat != "json" ||
		cfg.LogLevel.String() != "DEBUG" || cfg.MaxTracked != 5000 || r.Mode != limits.ModeMonitor ||
		r.IPv4Prefix != 24 || r.IPv6Prefix != 56 || !r.ExemptAuthenticated || len(r.ExemptNetworks) != 3 {
		t.Errorf("settings: %+v rules %+v", cfg, r)
	}
	if fmt.Sprint(cfg.MilterAllow) != "[127.0.0.0/8 ::1/128 10.1.2.0/24]" || cfg.ReadTimeout != 30*time.Minute {
		t.Errorf("[milter]: allow %v, read_timeout %v", cfg.MilterAllow, cfg.ReadTimeout)
	}
	if got := r.Replies[limits.ReplySessionMessages]; got.Text != "Enough for now ({value} of {cap}); reconnect" || got.Code != 421 {
		t.Errorf("reply override: %+v", got)
	}
}

func TestShippedConfigIsDefaults(t *testing.T) {
	data, err := os.ReadFile("../packaging/sessioncap.toml")
	if err != nil {
		t.Fatal(err)
	}
	setting := regexp.MustCompile(`^#([a-z_0-9]+ = .*)$`)
	var out []string
	inOverride, uncommented := false, 0
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(line, "#[[override]]"), strings.HasPrefix(line, "#[[rate]]"):
			inOverride = true
		case strings.HasPrefix(line, "["):
			inOverride = false
		}
		if m := setting.FindStringSubmatch(line); m != nil && !inOverride {
			line = m[1]
			uncommented++
		}
		out = append(out, line)
	}
	cfg, err := Parse("sessioncap.toml", []byte(strings.Join(out, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	def := Default()
	cfg.Path = ""
	if !reflect.DeepEqual(cfg.Rules.Default, def.Rules.Default) {
		t.Errorf("policy %+v\nwant %+v", cfg.Rules.Default, def.Rules.Default)
	}
	if !reflect.DeepEqual(cfg.Rules.Replies, def.Rules.Replies) {
		t.Errorf("replies differ from the defaults:\n%v\n%v", cfg.Rules.Replies, def.Rules.Replies)
	}
	cfg.Rules.ExemptNetworks = nil // [] in the file, nil built in
	cfg.Rules.Deny.Networks = nil
	if !reflect.DeepEqual(cfg, def) {
		t.Errorf("config %+v\nwant %+v", cfg, def)
	}
	// every key of the schema appears in the file
	for _, k := range []string{"listen", "allow", "read_timeout", "mode", "format", "level", "max_messages", "max_bytes", "max_recipients", "overrun",
		"max_connections", "window", "ban", "max_per_address", "max_total", "ipv4_prefix", "ipv6_prefix", "max_tracked",
		"networks", "authenticated", "session_messages", "session_bytes", "session_bytes_size", "session_recipients",
		"frequency", "banned", "concurrency_address", "concurrency_total", "max_bans", "backend", "timeout", "on_error",
		"state_file", "addresses", "master_name", "cluster", "username", "password_file", "db", "tls", "key_prefix",
		"max_sessions", "session_idle", "token_file", "frequency_no_ban", "store_unavailable", "header", "deny", "max_networks", "exempt_domains", "sender_networks", "max_per_session", "max_per_window", "errors", "errors_banned", "banned_manual",
		"name", "key", "count", "limit", "only"} {
		if !regexp.MustCompile(`(?m)^#` + k + ` = `).Match(data) {
			t.Errorf("key %s is not documented in packaging/sessioncap.toml", k)
		}
	}
	if uncommented != 68 {
		t.Errorf("%d settings found, want 68", uncommented)
	}
}

func TestMissingDefaultFileGivesDefaults(t *testing.T) {
	cfg, err := Load(filepath.Join(t.TempDir(), "absent.toml"), false)
	if err != nil || !reflect.DeepEqual(cfg, Default()) {
		t.Fatalf("got %+v, %v", cfg, err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "absent.toml"), true); err == nil {
		t.Fatal("a missing explicit -config file must be an error")
	}
}

func TestByteSizes(t *testing.T) {
	tests := []struct {
		in   any
		want int64
		err  bool
	}{
		{int64(1000), 1000, false}, {"50MB", 50_000_000, false}, {"10MiB", 10 << 20, false},
		{"1.5 GB", 1_500_000_000, false}, {"512k", 512_000, false}, {"100", 100, false}, {"7b", 7, false},
		{"-1MB", 0, true}, {"MB", 0, true}, {int64(-5), 0, true}, {1.5, 0, true}, {"1e30TB", 0, true},
	}
	for _, tt := range tests {
		got, err := parseByteSize(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("parseByteSize(%v) = %d, %v", tt.in, got, err)
		}
	}
}

func TestModesConfig(t *testing.T) {
	cfg, err := Parse("modes.toml", []byte(`
mode = "monitor"
[session]
mode = "tag"
[tag]
header = "X-Spam-Sessioncap"
[deny]
networks = ["203.0.113.0/24"]
[replies]
deny = "550 5.7.1 Not here"
[[override]]
networks = ["192.0.2.0/24"]
[override.frequency]
mode = "enforce"
[override.session]
mode = "off"
`))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Rules
	d, o := &r.Default, &r.Overrides[0].Policy
	for _, c := range []struct {
		p    *limits.Policy
		l    limits.Limit
		want limits.Mode
	}{
		{d, limits.LimitSessionMessages, limits.ModeTag},
		{d, limits.LimitFrequency, limits.ModeMonitor},
		{d, limits.LimitConcurrencyAddress, limits.ModeMonitor},
		{o, limits.LimitSessionBytes, limits.ModeOff},
		{o, limits.LimitFrequency, limits.ModeEnforce},
		{o, limits.LimitBanned, limits.ModeEnforce},
		{o, limits.LimitConcurrencyTotal, limits.ModeMonitor},
	} {
		if got := r.LimitMode(c.p, c.l); got != c.want {
			t.Errorf("%s of %p: %s, want %s", c.l, c.p, got, c.want)
		}
	}
	if len(cfg.Rules.Deny.Networks) != 1 || cfg.Rules.ModeOf(cfg.Rules.Deny.Mode) != limits.ModeMonitor ||
		cfg.Rules.Replies[limits.ReplyDeny].String() != "550 5.7.1 Not here" {
		t.Errorf("deny: %+v, reply %v", cfg.Rules.Deny, cfg.Rules.Replies[limits.ReplyDeny])
	}
	if !r.NeedsTagging() || r.TagHeader != "X-Spam-Sessioncap" {
		t.Errorf("tagging %v, header %q", r.NeedsTagging(), r.TagHeader)
	}
	if s := cfg.Summary(); !strings.Contains(s, "tag: header X-Spam-Sessioncap") || !strings.Contains(s, "overrun accept, mode off") {
		t.Errorf("summary:\n%s", s)
	}
}

// An override's name keys its bans and windows (override.<name>); without
// one they are keyed by what it matches. check-config -explain shows it.
func TestOverrideName(t *testing.T) {
	cfg, err := Parse("name.toml", []byte("[[override]]\nname = \"relays\"\nnetworks = [\"192.0.2.0/24\"]\n[override.frequency]\nmax_connections = 1000\n\n[[override]]\nnetworks = [\"198.51.100.0/24\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.Rules.Overrides
	if len(o) != 2 || o[0].Name != "relays" || o[0].Scope() != "override.relays" || o[1].Name != "" || !strings.HasPrefix(o[1].Scope(), "override-") {
		t.Fatalf("overrides %+v", o)
	}
	if s := cfg.Summary(); !strings.Contains(s, `override[0]: name "relays", networks [192.0.2.0/24]`) {
		t.Errorf("summary:\n%s", s)
	}
}

func TestRates(t *testing.T) {
	cfg, err := Parse("rates.toml", []byte(`
mode = "enforce"
[[rate]]
name = "user-hourly"
key = "user"
count = "messages"
limit = 200
window = "1h"

[[rate]]
name = "disk"
key = "network"
count = "bytes"
limit = "1GB"
window = "1h"
mode = "monitor"
only = "unauthenticated"
reply = "451 4.7.1 {rule}: try again in {retry}"
exempt.networks = ["192.0.2.0/24"]

[[override]]
users = ["big@example.com"]
[[override.rate]]
name = "user-hourly"
limit = 2000
`))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Rules
	if len(r.Quotas) != 2 {
		t.Fatalf("%d quotas", len(r.Quotas))
	}
	q := r.Quotas[1]
	if q.Name != "disk" || q.Key != limits.QuotaNetwork || q.Count != limits.CountBytes || q.Limit != 1_000_000_000 ||
		q.Window != time.Hour || q.Mode != limits.ModeMonitor || q.Only != "unauthenticated" || q.Reply == nil || len(q.ExemptNetworks) != 1 {
		t.Errorf("disk: %+v", q)
	}
	if o := r.Overrides[0].Quotas; len(o) != 1 || o[0].Name != "user-hourly" || o[0].Limit != 2000 {
		t.Errorf("override quotas %+v", o)
	}
	if err := r.Validate(); err != nil {
		t.Error(err)
	}
}
