//! AIA caIssuers: `GET /ca/{issuer-id}.der` serves a CA certificate (RFC 5280 §4.2.2.1,
//! `application/pkix-cert`), fetched from the core with `GetCaChain` and cached edge-locally
//! (bounded by entries and time, I-8). The cache key carries the tenant (I-4).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certgate_proto::ErrorKind;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::Full;
use moka::future::Cache;

use crate::core_client::CoreClient;
use crate::error::{EdgeError, EdgeResponse};
use crate::router::{EdgeContext, EdgeRequest, Handler, HandlerFuture};

/// CA certificates by (tenant, issuer id).
#[derive(Clone)]
pub struct CaCerts {
    cache: Cache<(String, String), Bytes>,
}

impl CaCerts {
    /// A cache of at most `max_entries` certificates, each kept `ttl`.
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The DER certificate of `issuer_id` for `tenant`, from cache or the core. Concurrent misses
    /// for one key make one core call.
    pub async fn get(
        &self,
        core: &CoreClient,
        tenant: &str,
        issuer_id: &str,
    ) -> Result<Bytes, EdgeError> {
        let key = (tenant.to_owned(), issuer_id.to_owned());
        self.cache
            .try_get_with(key, async {
                let chain = core.ca_chain(tenant, issuer_id).await?;
                chain
                    .chain_der
                    .into_iter()
                    .next()
                    .map(Bytes::from)
                    .ok_or(EdgeError::NotFound)
            })
            .await
            .map_err(|e: Arc<EdgeError>| match &*e {
                EdgeError::Core(rpc) if rpc.kind == ErrorKind::NotFound => EdgeError::NotFound,
                EdgeError::Core(rpc) => EdgeError::Core(rpc.clone()),
                EdgeError::NotFound => EdgeError::NotFound,
                _ => EdgeError::Timeout,
            })
    }
}

/// Whether an issuer id is plausible (`[A-Za-z0-9._-]{1,128}`, no leading dot) before asking
/// the core.
fn valid_issuer_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The `/ca/` handler.
pub struct AiaHandler;

impl Handler for AiaHandler {
    fn protocol(&self) -> &'static str {
        "aia"
    }

    fn handle<'a>(&'a self, ctx: &'a EdgeContext, req: EdgeRequest) -> HandlerFuture<'a> {
        Box::pin(async move {
            if req.method != Method::GET && req.method != Method::HEAD {
                return Err(EdgeError::MethodNotAllowed);
            }
            let Some(id) = req.path.strip_suffix(".der") else {
                return Err(EdgeError::NotFound);
            };
            if !valid_issuer_id(id) {
                return Err(EdgeError::NotFound);
            }
            let der = ctx.ca.get(&ctx.core, &req.tenant, id).await?;
            Ok(pkix_cert(der))
        })
    }
}

fn pkix_cert(der: Bytes) -> EdgeResponse {
    let mut resp = http::Response::new(Full::new(der));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pkix-cert"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_ids_are_checked_before_reaching_the_core() {
        assert!(valid_issuer_id("default-issuing-1"));
        assert!(!valid_issuer_id(""));
        assert!(!valid_issuer_id(".hidden"));
        assert!(!valid_issuer_id("a/b"));
        assert!(!valid_issuer_id(&"a".repeat(129)));
    }
}
