// Package config turns sessioncap's TOML file into the rules and settings
// the daemon runs with: every key checked, every error reported at once
// with its file, line and key.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/internal/socket"
	"github.com/sessioncap/sessioncap/limits"
	"github.com/sessioncap/sessioncap/milter"
	"github.com/sessioncap/sessioncap/policy"
)

// DefaultPath is read when -config is not given and the file exists.
// It and DefaultAdminListen are variables only so that the tests can build
// a binary (-ldflags -X) that never reads or binds the host's files.
var DefaultPath = "/etc/sessioncap/sessioncap.toml"

// DefaultAdminListen is the admin socket when [admin] listen is not set; it
// is skipped when its directory does not exist (see startAdmin).
var DefaultAdminListen = "unix:/run/sessioncap/admin.sock"

// Built-in defaults of the settings that are not policy.
const (
	DefaultListen        = "inet:127.0.0.1:10029"
	DefaultMetricsListen = "127.0.0.1:9829"
	// StateFileAuto puts the state file in systemd's StateDirectory
	// ($STATE_DIRECTORY/state) and writes none when that is not set, so
	// "go run ./cmd/sessioncap" writes nothing the admin did not choose.
	StateFileAuto = "auto"
)

// defaultMilterAllow is the loopback networks: only local processes may
// speak the milter protocol over TCP unless [milter] allow says otherwise.
func defaultMilterAllow() []netip.Prefix {
	return []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
}

// Config is a loaded, validated configuration.
type Config struct {
	Path          string // "" for built-in defaults
	Listen        string
	MilterAllow   []netip.Prefix // TCP peers allowed on the milter socket
	ReadTimeout   time.Duration  // how long a milter connection may stay silent
	MetricsListen string
	// The Postfix policy front-end: off while PolicyListen is "".
	PolicyListen      string
	PolicyAllow       []netip.Prefix // TCP peers allowed on the policy socket
	PolicyReadTimeout time.Duration  // how long a policy connection may wait for its next request
	PolicyMaxSessions int            // SMTP sessions the policy front-end keeps counts for
	PolicySessionIdle time.Duration  // how long it keeps a session without a request
	LogFormat         string
	LogLevel          slog.Level
	MaxTracked        int
	MaxBans           int
	Rules             *limits.Rules
	Store             StoreConfig
	AdminListen       string
	AdminToken        string // token file for a TCP admin listener
}

// StoreConfig is the [store] table: where windows and bans live.
type StoreConfig struct {
	Backend   string        // "memory" or "redis"
	Timeout   time.Duration // one store call; then OnError applies
	OnError   string        // "local" or "tempfail"
	StateFile string        // memory state saved across restarts: a path, "auto" or "" (none)
	Redis     RedisConfig
}

// RedisConfig is the [store.redis] table.
type RedisConfig struct {
	Addresses    []string
	MasterName   string
	Cluster      bool
	Username     string
	PasswordFile string
	DB           int
	TLS          bool
	KeyPrefix    string
}

// fileConfig mirrors the TOML file. Every leaf is a value[T], so a bad value
// is recorded and decoding goes on; tags give the key names.
type fileConfig struct {
	Listen value[string] `toml:"listen"`
	Mode   value[string] `toml:"mode"`
	Milter struct {
		Allow       value[prefixList] `toml:"allow"`
		ReadTimeout value[duration]   `toml:"read_timeout"`
	} `toml:"milter"`
	Policy struct {
		Listen      value[string]     `toml:"listen"`
		Allow       value[prefixList] `toml:"allow"`
		ReadTimeout value[duration]   `toml:"read_timeout"`
		MaxSessions value[count]      `toml:"max_sessions"`
		SessionIdle value[duration]   `toml:"session_idle"`
	} `toml:"policy"`
	Metrics struct {
		Listen value[string] `toml:"listen"`
	} `toml:"metrics"`
	Log struct {
		Format value[string] `toml:"format"`
		Level  value[string] `toml:"level"`
	} `toml:"log"`
	PolicyTables
	Addresses struct {
		IPv4Prefix value[int64] `toml:"ipv4_prefix"`
		IPv6Prefix value[int64] `toml:"ipv6_prefix"`
		MaxTracked value[count] `toml:"max_tracked"`
		MaxBans    value[count] `toml:"max_bans"`
	} `toml:"addresses"`
	Store struct {
		Backend   value[string]   `toml:"backend"`
		Timeout   value[duration] `toml:"timeout"`
		OnError   value[string]   `toml:"on_error"`
		StateFile value[string]   `toml:"state_file"`
		Redis     struct {
			Addresses    value[stringList] `toml:"addresses"`
			MasterName   value[string]     `toml:"master_name"`
			Cluster      value[bool]       `toml:"cluster"`
			Username     value[string]     `toml:"username"`
			PasswordFile value[string]     `toml:"password_file"`
			DB           value[int64]      `toml:"db"`
			TLS          value[bool]       `toml:"tls"`
			KeyPrefix    value[string]     `toml:"key_prefix"`
		} `toml:"redis"`
	} `toml:"store"`
	Admin struct {
		Listen    value[string] `toml:"listen"`
		TokenFile value[string] `toml:"token_file"`
	} `toml:"admin"`
	Exempt struct {
		Networks      value[prefixList] `toml:"networks"`
		Authenticated value[bool]       `toml:"authenticated"`
	} `toml:"exempt"`
	Deny struct {
		Networks value[prefixList] `toml:"networks"`
		Mode     value[string]     `toml:"mode"`
	} `toml:"deny"`
	Tag struct {
		Header value[string] `toml:"header"`
	} `toml:"tag"`
	SenderNetworks struct {
		MaxNetworks   value[count]      `toml:"max_networks"`
		Window        value[duration]   `toml:"window"`
		IPv4Prefix    value[int64]      `toml:"ipv4_prefix"`
		IPv6Prefix    value[int64]      `toml:"ipv6_prefix"`
		ExemptDomains value[stringList] `toml:"exempt_domains"`
		Mode          value[string]     `toml:"mode"`
	} `toml:"sender_networks"`
	Override []overrideTable `toml:"override"`
	Rate     []rateTable     `toml:"rate"`
	Replies  struct {
		SessionMessages    value[string] `toml:"session_messages"`
		SessionBytes       value[string] `toml:"session_bytes"`
		SessionBytesSize   value[string] `toml:"session_bytes_size"`
		Overrun            value[string] `toml:"overrun"`
		SessionRecipients  value[string] `toml:"session_recipients"`
		Frequency          value[string] `toml:"frequency"`
		FrequencyNoBan     value[string] `toml:"frequency_no_ban"`
		Banned             value[string] `toml:"banned"`
		BannedManual       value[string] `toml:"banned_manual"`
		ConcurrencyAddress value[string] `toml:"concurrency_address"`
		ConcurrencyTotal   value[string] `toml:"concurrency_total"`
		StoreUnavailable   value[string] `toml:"store_unavailable"`
		Deny               value[string] `toml:"deny"`
		SenderNetworks     value[string] `toml:"sender_networks"`
		Errors             value[string] `toml:"errors"`
		ErrorsBanned       value[string] `toml:"errors_banned"`
	} `toml:"replies"`
}

// PolicyTables are the tables an override can replace.
type PolicyTables struct {
	Session struct {
		MaxMessages   value[count]    `toml:"max_messages"`
		MaxBytes      value[byteSize] `toml:"max_bytes"`
		MaxRecipients value[count]    `toml:"max_recipients"`
		Overrun       value[string]   `toml:"overrun"`
		Mode          value[string]   `toml:"mode"`
	} `toml:"session"`
	Frequency struct {
		MaxConnections value[count]    `toml:"max_connections"`
		Window         value[duration] `toml:"window"`
		Ban            value[duration] `toml:"ban"`
		Mode           value[string]   `toml:"mode"`
	} `toml:"frequency"`
	Concurrency struct {
		MaxPerAddress value[count]  `toml:"max_per_address"`
		MaxTotal      value[count]  `toml:"max_total"`
		Mode          value[string] `toml:"mode"`
	} `toml:"concurrency"`
	Errors struct {
		MaxPerSession value[count]    `toml:"max_per_session"`
		MaxPerWindow  value[count]    `toml:"max_per_window"`
		Window        value[duration] `toml:"window"`
		Ban           value[duration] `toml:"ban"`
		Mode          value[string]   `toml:"mode"`
	} `toml:"errors"`
}

type overrideTable struct {
	Name          value[string]     `toml:"name"`
	Networks      value[prefixList] `toml:"networks"`
	Authenticated value[bool]       `toml:"authenticated"`
	Users         value[stringList] `toml:"users"`
	SenderDomains value[stringList] `toml:"sender_domains"`
	PolicyTables
	Rate []overrideRateTable `toml:"rate"`
}

// Error is one problem in a file, with where it is.
type Error struct {
	File string
	Line int // 0 when unknown
	Key  string
	Msg  string
}

func (e Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one file, in file order.
type Errors []Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Default returns the built-in configuration.
func Default() *Config {
	return &Config{
		Listen:            DefaultListen,
		MilterAllow:       defaultMilterAllow(),
		ReadTimeout:       milter.DefaultReadTimeout,
		MetricsListen:     DefaultMetricsListen,
		PolicyAllow:       defaultMilterAllow(),
		PolicyReadTimeout: policy.DefaultReadTimeout,
		PolicyMaxSessions: policy.DefaultMaxSessions,
		PolicySessionIdle: policy.DefaultSessionIdle,
		LogFormat:         "text",
		LogLevel:          slog.LevelInfo,
		MaxTracked:        counters.DefaultMaxTracked,
		MaxBans:           counters.DefaultMaxBans,
		Rules:             limits.DefaultRules(),
		Store: StoreConfig{
			Backend:   "memory",
			Timeout:   100 * time.Millisecond,
			OnError:   "local",
			StateFile: StateFileAuto,
			Redis:     RedisConfig{Addresses: []string{"127.0.0.1:6379"}, KeyPrefix: "sessioncap:"},
		},
		AdminListen: DefaultAdminListen,
	}
}

// Load reads path. With required false a missing file gives the
// built-in defaults (the default path is optional, an explicit one is not).
func Load(path string, required bool) (*Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !required {
		return Default(), nil
	}
	if err != nil {
		return nil, Errors{{File: path, Msg: err.Error()}}
	}
	return Parse(path, data)
}

// Parse parses and validates a TOML configuration. The error, if any,
// is a Errors listing every problem as FILE:LINE: key: message.
func Parse(path string, data []byte) (*Config, error) {
	var fc fileConfig
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&fc)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, Errors{{File: path, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}}
		}
		return nil, Errors{{File: path, Msg: err.Error()}}
	}
	v := validator{file: path, lines: keyLines(string(data))}
	reported := map[string]bool{}
	for _, k := range md.Undecoded() {
		if reported[keyPath(k[:len(k)-1])] {
			continue // the unknown table was reported already
		}
		reported[keyPath(k)] = true
		v.add(keyPath(k), "%s", unknownKey(k))
	}
	collectValueErrors(&v, reflect.ValueOf(&fc).Elem(), "")
	cfg := v.build(&fc)
	if len(v.errs) > 0 {
		sort.SliceStable(v.errs, func(i, j int) bool {
			a, b := v.errs[i].Line, v.errs[j].Line
			return a != 0 && (b == 0 || a < b)
		})
		return nil, v.errs
	}
	cfg.Path = path
	return cfg, nil
}

type validator struct {
	file  string
	lines map[string]int
	errs  Errors
}

func (v *validator) add(key, format string, args ...any) {
	v.errs = append(v.errs, Error{File: v.file, Line: v.line(key), Key: key, Msg: fmt.Sprintf(format, args...)})
}

// line finds where key was written; keys of arrays of tables fall back to
// the first occurrence without the index.
func (v *validator) line(key string) int {
	if n, ok := v.lines[key]; ok {
		return n
	}
	if n, ok := v.lines[stripIndexes(key)]; ok {
		return n
	}
	// An unknown key of an array of tables comes without its index: the
	// first place it was written.
	first := 0
	for k, n := range v.lines {
		if stripIndexes(k) == key && (first == 0 || n < first) {
			first = n
		}
	}
	return first
}

// collectValueErrors walks fc and reports every value that failed to parse,
// under its TOML key path.
func collectValueErrors(v *validator, rv reflect.Value, path string) {
	if p, ok := rv.Addr().Interface().(interface{ problem() error }); ok {
		if err := p.problem(); err != nil {
			for _, e := range eachError(err) { // every bad item of a list
				v.add(path, "%s", e.Error())
			}
		}
		return
	}
	switch rv.Kind() {
	case reflect.Struct:
		t := rv.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := f.Tag.Get("toml")
			if name == "-" || !f.IsExported() {
				continue
			}
			sub := path
			if !f.Anonymous {
				sub = joinKey(path, name)
			}
			collectValueErrors(v, rv.Field(i), sub)
		}
	case reflect.Slice:
		for i := 0; i < rv.Len(); i++ {
			collectValueErrors(v, rv.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
	}
}

func joinKey(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}

func keyPath(k toml.Key) string { return strings.Join(k, ".") }

// build turns a decoded file into a Config, adding the errors that need more
// than one value to see.
func (v *validator) build(fc *fileConfig) *Config {
	cfg := Default()
	cfg.Listen = fc.Listen.get(cfg.Listen)
	if fc.Listen.set && fc.Listen.err == nil {
		if _, _, err := ParseListen(cfg.Listen); err != nil {
			v.add("listen", "%s", err.Error())
		}
	}
	cfg.MilterAllow = fc.Milter.Allow.get(cfg.MilterAllow)
	if fc.Milter.Allow.set && fc.Milter.Allow.err == nil && len(cfg.MilterAllow) == 0 {
		v.add("milter.allow", "must list at least one network, or no MTA could connect over TCP (the default is [\"127.0.0.0/8\", \"::1/128\"])")
	}
	cfg.ReadTimeout = time.Duration(fc.Milter.ReadTimeout.get(duration(cfg.ReadTimeout)))
	if cfg.ReadTimeout < time.Second {
		v.add("milter.read_timeout", "must be at least 1s, got %q: MTAs stay silent for minutes while their SMTP client types (the default is \"1h\")", cfg.ReadTimeout.String())
	}
	cfg.MetricsListen = fc.Metrics.Listen.get(cfg.MetricsListen)
	v.buildPolicy(cfg, fc)
	r := cfg.Rules
	if m := fc.Mode.get(string(r.Mode)); limits.Mode(m).Valid() {
		r.Mode = limits.Mode(m)
	} else {
		v.add("mode", "%s", badMode(m))
	}
	r.TagHeader = fc.Tag.Header.get(r.TagHeader)
	if !limits.ValidHeaderName(r.TagHeader) {
		v.add("tag.header", "%q is not a header name (printable ASCII without spaces or colons, at most 76 characters)", r.TagHeader)
	}
	switch f := fc.Log.Format.get(cfg.LogFormat); f {
	case "text", "json":
		cfg.LogFormat = f
	default:
		v.add("log.format", "must be \"text\" or \"json\", got %q", f)
	}
	if fc.Log.Level.set && fc.Log.Level.err == nil {
		if err := cfg.LogLevel.UnmarshalText([]byte(fc.Log.Level.v)); err != nil {
			v.add("log.level", "must be \"debug\", \"info\", \"warn\" or \"error\", got %q", fc.Log.Level.v)
		}
	}
	r.IPv4Prefix = int(fc.Addresses.IPv4Prefix.get(int64(r.IPv4Prefix)))
	if r.IPv4Prefix < 1 || r.IPv4Prefix > 32 {
		v.add("addresses.ipv4_prefix", "must be between 1 and 32, got %d", r.IPv4Prefix)
	}
	r.IPv6Prefix = int(fc.Addresses.IPv6Prefix.get(int64(r.IPv6Prefix)))
	if r.IPv6Prefix < 1 || r.IPv6Prefix > 128 {
		v.add("addresses.ipv6_prefix", "must be between 1 and 128, got %d", r.IPv6Prefix)
	}
	if n := fc.Addresses.MaxTracked.get(count(cfg.MaxTracked)); n == 0 {
		v.add("addresses.max_tracked", "must be at least 1 (it bounds the memory the frequency ban uses)")
	} else {
		cfg.MaxTracked = int(n)
	}
	if n := fc.Addresses.MaxBans.get(count(cfg.MaxBans)); n == 0 {
		v.add("addresses.max_bans", "must be at least 1 (it bounds the memory bans use)")
	} else {
		cfg.MaxBans = int(n)
	}
	v.buildStore(&cfg.Store, fc)
	cfg.AdminListen = fc.Admin.Listen.get(cfg.AdminListen)
	cfg.AdminToken = fc.Admin.TokenFile.get("")
	if cfg.AdminListen != "" {
		if network, _, err := ParseListen(cfg.AdminListen); err != nil {
			v.add("admin.listen", "%s", err.Error())
		} else if network != "unix" && cfg.AdminToken == "" {
			v.add("admin.listen", "an admin listener on TCP needs admin.token_file (bearer token); use a unix socket otherwise")
		}
	}
	r.ExemptNetworks = fc.Exempt.Networks.get(nil)
	r.ExemptAuthenticated = fc.Exempt.Authenticated.get(false)
	r.Deny.Networks = fc.Deny.Networks.get(nil)
	v.mode(&r.Deny.Mode, &fc.Deny.Mode, "deny.mode")
	v.buildSenderNetworks(&r.SenderNetworks, fc)

	v.applyPolicy(&r.Default, &fc.PolicyTables, "")
	named := map[string]int{}
	for i := range fc.Override {
		o := &fc.Override[i]
		prefix := fmt.Sprintf("override[%d]", i)
		ov := limits.Override{Networks: o.Networks.get(nil), Policy: r.Default}
		if o.Name.set && o.Name.err == nil {
			switch n := o.Name.v; {
			case !limits.ValidOverrideName(n):
				v.add(prefix+".name", "%q is not a name: use 1 to 64 letters, digits, '-' and '_'", n)
			case named[n] > 0:
				v.add(prefix+".name", "%q is also the name of override[%d]: names must be unique (they key the override's bans and windows)", n, named[n]-1)
			default:
				named[n] = i + 1
				ov.Name = n
			}
		}
		if o.Authenticated.set && o.Authenticated.err == nil {
			b := o.Authenticated.v
			ov.Authenticated = &b
		}
		for _, u := range o.Users.get(nil) {
			if u == "" || u == "@" || strings.ContainsAny(u, " \t\r\n") || strings.Count(u, "@") > 1 && !strings.HasPrefix(u, "@") {
				v.add(prefix+".users", "%q is not a user name or @domain", u)
				continue
			}
			ov.Users = append(ov.Users, u)
		}
		for _, d := range o.SenderDomains.get(nil) {
			dom, ok := limits.SenderDomain("@" + d)
			if !ok || strings.Contains(d, "@") {
				v.add(prefix+".sender_domains", "%q is not a domain", d)
				continue
			}
			ov.SenderDomains = append(ov.SenderDomains, dom)
		}
		if !o.Networks.set && !o.Authenticated.set && !o.Users.set && !o.SenderDomains.set {
			v.add(prefix, "must set networks, authenticated, users or sender_domains (an override that matches everyone belongs in the top-level tables)")
		}
		if (ov.AfterConnect() || o.Users.set || o.SenderDomains.set) && (anySet(&o.Frequency) || anySet(&o.Concurrency)) {
			v.add(prefix, "frequency and concurrency are decided at connect, before AUTH and MAIL FROM: an override with authenticated = true, users or sender_domains can only change [session] and [errors] values")
		}
		v.applyPolicy(&ov.Policy, &o.PolicyTables, prefix)
		r.Overrides = append(r.Overrides, ov)
	}
	v.buildRates(r, fc)
	v.applyReplies(r.Replies, fc)
	return cfg
}

// buildPolicy validates the [policy] table.
func (v *validator) buildPolicy(cfg *Config, fc *fileConfig) {
	pt := &fc.Policy
	cfg.PolicyListen = pt.Listen.get(cfg.PolicyListen)
	if cfg.PolicyListen != "" {
		if _, _, err := ParseListen(cfg.PolicyListen); err != nil {
			v.add("policy.listen", "%s", err.Error())
		}
	}
	cfg.PolicyAllow = pt.Allow.get(cfg.PolicyAllow)
	if pt.Allow.set && pt.Allow.err == nil && len(cfg.PolicyAllow) == 0 {
		v.add("policy.allow", "must list at least one network, or no MTA could connect over TCP (the default is [\"127.0.0.0/8\", \"::1/128\"])")
	}
	cfg.PolicyReadTimeout = time.Duration(pt.ReadTimeout.get(duration(cfg.PolicyReadTimeout)))
	if cfg.PolicyReadTimeout < time.Second {
		v.add("policy.read_timeout", "must be at least 1s, got %q: Postfix keeps idle policy connections open for smtpd_policy_service_max_idle (300s) (the default is \"5m30s\")", cfg.PolicyReadTimeout.String())
	}
	if n := pt.MaxSessions.get(count(cfg.PolicyMaxSessions)); n < policy.DefaultMaxConnections {
		v.add("policy.max_sessions", "must be at least %d, got %d: each open policy connection may be serving a session (the default is %d)", policy.DefaultMaxConnections, n, policy.DefaultMaxSessions)
	} else {
		cfg.PolicyMaxSessions = int(n)
	}
	cfg.PolicySessionIdle = time.Duration(pt.SessionIdle.get(duration(cfg.PolicySessionIdle)))
	if cfg.PolicySessionIdle < 5*time.Minute {
		v.add("policy.session_idle", "must be at least 5m, got %q: a session may be silent that long between two requests (smtpd_timeout is 300s), and one forgotten is counted again (the default is \"1h\")", cfg.PolicySessionIdle.String())
	}
}

// badMode is the message for a mode that is none of the four.
func badMode(m string) string {
	return fmt.Sprintf("must be \"enforce\", \"monitor\", \"tag\" or \"off\", got %q", m)
}

// mode reads a table's mode into dst ("" when unset: the top-level mode).
func (v *validator) mode(dst *limits.Mode, val *value[string], key string) {
	if !val.set || val.err != nil {
		return
	}
	if m := limits.Mode(val.v); m.Valid() {
		*dst = m
		return
	}
	v.add(key, "%s", badMode(val.v))
}

// applyPolicy overwrites p with the values set in t.
func (v *validator) applyPolicy(p *limits.Policy, t *PolicyTables, prefix string) {
	v.mode(&p.Session.Mode, &t.Session.Mode, joinKey(prefix, "session.mode"))
	v.mode(&p.Frequency.Mode, &t.Frequency.Mode, joinKey(prefix, "frequency.mode"))
	v.mode(&p.Concurrency.Mode, &t.Concurrency.Mode, joinKey(prefix, "concurrency.mode"))
	v.mode(&p.Errors.Mode, &t.Errors.Mode, joinKey(prefix, "errors.mode"))
	e := &p.Errors
	e.MaxPerSession = int64(t.Errors.MaxPerSession.get(count(e.MaxPerSession)))
	e.MaxPerWindow = int64(t.Errors.MaxPerWindow.get(count(e.MaxPerWindow)))
	e.Window = time.Duration(t.Errors.Window.get(duration(e.Window)))
	e.Ban = time.Duration(t.Errors.Ban.get(duration(e.Ban)))
	if e.MaxPerWindow > 0 && e.Window <= 0 && (prefix == "" || t.Errors.MaxPerWindow.set || t.Errors.Window.set) { // else reported for the default already
		v.add(joinKey(prefix, "errors.window"), "must be longer than 0s while max_per_window is set")
	}
	if prefix == "" || t.Errors.Window.set {
		v.minWindow(joinKey(prefix, "errors.window"), e.Window)
	}
	if e.MaxPerWindow > 0 && e.Ban <= 0 {
		switch {
		case t.Errors.Ban.set:
			v.add(joinKey(prefix, "errors.ban"), "must be longer than 0s while max_per_window is set: the window refuses only by banning (max_per_window = 0 turns it off)")
		case t.Errors.MaxPerWindow.set:
			v.add(joinKey(prefix, "errors.max_per_window"), "needs errors.ban longer than 0s, and it is %s: the window refuses only by banning (max_per_window = 0 turns it off)", e.Ban)
		} // else reported for the default already
	}
	if e.MaxPerWindow > 1<<31 {
		v.add(joinKey(prefix, "errors.max_per_window"), "must be at most %d", int64(1)<<31)
	}
	s := &p.Session
	s.MaxMessages = int64(t.Session.MaxMessages.get(count(s.MaxMessages)))
	s.MaxBytes = int64(t.Session.MaxBytes.get(byteSize(s.MaxBytes)))
	s.MaxRecipients = int64(t.Session.MaxRecipients.get(count(s.MaxRecipients)))
	switch o := t.Session.Overrun.get(string(s.Overrun)); o {
	case string(limits.OverrunAccept), string(limits.OverrunTempfail):
		s.Overrun = limits.Overrun(o)
	default:
		v.add(joinKey(prefix, "session.overrun"), "must be \"accept\" or \"tempfail\", got %q", o)
	}
	f := &p.Frequency
	f.MaxConnections = int64(t.Frequency.MaxConnections.get(count(f.MaxConnections)))
	f.Window = time.Duration(t.Frequency.Window.get(duration(f.Window)))
	f.Ban = time.Duration(t.Frequency.Ban.get(duration(f.Ban)))
	if f.MaxConnections > 0 && f.Window <= 0 {
		v.add(joinKey(prefix, "frequency.window"), "must be longer than 0s while max_connections is set")
	}
	if prefix == "" || t.Frequency.Window.set {
		v.minWindow(joinKey(prefix, "frequency.window"), f.Window)
	}
	if f.MaxConnections > 1<<31 {
		v.add(joinKey(prefix, "frequency.max_connections"), "must be at most %d", int64(1)<<31)
	}
	c := &p.Concurrency
	c.MaxPerAddress = int64(t.Concurrency.MaxPerAddress.get(count(c.MaxPerAddress)))
	c.MaxTotal = int64(t.Concurrency.MaxTotal.get(count(c.MaxTotal)))
}

// minWindow refuses a window shorter than a second (0s is refused, or
// means off, by the caller): the stores count in milliseconds, and a
// window that short counts nothing an admin means.
func (v *validator) minWindow(key string, d time.Duration) {
	if d > 0 && d < time.Second {
		v.add(key, "must be at least 1s, got %q", d.String())
	}
}

func (v *validator) applyReplies(rs limits.Replies, fc *fileConfig) {
	rv := reflect.ValueOf(&fc.Replies).Elem()
	for i := 0; i < rv.NumField(); i++ {
		key := rv.Type().Field(i).Tag.Get("toml")
		val := rv.Field(i).Addr().Interface().(*value[string])
		if !val.set || val.err != nil {
			continue
		}
		reply, err := limits.ParseReplyFor(limits.ReplyKey(key), val.v)
		if err != nil {
			v.add("replies."+key, "%s", err.Error())
			continue
		}
		rs[limits.ReplyKey(key)] = reply
	}
}

// anySet reports whether any value in the struct pointed to by p was set.
func anySet(p any) bool {
	rv := reflect.ValueOf(p).Elem()
	for i := 0; i < rv.NumField(); i++ {
		if s, ok := rv.Field(i).Addr().Interface().(interface{ isSet() bool }); ok && s.isSet() {
			return true
		}
	}
	return false
}

// keyLines maps every key path written in a TOML file to its line number.
// Arrays of tables get indexes: override[1].session.max_bytes.
func keyLines(src string) map[string]int {
	lines := make(map[string]int)
	arrays := make(map[string]int) // array-of-tables path → count so far
	table := ""
	for i, raw := range strings.Split(src, "\n") {
		t := strings.TrimSpace(stripComment(raw))
		switch {
		case t == "":
		case strings.HasPrefix(t, "[["):
			name := normKey(strings.TrimSuffix(strings.TrimPrefix(t, "[["), "]]"))
			name = resolveArrays(name, arrays)
			n := arrays[name]
			arrays[name] = n + 1
			table = fmt.Sprintf("%s[%d]", name, n)
			lines[table] = i + 1
		case strings.HasPrefix(t, "["):
			table = resolveArrays(normKey(strings.TrimSuffix(strings.TrimPrefix(t, "["), "]")), arrays)
			if _, ok := lines[table]; !ok {
				lines[table] = i + 1
			}
		default:
			k, _, ok := strings.Cut(t, "=")
			if !ok || strings.ContainsAny(k, "\"'[{,") && !strings.HasPrefix(strings.TrimSpace(k), "\"") {
				continue
			}
			full := joinKey(table, normKey(k))
			if _, seen := lines[full]; !seen {
				lines[full] = i + 1
			}
		}
	}
	return lines
}

// resolveArrays adds the current index to every prefix of name that is an
// array of tables: "override.session" → "override[0].session".
func resolveArrays(name string, arrays map[string]int) string {
	parts := strings.Split(name, ".")
	out := ""
	for _, p := range parts {
		out = joinKey(out, p)
		if n, ok := arrays[out]; ok && out != name {
			out = fmt.Sprintf("%s[%d]", out, n-1)
		}
	}
	return out
}

func normKey(k string) string {
	parts := strings.Split(strings.TrimSpace(k), ".")
	for i, p := range parts {
		parts[i] = strings.Trim(strings.TrimSpace(p), `"'`)
	}
	return strings.Join(parts, ".")
}

func stripIndexes(key string) string {
	var b strings.Builder
	depth := 0
	for _, r := range key {
		switch {
		case r == '[':
			depth++
		case r == ']':
			depth--
		case depth == 0:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// stripComment removes a # comment that is not inside a string.
func stripComment(line string) string {
	var quote rune
	for i, r := range line {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote == 0 && (r == '"' || r == '\''):
			quote = r
		case quote == 0 && r == '#':
			return line[:i]
		}
	}
	return line
}

// buildSenderNetworks validates the [sender_networks] table.
func (v *validator) buildSenderNetworks(sn *limits.SenderNetworks, fc *fileConfig) {
	t := &fc.SenderNetworks
	sn.MaxNetworks = int64(t.MaxNetworks.get(count(sn.MaxNetworks)))
	if sn.MaxNetworks > 1<<31 {
		v.add("sender_networks.max_networks", "must be at most %d", int64(1)<<31)
	}
	sn.Window = time.Duration(t.Window.get(duration(sn.Window)))
	if sn.MaxNetworks > 0 && sn.Window <= 0 {
		v.add("sender_networks.window", "must be longer than 0s while max_networks is set")
	}
	v.minWindow("sender_networks.window", sn.Window)
	sn.IPv4Prefix = int(t.IPv4Prefix.get(int64(sn.IPv4Prefix)))
	if sn.IPv4Prefix < 1 || sn.IPv4Prefix > 32 {
		v.add("sender_networks.ipv4_prefix", "must be between 1 and 32, got %d", sn.IPv4Prefix)
	}
	sn.IPv6Prefix = int(t.IPv6Prefix.get(int64(sn.IPv6Prefix)))
	if sn.IPv6Prefix < 1 || sn.IPv6Prefix > 128 {
		v.add("sender_networks.ipv6_prefix", "must be between 1 and 128, got %d", sn.IPv6Prefix)
	}
	for _, d := range t.ExemptDomains.get(nil) {
		dom, ok := limits.SenderDomain("@" + d)
		if !ok || strings.Contains(d, "@") {
			v.add("sender_networks.exempt_domains", "%q is not a domain", d)
			continue
		}
		sn.ExemptDomains = append(sn.ExemptDomains, dom)
	}
	v.mode(&sn.Mode, &t.Mode, "sender_networks.mode")
}

// buildStore validates the [store] table.
func (v *validator) buildStore(sc *StoreConfig, fc *fileConfig) {
	st := &fc.Store
	switch b := st.Backend.get(sc.Backend); b {
	case "memory", "redis":
		sc.Backend = b
	default:
		v.add("store.backend", "must be \"memory\" or \"redis\", got %q", b)
	}
	sc.Timeout = time.Duration(st.Timeout.get(duration(sc.Timeout)))
	if sc.Timeout <= 0 {
		v.add("store.timeout", "must be longer than 0s")
	}
	switch o := st.OnError.get(sc.OnError); o {
	case "local", "tempfail":
		sc.OnError = o
	default:
		v.add("store.on_error", "must be \"local\" or \"tempfail\", got %q", o)
	}
	sc.StateFile = st.StateFile.get(sc.StateFile)
	if sc.StateFile != "" && sc.StateFile != StateFileAuto && !strings.HasPrefix(sc.StateFile, "/") {
		v.add("store.state_file", "must be \"auto\", \"\" (off) or an absolute path, got %q", sc.StateFile)
	}
	rc, rf := &sc.Redis, &st.Redis
	rc.Addresses = rf.Addresses.get(rc.Addresses)
	if len(rc.Addresses) == 0 {
		v.add("store.redis.addresses", "must name at least one HOST:PORT")
	}
	for _, a := range rc.Addresses {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			v.add("store.redis.addresses", "%q is not HOST:PORT", a)
		}
	}
	rc.MasterName = rf.MasterName.get("")
	rc.Cluster = rf.Cluster.get(false)
	if len(rc.Addresses) > 1 && rc.MasterName == "" && !rc.Cluster {
		v.add("store.redis.addresses", "lists %d servers: a standalone Redis has one address (set master_name for Sentinel or cluster = true for Cluster)", len(rc.Addresses))
	}
	if rc.MasterName != "" && rc.Cluster {
		v.add("store.redis.cluster", "cannot be true with master_name set: Sentinel and Cluster exclude each other")
	}
	rc.Username = rf.Username.get("")
	rc.PasswordFile = rf.PasswordFile.get("")
	if rc.PasswordFile != "" && sc.Backend == "redis" {
		if _, err := ReadPasswordFile(rc.PasswordFile); err != nil {
			v.add("store.redis.password_file", "%s", err.Error())
		}
	}
	db := rf.DB.get(0)
	if db < 0 {
		v.add("store.redis.db", "must not be negative, got %d", db)
	}
	if db != 0 && rc.Cluster {
		v.add("store.redis.db", "must be 0 with cluster = true (Redis Cluster has one database)")
	}
	rc.DB = int(db)
	rc.TLS = rf.TLS.get(false)
	rc.KeyPrefix = rf.KeyPrefix.get(rc.KeyPrefix)
	if strings.ContainsAny(rc.KeyPrefix, "{} \t\r\n") {
		v.add("store.redis.key_prefix", "must not contain braces or white space (braces would break the Cluster hash tags)")
	}
}

// ReadPasswordFile returns the password in path without the white space
// around it (the trailing newline an editor or echo leaves). The error
// names the path and the reason, without Go's operation prefix.
func ReadPasswordFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", fmt.Errorf("cannot read %q: %v", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// ParseListen reads a socket in Postfix notation (inet:HOST:PORT,
// inet6:[ADDR]:PORT, unix:/PATH) or Sendmail notation (inet:PORT@HOST).
func ParseListen(spec string) (network, address string, err error) {
	network, address, err = socket.Parse(spec)
	if err != nil {
		return "", "", fmt.Errorf("listen %w", err)
	}
	return network, address, nil
}
