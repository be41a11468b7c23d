//! Rate limits behind one trait, so the fleet-wide implementation (Redis,
//! [`crate::shared::redis_ratelimit`]) can replace the in-process one without touching the
//! protocols.
//!
//! A limit is a [`Rule`] (what is counted), a tenant (each tenant may configure its own quotas in
//! `[rate_limits.tenants.NAME]`) and a subject key (an account, a registered domain, a client IP).
//! [`RateLimiter::check`] takes one unit or says how long to wait; [`RateLimiter::refund`] gives
//! a unit back when the limited operation then failed (so a client is not punished for our
//! errors, and "failed validations" can be counted by taking a unit before the attempt and
//! refunding it when the attempt succeeds).
//!
//! [`GovernorLimiter`] is the in-process implementation: one keyed GCRA limiter (`governor`) per
//! (rule, quota) — quotas come from configuration, so the number of limiters is bounded by the
//! configuration — with keys `tenant NUL subject`. The key space is bounded (I-8): past
//! `max_keys` the limiter first forgets keys whose state is back to full, and if still too many,
//! refuses (fail closed, with a short Retry-After) rather than grow. Refunds are credits in a
//! bounded moka cache that expire with the quota period.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// ACME newOrder per account per hour.
    AcmeNewOrders,
    /// ACME failed validations per account per hour.
    AcmeFailedValidations,
    /// ACME certificates per registered domain per week.
    AcmeCertificatesPerDomain,
    /// ACME newAccount (creations) per client IP per hour.
    AcmeNewAccounts,
}

impl Rule {
    /// Metric label and problem detail name.
    pub fn label(self) -> &'static str {
        match self {
            Rule::AcmeNewOrders => "acme_new_orders",
            Rule::AcmeFailedValidations => "acme_failed_validations",
            Rule::AcmeCertificatesPerDomain => "acme_certificates_per_domain",
            Rule::AcmeNewAccounts => "acme_new_accounts",
        }
    }

    /// The period the quota counts over.
    pub fn period(self) -> Duration {
        match self {
            Rule::AcmeCertificatesPerDomain => Duration::from_secs(7 * 24 * 3600),
            _ => Duration::from_secs(3600),
        }
    }
}

/// A refusal: wait this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited; retry after {retry_after:?}")]
pub struct RateLimited {
    /// When one more unit will be available.
    pub retry_after: Duration,
}

/// What [`RateLimiter`] methods return: a future, because the fleet-wide limiter (Redis) answers
/// over the network; the in-process one answers at once. Boxed so `dyn RateLimiter` works.
pub type LimitFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A keyed limiter with refunds. Implementations must be bounded in memory.
pub trait RateLimiter: Send + Sync {
    /// Takes one unit of `rule` for `subject` within `tenant`, or refuses.
    fn check<'a>(
        &'a self,
        tenant: &'a str,
        rule: Rule,
        subject: &'a str,
    ) -> LimitFuture<'a, Result<(), RateLimited>>;
    /// Gives back one unit taken by a successful [`RateLimiter::check`].
    fn refund<'a>(&'a self, tenant: &'a str, rule: Rule, subject: &'a str) -> LimitFuture<'a, ()>;
}

/// Quotas of one tenant (units per the rule's period). 0 disables a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// newOrder per account per hour.
    pub acme_new_orders_per_account_per_hour: u32,
    /// Failed validations per account per hour.
    pub acme_failed_validations_per_account_per_hour: u32,
    /// Certificates per registered domain per week.
    pub acme_certificates_per_domain_per_week: u32,
    /// New accounts per client IP per hour.
    pub acme_new_accounts_per_ip_per_hour: u32,
}

impl Default for Quotas {
    /// Generous defaults: far above what a test suite or the bench does per key, low enough to
    /// stop a runaway client.
    fn default() -> Self {
        Self {
            acme_new_orders_per_account_per_hour: 100_000,
            acme_failed_validations_per_account_per_hour: 1_000,
            acme_certificates_per_domain_per_week: 100_000,
            acme_new_accounts_per_ip_per_hour: 10_000,
        }
    }
}

impl Quotas {
    fn get(&self, rule: Rule) -> u32 {
        match rule {
            Rule::AcmeNewOrders => self.acme_new_orders_per_account_per_hour,
            Rule::AcmeFailedValidations => self.acme_failed_validations_per_account_per_hour,
            Rule::AcmeCertificatesPerDomain => self.acme_certificates_per_domain_per_week,
            Rule::AcmeNewAccounts => self.acme_new_accounts_per_ip_per_hour,
        }
    }
}

/// `[rate_limits]` in edge.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Quotas of every tenant without its own section.
    pub default: Quotas,
    /// Per-tenant quotas (`[rate_limits.tenants.corp]`); unspecified keys take the built-in
    /// defaults.
    pub tenants: BTreeMap<String, Quotas>,
    /// Most keys each limiter tracks.
    pub max_keys: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            default: Quotas::default(),
            tenants: BTreeMap::new(),
            max_keys: 100_000,
        }
    }
}

impl RateLimitConfig {
    /// Bounds must be positive.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_keys == 0 {
            return Err("[rate_limits] max_keys must be positive".into());
        }
        if let Some(t) = self
            .tenants
            .keys()
            .find(|t| !crate::tenant::valid_tenant(t))
        {
            return Err(format!("[rate_limits.tenants] invalid tenant name {t:?}"));
        }
        Ok(())
    }

    /// Units of `rule` per its period for `tenant` (0: the rule is off).
    pub fn quota(&self, tenant: &str, rule: Rule) -> u32 {
        self.tenants.get(tenant).unwrap_or(&self.default).get(rule)
    }
}

/// One keyed GCRA limiter.
type Keyed = DefaultKeyedRateLimiter<String>;

/// The in-process [`RateLimiter`] on `governor`.
pub struct GovernorLimiter {
    cfg: RateLimitConfig,
    limiters: Mutex<HashMap<(Rule, u32), Arc<Keyed>>>,
    credits: moka::sync::Cache<(Rule, String), u32>,
    clock: DefaultClock,
}

/// Retry hint when the key space is full.
const FULL_RETRY: Duration = Duration::from_secs(1);

impl GovernorLimiter {
    /// A limiter with the configured quotas.
    pub fn new(cfg: RateLimitConfig) -> Self {
        let credits = moka::sync::Cache::builder()
            .max_capacity(cfg.max_keys as u64)
            // Longest period: a refund never outlives the window it belongs to by much.
            .time_to_live(Rule::AcmeCertificatesPerDomain.period())
            .build();
        Self {
            cfg,
            limiters: Mutex::new(HashMap::new()),
            credits,
            clock: DefaultClock::default(),
        }
    }

    fn limiter(&self, rule: Rule, per_period: NonZeroU32) -> Arc<Keyed> {
        let make = || {
            let period = rule.period() / per_period.get();
            let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
                .unwrap_or_else(|| Quota::per_second(per_period))
                .allow_burst(per_period);
            Arc::new(DefaultKeyedRateLimiter::keyed(quota))
        };
        match self.limiters.lock() {
            Ok(mut m) => m
                .entry((rule, per_period.get()))
                .or_insert_with(make)
                .clone(),
            Err(_) => make(),
        }
    }
}

fn key(tenant: &str, subject: &str) -> String {
    format!("{tenant}\0{subject}")
}

impl RateLimiter for GovernorLimiter {
    fn check<'a>(
        &'a self,
        tenant: &'a str,
        rule: Rule,
        subject: &'a str,
    ) -> LimitFuture<'a, Result<(), RateLimited>> {
        Box::pin(std::future::ready(GovernorLimiter::check(
            self, tenant, rule, subject,
        )))
    }

    fn refund<'a>(&'a self, tenant: &'a str, rule: Rule, subject: &'a str) -> LimitFuture<'a, ()> {
        GovernorLimiter::refund(self, tenant, rule, subject);
        Box::pin(std::future::ready(()))
    }
}

impl GovernorLimiter {
    /// [`RateLimiter::check`] without the future: the in-process limiter never waits (also the
    /// Redis limiter's `fallback = "local"`).
    pub fn check(&self, tenant: &str, rule: Rule, subject: &str) -> Result<(), RateLimited> {
        let Some(per_period) = NonZeroU32::new(self.cfg.quota(tenant, rule)) else {
            return Ok(());
        };
        let k = key(tenant, subject);
        let ck = (rule, k.clone());
        if let Some(c) = self.credits.get(&ck)
            && c > 0
        {
            self.credits.insert(ck, c - 1);
            return Ok(());
        }
        let lim = self.limiter(rule, per_period);
        if lim.len() >= self.cfg.max_keys {
            lim.retain_recent();
            if lim.len() >= self.cfg.max_keys {
                return Err(RateLimited {
                    retry_after: FULL_RETRY,
                });
            }
        }
        lim.check_key(&k).map_err(|not_until| RateLimited {
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// [`RateLimiter::refund`] without the future.
    pub fn refund(&self, tenant: &str, rule: Rule, subject: &str) {
        if self.cfg.quota(tenant, rule) == 0 {
            return;
        }
        let ck = (rule, key(tenant, subject));
        let c = self.credits.get(&ck).unwrap_or(0);
        self.credits.insert(ck, c.saturating_add(1));
    }
}

/// The registered domain (public suffix + one label) of a DNS name, by the Public Suffix List
/// compiled into `psl`. Names under no known suffix, and IP addresses, count as themselves.
pub fn registered_domain(name: &str) -> String {
    let name = name.trim_start_matches("*.").trim_end_matches('.');
    if name.parse::<std::net::IpAddr>().is_ok() {
        return name.to_owned();
    }
    psl::domain_str(name).unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(orders: u32, max_keys: usize) -> GovernorLimiter {
        GovernorLimiter::new(RateLimitConfig {
            default: Quotas {
                acme_new_orders_per_account_per_hour: orders,
                ..Quotas::default()
            },
            tenants: BTreeMap::from([(
                "strict".to_owned(),
                Quotas {
                    acme_new_orders_per_account_per_hour: 1,
                    ..Quotas::default()
                },
            )]),
            max_keys,
        })
    }

    #[test]
    fn quota_is_enforced_per_key_and_tenant() {
        let l = limiter(3, 100);
        for _ in 0..3 {
            l.check("default", Rule::AcmeNewOrders, "acct-1")
                .expect("within quota");
        }
        let e = l
            .check("default", Rule::AcmeNewOrders, "acct-1")
            .expect_err("over quota");
        // One unit per 20 minutes.
        assert!(e.retry_after > Duration::from_secs(1100), "{e:?}");
        assert!(e.retry_after <= Duration::from_secs(1200), "{e:?}");
        assert!(l.check("default", Rule::AcmeNewOrders, "acct-2").is_ok());
        // Per-tenant quota: "strict" allows one.
        assert!(l.check("strict", Rule::AcmeNewOrders, "acct-1").is_ok());
        assert!(l.check("strict", Rule::AcmeNewOrders, "acct-1").is_err());
    }

    #[test]
    fn refund_gives_a_unit_back() {
        let l = limiter(1, 100);
        l.check("default", Rule::AcmeNewOrders, "a").expect("first");
        assert!(l.check("default", Rule::AcmeNewOrders, "a").is_err());
        l.refund("default", Rule::AcmeNewOrders, "a");
        assert!(l.check("default", Rule::AcmeNewOrders, "a").is_ok());
        assert!(l.check("default", Rule::AcmeNewOrders, "a").is_err());
    }

    #[test]
    fn key_space_is_bounded() {
        let l = limiter(1, 10);
        let mut refused = 0;
        for i in 0..50 {
            if l.check("default", Rule::AcmeNewOrders, &format!("k{i}"))
                .is_err()
            {
                refused += 1;
            }
        }
        assert_eq!(refused, 40, "past max_keys new keys are refused");
        let lim = l.limiter(Rule::AcmeNewOrders, NonZeroU32::MIN);
        assert!(lim.len() <= 10);
    }

    #[test]
    fn zero_quota_disables_a_rule() {
        let l = limiter(0, 10);
        for _ in 0..10 {
            assert!(l.check("default", Rule::AcmeNewOrders, "a").is_ok());
        }
    }

    #[test]
    fn registered_domains_follow_the_public_suffix_list() {
        assert_eq!(registered_domain("www.example.co.uk"), "example.co.uk");
        assert_eq!(registered_domain("*.a.b.example.com"), "example.com");
        assert_eq!(registered_domain("x.y.github.io"), "y.github.io");
        assert_eq!(registered_domain("127.0.0.1"), "127.0.0.1");
    }
}
