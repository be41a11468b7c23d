//! Revocation status at the edge (issue 5): the OCSP response and CRL cache, filled from the
//! core's `WatchStatus` stream, and the `/ocsp` and `/crl/` handlers serving from it.
//!
//! The protocol logic (request decoding, issuer index, cache keys, caching headers) lives in the
//! sans-I/O crate `certgate-ocsp`; this module is the glue:
//!
//! - [`StatusCache`]: a moka cache of [`CachedResponse`]s keyed by the tenant-carrying
//!   [`CacheKey`], bounded by bytes (I-8), plus the [`IssuerIndex`] built from the core's
//!   `IssuerEntry` events. Serving a hit is a hash probe and a few reference-count increments.
//! - [`watch`]: the background task consuming `WatchStatus` (reconnect with exponential
//!   backoff, resume from the last cursor, `reset` handling).
//! - [`handler`]: the two [`crate::router::Handler`]s (protocols `ocsp` and `crl`, so the
//!   per-protocol bulkhead isolates the status path) and the single-flight cache-miss path.
//!
//! # Reset without forgetting
//!
//! A `reset` (the edge's cursor is older than what the core keeps) does not drop the cache at
//! once: entries are stamped with a generation, the reset starts a new one, and only when the
//! new snapshot is complete are entries of older generations swept. Until then the edge keeps
//! answering from what it had — a core restart never makes an edge forget what it caches.

pub mod handler;
pub mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use certgate_ocsp::{
    CacheKey, CachedResponse, CrlShard, IssuerIndex, Limits, RequestMemo, ResponseSource, Transport,
};
use certgate_proto::core::StatusEvent;
use certgate_proto::core::status_event::Event;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

pub use handler::{CrlHandler, OcspHandler};

/// Requests served on the status path, by protocol (`ocsp`, `crl`), tenant and outcome (`hit`,
/// `not_modified`, `miss`, `unknown`, `malformed`, `try_later`, `not_found`, …).
pub const STATUS_REQUESTS_TOTAL: &str = "certgate_edge_status_requests_total";
/// Status request latency in seconds, by protocol and outcome.
pub const STATUS_REQUEST_SECONDS: &str = "certgate_edge_status_request_duration_seconds";
/// Bytes held by the status cache (the moka weighted size).
pub const STATUS_CACHE_BYTES: &str = "certgate_edge_status_cache_bytes";
/// Entries held by the status cache.
pub const STATUS_CACHE_ENTRIES: &str = "certgate_edge_status_cache_entries";
/// `WatchStatus` events applied, by kind (`issuer`, `ocsp`, `crl`, `snapshot_complete`,
/// `heartbeat`, `reset`) and outcome (`ok`, `rejected`).
pub const STATUS_EVENTS_TOTAL: &str = "certgate_edge_status_events_total";
/// 1 while a `WatchStatus` stream is open, 0 otherwise.
pub const STATUS_STREAM_CONNECTED: &str = "certgate_edge_status_stream_connected";
/// 1 once a complete status snapshot has been applied (the cache holds the core's state).
pub const STATUS_SNAPSHOT_COMPLETE: &str = "certgate_edge_status_snapshot_complete";

/// Settings of the status cache and its miss path (the `[status]` config section).
#[derive(Debug, Clone)]
pub struct StatusSettings {
    /// Bytes the cache may hold (DER plus rendered headers per entry).
    pub cache_max_bytes: u64,
    /// Core lookups for cache misses in flight at once; beyond this a miss is answered
    /// `tryLater` (OCSP) or 503 (CRL) at once (I-8).
    pub max_miss_in_flight: usize,
    /// Request decoding bounds and policy.
    pub limits: Limits,
    /// Entries of the exact-request-bytes memo (raw GET segment / POST body → cache entry),
    /// checked before any decoding; 0 disables it. Each holds at most
    /// `certgate_ocsp::memo::MAX_KEY` bytes of key (~130 for a usual one-CertID request) and a
    /// reference to a cache entry: the default 32,768 is ~6 MB typical, ~18 MB of keys at worst,
    /// plus entries the cache already dropped but a memo slot still references (until the same
    /// request is memoized again or the slot is evicted).
    pub memo_entries: usize,
}

impl Default for StatusSettings {
    fn default() -> Self {
        Self {
            cache_max_bytes: 256 << 20,
            max_miss_in_flight: 256,
            limits: Limits::default(),
            memo_entries: 32_768,
        }
    }
}

/// A cached response and the cache generation it was stored under (see the module docs), with
/// its response headers prebuilt (a hit clones them: reference counts, no validation, no
/// formatting) and the flag that retires it from the request memo.
#[derive(Debug)]
struct Entry {
    resp: CachedResponse,
    generation: u64,
    /// Set when the cache replaces or drops this entry (a newer push — a revocation —, an
    /// eviction, a sweep): a memo hit on it then takes the full path, which finds the new one.
    superseded: AtomicBool,
    headers: handler::Prebuilt,
}

impl Entry {
    fn new(resp: CachedResponse, generation: u64) -> Self {
        Entry {
            headers: handler::Prebuilt::new(&resp),
            resp,
            generation,
            superseded: AtomicBool::new(false),
        }
    }
}

/// Why a cache miss could not be answered from the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissError {
    /// The core has no such certificate, set, issuer or shard for this tenant.
    NotFound,
    /// The core is unreachable, overloaded or answered nonsense; retry after this many seconds.
    Unavailable(u64),
    /// Too many misses in flight at this edge (I-8).
    Shed,
}

type InFlight = Shared<BoxFuture<'static, Result<CachedResponse, MissError>>>;

struct Inner {
    cache: moka::sync::Cache<CacheKey, Arc<Entry>>,
    issuers: RwLock<IssuerIndex>,
    limits: Limits,
    generation: AtomicU64,
    sweep_pending: AtomicBool,
    snapshot_complete: AtomicBool,
    /// The cursor to resume from (only advanced outside snapshots, see [`watch`]).
    cursor: AtomicU64,
    in_flight: Mutex<HashMap<CacheKey, InFlight>>,
    miss_permits: Arc<Semaphore>,
    /// Exact request bytes → the entry that answered them (see [`StatusCache::memo_hit`]).
    memo: RequestMemo<Arc<Entry>>,
    /// The fleet's Redis OCSP tier, consulted on misses (set once at start, `[redis]`).
    shared_tier: std::sync::OnceLock<crate::shared::redis_ocsp::OcspTier>,
}

/// The edge's status cache: cheap to clone, shared by the handlers and the watch task.
#[derive(Clone)]
pub struct StatusCache {
    inner: Arc<Inner>,
}

/// Rough per-entry overhead of the key and moka's bookkeeping, added to the weight so that a
/// cache of many tiny entries is still bounded by memory.
const ENTRY_OVERHEAD: u32 = 160;

impl StatusCache {
    /// An empty cache.
    pub fn new(settings: &StatusSettings) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(settings.cache_max_bytes)
            .weigher(|_k: &CacheKey, v: &Arc<Entry>| v.resp.weight().saturating_add(ENTRY_OVERHEAD))
            .support_invalidation_closures()
            // Replaced, evicted, invalidated: whatever removes an entry retires it from the memo.
            .eviction_listener(|_k, v: Arc<Entry>, _cause| {
                v.superseded.store(true, Ordering::Release);
            })
            .build();
        Self {
            inner: Arc::new(Inner {
                cache,
                issuers: RwLock::new(IssuerIndex::new()),
                limits: settings.limits.clone(),
                generation: AtomicU64::new(0),
                sweep_pending: AtomicBool::new(false),
                snapshot_complete: AtomicBool::new(false),
                cursor: AtomicU64::new(0),
                in_flight: Mutex::new(HashMap::new()),
                miss_permits: Arc::new(Semaphore::new(settings.max_miss_in_flight.max(1))),
                memo: RequestMemo::new(settings.memo_entries),
                shared_tier: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The OCSP request bounds and policy.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Whether a complete snapshot has been received at least once (readiness).
    pub fn snapshot_complete(&self) -> bool {
        self.inner.snapshot_complete.load(Ordering::Acquire)
    }

    /// The cursor the watch task resumes from.
    pub fn cursor(&self) -> u64 {
        self.inner.cursor.load(Ordering::Acquire)
    }

    fn set_cursor(&self, cursor: u64) {
        self.inner.cursor.store(cursor, Ordering::Release);
    }

    /// Entries and weighted bytes held (after running moka's pending maintenance).
    pub fn size(&self) -> (u64, u64) {
        self.inner.cache.run_pending_tasks();
        (
            self.inner.cache.entry_count(),
            self.inner.cache.weighted_size(),
        )
    }

    /// Publishes the cache size gauges.
    pub fn publish_gauges(&self) {
        let (entries, bytes) = self.size();
        metrics::gauge!(STATUS_CACHE_ENTRIES).set(entries as f64);
        metrics::gauge!(STATUS_CACHE_BYTES).set(bytes as f64);
    }

    /// Runs `certgate_ocsp::decide` against the cache (the issuer index is read-locked only for
    /// the duration of this synchronous call).
    pub fn decide(
        &self,
        req: &certgate_ocsp::HttpRequestParts<'_>,
        now: SystemTime,
    ) -> certgate_ocsp::Decision {
        self.decide_entry(req, now).0
    }

    /// [`StatusCache::decide`], also returning the cache entry a `Serve`/`NotModified` came
    /// from (for its prebuilt headers and the memo).
    fn decide_entry(
        &self,
        req: &certgate_ocsp::HttpRequestParts<'_>,
        now: SystemTime,
    ) -> (certgate_ocsp::Decision, Option<Arc<Entry>>) {
        let issuers = self
            .inner
            .issuers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let source = Source {
            cache: &self.inner.cache,
            hit: std::cell::Cell::new(None),
        };
        let d = certgate_ocsp::decide(
            req,
            now,
            &certgate_ocsp::Cache {
                issuers: &issuers,
                responses: &source,
                limits: &self.inner.limits,
            },
        );
        (d, source.hit.into_inner())
    }

    /// The entry memoized for these exact request bytes, if it is still the current one for
    /// its key (not replaced by a push, not evicted) and fresh at `now`. A `None` sends the
    /// request down the full path, which memoizes its answer again.
    fn memo_hit(
        &self,
        transport: Transport,
        tenant: &str,
        raw: &[u8],
        now: SystemTime,
    ) -> Option<Arc<Entry>> {
        let e = self.inner.memo.get(transport, tenant, raw)?;
        (!e.superseded.load(Ordering::Acquire) && e.resp.is_fresh(now)).then_some(e)
    }

    fn memoize(&self, transport: Transport, tenant: &str, raw: &[u8], entry: Arc<Entry>) {
        self.inner.memo.insert(transport, tenant, raw, entry);
    }

    /// Entries held by the request memo (tests, bounds).
    pub fn memo_len(&self) -> usize {
        self.inner.memo.len()
    }

    /// The cached response for `key`, if fresh at `now`.
    pub fn fresh(&self, key: &CacheKey, now: SystemTime) -> Option<CachedResponse> {
        self.inner
            .cache
            .get(key)
            .filter(|e| e.resp.is_fresh(now))
            .map(|e| e.resp.clone())
    }

    fn insert(&self, key: CacheKey, resp: CachedResponse) {
        let generation = self.inner.generation.load(Ordering::Acquire);
        let old = self.inner.cache.get(&key);
        self.inner
            .cache
            .insert(key, Arc::new(Entry::new(resp, generation)));
        // The eviction listener does this too; marking here as well makes a revocation visible
        // to memo hits as soon as `insert` returns, whatever moka's notification timing.
        if let Some(old) = old {
            old.superseded.store(true, Ordering::Release);
        }
    }

    /// Stores a response fetched on a miss, unless the cache meanwhile holds a fresh one that is
    /// at least as new: a `WatchStatus` push racing the lookup must win, also when both carry the
    /// same thisUpdate second (a certificate revoked within the second it was issued).
    fn insert_unless_newer(&self, key: CacheKey, resp: CachedResponse, now: SystemTime) {
        if let Some(existing) = self.inner.cache.get(&key)
            && existing.resp.is_fresh(now)
            && existing.resp.this_update >= resp.this_update
        {
            return;
        }
        self.insert(key, resp);
    }

    /// Adds or replaces an issuer of `tenant` (what an `IssuerEntry` event does).
    pub fn add_issuer(
        &self,
        tenant: &str,
        issuer_id: &str,
        cert_der: &[u8],
    ) -> Result<(), certgate_ocsp::Error> {
        let r = self
            .inner
            .issuers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(tenant, issuer_id, cert_der);
        // Request bytes may now resolve to another key (or none): forget every memoized answer.
        self.inner.memo.clear();
        r
    }

    /// Caches an OCSP response for `tenant`; its key is computed from the CertIDs inside it, so
    /// it can only land under one of this tenant's issuers (I-4).
    pub fn put_ocsp(&self, tenant: &str, der: Bytes) -> Result<CacheKey, certgate_ocsp::Error> {
        let (resp, ids) = CachedResponse::ocsp_with_cert_ids(der)?;
        let key = self
            .inner
            .issuers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .key_for(tenant, &ids)?;
        self.insert(key.clone(), resp);
        Ok(key)
    }

    /// Caches a CRL of `tenant`'s issuer `issuer_id`, shard `"full"` or a number.
    pub fn put_crl(
        &self,
        tenant: &str,
        issuer_id: &str,
        shard: &str,
        der: Bytes,
    ) -> Result<CacheKey, certgate_ocsp::Error> {
        let key = self.crl_key(tenant, issuer_id, shard)?;
        self.insert(key.clone(), CachedResponse::crl(der)?);
        Ok(key)
    }

    fn crl_key(
        &self,
        tenant: &str,
        issuer_id: &str,
        shard: &str,
    ) -> Result<CacheKey, certgate_ocsp::Error> {
        let path = format!("{issuer_id}/{shard}.crl");
        let (_, shard) =
            certgate_ocsp::parse_crl_path(&path).ok_or(certgate_ocsp::Error::BadIssuerId)?;
        let (tenant, issuer) = self
            .inner
            .issuers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .issuer(tenant, issuer_id)
            .ok_or(certgate_ocsp::Error::UnknownIssuer)?;
        Ok(CacheKey::Crl {
            tenant,
            issuer,
            shard,
        })
    }

    /// Applies one `WatchStatus` event. Returns whether the event belongs to a snapshot phase
    /// (`reset`) or ends one (`snapshot_complete`), for the watch task's cursor bookkeeping.
    pub fn apply(&self, ev: StatusEvent) -> Applied {
        let Some(event) = ev.event else {
            return Applied::Other;
        };
        let (kind, result) = match event {
            Event::Issuer(e) => (
                "issuer",
                self.add_issuer(&e.tenant, &e.issuer_id, &e.cert_der),
            ),
            Event::Ocsp(e) => (
                "ocsp",
                self.put_ocsp(&e.tenant, Bytes::from(e.response_der))
                    .map(|_| ()),
            ),
            Event::Crl(e) => (
                "crl",
                self.put_crl(&e.tenant, &e.issuer_id, &e.shard, Bytes::from(e.crl_der))
                    .map(|_| ()),
            ),
            Event::SnapshotComplete(_) => {
                if self.inner.sweep_pending.swap(false, Ordering::AcqRel) {
                    let current = self.inner.generation.load(Ordering::Acquire);
                    match self
                        .inner
                        .cache
                        .invalidate_entries_if(move |_, e| e.generation < current)
                    {
                        Ok(_) => info!("status cache: entries absent from the new snapshot swept"),
                        Err(e) => {
                            warn!(error = %e, "status cache: sweep refused; clearing the cache");
                            self.inner.cache.invalidate_all();
                        }
                    }
                    // Swept entries vanish from moka at once but reach the eviction listener
                    // later: drop the memo now so none of them is served from it meanwhile.
                    self.inner.memo.clear();
                }
                self.inner.snapshot_complete.store(true, Ordering::Release);
                metrics::gauge!(STATUS_SNAPSHOT_COMPLETE).set(1.0);
                count_event("snapshot_complete", "ok");
                return Applied::SnapshotComplete;
            }
            Event::Heartbeat(_) => {
                count_event("heartbeat", "ok");
                return Applied::Other;
            }
            Event::Reset(_) => {
                self.inner.generation.fetch_add(1, Ordering::AcqRel);
                self.inner.sweep_pending.store(true, Ordering::Release);
                info!("status stream reset by the core: a fresh snapshot follows");
                count_event("reset", "ok");
                return Applied::Reset;
            }
        };
        match result {
            Ok(()) => count_event(kind, "ok"),
            Err(e) => {
                // Data the core pushed and this edge cannot use: skip it (the request path then
                // misses and asks the core again), never crash.
                warn!(kind, error = %e, "status event rejected");
                count_event(kind, "rejected");
            }
        }
        Applied::Other
    }

    /// Puts the fleet's shared OCSP tier between this cache and the core (see
    /// [`crate::shared::redis_ocsp`]); only the first call has an effect.
    pub fn set_shared_tier(&self, tier: crate::shared::redis_ocsp::OcspTier) {
        let _ = self.inner.shared_tier.set(tier);
    }

    /// Resolves a cache miss: one core call per key however many requests miss at once
    /// (single-flight), at most `max_miss_in_flight` distinct keys at once, the answer cached.
    /// If the core cannot answer, a still-fresh cached response (a push that raced the miss)
    /// is served instead.
    pub async fn miss(
        &self,
        core: &crate::core_client::CoreClient,
        key: CacheKey,
        now: SystemTime,
    ) -> Result<CachedResponse, MissError> {
        let fut = {
            let mut map = self
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match map.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let Ok(permit) = self.inner.miss_permits.clone().try_acquire_owned() else {
                        drop(map);
                        return self.fresh(&key, now).ok_or(MissError::Shed);
                    };
                    let this = self.clone();
                    let core = core.clone();
                    let k = key.clone();
                    // A task, so the lookup completes (and is cached) even if every waiting
                    // client goes away; it removes its own in-flight entry.
                    let task = tokio::spawn(async move {
                        let _permit = permit;
                        let r = match this.inner.shared_tier.get() {
                            Some(tier) => {
                                let check = |der| this.check_ocsp(k.tenant(), &k, der);
                                tier.fetch_through(&k, check, this.fetch(&core, &k)).await
                            }
                            None => this.fetch(&core, &k).await,
                        };
                        if let Ok(resp) = &r {
                            this.insert_unless_newer(k.clone(), resp.clone(), SystemTime::now());
                        }
                        this.inner
                            .in_flight
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .remove(&k);
                        r
                    });
                    let f: InFlight = futures::FutureExt::shared(Box::pin(async move {
                        task.await.unwrap_or(Err(MissError::Unavailable(1)))
                    })
                        as BoxFuture<'static, _>);
                    map.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        match fut.await {
            // A push that landed while the lookup was on its way back is at least as current.
            Ok(resp) => Ok(self
                .fresh(&key, now)
                .filter(|cached| cached.this_update >= resp.this_update)
                .unwrap_or(resp)),
            Err(MissError::NotFound) => Err(MissError::NotFound),
            Err(e) => self.fresh(&key, now).ok_or(e),
        }
    }

    async fn fetch(
        &self,
        core: &crate::core_client::CoreClient,
        key: &CacheKey,
    ) -> Result<CachedResponse, MissError> {
        use certgate_proto::core::{CertRef, GetCrlRequest, GetOcspRequest};
        let cert_ref = |c: &certgate_ocsp::CertKey| CertRef {
            issuer_id: c.issuer.to_string(),
            hash_alg: match c.alg {
                certgate_ocsp::HashAlg::Sha1 => "sha1".into(),
                certgate_ocsp::HashAlg::Sha256 => "sha256".into(),
            },
            serial_hex: serial_hex(c.serial.as_bytes()),
        };
        let tenant = key.tenant().to_string();
        match key {
            CacheKey::Ocsp { cert, .. } => {
                let entry = core
                    .get_ocsp(GetOcspRequest {
                        tenant: tenant.clone(),
                        certs: vec![cert_ref(cert)],
                    })
                    .await
                    .map_err(rpc_to_miss)?;
                self.check_ocsp(&tenant, key, entry.response_der)
            }
            CacheKey::OcspSet { certs, .. } => {
                let entry = core
                    .get_ocsp(GetOcspRequest {
                        tenant: tenant.clone(),
                        certs: certs.iter().map(cert_ref).collect(),
                    })
                    .await
                    .map_err(rpc_to_miss)?;
                self.check_ocsp(&tenant, key, entry.response_der)
            }
            CacheKey::Crl { issuer, shard, .. } => {
                let entry = core
                    .get_crl(GetCrlRequest {
                        tenant,
                        issuer_id: issuer.to_string(),
                        shard: match shard {
                            CrlShard::Full => "full".into(),
                            CrlShard::Shard(n) => n.to_string(),
                        },
                    })
                    .await
                    .map_err(rpc_to_miss)?;
                CachedResponse::crl(Bytes::from(entry.crl_der)).map_err(|e| {
                    warn!(error = %e, "the core's CRL is unusable");
                    MissError::Unavailable(1)
                })
            }
        }
    }

    /// The core's answer must be a usable response for exactly the certificates asked about
    /// (its CertIDs resolve, within this tenant, to the same key).
    fn check_ocsp(
        &self,
        tenant: &str,
        key: &CacheKey,
        der: Vec<u8>,
    ) -> Result<CachedResponse, MissError> {
        let (resp, ids) = CachedResponse::ocsp_with_cert_ids(Bytes::from(der)).map_err(|e| {
            warn!(error = %e, "the core's OCSP response is unusable");
            MissError::Unavailable(1)
        })?;
        let got = self
            .inner
            .issuers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .key_for(tenant, &ids);
        if got.as_ref() != Ok(key) {
            warn!("the core answered a miss with a response for other certificates");
            return Err(MissError::Unavailable(1));
        }
        Ok(resp)
    }
}

/// What [`StatusCache::apply`] saw, for the watch task's cursor bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A `reset`: a fresh snapshot follows.
    Reset,
    /// `snapshot_complete`.
    SnapshotComplete,
    /// Anything else.
    Other,
}

fn count_event(kind: &'static str, outcome: &'static str) {
    metrics::counter!(STATUS_EVENTS_TOTAL, "kind" => kind, "outcome" => outcome).increment(1);
}

fn rpc_to_miss(e: certgate_proto::RpcError) -> MissError {
    use certgate_proto::ErrorKind as K;
    match e.kind {
        K::NotFound | K::Unauthorized | K::PolicyRefused | K::Malformed => {
            debug!(error = %e, "the core does not know the certificate(s)");
            MissError::NotFound
        }
        _ => MissError::Unavailable(e.retry_after.map_or(1, |d| d.as_secs().max(1))),
    }
}

/// Lower-case hex of a serial's magnitude, `00` for zero (the core's wire form).
pub fn serial_hex(magnitude: &[u8]) -> String {
    if magnitude.is_empty() {
        "00".into()
    } else {
        let mut s = String::with_capacity(magnitude.len() * 2);
        for b in magnitude {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        s
    }
}

/// The moka cache as `certgate_ocsp`'s [`ResponseSource`]; remembers the entry it returned.
struct Source<'a> {
    cache: &'a moka::sync::Cache<CacheKey, Arc<Entry>>,
    hit: std::cell::Cell<Option<Arc<Entry>>>,
}

impl ResponseSource for Source<'_> {
    fn get(&self, key: &CacheKey) -> Option<CachedResponse> {
        let e = self.cache.get(key)?;
        let r = e.resp.clone();
        self.hit.set(Some(e));
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_matches_the_core_wire_form() {
        assert_eq!(serial_hex(&[]), "00");
        assert_eq!(serial_hex(&[0x80, 0x0a]), "800a");
        assert_eq!(serial_hex(&[0x01]), "01");
    }
}
