//! The Lua scripts that make each mutation of a namespace one atomic step inside Redis.
//!
//! Keys of namespace `ns` under prefix `P` (the `{ns}` hash tag keeps them in one slot):
//!
//! - `P:{ns}:meta`: hash `live` (`1` while the namespace exists), `epoch`, `next`,
//!   `earliest`, `bytes`, `created_ms`, `max_events`/`max_bytes`/`max_age_secs` (empty
//!   when not set). It outlives a delete (`live` `0`), so offsets continue after it.
//! - `P:{ns}:log`: the stream; offset `n` is entry id `n-1` (milliseconds part `n`,
//!   sequence `1`, because `0-0` is not a valid id), fields `r` (the record,
//!   `storage::record`) and `t` (its timestamp, ms).
//! - `P:{ns}:idem`: hash idempotency key → `ts first last batch digest`;
//!   `P:{ns}:idemts`: sorted set of the same keys by `ts`, for pruning.
//! - `P:{ns}:deleted`: list of the epochs of the namespace's deleted incarnations, the
//!   latest first, at most [`super::DELETED_EPOCHS`].
//! - `P:retention`: the default retention every broker of the prefix applies, as JSON
//!   (`{"max_events":null,"max_bytes":null,"max_age_secs":604800}`), set by the first.
//!
//! Offsets are numbers in Lua (doubles), exact below 2^53, far beyond any log's reach.

/// Appends a batch. KEYS: meta, log, idem, idemts. ARGV: ts, idempotency key (empty for
/// none), digest, digest v1, batch (`true`/`false`), not-before ms, channel, namespace,
/// the epoch the caller appends to (empty: any), the offset below which the caller has
/// already shown events of that epoch, a fresh epoch, then one record per event. Answers
/// `{'new', first, last}`, `{'dup', first, last, batch}`, `{'conflict', first, last}` or
/// `{'missing'}` (no such namespace, or not of that epoch: the caller's state is stale).
/// When `next` is below what the caller has shown under the same epoch (Redis lost a tail
/// its readers saw), the namespace takes the fresh epoch (announced as a create, its
/// idempotency records dropped: they name offsets of the old epoch) and the answer is
/// `{'missing'}`: nothing is written under the old epoch.
/// Announces `a NEXT EPOCH NS`. Nothing is written unless the
/// whole batch is: every check comes before the first write, and `XADD` with an id above
/// the stream's last cannot fail once the first one has not.
pub(super) const APPEND: &str = r#"
local meta, log, idem, idemts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('HGET', meta, 'live') ~= '1' then return {'missing'} end
local epoch = redis.call('HGET', meta, 'epoch')
if ARGV[9] ~= '' and ARGV[9] ~= epoch then return {'missing'} end
if ARGV[9] ~= '' and tonumber(redis.call('HGET', meta, 'next')) < tonumber(ARGV[10]) then
  redis.call('HSET', meta, 'epoch', ARGV[11])
  redis.call('DEL', idem, idemts)
  redis.call('PUBLISH', ARGV[7], 'c 0 ' .. ARGV[11] .. ' ' .. ARGV[8])
  return {'missing'}
end
local key = ARGV[2]
if key ~= '' then
  local rec = redis.call('HGET', idem, key)
  if rec then
    local ts, first, last, batch, digest = string.match(rec, '^(%d+) (%d+) (%d+) (%a+) (%x*)$')
    if ts and tonumber(ts) >= tonumber(ARGV[6]) then
      if digest == ARGV[3] or digest == ARGV[4] then return {'dup', first, last, batch} end
      return {'conflict', first, last}
    end
  end
end
local first = tonumber(redis.call('HGET', meta, 'next'))
local n = #ARGV - 11
local bytes = 0
for i = 1, n do
  local r = ARGV[11 + i]
  redis.call('XADD', log, string.format('%d-1', first + i - 1), 'r', r, 't', ARGV[1])
  bytes = bytes + #r
end
local last = first + n - 1
redis.call('HINCRBY', meta, 'next', n)
redis.call('HINCRBY', meta, 'bytes', bytes)
if key ~= '' then
  redis.call('HSET', idem, key, string.format('%s %d %d %s %s', ARGV[1], first, last, ARGV[5], ARGV[3]))
  redis.call('ZADD', idemts, ARGV[1], key)
end
redis.call('PUBLISH', ARGV[7], string.format('a %d ', last + 1) .. epoch .. ' ' .. ARGV[8])
return {'new', string.format('%d', first), string.format('%d', last)}
"#;

/// Creates a namespace over clean keys: whatever an earlier incarnation left in `log`,
/// `idem` and `idemts` (its `meta` evicted or deleted by hand) goes. KEYS: meta,
/// namespaces set, log, idem, idemts. ARGV: epoch, created ms,
/// max_events, max_bytes, max_age_secs, channel, namespace. Answers `{'exists'}` or
/// `{'ok', next}`; offsets continue after an earlier incarnation's. Announces
/// `c 0 EPOCH NS`.
pub(super) const CREATE: &str = r#"
local meta = KEYS[1]
if redis.call('HGET', meta, 'live') == '1' then return {'exists'} end
local next = redis.call('HGET', meta, 'next') or '0'
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('HSET', meta, 'live', '1', 'epoch', ARGV[1], 'next', next, 'earliest', next,
  'bytes', '0', 'created_ms', ARGV[2], 'max_events', ARGV[3], 'max_bytes', ARGV[4],
  'max_age_secs', ARGV[5])
redis.call('SADD', KEYS[2], ARGV[7])
redis.call('PUBLISH', ARGV[6], 'c 0 ' .. ARGV[1] .. ' ' .. ARGV[7])
return {'ok', next}
"#;

/// Deletes a namespace, keeping `next`. KEYS: meta, log, idem, idemts, namespaces set,
/// deleted epochs. ARGV: channel, namespace, `empty` (only delete when it never held an
/// event: the undo of an auto-create), how many deleted epochs to keep. Answers 1 if it
/// deleted, else 0. Announces `d 0 EPOCH NS` with the epoch of the incarnation deleted,
/// and records that epoch first in the list of deleted epochs (at most the last N kept),
/// so a node that finds its incarnation replaced can tell a delete from lost data.
pub(super) const DELETE: &str = r#"
local meta = KEYS[1]
if redis.call('HGET', meta, 'live') ~= '1' then return 0 end
local next = redis.call('HGET', meta, 'next')
if ARGV[3] == 'empty' and (redis.call('HGET', meta, 'earliest') ~= next or redis.call('EXISTS', KEYS[2]) == 1) then
  return 0
end
local epoch = redis.call('HGET', meta, 'epoch')
redis.call('LPUSH', KEYS[6], epoch)
redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[4]) - 1)
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', meta, 'live', '0', 'earliest', next, 'bytes', '0')
redis.call('SREM', KEYS[5], ARGV[2])
redis.call('PUBLISH', ARGV[1], 'd 0 ' .. epoch .. ' ' .. ARGV[2])
return 1
"#;

/// Removes the oldest events that break the policy, at most one page of them (the caller
/// calls again until it answers -1, so one call never holds Redis for long). KEYS: meta,
/// log. ARGV: count cut (offsets below it go), max bytes, age cut (ms; events stamped
/// before it go), channel, namespace, page (most events looked at). Answers the new earliest, or -1 when nothing was removed. Announces
/// `r EARLIEST EPOCH NS`.
pub(super) const RETAIN: &str = r#"
local meta, log = KEYS[1], KEYS[2]
if redis.call('HGET', meta, 'live') ~= '1' then return -1 end
local earliest = tonumber(redis.call('HGET', meta, 'earliest'))
local next = tonumber(redis.call('HGET', meta, 'next'))
local bytes = tonumber(redis.call('HGET', meta, 'bytes'))
local count_cut, max_bytes, age_cut = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cut, removed = earliest, 0
if cut < next then
  local page = redis.call('XRANGE', log, string.format('%d-1', cut), '+', 'COUNT', tonumber(ARGV[6]))
  if #page == 0 then cut = math.max(cut, math.min(count_cut, next)) end
  for _, e in ipairs(page) do
    local off = tonumber(string.match(e[1], '^(%d+)'))
    local f = e[2]
    local size, ts = #f[2], tonumber(f[4])
    if off < count_cut or bytes - removed > max_bytes or ts < age_cut then
      removed = removed + size
      cut = off + 1
    else
      break
    end
  end
end
if cut == earliest then return -1 end
redis.call('XTRIM', log, 'MINID', string.format('%d-1', cut))
redis.call('HSET', meta, 'earliest', string.format('%d', cut))
redis.call('HINCRBY', meta, 'bytes', -removed)
redis.call('PUBLISH', ARGV[4], string.format('r %d ', cut) .. redis.call('HGET', meta, 'epoch') .. ' ' .. ARGV[5])
return cut
"#;

/// Forgets idempotency records older than a time. KEYS: idem, idemts. ARGV: before ms.
/// Answers how many.
pub(super) const PRUNE: &str = r#"
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
for _, k in ipairs(old) do
  redis.call('HDEL', KEYS[1], k)
  redis.call('ZREM', KEYS[2], k)
end
return #old
"#;

/// Gives a namespace a fresh epoch when Redis went back in time (`witness`): only if it
/// is live, still has the epoch the node judged, and its `next` is below what the node
/// saw under it. KEYS: meta, idem, idemts. ARGV: the epoch judged, the `next` the node
/// saw, the fresh epoch, channel, namespace. The idempotency records go (they name
/// offsets of the old epoch). Answers 1 if it gave the fresh epoch, else 0. Announces
/// `c 0 EPOCH NS`.
pub(super) const ROTATE: &str = r#"
local meta = KEYS[1]
if redis.call('HGET', meta, 'live') ~= '1' then return 0 end
if redis.call('HGET', meta, 'epoch') ~= ARGV[1] then return 0 end
if tonumber(redis.call('HGET', meta, 'next')) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', meta, 'epoch', ARGV[3])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[4], 'c 0 ' .. ARGV[3] .. ' ' .. ARGV[5])
return 1
"#;
