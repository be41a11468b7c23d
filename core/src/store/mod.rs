//! The durable store behind a trait, so the embedded SQLite file can later be swapped for
//! PostgreSQL without touching the issuance path. All SQL lives in [`sqlite`].
//!
//! Every record carries its tenant (I-4): every lookup of a tenant's object takes the tenant, so
//! a request for tenant A cannot name tenant B's rows. Every state-changing method takes the
//! [`AuditEntry`] describing the change and appends it in the same transaction (I-7), so a change
//! and its audit record commit or vanish together.

pub mod acme;
pub mod cmp;
pub mod pending;
pub mod pg;
mod pg_acme;
mod pg_cmp;
mod pg_pending;
mod pg_scep;
mod pg_schema;
mod pg_status;
mod pg_tls;
pub mod scep;
pub mod sqlite;
mod sqlite_acme;
mod sqlite_cmp;
mod sqlite_pending;
mod sqlite_scep;
mod sqlite_status;
pub mod status;

use crate::audit::{AuditEntry, AuditRecord};
use crate::error::Result;

pub use pg::{PgConfig, PgStore, PgTlsConfig, PgTlsMode};
pub use sqlite::SqliteStore;

/// A tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRec {
    /// Name.
    pub name: String,
    /// Base URL for CRL/AIA URLs.
    pub public_base_url: String,
    /// Default profile name.
    pub default_profile: String,
    /// Active issuing CA id ("" = none yet).
    pub active_issuer_id: String,
}

/// One version of a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileRec {
    /// Tenant.
    pub tenant: String,
    /// Profile name.
    pub name: String,
    /// 1, 2, 3...
    pub version: u32,
    /// Normalised JSON.
    pub body_json: String,
    /// Creation time.
    pub created_unix: i64,
}

/// A CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaRec {
    /// CA id (also its signer key id).
    pub ca_id: String,
    /// "" for roots and intermediates, the tenant for issuing CAs.
    pub tenant: String,
    /// "root", "intermediate", "issuing".
    pub kind: String,
    /// Parent CA id ("" for roots).
    pub parent_ca_id: String,
    /// Certificate DER.
    pub cert_der: Vec<u8>,
    /// Key id in the signer.
    pub signer_key_id: String,
    /// `certgate.signer.v1.KeyType` number.
    pub key_type: i32,
    /// "active" or "retiring".
    pub state: String,
    /// notAfter.
    pub not_after_unix: i64,
    /// Creation time.
    pub created_unix: i64,
}

/// A recorded issuance intent: what will be signed, stored before signing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntentRec {
    /// Tenant.
    pub tenant: String,
    /// Idempotency key.
    pub idem_key: String,
    /// SHA-256 over the canonical request.
    pub request_hash: Vec<u8>,
    /// Serial, wire hex.
    pub serial_hex: String,
    /// The exact TBSCertificate DER to be signed.
    pub tbs_der: Vec<u8>,
    /// Issuer CA id.
    pub issuer_id: String,
    /// Profile name.
    pub profile: String,
    /// Profile version.
    pub profile_version: u32,
    /// Creation time.
    pub created_unix: i64,
}

/// An issued certificate and its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertRec {
    /// Tenant.
    pub tenant: String,
    /// Serial, wire hex.
    pub serial_hex: String,
    /// Certificate DER.
    pub cert_der: Vec<u8>,
    /// Issuer CA id.
    pub issuer_id: String,
    /// Profile name.
    pub profile: String,
    /// Profile version.
    pub profile_version: u32,
    /// notBefore.
    pub not_before_unix: i64,
    /// notAfter.
    pub not_after_unix: i64,
    /// The idempotency key it was issued under.
    pub idem_key: String,
    /// Revoked?
    pub revoked: bool,
    /// When.
    pub revoked_at_unix: i64,
    /// RFC 5280 CRLReason.
    pub revocation_reason: u32,
}

/// A ceremony.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CeremonyRec {
    /// Id.
    pub id: String,
    /// The encoded `CeremonyAction` protobuf.
    pub action: Vec<u8>,
    /// What custodians sign.
    pub digest: Vec<u8>,
    /// Quorum.
    pub required: u32,
    /// Custodians whose approval verified.
    pub approved_by: Vec<String>,
    /// `Ceremony.State` number.
    pub state: i32,
    /// CA ids created.
    pub result_ca_ids: Vec<String>,
    /// Creation time.
    pub created_unix: i64,
}

/// One revocation request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokeOp {
    /// Serial, wire hex.
    pub serial_hex: String,
    /// RFC 5280 CRLReason.
    pub reason: u32,
    /// When.
    pub now: i64,
    /// The caller's idempotency key.
    pub idem_key: String,
    /// SHA-256 over what decides the revocation (serial, reason).
    pub request_hash: Vec<u8>,
}

/// The outcome of recording an intent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntentOutcome {
    /// Recorded now.
    Inserted,
    /// One already exists under this (tenant, key).
    Exists(IntentRec),
}

/// The durable store.
pub trait Store: Send + Sync {
    /// The ACME state store, when this backend has one (the ACME service and its Admin RPCs
    /// use it; a backend without it answers them UNIMPLEMENTED).
    fn as_acme(&self) -> Option<&dyn acme::AcmeStore> {
        None
    }

    /// The CMP state store, when this backend has one (the CMP services use it; a backend
    /// without it answers them UNIMPLEMENTED).
    fn as_cmp(&self) -> Option<&dyn cmp::CmpStore> {
        None
    }

    /// The SCEP state store, when this backend has one (the SCEP services use it; a backend
    /// without it answers them with an internal error).
    fn as_scep(&self) -> Option<&dyn scep::ScepStore> {
        None
    }

    /// The pending-request store (manual approval), when this backend has one; without it a
    /// profile with `approval = "manual"` is refused (`approval.unsupported`) rather than issued
    /// unapproved (I-5), and the approval Admin RPCs answer the same.
    fn as_pending(&self) -> Option<&dyn pending::PendingStore> {
        None
    }

    /// True when a read is a short local call that may run on an async worker thread without
    /// handing the worker off first (SQLite under WAL: a page-cache lookup that never waits for
    /// the writer; the hand-off costs more than the read). False (the default) when a read may
    /// wait on a network round trip or a lock (PostgreSQL): callers then use a blocking section.
    fn reads_are_local(&self) -> bool {
        false
    }

    /// Creates or updates a tenant; true when created.
    fn put_tenant(&self, t: &TenantRec, audit: &AuditEntry) -> Result<bool>;
    /// One tenant.
    fn get_tenant(&self, name: &str) -> Result<Option<TenantRec>>;
    /// All tenants.
    fn list_tenants(&self) -> Result<Vec<TenantRec>>;

    /// Adds the next version of a profile.
    fn put_profile(
        &self,
        tenant: &str,
        name: &str,
        body_json: &str,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<ProfileRec>;
    /// The latest version of one profile.
    fn latest_profile(&self, tenant: &str, name: &str) -> Result<Option<ProfileRec>>;
    /// All versions of one profile, oldest first.
    fn profile_versions(&self, tenant: &str, name: &str) -> Result<Vec<ProfileRec>>;
    /// The latest version of every profile of a tenant.
    fn latest_profiles(&self, tenant: &str) -> Result<Vec<ProfileRec>>;

    /// Adds a CA; when `activate`, makes it the tenant's active issuer in the same transaction.
    fn put_ca(&self, ca: &CaRec, activate: bool, audit: &AuditEntry) -> Result<()>;
    /// One CA.
    fn get_ca(&self, ca_id: &str) -> Result<Option<CaRec>>;
    /// CAs of one tenant (plus shared ones when `tenant` is Some("")), or all.
    fn list_cas(&self, tenant: Option<&str>) -> Result<Vec<CaRec>>;
    /// Marks a CA "active" / "retiring".
    fn set_ca_state(&self, ca_id: &str, state: &str, audit: &AuditEntry) -> Result<()>;
    /// Issuing-CA rollover, in one transaction: `staged_id` (a CA of `tenant` in state
    /// "staged") becomes "active" and the tenant's active issuer; `previous_id` (when not empty)
    /// becomes "retiring". NOT_FOUND `ca.rollover_none` when `staged_id` is no longer staged
    /// (another activation won), so two concurrent activations change the tenant once.
    fn activate_staged_ca(
        &self,
        tenant: &str,
        staged_id: &str,
        previous_id: &str,
        audit: &AuditEntry,
    ) -> Result<()>;

    /// The intent under (tenant, key), if any.
    fn get_intent(&self, tenant: &str, idem_key: &str) -> Result<Option<IntentRec>>;
    /// Records an intent unless one exists under (tenant, key) (UNIQUE constraint).
    fn insert_intent(&self, intent: &IntentRec, audit: &AuditEntry) -> Result<IntentOutcome>;
    /// Stores the certificate of an intent; if one is already stored for it, returns that one
    /// (the stored record is the certificate).
    fn complete_issue(&self, cert: &CertRec, audit: &AuditEntry) -> Result<CertRec>;
    /// The certificate issued under (tenant, key).
    fn cert_by_key(&self, tenant: &str, idem_key: &str) -> Result<Option<CertRec>>;
    /// One certificate of one tenant.
    fn get_cert(&self, tenant: &str, serial_hex: &str) -> Result<Option<CertRec>>;
    /// Revokes under an idempotency key; returns the record and whether it was already revoked.
    /// None = no such certificate in this tenant. The key used for a different revocation is
    /// refused (ALREADY_EXISTS `idempotency.key_reused`).
    fn revoke(
        &self,
        tenant: &str,
        op: &RevokeOp,
        audit: &AuditEntry,
    ) -> Result<Option<(CertRec, bool)>>;

    /// Adds a ceremony.
    fn insert_ceremony(&self, c: &CeremonyRec, audit: &AuditEntry) -> Result<()>;
    /// Replaces a ceremony's mutable fields.
    fn update_ceremony(&self, c: &CeremonyRec, audit: &AuditEntry) -> Result<()>;
    /// One ceremony.
    fn get_ceremony(&self, id: &str) -> Result<Option<CeremonyRec>>;
    /// All ceremonies, oldest first.
    fn list_ceremonies(&self) -> Result<Vec<CeremonyRec>>;

    /// Appends an audit record on its own (denials, reads that matter).
    fn append_audit(&self, audit: &AuditEntry) -> Result<u64>;
    /// Every audit record in storage order.
    fn audit_records(&self) -> Result<Vec<AuditRecord>>;
    /// Up to `limit` unsigned records, oldest first: (seq, hash).
    fn unsigned_audit(&self, limit: usize) -> Result<Vec<(u64, [u8; 32])>>;
    /// Stores signatures.
    fn set_audit_signatures(&self, sigs: &[(u64, Vec<u8>)]) -> Result<()>;

    /// A small key/value setting (audit public key, ingestion cursor).
    fn meta_get(&self, key: &str) -> Result<Option<String>>;
    /// Sets a setting.
    fn meta_set(&self, key: &str, value: &str) -> Result<()>;
}
