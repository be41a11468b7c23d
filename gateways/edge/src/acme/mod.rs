//! ACME (RFC 8555) over HTTP: the glue between the edge's pipeline and the sans-I/O
//! `certgate-acme` crate, with the state kept by the core's `Acme` service.

pub mod accounts;
pub mod handler;
pub mod render;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use zeroize::Zeroizing;

pub use handler::AcmeHandler;

use crate::router::{Listener, Mount, Router};

/// Mounts the ACME handler at `/acme/` on the HTTPS listener (and `/t/{tenant}/acme/`).
pub fn mount(router: Router, handler: Arc<AcmeHandler>) -> Router {
    router.mount(Mount {
        prefix: "/acme/",
        listeners: &[Listener::Https],
        handler,
    })
}

/// Why the nonce key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum NonceKeyError {
    /// The file could not be read.
    #[error("cannot read the ACME nonce key {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Too short to be a key.
    #[error("the ACME nonce key {0} is shorter than 32 bytes")]
    TooShort(PathBuf),
    /// No randomness.
    #[error("no randomness for an ephemeral nonce key")]
    Random,
}

/// The fleet nonce key from `[acme] nonce_key_file`, or a random one for this process alone.
/// Held in `Zeroizing` and never logged.
pub fn load_nonce_key(cfg: &AcmeConfig) -> Result<Zeroizing<Vec<u8>>, NonceKeyError> {
    match &cfg.nonce_key_file {
        Some(path) => {
            let key =
                Zeroizing::new(std::fs::read(path).map_err(|source| NonceKeyError::Read {
                    path: path.clone(),
                    source,
                })?);
            if key.len() < certgate_acme::nonce::MIN_NONCE_KEY_LEN {
                return Err(NonceKeyError::TooShort(path.clone()));
            }
            Ok(key)
        }
        None => {
            tracing::warn!(
                "[acme] nonce_key_file is not set: nonces from this edge are not accepted by others"
            );
            let mut key = Zeroizing::new(vec![0u8; 32]);
            aws_lc_rs::rand::fill(&mut key).map_err(|_| NonceKeyError::Random)?;
            Ok(key)
        }
    }
}

/// `[acme]` in edge.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// Scheme and authority clients use to reach this edge; every ACME URL (and the JWS `url`
    /// check) is built from it. Default `https://127.0.0.1:8443`.
    pub base_url: String,
    /// The fleet nonce key (≥ 32 random bytes, raw). Every edge of a fleet must share it so any
    /// edge accepts any edge's nonce. Without it, a random key is drawn at start (nonces then
    /// only work against this process).
    pub nonce_key_file: Option<PathBuf>,
    /// Nonce lifetime, seconds.
    pub nonce_ttl_seconds: u64,
    /// Most redeemed, unexpired nonces remembered (the in-process store).
    pub nonce_store_capacity: usize,
    /// Largest ACME request body, bytes.
    pub max_body_bytes: usize,
    /// How long the core may hold a challenge response waiting for the validation, ms.
    pub challenge_wait_ms: u32,
    /// Orders per page of an account's orders list.
    pub orders_page_size: u32,
    /// Accounts whose parsed key this edge keeps (0 = none: every `kid` request asks the core).
    /// The core still checks every request's key and account state (see `acme::accounts`).
    pub account_cache_capacity: u64,
    /// How long one cached account is kept, seconds.
    pub account_cache_ttl_seconds: u64,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            base_url: "https://127.0.0.1:8443".into(),
            nonce_key_file: None,
            nonce_ttl_seconds: 300,
            nonce_store_capacity: 1_000_000,
            max_body_bytes: 64 * 1024,
            challenge_wait_ms: 3000,
            orders_page_size: 50,
            account_cache_capacity: 10_000,
            account_cache_ttl_seconds: 300,
        }
    }
}

impl AcmeConfig {
    /// Checks bounds and the base URL's shape.
    pub fn validate(&self) -> Result<(), String> {
        let b = &self.base_url;
        if !(b.starts_with("https://") || b.starts_with("http://"))
            || b.ends_with('/')
            || b[b.find("://").map_or(0, |i| i + 3)..].contains('/')
        {
            return Err(format!(
                "[acme] base_url must be scheme://host[:port] without a path, got {b:?}"
            ));
        }
        if self.nonce_ttl_seconds == 0
            || self.nonce_store_capacity == 0
            || self.max_body_bytes == 0
            || self.orders_page_size == 0
        {
            return Err("[acme] bounds must be positive".into());
        }
        Ok(())
    }
}
