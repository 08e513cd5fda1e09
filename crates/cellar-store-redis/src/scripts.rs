//! The Lua scripts behind every write, and running them pipelined.
//!
//! Each script touches one key, so each call is atomic on its own and needs no lock. Redis
//! compares strings in Lua with the server's locale (`strcoll`), so event times are compared
//! byte by byte, never with `<` on strings.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{Cmd, RedisResult, Script, Value};

/// A newer event time replaces the stored attribute record; an equal or older one is stale.
///
/// KEYS[1] the attribute key. ARGV[1] the value (format, ordered event time, token, record);
/// ARGV[2] when Redis may expire it (ms since the epoch), `""` for never. Returns 1 when
/// written, 0 when stale. A stored value without this store's header is replaced.
///
/// The cache's `PUT_IF_NEWER` (cellar-cache's remote tier) compares event times the same way
/// but on the cache's own value layout, with TTLs, tie rules and invalidation markers the
/// store has no use for: see there.
pub(crate) const PUT_ATTRIBUTE: &str = r"
local function newer(a, b)
  for i = 2, 9 do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return false
end
local cur = redis.call('GET', KEYS[1])
if cur and string.len(cur) >= 17 and string.byte(cur, 1) == 1 and not newer(ARGV[1], cur) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('PEXPIREAT', KEYS[1], ARGV[2]) end
return 1
";

/// An update's compare-and-set: writes the value only if the key still holds what the update
/// read.
///
/// KEYS[1] the attribute key. ARGV[1] how to compare: `absent` (the key must not exist),
/// `header` (the stored value's first 17 bytes, whose random token every write replaces, must
/// equal ARGV[2]) or `exact` (the stored value must equal ARGV[2], for values without the
/// header). ARGV[3] the new value; ARGV[4] its expiry, `""` for never. Returns 1 when written,
/// 0 on a conflict.
pub(crate) const UPDATE_ATTRIBUTE: &str = r"
local cur = redis.call('GET', KEYS[1])
local same
if ARGV[1] == 'absent' then
  same = not cur
elseif ARGV[1] == 'header' then
  same = cur and string.sub(cur, 1, 17) == ARGV[2]
else
  same = cur == ARGV[2]
end
if not same then return 0 end
redis.call('SET', KEYS[1], ARGV[3])
if ARGV[4] ~= '' then redis.call('PEXPIREAT', KEYS[1], ARGV[4]) end
return 1
";

/// Inserts records into one entity's series, each replacing a stored record of the same event
/// time, then trims the series to `max_records` and sets its expiry from its newest record.
///
/// KEYS[1] the series key. ARGV[1] max_records (`""`: none); ARGV[2] max_age in ms (`""`:
/// none); ARGV[3] now (ms since the epoch); ARGV[4] the grace past max_age before Redis
/// expires the series; ARGV[5] the furthest expiry from now; then score and member pairs, in
/// the order written (a later record of an event time replaces an earlier one). Returns 1.
pub(crate) const PUT_SERIES: &str = r"
local key = KEYS[1]
for i = 6, #ARGV, 2 do
  local score, member = ARGV[i], ARGV[i + 1]
  local time = string.sub(member, 1, 8)
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', key, score, score)) do
    if string.sub(old, 1, 8) == time then redis.call('ZREM', key, old) end
  end
  redis.call('ZADD', key, score, member)
end
if ARGV[1] ~= '' then
  redis.call('ZREMRANGEBYRANK', key, 0, -tonumber(ARGV[1]) - 1)
end
if ARGV[2] ~= '' then
  local top = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
  if top[2] then
    local now = tonumber(ARGV[3])
    local at = tonumber(top[2]) + tonumber(ARGV[2])
    if at < now then at = now end
    at = at + tonumber(ARGV[4])
    local cap = now + tonumber(ARGV[5])
    if at > cap then at = cap end
    redis.call('PEXPIREAT', key, string.format('%.0f', at))
  end
else
  redis.call('PERSIST', key)
end
return 1
";

/// Deletes an attribute record older than a cutoff. KEYS[1] the attribute key; ARGV[1] the
/// cutoff as an ordered event time. Returns 1 if deleted.
pub(crate) const TRIM_ATTRIBUTE: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur or string.len(cur) < 17 or string.byte(cur, 1) ~= 1 then return 0 end
for i = 1, 8 do
  local x, y = string.byte(cur, i + 1), string.byte(ARGV[1], i)
  if x ~= y then
    if x < y then
      redis.call('DEL', KEYS[1])
      return 1
    end
    return 0
  end
end
return 0
";

/// Removes the records of one series past its retention. KEYS[1] the series key; ARGV[1]
/// max_records (`""`: none); ARGV[2] the age cutoff's score (`""`: no age limit); ARGV[3] the
/// cutoff as an ordered event time (members of the cutoff's score are compared exactly).
/// Returns how many records were removed.
pub(crate) const TRIM_SERIES: &str = r"
local function older(member, cutoff)
  for i = 1, 8 do
    local x, y = string.byte(member, i), string.byte(cutoff, i)
    if x ~= y then return x < y end
  end
  return false
end
local key, removed = KEYS[1], 0
if ARGV[2] ~= '' then
  removed = redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[2])
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, ARGV[2], ARGV[2])) do
    if older(m, ARGV[3]) then
      redis.call('ZREM', key, m)
      removed = removed + 1
    end
  end
end
if ARGV[1] ~= '' then
  removed = removed + redis.call('ZREMRANGEBYRANK', key, 0, -tonumber(ARGV[1]) - 1)
end
return removed
";

const SOURCES: [&str; 5] = [
    PUT_ATTRIBUTE,
    UPDATE_ATTRIBUTE,
    PUT_SERIES,
    TRIM_ATTRIBUTE,
    TRIM_SERIES,
];

/// The scripts with their SHA1s, computed once.
pub(crate) struct Scripts {
    pub(crate) put_attribute: Script,
    pub(crate) update_attribute: Script,
    pub(crate) put_series: Script,
    pub(crate) trim_attribute: Script,
    pub(crate) trim_series: Script,
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    put_attribute: Script::new(PUT_ATTRIBUTE),
    update_attribute: Script::new(UPDATE_ATTRIBUTE),
    put_series: Script::new(PUT_SERIES),
    trim_attribute: Script::new(TRIM_ATTRIBUTE),
    trim_series: Script::new(TRIM_SERIES),
});

/// An `EVALSHA` of `script` on one key, its arguments to be added.
pub(crate) fn call(script: &Script, key: &[u8]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(1).arg(key);
    cmd
}

/// Loads every script into Redis's script cache.
pub(crate) async fn load(conn: &mut ConnectionManager) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    for source in SOURCES {
        pipe.cmd("SCRIPT").arg("LOAD").arg(source);
    }
    pipe.query_async::<Vec<Value>>(conn).await.map(|_| ())
}

/// Runs script calls in one pipeline, in order, and returns each call's reply (a server error
/// as [`Value::ServerError`]). Calls Redis did not know the script of (after a restart or a
/// `SCRIPT FLUSH`) are run again, in order, once the scripts are loaded.
pub(crate) async fn run(conn: &mut ConnectionManager, calls: Vec<Cmd>) -> RedisResult<Vec<Value>> {
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    let pipe = pipeline(calls);
    let mut replies: Vec<Value> = pipe.query_async(conn).await?;
    let unknown: Vec<usize> = replies
        .iter()
        .enumerate()
        .filter(|(_, reply)| is_no_script(reply))
        .map(|(i, _)| i)
        .collect();
    if unknown.is_empty() {
        return Ok(replies);
    }
    load(conn).await?;
    let again: Vec<Cmd> = pipe
        .cmd_iter()
        .enumerate()
        .filter(|(i, _)| unknown.binary_search(i).is_ok())
        .map(|(_, cmd)| cmd.clone())
        .collect();
    let again: Vec<Value> = pipeline(again).query_async(conn).await?;
    for (i, reply) in unknown.into_iter().zip(again) {
        replies[i] = reply;
    }
    Ok(replies)
}

fn pipeline(calls: Vec<Cmd>) -> redis::Pipeline {
    let mut pipe = redis::Pipeline::with_capacity(calls.len());
    pipe.ignore_errors();
    for call in calls {
        pipe.add_command(call);
    }
    pipe
}

fn is_no_script(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript))
}
