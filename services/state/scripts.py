"""The Lua scripts of services.state.redis: each is one atomic step on a job's keys.

The scripts that write what a task computes begin with FENCE: KEYS[1] is the unit's lease and
ARGV[1] the task's holder, and the write happens only while that lease is the task's
(`JobStore.fenced`). Unfenced calls pass the job's header key and '' there.
"""

# KEYS[1]: lease. ARGV[1]: holder ('' = unfenced). Refused with a LEASELOST error, not a return
# code, so every fenced script refuses the same way whatever it returns.
FENCE = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('LEASELOST the lease on this unit is no longer held by this task')
end
"""

# KEYS: job, tenant_jobs, tenant_active, active (every tenant's). ARGV: job_id, tenant, spec, now, max_active (-1 = none)
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local max = tonumber(ARGV[5])
if max >= 0 and redis.call('SCARD', KEYS[3]) >= max then return -2 end
redis.call('HSET', KEYS[1], 'job_id', ARGV[1], 'tenant', ARGV[2], 'status', 'queued', 'spec', ARGV[3],
           'error', '', 'created_at', ARGV[4], 'updated_at', ARGV[4], 'policy_version', 0)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
return 1
"""

# KEYS: fence, job, tenant_active, active (every tenant's). ARGV: holder, new, now, error, terminal(0/1), job_id, allowed-from...
TRANSITION = FENCE + """
local cur = redis.call('HGET', KEYS[2], 'status')
if not cur then return {-1, ''} end
if cur == ARGV[2] then return {0, cur} end
for i = 7, #ARGV do
  if ARGV[i] == cur then
    redis.call('HSET', KEYS[2], 'status', ARGV[2], 'updated_at', ARGV[3], 'error', ARGV[4])
    if ARGV[5] == '1' then
      redis.call('SREM', KEYS[3], ARGV[6])
      redis.call('SREM', KEYS[4], ARGV[6])
    end
    return {1, cur}
  end
end
return {-2, cur}
"""

# KEYS: fence, job, records, counts. ARGV: holder, counter ('' = none), then (id, json) pairs.
# -1 no job, else how many ids were inserted now (the others existed: left as they were). A task's
# records in one atomic step: one round trip, not one a record.
PUT_ONCE = FENCE + """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local inserted = 0
for i = 3, #ARGV, 2 do
  inserted = inserted + redis.call('HSETNX', KEYS[3], ARGV[i], ARGV[i + 1])
end
if inserted > 0 and ARGV[2] ~= '' then redis.call('HINCRBY', KEYS[4], ARGV[2], inserted) end
return inserted
"""

# KEYS: fence, job, objects (key -> size). ARGV: holder, then (object key, size) pairs (size -1: deleted).
# -1 no job, 1 done. Every pair in one atomic step (a task's batch of puts: one round trip). The header's
# stored_bytes / stored_objects move by the change to each key's entry: a key written again moves them
# by its new size less its old, never by its whole size twice (within a batch too: entries apply in order).
RECORD_OBJECTS = FENCE + """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local bytes, objects = 0, 0
for i = 2, #ARGV, 2 do
  local old = redis.call('HGET', KEYS[3], ARGV[i])
  local size = tonumber(ARGV[i + 1])
  if size >= 0 then redis.call('HSET', KEYS[3], ARGV[i], size) else redis.call('HDEL', KEYS[3], ARGV[i]) end
  bytes = bytes + math.max(size, 0) - tonumber(old or '0')
  objects = objects + (size >= 0 and 1 or 0) - (old and 1 or 0)
end
redis.call('HINCRBY', KEYS[2], 'stored_bytes', bytes)
if objects ~= 0 then redis.call('HINCRBY', KEYS[2], 'stored_objects', objects) end
return 1
"""

# KEYS: fence, job. ARGV: holder, expected, new
CAS_POLICY = FENCE + """
local cur = redis.call('HGET', KEYS[2], 'policy_version')
if not cur then return -1 end
if tonumber(cur) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], 'policy_version', ARGV[3])
return 1
"""

# KEYS: fence, members, fired. ARGV: holder, member, expected
MARK_DONE = FENCE + """
redis.call('SADD', KEYS[2], ARGV[2])
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[3]) and redis.call('SETNX', KEYS[3], '1') == 1 then
  return 1
end
return 0
"""

# KEYS: fence, key. ARGV: holder, command (HINCRBY, HSET or SADD), its arguments after the key
WRITE = FENCE + """
return redis.call(ARGV[2], KEYS[2], unpack(ARGV, 3))
"""

# KEYS: lease, lease_units. ARGV: holder, ttl_ms, unit. nil when taken (or ours), else the holder
ACQUIRE_LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return false
"""

# KEYS: lease. ARGV: holder, ttl_ms. 1 renewed, 0 not ours (expired or taken over)
RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease, lease_units. ARGV: holder, unit
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
end
return 1
"""
