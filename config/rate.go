package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// rateTable is one [[rate]] (a quota, see limits.Quota).
type rateTable struct {
	Name   value[string]   `toml:"name"`
	Key    value[string]   `toml:"key"`
	Count  value[string]   `toml:"count"`
	Limit  value[byteSize] `toml:"limit"`
	Window value[duration] `toml:"window"`
	Mode   value[string]   `toml:"mode"`
	Reply  value[string]   `toml:"reply"`
	Only   value[string]   `toml:"only"`
	Exempt struct {
		Networks value[prefixList] `toml:"networks"`
		Users    value[stringList] `toml:"users"`
	} `toml:"exempt"`
}

// overrideRateTable is one [[override.rate]]: the limit or mode of the rate
// it names, for the clients of its override.
type overrideRateTable struct {
	Name  value[string]   `toml:"name"`
	Limit value[byteSize] `toml:"limit"`
	Mode  value[string]   `toml:"mode"`
}

func quoted[T ~string](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%q", string(x))
	}
	return strings.Join(s, ", ")
}

// buildRates validates the [[rate]] tables into r.Quotas and the
// [[override.rate]] tables into the overrides' Quotas.
func (v *validator) buildRates(r *limits.Rules, fc *fileConfig) {
	names := map[string]int{}
	for i := range fc.Rate {
		t := &fc.Rate[i]
		prefix := fmt.Sprintf("rate[%d]", i)
		q := limits.Quota{}
		ok := true
		switch n := t.Name.get(""); {
		case !t.Name.set:
			v.add(prefix, "must set name (it labels the rule's metrics and logs, and keys its windows)")
			ok = false
		case t.Name.err != nil:
			ok = false
		case !limits.ValidOverrideName(n):
			v.add(prefix+".name", "%q is not a name: use 1 to 64 letters, digits, '-' and '_'", n)
			ok = false
		case names[n] > 0:
			v.add(prefix+".name", "%q is also the name of rate[%d]: names must be unique (they key the rule's windows)", n, names[n]-1)
			ok = false
		default:
			names[n] = i + 1
			q.Name = n
		}
		switch k := limits.QuotaKey(t.Key.get("")); {
		case !t.Key.set:
			v.add(prefix, "must set key (%s)", quoted(limits.AllQuotaKeys))
			ok = false
		case t.Key.err != nil:
			ok = false
		case !k.Valid():
			v.add(prefix+".key", "must be %s, got %q", quoted(limits.AllQuotaKeys), string(k))
			ok = false
		default:
			q.Key = k
		}
		switch c := limits.QuotaCount(t.Count.get("")); {
		case !t.Count.set:
			v.add(prefix, "must set count (%s)", quoted(limits.AllQuotaCounts))
			ok = false
		case t.Count.err != nil:
			ok = false
		case !c.Valid():
			v.add(prefix+".count", "must be %s, got %q", quoted(limits.AllQuotaCounts), string(c))
			ok = false
		default:
			q.Count = c
		}
		switch n := int64(t.Limit.get(0)); {
		case !t.Limit.set:
			v.add(prefix, "must set limit (more than 0)")
			ok = false
		case t.Limit.err != nil:
			ok = false
		case n <= 0:
			v.add(prefix+".limit", "must be more than 0, got %d (set mode = \"off\" to turn the rule off)", n)
			ok = false
		default:
			q.Limit = n
		}
		switch w := time.Duration(t.Window.get(0)); {
		case !t.Window.set:
			v.add(prefix, "must set window (at least \"1s\")")
			ok = false
		case t.Window.err != nil:
			ok = false
		case w < time.Second:
			v.add(prefix+".window", "must be at least 1s, got %q", w.String())
			ok = false
		default:
			q.Window = w
		}
		v.mode(&q.Mode, &t.Mode, prefix+".mode")
		if t.Reply.set && t.Reply.err == nil {
			if rep, err := limits.ParseQuotaReply(t.Reply.v); err != nil {
				v.add(prefix+".reply", "%s", err.Error())
			} else {
				q.Reply = &rep
			}
		}
		switch o := t.Only.get(""); o {
		case "", limits.OnlyAuthenticated, limits.OnlyUnauthenticated:
			q.Only = o
		default:
			v.add(prefix+".only", "must be %q or %q, got %q", limits.OnlyAuthenticated, limits.OnlyUnauthenticated, o)
		}
		if q.Key == limits.QuotaUser && q.Only == limits.OnlyUnauthenticated {
			v.add(prefix+".only", "a user key counts authenticated sessions only: with only = \"unauthenticated\" the rule would never count")
		}
		q.ExemptNetworks = t.Exempt.Networks.get(nil)
		for _, u := range t.Exempt.Users.get(nil) {
			if u == "" || u == "@" || strings.ContainsAny(u, " \t\r\n") {
				v.add(prefix+".exempt.users", "%q is not a user name or @domain", u)
				continue
			}
			q.ExemptUsers = append(q.ExemptUsers, u)
		}
		if ok {
			r.Quotas = append(r.Quotas, q)
		}
	}
	for i := range fc.Override {
		if i >= len(r.Overrides) {
			break
		}
		for j := range fc.Override[i].Rate {
			t := &fc.Override[i].Rate[j]
			prefix := fmt.Sprintf("override[%d].rate[%d]", i, j)
			qo := limits.QuotaOverride{}
			switch n := t.Name.get(""); {
			case !t.Name.set:
				v.add(prefix, "must set name: the [[rate]] whose limit or mode it replaces")
				continue
			case t.Name.err != nil:
				continue
			case names[n] == 0:
				v.add(prefix+".name", "%q names no [[rate]]", n)
				continue
			default:
				qo.Name = n
			}
			if n := int64(t.Limit.get(0)); t.Limit.set && t.Limit.err == nil {
				if n <= 0 {
					v.add(prefix+".limit", "must be more than 0, got %d (set mode = \"off\" to turn the rule off for these clients)", n)
				}
				qo.Limit = n
			}
			v.mode(&qo.Mode, &t.Mode, prefix+".mode")
			if !t.Limit.set && !t.Mode.set {
				v.add(prefix, "must set limit or mode")
			}
			r.Overrides[i].Quotas = append(r.Overrides[i].Quotas, qo)
		}
	}
}
