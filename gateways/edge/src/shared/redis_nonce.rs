//! ACME nonce redemption in Redis: any edge accepts any edge's nonce exactly once.
//!
//! The nonce itself is stateless and HMAC-authenticated under the fleet key (`[acme]
//! nonce_key_file`, shared by every edge), so only nonces this fleet minted, unexpired, reach
//! Redis. Redemption is one atomic `SET PREFIX:nonce:HEX 1 NX EXAT expiry+skew`: the first
//! edge's `SET` answers `OK`, every later one nil. The key expires on its own shortly after the
//! nonce does (the skew covers edges whose clocks lag Redis's), so Redis stays bounded by the
//! number of nonces redeemed per nonce lifetime. Redis unreachable → `StoreError::Unavailable`,
//! which the ACME layer answers `badNonce` (fail closed: a replay cannot be ruled out).

use std::sync::Arc;

use certgate_acme::nonce::{NonceId, NonceStore, RedeemFuture, StoreError};

use super::{RedisPool, count_op};

/// The Redis [`NonceStore`].
#[derive(Debug, Clone)]
pub struct RedisNonceStore {
    pool: Arc<RedisPool>,
    skew_seconds: u64,
}

impl RedisNonceStore {
    /// A store on `pool`, remembering nonces `skew_seconds` past their expiry.
    pub fn new(pool: Arc<RedisPool>, skew_seconds: u64) -> Self {
        Self { pool, skew_seconds }
    }

    /// The key of a nonce (the random part is unique per nonce).
    pub fn key(&self, nonce: &NonceId) -> String {
        format!("{}:nonce:{}", self.pool.prefix(), hex::encode(nonce.random))
    }
}

impl NonceStore for RedisNonceStore {
    fn redeem<'a>(&'a self, nonce: &'a NonceId, _now: u64) -> RedeemFuture<'a> {
        let key = self.key(nonce);
        let expire_at = nonce.expiry.saturating_add(self.skew_seconds);
        Box::pin(async move {
            let r: Result<Option<String>, _> = self
                .pool
                .run(|mut con| async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(1)
                        .arg("NX")
                        .arg("EXAT")
                        .arg(expire_at)
                        .query_async(&mut con)
                        .await
                })
                .await;
            match r {
                Ok(Some(_)) => {
                    count_op("acme", "nonce_redeem", "ok");
                    Ok(true)
                }
                Ok(None) => {
                    count_op("acme", "nonce_redeem", "replay");
                    Ok(false)
                }
                Err(e) => {
                    count_op("acme", "nonce_redeem", e.outcome());
                    super::count_fallback("acme", "nonce_redeem", "closed");
                    // Counted per request; the pool logs the connection failure once per backoff.
                    tracing::debug!(error = %e, "nonce redemption failed closed: Redis unavailable");
                    Err(StoreError::Unavailable(e.to_string()))
                }
            }
        })
    }
}
