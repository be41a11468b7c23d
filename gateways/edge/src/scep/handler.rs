//! The SCEP handler: HTTP in, `certgate-scep` logic, core calls, CertRep out.

use base64::Engine as _;
use bytes::Bytes;
use certgate_proto::RpcError;
use certgate_proto::core::{GetCrlRequest, IssueResponse, PollRequest, issue_response};
use certgate_proto::scep::{DecryptKeyRequest, EnrollRequest, SignAttributesRequest};
use certgate_scep::{CertRep, FailInfo, MessageType, PkiMessage, RequestContent};
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::Full;
use sha2::Digest as _;
use tracing::{info, warn};

use crate::error::{EdgeError, EdgeResponse};
use crate::router::{EdgeContext, EdgeRequest, Handler, HandlerFuture};

/// Counter of PKIOperation messages by tenant, message type and outcome.
pub const SCEP_MESSAGES_TOTAL: &str = "certgate_scep_messages_total";

/// How long GetCACaps reuses the core's answer to "is a CA rollover staged for this tenant?":
/// clients ask GetCACaps before every operation, the answer changes only when an operator stages
/// or activates a rollover, and it may show that much later (docs/scep.md).
pub const NEXT_CA_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Most tenants whose rollover state is cached (I-8).
pub const NEXT_CA_CACHE_CAPACITY: u64 = 1024;
/// How long a PKIOperation reuses the tenant's RA certificate (to find the recipient info
/// addressed to the RA) instead of asking `Scep.GetRaChain` per message. A message addressed to
/// an RA certificate newer than the cached one (re-certified at a CA rollover) refetches at once,
/// so the TTL only bounds memory of a retired certificate. GetCACert always asks the core.
pub const RA_CERT_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// The SCEP handler (stateless: every pending fact lives in the core; the only local state is
/// a short, bounded cache of whether a rollover is staged, for GetCACaps).
#[derive(Debug)]
pub struct ScepHandler {
    next_ca_staged: moka::future::Cache<String, bool>,
    ra_cert: moka::future::Cache<String, Bytes>,
    /// `[scep] max_signing_time_skew_seconds`.
    signing_time_skew: std::time::Duration,
}

impl Default for ScepHandler {
    fn default() -> Self {
        Self::new()
    }
}

impl ScepHandler {
    /// A handler.
    pub fn new() -> Self {
        Self {
            next_ca_staged: moka::future::Cache::builder()
                .max_capacity(NEXT_CA_CACHE_CAPACITY)
                .time_to_live(NEXT_CA_CACHE_TTL)
                .build(),
            ra_cert: moka::future::Cache::builder()
                .max_capacity(NEXT_CA_CACHE_CAPACITY)
                .time_to_live(RA_CERT_CACHE_TTL)
                .build(),
            signing_time_skew: certgate_scep::DEFAULT_SIGNING_TIME_SKEW,
        }
    }

    /// A handler with edge.toml's `[scep]` settings.
    pub fn with_config(cfg: &super::ScepConfig) -> Self {
        Self {
            signing_time_skew: std::time::Duration::from_secs(cfg.max_signing_time_skew_seconds),
            ..Self::new()
        }
    }

    /// The tenant's RA certificate (DER), cached for [`RA_CERT_CACHE_TTL`]; `fresh` skips the
    /// cache (and refills it).
    async fn ra_cert(
        &self,
        ctx: &EdgeContext,
        tenant: &str,
        fresh: bool,
    ) -> Result<Bytes, EdgeError> {
        if !fresh && let Some(hit) = self.ra_cert.get(tenant).await {
            return Ok(hit);
        }
        let ra = ctx.core.scep_ra_chain(tenant).await?;
        let Some(cert) = ra.chain_der.into_iter().next() else {
            return Err(EdgeError::Malformed("tenant has no SCEP RA".into()));
        };
        let cert = Bytes::from(cert);
        self.ra_cert.insert(tenant.to_owned(), cert.clone()).await;
        Ok(cert)
    }

    /// Whether the tenant has a next CA staged (cached). A core that cannot answer counts as
    /// "no" here and is not cached: GetCACaps then simply does not offer GetNextCACert.
    async fn next_ca_staged(&self, ctx: &EdgeContext, tenant: &str) -> bool {
        if let Some(hit) = self.next_ca_staged.get(tenant).await {
            return hit;
        }
        let staged = match ctx.core.next_ca_chain(tenant).await {
            Ok(_) => true,
            Err(e) if e.kind == certgate_proto::ErrorKind::NotFound => false,
            Err(e) => {
                warn!(tenant, error = %e, "GetCACaps: rollover state unknown");
                return false;
            }
        };
        self.next_ca_staged.insert(tenant.to_owned(), staged).await;
        staged
    }
}

impl Handler for ScepHandler {
    fn protocol(&self) -> &'static str {
        "scep"
    }

    fn max_body_bytes(&self) -> Option<usize> {
        Some(certgate_scep::MAX_MESSAGE_LEN)
    }

    fn handle<'a>(&'a self, ctx: &'a EdgeContext, req: EdgeRequest) -> HandlerFuture<'a> {
        Box::pin(serve(self, ctx, req))
    }
}

fn response(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> EdgeResponse {
    let mut resp = http::Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            // base64's '+' arrives unescaped from some clients; never turn it into a space.
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

fn query_param(query: Option<&str>, name: &str) -> Option<Vec<u8>> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v)).flatten()
    })
}

fn bad_request(why: &str) -> EdgeResponse {
    response(StatusCode::BAD_REQUEST, "text/plain", why.to_owned())
}

async fn serve(
    h: &ScepHandler,
    ctx: &EdgeContext,
    req: EdgeRequest,
) -> Result<EdgeResponse, EdgeError> {
    if !matches!(req.path.as_str(), "" | "/" | "/pkiclient.exe") {
        return Err(EdgeError::NotFound);
    }
    let op = query_param(req.query.as_deref(), "operation").unwrap_or_default();
    match (req.method.clone(), op.as_slice()) {
        (Method::GET, b"GetCACaps") => Ok(response(
            StatusCode::OK,
            "text/plain",
            if h.next_ca_staged(ctx, &req.tenant).await {
                certgate_scep::ca_caps_with_next_ca()
            } else {
                certgate_scep::ca_caps()
            },
        )),
        (Method::GET, b"GetCACert") => {
            let chain = ctx.core.scep_ra_chain(&req.tenant).await?;
            let der = certgate_scep::ca_cert_response(&chain.chain_der)
                .map_err(|e| EdgeError::Malformed(e.to_string()))?;
            Ok(response(
                StatusCode::OK,
                "application/x-x509-ca-ra-cert",
                der,
            ))
        }
        // RFC 8894 §3.5.2 / §4.7.1: the staged next CA (docs/operations.md, "Issuing CA
        // rollover") in a SignedData signed by the current RA; with nothing staged a plain 404
        // that says why, never an empty or made-up SignedData.
        (Method::GET, b"GetNextCACert") => next_ca_cert(ctx, &req.tenant).await,
        (Method::GET, b"PKIOperation") => {
            let Some(b64) = query_param(req.query.as_deref(), "message") else {
                return Ok(bad_request("missing message"));
            };
            let b64: Vec<u8> = b64
                .into_iter()
                .filter(|c| !c.is_ascii_whitespace())
                .map(|c| if c == b' ' { b'+' } else { c })
                .collect();
            let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&b64) else {
                return Ok(bad_request("message is not base64"));
            };
            pki_operation(h, ctx, &req.tenant, &der).await
        }
        (Method::POST, b"PKIOperation") => pki_operation(h, ctx, &req.tenant, &req.body).await,
        (Method::GET | Method::POST, _) => Ok(bad_request("unknown operation")),
        _ => Err(EdgeError::MethodNotAllowed),
    }
}

async fn next_ca_cert(ctx: &EdgeContext, tenant: &str) -> Result<EdgeResponse, EdgeError> {
    let count = |outcome: &'static str| {
        metrics::counter!(SCEP_MESSAGES_TOTAL, "tenant" => tenant.to_owned(), "type" => "GetNextCACert", "outcome" => outcome).increment(1);
    };
    let next = match ctx.core.next_ca_chain(tenant).await {
        Ok(n) => n,
        Err(e) if e.kind == certgate_proto::ErrorKind::NotFound => {
            count("no_next_ca");
            return Ok(response(
                StatusCode::NOT_FOUND,
                "text/plain",
                "no next CA certificate: no CA rollover is staged for this tenant\n",
            ));
        }
        Err(e) => return Err(EdgeError::Core(e)),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let enc = |e: certgate_scep::ScepError| EdgeError::Malformed(e.to_string());
    let msg = certgate_scep::NextCaCert::new(&next.chain_der, now).map_err(enc)?;
    let signed = ctx
        .core
        .scep_sign_attributes(SignAttributesRequest {
            tenant: tenant.to_owned(),
            signed_attributes_der: msg.signed_attributes_der().to_vec(),
            digest: msg.digest().name().to_owned(),
        })
        .await?;
    let body = msg
        .finish(&signed.signature, &signed.ra_cert_der)
        .map_err(enc)?;
    count("ok");
    info!(tenant, next = %next.issuer_id, "GetNextCACert served");
    Ok(response(
        StatusCode::OK,
        certgate_scep::NEXT_CA_CERT_CONTENT_TYPE,
        body,
    ))
}

fn type_label(t: MessageType) -> &'static str {
    match t {
        MessageType::PkcsReq => "PKCSReq",
        MessageType::RenewalReq => "RenewalReq",
        MessageType::CertPoll => "CertPoll",
        MessageType::GetCert => "GetCert",
        MessageType::GetCrl => "GetCRL",
        MessageType::CertRep => "CertRep",
    }
}

fn fail_label(f: FailInfo) -> &'static str {
    match f {
        FailInfo::BadAlg => "badAlg",
        FailInfo::BadMessageCheck => "badMessageCheck",
        FailInfo::BadRequest => "badRequest",
        FailInfo::BadTime => "badTime",
        FailInfo::BadCertId => "badCertId",
    }
}

/// A core refusal that the client caused becomes a failInfo; a core that is down or broken
/// stays an edge error (HTTP 5xx), so the client retries instead of giving up.
fn core_fail(e: RpcError) -> Result<FailInfo, EdgeError> {
    use certgate_proto::ErrorKind;
    info!(rule = %e.rule, message = %e.message, "SCEP request refused by the core");
    match e.rule.as_str() {
        "scep.decrypt_failed" => return Ok(FailInfo::BadMessageCheck),
        "scep.unsupported_alg" => return Ok(FailInfo::BadAlg),
        "scep.bad_challenge" => return Ok(FailInfo::BadRequest),
        _ => {}
    }
    match e.kind {
        ErrorKind::Malformed
        | ErrorKind::PolicyRefused
        | ErrorKind::Unauthorized
        | ErrorKind::AlreadyExists => Ok(FailInfo::BadRequest),
        ErrorKind::NotFound => Ok(FailInfo::BadCertId),
        _ => Err(EdgeError::Core(e)),
    }
}

fn serial_hex(serial: &[u8]) -> String {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    hex::encode(&serial[start..])
}

async fn pki_operation(
    h: &ScepHandler,
    ctx: &EdgeContext,
    tenant: &str,
    der: &[u8],
) -> Result<EdgeResponse, EdgeError> {
    // A signingTime outside the window is refused like any unverifiable message: CertRep
    // FAILURE badTime, counted with type "unknown".
    let now = std::time::SystemTime::now();
    let msg = match certgate_scep::parse_pki_message_at(der, now, h.signing_time_skew) {
        Ok(m) => m,
        Err(e) => {
            metrics::counter!(SCEP_MESSAGES_TOTAL, "tenant" => tenant.to_owned(), "type" => "unknown", "outcome" => fail_label(e.fail_info)).increment(1);
            warn!(tenant, reason = %e.reason, fail = fail_label(e.fail_info), "SCEP message refused");
            // RFC 8894 §3.3.2.2: answer a CertRep FAILURE whenever the message names a
            // transactionID and senderNonce to echo; without them there is nobody to address
            // a CertRep to, and the answer is HTTP 400.
            let Some(to) = e.reply_to.as_deref() else {
                return Ok(bad_request("malformed SCEP message"));
            };
            let rep = CertRep::failure_to(to, e.fail_info)
                .map_err(|e| EdgeError::Malformed(e.to_string()))?;
            return sign_cert_rep(ctx, tenant, rep).await;
        }
    };
    let label = type_label(msg.message_type);
    if matches!(
        msg.message_type,
        MessageType::PkcsReq | MessageType::RenewalReq
    ) {
        return enroll(ctx, tenant, &msg, label).await;
    }
    let kt = match msg.key_transport(&h.ra_cert(ctx, tenant, false).await?) {
        Ok(kt) => Ok(kt),
        // Perhaps addressed to an RA certificate newer than the cached one: ask the core.
        Err(_) => msg.key_transport(&h.ra_cert(ctx, tenant, true).await?),
    };
    let rep = match decide(ctx, tenant, &msg, kt).await? {
        Ok(rep) => {
            metrics::counter!(SCEP_MESSAGES_TOTAL, "tenant" => tenant.to_owned(), "type" => label, "outcome" => "ok").increment(1);
            rep
        }
        Err(fail) => {
            metrics::counter!(SCEP_MESSAGES_TOTAL, "tenant" => tenant.to_owned(), "type" => label, "outcome" => fail_label(fail)).increment(1);
            info!(tenant, tx = %msg.transaction_id, r#type = label, fail = fail_label(fail), "SCEP FAILURE");
            CertRep::failure(&msg, fail).map_err(|e| EdgeError::Malformed(e.to_string()))?
        }
    };
    sign_cert_rep(ctx, tenant, rep).await
}

/// PKCSReq and RenewalReq: one `Scep.Enroll` (the core decrypts with the RA key, checks the
/// challenge or the renewed certificate, issues, and returns the RA-signed CertRep) instead of
/// four core calls (docs/performance.md, "EST and SCEP enrollment").
async fn enroll(
    ctx: &EdgeContext,
    tenant: &str,
    msg: &PkiMessage,
    label: &'static str,
) -> Result<EdgeResponse, EdgeError> {
    let answer = ctx
        .core
        .scep_enroll(EnrollRequest {
            tenant: tenant.to_owned(),
            message_type: msg.message_type.code().to_owned(),
            transaction_id: msg.transaction_id.clone(),
            sender_nonce: msg.sender_nonce.clone(),
            signer_cert_der: msg.signer_cert_der.clone(),
            digest: msg.digest.name().to_owned(),
            enveloped_data_der: msg.enveloped_der().to_vec(),
        })
        .await;
    let answer = match answer {
        Ok(a) => a,
        // A request the core refused outright (it should not happen for a message this edge
        // parsed): a FAILURE signed the usual way; a core that cannot answer: HTTP 5xx.
        Err(e) => {
            let fail = core_fail(e)?;
            metrics::counter!(SCEP_MESSAGES_TOTAL, "tenant" => tenant.to_owned(), "type" => label, "outcome" => fail_label(fail)).increment(1);
            let rep =
                CertRep::failure(msg, fail).map_err(|e| EdgeError::Malformed(e.to_string()))?;
            return sign_cert_rep(ctx, tenant, rep).await;
        }
    };
    let outcome = match answer.fail_info.as_str() {
        "" => "ok",
        "badAlg" => "badAlg",
        "badMessageCheck" => "badMessageCheck",
        "badRequest" => "badRequest",
        "badTime" => "badTime",
        "badCertId" => "badCertId",
        _ => "failure",
    };
    metrics::counter!(SCEP_MESSAGES_TOTAL, "tenant" => tenant.to_owned(), "type" => label, "outcome" => outcome).increment(1);
    if outcome != "ok" {
        info!(tenant, tx = %msg.transaction_id, r#type = label, fail = outcome, "SCEP FAILURE");
    }
    Ok(response(
        StatusCode::OK,
        "application/x-pki-message",
        answer.cert_rep_der,
    ))
}

/// Has the RA sign `rep` (`Scep.SignAttributes`) and answers it.
async fn sign_cert_rep(
    ctx: &EdgeContext,
    tenant: &str,
    rep: CertRep,
) -> Result<EdgeResponse, EdgeError> {
    let signed = ctx
        .core
        .scep_sign_attributes(SignAttributesRequest {
            tenant: tenant.to_owned(),
            signed_attributes_der: rep.signed_attributes_der().to_vec(),
            digest: rep.digest().name().to_owned(),
        })
        .await?;
    let body = rep
        .finish(&signed.signature, &signed.ra_cert_der)
        .map_err(|e| EdgeError::Malformed(e.to_string()))?;
    Ok(response(StatusCode::OK, "application/x-pki-message", body))
}

type Decision = Result<CertRep, FailInfo>;

/// The Issue idempotency key of a SCEP transaction: its transactionID and the client's key.
fn idempotency_key(msg: &PkiMessage) -> String {
    format!(
        "scep:{}:{}",
        msg.transaction_id,
        hex::encode(sha2::Sha256::digest(&msg.signer_spki_der))
    )
}

/// The CertRep for an Issue (or a poll of one): SUCCESS with the certificate, PENDING while an
/// operator has not approved it (RFC 8894 §3.3.2), FAILURE for a refusal (a denied request is a
/// policy refusal → badRequest).
fn issued_rep(
    msg: &PkiMessage,
    issued: Result<IssueResponse, RpcError>,
) -> Result<Decision, EdgeError> {
    let enc = |e: certgate_scep::ScepError| EdgeError::Malformed(e.to_string());
    match issued {
        Ok(r) if r.status == issue_response::Status::Pending as i32 => {
            info!(tx = %msg.transaction_id, pending = %r.pending_id, "SCEP request awaits approval");
            metrics::counter!("certgate_scep_pending_total").increment(1);
            Ok(Ok(CertRep::pending(msg).map_err(enc)?))
        }
        Ok(r) => {
            let mut certs = vec![r.certificate_der];
            certs.extend(r.chain_der);
            Ok(Ok(CertRep::success(msg, &certs, &[]).map_err(enc)?))
        }
        Err(e) => core_fail(e).map(Err),
    }
}

async fn decide(
    ctx: &EdgeContext,
    tenant: &str,
    msg: &PkiMessage,
    kt: Result<certgate_scep::KeyTransport, certgate_scep::ScepError>,
) -> Result<Decision, EdgeError> {
    let kt = match kt {
        Ok(kt) => kt,
        Err(e) => return Ok(Err(e.fail_info)),
    };
    let cek = match ctx
        .core
        .scep_decrypt_key(DecryptKeyRequest {
            tenant: tenant.to_owned(),
            encrypted_key: kt.encrypted_key,
            key_encryption_alg_der: kt.key_encryption_alg_der,
        })
        .await
    {
        Ok(r) => zeroize::Zeroizing::new(r.content_encryption_key),
        Err(e) => return core_fail(e).map(Err),
    };
    let content = match msg.decrypt_content(&cek) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e.fail_info)),
    };
    drop(cek);
    let enc = |e: certgate_scep::ScepError| EdgeError::Malformed(e.to_string());
    // PKCSReq and RenewalReq go to `Scep.Enroll` (see [`enroll`]) and never get here.
    match (msg.message_type, content) {
        // RFC 8894 §3.3.3: polling a request held for manual approval. The poll is signed by the
        // same client key under the same transactionID, so it names the same idempotency key;
        // nothing requested under it → badCertId.
        (MessageType::CertPoll, RequestContent::Poll { .. }) => {
            let polled = ctx
                .core
                .poll_issue(PollRequest {
                    tenant: tenant.to_owned(),
                    idempotency_key: idempotency_key(msg),
                    protocol: "scep".into(),
                    client_identity: format!("scep:{}", msg.transaction_id),
                })
                .await;
            issued_rep(msg, polled)
        }
        (MessageType::GetCert, RequestContent::IssuerSerial(ias)) => {
            match ctx
                .core
                .get_certificate(tenant, &serial_hex(&ias.serial))
                .await
            {
                Ok(rec) => Ok(Ok(
                    CertRep::success(msg, &[rec.certificate_der], &[]).map_err(enc)?
                )),
                Err(e) => core_fail(e).map(Err),
            }
        }
        (MessageType::GetCrl, RequestContent::IssuerSerial(ias)) => {
            // The full CRL of the issuer of the named certificate (a certificate of this CA).
            let rec = match ctx
                .core
                .get_certificate(tenant, &serial_hex(&ias.serial))
                .await
            {
                Ok(rec) => rec,
                Err(e) => return core_fail(e).map(Err),
            };
            let crl = ctx
                .core
                .get_crl(GetCrlRequest {
                    tenant: tenant.to_owned(),
                    issuer_id: rec.issuer_id,
                    shard: "full".into(),
                })
                .await;
            match crl {
                Ok(c) => Ok(Ok(CertRep::success(msg, &[], &[c.crl_der]).map_err(enc)?)),
                Err(e) => core_fail(e).map(Err),
            }
        }
        _ => Ok(Err(FailInfo::BadRequest)),
    }
}
