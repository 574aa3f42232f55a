//! Cluster limits: every limit of a policy decided in one atomic Lua script on the shared
//! Redis (one round trip), with Redis's own clock so gateways with drifting clocks agree.
//! All or nothing: a request refused by one limit consumes none.

use std::sync::LazyLock;

use super::{shared_key, Decision, Limit, LimitRequest, LimitShape};
use crate::redis::{RedisFailure, RedisLink};

/// KEYS: one per limit. ARGV: three per limit: kind (0 GCRA, 1 window), then for GCRA the
/// interval and tolerance, for a window its length and limit; times in microseconds; then
/// 1 to count the request, 0 to only look (`explain`).
/// Returns, per limit: allowed (0/1), remaining, reset (µs), retry after (µs).
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local commit = ARGV[#KEYS * 3 + 1] == '1'
local out = {}
local writes = {}
local all = true
for i = 1, #KEYS do
  local kind = tonumber(ARGV[i * 3 - 2])
  local a = tonumber(ARGV[i * 3 - 1])
  local b = tonumber(ARGV[i * 3])
  if kind == 0 then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tat < now then tat = now end
    local nxt = tat + a
    if nxt - now > b then
      all = false
      out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = tat - now; out[#out + 1] = nxt - now - b
    else
      out[#out + 1] = 1; out[#out + 1] = math.floor((b - (nxt - now)) / a)
      out[#out + 1] = nxt - now; out[#out + 1] = 0
      writes[i] = {nxt, nxt - now}
    end
  else
    local idx = math.floor(now / a)
    local h = redis.call('HMGET', KEYS[i], 'i', 'p', 'c')
    local si = tonumber(h[1] or '-1')
    local p = tonumber(h[2] or '0')
    local c = tonumber(h[3] or '0')
    if si == idx - 1 then p = c; c = 0 elseif si ~= idx then p = 0; c = 0 end
    local into = now % a
    local est = p * (1 - into / a) + c
    if est + 1 > b then
      all = false
      out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = a - into; out[#out + 1] = a - into
    else
      out[#out + 1] = 1; out[#out + 1] = math.floor(b - est - 1)
      out[#out + 1] = a - into; out[#out + 1] = 0
      writes[i] = {idx, p, c + 1, a}
    end
  end
end
if all and commit then
  for i = 1, #KEYS do
    local w = writes[i]
    if #w == 2 then
      redis.call('SET', KEYS[i], w[1], 'PX', math.floor(w[2] / 1000) + 1000)
    else
      redis.call('HSET', KEYS[i], 'i', w[1], 'p', w[2], 'c', w[3])
      redis.call('PEXPIRE', KEYS[i], math.floor(2 * w[4] / 1000) + 1000)
    end
  end
end
return out
"#;

static LIMIT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SCRIPT));

/// Decide on `request`, counting it when `commit` (otherwise only report the state).
pub(super) async fn decide(
    redis: &RedisLink,
    policy: &str,
    limits: &[Limit],
    request: &LimitRequest<'_>,
    commit: bool,
) -> Result<Vec<Decision>, RedisFailure> {
    let keys: Vec<String> = limits
        .iter()
        .enumerate()
        .map(|(index, limit)| shared_key(policy, index, limit, request))
        .collect();
    let mut args = Vec::with_capacity(limits.len() * 3);
    for limit in limits {
        let micros = |ns: u64| ((ns / 1000).max(1)) as i64;
        match limit.shape {
            LimitShape::Gcra {
                interval,
                tolerance,
            } => {
                args.extend([0, micros(interval), micros(tolerance)]);
            }
            LimitShape::Window { window, limit } => {
                args.extend([1, micros(window), limit as i64]);
            }
        }
    }
    args.push(i64::from(commit));
    let values = redis.run_script(&LIMIT_SCRIPT, &keys, &args).await?;
    let decisions = values
        .chunks_exact(4)
        .map(|v| Decision {
            allowed: v[0] == 1,
            remaining: v[1].max(0) as u64,
            reset_ns: (v[2].max(0) as u64).saturating_mul(1000),
            retry_after_ns: (v[3].max(0) as u64).saturating_mul(1000),
        })
        .collect::<Vec<_>>();
    if decisions.len() != limits.len() {
        return Err(RedisFailure::Redis(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected answer from the rate-limit script",
        ))));
    }
    Ok(decisions)
}
