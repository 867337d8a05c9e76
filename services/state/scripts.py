"""The Lua scripts of services.state.redis: each is one atomic step on a job's keys."""

# KEYS: job, tenant_jobs, tenant_active. ARGV: job_id, tenant, spec, now, max_active (-1 = none)
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local max = tonumber(ARGV[5])
if max >= 0 and redis.call('SCARD', KEYS[3]) >= max then return -2 end
redis.call('HSET', KEYS[1], 'job_id', ARGV[1], 'tenant', ARGV[2], 'status', 'queued', 'spec', ARGV[3],
           'error', '', 'created_at', ARGV[4], 'updated_at', ARGV[4], 'policy_version', 0)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""

# KEYS: job, tenant_active. ARGV: new, now, error, terminal(0/1), job_id, allowed-from...
TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {-1, ''} end
if cur == ARGV[1] then return {0, cur} end
for i = 6, #ARGV do
  if ARGV[i] == cur then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at', ARGV[2], 'error', ARGV[3])
    if ARGV[4] == '1' then redis.call('SREM', KEYS[2], ARGV[5]) end
    return {1, cur}
  end
end
return {-2, cur}
"""

# KEYS: job, records, counts. ARGV: id, json, counter ('' = none). -1 no job, 1 inserted, 0 existed
PUT_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  if ARGV[3] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[3], 1) end
  return 1
end
return 0
"""

# KEYS: job. ARGV: expected, new
CAS_POLICY = """
local cur = redis.call('HGET', KEYS[1], 'policy_version')
if not cur then return -1 end
if tonumber(cur) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'policy_version', ARGV[2])
return 1
"""

# KEYS: members, fired. ARGV: member, expected
MARK_DONE = """
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) and redis.call('SETNX', KEYS[2], '1') == 1 then
  return 1
end
return 0
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
