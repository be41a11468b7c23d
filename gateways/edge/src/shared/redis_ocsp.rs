//! The optional shared OCSP tier: Redis between an edge's own cache and the core.
//!
//! On a local cache miss (inside the status cache's single-flight miss task, so at most
//! `max_miss_in_flight` of these run at once) the edge first reads Redis; a hit is validated
//! exactly like a core answer (a parseable response whose CertIDs resolve, in this tenant, to the
//! requested key) and must still be fresh. Otherwise the core is asked and its answer written to
//! Redis with a TTL of the response's remaining validity (capped by `ocsp_max_ttl_seconds`), so
//! the other edges find it. Values are bounded (`ocsp_max_value_bytes`, reads use `GETRANGE` so
//! an oversized value never enters memory whole). CRLs are not stored here.
//!
//! Redis down or slow → the lookup is skipped (counted) and the core answers, so OCSP serving
//! never depends on Redis.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use certgate_ocsp::{CacheKey, CachedResponse, HashAlg};

use super::{RedisPool, count_fallback, count_op, digest};
use crate::status::MissError;

/// The Redis OCSP tier.
#[derive(Debug, Clone)]
pub struct OcspTier {
    pool: Arc<RedisPool>,
    max_value_bytes: usize,
    max_ttl_seconds: u64,
}

impl OcspTier {
    /// A tier on `pool` storing responses up to `max_value_bytes`, at most `max_ttl_seconds`.
    pub fn new(pool: Arc<RedisPool>, max_value_bytes: usize, max_ttl_seconds: u64) -> Self {
        Self {
            pool,
            max_value_bytes,
            max_ttl_seconds,
        }
    }

    /// The Redis key of an OCSP cache key (None for CRLs): the tenant and every certificate's
    /// issuer, CertID hash algorithm and serial, digested.
    pub fn key(&self, key: &CacheKey) -> Option<String> {
        let certs = match key {
            CacheKey::Ocsp { cert, .. } => std::slice::from_ref(cert),
            CacheKey::OcspSet { certs, .. } => &certs[..],
            CacheKey::Crl { .. } => return None,
        };
        let mut parts: Vec<&[u8]> = vec![key.tenant().as_bytes()];
        for c in certs {
            parts.push(c.issuer.as_bytes());
            parts.push(match c.alg {
                HashAlg::Sha1 => b"sha1",
                HashAlg::Sha256 => b"sha256",
            });
            parts.push(c.serial.as_bytes());
        }
        Some(format!("{}:ocsp:{}", self.pool.prefix(), digest(&parts)))
    }

    /// Seconds a response may stay in Redis: its remaining validity, capped; 0 = do not store.
    pub fn ttl(&self, resp: &CachedResponse, now: SystemTime) -> u64 {
        resp.next_update
            .duration_since(now)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .min(self.max_ttl_seconds)
    }

    /// Resolves a miss through Redis: a fresh, valid value from Redis, else `core` (whose answer
    /// is then written to Redis). `validate` turns DER into a response for exactly this key.
    pub async fn fetch_through<V, F>(
        &self,
        key: &CacheKey,
        validate: V,
        core: F,
    ) -> Result<CachedResponse, MissError>
    where
        V: FnOnce(Vec<u8>) -> Result<CachedResponse, MissError>,
        F: Future<Output = Result<CachedResponse, MissError>>,
    {
        let Some(rkey) = self.key(key) else {
            return core.await;
        };
        match self.get(&rkey).await {
            Ok(Some(der)) => match validate(der) {
                Ok(resp) if resp.next_update > SystemTime::now() => {
                    count_op("ocsp", "ocsp_get", "hit");
                    return Ok(resp);
                }
                _ => count_op("ocsp", "ocsp_get", "stale"),
            },
            Ok(None) => count_op("ocsp", "ocsp_get", "miss"),
            Err(outcome) => {
                count_op("ocsp", "ocsp_get", outcome);
                count_fallback("ocsp", "ocsp_get", "core");
            }
        }
        let resp = core.await?;
        self.put(&rkey, &resp).await;
        Ok(resp)
    }

    /// The value under `rkey`: None if absent or oversized; Err(metric outcome) if Redis failed.
    async fn get(&self, rkey: &str) -> Result<Option<Vec<u8>>, &'static str> {
        let end = self.max_value_bytes;
        let v: Vec<u8> = self
            .pool
            .run(|mut con| async move {
                // Bytes 0..=max: one byte more than allowed reveals an oversized value.
                redis::cmd("GETRANGE")
                    .arg(rkey)
                    .arg(0)
                    .arg(end)
                    .query_async(&mut con)
                    .await
            })
            .await
            .map_err(|e| e.outcome())?;
        if v.is_empty() {
            return Ok(None);
        }
        if v.len() > self.max_value_bytes {
            count_op("ocsp", "ocsp_get", "oversize");
            return Ok(None);
        }
        Ok(Some(v))
    }

    async fn put(&self, rkey: &str, resp: &CachedResponse) {
        let ttl = self.ttl(resp, SystemTime::now());
        if ttl == 0 {
            return;
        }
        if resp.der.len() > self.max_value_bytes {
            count_op("ocsp", "ocsp_put", "oversize");
            return;
        }
        let der: Bytes = resp.der.clone();
        let r: Result<(), _> = self
            .pool
            .run(|mut con| async move {
                redis::cmd("SET")
                    .arg(rkey)
                    .arg(&der[..])
                    .arg("EX")
                    .arg(ttl)
                    .query_async(&mut con)
                    .await
            })
            .await;
        count_op(
            "ocsp",
            "ocsp_put",
            match &r {
                Ok(()) => "ok",
                Err(e) => e.outcome(),
            },
        );
    }
}
