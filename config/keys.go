package config

import (
	"fmt"
	"reflect"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

// Keys returns the path of every key the configuration file accepts, in
// the order of the schema: "listen", "session.max_messages",
// "store.redis.addresses", "override.networks",
// "override.session.max_messages" (an [[override]] entry's keys under
// "override", without an index). It is read from the toml tags of the
// schema itself, so that the man page test and the "did you mean"
// of an unknown key cannot drift from what the daemon accepts.
func Keys() []string {
	var keys []string
	walkKeys(reflect.TypeFor[fileConfig](), "", &keys, nil)
	return keys
}

// arrayTables returns the paths of the arrays of tables ([[override]]).
func arrayTables() map[string]bool {
	arrays := map[string]bool{}
	walkKeys(reflect.TypeFor[fileConfig](), "", new([]string), arrays)
	return arrays
}

// problemType is implemented by every leaf value of the schema.
var problemType = reflect.TypeFor[interface{ problem() error }]()

func walkKeys(t reflect.Type, path string, keys *[]string, arrays map[string]bool) {
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
		ft := f.Type
		switch {
		case reflect.PointerTo(ft).Implements(problemType):
			*keys = append(*keys, sub)
		case ft.Kind() == reflect.Struct:
			walkKeys(ft, sub, keys, arrays)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			if arrays != nil {
				arrays[sub] = true
			}
			walkKeys(ft.Elem(), sub, keys, arrays)
		}
	}
}

// unknownKey is the message for a key the schema does not have, with the
// likeliest key meant: a known name of the same table a typo or two away
// ("max_mesages"), or the one table that has a key of exactly that name.
func unknownKey(k toml.Key) string {
	parent, leaf := keyPath(k[:len(k)-1]), k[len(k)-1]
	children := map[string]map[string]bool{} // table path → names in it (keys and tables)
	for _, key := range Keys() {
		parts := strings.Split(key, ".")
		for i := range parts {
			p := strings.Join(parts[:i], ".")
			if children[p] == nil {
				children[p] = map[string]bool{}
			}
			children[p][parts[i]] = true
		}
	}
	best, bestDist := "", 0
	for name := range children[parent] {
		d := editDistance(strings.ToLower(leaf), name)
		if d <= typoBudget(name) && (best == "" || d < bestDist || d == bestDist && name < best) {
			best, bestDist = name, d
		}
	}
	if best != "" {
		return fmt.Sprintf("unknown key; did you mean %q?", best)
	}
	var elsewhere []string
	for table, names := range children {
		if names[leaf] && table != parent && !strings.HasPrefix(table, "override") {
			elsewhere = append(elsewhere, joinKey(table, leaf))
		}
	}
	if len(elsewhere) == 1 {
		sort.Strings(elsewhere)
		return fmt.Sprintf("unknown key; did you mean %q?", elsewhere[0])
	}
	return "unknown key"
}

// typoBudget is how many edits a misspelling of name may have: one for
// short names, at most three.
func typoBudget(name string) int {
	return min(3, max(1, len(name)/4))
}

// editDistance is the optimal string alignment distance of a and b: the
// insertions, deletions, substitutions and swaps of neighbours that turn
// one into the other.
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
