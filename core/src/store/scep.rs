//! The SCEP state store (the tenant's SCEP RA and its challenge passwords) behind its own trait,
//! beside [`super::Store`]: the SCEP services (`crate::scep`) are its only users.
//!
//! Same rules as the main store: every row carries its tenant and every lookup takes it (I-4);
//! every state change appends its [`AuditEntry`] in the same transaction (I-7). Challenges are
//! stored as SHA-256 digests (domain-separated), never as the secret; audit entries never carry
//! either.

use crate::audit::AuditEntry;
use crate::error::Result;
use crate::store::cmp::RaRec;

/// The digest a challenge is stored and compared as.
pub fn challenge_digest(secret: &[u8]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"certgate-scep-challenge-v1\0");
    ctx.update(secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// What a challenge check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeMatch {
    /// The tenant's (or profile's) static challenge.
    Static,
    /// A one-time challenge, now consumed.
    OneTime,
    /// Nothing matched.
    None,
}

/// SCEP state.
pub trait ScepStore: Send + Sync {
    /// Stores (replaces) the tenant's SCEP RA (signer key role SCEP_RA).
    fn put_scep_ra(&self, ra: &RaRec, audit: &AuditEntry) -> Result<()>;
    /// The tenant's SCEP RA.
    fn scep_ra(&self, tenant: &str) -> Result<Option<RaRec>>;

    /// Sets the static challenge of (tenant, profile) (profile "" = every profile of the
    /// tenant); true when it replaced one.
    fn put_scep_static_challenge(
        &self,
        tenant: &str,
        profile: &str,
        digest: [u8; 32],
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool>;
    /// Adds a one-time challenge valid until `expires`; refused (false) when the tenant already
    /// has `max_outstanding` unexpired one-time challenges (bounded, I-8).
    #[allow(clippy::too_many_arguments)] // one transaction, its inputs and its audit entry
    fn add_scep_one_time_challenge(
        &self,
        tenant: &str,
        profile: &str,
        digest: [u8; 32],
        now: i64,
        expires: i64,
        max_outstanding: usize,
        audit: &AuditEntry,
    ) -> Result<bool>;
    /// Compares `digest` in constant time with the static challenges of (tenant, profile) and
    /// (tenant, ""), then with the unexpired one-time ones; a matching one-time challenge is
    /// deleted in the same transaction (so it is consumed exactly once), with `consumed_audit`.
    fn check_scep_challenge(
        &self,
        tenant: &str,
        profile: &str,
        digest: [u8; 32],
        now: i64,
        consumed_audit: &AuditEntry,
    ) -> Result<ChallengeMatch>;
}
