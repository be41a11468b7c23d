//! CMP over HTTP (RFC 6712 / RFC 9811) at `/.well-known/cmp` on the plain HTTP listener.
//!
//! Paths (after the usual `/t/{tenant}` prefix or Host → tenant map):
//! - `/.well-known/cmp` — the tenant's default certificate profile;
//! - `/.well-known/cmp/p/{name}` — `{name}` is the certificate profile of that tenant
//!   (RFC 9483 §6.1 "label"); an unknown profile is refused by the core (badRequest).
//!
//! POST only (405 otherwise), `Content-Type: application/pkixcmp` (415 otherwise). Every CMP
//! answer — success or error message — is HTTP 200 `application/pkixcmp` (RFC 6712 §3.3).
//! The protocol logic is in `certgate-cmp`; [`handler`] does the core calls.

mod crl_status;
pub mod handler;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::router::{Listener, Mount, Router};

pub use handler::CmpHandler;

/// `[cmp]` in edge.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CmpConfig {
    /// Extra trust anchors (PEM files, each one or more certificates) for signature-protected
    /// requests, in addition to the tenant's own CA chain (`Core.GetCaChain`). Relative paths
    /// resolve against edge.toml's directory. They apply to every tenant.
    pub trust_anchors: Vec<PathBuf>,
    /// Largest PKIMessage accepted, bytes (also the HTTP body limit for CMP). Default 65536.
    pub max_message_bytes: usize,
    /// Allowed distance of messageTime from the edge's clock, seconds (badTime beyond).
    /// Default 300.
    pub max_clock_skew_seconds: u64,
}

impl Default for CmpConfig {
    fn default() -> Self {
        Self {
            trust_anchors: Vec::new(),
            max_message_bytes: 64 * 1024,
            max_clock_skew_seconds: 300,
        }
    }
}

/// Mounts CMP on the plain HTTP listener.
pub fn mount(router: Router, handler: Arc<CmpHandler>) -> Router {
    router.mount(Mount {
        prefix: "/.well-known/cmp",
        listeners: &[Listener::Http],
        handler,
    })
}
