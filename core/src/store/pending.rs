//! Pending requests (manual approval, docs/profiles.md `approval = "manual"`) behind their own
//! trait beside [`super::Store`]: the issuance path records a request that passed its profile but
//! needs an operator, EST/SCEP/CMP polls find it by (tenant, idempotency key), and the Admin API
//! approves or denies it by (tenant, id).
//!
//! Same rules as the main store: every row carries its tenant and every lookup takes it (I-4);
//! every state change takes its [`AuditEntry`] and appends it in the same transaction (I-7):
//! `approval.requested`, `approval.approved`, `approval.denied`, `approval.expired`.
//! A tenant holds at most a configured number of open requests (I-8): a new one beyond the
//! bound is refused, never queued.

use crate::audit::AuditEntry;
use crate::error::Result;

/// Waiting for an operator.
pub const STATE_PENDING: &str = "pending";
/// Approved: the next poll (or the approval itself) issues, once.
pub const STATE_APPROVED: &str = "approved";
/// Denied by an operator: every poll is refused.
pub const STATE_DENIED: &str = "denied";
/// Not decided before `expires_unix`: every poll is refused.
pub const STATE_EXPIRED: &str = "expired";

/// One request held for approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRec {
    /// Tenant.
    pub tenant: String,
    /// Short id operators name (`certgate request approve --tenant T ID`), unique per tenant.
    pub id: String,
    /// The Issue idempotency key (unique per tenant): how polls find the request.
    pub idem_key: String,
    /// `issue::request_hash` of the held request (a different request under the key is refused).
    pub request_hash: Vec<u8>,
    /// The encoded `IssueRequest`, issued as it is once approved (SCEP CertPoll and CMP pollReq
    /// carry no request of their own).
    pub request_pb: Vec<u8>,
    /// "est", "scep", "cmp", ... (shown to the operator).
    pub protocol: String,
    /// Who asked, as the edge authenticated them (shown to the operator).
    pub client_identity: String,
    /// The profile name that asked for approval.
    pub profile: String,
    /// What would be certified, for the operator: subject and names.
    pub summary: String,
    /// `pending`, `approved`, `denied` or `expired`.
    pub state: String,
    /// When recorded.
    pub created_unix: i64,
    /// A still pending request expires after this.
    pub expires_unix: i64,
    /// The operator (caller) who decided; empty while pending.
    pub decided_by: String,
    /// When decided; 0 while pending.
    pub decided_unix: i64,
    /// The operator's reason for a denial.
    pub reason: String,
}

/// The outcome of recording a pending request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PendingInsert {
    /// Recorded now.
    Inserted,
    /// One already exists under this (tenant, idempotency key).
    Exists(Box<PendingRec>),
    /// The tenant already holds `max_open` open requests; nothing recorded.
    Full,
}

/// An operator's (or the expiry's) decision on a pending request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// `approved`, `denied` or `expired`.
    pub to: String,
    /// Who decided (the admin caller, or `core` for an expiry).
    pub by: String,
    /// Why.
    pub reason: String,
    /// When.
    pub now: i64,
}

/// Pending-request state.
pub trait PendingStore: Send + Sync {
    /// Records `rec` (state pending) with its `approval.requested` audit entry, unless one exists
    /// under (tenant, idempotency key) or the tenant already holds `max_open` requests that are
    /// pending and not expired at `rec.created_unix`.
    fn insert_pending(
        &self,
        rec: &PendingRec,
        max_open: usize,
        audit: &AuditEntry,
    ) -> Result<PendingInsert>;
    /// The request under (tenant, idempotency key).
    fn pending_by_key(&self, tenant: &str, idem_key: &str) -> Result<Option<PendingRec>>;
    /// The request (tenant, id).
    fn pending_by_id(&self, tenant: &str, id: &str) -> Result<Option<PendingRec>>;
    /// Up to `limit` requests of a tenant, oldest first; `state` filters when given.
    fn list_pending(
        &self,
        tenant: &str,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PendingRec>>;
    /// Moves request (tenant, id) from `pending` to `decision.to` (`approved`, `denied`,
    /// `expired`), recording who, when and why, with `audit` in the same transaction. Returns the record
    /// after the call (unchanged when it was no longer pending; None = no such request).
    fn decide_pending(
        &self,
        tenant: &str,
        id: &str,
        decision: &Decision,
        audit: &AuditEntry,
    ) -> Result<Option<PendingRec>>;
}
