"""The Lua scripts that fence owners in Redis (topicserver/fencing.py has the rules).

Each touches one hash tag's keys, so each runs on one Redis Cluster slot: a topic's fence, number
and history are ``{topic}``, a server's inbox holder and cursor are ``{server}``. A script checks
before it writes anything: Redis has no rollback, so a refused script has changed nothing.
Generations are compared as numbers; a missing fence refuses nobody.
"""

from __future__ import annotations

import hashlib

__all__ = ["Script", "NUMBER", "COMMIT", "CLAIM_TOPIC", "CLAIM_INBOX", "ADVANCE_CURSOR"]


class Script:
    """A script's source and SHA1, for EVALSHA (sent by name, loaded again after NOSCRIPT)."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


# A topic's numbers, unless its fence or a used number refuses them. Numbers already stored by this
# same numbering (the last number and its origin stored by this generation: an attempt whose reply
# was lost) are answered 'ok' and not stored again, so a retry never numbers a message twice.
# KEYS: fence, seq, history, history epoch, last numbered ("generation origin"). ARGV: generation, first new number (0: none),
# last number, history size, expiry in ms (0: not renewed now), the last new message's origin, then
# (seq, origin, message) per kept message.
NUMBER = Script("""
local generation = tonumber(ARGV[1])
local fence = redis.call('GET', KEYS[1])
if fence and tonumber(fence) > generation then return {'fenced', fence} end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
local first = tonumber(ARGV[2])
if first > 0 and first <= current then
  if current == tonumber(ARGV[3]) and redis.call('GET', KEYS[5]) == ARGV[1] .. ' ' .. ARGV[6] then
    return {'ok', '0'}
  end
  return {'taken', tostring(current)}
end
if not fence or tonumber(fence) < generation then redis.call('SET', KEYS[1], ARGV[1]) end
if tonumber(ARGV[3]) > current then redis.call('SET', KEYS[2], ARGV[3]) end
if first > 0 then redis.call('SET', KEYS[5], ARGV[1] .. ' ' .. ARGV[6]) end
for i = 7, #ARGV, 3 do
  redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[4], '*', 's', ARGV[i], 'o', ARGV[i + 1], 'd', ARGV[i + 2])
end
if tonumber(ARGV[5]) > 0 then
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
return {'ok', '0'}
""")

# A whole batch on one Redis, in one call: NUMBER for each topic, then the appends (those of refused
# topics left out), then ADVANCE_CURSOR if no topic was refused.
# KEYS: inbox holder, cursor, then fence, seq, history, history epoch, last numbered per topic, then the
# streams. ARGV: generation, cursor, topic count, history size, stream bound (MAXLEN ~); per topic:
# first new number, last number, expiry in ms, last new origin, kept count, then (seq, origin, message)
# per kept message; then the
# append count, and per append: its topic's index (0: none), its stream's index in KEYS, its data.
# Returns {cursor moved (1, 0, or -1: not tried), verdict, value, verdict, value, ...}.
COMMIT = Script("""
local generation = tonumber(ARGV[1])
local topics = tonumber(ARGV[3])
local stored, out, refused, a = {}, {0}, false, 6
for t = 1, topics do
  local k = 2 + (t - 1) * 5
  local first, last, expiry, origin = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local from = a + 5
  a = from + 3 * tonumber(ARGV[a + 4])
  local fence = redis.call('GET', KEYS[k + 1])
  local current = tonumber(redis.call('GET', KEYS[k + 2]) or '0')
  if fence and tonumber(fence) > generation then
    out[#out + 1], out[#out + 2], refused = 'fenced', fence, true
  elseif first > 0 and first <= current then
    if current == tonumber(last) and redis.call('GET', KEYS[k + 5]) == ARGV[1] .. ' ' .. origin then
      stored[t] = true
      out[#out + 1], out[#out + 2] = 'ok', '0'
    else
      out[#out + 1], out[#out + 2], refused = 'taken', tostring(current), true
    end
  else
    if not fence or tonumber(fence) < generation then redis.call('SET', KEYS[k + 1], ARGV[1]) end
    if tonumber(last) > current then redis.call('SET', KEYS[k + 2], last) end
    if first > 0 then redis.call('SET', KEYS[k + 5], ARGV[1] .. ' ' .. origin) end
    for i = from, a - 1, 3 do
      redis.call('XADD', KEYS[k + 3], 'MAXLEN', ARGV[4], '*', 's', ARGV[i], 'o', ARGV[i + 1], 'd', ARGV[i + 2])
    end
    if tonumber(expiry) > 0 then
      redis.call('PEXPIRE', KEYS[k + 3], expiry)
      redis.call('PEXPIRE', KEYS[k + 4], expiry)
    end
    stored[t] = true
    out[#out + 1], out[#out + 2] = 'ok', '0'
  end
end
for i = a + 1, a + 3 * tonumber(ARGV[a]), 3 do
  local topic = tonumber(ARGV[i])
  if topic == 0 or stored[topic] then
    redis.call('XADD', KEYS[tonumber(ARGV[i + 1])], 'MAXLEN', '~', ARGV[5], '*', 'd', ARGV[i + 2])
  end
end
if refused then
  out[1] = -1
else
  local holder = redis.call('GET', KEYS[1])
  if holder and tonumber(holder) > generation then
    out[1] = 0
  else
    redis.call('SET', KEYS[2], ARGV[2])
    out[1] = 1
  end
end
return out
""")

# KEYS: fence, history. ARGV: generation. Raises the fence; returns origin, seq, ... of the history.
CLAIM_TOPIC = Script("""
local fence = redis.call('GET', KEYS[1])
if not fence or tonumber(fence) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
local out = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do
  local fields, seq, origin = entry[2], nil, nil
  for i = 1, #fields, 2 do
    if fields[i] == 's' then seq = fields[i + 1] elseif fields[i] == 'o' then origin = fields[i + 1] end
  end
  if seq and origin then
    out[#out + 1] = origin
    out[#out + 1] = seq
  end
end
return out
""")

# KEYS: inbox holder, cursor. ARGV: generation. Raises the holder; returns the cursor.
CLAIM_INBOX = Script("""
local holder = redis.call('GET', KEYS[1])
if not holder or tonumber(holder) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('GET', KEYS[2])
""")

# KEYS: inbox holder, cursor. ARGV: generation, cursor. 1 if moved, 0 if a newer generation holds it.
ADVANCE_CURSOR = Script("""
local holder = redis.call('GET', KEYS[1])
if holder and tonumber(holder) > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
""")

# The ring's compare-and-set: a proposal for generation ARGV[1] wins only if that is still the
# current one; the next generation goes past ARGV[3] too (a fence newer than any known ring).
PROPOSE_RING = """
local current = tonumber(redis.call('HGET', KEYS[1], 'generation') or '0')
if current ~= tonumber(ARGV[1]) then return -1 end
local next = math.max(current, tonumber(ARGV[3])) + 1
redis.call('HSET', KEYS[1], 'generation', next, 'members', ARGV[2])
return next
"""
