package replay

import (
	"context"
	"log/slog"
	"strconv"
	"time"
)

// capture is the engine's logger during a replay: the one line the engine
// writes per refusal and per ban becomes a Refusal or a Ban of the report,
// in the daemon's own terms (limit, stage, client_ip, mode, rule, key).
type capture struct {
	r *Replayer
}

func (c *capture) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (c *capture) WithAttrs([]slog.Attr) slog.Handler           { return c }
func (c *capture) WithGroup(string) slog.Handler                { return c }

func (c *capture) Handle(ctx context.Context, rec slog.Record) error {
	if l := c.r.opts.Logger; l != nil && l.Handler().Enabled(ctx, rec.Level) {
		rec.Time = c.r.now
		_ = l.Handler().Handle(ctx, rec)
	}
	attrs := map[string]string{}
	rec.Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.Resolve().String()
		return true
	})
	switch rec.Message {
	case "refused":
		c.r.refused(Refusal{
			Time:     c.r.now,
			Limit:    attrs["limit"],
			Stage:    attrs["stage"],
			ClientIP: attrs["client_ip"],
			Mode:     attrs["mode"],
			QueueID:  attrs["queue_id"],
			Value:    num(attrs["value"]),
			Cap:      num(attrs["cap"]),
			Rule:     attrs["rule"],
			Key:      attrs["key"],
			KeyValue: attrs["key_value"],
			Reply:    attrs["reply"],
		})
	case "banned":
		c.r.rep.Bans = append(c.r.rep.Bans, Ban{
			Time:     c.r.now,
			Limit:    attrs["limit"],
			ClientIP: attrs["client_ip"],
			Prefix:   attrs["prefix"],
			Mode:     attrs["mode"],
			Until:    parseTime(attrs["until"]),
			Value:    num(attrs["value"]),
			Cap:      num(attrs["cap"]),
		})
	}
	return nil
}

func num(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func parseTime(s string) time.Time {
	t, _ := time.Parse(time.RFC3339, s)
	return t
}

func itoa(i int) string { return strconv.Itoa(i) }

// refused records one refusal against its rule and session.
func (r *Replayer) refused(f Refusal) {
	name := f.RuleName()
	rs := r.rep.rule(name)
	rs.Refusals++
	if f.Mode != "" {
		rs.Mode = f.Mode
	}
	key := f.ClientIP
	if f.KeyValue != "" {
		key = f.KeyValue
	}
	if key == "" {
		key = "(no address)"
	}
	if rs.keys == nil {
		rs.keys = map[string]int64{}
	}
	if _, ok := rs.keys[key]; !ok && len(rs.keys) >= maxKeysPerRule {
		key = "(other keys)"
	}
	rs.keys[key]++
	if _, ok := rs.clients[f.ClientIP]; !ok && len(rs.clients) < maxKeysPerRule {
		if rs.clients == nil {
			rs.clients = map[string]struct{}{}
		}
		rs.clients[f.ClientIP] = struct{}{}
	}
	if r.inTx && !contains(r.txRules, name) {
		r.txRules = append(r.txRules, name)
	}
	if s := r.cur; s != nil {
		if s.refused == nil {
			s.refused = map[string]bool{}
		}
		s.refused[name] = true
	}
	if len(r.rep.Refusals) >= r.opts.MaxRefusals {
		r.rep.RefusalsDropped++
		return
	}
	r.rep.Refusals = append(r.rep.Refusals, f)
}

// maxKeysPerRule bounds the distinct keys counted per rule.
const maxKeysPerRule = 100_000

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}
