// Command sessioncap is a milter for Postfix and Sendmail that caps SMTP
// sessions (bytes, messages and recipients per connection), bans addresses
// that connect too often and bounds concurrent sessions, answering only at
// transaction boundaries with 4xx replies so that no mail is lost or looped.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/sessioncap/sessioncap/admin"
	"github.com/sessioncap/sessioncap/config"
)

// version is set at build time: -ldflags "-X main.version=1.2.3".
var version = "dev"

// Exit codes.
const (
	exitOK      = 0
	exitRuntime = 1
	exitConfig  = 78 // EX_CONFIG (sysexits.h): bad configuration or usage; systemd must not restart.
	// Not 2: the Go runtime exits 2 on a panic, and a crash must be restarted.
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

var usageText = `Usage:
  sessioncap [-config FILE] [-listen SPEC] [-metrics-listen HOST:PORT]
  sessioncap check-config [-config FILE] [-explain ADDRESS [-user NAME] [-sender ADDRESS]]
  sessioncap version
  sessioncap bans [-json] | status [-json] | reload
  sessioncap ban ADDRESS|PREFIX -for DURATION [-reason TEXT]
  sessioncap unban ADDRESS|PREFIX
  sessioncap quota show|reset [-json] KEYKIND VALUE
  sessioncap replay [-config FILE] [-since T] [-until T] [-json] [-html FILE] LOG...

sessioncap is a milter that caps SMTP sessions for Postfix and Sendmail:
messages, bytes and recipients per connection, connections per address per
time window (with a temporary ban) and concurrent sessions. It answers only
at connect, MAIL FROM, RCPT TO and end of message, always with a 4xx reply,
so the sender keeps every refused message and retries it on a new
connection.

Without -config it reads ` + config.DefaultPath + ` if that file exists, and
otherwise runs with built-in defaults.

Options:
  -config FILE               TOML configuration file
  -listen SPEC               milter socket in Postfix notation, overriding the file:
                             inet:HOST:PORT, inet6:[ADDR]:PORT, unix:/PATH
                             (default ` + config.DefaultListen + `)
  -metrics-listen HOST:PORT  Prometheus /metrics address; "" disables
                             (default ` + config.DefaultMetricsListen + `)

Admin commands (bans, ban, unban, reload, status, quota) talk to the running daemon
over its admin socket; each takes -admin SPEC (default
` + admin.DefaultListen + `) and -token-file FILE.
"sessioncap bans -h" tells more.

Signals:
  SIGHUP           reload the configuration; a bad file keeps the old one
  SIGTERM, SIGINT  stop accepting, let sessions finish (bounded), exit 0;
                   a second signal exits at once

Exit status: 0 on success, 1 on a runtime error, 78 (EX_CONFIG) on a
configuration or usage error.

More in the man pages sessioncap(8) and sessioncap.toml(5).
`

// commands are the CLI's commands (its first argument); without one it runs
// the daemon.
var commands = []string{"check-config", "version", "bans", "ban", "unban", "reload", "status", "quota", "replay", "help"}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "check-config":
			return checkConfig(args[1:], stdout, stderr)
		case "version":
			fmt.Fprintf(stdout, "sessioncap %s (%s)\n", version, runtime.Version())
			return exitOK
		case "bans", "ban", "unban", "reload", "status":
			return adminCommand(args[0], args[1:], stdout, stderr)
		case "quota":
			return quotaCommand(args[1:], stdout, stderr)
		case "replay":
			return replayCommand(args[1:], os.Stdin, stdout, stderr)
		case "help":
			fmt.Fprint(stdout, usageText)
			return exitOK
		}
	}
	fs, f := daemonFlags()
	if code, ok := parseFlags(fs, func() error { return fs.Parse(args) }, usageText, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageError(stderr, "sessioncap", "unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	cfg, path, required, err := loadConfig(*f.configPath)
	if err != nil {
		fmt.Fprintf(stderr, "sessioncap: bad configuration:\n%v\n", err)
		return exitConfig
	}
	opts := daemonOptions{configPath: path, configRequired: required}
	if set["listen"] {
		opts.listen = f.listen
	}
	if set["metrics-listen"] {
		opts.metricsListen = f.metricsListen
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	return runDaemon(context.Background(), cfg, opts, sigs, stderr)
}

// daemonArgs are the daemon's flags.
type daemonArgs struct {
	configPath, listen, metricsListen *string
}

func daemonFlags() (*flag.FlagSet, daemonArgs) {
	fs := flag.NewFlagSet("sessioncap", flag.ContinueOnError)
	return fs, daemonArgs{
		configPath:    fs.String("config", "", ""),
		listen:        fs.String("listen", "", ""),
		metricsListen: fs.String("metrics-listen", "", ""),
	}
}

// parseFlags runs parse on fs without the flag package's own output: -h
// prints usage to stdout (exit 0), a bad flag one line to stderr (exit 78)
// instead of the whole usage. ok is false when the caller must return code.
func parseFlags(fs *flag.FlagSet, parse func() error, usage string, stdout, stderr io.Writer) (code int, ok bool) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := parse()
	switch {
	case err == nil:
		return exitOK, true
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usage)
		return exitOK, false
	}
	return usageError(stderr, fs.Name(), "%v", err), false
}

// usageError prints one line: what is wrong, and how to see the usage.
func usageError(stderr io.Writer, command, format string, a ...any) int {
	fmt.Fprintf(stderr, "%s: %s (\"%s -h\" shows the usage)\n", command, fmt.Sprintf(format, a...), command)
	return exitConfig
}

func checkConfig(args []string, stdout, stderr io.Writer) int {
	fs, f := checkConfigFlags()
	if code, ok := parseFlags(fs, func() error { return fs.Parse(args) }, checkConfigUsage(fs), stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageError(stderr, fs.Name(), "unexpected argument %q", fs.Arg(0))
	}
	configPath, explainAddr, user, sender := f.configPath, f.explain, f.user, f.sender
	cfg, err := config.Load(*configPath, true)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitConfig
	}
	if *explainAddr == "" {
		if *user != "" || *sender != "" {
			return usageError(stderr, fs.Name(), "-user and -sender need -explain ADDRESS")
		}
		fmt.Fprint(stdout, cfg.Summary())
		return exitOK
	}
	if err := cfg.Explain(stdout, *explainAddr, *user, *sender); err != nil {
		fmt.Fprintln(stderr, "sessioncap check-config:", err)
		return exitConfig
	}
	return exitOK
}

// checkConfigArgs are check-config's flags.
type checkConfigArgs struct {
	configPath, explain, user, sender *string
}

func checkConfigFlags() (*flag.FlagSet, checkConfigArgs) {
	fs := flag.NewFlagSet("sessioncap check-config", flag.ContinueOnError)
	return fs, checkConfigArgs{
		configPath: fs.String("config", config.DefaultPath, "TOML configuration `FILE`"),
		explain:    fs.String("explain", "", "show the rules and override that apply to a client `ADDRESS`"),
		user:       fs.String("user", "", "with -explain: the SMTP AUTH user (`NAME`, {auth_authen})"),
		sender:     fs.String("sender", "", "with -explain: the MAIL FROM `ADDRESS`"),
	}
}

func checkConfigUsage(fs *flag.FlagSet) string {
	var b strings.Builder
	b.WriteString("Usage:\n  sessioncap check-config [-config FILE] [-explain ADDRESS [-user NAME] [-sender ADDRESS]]\n\n" +
		"Prints a summary of the configuration and exits 0, or prints every error\n" +
		"as FILE:LINE: key: message and exits 78.\n\nOptions:\n")
	fs.SetOutput(&b)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	return b.String()
}

// loadConfig loads the -config file, or without one config.DefaultPath if
// it exists (required reports which).
func loadConfig(flagPath string) (cfg *config.Config, path string, required bool, err error) {
	path, required = flagPath, true
	if path == "" {
		path, required = config.DefaultPath, false
	}
	cfg, err = config.Load(path, required)
	return cfg, path, required, err
}
