-- Atomic publish: append to the channel's replay buffer, trim it, and PUBLISH an envelope carrying the new id and
-- the one before it; one event, or a batch of one channel's events.
-- KEYS[1] stream key, KEYS[2] Pub/Sub channel
-- ARGV[1] MAXLEN (0: no length limit), ARGV[2] max age in ms (0: no age limit), ARGV[3] event type ('' for none),
-- ARGV[4] data, ARGV[5] (optional) ms a buffer without an age limit lives after its last publish (0: for ever;
-- absent: one day), ARGV[6] (optional) PUBLISH (the default) or SPUBLISH (Redis Cluster: sharded Pub/Sub, so the
-- message stays on the node of the channel's slot), or LATER: publish nothing and return {id, previous id}, for a
-- caller that first WAITs for replicas to have the entry and then publishes the envelope itself
-- (gateway.brokers.buffer)
-- ARGV[7], ARGV[8], ... (optional) more events of the same channel, as (event type, data) pairs: a batch. A batch
-- returns the list of its ids (with LATER, the flat list id1, previous1, id2, previous2, ...).
local events = {{ARGV[3], ARGV[4]}}
for i = 7, #ARGV, 2 do
  events[#events + 1] = {ARGV[i], ARGV[i + 1]}
end
-- Every type is checked before anything is written: a script that fails half-way keeps what it wrote.
for _, event in ipairs(events) do
  local event_type = event[1]
  if string.find(event_type, '[\r\n%z]') then
    return redis.error_reply('ERR event type must not contain CR, LF or NUL')
  end
  if event_type == 'gap' or #event_type > 512 then
    return redis.error_reply('ERR event type must not be the reserved gap, nor longer than 512 bytes (128 characters)')
  end
end
-- Each entry remembers the id before it, so a reader can tell "trimmed up to my cursor" from "entries lost after it".
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local previous = ''
if #last > 0 then previous = last[1][1] end
local maxlen = tonumber(ARGV[1])
local mode = ARGV[6]
local publish = 'PUBLISH'
if mode == 'SPUBLISH' then publish = 'SPUBLISH' end
local results = {}
local id
for _, event in ipairs(events) do
  if maxlen > 0 then
    id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'p', previous, 'e', event[1], 'd', event[2])
  else
    id = redis.call('XADD', KEYS[1], '*', 'p', previous, 'e', event[1], 'd', event[2])
  end
  if mode == 'LATER' then
    results[#results + 1] = id
    results[#results + 1] = previous
  else
    -- The envelope carries the previous id too, so a subscriber can tell that it missed a message
    -- (gateway.brokers.envelope).
    redis.call(publish, KEYS[2], '\0sse2\n' .. id .. '\n' .. previous .. '\n' .. event[1] .. '\n' .. event[2])
    results[#results + 1] = id
  end
  previous = id
end
local max_age = tonumber(ARGV[2])
if max_age > 0 then
  local now_ms = tonumber(string.match(id, '^(%d+)-'))
  if now_ms > max_age then
    redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d-0', now_ms - max_age))
  end
end
-- The buffer expires once it has been quiet for longer than anything in it may be kept, so the buffers of channels
-- that went quiet do not stay in Redis for ever. With an age limit, by then every entry is past it (the second of
-- margin covers the clocks of the id and of the expiry being read at different moments).
local expiry
if max_age > 0 then
  expiry = max_age + 1000
else
  expiry = tonumber(ARGV[5] or '86400000')
end
if expiry > 0 then
  redis.call('PEXPIRE', KEYS[1], expiry)
end
if #events > 1 or mode == 'LATER' then
  return results
end
return id
