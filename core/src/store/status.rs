//! The revocation-status side of the store (docs/status.md): current OCSP responses and CRLs,
//! the queue of certificates whose OCSP response must be (re)signed, CRL numbers, and the status
//! event log `WatchStatus` streams from.
//!
//! The queue is filled by SQL triggers on the certificates table (a stored certificate, a
//! revocation), so every path that issues or revokes — the Core RPCs, the ACME service, a future
//! backend — schedules its status work in the same transaction, and a crash loses none of it.

use crate::error::Result;

/// One current OCSP response for one certificate and one CertID hash algorithm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcspRec {
    /// Tenant.
    pub tenant: String,
    /// Issuing CA id.
    pub issuer_id: String,
    /// Serial, wire hex.
    pub serial_hex: String,
    /// "sha1" or "sha256".
    pub hash_alg: String,
    /// The complete DER OCSPResponse.
    pub response_der: Vec<u8>,
    /// thisUpdate.
    pub this_update_unix: i64,
    /// nextUpdate.
    pub next_update_unix: i64,
    /// The cursor of the event that stored this version (0 before it is stored).
    pub cursor: u64,
}

/// One current CRL (the full CRL or one shard).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlRec {
    /// Tenant of the issuing CA.
    pub tenant: String,
    /// Issuing CA id.
    pub issuer_id: String,
    /// "full" or the shard number.
    pub shard: String,
    /// The DER CertificateList.
    pub crl_der: Vec<u8>,
    /// Its CRL number.
    pub crl_number: u64,
    /// thisUpdate.
    pub this_update_unix: i64,
    /// nextUpdate.
    pub next_update_unix: i64,
    /// The cursor of the event that stored this version (0 before it is stored).
    pub cursor: u64,
}

/// A status entry as the stream carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusItem {
    /// An OCSP response.
    Ocsp(OcspRec),
    /// A CRL.
    Crl(CrlRec),
}

/// One queued certificate whose OCSP responses must be (re)computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRec {
    /// Queue row id (deleted once done).
    pub id: i64,
    /// Tenant.
    pub tenant: String,
    /// Serial, wire hex.
    pub serial_hex: String,
}

/// A revoked certificate as a CRL lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedRec {
    /// Serial, wire hex.
    pub serial_hex: String,
    /// Revocation time.
    pub revoked_at_unix: i64,
    /// RFC 5280 CRLReason.
    pub reason: u32,
}

/// A page of live events: the entries still current and the last cursor scanned (superseded
/// events are skipped but still advance the cursor).
#[derive(Clone, Debug, Default)]
pub struct EventPage {
    /// (cursor, entry), ascending.
    pub items: Vec<(u64, StatusItem)>,
    /// The last cursor this page covered.
    pub last_cursor: u64,
}

/// Where a snapshot scan stands: which table and the last row id sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotPos {
    /// OCSP responses after this row id.
    Ocsp(i64),
    /// CRLs after this row id.
    Crl(i64),
    /// Done.
    Done,
}

/// The revocation-status store.
pub trait StatusStore: Send + Sync {
    /// Up to `limit` queued certificates, oldest first.
    fn pending(&self, limit: usize) -> Result<Vec<PendingRec>>;
    /// Queues certificates (refresh sweeps, back-fill).
    fn enqueue(&self, certs: &[(String, String)], now: i64) -> Result<()>;
    /// Stores OCSP responses (each gets a new event cursor) and removes the queue rows they
    /// answer, in one transaction. Returns the highest cursor written (0 when none).
    fn put_ocsp(&self, recs: &[OcspRec], done: &[i64]) -> Result<u64>;
    /// Removes queue rows without storing anything (certificate gone or long expired).
    fn drop_pending(&self, done: &[i64]) -> Result<()>;
    /// The current response for (tenant, serial, alg).
    fn get_ocsp(&self, tenant: &str, serial_hex: &str, hash_alg: &str) -> Result<Option<OcspRec>>;
    /// Certificates whose responses were produced at or before `this_update_before` and that
    /// are still valid at `now` (the refresh sweep).
    fn ocsp_due(
        &self,
        this_update_before: i64,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>>;
    /// Unexpired certificates with no OCSP response at all (back-fill after an upgrade).
    fn ocsp_missing(&self, now: i64, limit: usize) -> Result<Vec<(String, String)>>;
    /// Allocates the next CRL number of (issuer, shard), durably, so it is never reused.
    fn next_crl_number(&self, issuer_id: &str, shard: &str) -> Result<u64>;
    /// Stores a CRL (new event cursor). Returns the cursor.
    fn put_crl(&self, rec: &CrlRec) -> Result<u64>;
    /// The current CRL of (issuer, shard).
    fn get_crl(&self, issuer_id: &str, shard: &str) -> Result<Option<CrlRec>>;
    /// (issuer, shard, thisUpdate, nextUpdate) of every stored CRL.
    fn crl_times(&self) -> Result<Vec<(String, String, i64, i64)>>;
    /// Revoked, unexpired (at `now`) certificates of one issuer.
    fn revoked_of(&self, issuer_id: &str, now: i64) -> Result<Vec<RevokedRec>>;
    /// The highest event cursor ever written (0 = none).
    fn latest_cursor(&self) -> Result<u64>;
    /// The oldest cursor a subscriber may resume from (events after it are all retained).
    fn resumable_from(&self) -> Result<u64>;
    /// Live events after `cursor`, at most `limit` scanned.
    fn events_after(&self, cursor: u64, limit: usize) -> Result<EventPage>;
    /// One bounded page of the snapshot after `pos`, and the position after it.
    fn snapshot_page(
        &self,
        pos: SnapshotPos,
        limit: usize,
    ) -> Result<(Vec<StatusItem>, SnapshotPos)>;
    /// The stored delegated OCSP responder certificate of an issuer (DER).
    fn get_responder(&self, issuer_id: &str) -> Result<Option<Vec<u8>>>;
    /// Stores (replaces) an issuer's delegated OCSP responder certificate.
    fn put_responder(&self, issuer_id: &str, key_id: &str, cert_der: &[u8]) -> Result<()>;
    /// Drops events so at most `keep` remain; raises the resumable-from mark accordingly.
    fn prune_events(&self, keep: u64) -> Result<u64>;
}
