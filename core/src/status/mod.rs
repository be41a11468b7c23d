//! Revocation status (docs/status.md): precomputed OCSP responses and sharded CRLs, kept current
//! in the store and streamed to the edges.
//!
//! - **Precompute**: storing or revoking a certificate queues it (SQL triggers, in the same
//!   transaction); a worker takes the queue in batches, builds a response for the SHA-1 and the
//!   SHA-256 CertID of each certificate, has them signed with one `SignBatch` per signing key,
//!   checks every signature and stores them with a new event each. The issue path itself only
//!   pays for the queue row.
//! - **Refresh**: a sweep re-queues responses older than `ocsp_refresh_after_secs`, well before
//!   their nextUpdate, and CRLs past half their validity.
//! - **CRLs**: a revocation marks its issuer's full CRL and its shard dirty; after a short
//!   debounce they are rebuilt with a freshly allocated (stored, never reused) CRL number.
//! - **Stream**: [`watch`] serves `WatchStatus` from the event log.

pub mod crl;
pub mod ocsp;
pub mod responder;
pub mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certgate_proto::core::{CertRef, CrlEntry, GetCrlRequest, GetOcspRequest, OcspEntry};
use der::{Decode, Encode};
use serde::Deserialize;
use tokio::sync::{Notify, Semaphore, watch as tokio_watch};
use x509_cert::Certificate;

use crate::error::{CoreError, Result};
use crate::issue::key_type_of;
use crate::signer_client::Signer;
use crate::store::status::{CrlRec, OcspRec, StatusStore};
use crate::store::{CaRec, CertRec, Store};
use crate::x509::{self, IssuerInfo};
use ocsp::{HashAlg, Status};
use responder::Responder;

/// Who signs a tenant's OCSP responses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponderMode {
    /// The issuing CA's own key (RFC 6960 §4.2.2.2, the CA itself).
    #[default]
    Issuer,
    /// A delegated responder key (signer role OCSP) certified by the issuing CA with
    /// id-kp-OCSPSigning and id-pkix-ocsp-nocheck.
    Delegated,
}

/// `[status]` in core.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// OCSP thisUpdate → nextUpdate.
    pub ocsp_validity_secs: u64,
    /// Age after which a response is re-signed (well before nextUpdate).
    pub ocsp_refresh_after_secs: u64,
    /// CRL thisUpdate → nextUpdate (rebuilt after half of it, and on revocation).
    pub crl_validity_secs: u64,
    /// Revocations within this window are folded into one CRL rebuild.
    pub crl_debounce_ms: u64,
    /// How often the refresh sweep runs.
    pub sweep_interval_secs: u64,
    /// Status events kept for resuming subscribers; an older cursor gets `reset` + a snapshot.
    pub event_retention: u64,
    /// On-demand set responses signed at once (GetOcsp with several certificates); beyond:
    /// UNAVAILABLE with retry-after.
    pub max_on_demand: usize,
    /// Most certificates in one GetOcsp set.
    pub max_set_certs: usize,
    /// Certificates taken from the queue per batch.
    pub precompute_batch: usize,
    /// A delegated responder certificate's lifetime.
    pub responder_cert_validity_secs: u64,
    /// The responder mode of tenants not listed in `responders`.
    pub default_responder: ResponderMode,
    /// Responder mode per tenant.
    pub responders: BTreeMap<String, ResponderMode>,
    /// Idle WatchStatus streams get a heartbeat this often.
    pub heartbeat_secs: u64,
    /// A WatchStatus subscriber whose buffer stays full this long is dropped (it resumes by
    /// cursor when it reconnects).
    pub subscriber_timeout_ms: u64,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            ocsp_validity_secs: 4 * 86_400,
            ocsp_refresh_after_secs: 2 * 86_400,
            crl_validity_secs: 2 * 86_400,
            crl_debounce_ms: 200,
            sweep_interval_secs: 60,
            event_retention: 200_000,
            max_on_demand: 4,
            max_set_certs: 32,
            precompute_batch: 256,
            responder_cert_validity_secs: 30 * 86_400,
            default_responder: ResponderMode::Issuer,
            responders: BTreeMap::new(),
            heartbeat_secs: 15,
            subscriber_timeout_ms: 30_000,
        }
    }
}

impl StatusConfig {
    /// Checks the relations between the settings.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.ocsp_validity_secs < 60 || self.ocsp_refresh_after_secs >= self.ocsp_validity_secs {
            return Err(
                "[status] ocsp_refresh_after_secs must be below ocsp_validity_secs (≥ 60)".into(),
            );
        }
        if self.crl_validity_secs < 60 {
            return Err("[status] crl_validity_secs must be at least 60".into());
        }
        if self.max_on_demand == 0 || self.max_set_certs == 0 || self.precompute_batch == 0 {
            return Err(
                "[status] max_on_demand, max_set_certs and precompute_batch must be > 0".into(),
            );
        }
        if self.event_retention < 100
            || self.heartbeat_secs == 0
            || self.sweep_interval_secs == 0
            || self.subscriber_timeout_ms == 0
        {
            return Err(
                "[status] event_retention ≥ 100; heartbeat_secs, sweep_interval_secs and \
                 subscriber_timeout_ms > 0"
                    .into(),
            );
        }
        Ok(())
    }

    fn mode_of(&self, tenant: &str) -> ResponderMode {
        self.responders
            .get(tenant)
            .copied()
            .unwrap_or(self.default_responder)
    }
}

/// An issuing CA as the status code needs it.
pub struct IssuerCtx {
    /// The stored CA.
    pub ca: CaRec,
    /// Its certificate.
    pub cert: Certificate,
    /// Name, key id, key type.
    pub info: IssuerInfo,
    /// The tenant's public base URL when the issuer was first loaded (CRL builds read the
    /// current one).
    pub base_url: String,
}

/// The status engine: shared by the RPC handlers and its background tasks.
pub struct StatusEngine {
    store: Arc<dyn Store>,
    status: Arc<dyn StatusStore>,
    signer: Signer,
    cfg: StatusConfig,
    wake: Notify,
    crl_wake: Notify,
    crl_dirty: Mutex<HashSet<(String, String)>>,
    cursor: tokio_watch::Sender<u64>,
    on_demand: Semaphore,
    issuers: Mutex<HashMap<String, Arc<IssuerCtx>>>,
    responders: tokio::sync::Mutex<HashMap<String, Arc<Responder>>>,
}

/// Runs store work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Internal(format!("blocking task: {e}")))?
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Lower-case wire hex of a serial given in any case, with or without leading zeros.
pub fn normalise_serial(s: &str) -> Result<String> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.trim_start_matches("0x");
    let padded = if s.len() % 2 == 1 {
        format!("0{s}")
    } else {
        s.to_owned()
    };
    let bytes = hex::decode(padded)
        .map_err(|_| CoreError::malformed("request.serial", "serial is not hex"))?;
    if bytes.is_empty() || bytes.len() > 21 {
        return Err(CoreError::malformed("request.serial", "serial length"));
    }
    Ok(x509::serial_hex(&bytes))
}

pub(crate) fn ocsp_entry(r: OcspRec) -> OcspEntry {
    OcspEntry {
        certs: vec![CertRef {
            issuer_id: r.issuer_id.clone(),
            hash_alg: r.hash_alg.clone(),
            serial_hex: r.serial_hex.clone(),
        }],
        tenant: r.tenant,
        issuer_id: r.issuer_id,
        serial_hex: r.serial_hex,
        response_der: r.response_der,
        this_update_unix: r.this_update_unix,
        next_update_unix: r.next_update_unix,
        hash_alg: r.hash_alg,
    }
}

pub(crate) fn crl_entry(r: CrlRec) -> CrlEntry {
    CrlEntry {
        tenant: r.tenant,
        issuer_id: r.issuer_id,
        shard: r.shard,
        crl_der: r.crl_der,
        this_update_unix: r.this_update_unix,
        next_update_unix: r.next_update_unix,
    }
}

fn status_of(c: &CertRec) -> Status {
    if c.revoked {
        Status::Revoked {
            at_unix: c.revoked_at_unix,
            reason: c.revocation_reason,
        }
    } else {
        Status::Good
    }
}

/// All CRL names of an issuer: "full" and every shard.
pub fn crl_names() -> Vec<String> {
    std::iter::once(crl::FULL.to_owned())
        .chain((0..x509::CRL_SHARDS).map(|s| s.to_string()))
        .collect()
}

impl StatusEngine {
    /// A new engine; call [`StatusEngine::spawn`] to start its background tasks.
    pub fn new(
        store: Arc<dyn Store>,
        status: Arc<dyn StatusStore>,
        signer: Signer,
        cfg: StatusConfig,
    ) -> Result<Arc<Self>> {
        let latest = status.latest_cursor()?;
        Ok(Arc::new(Self {
            store,
            status,
            signer,
            on_demand: Semaphore::new(cfg.max_on_demand),
            cfg,
            wake: Notify::new(),
            crl_wake: Notify::new(),
            crl_dirty: Mutex::new(HashSet::new()),
            cursor: tokio_watch::Sender::new(latest),
            issuers: Mutex::new(HashMap::new()),
            responders: tokio::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &StatusConfig {
        &self.cfg
    }

    /// The status store.
    pub fn status_store(&self) -> &Arc<dyn StatusStore> {
        &self.status
    }

    /// The main store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A receiver that changes whenever a new status event is stored.
    pub fn subscribe(&self) -> tokio_watch::Receiver<u64> {
        self.cursor.subscribe()
    }

    /// Wakes the precompute worker (a certificate was just stored or revoked). The queue row is
    /// already durable; this only saves the worker's poll interval.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    fn published(&self, cursor: u64) {
        if cursor > 0 {
            self.cursor.send_if_modified(|c| {
                if cursor > *c {
                    *c = cursor;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// Starts the precompute worker, the CRL builder and the refresh sweep.
    pub fn spawn(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move { me.precompute_loop().await });
        let me = self.clone();
        tokio::spawn(async move { me.crl_loop().await });
        let me = self.clone();
        tokio::spawn(async move { me.sweep_loop().await });
    }

    /// The issuing CA `ca_id` (cached; CAs never change once stored except their state).
    pub fn issuer(&self, ca_id: &str) -> Result<Arc<IssuerCtx>> {
        if let Some(i) = lock(&self.issuers).get(ca_id) {
            return Ok(i.clone());
        }
        let ca = self
            .store
            .get_ca(ca_id)?
            .filter(|c| c.kind == "issuing")
            .ok_or_else(|| CoreError::not_found("issuer.unknown", "no such issuing CA"))?;
        let tenant = self
            .store
            .get_tenant(&ca.tenant)?
            .ok_or_else(|| CoreError::Store(format!("CA {ca_id} names an unknown tenant")))?;
        let cert = Certificate::from_der(&ca.cert_der)
            .map_err(|e| CoreError::Store(format!("stored CA certificate: {e}")))?;
        let info = IssuerInfo::from_cert(&ca.ca_id, &ca.cert_der, key_type_of(&ca)?)?;
        let ctx = Arc::new(IssuerCtx {
            ca,
            cert,
            info,
            base_url: tenant.public_base_url,
        });
        lock(&self.issuers).insert(ca_id.to_owned(), ctx.clone());
        Ok(ctx)
    }

    /// The responder that signs for `issuer` (per the tenant's mode), creating a delegated
    /// responder key and certificate when needed.
    async fn responder(&self, issuer: &Arc<IssuerCtx>) -> Result<Arc<Responder>> {
        let mut map = self.responders.lock().await;
        let now = crate::now_unix();
        if let Some(r) = map.get(&issuer.ca.ca_id)
            && r.usable_at(now, self.cfg.ocsp_validity_secs)
        {
            return Ok(r.clone());
        }
        let r = Arc::new(match self.cfg.mode_of(&issuer.ca.tenant) {
            ResponderMode::Issuer => Responder::issuer(issuer)?,
            ResponderMode::Delegated => {
                responder::delegated(
                    &self.signer,
                    self.status.as_ref(),
                    issuer,
                    now,
                    self.cfg.responder_cert_validity_secs,
                    self.cfg.ocsp_validity_secs,
                )
                .await?
            }
        });
        map.insert(issuer.ca.ca_id.clone(), r.clone());
        Ok(r)
    }

    /// Builds and signs responses for `certs` (one issuer per group, one SignBatch per group).
    /// Each entry is (certificate, CertIDs to answer); `set` = one response covering them all.
    async fn sign_responses(
        &self,
        issuer: &Arc<IssuerCtx>,
        groups: &[Vec<(CertRec, HashAlg)>],
        now: i64,
    ) -> Result<Vec<Vec<u8>>> {
        let responder = self.responder(issuer).await?;
        let this_update = now;
        let next_update = now.saturating_add(self.cfg.ocsp_validity_secs as i64);
        let mut tbs = Vec::with_capacity(groups.len());
        for g in groups {
            let mut entries = Vec::with_capacity(g.len());
            for (cert, alg) in g {
                let serial = hex::decode(&cert.serial_hex)
                    .map_err(|_| CoreError::Store("stored serial is not hex".into()))?;
                entries.push((ocsp::cert_id(&issuer.cert, &serial, *alg)?, status_of(cert)));
            }
            let rd =
                ocsp::response_data(&responder.key_hash, now, &entries, this_update, next_update)?;
            tbs.push(rd.to_der()?);
        }
        let mut out = Vec::with_capacity(tbs.len());
        for chunk in tbs.chunks(256) {
            let sigs = self
                .signer
                .sign_batch(&responder.key_id, responder.alg, chunk.to_vec())
                .await?;
            if sigs.len() != chunk.len() {
                return Err(CoreError::SignerUnavailable(
                    "SignBatch returned the wrong number of signatures".into(),
                ));
            }
            for (msg, sig) in chunk.iter().zip(sigs) {
                x509::verify_signature(&responder.spki_der, responder.alg, msg, &sig)?;
                out.push(ocsp::assemble(
                    msg,
                    responder.sig_alg.clone(),
                    &sig,
                    &responder.certs,
                )?);
            }
        }
        Ok(out)
    }

    /// Precomputes both CertID variants for each certificate (grouped by issuer).
    async fn precompute(&self, certs: &[CertRec], now: i64) -> Result<Vec<OcspRec>> {
        let mut by_issuer: BTreeMap<&str, Vec<&CertRec>> = BTreeMap::new();
        for c in certs {
            by_issuer.entry(&c.issuer_id).or_default().push(c);
        }
        let mut out = Vec::new();
        for (issuer_id, certs) in by_issuer {
            let issuer = self.issuer(issuer_id)?;
            let groups: Vec<Vec<(CertRec, HashAlg)>> = certs
                .iter()
                .flat_map(|c| HashAlg::ALL.map(|a| vec![((*c).clone(), a)]))
                .collect();
            let ders = self.sign_responses(&issuer, &groups, now).await?;
            for (g, der) in groups.into_iter().zip(ders) {
                let Some((cert, alg)) = g.into_iter().next() else {
                    continue;
                };
                out.push(OcspRec {
                    tenant: cert.tenant,
                    issuer_id: cert.issuer_id,
                    serial_hex: cert.serial_hex,
                    hash_alg: alg.name().to_owned(),
                    response_der: der,
                    this_update_unix: now,
                    next_update_unix: now.saturating_add(self.cfg.ocsp_validity_secs as i64),
                    cursor: 0,
                });
            }
        }
        Ok(out)
    }

    /// One pass over the queue; returns how many queue rows were handled.
    async fn precompute_once(&self) -> Result<usize> {
        let status = self.status.clone();
        let limit = self.cfg.precompute_batch;
        let pending = blocking(move || status.pending(limit)).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let now = crate::now_unix();
        let store = self.store.clone();
        let rows = pending.clone();
        let certs = blocking(move || {
            let mut seen = HashSet::new();
            let mut certs = Vec::new();
            for p in &rows {
                if seen.insert((p.tenant.clone(), p.serial_hex.clone()))
                    && let Some(c) = store.get_cert(&p.tenant, &p.serial_hex)?
                {
                    certs.push(c);
                }
            }
            Ok(certs)
        })
        .await?;
        // Long-expired certificates are not re-signed (RFC 6960 lets a responder stop).
        let certs: Vec<CertRec> = certs
            .into_iter()
            .filter(|c| c.not_after_unix > now - 86_400)
            .collect();
        let started = std::time::Instant::now();
        // One issuer at a time, so an issuer whose key cannot sign (removed, refused) does not
        // hold up the others: its rows go to the back of the queue.
        let mut by_issuer: BTreeMap<String, Vec<CertRec>> = BTreeMap::new();
        for c in &certs {
            by_issuer
                .entry(c.issuer_id.clone())
                .or_default()
                .push(c.clone());
        }
        let mut recs = Vec::new();
        let mut failed: HashSet<(String, String)> = HashSet::new();
        let mut last_error = None;
        for (issuer, group) in by_issuer {
            match self.precompute(&group, now).await {
                Ok(r) => recs.extend(r),
                Err(e) => {
                    tracing::warn!(error = %e, issuer, "OCSP precompute failed for this issuer");
                    failed.extend(group.into_iter().map(|c| (c.tenant, c.serial_hex)));
                    last_error = Some(e);
                }
            }
        }
        let (retry, ids): (Vec<_>, Vec<_>) = pending
            .iter()
            .partition(|p| failed.contains(&(p.tenant.clone(), p.serial_hex.clone())));
        let ids: Vec<i64> = ids.iter().map(|p| p.id).collect();
        let retry: Vec<(i64, (String, String))> = retry
            .iter()
            .map(|p| (p.id, (p.tenant.clone(), p.serial_hex.clone())))
            .collect();
        let status = self.status.clone();
        let n = recs.len();
        let cursor = blocking(move || {
            let cursor = status.put_ocsp(&recs, &ids)?;
            if !retry.is_empty() {
                let again: Vec<(String, String)> = retry.iter().map(|r| r.1.clone()).collect();
                status.enqueue(&again, now)?;
                let old: Vec<i64> = retry.iter().map(|r| r.0).collect();
                status.drop_pending(&old)?;
            }
            Ok(cursor)
        })
        .await?;
        self.published(cursor);
        metrics::counter!("certgate_core_ocsp_signed_total").increment(n as u64);
        metrics::histogram!("certgate_core_ocsp_precompute_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        if n == 0
            && let Some(e) = last_error
        {
            return Err(e);
        }
        let mut any_revoked = false;
        {
            let mut dirty = lock(&self.crl_dirty);
            for c in certs.iter().filter(|c| {
                c.revoked && !failed.contains(&(c.tenant.clone(), c.serial_hex.clone()))
            }) {
                any_revoked = true;
                let shard = crl::shard_of(&c.serial_hex)?;
                dirty.insert((c.issuer_id.clone(), shard.to_string()));
                dirty.insert((c.issuer_id.clone(), crl::FULL.to_owned()));
            }
        }
        if any_revoked {
            self.crl_wake.notify_one();
        }
        Ok(pending.len())
    }

    async fn precompute_loop(self: Arc<Self>) {
        loop {
            match self.precompute_once().await {
                Ok(0) => {
                    let _ = tokio::time::timeout(Duration::from_millis(250), self.wake.notified())
                        .await;
                }
                Ok(_) => {}
                Err(e) => {
                    metrics::counter!("certgate_core_status_errors_total", "task" => "precompute")
                        .increment(1);
                    tracing::warn!(error = %e, "OCSP precompute failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Rebuilds the given CRLs of one issuer (one SignBatch).
    async fn build_crls(&self, issuer_id: &str, shards: &[String]) -> Result<()> {
        let issuer = self.issuer(issuer_id)?;
        let now = crate::now_unix();
        let status = self.status.clone();
        let id = issuer_id.to_owned();
        let revoked = blocking(move || status.revoked_of(&id, now)).await?;
        let (alg, sig_alg) = x509::signing_algorithm(issuer.info.key_type)?;
        let next_update = now.saturating_add(self.cfg.crl_validity_secs as i64);
        // The tenant's current base URL (it may have changed since the issuer was cached).
        let store = self.store.clone();
        let tenant = issuer.ca.tenant.clone();
        let base_url = blocking(move || store.get_tenant(&tenant))
            .await?
            .map(|t| t.public_base_url)
            .unwrap_or_else(|| issuer.base_url.clone());
        let mut tbs = Vec::new();
        for shard in shards {
            let entries: Vec<_> = if shard == crl::FULL {
                revoked.clone()
            } else {
                let mut v = Vec::new();
                for r in &revoked {
                    if crl::shard_of(&r.serial_hex)?.to_string() == *shard {
                        v.push(r.clone());
                    }
                }
                v
            };
            let status = self.status.clone();
            let (id, sh) = (issuer_id.to_owned(), shard.clone());
            let number = blocking(move || status.next_crl_number(&id, &sh)).await?;
            let urls = crl::idp_urls(&base_url, issuer_id, shard);
            let t = crl::build_tbs(&crl::CrlSpec {
                issuer_name: &issuer.info.name,
                issuer_key_id: &issuer.info.key_id,
                signature: sig_alg.clone(),
                this_update: now,
                next_update,
                number,
                urls: &urls,
                revoked: &entries,
            })?;
            tbs.push((shard.clone(), number, t.to_der()?));
        }
        let msgs: Vec<Vec<u8>> = tbs.iter().map(|t| t.2.clone()).collect();
        let sigs = self
            .signer
            .sign_batch(&issuer.ca.signer_key_id, alg, msgs)
            .await?;
        if sigs.len() != tbs.len() {
            return Err(CoreError::SignerUnavailable(
                "SignBatch returned the wrong number of signatures".into(),
            ));
        }
        let spki = crate::issue::spki_of(&issuer.ca.cert_der)?;
        for ((shard, number, der), sig) in tbs.into_iter().zip(sigs) {
            x509::verify_signature(&spki, alg, &der, &sig)?;
            let rec = CrlRec {
                tenant: issuer.ca.tenant.clone(),
                issuer_id: issuer_id.to_owned(),
                shard,
                crl_der: crl::assemble(&der, &sig)?,
                crl_number: number,
                this_update_unix: now,
                next_update_unix: next_update,
                cursor: 0,
            };
            let status = self.status.clone();
            let cursor = blocking(move || status.put_crl(&rec)).await?;
            self.published(cursor);
        }
        metrics::counter!("certgate_core_crl_built_total").increment(shards.len() as u64);
        Ok(())
    }

    async fn crl_loop(self: Arc<Self>) {
        loop {
            let _ = tokio::time::timeout(
                Duration::from_secs(self.cfg.sweep_interval_secs),
                self.crl_wake.notified(),
            )
            .await;
            // Debounce: revocations arriving together make one rebuild.
            tokio::time::sleep(Duration::from_millis(self.cfg.crl_debounce_ms)).await;
            let dirty: Vec<(String, String)> = lock(&self.crl_dirty).drain().collect();
            let mut by_issuer: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (i, s) in dirty {
                by_issuer.entry(i).or_default().push(s);
            }
            for (issuer, shards) in by_issuer {
                if let Err(e) = self.build_crls(&issuer, &shards).await {
                    metrics::counter!("certgate_core_status_errors_total", "task" => "crl")
                        .increment(1);
                    tracing::warn!(error = %e, issuer, "CRL build failed; retrying");
                    lock(&self.crl_dirty).extend(shards.into_iter().map(|s| (issuer.clone(), s)));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.crl_wake.notify_one();
                }
            }
        }
    }

    /// Finds what is due: stale OCSP responses, certificates without any, and CRLs that are
    /// missing, past half their validity, or older than a revocation they should list.
    pub async fn sweep_once(&self, backfill: bool) -> Result<()> {
        let now = crate::now_unix();
        let status = self.status.clone();
        let before = now - self.cfg.ocsp_refresh_after_secs as i64;
        let retention = self.cfg.event_retention;
        let due = blocking(move || {
            let mut due = status.ocsp_due(before, now, 10_000)?;
            if backfill {
                due.extend(status.ocsp_missing(now, 100_000)?);
            }
            if !due.is_empty() {
                status.enqueue(&due, now)?;
            }
            status.prune_events(retention)?;
            Ok(due.len())
        })
        .await?;
        if due > 0 {
            tracing::info!(due, "OCSP responses queued for refresh");
            self.poke();
        }
        let store = self.store.clone();
        let status = self.status.clone();
        let half = (self.cfg.crl_validity_secs / 2) as i64;
        let dirty = blocking(move || {
            let times: HashMap<(String, String), i64> = status
                .crl_times()?
                .into_iter()
                .map(|(i, s, t, _)| ((i, s), t))
                .collect();
            let mut dirty = Vec::new();
            for ca in store
                .list_cas(None)?
                .into_iter()
                .filter(|c| c.kind == "issuing")
            {
                if ca.not_after_unix < now {
                    continue;
                }
                let revoked = status.revoked_of(&ca.ca_id, now)?;
                for name in crl_names() {
                    let Some(&t) = times.get(&(ca.ca_id.clone(), name.clone())) else {
                        dirty.push((ca.ca_id.clone(), name));
                        continue;
                    };
                    let stale = now >= t + half;
                    let mut missed = false;
                    for r in &revoked {
                        if r.revoked_at_unix > t
                            && (name == crl::FULL
                                || crl::shard_of(&r.serial_hex)?.to_string() == name)
                        {
                            missed = true;
                            break;
                        }
                    }
                    if stale || missed {
                        dirty.push((ca.ca_id.clone(), name));
                    }
                }
            }
            Ok(dirty)
        })
        .await?;
        if !dirty.is_empty() {
            lock(&self.crl_dirty).extend(dirty);
            self.crl_wake.notify_one();
        }
        Ok(())
    }

    async fn sweep_loop(self: Arc<Self>) {
        let mut first = true;
        loop {
            if let Err(e) = self.sweep_once(first).await {
                metrics::counter!("certgate_core_status_errors_total", "task" => "sweep")
                    .increment(1);
                tracing::warn!(error = %e, "status sweep failed");
            } else {
                first = false;
            }
            tokio::time::sleep(Duration::from_secs(self.cfg.sweep_interval_secs)).await;
        }
    }

    /// Makes sure the CRLs of a new issuing CA exist soon (called after a CA is created).
    pub fn issuer_added(&self, ca_id: &str) {
        let mut d = lock(&self.crl_dirty);
        for name in crl_names() {
            d.insert((ca_id.to_owned(), name));
        }
        drop(d);
        self.crl_wake.notify_one();
    }

    /// Core.GetOcsp.
    pub async fn get_ocsp(&self, req: &GetOcspRequest) -> Result<OcspEntry> {
        if req.certs.is_empty() {
            return Err(CoreError::malformed("ocsp.certs", "no certificates named"));
        }
        if req.certs.len() > self.cfg.max_set_certs {
            return Err(CoreError::malformed(
                "ocsp.too_many_certs",
                format!(
                    "at most {} certificates per request",
                    self.cfg.max_set_certs
                ),
            ));
        }
        let mut wanted = Vec::with_capacity(req.certs.len());
        for r in &req.certs {
            let alg = HashAlg::parse(&r.hash_alg)?;
            let serial = normalise_serial(&r.serial_hex)?;
            let store = self.store.clone();
            let (tenant, issuer_id) = (req.tenant.clone(), r.issuer_id.clone());
            // I-4: only the tenant's own certificates, under the issuer the CertID names.
            let cert = blocking(move || store.get_cert(&tenant, &serial))
                .await?
                .filter(|c| c.issuer_id == issuer_id)
                .ok_or_else(|| {
                    CoreError::not_found("certificate.unknown", "no such certificate")
                })?;
            wanted.push((cert, alg));
        }
        let now = crate::now_unix();
        if let [(cert, alg)] = wanted.as_slice() {
            let status = self.status.clone();
            let (t, s, a) = (cert.tenant.clone(), cert.serial_hex.clone(), alg.name());
            // A stored response older than the certificate's revocation (its re-signing still
            // queued, a few milliseconds) is not served: sign the revoked one now.
            let revoked = cert.revoked;
            if let Some(r) = blocking(move || status.get_ocsp(&t, &s, a)).await?
                && r.next_update_unix > now
                && (!revoked || ocsp::says_revoked(&r.response_der))
            {
                return Ok(ocsp_entry(r));
            }
            // Missing (not yet precomputed) or stale: compute both variants now and store them.
            let recs = self.precompute(std::slice::from_ref(cert), now).await?;
            let mine = recs
                .iter()
                .find(|r| r.hash_alg == alg.name())
                .cloned()
                .ok_or_else(|| CoreError::Internal("precompute lost a variant".into()))?;
            let status = self.status.clone();
            let cursor = blocking(move || status.put_ocsp(&recs, &[])).await?;
            self.published(cursor);
            return Ok(ocsp_entry(mine));
        }
        let issuer_id = wanted[0].0.issuer_id.clone();
        if wanted.iter().any(|(c, _)| c.issuer_id != issuer_id) {
            return Err(CoreError::malformed(
                "ocsp.mixed_issuers",
                "one response covers certificates of one issuer only",
            ));
        }
        let _permit = self
            .on_demand
            .try_acquire()
            .map_err(|_| CoreError::Busy("on-demand OCSP signing is at its limit"))?;
        let issuer = self.issuer(&issuer_id)?;
        let group: Vec<(CertRec, HashAlg)> = wanted.clone();
        let der = self
            .sign_responses(&issuer, std::slice::from_ref(&group), now)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| CoreError::Internal("no response signed".into()))?;
        metrics::counter!("certgate_core_ocsp_on_demand_total", "tenant" => req.tenant.clone())
            .increment(1);
        let first_alg = wanted[0].1;
        let same_alg = wanted.iter().all(|(_, a)| *a == first_alg);
        Ok(OcspEntry {
            tenant: req.tenant.clone(),
            issuer_id: issuer_id.clone(),
            serial_hex: String::new(),
            response_der: der,
            this_update_unix: now,
            next_update_unix: now.saturating_add(self.cfg.ocsp_validity_secs as i64),
            hash_alg: if same_alg {
                first_alg.name().to_owned()
            } else {
                String::new()
            },
            certs: wanted
                .iter()
                .map(|(c, a)| CertRef {
                    issuer_id: c.issuer_id.clone(),
                    hash_alg: a.name().to_owned(),
                    serial_hex: c.serial_hex.clone(),
                })
                .collect(),
        })
    }

    /// Core.GetCrl.
    pub async fn get_crl(&self, req: &GetCrlRequest) -> Result<CrlEntry> {
        let shard = req.shard.trim_end_matches(".crl").to_owned();
        let valid = shard == crl::FULL
            || shard
                .parse::<u32>()
                .is_ok_and(|n| n < x509::CRL_SHARDS && n.to_string() == shard);
        let issuer = self
            .issuer(&req.issuer_id)
            .ok()
            .filter(|i| i.ca.tenant == req.tenant && valid)
            .ok_or_else(|| CoreError::not_found("crl.unknown", "no such issuer or shard"))?;
        let status = self.status.clone();
        let (id, sh) = (issuer.ca.ca_id.clone(), shard.clone());
        if let Some(r) = blocking(move || status.get_crl(&id, &sh)).await? {
            return Ok(crl_entry(r));
        }
        // Not built yet (a CA created moments ago): build it now.
        self.build_crls(&issuer.ca.ca_id, std::slice::from_ref(&shard))
            .await?;
        let status = self.status.clone();
        let id = issuer.ca.ca_id.clone();
        blocking(move || status.get_crl(&id, &shard))
            .await?
            .map(crl_entry)
            .ok_or_else(|| CoreError::Internal("CRL vanished after building".into()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_config_parses_per_tenant_responders_and_refuses_bad_relations() {
        let c: StatusConfig = toml::from_str(
            r#"
ocsp_validity_secs = 3600
ocsp_refresh_after_secs = 1800
default_responder = "issuer"
[responders]
acme = "delegated"
"#,
        )
        .unwrap();
        c.check().unwrap();
        assert_eq!(c.mode_of("acme"), ResponderMode::Delegated);
        assert_eq!(c.mode_of("other"), ResponderMode::Issuer);
        assert_eq!(c.crl_debounce_ms, 200, "defaults fill the rest");
        let refresh_after_expiry = StatusConfig {
            ocsp_refresh_after_secs: 3600,
            ocsp_validity_secs: 3600,
            ..StatusConfig::default()
        };
        assert!(refresh_after_expiry.check().is_err());
        let no_bound = StatusConfig {
            max_on_demand: 0,
            ..StatusConfig::default()
        };
        assert!(no_bound.check().is_err());
        assert!(toml::from_str::<StatusConfig>("bogus = 1").is_err());
        assert!(toml::from_str::<StatusConfig>("default_responder = \"nobody\"").is_err());
        StatusConfig::default().check().unwrap();
    }

    #[test]
    fn serials_normalise_and_crl_names_cover_full_and_every_shard() {
        assert_eq!(normalise_serial("0x00AB").unwrap(), "ab");
        assert_eq!(normalise_serial("abc").unwrap(), "0abc");
        assert!(normalise_serial("").is_err());
        assert!(normalise_serial("xyz").is_err());
        let names = crl_names();
        assert_eq!(names.len(), 1 + x509::CRL_SHARDS as usize);
        assert_eq!(names[0], "full");
        assert_eq!(names[16], "15");
    }
}
