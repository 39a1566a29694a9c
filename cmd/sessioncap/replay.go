package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/sessioncap/sessioncap/config"
	"github.com/sessioncap/sessioncap/replay"
)

var replayUsageText = `Usage:
  sessioncap replay [-config FILE] [-since TIME] [-until TIME] [-year YEAR]
                    [-json] [-html FILE] LOG...

Replays Postfix's and Sendmail's mail logs under a configuration: the same
engine as the daemon decides every session the log shows, with the log's
timestamps as its clock, and the report says what each rule would have
refused and how the quantities the limits cap are distributed (p50, p90,
p99, max), with a suggested value for each.

LOG is a file (plain or gzip; rotated files in any order) or - for
standard input. Lines may be classic syslog (Dec  3 23:16:29), RFC 3339
(rsyslog), or journalctl -o short-iso / short-precise.

Options:
  -config FILE   the configuration to replay (default: built-in defaults,
                 or ` + config.DefaultPath + ` if it exists)
  -since TIME    replay lines at or after TIME (RFC 3339, or 2006-01-02)
  -until TIME    replay lines before TIME
  -year YEAR     the year of classic syslog timestamps (default: each
                 file's modification time)
  -json          write the report as JSON (every refusal in the daemon's
                 terms: limit, stage, client_ip, mode) instead of text
  -html FILE     also write a self-contained HTML page with a histogram
                 per quantity, the configured cap on it, and the top
                 refused keys
`

type replayArgs struct {
	configPath, since, until, html *string
	year                           *int
	json                           *bool
}

func replayFlags() (*flag.FlagSet, replayArgs) {
	fs := flag.NewFlagSet("sessioncap replay", flag.ContinueOnError)
	return fs, replayArgs{
		configPath: fs.String("config", "", ""),
		since:      fs.String("since", "", ""),
		until:      fs.String("until", "", ""),
		html:       fs.String("html", "", ""),
		year:       fs.Int("year", 0, ""),
		json:       fs.Bool("json", false, ""),
	}
}

func parseWhen(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("bad time %q: want RFC 3339 (2026-12-03T10:00:00Z) or a date (2026-12-03)", s)
}

func replayCommand(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs, f := replayFlags()
	if code, ok := parseFlags(fs, func() error { return fs.Parse(args) }, replayUsageText, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() == 0 {
		return usageError(stderr, fs.Name(), "no LOG given (use - for standard input)")
	}
	since, err := parseWhen(*f.since)
	if err != nil {
		return usageError(stderr, fs.Name(), "-since: %v", err)
	}
	until, err := parseWhen(*f.until)
	if err != nil {
		return usageError(stderr, fs.Name(), "-until: %v", err)
	}
	if *f.year < 0 || *f.year > 9999 {
		return usageError(stderr, fs.Name(), "-year %d is not a year", *f.year)
	}
	cfg, path, _, err := loadConfig(*f.configPath)
	if err != nil {
		fmt.Fprintf(stderr, "sessioncap replay: bad configuration:\n%v\n", err)
		return exitConfig
	}
	r, err := replay.New(replay.Options{Rules: cfg.Rules, MaxTracked: cfg.MaxTracked, Since: since, Until: until})
	if err != nil {
		fmt.Fprintf(stderr, "sessioncap replay: %v\n", err)
		return exitConfig
	}
	ins, err := replay.OpenInputs(fs.Args(), stdin, *f.year, time.Local)
	if err != nil {
		fmt.Fprintf(stderr, "sessioncap replay: %v\n", err)
		return exitRuntime
	}
	for _, in := range ins {
		err := r.Read(in)
		in.Close()
		if err != nil {
			fmt.Fprintf(stderr, "sessioncap replay: %v\n", err)
			return exitRuntime
		}
	}
	rep := r.Finish()
	if *f.html != "" {
		if err := writeHTMLReport(*f.html, rep, path); err != nil {
			fmt.Fprintf(stderr, "sessioncap replay: %v\n", err)
			return exitRuntime
		}
	}
	if *f.json {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "sessioncap replay: %v\n", err)
		return exitRuntime
	}
	return exitOK
}

func writeHTMLReport(path string, rep *replay.Report, configPath string) error {
	var b strings.Builder
	if err := rep.WriteHTML(&b, configPath); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
