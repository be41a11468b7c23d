//! The core's CMP support (proto/cmp.proto): MAC computation with per-tenant shared secrets that
//! never leave the core, the tenant's RA key (held by the signer, role RA) that signs CMP
//! response protection, and certConf bookkeeping with a sweep that revokes certificates left
//! unconfirmed past the confirmation window (RFC 9483 §4.1.1).
//!
//! The edge (gateways/cmp) does all PKIMessage parsing; this module sees only the ProtectedPart
//! bytes to MAC or sign, and serials to confirm.

pub mod mac;
pub mod ra;
pub mod service;

use serde::Deserialize;

pub use service::{CmpAdminService, CmpService, CmpState};

/// `[cmp]` in core.toml (docs/cmp.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CmpConfig {
    /// Seconds a certificate issued with `await_confirmation` may stay unconfirmed before the
    /// sweep revokes it (RFC 9483 §4.1.1 leaves the value to the PKI; 300 s is OpenSSL's
    /// default total timeout order of magnitude).
    pub confirm_window_seconds: i64,
    /// How often the sweep runs, ms.
    pub sweep_interval_ms: u64,
}

impl Default for CmpConfig {
    fn default() -> Self {
        Self {
            confirm_window_seconds: 300,
            sweep_interval_ms: 5_000,
        }
    }
}

impl CmpConfig {
    /// Checks the bounds.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=86_400).contains(&self.confirm_window_seconds) {
            return Err("[cmp] confirm_window_seconds must be 1..=86400".into());
        }
        if !(100..=3_600_000).contains(&self.sweep_interval_ms) {
            return Err("[cmp] sweep_interval_ms must be 100..=3600000".into());
        }
        Ok(())
    }
}

/// The longest reference (senderKID) accepted.
pub const MAX_REFERENCE: usize = 128;
/// The longest shared secret accepted.
pub const MAX_SECRET: usize = 256;
/// Bytes of a generated shared secret (rendered as 32 URL-safe base64 characters).
pub const GENERATED_SECRET_BYTES: usize = 24;
/// The largest ProtectedPart the core MACs or signs (the edge bounds messages far lower).
pub const MAX_PROTECTED_PART: usize = 1024 * 1024;
