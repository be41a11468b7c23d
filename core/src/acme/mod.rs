//! The ACME state service (`certgate.acme.v1.Acme`, proto/acme.proto): accounts, orders,
//! authorizations and challenges live here in the core's store; edges stay stateless.
//!
//! The protocol decisions come from the sans-I/O crate `certgate-acme` (identifier rules,
//! challenge types per identifier, order status from authorizations, the CSR-vs-order check, EAB
//! verification, JWK thumbprints and key authorizations); this module adds the durable state
//! ([`crate::store::acme`]), the validators that really contact the client's server
//! ([`validate`]), and issuance through the one issuance path ([`crate::issue`]).
//!
//! Errors carry the ACME problem type suffix as their `rule` (proto header), so the edge renders
//! `urn:ietf:params:acme:error:{rule}`.

pub mod admin;
pub mod service;
pub mod validate;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use crate::error::CoreError;

pub use service::AcmeService;

/// Pebble's convention for local development: every name is validated at 127.0.0.1 with
/// http-01 on this port...
pub const DEV_HTTP_PORT: u16 = 5002;
/// ...and tls-alpn-01 on this one.
pub const DEV_TLS_ALPN_PORT: u16 = 5001;

/// `[acme]` in core.toml (docs/acme.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// Port http-01 connects to (RFC 8555 §8.3: 80).
    pub http_port: u16,
    /// Port tls-alpn-01 connects to (RFC 8737: 443).
    pub tls_alpn_port: u16,
    /// DNS server (UDP) dns-01 asks for TXT records; None = the first `nameserver` of
    /// /etc/resolv.conf.
    pub dns_resolver: Option<SocketAddr>,
    /// Static name → address map consulted before DNS for http-01 and tls-alpn-01.
    pub hosts: BTreeMap<String, IpAddr>,
    /// Deadline of one validation attempt, ms.
    pub validation_timeout_ms: u64,
    /// Validations running at once; beyond, RespondChallenge is refused with RATE_LIMITED (I-8).
    pub max_concurrent_validations: usize,
    /// Cap on RespondChallenge's `wait_ms`.
    pub max_wait_ms: u32,
    /// Lifetime of a pending authorization, s.
    pub authz_pending_secs: i64,
    /// How long a valid authorization is reused, s.
    pub authz_valid_secs: i64,
    /// Lifetime of an order until finalized, s.
    pub order_lifetime_secs: i64,
    /// Dev only (Pebble's convention): validate every name at 127.0.0.1, http-01 on 5002 and
    /// tls-alpn-01 on 5001. Refused in production mode (I-5).
    pub dev_validate_on_localhost: bool,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            http_port: 80,
            tls_alpn_port: 443,
            dns_resolver: None,
            hosts: BTreeMap::new(),
            validation_timeout_ms: 10_000,
            max_concurrent_validations: 64,
            max_wait_ms: 10_000,
            authz_pending_secs: 7 * 86_400,
            authz_valid_secs: 30 * 86_400,
            order_lifetime_secs: 7 * 86_400,
            dev_validate_on_localhost: false,
        }
    }
}

impl AcmeConfig {
    /// Checks the settings against the mode: the dev validation shortcut must never run in
    /// production (I-5).
    pub fn check(&self, mode: crate::config::Mode) -> Result<(), String> {
        if self.dev_validate_on_localhost && mode == crate::config::Mode::Production {
            return Err(
                "[acme] dev_validate_on_localhost is a dev-only setting; refused in production mode"
                    .into(),
            );
        }
        if self.max_concurrent_validations == 0 {
            return Err("[acme] max_concurrent_validations must be at least 1".into());
        }
        if self.authz_pending_secs <= 0
            || self.authz_valid_secs <= 0
            || self.order_lifetime_secs <= 0
        {
            return Err("[acme] lifetimes must be positive".into());
        }
        Ok(())
    }
}

/// Maps a protocol-crate error to a core error whose rule is the ACME problem type suffix.
pub fn acme_error(e: &certgate_acme::Error) -> CoreError {
    let rule = e.wire().0.name();
    let message = e.to_string();
    match rule {
        "accountDoesNotExist" => CoreError::not_found(rule, message),
        "serverInternal" => CoreError::Internal(message),
        "unauthorized"
        | "rejectedIdentifier"
        | "externalAccountRequired"
        | "userActionRequired"
        | "caa"
        | "orderNotReady"
        | "alreadyRevoked"
        | "badRevocationReason" => CoreError::policy(rule, message),
        _ => CoreError::malformed(rule, message),
    }
}

/// A random id or token: `bytes` CSPRNG bytes, base64url.
pub fn random_id(bytes: usize) -> Result<String, CoreError> {
    let mut b = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| CoreError::Internal("CSPRNG".into()))?;
    Ok(certgate_acme::base64url(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    /// I-5: the Pebble-style localhost shortcut cannot be switched on in production.
    #[test]
    fn production_refuses_dev_validation() {
        let c = AcmeConfig {
            dev_validate_on_localhost: true,
            ..AcmeConfig::default()
        };
        assert!(c.check(Mode::Dev).is_ok());
        let err = c.check(Mode::Production).expect_err("must be refused");
        assert!(err.contains("dev_validate_on_localhost"), "{err}");
        assert!(AcmeConfig::default().check(Mode::Production).is_ok());
    }

    /// The same refusal through the core's config loader: the core does not start.
    #[test]
    fn core_config_with_dev_validation_in_production_does_not_load() {
        let text = |mode: &str| {
            format!(
                "mode = \"{mode}\"\nsocket = \"core.sock\"\nstore = \"core.db\"\n[signer]\nsocket = \"s.sock\"\n[acme]\ndev_validate_on_localhost = true\nhttp_port = 8080\n"
            )
        };
        let dev = crate::config::Config::parse(&text("dev"), std::path::Path::new("/"))
            .expect("dev loads");
        assert!(dev.acme.dev_validate_on_localhost);
        assert_eq!(dev.acme.http_port, 8080);
        let err = crate::config::Config::parse(&text("production"), std::path::Path::new("/"))
            .expect_err("production refuses");
        assert!(err.0.contains("dev_validate_on_localhost"), "{err}");
    }

    #[test]
    fn protocol_errors_keep_their_problem_type_as_rule() {
        let e = acme_error(&certgate_acme::Error::BadCsr("x".into()));
        assert!(matches!(e, CoreError::Malformed { rule: "badCSR", .. }));
        let e = acme_error(&certgate_acme::Error::OrderNotReady("pending"));
        assert!(matches!(
            e,
            CoreError::Policy {
                rule: "orderNotReady",
                ..
            }
        ));
    }
}
