"""The Lua scripts that fence owners in Redis (topicserver/fencing.py has the rules).

Each touches one hash tag's keys, so each runs on one Redis Cluster slot: a topic's fence, number
and history are ``{topic}``, a server's inbox holder and cursor are ``{server}``. A script checks
before it writes anything: Redis has no rollback, so a refused script has changed nothing.
Generations are compared as numbers; a missing fence refuses nobody.
"""

from __future__ import annotations

import hashlib

__all__ = ["Script", "NUMBER", "CLAIM_TOPIC", "CLAIM_INBOX", "ADVANCE_CURSOR"]


class Script:
    """A script's source and SHA1, for EVALSHA (sent by name, loaded again after NOSCRIPT)."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


# KEYS: fence, seq, history, history epoch. ARGV: generation, first new number (0: none), last number,
# history size, expiry in ms (0: not renewed now), then (seq, origin, message) per kept message.
NUMBER = Script("""
local generation = tonumber(ARGV[1])
local fence = redis.call('GET', KEYS[1])
if fence and tonumber(fence) > generation then return {'fenced', fence} end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
local first = tonumber(ARGV[2])
if first > 0 and first <= current then return {'taken', tostring(current)} end
if not fence or tonumber(fence) < generation then redis.call('SET', KEYS[1], ARGV[1]) end
if tonumber(ARGV[3]) > current then redis.call('SET', KEYS[2], ARGV[3]) end
for i = 6, #ARGV, 3 do
  redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[4], '*', 's', ARGV[i], 'o', ARGV[i + 1], 'd', ARGV[i + 2])
end
if tonumber(ARGV[5]) > 0 then
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
return {'ok', '0'}
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
