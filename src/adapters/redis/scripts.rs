//! The Lua scripts. Each runs atomically on the Redis that holds its keys
//! (one slot: see [`super::keys`]); `redis::Script` sends EVALSHA and loads
//! the script again after NOSCRIPT (a restarted Redis has an empty script
//! cache).
//!
//! # Deadlines
//!
//! A request that timed out is not gone: through a partition its bytes
//! wait in the node's socket, and TCP delivers them once the link heals,
//! seconds after the worker gave up (and refused the CONNECT). Run then,
//! an ADMIT of a connection that no longer exists evicted live entries of
//! other nodes, which were then served uncounted (the fault harness's
//! `over_cap`), and a CLAIM would move a session to a connection that is
//! gone. So both carry the time their sender stops waiting, by Redis's
//! clock (`worker::deadline_ms`), and a script that runs later answers a
//! `LATE` error and changes nothing.

use redis::Script;

/// Claims a client id: a new fencing epoch, the previous owner, and (for a
/// persistent session not starting clean) the stored state, in one round
/// trip.
///
/// The epoch is at least Redis's clock in microseconds plus one, and always
/// above the stored one: it keeps rising after the key expired or Redis
/// lost it (a restart without persistence), where a bare counter would
/// start again and hand a stale node a valid epoch.
///
/// A claim whose previous owner is on the same node (`keep` = 1) keeps the
/// epoch: the session moves in memory, and the old connection's writes in
/// flight describe the same session. If Redis names another node as the
/// owner, that node claimed it since and the caller's copy is stale: a new
/// epoch, as for any claim.
///
/// With `wait` = 1, a session still attached on another node is left
/// alone: the answer is `{'busy', prev node, prev core, prev conn, '1'}`,
/// and the caller asks that node to hand it over before claiming again
/// with `wait` = 0.
///
/// The session's last four moves (`moves`: `node:ms` of each previous
/// owner and when the session left it, by Redis's clock, oldest first)
/// are kept and returned: copies sent to any of those nodes before the
/// session left are its own (`session::Arrival`).
///
/// A claim that reaches Redis after its deadline does nothing (see Deadlines, above).
///
/// **Settling a lost answer.** A claim whose answer did not come (a slow
/// link, a dropped connection) either ran before its deadline or never
/// will. Its sender asks again with `settle` = that deadline: once Redis's
/// clock has passed it (`early` until then), the answer is the one the
/// claim gave, if the session still carries the claim's `token`, from
/// what every claim records of itself (`claim`: token, previous owner,
/// present), changing nothing; otherwise `absent`.
///
/// **Adopting.** With `adopt` = 1 the claim is a restarted node's, for a
/// session its earlier life owned (`bridge::adoption`): it goes ahead only
/// if the session is present, Redis still names this node as its owner,
/// and the claim that made it so was not this life's (its token's
/// incarnation is another). Otherwise the answer is `{'other', owner
/// node, moves, subs}` and nothing changes: the session's node now, if
/// another, gets the copies that still come here for it (the restarted
/// node hands them on as for a session that left it). An adoption also answers the session's expiry: what
/// is left of its TTL if it was offline, else the expiry its last claim
/// recorded (`exp`), else empty.
///
/// **The node's index.** A persistent claim adds the client id to its
/// node's index of sessions (`keys::owned`, KEYS[6]), in the same script:
/// a node killed once the claim landed finds the session when it starts
/// again. Only on a single Redis: on a Redis Cluster the index is in
/// another slot, and the worker adds it beside the claim.
///
/// KEYS: s, sub, m, p, rx, and the node's index (a single Redis only).
/// ARGV: node, core, conn, clean (0/1), persistent (0/1), user, keep (0/1),
/// wait (0/1), deadline (Redis's clock, ms), token (`<incarnation>.<conn>`,
/// no `|`), settle (0, or the lost claim's deadline), expiry (s), adopt
/// (0/1), client id.
/// Returns {epoch, prev node, prev core, prev conn, prev up} and, when it
/// loads: {subs, messages, sent, incoming, last seq, present, moves}, and
/// for an adoption, its expiry.
pub const CLAIM: &str = r"
local s = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local load = ARGV[4] == '0' and ARGV[5] == '1'
local function answer(e, pnode, pcore, pconn, pup, present, moves)
  local out = {e, pnode, pcore, pconn, pup}
  if load then
    out[6] = redis.call('HGETALL', KEYS[2])
    out[7] = redis.call('HGETALL', KEYS[3])
    out[8] = redis.call('HGETALL', KEYS[4])
    out[9] = redis.call('SMEMBERS', KEYS[5])
    out[10] = redis.call('HGET', s, 'seq') or '0'
    out[11] = present
    out[12] = moves
  end
  return out
end
if ARGV[11] ~= '0' then
  if now / 1000 <= tonumber(ARGV[11]) then
    return {'early'}
  end
  local rec = redis.call('HMGET', s, 'epoch', 'claim', 'moves')
  local tok, pn, pc, pk, pu, pres =
    string.match(rec[2] or '', '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  if tok ~= ARGV[10] then
    return {'absent'}
  end
  return answer(rec[1], pn, pc, pk, pu, pres, rec[3] or '')
end
if now / 1000 > tonumber(ARGV[9]) then
  return redis.error_reply('LATE: the claim reached Redis after its sender gave up')
end
local adopt = ARGV[13] == '1'
local expiry = ''
local exp = ARGV[12]
if adopt then
  local rec = redis.call('HMGET', s, 'node', 'claim', 'seq', 'up', 'exp')
  local mine = string.match(ARGV[10], '^([^.]*)%.')
  local last = string.match(rec[2] or '', '^([^.|]*)%.')
  if rec[1] ~= ARGV[1] or not rec[3] or last == mine then
    return {'other', rec[1] or '', redis.call('HGET', s, 'moves') or '',
      redis.call('HGETALL', KEYS[2])}
  end
  local ttl = redis.call('PTTL', s)
  if rec[4] == '0' and ttl > 0 then
    expiry = string.format('%.0f', math.ceil(ttl / 1000))
  else
    expiry = rec[5] or ''
  end
  exp = rec[5] or exp
end
local cur = tonumber(redis.call('HGET', s, 'epoch') or '0')
local prev = redis.call('HMGET', s, 'node', 'core', 'conn', 'up')
if ARGV[8] == '1' and prev[4] == '1' and prev[1] and prev[1] ~= ARGV[1] then
  return {'busy', prev[1], prev[2] or '', prev[3] or '', '1'}
end
local e
if ARGV[7] == '1' and prev[1] == ARGV[1] and cur > 0 then
  e = string.format('%.0f', cur)
else
  e = string.format('%.0f', math.max(cur, now) + 1)
end
local present = redis.call('EXISTS', s) == 1 and redis.call('HEXISTS', s, 'seq') == 1
local moves = redis.call('HGET', s, 'moves') or ''
if prev[1] then
  local kept = {}
  for m in string.gmatch(moves, '[^,]+') do kept[#kept + 1] = m end
  kept[#kept + 1] = prev[1] .. ':' .. string.format('%.0f', now / 1000)
  while #kept > 4 do table.remove(kept, 1) end
  moves = table.concat(kept, ',')
end
if not load then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
end
local was = {prev[1] or '', prev[2] or '', prev[3] or '', prev[4] or '0', present and '1' or '0'}
redis.call('HSET', s, 'epoch', e, 'node', ARGV[1], 'core', ARGV[2], 'conn', ARGV[3],
  'up', '1', 'user', ARGV[6], 'moves', moves, 'exp', exp,
  'claim', ARGV[10] .. '|' .. table.concat(was, '|'))
if not load or not present then
  redis.call('HSET', s, 'seq', '0')
end
if KEYS[6] and ARGV[5] == '1' and not adopt then
  redis.call('SADD', KEYS[6], ARGV[14])
end
for i = 1, 5 do redis.call('PERSIST', KEYS[i]) end
local out = answer(e, was[1], was[2], was[3], was[4], was[5], moves)
if adopt then
  out[13] = expiry
end
return out
";

/// Every write to a session, fenced: it applies only if the caller's epoch
/// is the session's current one, otherwise it answers STALE and changes
/// nothing. (The reply is `STALE` and words after it: Redis 7 turns an
/// error of one word into `ERR STALE`, whose code is ERR, and a fenced
/// write then passed for a failed one: nothing told its node, which went
/// on offering its stale copy every message it matched.) So a node that lost a session to a newer claim (or a late
/// disconnect) can never overwrite or delete the new owner's state.
///
/// KEYS: s, sub, m, p, rx. ARGV: epoch, op, then per op:
/// - `put` seq blob pkid-or-empty;
/// - `sent` seq state (`pkid` or `pkid:r`);
/// - `forget` seq...;
/// - `sub` filter options; `unsub` filter;
/// - `rx+` pkid; `rx-` pkid;
/// - `release` ttl-seconds (0: delete now); `end`;
/// - `endc`, with the owning connection's id in place of the epoch: a
///   clean session's end, fenced by its connection.
pub const WRITE: &str = r"
local s, sub, m, p, rx = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op = ARGV[2]
if op == 'endc' then
  if redis.call('HGET', s, 'conn') == ARGV[1] then redis.call('DEL', s, sub, m, p, rx) end
  return 1
end
if redis.call('HGET', s, 'epoch') ~= ARGV[1] then
  return redis.error_reply('STALE a newer claim owns the session')
end
if op == 'put' then
  redis.call('HSET', m, ARGV[3], ARGV[4])
  if ARGV[5] ~= '' then redis.call('HSET', p, ARGV[3], ARGV[5]) end
  if tonumber(ARGV[3]) > tonumber(redis.call('HGET', s, 'seq') or '0') then
    redis.call('HSET', s, 'seq', ARGV[3])
  end
elseif op == 'sent' then
  if redis.call('HEXISTS', m, ARGV[3]) == 1 then redis.call('HSET', p, ARGV[3], ARGV[4]) end
elseif op == 'forget' then
  for i = 3, #ARGV do
    redis.call('HDEL', m, ARGV[i])
    redis.call('HDEL', p, ARGV[i])
  end
elseif op == 'sub' then
  redis.call('HSET', sub, ARGV[3], ARGV[4])
elseif op == 'unsub' then
  redis.call('HDEL', sub, ARGV[3])
elseif op == 'rx+' then
  redis.call('SADD', rx, ARGV[3])
elseif op == 'rx-' then
  redis.call('SREM', rx, ARGV[3])
elseif op == 'release' then
  redis.call('HSET', s, 'up', '0')
  local ttl = tonumber(ARGV[3])
  for i = 1, 5 do
    if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) else redis.call('DEL', KEYS[i]) end
  end
elseif op == 'end' then
  redis.call('DEL', s, sub, m, p, rx)
else
  return redis.error_reply('unknown op ' .. op)
end
return 1
";

/// Admits a connection into its user's presence set under the per-user
/// limit, atomically: of N connections racing for k places, exactly k get
/// one. Entries whose lease ran out are dropped first.
///
/// KEYS: the user's set, where its evictions are recorded (a string, kept
/// a lease: the caller reads it back when this script's answer was lost).
/// ARGV: member, now (ms), lease (ms), max (0: no limit), policy (`evict` or `refuse`), the claiming client id, a cutoff
/// (ms), the deadline (Redis's clock, ms: see Deadlines), then the live node
/// incarnations (`node:incarnation`).
///
/// What counts against the limit: not the client's own earlier connection
/// (this claim takes it over), and not an entry of a node that is no longer
/// live. The live list is the worker's cached view, so only entries older
/// than the cutoff (when that view was read, less a margin for clock skew)
/// are judged by it: a node that started after the view still counts.
///
/// Returns {admitted (0/1), evicted member...}: with `evict`, the oldest
/// entries (members sort by their connect time) make room.
pub const ADMIT: &str = r"
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 > tonumber(ARGV[8]) then
  return redis.error_reply('LATE: the admission reached Redis after its sender gave up')
end
local k = KEYS[1]
local now = tonumber(ARGV[2])
local max = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
local out = {1}
if max > 0 then
  local cutoff = tonumber(ARGV[7])
  local live = {}
  for i = 9, #ARGV do live[ARGV[i]] = true end
  local counted = {}
  for _, m in ipairs(redis.call('ZRANGE', k, 0, -1)) do
    local since, node, inc, cid = string.match(m, '^(%d+)|n(%d+)%.[^|]*|(%d+)|[^|]*|(.*)$')
    if cid == ARGV[6] then
      -- the same client: this claim takes that connection over
    elseif since and tonumber(since) < cutoff and not live[node .. ':' .. inc] then
      redis.call('ZREM', k, m)
    else
      counted[#counted + 1] = m
    end
  end
  if #counted >= max then
    if ARGV[5] ~= 'evict' then return {0} end
    table.sort(counted)
    for i = 1, #counted - max + 1 do
      redis.call('ZREM', k, counted[i])
      out[#out + 1] = counted[i]
    end
    redis.call('SET', KEYS[2], table.concat(out, '\n', 2), 'PX', ARGV[3])
  end
end
redis.call('ZADD', k, now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', k, ARGV[3])
return out
";

/// Renews one presence entry's lease, and the set's expiry with it.
///
/// The set expires one lease after its last write: without renewing that
/// too, a user whose connections all stayed up longer than a lease lost
/// the whole set (presence showed none of them on other nodes, and the
/// per-user limit counted none), though every entry was being refreshed.
///
/// `GT`: a renewal never shortens a lease another write set. With
/// `recreate` = 0 (`XX`), an entry that was evicted or expired stays gone;
/// 1 re-creates it (see the writer's `Refresh`).
///
/// KEYS: the user's set. ARGV: expiry (Unix ms), member, lease (ms),
/// recreate (0/1). Returns 1.
pub const REFRESH: &str = r"
local k = KEYS[1]
if ARGV[4] == '1' then
  redis.call('ZADD', k, 'GT', ARGV[1], ARGV[2])
else
  redis.call('ZADD', k, 'XX', 'GT', ARGV[1], ARGV[2])
end
local lease = tonumber(ARGV[3])
if redis.call('EXISTS', k) == 1 and redis.call('PTTL', k) < lease then
  redis.call('PEXPIRE', k, lease)
end
return 1
";

/// Reserves an idempotency key, or answers what it holds: the key's value
/// when it exists, else it is set to ARGV[1] for ARGV[2] ms and the answer
/// is nil. In one script, so two nodes that get the same key at once
/// cannot both reserve it.
///
/// KEYS: the key. ARGV: value, window (ms). Returns the value held or nil.
pub const IDEMPOTENCY_BEGIN: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  return v
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// Ends the request that reserved an idempotency key: its answer replaces
/// the reservation for ARGV[3] ms, or (ARGV[2] empty) the reservation is
/// deleted. Only while the key still holds this request's reservation
/// (ARGV[1]): a key that expired and was reserved again is someone else's.
///
/// KEYS: the key. ARGV: reservation, answer (or ''), window (ms).
/// Returns 1 if it changed the key, else 0.
pub const IDEMPOTENCY_END: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
";

/// The scripts, compiled once (their SHA1s).
pub struct Scripts {
    /// [`CLAIM`].
    pub claim: Script,
    /// [`WRITE`].
    pub write: Script,
    /// [`ADMIT`].
    pub admit: Script,
    /// [`REFRESH`].
    pub refresh: Script,
    /// [`IDEMPOTENCY_BEGIN`].
    pub idempotency_begin: Script,
    /// [`IDEMPOTENCY_END`].
    pub idempotency_end: Script,
}

impl Scripts {
    /// Every script, to load them again into a Redis that lost them.
    pub fn all(&self) -> [&Script; 6] {
        [
            &self.claim,
            &self.write,
            &self.admit,
            &self.refresh,
            &self.idempotency_begin,
            &self.idempotency_end,
        ]
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            claim: Script::new(CLAIM),
            write: Script::new(WRITE),
            admit: Script::new(ADMIT),
            refresh: Script::new(REFRESH),
            idempotency_begin: Script::new(IDEMPOTENCY_BEGIN),
            idempotency_end: Script::new(IDEMPOTENCY_END),
        }
    }
}
