//! SCEP (RFC 8894) over plain HTTP at `/scep`, `/scep/pkiclient.exe` and
//! `/cgi-bin/pkiclient.exe` (after the usual `/t/{tenant}` prefix or Host → tenant map).
//!
//! `?operation=GetCACaps|GetCACert|GetNextCACert|PKIOperation` over GET (PKIOperation with
//! `&message=<base64>`) and POST (PKIOperation, body `application/x-pki-message`). The protocol
//! logic is in `certgate-scep`; [`handler`] makes the core calls: the RA key operations
//! (`Scep.DecryptKey`, `Scep.SignAttributes`) and the challenge check (`Scep.CheckChallenge`)
//! happen in the core/signer, issuance is one `Core.Issue` per enrollment.

pub mod handler;

use std::sync::Arc;

use crate::router::{Listener, Mount, Router};

pub use handler::ScepHandler;

/// `[scep]` in edge.toml: the SCEP gateway's knobs (the tenant's challenge and RA live in the
/// core).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScepConfig {
    /// How far (seconds) a request's signingTime signed attribute may be from the edge's clock,
    /// either way, before the request is answered with CertRep FAILURE badTime (RFC 8894
    /// §3.2.1.4.5): it bounds how long a captured request stays replayable and must allow for
    /// device clock drift. Requests without signingTime are accepted. 1..=86400, default 600.
    pub max_signing_time_skew_seconds: u64,
}

impl Default for ScepConfig {
    fn default() -> Self {
        Self {
            max_signing_time_skew_seconds: certgate_scep::DEFAULT_SIGNING_TIME_SKEW.as_secs(),
        }
    }
}

impl ScepConfig {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=86_400).contains(&self.max_signing_time_skew_seconds) {
            return Err("[scep] max_signing_time_skew_seconds must be 1..=86400".into());
        }
        Ok(())
    }
}

/// Mounts SCEP on the plain HTTP listener at its three customary paths.
pub fn mount(router: Router, handler: Arc<ScepHandler>) -> Router {
    router
        .mount(Mount {
            prefix: "/scep",
            listeners: &[Listener::Http],
            handler: handler.clone(),
        })
        .mount(Mount {
            prefix: "/cgi-bin/pkiclient.exe",
            listeners: &[Listener::Http],
            handler,
        })
}

#[cfg(test)]
mod tests {
    use crate::config::EdgeConfig;
    use std::path::Path;

    const BASE: &str = "core_socket = \"core.sock\"\n[tls]\ncert = \"t.pem\"\nkey = \"t.key\"\n";

    #[test]
    fn signing_time_window_is_configurable_and_bounded() {
        let cfg = EdgeConfig::parse(BASE, Path::new("/d")).expect("parses");
        assert_eq!(cfg.scep.max_signing_time_skew_seconds, 600);
        let cfg = EdgeConfig::parse(
            &format!("{BASE}[scep]\nmax_signing_time_skew_seconds = 120\n"),
            Path::new("/d"),
        )
        .expect("parses");
        assert_eq!(cfg.scep.max_signing_time_skew_seconds, 120);
        for bad in ["0", "86401"] {
            assert!(
                EdgeConfig::parse(
                    &format!("{BASE}[scep]\nmax_signing_time_skew_seconds = {bad}\n"),
                    Path::new("/d"),
                )
                .is_err(),
                "{bad} must be refused"
            );
        }
        assert!(
            EdgeConfig::parse(&format!("{BASE}[scep]\nunknown = 1\n"), Path::new("/d")).is_err()
        );
    }
}
