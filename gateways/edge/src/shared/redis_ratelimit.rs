//! Fleet-wide rate limits: GCRA in a Lua script on Redis, so N edges enforce one limit.
//!
//! GCRA (the generic cell rate algorithm, as `governor` uses in process) keeps one number per
//! bucket: the theoretical arrival time (TAT). For a quota of `n` units per period `P`, each unit
//! costs the emission interval `T = P / n` and a burst of `n` is allowed: a request at `now` is
//! admitted iff `max(TAT, now) + T - now <= n·T`, and then `TAT := max(TAT, now) + T`. A refund
//! moves the TAT back by `T`. The key expires when the TAT passes (an absent key is a full
//! bucket), so Redis holds only buckets that are actually limiting.
//!
//! The script reads Redis's own clock (`TIME`), so the edges' clocks do not matter, and runs
//! atomically, so concurrent edges cannot both take the last unit. It is called with `EVALSHA`
//! and loaded on `NOSCRIPT` (after a Redis restart) by [`redis::Script`].
//!
//! [`gcra`] is the same decision in Rust, free of I/O, for tests and as documentation of the
//! script. When Redis fails, [`Fallback`] decides: refuse (`closed`) or ask the in-process
//! [`GovernorLimiter`] (`local`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crate::ratelimit::{
    GovernorLimiter, LimitFuture, RateLimitConfig, RateLimited, RateLimiter, Rule,
};

use super::{Fallback, RedisPool, count_fallback, count_op, digest};

/// The GCRA script. KEYS[1]: bucket. ARGV[1]: emission interval T (ms). ARGV[2]: burst n.
/// ARGV[3]: 1 to take a unit, -1 to give one back. Returns `{admitted (0/1), retry_after_ms}`.
pub const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if cost < 0 then
  local back = tat - interval
  if back <= now then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], back, 'PX', back - now)
  end
  return {1, 0}
end
local new = tat + interval
if new - now > burst * interval then
  return {0, new - now - burst * interval}
end
redis.call('SET', KEYS[1], new, 'PX', new - now)
return {1, 0}
";

/// Retry hint when the limit fails closed because Redis is unreachable.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// The GCRA parameters of a quota of `n` per `period`: (emission interval in ms, burst).
pub fn params(period: Duration, n: NonZeroU32) -> (u64, u32) {
    let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
    ((ms / u64::from(n.get())).max(1), n.get())
}

/// One GCRA step, exactly as [`GCRA_LUA`] computes it: the new TAT (None = delete the key) and
/// the decision (`Err(retry_after_ms)` when refused). `tat` None = no key.
pub fn gcra(
    tat: Option<u64>,
    now: u64,
    interval: u64,
    burst: u32,
    take: bool,
) -> (Option<u64>, Result<(), u64>) {
    let tat = tat.unwrap_or(now).max(now);
    if !take {
        let back = tat.saturating_sub(interval);
        return (if back <= now { None } else { Some(back) }, Ok(()));
    }
    let new = tat.saturating_add(interval);
    let allowed = interval.saturating_mul(u64::from(burst));
    if new - now > allowed {
        return (Some(tat).filter(|t| *t > now), Err(new - now - allowed));
    }
    (Some(new), Ok(()))
}

/// The Redis [`RateLimiter`].
pub struct RedisLimiter {
    pool: Arc<RedisPool>,
    cfg: RateLimitConfig,
    script: redis::Script,
    fallback: Fallback,
    local: GovernorLimiter,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// A limiter with `cfg`'s quotas on `pool`, falling back as configured.
    pub fn new(pool: Arc<RedisPool>, cfg: RateLimitConfig, fallback: Fallback) -> Self {
        Self {
            pool,
            local: GovernorLimiter::new(cfg.clone()),
            cfg,
            script: redis::Script::new(GCRA_LUA),
            fallback,
        }
    }

    /// The bucket key: rule, quota and a digest of tenant and subject (bounded, no escaping).
    pub fn key(&self, tenant: &str, rule: Rule, n: u32, subject: &str) -> String {
        format!(
            "{}:rl:{}:{n}:{}",
            self.pool.prefix(),
            rule.label(),
            digest(&[tenant.as_bytes(), subject.as_bytes()])
        )
    }

    async fn eval(
        &self,
        key: String,
        interval: u64,
        burst: u32,
        cost: i32,
    ) -> Result<(i64, i64), super::SharedError> {
        let script = &self.script;
        self.pool
            .run(|mut con| async move {
                script
                    .key(key)
                    .arg(interval)
                    .arg(burst)
                    .arg(cost)
                    .invoke_async::<(i64, i64)>(&mut con)
                    .await
            })
            .await
    }
}

impl RateLimiter for RedisLimiter {
    fn check<'a>(
        &'a self,
        tenant: &'a str,
        rule: Rule,
        subject: &'a str,
    ) -> LimitFuture<'a, Result<(), RateLimited>> {
        Box::pin(async move {
            let Some(n) = NonZeroU32::new(self.cfg.quota(tenant, rule)) else {
                return Ok(());
            };
            let (interval, burst) = params(rule.period(), n);
            match self
                .eval(self.key(tenant, rule, n.get(), subject), interval, burst, 1)
                .await
            {
                Ok((1, _)) => {
                    count_op("acme", "rate_limit", "ok");
                    Ok(())
                }
                Ok((_, wait_ms)) => {
                    count_op("acme", "rate_limit", "limited");
                    Err(RateLimited {
                        retry_after: Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)),
                    })
                }
                Err(e) => {
                    count_op("acme", "rate_limit", e.outcome());
                    match self.fallback {
                        Fallback::Closed => {
                            count_fallback("acme", "rate_limit", "closed");
                            Err(RateLimited {
                                retry_after: UNAVAILABLE_RETRY,
                            })
                        }
                        Fallback::Local => {
                            count_fallback("acme", "rate_limit", "local");
                            self.local.check(tenant, rule, subject)
                        }
                    }
                }
            }
        })
    }

    fn refund<'a>(&'a self, tenant: &'a str, rule: Rule, subject: &'a str) -> LimitFuture<'a, ()> {
        Box::pin(async move {
            let Some(n) = NonZeroU32::new(self.cfg.quota(tenant, rule)) else {
                return;
            };
            let (interval, burst) = params(rule.period(), n);
            match self
                .eval(
                    self.key(tenant, rule, n.get(), subject),
                    interval,
                    burst,
                    -1,
                )
                .await
            {
                Ok(_) => count_op("acme", "rate_refund", "ok"),
                Err(e) => {
                    // A lost refund only errs against the client by one unit; the local limiter
                    // gets it if it may have taken the unit.
                    count_op("acme", "rate_refund", e.outcome());
                    if self.fallback == Fallback::Local {
                        count_fallback("acme", "rate_refund", "local");
                        self.local.refund(tenant, rule, subject);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_split_the_period() {
        let (t, b) = params(Duration::from_secs(3600), NonZeroU32::new(3).expect("3"));
        assert_eq!((t, b), (1_200_000, 3));
    }

    #[test]
    fn gcra_admits_a_burst_then_one_per_interval() {
        let (t, n) = (1000, 3);
        let mut tat = None;
        let mut now = 10_000;
        for _ in 0..3 {
            let (next, d) = gcra(tat, now, t, n, true);
            assert_eq!(d, Ok(()));
            tat = next;
        }
        let (same, d) = gcra(tat, now, t, n, true);
        assert_eq!(d, Err(1000), "one interval until the next unit");
        assert_eq!(same, tat, "a refusal does not move the TAT");
        now += 1000;
        let (next, d) = gcra(tat, now, t, n, true);
        assert_eq!(d, Ok(()));
        assert!(gcra(next, now, t, n, true).1.is_err());
        // A refund gives one unit back.
        let (back, _) = gcra(next, now, t, n, false);
        assert_eq!(gcra(back, now, t, n, true).1, Ok(()));
        // Long idle: the bucket is full again and a refund deletes the key.
        assert_eq!(gcra(next, now + 10_000, t, n, false).0, None);
    }
}
