//! The Lua scripts, one per store call that must be atomic on the server.
//!
//! Every script gets the key prefix `{prefix}:` as ARGV[1] (`base`) and
//! declares the keys it is called for. Keys it finds through them (a subject
//! list's flows, index members) start with the same prefix, so they are in
//! the same cluster slot.

use std::sync::LazyLock;

use redis::Script;

use crate::CLOCK_MARGIN;

/// Helpers shared by every script. `margin` is [`CLOCK_MARGIN`] in
/// milliseconds (see [`script`]).
pub(crate) const COMMON_LUA: &str = r#"
local base = ARGV[1]

-- Whether the decimal a is less than the decimal b (exact for any u64).
local function lt(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end

-- The server's clock in ms, read once per script.
local clock
local function server_ms()
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock
end

-- Keeps `key` until `at` (ms) at least: never shortens its life.
local function extend(key, at)
  local ttl = redis.call('PTTL', key)
  if ttl == -1 or (ttl >= 0 and server_ms() + ttl < tonumber(at)) then
    redis.call('PEXPIREAT', key, at)
  end
end

-- Indexes `member` for purge_expired at `due` (its key expires natively
-- `margin` ms after `due`), keeps the index until `expire_at` at least,
-- and drops the members whose keys have expired natively by the server's
-- clock: the index stays the size of the live data.
local function index(idx, member, due, expire_at)
  redis.call('ZADD', idx, due, member)
  extend(idx, expire_at)
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', '(' .. (server_ms() - margin))
end

-- A counter's stored string 'count:window end' (ms) as {count, end}, if
-- its window is open at `now`; nil otherwise (no key, an ended window, or
-- a value of another form: each part a plain decimal of at most 15
-- digits, so that it is exact as a Lua number and compares by `lt`).
local function live(v, now)
  if type(v) ~= 'string' then return nil end
  local c, e = string.match(v, '^(%d+):([1-9]%d*)$')
  if c and #c <= 15 and #e <= 15 and lt(now, e) then return {tonumber(c), e} end
  return nil
end

-- A window as stored: '%d' keeps a large count in digits (concatenating
-- a number would write 1e+14).
local function text(c, e)
  return string.format('%d', c) .. ':' .. e
end

-- Writes an open window's count, keeping the key's expiry.
local function store(key, w)
  redis.call('SET', key, text(w[1], w[2]), 'KEEPTTL')
end

-- Counter.apply_all over n counters: keys from KEYS[k], six arguments each
-- from ARGV[a] (by, end of a window opened now, its expiry, condition, max
-- or -1, guarded 1 or 0). Returns count, end pairs in one flat array: the
-- values before a refused call's guarded increments are undone.
--
-- The counters are read with one MGET (per 512 keys) and each write is
-- one SET: a new window's carries its expiry (the counter expires
-- natively after its window: no index). A read (by 0) of no open window
-- stores nothing. A key named twice sees its own earlier increment.
local function counters(k, a, n, now)
  local out, opened, guarded, refused = {}, {}, {}, false
  -- key -> {count, end} of its open window, or false for none
  local windows = {}
  for first = 1, n, 512 do
    local last = math.min(n, first + 511)
    local keys = {}
    for i = first, last do keys[#keys + 1] = KEYS[k + i - 1] end
    local values = redis.call('MGET', unpack(keys))
    for i, key in ipairs(keys) do
      if windows[key] == nil then windows[key] = live(values[i], now) or false end
    end
  end
  for i = 1, n do
    local j = a + (i - 1) * 6
    local by, ends, expire_at, cond = tonumber(ARGV[j]), ARGV[j + 1], ARGV[j + 2], tonumber(ARGV[j + 3])
    local max = tonumber(ARGV[j + 4])
    if cond < 0 or (cond > 0 and not opened[cond]) then by = 0 end
    local key = KEYS[k + i - 1]
    local w = windows[key]
    local c, e
    if w then
      if by > 0 then
        w[1] = w[1] + by
        store(key, w)
      end
      c, e = w[1], w[2]
    elseif by == 0 then
      c, e = 0, ''
    else
      redis.call('SET', key, text(by, ends), 'PXAT', expire_at)
      windows[key] = {by, ends}
      c, e = by, ends
    end
    opened[i] = by > 0 and c == by and e == ends
    if max >= 0 and c > max then refused = true end
    if ARGV[j + 5] == '1' and by > 0 then guarded[#guarded + 1] = {key, by} end
    out[#out + 1] = c
    out[#out + 1] = e
  end
  -- Counter.unapply: takes each guarded increment back, deleting a
  -- counter when nothing is left.
  if refused then
    for _, g in ipairs(guarded) do
      local key, by = g[1], g[2]
      local w = windows[key]
      if w and w[1] > by then
        w[1] = w[1] - by
        store(key, w)
      elseif w then
        windows[key] = false
        redis.call('DEL', key)
      end
    end
  end
  return out
end

-- A flow's fields d, v ('' when missing), or {} when it does not exist
-- (a flow always has `v`).
local function flow(key)
  local f = redis.call('HMGET', key, 'd', 'v')
  if not (f[1] or f[2]) then return {} end
  return {f[1] or '', f[2] or ''}
end

-- The newest flow still stored of the subject list `list`: its id and
-- key, or '' and nil (purged flows stay listed until the purge reaches
-- them).
local function newest(list)
  for _, id in ipairs(redis.call('LRANGE', list, 0, -1)) do
    local key = base .. 'flow:' .. id
    if redis.call('EXISTS', key) == 1 then return id, key end
  end
  return '', nil
end

-- Writes the flow `id` (record d, version v, purge instant p, its TTL
-- instant ttl) under `key`, whose stored purge instant is `old`. Its
-- expiry and index entry only move with the purge instant.
local function write(key, list, idx, id, d, v, p, ttl, old)
  redis.call('HSET', key, 'd', d, 'v', v, 'p', p)
  if old ~= p then
    redis.call('PEXPIREAT', key, ttl)
    extend(list, ttl)
    index(idx, id, p, ttl)
  end
end
"#;

/// KEYS: flow, subject list, flow index. ARGV: base, id, record, version,
/// purge instant, its TTL instant, list length, then the newest flow the
/// caller read (id, version; '' for none) and its replacement (record,
/// version, purge instant, its TTL instant; '' for none). Returns {0} for
/// a duplicate id, {1, id, flow fields} (or {1} when the subject has no
/// flow) when the newest flow is another, {2} once created.
pub(crate) const CREATE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local id, key = newest(KEYS[2])
if id ~= ARGV[8] or (key and redis.call('HGET', key, 'v') ~= ARGV[9]) then
  if key then return {1, id, flow(key)} end
  return {1}
end
if key and ARGV[10] ~= '' then
  write(key, KEYS[2], KEYS[3], id, ARGV[10], ARGV[11], ARGV[12], ARGV[13], redis.call('HGET', key, 'p'))
end
redis.call('HSET', KEYS[1], 'd', ARGV[3], 'v', ARGV[4], 'l', KEYS[2], 'p', ARGV[5])
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
if redis.call('LPUSH', KEYS[2], ARGV[2]) > tonumber(ARGV[7]) then
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[7]) - 1)
end
extend(KEYS[2], ARGV[6])
index(KEYS[3], ARGV[2], ARGV[5], ARGV[6])
return {2}
"#;

/// KEYS: flow, subject list, flow index, then counters. ARGV: base, now,
/// number of counters, expected version, record, version, purge instant,
/// its TTL instant, id, then counters. Returns {0} when the version
/// differs (or no flow), {1, counts} once written.
pub(crate) const SWAP_LUA: &str = r#"
-- The version and the purge instant in one read.
local old = redis.call('HMGET', KEYS[1], 'v', 'p')
if old[1] ~= ARGV[4] then return {0} end
write(KEYS[1], KEYS[2], KEYS[3], ARGV[9], ARGV[5], ARGV[6], ARGV[7], ARGV[8], old[2])
return {1, counters(4, 10, tonumber(ARGV[3]), ARGV[2])}
"#;

/// KEYS: flow, then counters. ARGV: base, now, number of counters, then
/// counters. Returns {flow fields, counts}.
pub(crate) const LOAD_LUA: &str = r#"
return {flow(KEYS[1]), counters(2, 4, tonumber(ARGV[3]), ARGV[2])}
"#;

/// KEYS: subject list, then counters. ARGV: base, now, number of
/// counters, then counters. Returns {newest flow id or '', its fields or
/// {}, counts}.
pub(crate) const LOAD_NEWEST_LUA: &str = r#"
local id, key = newest(KEYS[1])
local fields = {}
if key then fields = flow(key) end
return {id, fields, counters(2, 4, tonumber(ARGV[3]), ARGV[2])}
"#;

/// KEYS: counters. ARGV: base, now, number of counters, then counters.
pub(crate) const COUNT_LUA: &str = r#"
return counters(1, 4, tonumber(ARGV[3]), ARGV[2])
"#;

/// KEYS: subject list. ARGV: base, limit. Returns {id, flow fields} for
/// the subject's stored flows, newest first.
pub(crate) const FIND_LUA: &str = r#"
local out, limit = {}, tonumber(ARGV[2])
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if #out >= limit then break end
  local f = flow(base .. 'flow:' .. id)
  if #f > 0 then out[#out + 1] = {id, f} end
end
return out
"#;

/// KEYS: case, case index. ARGV: base, case, purge instant, its TTL
/// instant, reference.
pub(crate) const PUT_CASE_LUA: &str = r#"
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
index(KEYS[2], ARGV[5], ARGV[3], ARGV[4])
return 1
"#;

/// KEYS: flow and case indexes. ARGV: base, now. Deletes what is due at
/// `now`; returns how many flows it deleted.
pub(crate) const PURGE_LUA: &str = r#"
local now, purged = ARGV[2], 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local key = base .. 'flow:' .. id
  local list = redis.pcall('HGET', key, 'l')
  if type(list) == 'string' then redis.pcall('LREM', list, 0, id) end
  purged = purged + redis.call('DEL', key)
end
for _, ref in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('DEL', base .. 'case:' .. ref)
end
for i = 1, 2 do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now) end
return purged
"#;

/// A script: the margin, the shared helpers, then `body`.
pub(crate) fn script(body: &str) -> Script {
    let margin = CLOCK_MARGIN.as_millis();
    Script::new(&format!("local margin = {margin}\n{COMMON_LUA}{body}"))
}

pub(crate) static CREATE: LazyLock<Script> = LazyLock::new(|| script(CREATE_LUA));
pub(crate) static SWAP: LazyLock<Script> = LazyLock::new(|| script(SWAP_LUA));
pub(crate) static LOAD: LazyLock<Script> = LazyLock::new(|| script(LOAD_LUA));
pub(crate) static LOAD_NEWEST: LazyLock<Script> = LazyLock::new(|| script(LOAD_NEWEST_LUA));
pub(crate) static COUNT: LazyLock<Script> = LazyLock::new(|| script(COUNT_LUA));
pub(crate) static FIND: LazyLock<Script> = LazyLock::new(|| script(FIND_LUA));
pub(crate) static PUT_CASE: LazyLock<Script> = LazyLock::new(|| script(PUT_CASE_LUA));
pub(crate) static PURGE: LazyLock<Script> = LazyLock::new(|| script(PURGE_LUA));
