//! The CMP state store (MAC shared secrets, the tenant's RA key and certificate, certificates
//! awaiting certConf) behind its own trait, beside [`super::Store`]: the CMP services
//! (`crate::cmp`) are its only users.
//!
//! Same rules as the main store: every row carries its tenant and every lookup takes it, so a
//! reference provisioned for tenant A does not exist for tenant B (I-4). Every state change takes
//! its [`AuditEntry`] and appends it in the same transaction (I-7); audit entries never carry a
//! secret.

use zeroize::Zeroizing;

use crate::audit::AuditEntry;
use crate::error::Result;

/// The tenant's CMP RA: the signer key that protects CMP responses and its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaRec {
    /// Tenant.
    pub tenant: String,
    /// The key id in the signer (role RA).
    pub signer_key_id: String,
    /// `certgate.signer.v1.KeyType` number.
    pub key_type: i32,
    /// The RA certificate DER.
    pub cert_der: Vec<u8>,
    /// The issuing CA that certified it (the chain continues from there).
    pub issuer_id: String,
    /// Creation time.
    pub created_unix: i64,
}

/// A certificate issued with `await_confirmation`, keyed by the idempotency key it was issued
/// under (recorded before issuing, so a crash between issuing and recording cannot leave an
/// unconfirmed certificate untracked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingConfirm {
    /// Tenant.
    pub tenant: String,
    /// The Issue idempotency key.
    pub idem_key: String,
    /// "pending", "accepted", "rejected" or "expired".
    pub state: String,
    /// After this the sweep revokes a still pending certificate.
    pub deadline_unix: i64,
    /// For "rejected"/"expired": the revocation has been carried out.
    pub done: bool,
}

/// CMP state.
pub trait CmpStore: Send + Sync {
    /// Creates or replaces the shared secret of (tenant, reference); true when it replaced one.
    fn put_cmp_secret(
        &self,
        tenant: &str,
        reference: &[u8],
        secret: &Zeroizing<Vec<u8>>,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool>;
    /// Removes a shared secret; true when it existed.
    fn delete_cmp_secret(&self, tenant: &str, reference: &[u8], audit: &AuditEntry)
    -> Result<bool>;
    /// The shared secret of (tenant, reference).
    fn cmp_secret(&self, tenant: &str, reference: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>>;

    /// Stores (replaces) the tenant's RA.
    fn put_cmp_ra(&self, ra: &RaRec, audit: &AuditEntry) -> Result<()>;
    /// The tenant's RA.
    fn cmp_ra(&self, tenant: &str) -> Result<Option<RaRec>>;

    /// Records that the certificate issued under (tenant, key) awaits certConf until
    /// `deadline`; a record already there is kept as it is (retries do not extend the window).
    fn await_confirm(&self, tenant: &str, idem_key: &str, deadline: i64) -> Result<()>;
    /// The confirmation record of (tenant, key).
    fn pending_confirm(&self, tenant: &str, idem_key: &str) -> Result<Option<PendingConfirm>>;
    /// Moves a record from "pending" to `to` ("accepted", "rejected", "expired"); returns the
    /// record as it was before (None = no record). Only a pending record moves.
    fn transition_confirm(
        &self,
        tenant: &str,
        idem_key: &str,
        to: &str,
        audit: &AuditEntry,
    ) -> Result<Option<PendingConfirm>>;
    /// Marks a rejected/expired record's revocation as carried out.
    fn confirm_done(&self, tenant: &str, idem_key: &str) -> Result<()>;
    /// Up to `limit` records the sweep must act on: pending past their deadline, or
    /// rejected/expired whose revocation is not done yet.
    fn confirm_sweep_due(&self, now: i64, limit: usize) -> Result<Vec<PendingConfirm>>;
}
