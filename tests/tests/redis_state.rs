//! The edge's Redis-backed fleet state against a real `redis-server`: two independent client
//! instances (as two edges would hold) share one limit and redeem each nonce exactly once; Redis
//! going away fails closed (or to the local limiter, if so configured) and coming back on the
//! same port recovers without new clients.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use certgate_acme::nonce::{NonceStore, NonceVerifier};
use certgate_e2e::redis::RedisServer;
use certgate_edge::ratelimit::{Quotas, RateLimitConfig, RateLimiter, Rule};
use certgate_edge::shared::redis_nonce::RedisNonceStore;
use certgate_edge::shared::redis_ratelimit::RedisLimiter;
use certgate_edge::shared::{Fallback, RedisConfig, RedisPool};
use zeroize::Zeroizing;

fn redis_cfg(url: &str, extra: &str) -> RedisConfig {
    toml::from_str(&format!(
        "url = {url:?}\nop_timeout_ms = 300\nreconnect_ms = 100\n{extra}"
    ))
    .expect("redis config parses")
}

fn pool(url: &str) -> Arc<RedisPool> {
    RedisPool::new(&redis_cfg(url, "")).expect("pool")
}

fn orders_quota(n: u32) -> RateLimitConfig {
    RateLimitConfig {
        default: Quotas {
            acme_new_orders_per_account_per_hour: n,
            ..Quotas::default()
        },
        tenants: BTreeMap::new(),
        max_keys: 1000,
    }
}

/// Polls `f` until it returns true or `timeout` passes.
async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_two_limiters_enforce_one_limit() {
    let redis = RedisServer::start();
    let a = Arc::new(RedisLimiter::new(
        pool(&redis.url()),
        orders_quota(7),
        Fallback::Closed,
    ));
    let b = Arc::new(RedisLimiter::new(
        pool(&redis.url()),
        orders_quota(7),
        Fallback::Closed,
    ));
    // 8 concurrent clients, 5 attempts each, alternating between the two "edges".
    let mut tasks = Vec::new();
    for c in 0..8 {
        let l = if c % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            let mut waits = Vec::new();
            for _ in 0..5 {
                match l.check("default", Rule::AcmeNewOrders, "acct-1").await {
                    Ok(()) => ok += 1,
                    Err(e) => waits.push(e.retry_after),
                }
            }
            (ok, waits)
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        let (ok, waits) = t.await.expect("task");
        admitted += ok;
        for w in waits {
            // One unit per 3600/7 s: a refusal waits at most one interval.
            assert!(
                w > Duration::from_secs(400) && w <= Duration::from_secs(515),
                "{w:?}"
            );
        }
    }
    assert_eq!(
        admitted, 7,
        "40 attempts over two limiters admit exactly the quota"
    );
    // Another subject, another tenant: their own buckets.
    assert!(
        a.check("default", Rule::AcmeNewOrders, "acct-2")
            .await
            .is_ok()
    );
    assert!(
        b.check("other", Rule::AcmeNewOrders, "acct-1")
            .await
            .is_ok()
    );
    // A refund on one edge gives the unit back to the fleet.
    assert!(
        b.check("default", Rule::AcmeNewOrders, "acct-1")
            .await
            .is_err()
    );
    a.refund("default", Rule::AcmeNewOrders, "acct-1").await;
    assert!(
        b.check("default", Rule::AcmeNewOrders, "acct-1")
            .await
            .is_ok()
    );
    assert!(
        a.check("default", Rule::AcmeNewOrders, "acct-1")
            .await
            .is_err()
    );
    // Buckets are keys that expire by themselves.
    let keys = redis.cli(&["--scan", "--pattern", "certgate:rl:*"]);
    assert_eq!(keys.lines().count(), 3, "{keys}");
    let ttl: i64 = redis
        .cli(&["PTTL", keys.lines().next().expect("a key")])
        .parse()
        .expect("pttl");
    assert!(ttl > 0, "bucket keys carry a TTL, got {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_script_is_reloaded_after_a_redis_restart() {
    let mut redis = RedisServer::start();
    let l = RedisLimiter::new(pool(&redis.url()), orders_quota(2), Fallback::Closed);
    assert!(l.check("default", Rule::AcmeNewOrders, "x").await.is_ok());
    redis.restart();
    // The restarted Redis has neither the script (NOSCRIPT → loaded again) nor the bucket.
    assert!(
        eventually(Duration::from_secs(10), || async {
            l.check("default", Rule::AcmeNewOrders, "x").await.is_ok()
        })
        .await,
        "the limiter recovers on the restarted Redis"
    );
    assert!(l.check("default", Rule::AcmeNewOrders, "x").await.is_ok());
    assert!(l.check("default", Rule::AcmeNewOrders, "x").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_is_redeemed_exactly_once_across_two_stores() {
    let redis = RedisServer::start();
    let key = Zeroizing::new(vec![42u8; 32]);
    let ttl = Duration::from_secs(300);
    let edge_a = NonceVerifier::new(1, &key, ttl).expect("verifier");
    let store_a: Arc<dyn NonceStore> = Arc::new(RedisNonceStore::new(pool(&redis.url()), 60));
    let store_b: Arc<dyn NonceStore> = Arc::new(RedisNonceStore::new(pool(&redis.url()), 60));
    for round in 0..20u8 {
        let nonce = edge_a.mint(SystemTime::now(), [round; 16]);
        let mut tasks = Vec::new();
        for i in 0..6 {
            let store = if i % 2 == 0 {
                store_a.clone()
            } else {
                store_b.clone()
            };
            let nonce = nonce.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                // Each "edge" has its own verifier under the shared fleet key.
                let v = NonceVerifier::new(1, &key, ttl).expect("verifier");
                v.redeem(&nonce, SystemTime::now(), store.as_ref()).await
            }));
        }
        let mut accepted = 0;
        for t in tasks {
            match t.await.expect("task") {
                Ok(()) => accepted += 1,
                Err(e) => assert_eq!(e, certgate_acme::Error::BadNonce("nonce already used")),
            }
        }
        assert_eq!(accepted, 1, "round {round}: exactly one redemption");
    }
    // The redemption record expires after the nonce (expiry + skew), not never.
    let keys = redis.cli(&["--scan", "--pattern", "certgate:nonce:*"]);
    assert_eq!(keys.lines().count(), 20);
    let ttl_s: i64 = redis
        .cli(&["TTL", keys.lines().next().expect("a key")])
        .parse()
        .expect("ttl");
    assert!((300..=361).contains(&ttl_s), "ttl {ttl_s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_then_recovers_on_the_same_port() {
    let mut redis = RedisServer::start();
    let key = Zeroizing::new(vec![7u8; 32]);
    let v = NonceVerifier::new(1, &key, Duration::from_secs(300)).expect("verifier");
    let store = RedisNonceStore::new(pool(&redis.url()), 60);
    let closed = RedisLimiter::new(pool(&redis.url()), orders_quota(1), Fallback::Closed);
    let local = RedisLimiter::new(pool(&redis.url()), orders_quota(1), Fallback::Local);
    let n1 = v.mint(SystemTime::now(), [1; 16]);
    v.redeem(&n1, SystemTime::now(), &store)
        .await
        .expect("redis up: accepted");

    redis.stop();
    let n2 = v.mint(SystemTime::now(), [2; 16]);
    let start = Instant::now();
    assert_eq!(
        v.redeem(&n2, SystemTime::now(), &store).await,
        Err(certgate_acme::Error::NonceStoreUnavailable),
        "fail closed"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "bounded by op_timeout"
    );
    // closed: refused with a short Retry-After; local: the in-process limiter decides (quota 1).
    let e = closed
        .check("default", Rule::AcmeNewOrders, "acct")
        .await
        .expect_err("closed refuses");
    assert_eq!(e.retry_after, Duration::from_secs(1));
    assert!(
        local
            .check("default", Rule::AcmeNewOrders, "acct")
            .await
            .is_ok()
    );
    assert!(
        local
            .check("default", Rule::AcmeNewOrders, "acct")
            .await
            .is_err()
    );

    redis.restart();
    assert!(
        eventually(Duration::from_secs(10), || async {
            v.redeem(&n2, SystemTime::now(), &store).await.is_ok()
        })
        .await,
        "the refused nonce is accepted once Redis is back (it was never recorded)"
    );
    assert_eq!(
        v.redeem(&n2, SystemTime::now(), &store).await,
        Err(certgate_acme::Error::BadNonce("nonce already used"))
    );
    assert!(
        closed
            .check("default", Rule::AcmeNewOrders, "acct")
            .await
            .is_ok()
    );
    assert!(
        closed
            .check("default", Rule::AcmeNewOrders, "acct")
            .await
            .is_err()
    );
}

mod ocsp_tier {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use certgate_e2e::redis::RedisServer;
    use certgate_edge::shared::redis_ocsp::OcspTier;
    use certgate_edge::status::MissError;
    use certgate_ocsp::{CacheKey, CachedResponse, CertKey, HashAlg, Serial};

    fn key(serial: u8) -> CacheKey {
        CacheKey::Ocsp {
            tenant: "default".into(),
            cert: CertKey {
                issuer: "issuer-1".into(),
                alg: HashAlg::Sha1,
                serial: Serial::from_bytes(&[serial, 7]).expect("serial"),
            },
        }
    }

    fn resp(len: usize, valid_for: Duration) -> CachedResponse {
        let now = SystemTime::now();
        CachedResponse {
            der: Bytes::from(vec![0x30; len]),
            content_type: certgate_ocsp::OCSP_RESPONSE_CONTENT_TYPE,
            this_update: now,
            next_update: now + valid_for,
            etag: Bytes::from_static(b"\"e\""),
            last_modified_header: Bytes::new(),
            expires_header: Bytes::new(),
        }
    }

    /// What the status cache's validation does, for these fake responses: the bytes must be
    /// the expected ones (a core answer for exactly this key).
    fn validate(
        expected: CachedResponse,
    ) -> impl FnOnce(Vec<u8>) -> Result<CachedResponse, MissError> {
        move |der| {
            if der == expected.der {
                Ok(expected)
            } else {
                Err(MissError::Unavailable(1))
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_core_answer_at_one_edge_is_a_redis_hit_at_another_and_bounded() {
        let mut redis = RedisServer::start();
        let tier = |max: usize| OcspTier::new(super::pool(&redis.url()), max, 3600);
        let (a, b) = (tier(1024), tier(1024));
        let core_calls = AtomicUsize::new(0);
        let core = |r: CachedResponse| {
            let calls = &core_calls;
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(r)
            }
        };
        let r1 = resp(300, Duration::from_secs(600));

        // Miss at A: the core answers, the answer goes to Redis with the response's validity.
        let got = a
            .fetch_through(&key(1), validate(r1.clone()), core(r1.clone()))
            .await;
        assert_eq!(got.as_ref().map(|r| r.der.len()), Ok(300));
        assert_eq!(core_calls.load(Ordering::SeqCst), 1);
        let rkey = a.key(&key(1)).expect("an OCSP key");
        let ttl: i64 = redis.cli(&["TTL", &rkey]).parse().expect("ttl");
        assert!((590..=600).contains(&ttl), "TTL follows nextUpdate: {ttl}");

        // At B: a Redis hit, the core is not asked.
        let got = b
            .fetch_through(&key(1), validate(r1.clone()), core(r1.clone()))
            .await;
        assert_eq!(got.map(|r| r.der), Ok(r1.der.clone()));
        assert_eq!(core_calls.load(Ordering::SeqCst), 1);

        // A value that fails validation is not served: the core answers instead.
        let other = resp(200, Duration::from_secs(600));
        let got = b
            .fetch_through(&key(1), validate(other.clone()), core(other.clone()))
            .await;
        assert_eq!(got.map(|r| r.der.len()), Ok(200));
        assert_eq!(core_calls.load(Ordering::SeqCst), 2);

        // Bounded: a response over the limit is neither stored nor read back whole.
        let small = tier(100);
        let big = resp(101, Duration::from_secs(600));
        let got = small
            .fetch_through(&key(2), validate(big.clone()), core(big.clone()))
            .await;
        assert!(got.is_ok());
        assert_eq!(
            redis.cli(&["EXISTS", &small.key(&key(2)).expect("key")]),
            "0"
        );
        // key(1) holds 200 bytes now: oversized for `small`, so a miss there.
        let got = small
            .fetch_through(&key(1), validate(other.clone()), core(other.clone()))
            .await;
        assert!(got.is_ok());
        assert_eq!(core_calls.load(Ordering::SeqCst), 4);
        // An expired response is not stored.
        let stale = resp(50, Duration::ZERO);
        let _ = a
            .fetch_through(&key(3), validate(stale.clone()), core(stale.clone()))
            .await;
        assert_eq!(redis.cli(&["EXISTS", &a.key(&key(3)).expect("key")]), "0");

        // Redis down: the core answers, nothing is refused.
        redis.stop();
        let got = a
            .fetch_through(&key(1), validate(r1.clone()), core(r1.clone()))
            .await;
        assert_eq!(got.map(|r| r.der.len()), Ok(300));
        assert_eq!(core_calls.load(Ordering::SeqCst), 6);
    }
}
