package redisstore

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// Quota windows ([[rate]] rules) are kept apart from the windows of Hit:
//
//	sessioncap:{bN}:q:K   hash s, p, c: the quota window of K (limits.QuotaWindow,
//	                      64-bit counts); PEXPIRE 2 × window (+ how far start
//	                      is ahead of now) at every count
//
// where K is limits.QuotaStoreKey (quota:RULE:KEYKIND:VALUE) and N its
// bucket. The ops of one stage run in one script (one round trip); in a
// Cluster the keys of one stage may live on several slots, so the ops are
// grouped by bucket and the groups' scripts pipelined (one round trip). A
// batch over several buckets that both checks under enforce and counts (RCPT
// with a recipients quota) checks every group first, then counts: two round
// trips, and two hosts may both pass the check before either counts.

// quotaScript runs limits.ApplyQuotas on the windows KEYS. ARGV[1] is now
// (see scriptPrelude) and each op adds five values: window ms, limit,
// need, add, hard (1/0). It returns {now, then per op: start, prev, curr,
// refused 0/1}, the window as it was before anything was added.
var quotaScript = redis.NewScript(`
local function int(x) return string.format('%.0f', x) end
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local out, ws, stop = {now}, {}, false
for i = 1, #KEYS do
  local a = (i - 1) * 5 + 1
  local win, lim, need, add = tonumber(ARGV[a+1]), tonumber(ARGV[a+2]), tonumber(ARGV[a+3]), tonumber(ARGV[a+4])
  local w = redis.call('HMGET', KEYS[i], 's', 'p', 'c')
  local s, p, c = tonumber(w[1]) or 0, tonumber(w[2]) or 0, tonumber(w[3]) or 0
  local s0 = s
  local t = now
  if t < s then t = s end
  local el = t - s
  if s == 0 or el >= 2 * win then
    s, p, c = t, 0, 0
  elseif el >= win then
    s, p, c = s + win, c, 0
  end
  local est = p * ((win - (t - s)) / win) + c
  local refused = 0
  if need > 0 and lim > 0 and est + need > lim and not (need > lim and c == 0) then
    refused = 1
    if ARGV[a+5] == '1' then stop = true end
  end
  ws[i] = {s, p, c, win, add, s0}
  out[#out+1] = s
  out[#out+1] = p
  out[#out+1] = c
  out[#out+1] = refused
end
if not stop then
  for i = 1, #KEYS do
    local w = ws[i]
    if w[5] > 0 and w[1] == w[6] then
      -- the same fixed window: add to its count; the key already expires
      -- 2 windows after its start
      redis.call('HINCRBY', KEYS[i], 'c', int(w[5]))
    elseif w[5] > 0 then
      redis.call('HSET', KEYS[i], 's', int(w[1]), 'p', int(w[2]), 'c', int(w[3] + w[5]))
      local ttl = 2 * w[4]
      if w[1] > now then ttl = ttl + (w[1] - now) end
      redis.call('PEXPIRE', KEYS[i], int(ttl))
    end
  end
end
return out
`)

var _ counters.QuotaStore = (*Store)(nil)

func (s *Store) quotaKey(key string) string { return s.tag(bucket(key)) + "q:" + key }

// Quota implements counters.QuotaStore in one round trip (one EVALSHA; in
// a Cluster, one pipeline of one EVALSHA per bucket).
func (s *Store) Quota(ctx context.Context, ops []limits.QuotaOp) ([]limits.QuotaUse, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if len(ops) == 0 {
		return nil, nil
	}
	_, cluster := s.c.(*redis.ClusterClient)
	groups := map[uint32][]int{}
	var order []uint32
	for i, op := range ops {
		b := uint32(0)
		if cluster {
			b = bucket(op.Key)
		}
		if _, ok := groups[b]; !ok {
			order = append(order, b)
		}
		groups[b] = append(groups[b], i)
	}
	if len(order) > 1 && checksAndCounts(ops) {
		// Several slots: a hard refusal in one group must stop the others
		// from counting, so check them all first (a second round trip,
		// only for a batch that both checks and counts: RCPT with a
		// recipients quota)
		peek := make([]limits.QuotaOp, len(ops))
		for i, op := range ops {
			peek[i], peek[i].Add = op, 0
		}
		pu, err := s.runGroups(ctx, peek, groups, order)
		if err != nil {
			return nil, err
		}
		for i, u := range pu {
			if u.Refused && ops[i].Hard {
				return pu, nil
			}
		}
	}
	return s.runGroups(ctx, ops, groups, order)
}

// checksAndCounts reports whether a batch has an op that checks under
// enforce and one that counts.
func checksAndCounts(ops []limits.QuotaOp) bool {
	var hard, add bool
	for _, op := range ops {
		hard = hard || (op.Hard && op.Need > 0)
		add = add || op.Add > 0
	}
	return hard && add
}

// runGroups runs one script per group: one command for a single group, else
// one pipeline.
func (s *Store) runGroups(ctx context.Context, ops []limits.QuotaOp, groups map[uint32][]int, order []uint32) ([]limits.QuotaUse, error) {
	uses := make([]limits.QuotaUse, len(ops))
	run := func(c redis.Scripter, idx []int) *redis.Cmd {
		keys := make([]string, len(idx))
		args := make([]any, 0, 1+5*len(idx))
		args = append(args, s.nowArg())
		for j, i := range idx {
			op := ops[i]
			keys[j] = s.quotaKey(op.Key)
			win := max(op.Window.Milliseconds(), 1)
			hard := 0
			if op.Hard {
				hard = 1
			}
			args = append(args, win, op.Limit, op.Need, op.Add, hard)
		}
		if _, ok := c.(redis.Pipeliner); ok {
			return quotaScript.EvalSha(ctx, c, keys, args...)
		}
		return quotaScript.Run(ctx, c, keys, args...)
	}
	cmds := make([]*redis.Cmd, len(order))
	if len(order) == 1 {
		cmds[0] = run(s.c, groups[order[0]])
	} else {
		pipe := s.c.Pipeline()
		for g, b := range order {
			cmds[g] = run(pipe, groups[b])
		}
		_, _ = pipe.Exec(ctx)
		for g, b := range order {
			if redis.HasErrorPrefix(cmds[g].Err(), "NOSCRIPT") { // a node that lost the script
				cmds[g] = run(s.c, groups[b])
			}
		}
	}
	for g, b := range order {
		if err := parseQuotaReply(cmds[g], groups[b], uses); err != nil {
			return nil, err
		}
	}
	return uses, nil
}

func parseQuotaReply(cmd *redis.Cmd, idx []int, uses []limits.QuotaUse) error {
	vals, err := cmd.Int64Slice()
	if err != nil {
		return fmt.Errorf("redisstore: quota: %w", err)
	}
	if len(vals) != 1+4*len(idx) {
		return fmt.Errorf("redisstore: quota: %d values in the reply for %d keys", len(vals), len(idx))
	}
	for j, i := range idx {
		v := vals[1+4*j:]
		uses[i] = limits.QuotaUse{Window: limits.QuotaWindow{Start: v[0], Prev: v[1], Curr: v[2]}, Now: vals[0], Refused: v[3] == 1}
	}
	return nil
}

// ResetQuota implements counters.QuotaStore: one DEL per key, pipelined.
func (s *Store) ResetQuota(ctx context.Context, keys []string) (int, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	pipe := s.c.Pipeline()
	cmds := make([]*redis.IntCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.Del(ctx, s.quotaKey(k))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, fmt.Errorf("redisstore: quota reset: %w", err)
	}
	n := 0
	for _, c := range cmds {
		n += int(c.Val())
	}
	return n, nil
}
