//! The EST HTTP endpoints (RFC 7030 §4): `cacerts`, `simpleenroll`, `simplereenroll`,
//! `serverkeygen`, `csrattrs`. `fullcmc` answers 501 (not implemented, docs/est.md).
//!
//! Authentication (§3.2.3, §3.3.2): `simplereenroll` needs the TLS client certificate being
//! renewed (issued by this tenant, not revoked, same subject and SANs as the CSR);
//! `simpleenroll` and `serverkeygen` need the label's HTTP Basic credentials or, when the label
//! allows it, a TLS client certificate verified against `[est] client_ca_files`. Anything else
//! is 401 with `WWW-Authenticate: Basic realm="certgate EST"` and nothing more.

use std::sync::Arc;

use aws_lc_rs::digest;
use bytes::Bytes;
use certgate_est::EstError;
use certgate_est::auth::{check_basic, parse_basic};
use certgate_est::keyprotect::{self, KeySigner, Recipient, Requested};
use certgate_est::request::{Pkcs10, decode_csr};
use certgate_est::response::{self as resp, base64_unwrapped, certs_only};
use certgate_proto::ErrorKind;
use certgate_proto::core::{IssueRequest, IssueResponse, issue_request, issue_response};
use der::Decode;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::Full;
use tracing::{debug, info};
use zeroize::Zeroizing;

use super::{EstSettings, Label};
use crate::error::{EdgeError, EdgeResponse};
use crate::metrics::Endpoint;
use crate::router::{EdgeContext, EdgeRequest, Handler, HandlerFuture};
use crate::tenant::DEFAULT_TENANT;

/// The realm in `WWW-Authenticate`.
const REALM: &str = "Basic realm=\"certgate EST\", charset=\"UTF-8\"";
/// Refusals by reason (bad input is counted, I-8 / quality bar).
const REFUSALS: &str = "certgate_est_refusals_total";

/// The `/.well-known/est/` handler.
pub struct EstHandler {
    settings: EstSettings,
    /// Signs the SignedData around encrypted server-generated keys (RFC 7030 §4.4.2): the
    /// edge's own TLS key. `None` (not ECDSA P-256): encrypted delivery answers 501.
    key_signer: Option<Arc<KeySigner>>,
    /// The unconfigured `default` label: request's tenant, no enrollment credentials.
    fallback: Arc<Label>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    CaCerts,
    SimpleEnroll,
    SimpleReenroll,
    ServerKeygen,
    CsrAttrs,
    FullCmc,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "cacerts" => Op::CaCerts,
            "simpleenroll" => Op::SimpleEnroll,
            "simplereenroll" => Op::SimpleReenroll,
            "serverkeygen" => Op::ServerKeygen,
            "csrattrs" => Op::CsrAttrs,
            "fullcmc" => Op::FullCmc,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Op::CaCerts => "cacerts",
            Op::SimpleEnroll => "simpleenroll",
            Op::SimpleReenroll => "simplereenroll",
            Op::ServerKeygen => "serverkeygen",
            Op::CsrAttrs => "csrattrs",
            Op::FullCmc => "fullcmc",
        }
    }
}

/// An EST answer decided before or instead of a core call.
enum Refusal {
    /// 401 + WWW-Authenticate.
    Unauthenticated,
    /// A plain-text error with this status.
    Status(StatusCode, &'static str),
    /// The shared plumbing's error (core refusal, overload, …) → its status and Retry-After.
    Edge(EdgeError),
}

impl From<EdgeError> for Refusal {
    fn from(e: EdgeError) -> Self {
        Refusal::Edge(e)
    }
}

impl From<EstError> for Refusal {
    fn from(e: EstError) -> Self {
        match e {
            EstError::TooLarge => {
                Refusal::Status(StatusCode::PAYLOAD_TOO_LARGE, "request too large")
            }
            EstError::ReenrollMismatch(m) => Refusal::Status(StatusCode::FORBIDDEN, m),
            EstError::Base64 => Refusal::Status(StatusCode::BAD_REQUEST, "body is not base64"),
            EstError::NotPkcs10 => Refusal::Status(
                StatusCode::BAD_REQUEST,
                "body is not a PKCS#10 certification request",
            ),
            EstError::BadAuthorization => Refusal::Unauthenticated,
            EstError::KeyProtection(m) => Refusal::Status(StatusCode::BAD_REQUEST, m),
            EstError::Unsupported(m) => Refusal::Status(StatusCode::NOT_IMPLEMENTED, m),
            EstError::ChannelBinding(m) => Refusal::Status(StatusCode::FORBIDDEN, m),
            _ => Refusal::Status(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        }
    }
}

fn text(status: StatusCode, msg: &str) -> EdgeResponse {
    let mut r = http::Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn unauthorized() -> EdgeResponse {
    let mut r = text(StatusCode::UNAUTHORIZED, "authentication required");
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
    r
}

fn base64_body(status: StatusCode, content_type: &'static str, der: &[u8]) -> EdgeResponse {
    let mut r = http::Response::new(Full::new(Bytes::from(base64_unwrapped(der))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        "content-transfer-encoding",
        HeaderValue::from_static("base64"),
    );
    r
}

/// RFC 7030 §4.2.3: the request is held for manual approval (the profile says so); the client
/// re-sends the same request after Retry-After and gets the certificate once an operator
/// approved it (`certgate request approve`).
fn pending_reply(issued: &IssueResponse) -> Option<EdgeResponse> {
    if issued.status != issue_response::Status::Pending as i32 {
        return None;
    }
    let mut r = text(
        StatusCode::ACCEPTED,
        &format!(
            "request {} awaits approval; retry the same request later",
            issued.pending_id
        ),
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(issued.retry_after_seconds.max(1)),
    );
    Some(r)
}

/// Lower-case hex of a serial's magnitude, no leading zero bytes (the core's `serial_hex`).
fn serial_hex(bytes: &[u8]) -> String {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    hex::encode(&bytes[first..])
}

/// Whom an encrypted server-generated key goes to.
enum KeyTarget {
    /// The client's TLS client certificate (DER).
    Cert(Vec<u8>),
    /// A label's pre-shared key.
    Kek(super::PresharedKey),
}

impl KeyTarget {
    fn recipient(&self) -> Recipient<'_> {
        match self {
            KeyTarget::Cert(der) => Recipient::Certificate(der),
            KeyTarget::Kek(k) => Recipient::Kek {
                id: &k.id,
                key: &k.key,
            },
        }
    }
}

/// Who the client is, as authenticated (audited as `client_identity`).
struct Client {
    identity: String,
}

impl EstHandler {
    /// A handler for the parsed `[est]` section.
    pub fn new(settings: EstSettings) -> Self {
        Self {
            settings,
            key_signer: None,
            fallback: Arc::new(Label {
                tenant: DEFAULT_TENANT.to_owned(),
                profile: String::new(),
                basic: None,
                client_cert: false,
                csr_attrs: Vec::new(),
                serverkeygen: false,
                channel_binding: false,
                decrypt_keys: Vec::new(),
            }),
        }
    }

    /// Sets the key that signs encrypted server-generated keys (the edge's TLS key).
    pub fn with_key_signer(mut self, signer: Option<KeySigner>) -> Self {
        self.key_signer = signer.map(Arc::new);
        self
    }

    /// RFC 7030 §3.5: when the label requires it, the CSR's challengePassword must be this
    /// connection's tls-exporter value.
    fn check_binding(
        &self,
        label: &Label,
        tenant: &str,
        req: &EdgeRequest,
        csr: &Pkcs10,
    ) -> Result<(), Refusal> {
        if !label.channel_binding {
            return Ok(());
        }
        certgate_est::binding::check(&csr.req, req.tls_exporter.as_ref()).map_err(|e| {
            ::metrics::counter!(REFUSALS, "tenant" => tenant.to_owned(), "reason" => "channel_binding")
                .increment(1);
            Refusal::from(e)
        })
    }

    /// Whom a `serverkeygen` key must be encrypted to (RFC 7030 §4.4.1) and with which
    /// algorithms (the CSR's SMIMECapabilities, §4.4.2), decided before anything is issued;
    /// `None` = unprotected PKCS#8 over TLS (nothing was asked).
    fn key_recipient(
        &self,
        label: &Label,
        req: &EdgeRequest,
        csr: &Pkcs10,
    ) -> Result<Option<(KeyTarget, keyprotect::Algorithms)>, Refusal> {
        let target = match keyprotect::requested(&csr.req)? {
            Requested::None => return Ok(None),
            Requested::Symmetric(id) => label
                .decrypt_keys
                .iter()
                .find(|k| aws_lc_rs::constant_time::verify_slices_are_equal(&k.id, &id).is_ok())
                .map(|k| KeyTarget::Kek(k.clone()))
                .ok_or(Refusal::Status(
                    StatusCode::BAD_REQUEST,
                    "unknown DecryptKeyIdentifier for this label; the key is not sent unencrypted",
                ))?,
            Requested::Asymmetric(id) => {
                let Some(leaf) = req.peer_certs.as_ref().and_then(|c| c.first()) else {
                    return Err(Refusal::Status(
                        StatusCode::BAD_REQUEST,
                        "AsymmetricDecryptKeyIdentifier must name the TLS client certificate's key, and no client certificate was presented",
                    ));
                };
                if !keyprotect::names_certificate(&id, leaf.as_ref()) {
                    return Err(Refusal::Status(
                        StatusCode::BAD_REQUEST,
                        "AsymmetricDecryptKeyIdentifier does not name the TLS client certificate's key",
                    ));
                }
                keyprotect::supported_recipient(leaf.as_ref())?;
                KeyTarget::Cert(leaf.as_ref().to_vec())
            }
        };
        if self.key_signer.is_none() {
            return Err(Refusal::Status(
                StatusCode::NOT_IMPLEMENTED,
                "encrypted key delivery needs an ECDSA P-256 edge TLS key to sign with",
            ));
        }
        let caps = keyprotect::capabilities(&csr.req)?;
        let algs = keyprotect::choose(caps.as_deref(), &target.recipient())?;
        Ok(Some((target, algs)))
    }

    /// The label and tenant for a request, or 404.
    fn label(&self, name: &str, req_tenant: &str) -> Option<(Arc<Label>, String)> {
        match self.settings.labels.get(name) {
            Some(l) if req_tenant == DEFAULT_TENANT || req_tenant == l.tenant => {
                Some((l.clone(), l.tenant.clone()))
            }
            Some(_) => None,
            None if name == "default" => Some((self.fallback.clone(), req_tenant.to_owned())),
            None => None,
        }
    }

    /// HTTP Basic or (when the label allows) a verified TLS client certificate.
    fn authenticate(
        &self,
        label: &Label,
        tenant: &str,
        req: &EdgeRequest,
    ) -> Result<Client, Refusal> {
        if label.client_cert
            && let Some(leaf) = req.peer_certs.as_ref().and_then(|c| c.first())
        {
            return Ok(Client {
                identity: cert_identity(leaf.as_ref()),
            });
        }
        let (Some(user), Some(h)) = (&label.basic, req.headers.get(header::AUTHORIZATION)) else {
            return Err(Refusal::Unauthenticated);
        };
        let creds = parse_basic(h.as_bytes())?;
        if check_basic(user, &creds) {
            Ok(Client {
                identity: format!("basic:{}", creds.username),
            })
        } else {
            ::metrics::counter!(REFUSALS, "tenant" => tenant.to_owned(), "reason" => "bad_credentials")
                .increment(1);
            Err(Refusal::Unauthenticated)
        }
    }

    async fn serve(
        &self,
        ctx: &EdgeContext,
        req: &EdgeRequest,
        op: Op,
        label: &Label,
        tenant: &str,
    ) -> Result<EdgeResponse, Refusal> {
        let want = match op {
            Op::CaCerts | Op::CsrAttrs => Method::GET,
            _ => Method::POST,
        };
        if req.method != want {
            return Err(Refusal::Edge(EdgeError::MethodNotAllowed));
        }
        match op {
            Op::CaCerts => {
                let chain = ctx
                    .core
                    .ca_chain(tenant, "")
                    .await
                    .map_err(EdgeError::from)?;
                let der = certs_only(&chain.chain_der)?;
                Ok(base64_body(
                    StatusCode::OK,
                    resp::CACERTS_CONTENT_TYPE,
                    &der,
                ))
            }
            Op::CsrAttrs => {
                // `[est.labels.X] csr_attrs` in edge.toml, when set, overrides what the label's
                // profile asks for (docs/est.md); else the profile, via the edge's cache.
                let der = if label.csr_attrs.is_empty() {
                    match ctx.core.describe_profile(tenant, &label.profile).await {
                        Ok(d) => certgate_est::csrattrs::from_profile(
                            &crate::profile_policy::est_ask(&d),
                        )?,
                        Err(e) if e.kind == ErrorKind::NotFound => {
                            return Err(Refusal::Status(
                                StatusCode::NOT_FOUND,
                                "no certificate profile for this label",
                            ));
                        }
                        Err(e) => return Err(Refusal::Edge(EdgeError::Core(e))),
                    }
                } else {
                    Some(resp::csrattrs(&label.csr_attrs)?)
                };
                let Some(der) = der else {
                    let mut r = http::Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    return Ok(r);
                };
                Ok(base64_body(
                    StatusCode::OK,
                    resp::CSRATTRS_CONTENT_TYPE,
                    &der,
                ))
            }
            Op::FullCmc => Err(Refusal::Status(
                StatusCode::NOT_IMPLEMENTED,
                "fullcmc is not implemented",
            )),
            Op::SimpleEnroll => {
                let client = self.authenticate(label, tenant, req)?;
                let csr = decode_csr(&req.body, self.settings.max_body_bytes)?;
                self.check_binding(label, tenant, req, &csr)?;
                let issued = issue(ctx, tenant, label, &client, &csr.der, "").await?;
                if let Some(r) = pending_reply(&issued) {
                    return Ok(r);
                }
                let der = certs_only(&[issued.certificate_der])?;
                Ok(base64_body(
                    StatusCode::OK,
                    resp::CERTS_ONLY_CONTENT_TYPE,
                    &der,
                ))
            }
            Op::SimpleReenroll => {
                let Some(leaf) = req.peer_certs.as_ref().and_then(|c| c.first()) else {
                    return Err(Refusal::Unauthenticated);
                };
                let csr = decode_csr(&req.body, self.settings.max_body_bytes)?;
                self.check_binding(label, tenant, req, &csr)?;
                let serial = reenroll_target(ctx, tenant, leaf.as_ref(), &csr).await?;
                let client = Client {
                    identity: cert_identity(leaf.as_ref()),
                };
                let issued = issue(ctx, tenant, label, &client, &csr.der, &serial).await?;
                if let Some(r) = pending_reply(&issued) {
                    return Ok(r);
                }
                let der = certs_only(&[issued.certificate_der])?;
                Ok(base64_body(
                    StatusCode::OK,
                    resp::CERTS_ONLY_CONTENT_TYPE,
                    &der,
                ))
            }
            Op::ServerKeygen => {
                if !label.serverkeygen {
                    return Err(Refusal::Status(
                        StatusCode::NOT_IMPLEMENTED,
                        "serverkeygen is not enabled for this label",
                    ));
                }
                let client = self.authenticate(label, tenant, req)?;
                let csr = decode_csr(&req.body, self.settings.max_body_bytes)?;
                self.check_binding(label, tenant, req, &csr)?;
                let target = self.key_recipient(label, req, &csr)?;
                let key = certgate_est::keygen::generate(&csr.req)?;
                let issued = issue(ctx, tenant, label, &client, &key.csr_der, "").await?;
                if issued.status == issue_response::Status::Pending as i32 {
                    // The key pair lives only in this request (it never touches the core), so a
                    // retry could not collect it: serverkeygen cannot wait for an operator.
                    return Err(Refusal::Status(
                        StatusCode::NOT_IMPLEMENTED,
                        "serverkeygen is not available where the profile needs manual approval; use simpleenroll",
                    ));
                }
                let cms = certs_only(&[issued.certificate_der])?;
                let mut nonce = [0u8; 12];
                aws_lc_rs::rand::fill(&mut nonce).map_err(|_| EstError::KeyGen)?;
                let boundary = format!("est-{}", hex::encode(nonce));
                let body: Zeroizing<Vec<u8>> = match (&target, &self.key_signer) {
                    (None, _) => resp::serverkeygen_multipart(&boundary, &key.pkcs8, &cms),
                    (Some((t, algs)), Some(signer)) => {
                        let enveloped =
                            keyprotect::protect(&key.pkcs8, signer, &t.recipient(), *algs)?;
                        Zeroizing::new(keyprotect::encrypted_multipart(&boundary, &enveloped, &cms))
                    }
                    // key_recipient refused this before anything was issued.
                    (Some(_), None) => return Err(EstError::KeyGen.into()),
                };
                drop(key);
                // The HTTP body buffer cannot be zeroized after hyper has sent it; our copies are.
                let mut r = http::Response::new(Full::new(Bytes::copy_from_slice(&body)));
                drop(body);
                let ct = HeaderValue::from_str(&resp::serverkeygen_content_type(&boundary))
                    .map_err(|_| EstError::Encode)?;
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                Ok(r)
            }
        }
    }
}

/// `subject / serial` of a DER certificate, for audit.
fn cert_identity(der: &[u8]) -> String {
    match x509_cert::Certificate::from_der(der) {
        Ok(c) => format!(
            "cert:{}/{}",
            c.tbs_certificate.subject,
            serial_hex(c.tbs_certificate.serial_number.as_bytes())
        ),
        Err(_) => "cert:unparsable".to_owned(),
    }
}

/// Re-enrollment checks: the TLS client certificate was issued by this tenant (the core knows
/// it, byte for byte), is not revoked, and the CSR keeps its subject and SANs. Returns its serial.
async fn reenroll_target(
    ctx: &EdgeContext,
    tenant: &str,
    leaf: &[u8],
    csr: &Pkcs10,
) -> Result<String, Refusal> {
    let cert = x509_cert::Certificate::from_der(leaf)
        .map_err(|_| Refusal::Status(StatusCode::FORBIDDEN, "client certificate not usable"))?;
    let serial = serial_hex(cert.tbs_certificate.serial_number.as_bytes());
    let not_ours = || {
        ::metrics::counter!(REFUSALS, "tenant" => tenant.to_owned(), "reason" => "reenroll_foreign_cert")
            .increment(1);
        Refusal::Status(
            StatusCode::FORBIDDEN,
            "the client certificate is not a current certificate of this CA",
        )
    };
    let record = match ctx.core.get_certificate(tenant, &serial).await {
        Ok(r) => r,
        Err(e) if e.kind == ErrorKind::NotFound => return Err(not_ours()),
        Err(e) => return Err(Refusal::Edge(EdgeError::Core(e))),
    };
    if record.revoked || record.certificate_der != leaf {
        return Err(not_ours());
    }
    if let Err(e) = certgate_est::reenroll::check_reenroll(&csr.req, leaf) {
        ::metrics::counter!(REFUSALS, "tenant" => tenant.to_owned(), "reason" => "reenroll_mismatch")
            .increment(1);
        return Err(e.into());
    }
    Ok(serial)
}

/// The one `Core.Issue` of an enrollment.
async fn issue(
    ctx: &EdgeContext,
    tenant: &str,
    label: &Label,
    client: &Client,
    csr_der: &[u8],
    replaces_serial: &str,
) -> Result<certgate_proto::core::IssueResponse, Refusal> {
    let mut ctx_hash = digest::Context::new(&digest::SHA256);
    ctx_hash.update(csr_der);
    ctx_hash.update(client.identity.as_bytes());
    let key = format!("est:{}", hex::encode(ctx_hash.finish().as_ref()));
    let resp = ctx
        .core
        .issue(IssueRequest {
            tenant: tenant.to_owned(),
            profile: label.profile.clone(),
            request: Some(issue_request::Request::CsrDer(csr_der.to_vec())),
            validated_identifiers: Vec::new(),
            protocol: "est".into(),
            client_identity: client.identity.clone(),
            idempotency_key: key,
            validity_seconds: 0,
            issuer_id: String::new(),
            replaces_serial: replaces_serial.to_owned(),
            await_confirmation: false,
            ..Default::default()
        })
        .await
        .map_err(EdgeError::from)?;
    if resp.status == issue_response::Status::Pending as i32 {
        info!(tenant, client = %client.identity, pending = %resp.pending_id, "EST request awaits approval");
        ::metrics::counter!("certgate_est_pending_total", "tenant" => tenant.to_owned())
            .increment(1);
        return Ok(resp);
    }
    info!(tenant, client = %client.identity, serial = %resp.serial_hex, "EST certificate issued");
    Ok(resp)
}

impl Handler for EstHandler {
    fn protocol(&self) -> &'static str {
        "est"
    }

    fn max_body_bytes(&self) -> Option<usize> {
        Some(self.settings.max_body_bytes)
    }

    fn admission_tenant<'s>(&'s self, tenant: &'s str, path: &str) -> &'s str {
        // `{label}/{op}` at the plain path: the label's tenant (what `label()` will serve).
        match path.split_once('/') {
            Some((name, _)) if tenant == DEFAULT_TENANT => self
                .settings
                .labels
                .get(name)
                .map_or(tenant, |l| l.tenant.as_str()),
            _ => tenant,
        }
    }

    fn handle<'a>(&'a self, ctx: &'a EdgeContext, req: EdgeRequest) -> HandlerFuture<'a> {
        Box::pin(async move {
            let parts: Vec<&str> = req.path.split('/').collect();
            let (label_name, op) = match parts.as_slice() {
                [op] => ("default", *op),
                [label, op] => (*label, *op),
                _ => return Err(EdgeError::NotFound),
            };
            let Some(op) = Op::parse(op) else {
                return Err(EdgeError::NotFound);
            };
            let Some((label, tenant)) = self.label(label_name, &req.tenant) else {
                return Err(EdgeError::NotFound);
            };
            let mut r = match self.serve(ctx, &req, op, &label, &tenant).await {
                Ok(r) => r,
                Err(Refusal::Unauthenticated) => {
                    ::metrics::counter!(REFUSALS, "tenant" => tenant.clone(), "reason" => "unauthenticated")
                        .increment(1);
                    unauthorized()
                }
                Err(Refusal::Status(status, msg)) => {
                    debug!(op = op.name(), %status, msg, "EST request refused");
                    ::metrics::counter!(REFUSALS, "tenant" => tenant.clone(), "reason" => "bad_request")
                        .increment(1);
                    text(status, msg)
                }
                Err(Refusal::Edge(e)) => return Err(e),
            };
            r.extensions_mut().insert(Endpoint(op.name()));
            Ok(r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_drop_leading_zero_bytes() {
        assert_eq!(serial_hex(&[0x00, 0x8a, 0x01]), "8a01");
        assert_eq!(serial_hex(&[0x7f]), "7f");
    }

    #[test]
    fn labels_resolve_and_tenants_must_agree() {
        let cfg: super::super::EstConfig =
            toml::from_str("[labels.routers]\ntenant = \"acme-corp\"\n").expect("parses");
        let h = EstHandler::new(cfg.settings().expect("valid"));
        assert_eq!(h.label("routers", "default").expect("label").1, "acme-corp");
        assert_eq!(
            h.label("routers", "acme-corp").expect("label").1,
            "acme-corp"
        );
        assert!(h.label("routers", "other").is_none());
        assert!(h.label("unknown", "default").is_none());
        assert_eq!(h.label("default", "t1").expect("fallback").1, "t1");
    }

    #[test]
    fn a_label_at_the_plain_path_is_admitted_under_its_tenants_bulkhead() {
        let cfg: super::super::EstConfig =
            toml::from_str("[labels.routers]\ntenant = \"acme-corp\"\n").expect("parses");
        let h = EstHandler::new(cfg.settings().expect("valid"));
        assert_eq!(
            h.admission_tenant(DEFAULT_TENANT, "routers/simpleenroll"),
            "acme-corp"
        );
        assert_eq!(
            h.admission_tenant(DEFAULT_TENANT, "simpleenroll"),
            DEFAULT_TENANT
        );
        assert_eq!(
            h.admission_tenant(DEFAULT_TENANT, "unknown/simpleenroll"),
            DEFAULT_TENANT
        );
        // Under /t/{tenant}/ the URL's tenant stays (label() refuses a mismatch anyway).
        assert_eq!(h.admission_tenant("other", "routers/simpleenroll"), "other");
    }
}
