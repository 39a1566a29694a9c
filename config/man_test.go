package config

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/sessioncap/sessioncap/limits"
)

const manPage = "../packaging/man/sessioncap.toml.5"

// manEntry is one key documented in sessioncap.toml(5): its table ("" at
// the top level, "override" for [[override]]), name and the text of its
// .TP line.
type manEntry struct {
	table, name, line string
}

// readManKeys returns the keys the KEYS section of the man page documents:
// a .TP entry "\fBname\fR …" under a .SS heading "Top level", "[table]" or
// "[[table]]". It also returns the whole page.
func readManKeys(t *testing.T) ([]manEntry, string) {
	t.Helper()
	data, err := os.ReadFile(manPage)
	if err != nil {
		t.Fatal(err)
	}
	page := string(data)
	var entries []manEntry
	inKeys, table, afterTP := false, "", false
	heading := regexp.MustCompile(`^\.SS "?(Top level|\[\[?([a-z0-9_.]+)\]\]?)"?$`)
	entry := regexp.MustCompile(`^\\fB([a-z0-9_]+)\\fR`)
	for n, line := range strings.Split(page, "\n") {
		switch {
		case strings.HasPrefix(line, ".SH "):
			inKeys = line == ".SH KEYS"
		case !inKeys:
		case strings.HasPrefix(line, ".SS "):
			m := heading.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("%s:%d: heading %q is neither \"Top level\" nor \"[table]\"", manPage, n+1, line)
			}
			table = m[2]
		case line == ".TP":
			afterTP = true
			continue
		case afterTP:
			if m := entry.FindStringSubmatch(line); m != nil {
				entries = append(entries, manEntry{table, m[1], line})
			}
		}
		afterTP = false
	}
	if len(entries) == 0 {
		t.Fatalf("%s: no keys found under .SH KEYS", manPage)
	}
	return entries, page
}

// TestManPageListsEveryKey: sessioncap.toml(5) documents every key the
// daemon accepts (Keys, read from the schema's toml tags), each under the
// heading of its table, and no key the daemon rejects. Every key outside
// [[override]] and [replies] states its default; every reply its default
// code.
func TestManPageListsEveryKey(t *testing.T) {
	entries, page := readManKeys(t)
	documented := map[string]manEntry{}
	for _, e := range entries {
		documented[joinKey(e.table, e.name)] = e
	}
	keys, arrays := Keys(), arrayTables()
	policyTables := map[string]bool{}
	for _, k := range Keys() {
		if parts := strings.Split(k, "."); parts[0] == "override" && len(parts) == 3 {
			policyTables[parts[1]] = true
		}
	}
	var problems []string
	for _, k := range keys {
		parts := strings.Split(k, ".")
		if parts[0] == "override" && len(parts) == 3 && policyTables[parts[1]] {
			// [override.session] takes the keys of [session]: documented
			// once, there, and the override section names the table.
			base := strings.Join(parts[1:], ".")
			if _, ok := documented[base]; !ok && !slices.Contains(keys, base) {
				problems = append(problems, fmt.Sprintf("key %s is accepted but missing: add a .TP entry \"\\fB%s\\fR = TYPE (default …)\" under .SS \"[%s]\" (its [override.%s] is documented with it)", k, parts[2], parts[1], parts[1]))
			}
			if !strings.Contains(page, "[override."+parts[1]+"]") {
				problems = append(problems, fmt.Sprintf("table [override.%s] is accepted but the .SS \"[[override]]\" section does not name it", parts[1]))
			}
			continue
		}
		if _, ok := documented[k]; !ok {
			table, name := "Top level", k
			if i := strings.LastIndex(k, "."); i >= 0 {
				table, name = "["+k[:i]+"]", k[i+1:]
				if arrays[k[:i]] {
					table = "[" + table + "]"
				}
			}
			problems = append(problems, fmt.Sprintf("key %s is accepted but missing: add a .TP entry \"\\fB%s\\fR = TYPE (default …)\" under .SS \"%s\"", k, name, table))
		}
	}
	for _, e := range entries {
		k := joinKey(e.table, e.name)
		if !slices.Contains(keys, k) {
			problems = append(problems, fmt.Sprintf("key %s is documented (.SS \"[%s]\", %q) but the daemon rejects it: remove it or move it to its table", k, e.table, e.line))
			continue
		}
		switch e.table {
		case "override":
		case "replies":
			r := limits.DefaultReplies()[limits.ReplyKey(e.name)]
			if want := fmt.Sprintf("(%d %s)", r.Code, r.Enhanced); !strings.Contains(e.line, want) {
				problems = append(problems, fmt.Sprintf("reply %s: %q does not state its default code %s", k, e.line, want))
			}
		default:
			if !strings.Contains(e.line, "(default") {
				problems = append(problems, fmt.Sprintf("key %s: %q does not state its default", k, e.line))
			}
		}
	}
	if len(problems) > 0 {
		t.Errorf("%s does not match the keys the daemon accepts:\n  %s", manPage, strings.Join(problems, "\n  "))
	}
}
