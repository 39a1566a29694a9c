package replay

import (
	"bufio"
	"io"
	"regexp"
	"sort"
	"strings"
)

// Ident is what a refusal is compared by, between the daemon's log and a
// replay: "limit stage client_ip mode rule".
func (f Refusal) Ident() string {
	return f.Limit + " " + f.Stage + " " + f.ClientIP + " " + f.Mode + " " + f.Rule
}

// Ident is what a ban is compared by: "ban client_ip prefix mode".
func (b Ban) Ident() string {
	return "ban " + b.ClientIP + " " + b.Prefix + " " + b.Mode
}

// Idents lists the Idents of refusals and bans, sorted.
func Idents(fs []Refusal, bs []Ban) []string {
	out := make([]string, 0, len(fs)+len(bs))
	for _, f := range fs {
		out = append(out, f.Ident())
	}
	for _, b := range bs {
		out = append(out, b.Ident())
	}
	sort.Strings(out)
	return out
}

var logfmtRe = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S*)`)

// ReadDaemonLog reads the "refused" and "banned" lines of the daemon's log
// in its text format (key=value, as journalctl shows it); other lines are
// skipped.
func ReadDaemonLog(r io.Reader) ([]Refusal, []Ban, error) {
	var fs []Refusal
	var bs []Ban
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	for sc.Scan() {
		l := sc.Text()
		if !strings.Contains(l, "msg=refused") && !strings.Contains(l, "msg=banned") {
			continue
		}
		kv := map[string]string{}
		for _, m := range logfmtRe.FindAllStringSubmatch(l, -1) {
			if _, dup := kv[m[1]]; !dup { // the first: the line's own key, not an attribute's
				kv[m[1]] = strings.Trim(m[2], `"`)
			}
		}
		switch kv["msg"] {
		case "refused":
			fs = append(fs, Refusal{Limit: kv["limit"], Stage: kv["stage"], ClientIP: kv["client_ip"], Mode: kv["mode"],
				QueueID: kv["queue_id"], Value: num(kv["value"]), Cap: num(kv["cap"]), Rule: kv["rule"], Key: kv["key"],
				KeyValue: kv["key_value"], Reply: kv["reply"]})
		case "banned":
			bs = append(bs, Ban{Limit: kv["limit"], ClientIP: kv["client_ip"], Prefix: kv["prefix"], Mode: kv["mode"],
				Until: parseTime(kv["until"]), Value: num(kv["value"]), Cap: num(kv["cap"])})
		}
	}
	return fs, bs, sc.Err()
}
