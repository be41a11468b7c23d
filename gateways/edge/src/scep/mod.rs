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
