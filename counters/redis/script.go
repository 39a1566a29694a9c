package redisstore

import "github.com/redis/go-redis/v9"

// The scripts share these helpers. Every key a script touches is in KEYS and
// all of them carry the same hash tag (one Cluster slot): KEYS[1] is the
// window hash of the counted key, KEYS[2] the ban index of its bucket (a
// ZSET of counted keys scored by the Unix ms their ban ends), KEYS[3] the
// ban details of its bucket (a hash: counted key → "since hostlen host..reason").
//
// ARGV[1] is the time in Unix ms, or "" to read the server's clock (TIME),
// so that hosts with skewed clocks agree. Lua numbers are doubles: every
// integer here (Unix ms, counts up to 2^32) is exact below 2^53, and numbers
// go back to Redis formatted with %.0f, never in exponent notation.
const scriptPrelude = `
local function int(x) return string.format('%.0f', x) end
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local key = ARGV[2]
local function banned_until()
  return tonumber(redis.call('ZSCORE', KEYS[2], key) or 0)
end
-- raise the TTL of k to at least ttl ms, never lower it
local function keep(k, ttl)
  local cur = redis.call('PTTL', k)
  if cur < ttl then redis.call('PEXPIRE', k, int(ttl)) end
end
-- record a ban of key until u, dropping up to 64 expired bans of the bucket
local function ban(u, reason, host)
  local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', int(now), 'LIMIT', 0, 64)
  if #old > 0 then
    redis.call('ZREM', KEYS[2], unpack(old))
    redis.call('HDEL', KEYS[3], unpack(old))
  end
  redis.call('ZADD', KEYS[2], int(u), key)
  redis.call('HSET', KEYS[3], key, int(now) .. ' ' .. int(#host) .. ' ' .. host .. reason)
  keep(KEYS[2], u - now)
  keep(KEYS[3], u - now)
end
`

// hitScript is limits.Apply step by step. ARGV: now, key, n, max, window ms,
// ban ms, reason, host. It returns {count, banned until ms (0: none),
// crossed 0/1, now ms}, and for a key already banned a fifth value: the
// ban's details ("since hostlen host..reason", "" when lost).
var hitScript = redis.NewScript(scriptPrelude + `
local u = banned_until()
if u > now then return {0, u, 0, now, redis.call('HGET', KEYS[3], key) or ''} end
local n, max, win, banms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if max <= 0 or win <= 0 then return {0, 0, 0, now} end
-- Window.estimate: roll the two fixed windows forward to now (clamped to the
-- window's start when the clock stepped back)
local w = redis.call('HMGET', KEYS[1], 's', 'p', 'c')
local s, p, c = tonumber(w[1]) or 0, tonumber(w[2]) or 0, tonumber(w[3]) or 0
local s0 = s -- the stored start: unchanged, the key's expiry (start + 2 windows) holds
local t = now
if t < s then t = s end
local elapsed = t - s
if s == 0 or elapsed >= 2 * win then
  s, p, c = t, 0, 0
elseif elapsed >= win then
  s, p, c = s + win, c, 0
end
local est = p * ((win - (t - s)) / win) + c
est = est + n
-- int64(est + 0.5): truncation toward zero
local count = est + 0.5
if count >= 0 then count = math.floor(count) else count = math.ceil(count) end
local crossed = est > max
if crossed and banms > 0 then
  -- a ban starts the window over: the zero window is no window
  redis.call('DEL', KEYS[1])
  local until_ = now + banms
  ban(until_, ARGV[7], ARGV[8])
  return {count, until_, 1, now}
end
if n <= 0 and not crossed then
  return {count, 0, 0, now} -- a peek: counts nothing, writes nothing
end
if crossed then
  count = count - 1 -- refused uncounted
elseif n > 0 then
  c = math.min(c + n, 4294967295) -- satAdd
end
if s == s0 then
  -- the same fixed window: only its count changed, and the key already
  -- expires 2 windows after its start (one command fewer per hit)
  if not crossed then redis.call('HSET', KEYS[1], 'c', int(c)) end
  if crossed then return {count, 0, 1, now} end
  return {count, 0, 0, now}
end
redis.call('HSET', KEYS[1], 's', int(s), 'p', int(p), 'c', int(c))
-- the window matters until 2 windows after its start
local ttl = 2 * win
if s > now then ttl = ttl + (s - now) end
redis.call('PEXPIRE', KEYS[1], int(ttl))
if crossed then return {count, 0, 1, now} end
return {count, 0, 0, now}
`)

// banScript is a manual ban: ARGV: now, key, duration ms, reason, host. A
// ban in force that ends later is kept. It returns {until ms, since ms,
// details} where details is "" when this ban was recorded, else the kept
// ban's details.
var banScript = redis.NewScript(scriptPrelude + `
local old = banned_until()
local u = now + tonumber(ARGV[3])
if old > now and old > u then
  return {old, now, redis.call('HGET', KEYS[3], key) or ''}
end
if u > now then ban(u, ARGV[4], ARGV[5]) end
return {u, now, ''}
`)

// unbanScript lifts the ban of key and forgets its window: ARGV: now, key.
// It returns 1 if a ban was in force.
var unbanScript = redis.NewScript(scriptPrelude + `
local u = banned_until()
redis.call('ZREM', KEYS[2], key)
redis.call('HDEL', KEYS[3], key)
redis.call('DEL', KEYS[1])
if u > now then return 1 end
return 0
`)
