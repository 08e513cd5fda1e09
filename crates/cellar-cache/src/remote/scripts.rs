//! The Lua scripts every write goes through, so that a newer event time always wins inside
//! Redis, and one call of them.

use redis::{Cmd, Script};

/// Writes a value unless Redis holds one with a newer event time.
///
/// KEYS[1]: the entry. ARGV[1]: the value; ARGV[2]: its TTL in milliseconds; ARGV[3]: `strict`
/// keeps a cached value of equal event time, `tie` replaces it, `max` always writes but keeps
/// the newer of the two event times (invalidation markers). Optional ARGV[4] and ARGV[5]: an
/// invalidation marker and its TTL, written instead of the value when nothing is cached.
/// Returns 1 if written, 0 if not, 2 if the marker was written.
///
/// The Redis store's `PUT_ATTRIBUTE` (cellar-store-redis) also keeps the newer event time, but
/// on another value: the store's header has no kind byte, its expiry is absolute and may be
/// none, and an equal event time is always stale there; ties and markers are the cache's
/// alone. One script for both would take its layout and rules as arguments on every write.
pub(super) const PUT_IF_NEWER: &str = r"
local new = ARGV[1]
local cur = redis.call('GET', KEYS[1])
if not cur and ARGV[4] then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
  return 2
end
if cur and string.len(cur) >= 26 and string.byte(cur, 1) == 2 then
  local order = 0
  for i = 3, 10 do
    local a, b = string.byte(cur, i), string.byte(new, i)
    if a ~= b then
      if a > b then order = 1 else order = -1 end
      break
    end
  end
  if ARGV[3] == 'max' then
    if order > 0 then
      new = string.sub(new, 1, 2) .. string.sub(cur, 3, 10) .. string.sub(new, 11)
    end
  elseif order > 0 or (order == 0 and ARGV[3] == 'strict') then
    return 0
  end
end
redis.call('SET', KEYS[1], new, 'PX', ARGV[2])
return 1
";

/// Puts one written record into a cached series, in event-time order (replacing a record of
/// the same event time), keeping the newest ARGV[2]; without a cached series it writes an
/// invalidation marker instead, so a fill that read the store before this write loses. The
/// merged series keeps the older of the two generations: records cached under an older one
/// stay invalid.
///
/// KEYS[1]: the entry. ARGV[1]: the record as a series entry; ARGV[2]: most records kept;
/// ARGV[3]: TTL in milliseconds; ARGV[4]: the new soft deadline (8 bytes); ARGV[5]: the
/// invalidation marker at the record's event time; ARGV[6]: the writer's generation (8
/// bytes). Returns 1 if merged, 2 if invalidated.
pub(super) const MERGE_SERIES: &str = r"
local function cmp(a, ai, b, bi)
  for i = 0, 7 do
    local x, y = string.byte(a, ai + i), string.byte(b, bi + i)
    if x ~= y then
      if x > y then return 1 end
      return -1
    end
  end
  return 0
end
local cur = redis.call('GET', KEYS[1])
local entry = ARGV[1]
local function invalidate()
  local marker = ARGV[5]
  if cur and string.len(cur) >= 26 and string.byte(cur, 1) == 2 and cmp(cur, 3, marker, 3) > 0 then
    marker = string.sub(marker, 1, 2) .. string.sub(cur, 3, 10) .. string.sub(marker, 11)
  end
  redis.call('SET', KEYS[1], marker, 'PX', ARGV[3])
  return 2
end
if not cur or string.len(cur) < 27 or string.byte(cur, 1) ~= 2 or string.byte(cur, 2) ~= 3 then
  return invalidate()
end
local max = tonumber(ARGV[2]) or 1
if max < 1 then max = 1 end
local parts, n, placed = {}, 0, false
local pos, len = 28, string.len(cur)
while pos <= len do
  if pos + 11 > len then return invalidate() end
  local b1, b2, b3, b4 = string.byte(cur, pos + 8, pos + 11)
  local stop = pos + 11 + ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  if stop > len then return invalidate() end
  local keep = true
  if not placed then
    local order = cmp(cur, pos, entry, 1)
    if order <= 0 then
      n = n + 1
      parts[n] = entry
      placed = true
      keep = order < 0
    end
  end
  if keep then
    n = n + 1
    parts[n] = string.sub(cur, pos, stop)
  end
  pos = stop + 1
end
if not placed then
  n = n + 1
  parts[n] = entry
end
local complete = string.byte(cur, 27) == 1 and n <= max
while n > max do
  parts[n] = nil
  n = n - 1
end
local flag = 0
if complete then flag = 1 end
local generation = ARGV[6]
if cmp(cur, 19, generation, 1) < 0 then generation = string.sub(cur, 19, 26) end
local value = string.char(2, 3) .. string.sub(parts[1], 1, 8) .. ARGV[4] .. generation .. string.char(flag) .. table.concat(parts)
redis.call('SET', KEYS[1], value, 'PX', ARGV[3])
return 1
";

/// Moves a group to a new generation, so that every value cached under an older one is a miss
/// (and stays one: fills and writes made under the older generation carry it). Generations
/// are Redis's clock in microseconds, or one more than the current one if that is greater:
/// they keep growing even after Redis lost the key, so a value made under a generation from
/// before the loss can never pass for a newer one.
///
/// KEYS[1]: the group's generation key. Returns the new generation.
pub(super) const BUMP_GENERATION: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local gen = math.max(cur + 1, now)
redis.call('SET', KEYS[1], string.format('%.0f', gen))
return gen
";

/// How a [`PUT_IF_NEWER`] write treats a cached value of the same event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tie {
    /// Keep it (write-through of attributes: the store kept the first of equal records too).
    Keep,
    /// Replace it (fills and refreshes: the same record, read again, resets the deadlines).
    Replace,
    /// Always write, keeping the newer event time (invalidation markers).
    Max,
}

impl Tie {
    fn arg(self) -> &'static str {
        match self {
            Tie::Keep => "strict",
            Tie::Replace => "tie",
            Tie::Max => "max",
        }
    }
}

/// One script call of a batch of writes.
pub(super) struct ScriptCall {
    pub(super) key: Vec<u8>,
    pub(super) script: &'static Script,
    pub(super) args: Vec<Vec<u8>>,
}

impl ScriptCall {
    pub(super) fn put(key: Vec<u8>, value: Vec<u8>, ttl_ms: u64, tie: Tie) -> ScriptCall {
        ScriptCall {
            key,
            script: &SCRIPTS.put_if_newer,
            args: vec![
                value,
                ttl_ms.to_string().into_bytes(),
                tie.arg().as_bytes().to_vec(),
            ],
        }
    }

    pub(super) fn cmd(&self) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(1).arg(&self.key[..]);
        for a in &self.args {
            cmd.arg(&a[..]);
        }
        cmd
    }
}

pub(super) struct Scripts {
    pub(super) put_if_newer: Script,
    pub(super) merge_series: Script,
    pub(super) bump_generation: Script,
}

pub(super) static SCRIPTS: std::sync::LazyLock<Scripts> = std::sync::LazyLock::new(|| Scripts {
    put_if_newer: Script::new(PUT_IF_NEWER),
    merge_series: Script::new(MERGE_SERIES),
    bump_generation: Script::new(BUMP_GENERATION),
});
