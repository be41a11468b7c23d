//! The CMP handler: parse → header checks → authenticate (MAC via `Cmp.ComputeMac`, signatures
//! here against the tenant's CA chain plus configured anchors) → one core call → a protected
//! response (MAC with a fresh salt when the request was MAC-protected, otherwise the tenant's
//! RA signature via `Cmp.SignProtection`).
//!
//! certConf needs the serial of the certificate being confirmed, but the edge is stateless and
//! certConf carries only a hash. The ip/cp/kup senderNonce is therefore 16 random bytes followed
//! by the serial; the client echoes it as recipNonce. The serial is trusted only after the
//! certificate fetched from the core hashes to the certConf's certHash and the certConf passed
//! the same authentication as the request.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use certgate_cmp::crypto;
use certgate_cmp::parse::{
    CertReqKind, ID_IT_CA_CERTS, ID_IT_CERT_REQ_TEMPLATE, ID_IT_CRL_STATUS_LIST, ID_IT_CRLS,
    ID_IT_ROOT_CA_KEY_UPDATE, Salvage, serial_hex,
};
use certgate_cmp::respond::{self, CertRepKind, Header, Status};
use certgate_cmp::{Body, CmpError, FailInfo, Limits, Protection, Request};
use certgate_proto::cmp::{ComputeMacRequest, ConfirmRequest, SignProtectionRequest};
use certgate_proto::core::{
    Identifier, IssueRequest, IssueResponse, KeyRequest, PollRequest, RevokeRequest, issue_request,
    issue_response,
};
use certgate_proto::{ErrorKind, RpcError};
use der::{Decode, Encode};
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::Full;
use spki::AlgorithmIdentifierOwned;
use tracing::{debug, info};
use x509_cert::Certificate;
use x509_cert::ext::pkix::name::GeneralName;

use super::CmpConfig;
use crate::error::{EdgeError, EdgeResponse};
use crate::router::{EdgeContext, EdgeRequest, Handler, HandlerFuture};

/// Metric: CMP messages by tenant, message type and outcome (`ok` or the failInfo name).
pub const CMP_MESSAGES_TOTAL: &str = "certgate_edge_cmp_messages_total";

const CONTENT_TYPE: &str = "application/pkixcmp";
const NONCE_RANDOM: usize = 16;

/// The CMP handler.
pub struct CmpHandler {
    limits: Limits,
    anchors: Vec<Certificate>,
}

/// Why the CMP handler could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CmpSetupError {
    /// A trust anchor file.
    #[error("CMP trust anchor {path}: {reason}")]
    Anchor {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl CmpHandler {
    /// Loads the configured trust anchors.
    pub fn new(cfg: &CmpConfig) -> Result<Self, CmpSetupError> {
        let mut anchors = Vec::new();
        for p in &cfg.trust_anchors {
            let err = |reason: String| CmpSetupError::Anchor {
                path: p.display().to_string(),
                reason,
            };
            let pem = std::fs::read(p).map_err(|e| err(e.to_string()))?;
            let certs = Certificate::load_pem_chain(&pem).map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no certificate".into()));
            }
            anchors.extend(certs);
        }
        Ok(Self {
            limits: Limits {
                max_message_bytes: cfg.max_message_bytes,
                max_extra_certs: 8,
                max_clock_skew_secs: cfg.max_clock_skew_seconds,
            },
            anchors,
        })
    }
}

impl Handler for CmpHandler {
    fn protocol(&self) -> &'static str {
        "cmp"
    }

    fn max_body_bytes(&self) -> Option<usize> {
        Some(self.limits.max_message_bytes)
    }

    fn handle<'a>(&'a self, ctx: &'a EdgeContext, req: EdgeRequest) -> HandlerFuture<'a> {
        Box::pin(self.serve(ctx, req))
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b
}

fn http_response(status: StatusCode, ct: &'static str, body: Vec<u8>) -> EdgeResponse {
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp
}

/// The profile named by the path: "" for the mount itself, `{name}` for `/p/{name}`.
fn profile_of(path: &str) -> Option<String> {
    match path {
        "" | "/" => Some(String::new()),
        p => {
            let name = p.strip_prefix("/p/")?.trim_end_matches('/');
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            ok.then(|| name.to_owned())
        }
    }
}

/// What an authenticated request proved about its sender.
struct Authenticated {
    /// Audited identity and the idempotency-key scope.
    identity: String,
    /// How to protect the response.
    mac_kid: Option<Vec<u8>>,
    /// The protecting certificate of a signature-protected request.
    signer: Option<Certificate>,
}

/// A response body and whether the client gets implicitConfirm / which extraCerts.
struct Reply {
    body: Vec<u8>,
    implicit_confirm: bool,
    extra_certs: Vec<Vec<u8>>,
    sender_nonce: Vec<u8>,
}

impl Reply {
    fn plain(body: Vec<u8>) -> Self {
        Self {
            body,
            implicit_confirm: false,
            extra_certs: Vec::new(),
            sender_nonce: random(NONCE_RANDOM),
        }
    }
}

/// The Issue idempotency key of a CMP transaction: the authenticated sender and transactionID.
fn cmp_key(auth: &Authenticated, msg: &Request) -> String {
    format!("cmp:{}:{}", auth.identity, hex::encode(&msg.transaction_id))
}

pub(super) fn core_fail(e: &RpcError, context: &str) -> CmpError {
    let fail = match e.kind {
        ErrorKind::AlreadyExists => FailInfo::TransactionIdInUse,
        ErrorKind::Malformed => FailInfo::BadRequest,
        ErrorKind::Unauthorized | ErrorKind::PolicyRefused => FailInfo::NotAuthorized,
        ErrorKind::NotFound if e.rule == "cmp.unknown_sender" => FailInfo::SignerNotTrusted,
        ErrorKind::NotFound => FailInfo::BadCertId,
        ErrorKind::Unavailable | ErrorKind::RateLimited => FailInfo::SystemUnavail,
        ErrorKind::Unspecified => FailInfo::SystemFailure,
    };
    let fail = if e.rule == "cmp.bad_mac_params" {
        FailInfo::BadAlg
    } else {
        fail
    };
    let text = match e.kind {
        ErrorKind::Unspecified => format!("{context}: internal error"),
        ErrorKind::AlreadyExists => {
            format!("{context}: this transactionID was already used for a different request")
        }
        _ => format!("{context}: {}", e.message),
    };
    CmpError::new(fail, text)
}

impl CmpHandler {
    async fn serve(&self, ctx: &EdgeContext, req: EdgeRequest) -> Result<EdgeResponse, EdgeError> {
        let Some(profile) = profile_of(&req.path) else {
            return Err(EdgeError::NotFound);
        };
        if req.method != Method::POST {
            return Err(EdgeError::MethodNotAllowed);
        }
        let ct_ok = req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case(CONTENT_TYPE));
        if !ct_ok {
            let mut r = crate::error::problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported Media Type",
                "CMP requests are POSTed as application/pkixcmp",
                None,
            );
            r.extensions_mut().insert(crate::metrics::Endpoint("cmp"));
            return Ok(r);
        }
        let start = Instant::now();
        let tenant = req.tenant.clone();
        let now = now_unix();
        let (label, result) = match certgate_cmp::parse(&req.body, &self.limits) {
            Err((e, salvage)) => ("invalid", Err((e, Some(*salvage), None))),
            Ok(msg) => {
                let label = msg.body.label();
                let r = self.process(ctx, &tenant, &profile, &msg, now).await;
                (
                    label,
                    r.map_err(|(e, mac_kid)| (e, None, Some((msg, mac_kid)))),
                )
            }
        };
        let der = match result {
            Ok(der) => {
                ::metrics::counter!(CMP_MESSAGES_TOTAL, "tenant" => tenant.clone(), "type" => label, "outcome" => "ok").increment(1);
                der
            }
            Err((e, salvage, parsed)) => {
                ::metrics::counter!(CMP_MESSAGES_TOTAL, "tenant" => tenant.clone(), "type" => label, "outcome" => e.fail.label()).increment(1);
                info!(tenant = %tenant, msg_type = label, fail = e.fail.label(), text = %e.text, "CMP request refused");
                self.error_message(ctx, &tenant, &e, salvage, parsed, now)
                    .await
            }
        };
        debug!(tenant = %tenant, msg_type = label, elapsed_ms = start.elapsed().as_millis() as u64, "CMP answered");
        let mut resp = http_response(StatusCode::OK, CONTENT_TYPE, der);
        resp.extensions_mut()
            .insert(crate::metrics::Endpoint(label));
        Ok(resp)
    }

    /// Everything after parsing; errors carry what authentication established (to protect the
    /// error response the same way).
    async fn process(
        &self,
        ctx: &EdgeContext,
        tenant: &str,
        profile: &str,
        msg: &Request,
        now: u64,
    ) -> Result<Vec<u8>, (CmpError, Option<Vec<u8>>)> {
        let protection = msg.check_header(now, &self.limits).map_err(|e| (e, None))?;
        let auth = self
            .authenticate(ctx, tenant, msg, &protection, now)
            .await
            .map_err(|e| (e, None))?;
        let mac_kid = auth.mac_kid.clone();
        let reply = self
            .dispatch(ctx, tenant, profile, msg, &auth, now)
            .await
            .map_err(|e| (e, mac_kid.clone()))?;
        self.protect(ctx, tenant, msg, mac_kid.as_deref(), reply, now)
            .await
            .map_err(|e| (e, None))
    }

    async fn authenticate(
        &self,
        ctx: &EdgeContext,
        tenant: &str,
        msg: &Request,
        protection: &Protection,
        now: u64,
    ) -> Result<Authenticated, CmpError> {
        match protection {
            Protection::Mac { sender_kid } => {
                let (Some(alg_der), Some(received)) = (&msg.protection_alg_der, &msg.protection)
                else {
                    return Err(CmpError::new(FailInfo::BadMessageCheck, "no protection"));
                };
                let mac = ctx
                    .core
                    .cmp_compute_mac(ComputeMacRequest {
                        tenant: tenant.to_owned(),
                        sender_kid: sender_kid.clone(),
                        protection_alg_der: alg_der.clone(),
                        protected_part_der: msg.protected_part_der.clone(),
                    })
                    .await
                    .map_err(|e| core_fail(&e, "MAC protection"))?;
                if aws_lc_rs::constant_time::verify_slices_are_equal(&mac.mac, received).is_err() {
                    return Err(CmpError::new(
                        FailInfo::BadMessageCheck,
                        "MAC protection does not verify (wrong shared secret?)",
                    ));
                }
                Ok(Authenticated {
                    identity: format!("ref:{}", printable(sender_kid)),
                    mac_kid: Some(sender_kid.clone()),
                    signer: None,
                })
            }
            Protection::Signature => {
                let mut anchors = self.anchors.clone();
                let chain = ctx
                    .core
                    .ca_chain(tenant, "")
                    .await
                    .map_err(|e| core_fail(&e, "trust anchors"))?;
                let mut tenant_cas = Vec::new();
                for der in &chain.chain_der {
                    if let Ok(c) = Certificate::from_der(der) {
                        tenant_cas.push(c.tbs_certificate.subject.clone());
                        anchors.push(c);
                    }
                }
                let cert = msg.verify_signature(&anchors, now)?;
                // RFC 9483 §3.5: a revoked protecting certificate fails path validation. For a
                // certificate of this tenant's CA the core's record is authoritative (one
                // `GetCertificate` per signature-protected request; MAC-protected requests pay
                // nothing). Certificates under `[cmp] trust_anchors` are not checked (docs/cmp.md).
                if tenant_cas.contains(&cert.tbs_certificate.issuer) {
                    check_not_revoked(ctx, tenant, cert).await?;
                }
                Ok(Authenticated {
                    identity: format!("cert:{}", serial_hex(cert)),
                    mac_kid: None,
                    signer: Some(cert.clone()),
                })
            }
        }
    }

    async fn dispatch(
        &self,
        ctx: &EdgeContext,
        tenant: &str,
        profile: &str,
        msg: &Request,
        auth: &Authenticated,
        now: u64,
    ) -> Result<Reply, CmpError> {
        let _ = now;
        match &msg.body {
            Body::CertReq(cr) => {
                let mut replaces = String::new();
                if cr.kind == CertReqKind::Kur {
                    // RFC 9483 §4.1.3: signed with the certificate being updated.
                    let Some(old) = &auth.signer else {
                        return Err(CmpError::new(
                            FailInfo::NotAuthorized,
                            "kur must be signature-protected by the certificate being updated",
                        ));
                    };
                    replaces = serial_hex(old);
                }
                let sans = cr
                    .sans
                    .iter()
                    .map(|(k, v)| Identifier {
                        r#type: match *k {
                            "dns" => 1,
                            "ip" => 2,
                            "email" => 3,
                            _ => 4,
                        },
                        value: v.clone(),
                    })
                    .collect();
                let kind = match cr.kind {
                    CertReqKind::Ir => CertRepKind::Ip,
                    CertReqKind::Cr => CertRepKind::Cp,
                    CertReqKind::Kur => CertRepKind::Kup,
                };
                self.issue(
                    ctx,
                    tenant,
                    profile,
                    msg,
                    auth,
                    issue_request::Request::KeyRequest(KeyRequest {
                        public_key_der: cr.public_key_der.clone(),
                        subject_der: cr.subject_der.clone(),
                        sans,
                    }),
                    replaces,
                    kind,
                )
                .await
            }
            Body::P10cr(csr) => {
                self.issue(
                    ctx,
                    tenant,
                    profile,
                    msg,
                    auth,
                    issue_request::Request::CsrDer(csr.clone()),
                    String::new(),
                    CertRepKind::Cp,
                )
                .await
            }
            Body::Rr(rr) => {
                if let Some(signer) = &auth.signer
                    && serial_hex(signer) != rr.serial_hex
                {
                    return Err(CmpError::new(
                        FailInfo::NotAuthorized,
                        "a signature-protected rr must be signed by the certificate it revokes",
                    ));
                }
                let resp = ctx
                    .core
                    .revoke(RevokeRequest {
                        tenant: tenant.to_owned(),
                        target: Some(certgate_proto::core::revoke_request::Target::SerialHex(
                            rr.serial_hex.clone(),
                        )),
                        reason: rr.reason,
                        idempotency_key: format!(
                            "cmp:{}:{}",
                            auth.identity,
                            hex::encode(&msg.transaction_id)
                        ),
                        protocol: "cmp".into(),
                        client_identity: auth.identity.clone(),
                    })
                    .await
                    .map_err(|e| core_fail(&e, "revocation"))?;
                info!(tenant, serial = %resp.serial_hex, already = resp.already_revoked, "CMP rr");
                Ok(Reply::plain(respond::rev_rep(Status::Accepted, None, None)))
            }
            Body::CertConf(statuses) => {
                let serial = msg
                    .recip_nonce
                    .as_ref()
                    .and_then(|n| n.get(NONCE_RANDOM..))
                    .filter(|s| !s.is_empty())
                    .map(hex::encode)
                    .ok_or_else(|| {
                        CmpError::new(
                            FailInfo::BadRecipientNonce,
                            "recipNonce does not belong to a certificate response of this server",
                        )
                    })?;
                for st in statuses {
                    if st.cert_req_id != 0 {
                        return Err(CmpError::new(FailInfo::BadRequest, "certReqId must be 0"));
                    }
                    let rec = ctx
                        .core
                        .get_certificate(tenant, &serial)
                        .await
                        .map_err(|e| core_fail(&e, "certConf"))?;
                    if crypto::cert_hash(&rec.certificate_der).as_deref()
                        != Some(st.cert_hash.as_slice())
                    {
                        return Err(CmpError::new(
                            FailInfo::BadCertId,
                            "certHash does not match the certificate of this transaction",
                        ));
                    }
                    let r = ctx
                        .core
                        .cmp_confirm(ConfirmRequest {
                            tenant: tenant.to_owned(),
                            serial_hex: serial.clone(),
                            accepted: st.accepted,
                            client_identity: auth.identity.clone(),
                            reason: st.reason.clone(),
                        })
                        .await
                        .map_err(|e| core_fail(&e, "certConf"))?;
                    info!(tenant, serial = %serial, accepted = st.accepted, already = r.already, revoked = r.revoked, "CMP certConf");
                }
                Ok(Reply::plain(respond::pki_conf()))
            }
            Body::Genm(types) => {
                let mut out = Vec::new();
                let mut missing = Vec::new();
                for t in types {
                    if *t == ID_IT_CA_CERTS {
                        let chain = ctx
                            .core
                            .ca_chain(tenant, "")
                            .await
                            .map_err(|e| core_fail(&e, "caCerts"))?;
                        out.push((*t, Some(respond::ca_certs_value(&chain.chain_der))));
                    } else if *t == ID_IT_ROOT_CA_KEY_UPDATE {
                        // RFC 9483 §4.3.2: absent infoValue = no root CA key update available.
                        // The core has no root rollover, so none is ever staged.
                        out.push((*t, None));
                    } else if *t == ID_IT_CERT_REQ_TEMPLATE {
                        // RFC 9483 §4.3.3: a template from the profile this path selects (cached
                        // Core.DescribeProfile); absent infoValue when there is no such profile or
                        // it gives nothing to put in a template.
                        let value = match ctx.core.describe_profile(tenant, profile).await {
                            Ok(d) => certgate_cmp::template::cert_req_template_value(
                                &crate::profile_policy::cmp_ask(&d),
                            )?,
                            Err(e) if e.kind == certgate_proto::ErrorKind::NotFound => None,
                            Err(e) => return Err(core_fail(&e, "certReqTemplate")),
                        };
                        out.push((*t, value));
                    } else if *t == ID_IT_CRL_STATUS_LIST {
                        // RFC 9483 §4.3.4: id-it-crls with the CRLs newer than the client's
                        // thisUpdate per source, absent when all are current (crl_status.rs).
                        let value = certgate_cmp::crl_status::genm_value(msg, *t).flatten();
                        let crls =
                            super::crl_status::crls_for(ctx, tenant, value.as_deref()).await?;
                        out.push((ID_IT_CRLS, crls.map(|c| respond::crls_value(&c))));
                    } else {
                        missing.push("unknown infoType");
                    }
                }
                if !missing.is_empty() {
                    return Err(CmpError::new(
                        FailInfo::BadRequest,
                        format!(
                            "genm: not supported by this server: {} (supported: caCerts, rootCaKeyUpdate, certReqTemplate, crlStatusList)",
                            missing.join(", ")
                        ),
                    ));
                }
                Ok(Reply::plain(respond::genp(&out)?))
            }
            Body::PollReq(id) => self.poll(ctx, tenant, msg, auth, *id).await,
            Body::Other(name) => Err(CmpError::new(
                FailInfo::BadRequest,
                format!("{name} is not a request this server accepts"),
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn issue(
        &self,
        ctx: &EdgeContext,
        tenant: &str,
        profile: &str,
        msg: &Request,
        auth: &Authenticated,
        request: issue_request::Request,
        replaces_serial: String,
        kind: CertRepKind,
    ) -> Result<Reply, CmpError> {
        let resp = ctx
            .core
            .issue(IssueRequest {
                tenant: tenant.to_owned(),
                profile: profile.to_owned(),
                request: Some(request),
                validated_identifiers: Vec::new(),
                protocol: "cmp".into(),
                client_identity: auth.identity.clone(),
                idempotency_key: cmp_key(auth, msg),
                validity_seconds: 0,
                issuer_id: String::new(),
                replaces_serial,
                await_confirmation: !msg.implicit_confirm,
                ..Default::default()
            })
            .await
            .map_err(|e| core_fail(&e, "issuance"))?;
        if resp.status == issue_response::Status::Pending as i32 {
            // RFC 9483 §4.4: held for manual approval; the client polls with pollReq.
            info!(tenant, pending = %resp.pending_id, identity = %auth.identity, "CMP request awaits approval");
            ::metrics::counter!("certgate_cmp_pending_total", "tenant" => tenant.to_owned())
                .increment(1);
            return Ok(Reply::plain(respond::cert_rep_waiting(
                kind,
                0,
                Some("the request awaits approval by an operator; poll with pollReq"),
            )));
        }
        info!(tenant, serial = %resp.serial_hex, identity = %auth.identity, implicit_confirm = msg.implicit_confirm, "CMP certificate issued");
        Self::cert_reply(ctx, tenant, auth, resp, kind, msg.implicit_confirm).await
    }

    /// pollReq (RFC 4210 §5.3.22, RFC 9483 §4.4): the same sender and transactionID name the
    /// same Issue; pollRep with checkAfter while it waits for an operator, then the certificate
    /// (in an ip: the edge is stateless and OpenSSL accepts ip/cp/kup after polling), or an error
    /// once denied (notAuthorized) or if nothing is pending (badCertId).
    async fn poll(
        &self,
        ctx: &EdgeContext,
        tenant: &str,
        msg: &Request,
        auth: &Authenticated,
        cert_req_id: u64,
    ) -> Result<Reply, CmpError> {
        if cert_req_id != 0 {
            return Err(CmpError::new(
                FailInfo::BadCertId,
                "pollReq: only certReqId 0 is ever answered with waiting",
            ));
        }
        let resp = ctx
            .core
            .poll_issue(PollRequest {
                tenant: tenant.to_owned(),
                idempotency_key: cmp_key(auth, msg),
                protocol: "cmp".into(),
                client_identity: auth.identity.clone(),
            })
            .await
            .map_err(|e| core_fail(&e, "pollReq"))?;
        if resp.status == issue_response::Status::Pending as i32 {
            return Ok(Reply::plain(respond::poll_rep(
                cert_req_id,
                u64::from(resp.retry_after_seconds.max(1)),
                Some("the request awaits approval by an operator"),
            )));
        }
        info!(tenant, serial = %resp.serial_hex, identity = %auth.identity, "CMP certificate delivered after polling");
        let kind = if auth.mac_kid.is_some() {
            CertRepKind::Ip
        } else {
            CertRepKind::Cp
        };
        let implicit = !resp.awaits_confirmation;
        Self::cert_reply(ctx, tenant, auth, resp, kind, implicit).await
    }

    /// ip/cp/kup with the issued certificate; the senderNonce carries the serial so a stateless
    /// edge can find it again on certConf.
    async fn cert_reply(
        ctx: &EdgeContext,
        tenant: &str,
        auth: &Authenticated,
        resp: IssueResponse,
        kind: CertRepKind,
        implicit_confirm: bool,
    ) -> Result<Reply, CmpError> {
        // caPubs: the root, for MAC-protected ir (RFC 9483 §4.1.1: trust bootstrapping).
        let mut ca_pubs = Vec::new();
        if kind == CertRepKind::Ip && auth.mac_kid.is_some() {
            let chain = ctx
                .core
                .ca_chain(tenant, &resp.issuer_id)
                .await
                .map_err(|e| core_fail(&e, "caPubs"))?;
            if let Some(root) = chain.chain_der.last() {
                ca_pubs.push(root.clone());
            }
        }
        let mut nonce = random(NONCE_RANDOM);
        nonce.extend(hex::decode(&resp.serial_hex).map_err(|_| {
            CmpError::new(FailInfo::SystemFailure, "the core returned a bad serial")
        })?);
        Ok(Reply {
            body: respond::cert_rep(kind, &resp.certificate_der, &ca_pubs),
            implicit_confirm,
            extra_certs: resp.chain_der,
            sender_nonce: nonce,
        })
    }

    /// Builds the header and protects: MAC when `mac_kid`, else the RA signature.
    async fn protect(
        &self,
        ctx: &EdgeContext,
        tenant: &str,
        msg: &Request,
        mac_kid: Option<&[u8]>,
        reply: Reply,
        now: u64,
    ) -> Result<Vec<u8>, CmpError> {
        let mut header = Header {
            pvno: msg.pvno,
            sender: msg.recipient.clone(),
            recipient: msg.sender.clone(),
            message_time_unix: now,
            protection_alg_der: None,
            sender_kid: None,
            transaction_id: msg.transaction_id.clone(),
            sender_nonce: reply.sender_nonce,
            recip_nonce: (!msg.sender_nonce.is_empty()).then(|| msg.sender_nonce.clone()),
            implicit_confirm: reply.implicit_confirm,
        };
        if let (Some(kid), Some(alg)) = (mac_kid, &msg.protection_alg_der) {
            let alg = respond::mac_alg_with_salt(alg, &random(16)).unwrap_or_else(|| alg.clone());
            header.protection_alg_der = Some(alg.clone());
            header.sender_kid = Some(kid.to_vec());
            let hdr = header.to_der()?;
            let pp = respond::protected_part(&hdr, &reply.body);
            let mac = ctx
                .core
                .cmp_compute_mac(ComputeMacRequest {
                    tenant: tenant.to_owned(),
                    sender_kid: kid.to_vec(),
                    protection_alg_der: alg,
                    protected_part_der: pp,
                })
                .await
                .map_err(|e| core_fail(&e, "response MAC"))?;
            return Ok(respond::assemble(
                &hdr,
                &reply.body,
                Some(&mac.mac),
                &reply.extra_certs,
            ));
        }
        let chain = ctx
            .core
            .cmp_protection_chain(tenant)
            .await
            .map_err(|e| core_fail(&e, "RA protection"))?;
        let ra = chain
            .chain_der
            .first()
            .and_then(|d| Certificate::from_der(d).ok())
            .ok_or_else(|| CmpError::new(FailInfo::SystemUnavail, "no RA certificate"))?;
        let alg_oid = crypto::protection_alg_for(&ra.tbs_certificate.subject_public_key_info)
            .ok_or_else(|| CmpError::new(FailInfo::SystemFailure, "RA key type"))?;
        let alg = AlgorithmIdentifierOwned {
            oid: alg_oid,
            parameters: None,
        }
        .to_der()
        .map_err(|_| CmpError::new(FailInfo::SystemFailure, "protectionAlg"))?;
        header.sender = GeneralName::DirectoryName(ra.tbs_certificate.subject.clone());
        header.protection_alg_der = Some(alg.clone());
        header.sender_kid = ski(&ra);
        let hdr = header.to_der()?;
        let pp = respond::protected_part(&hdr, &reply.body);
        let sig = ctx
            .core
            .cmp_sign_protection(SignProtectionRequest {
                tenant: tenant.to_owned(),
                protected_part_der: pp,
            })
            .await
            .map_err(|e| core_fail(&e, "RA protection"))?;
        let returned = AlgorithmIdentifierOwned::from_der(&sig.algorithm_der)
            .map(|a| a.oid)
            .ok();
        if returned != Some(alg_oid) {
            return Err(CmpError::new(
                FailInfo::SystemFailure,
                "RA signature algorithm differs from the RA certificate's key",
            ));
        }
        let mut extra = if sig.chain_der.is_empty() {
            chain.chain_der
        } else {
            sig.chain_der
        };
        for c in reply.extra_certs {
            if !extra.contains(&c) {
                extra.push(c);
            }
        }
        Ok(respond::assemble(
            &hdr,
            &reply.body,
            Some(&sig.signature),
            &extra,
        ))
    }

    /// An error message. Protected like a normal response when the request was authenticated
    /// by MAC (`mac_kid`) or signature protection is available; unprotected otherwise (clients
    /// need `-unprotected_errors` then, RFC 9483 §3.6.4).
    async fn error_message(
        &self,
        ctx: &EdgeContext,
        tenant: &str,
        err: &CmpError,
        salvage: Option<Salvage>,
        parsed: Option<(Request, Option<Vec<u8>>)>,
        now: u64,
    ) -> Vec<u8> {
        let body = respond::error_body(err);
        if let Some((msg, mac_kid)) = &parsed {
            let reply = Reply::plain(body.clone());
            if let Ok(der) = self
                .protect(ctx, tenant, msg, mac_kid.as_deref(), reply, now)
                .await
            {
                return der;
            }
        }
        // Unprotected: echo what can be echoed.
        let (tid, nonce, sender) = match (&parsed, salvage) {
            (Some((m, _)), _) => (
                m.transaction_id.clone(),
                Some(m.sender_nonce.clone()),
                m.sender.clone(),
            ),
            (None, Some(s)) => (
                s.transaction_id.unwrap_or_default(),
                s.sender_nonce,
                s.sender.unwrap_or_else(null_dn),
            ),
            (None, None) => (Vec::new(), None, null_dn()),
        };
        let header = Header {
            pvno: 2,
            sender: null_dn(),
            recipient: sender,
            message_time_unix: now,
            protection_alg_der: None,
            sender_kid: None,
            transaction_id: if tid.is_empty() { random(16) } else { tid },
            sender_nonce: random(NONCE_RANDOM),
            recip_nonce: nonce.filter(|n| !n.is_empty()),
            implicit_confirm: false,
        };
        match header.to_der() {
            Ok(h) => respond::assemble(&h, &body, None, &[]),
            Err(_) => Vec::new(),
        }
    }
}

/// Refuses (signerNotTrusted) a protecting certificate that the tenant's CA revoked, does not
/// know, or knows with other bytes under that serial.
async fn check_not_revoked(
    ctx: &EdgeContext,
    tenant: &str,
    cert: &Certificate,
) -> Result<(), CmpError> {
    let untrusted = |why: &str| CmpError::new(FailInfo::SignerNotTrusted, why);
    match ctx.core.get_certificate(tenant, &serial_hex(cert)).await {
        Ok(rec) if rec.revoked => Err(untrusted("the protecting certificate is revoked")),
        Ok(rec) => {
            let der = cert
                .to_der()
                .map_err(|_| CmpError::new(FailInfo::BadDataFormat, "protecting certificate"))?;
            if rec.certificate_der == der {
                Ok(())
            } else {
                Err(untrusted(
                    "the protecting certificate is not the one this CA issued under its serial",
                ))
            }
        }
        Err(e) if e.kind == ErrorKind::NotFound => Err(untrusted(
            "this CA has no record of the protecting certificate",
        )),
        Err(e) => Err(core_fail(&e, "protecting certificate status")),
    }
}

fn null_dn() -> GeneralName {
    GeneralName::DirectoryName(x509_cert::name::Name::default())
}

fn ski(cert: &Certificate) -> Option<Vec<u8>> {
    use x509_cert::ext::pkix::SubjectKeyIdentifier;
    let oid = const_oid::db::rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER;
    let ext = cert
        .tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id == oid)?;
    SubjectKeyIdentifier::from_der(ext.extn_value.as_bytes())
        .ok()
        .map(|s| s.0.as_bytes().to_vec())
}

/// A reference as text for logs and identities: UTF-8 when printable, hex otherwise.
fn printable(kid: &[u8]) -> String {
    match std::str::from_utf8(kid) {
        Ok(s) if s.bytes().all(|b| b.is_ascii_graphic()) => s.to_owned(),
        _ => hex::encode(kid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_paths() {
        assert_eq!(profile_of(""), Some(String::new()));
        assert_eq!(profile_of("/"), Some(String::new()));
        assert_eq!(profile_of("/p/iot"), Some("iot".into()));
        assert_eq!(profile_of("/p/"), None);
        assert_eq!(profile_of("/p/a b"), None);
        assert_eq!(profile_of("x"), None);
        assert_eq!(profile_of("/other"), None);
    }
}
