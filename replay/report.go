package replay

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// Report is what a replay found.
type Report struct {
	// The lines read: used by the replay, of programs it does not read or
	// saying nothing it uses, of its programs but in a shape it does not
	// know, outside -since/-until, and not syslog lines at all.
	Lines      int64 `json:"lines"`
	Used       int64 `json:"lines_used"`
	Ignored    int64 `json:"lines_ignored"`
	Unplaced   int64 `json:"lines_unplaced"`
	OutOfRange int64 `json:"lines_out_of_range"`
	Unparsed   int64 `json:"lines_unparsed"`

	First time.Time `json:"first"`
	Last  time.Time `json:"last"`

	Sessions int64 `json:"sessions"`
	Messages int64 `json:"transactions"`
	// MessagesRefused counts the transactions a rule refused at least once.
	MessagesRefused int64 `json:"transactions_refused"`
	// AfterHangUp counts the transactions of sessions a rule had ended
	// with a 421; they are not replayed (the client would have
	// reconnected).
	AfterHangUp int64 `json:"transactions_after_hangup"`
	OpenPeak    int64 `json:"open_sessions_peak"`

	Rules           []*RuleStats `json:"rules"`
	Quantities      []*Quantity  `json:"quantities"`
	Refusals        []Refusal    `json:"refusals"`
	RefusalsDropped int          `json:"refusals_not_listed,omitempty"`
	Bans            []Ban        `json:"bans"`

	Mode  string `json:"mode"`
	rules map[string]*RuleStats
}

// RuleStats is what one rule (a limit, or a quota by name) would have
// refused.
type RuleStats struct {
	Name     string `json:"rule"`
	Mode     string `json:"mode"`
	Refusals int64  `json:"refusals"`
	Sessions int64  `json:"sessions"`
	Messages int64  `json:"transactions"`
	Clients  int    `json:"clients"`
	Top      []Key  `json:"top"`

	keys    map[string]int64
	clients map[string]struct{}
}

// Key is one key a rule refused, and how often.
type Key struct {
	Key   string `json:"key"`
	Count int64  `json:"refusals"`
}

// Refusal is one refusal, in the terms of the daemon's "refused" log line.
type Refusal struct {
	Time     time.Time `json:"time"`
	Limit    string    `json:"limit"`
	Stage    string    `json:"stage"`
	ClientIP string    `json:"client_ip"`
	Mode     string    `json:"mode"`
	QueueID  string    `json:"queue_id,omitempty"`
	Value    int64     `json:"value,omitempty"`
	Cap      int64     `json:"cap,omitempty"`
	Rule     string    `json:"rule,omitempty"`
	Key      string    `json:"key,omitempty"`
	KeyValue string    `json:"key_value,omitempty"`
	Reply    string    `json:"reply"`
}

// RuleName is the limit, or "quota NAME" for a quota.
func (f Refusal) RuleName() string {
	if f.Limit == string(limits.LimitQuota) && f.Rule != "" {
		return "quota " + f.Rule
	}
	return f.Limit
}

// Ban is one ban a rule started, as the daemon's "banned" log line.
type Ban struct {
	Time     time.Time `json:"time"`
	Limit    string    `json:"limit"`
	ClientIP string    `json:"client_ip"`
	Prefix   string    `json:"prefix"`
	Mode     string    `json:"mode"`
	Until    time.Time `json:"until"`
	Value    int64     `json:"value"`
	Cap      int64     `json:"cap"`
}

// Quantity is the distribution of what one limit caps.
type Quantity struct {
	Name      string   `json:"name"`
	ConfigKey string   `json:"config_key"`
	Unit      string   `json:"unit"`
	Of        string   `json:"of"`    // what each value is of: sessions, networks, users
	Count     int64    `json:"count"` // how many of them
	P50       int64    `json:"p50"`
	P90       int64    `json:"p90"`
	P99       int64    `json:"p99"`
	Max       int64    `json:"max"`
	Cap       int64    `json:"cap"`       // configured; 0: off
	AboveCap  int64    `json:"above_cap"` // values over the cap
	Suggest   int64    `json:"suggest"`
	Reason    string   `json:"reason"`
	Histogram []Bucket `json:"histogram"`
	// KeysDropped counts values not tracked once a million keys were.
	KeysDropped int64 `json:"keys_dropped,omitempty"`
}

// Bucket is one bar of a histogram: Count values at most LE (and above
// the previous bucket's LE).
type Bucket struct {
	LE    int64 `json:"le"`
	Count int64 `json:"count"`
}

func newReport(r *limits.Rules) *Report {
	return &Report{Mode: string(r.Mode), rules: map[string]*RuleStats{}, Refusals: []Refusal{}, Bans: []Ban{}}
}

func (rep *Report) rule(name string) *RuleStats {
	rs := rep.rules[name]
	if rs == nil {
		rs = &RuleStats{Name: name}
		rep.rules[name] = rs
		rep.Rules = append(rep.Rules, rs)
	}
	return rs
}

// finishRules orders the rules and their top keys.
func (rep *Report) finishRules() {
	sort.Slice(rep.Rules, func(i, j int) bool {
		if rep.Rules[i].Refusals != rep.Rules[j].Refusals {
			return rep.Rules[i].Refusals > rep.Rules[j].Refusals
		}
		return rep.Rules[i].Name < rep.Rules[j].Name
	})
	for _, rs := range rep.Rules {
		rs.Clients = len(rs.clients)
		rs.Top = rs.Top[:0]
		for k, n := range rs.keys {
			rs.Top = append(rs.Top, Key{k, n})
		}
		sort.Slice(rs.Top, func(i, j int) bool {
			if rs.Top[i].Count != rs.Top[j].Count {
				return rs.Top[i].Count > rs.Top[j].Count
			}
			return rs.Top[i].Key < rs.Top[j].Key
		})
		if len(rs.Top) > 10 {
			rs.Top = rs.Top[:10]
		}
	}
}

// WriteJSON writes the report for scripts.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// WriteText writes the terminal summary.
func (rep *Report) WriteText(w io.Writer) error {
	b := &strings.Builder{}
	span := "no lines"
	if !rep.First.IsZero() {
		span = rep.First.Format(time.RFC3339) + " to " + rep.Last.Format(time.RFC3339)
	}
	fmt.Fprintf(b, "replayed %d lines (%s): %d used, %d of other programs or saying nothing a rule uses, %d unplaced, %d not syslog lines",
		rep.Lines, span, rep.Used, rep.Ignored, rep.Unplaced, rep.Unparsed)
	if rep.OutOfRange > 0 {
		fmt.Fprintf(b, ", %d outside -since/-until", rep.OutOfRange)
	}
	fmt.Fprintf(b, "\n%d sessions, %d transactions, at most %d sessions open at once\n\n", rep.Sessions, rep.Messages, rep.OpenPeak)

	if len(rep.Rules) == 0 {
		fmt.Fprintf(b, "No rule would have refused anything (mode %s).\n", rep.Mode)
	} else {
		fmt.Fprintf(b, "What the rules would have refused:\n")
		tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  rule\tmode\trefusals\tsessions\ttransactions\tclients\ttop keys")
		for _, rs := range rep.Rules {
			var top []string
			for i, k := range rs.Top {
				if i == 3 {
					break
				}
				top = append(top, fmt.Sprintf("%s (%d)", k.Key, k.Count))
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%d\t%d\t%s\n", rs.Name, rs.Mode, rs.Refusals, rs.Sessions, rs.Messages, rs.Clients, strings.Join(top, ", "))
		}
		tw.Flush()
		if len(rep.Bans) > 0 {
			fmt.Fprintf(b, "  %d bans started\n", len(rep.Bans))
		}
		if rep.AfterHangUp > 0 {
			fmt.Fprintf(b, "  %d transactions came after a 421 ended their session; not replayed (the client would have reconnected)\n", rep.AfterHangUp)
		}
	}
	fmt.Fprintf(b, "\nWhat the limits cap, as the log shows it (p50 / p90 / p99 / max):\n")
	tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  quantity\tof\tp50\tp90\tp99\tmax\tcap\tsuggest")
	for _, q := range rep.Quantities {
		cap := "off"
		if q.Cap > 0 {
			cap = q.format(q.Cap)
			if q.AboveCap > 0 {
				cap += fmt.Sprintf(" (%d above)", q.AboveCap)
			}
		}
		sug := "-"
		if q.Count > 0 {
			sug = q.format(q.Suggest)
		}
		fmt.Fprintf(tw, "  %s\t%d %s\t%s\t%s\t%s\t%s\t%s\t%s\n", q.Name, q.Count, q.Of,
			q.format(q.P50), q.format(q.P90), q.format(q.P99), q.format(q.Max), cap, sug)
	}
	tw.Flush()
	fmt.Fprintf(b, "\nSuggestions:\n")
	for _, q := range rep.Quantities {
		if q.Count > 0 {
			fmt.Fprintf(b, "  %s (%s): %s\n", q.ConfigKey, q.Name, q.Reason)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
