//! The tonic `Scep` (edges; Core allow-list) and `ScepAdmin` (CLI; Admin allow-list) services.
//! Every RPC checks the caller first (fail closed, I-5) and audits a denial. Challenge passwords
//! and unwrapped content-encryption keys are held in [`Zeroizing`] buffers, never logged and
//! never audited.

use std::sync::Arc;

use certgate_proto::Caller;
use certgate_proto::core::{IssueRequest, issue_request, issue_response};
use certgate_proto::scep::scep_admin_server::ScepAdmin;
use certgate_proto::scep::scep_server::Scep;
use certgate_proto::scep::{
    CheckChallengeRequest, CheckChallengeResponse, DecryptKeyRequest, DecryptKeyResponse,
    EnrollRequest, EnrollResponse, GetRaChainRequest, GetRaChainResponse, PutChallengeRequest,
    PutChallengeResponse, SignAttributesRequest, SignAttributesResponse,
};
use certgate_proto::signer::{Algorithm, KeyTransport};
use certgate_proto::transport::caller_of;
use certgate_scep::{CertRep, FailInfo, MessageType, PkiMessage, PkiStatus, RequestContent};
use const_oid::ObjectIdentifier;
use der::{Decode, Sequence, Tagged};
use serde_json::json;
use spki::AlgorithmIdentifierOwned;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::ra;
use super::{
    GENERATED_CHALLENGE_BYTES, MAX_CHALLENGE, MAX_ENCRYPTED_KEY, MAX_ONE_TIME_CHALLENGES,
    MAX_PROFILE, MAX_SIGNED_ATTRIBUTES, ONE_TIME_VALIDITY_SECONDS,
};
use crate::audit::AuditEntry;
use crate::error::{CoreError, Result};
use crate::service::State;
use crate::signer_client::Signer;
use crate::store::scep::{ChallengeMatch, ScepStore, challenge_digest};

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const RSAES_OAEP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.7");
const ID_MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
const ID_P_SPECIFIED: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.9");
const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");

/// What the SCEP services share.
pub struct ScepState {
    /// The core's state (store, issuer, allow-lists).
    pub core: Arc<State>,
    /// The signer (SCEP_RA keys).
    pub signer: Signer,
    /// Serialises RA creation in this process.
    pub(crate) ra_lock: tokio::sync::Mutex<()>,
    /// Tenant → RA record recently read from the store, when, and the rollover generation
    /// then (bounded, short TTL; `ra::ensure_ra`).
    #[allow(clippy::type_complexity)]
    pub(crate) ra_cache: std::sync::Mutex<
        std::collections::HashMap<String, (crate::store::cmp::RaRec, std::time::Instant, u64)>,
    >,
}

impl ScepState {
    /// The SCEP state over the core's.
    pub fn new(core: Arc<State>, signer: Signer) -> Self {
        Self {
            core,
            signer,
            ra_lock: tokio::sync::Mutex::new(()),
            ra_cache: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The SCEP tables of the store.
    pub fn store(&self) -> Result<&dyn ScepStore> {
        self.core
            .store
            .as_scep()
            .ok_or_else(|| CoreError::Internal("this store has no SCEP tables".into()))
    }

    fn check(&self, admin: bool, caller: &Caller, rpc: &str) -> Result<()> {
        let (list, rule) = if admin {
            (&self.core.admin_allow, "admin.caller_not_allowed")
        } else {
            (&self.core.allow, "core.caller_not_allowed")
        };
        if list.admits(caller) {
            return Ok(());
        }
        let _ = self.core.store.append_audit(&AuditEntry::new(
            "auth.denied",
            "",
            caller,
            json!({"rpc": rpc, "rule": rule}),
        ));
        tracing::info!(%caller, rpc, "caller denied");
        Err(CoreError::Unauthorized { rule })
    }

    fn tenant_exists(&self, tenant: &str) -> Result<()> {
        blocking(|| self.core.store.get_tenant(tenant))?
            .map(|_| ())
            .ok_or_else(|| CoreError::not_found("tenant.unknown", "no such tenant"))
    }

    /// Sets the static challenge of (tenant, profile) (used by `certgate up` bootstrap and
    /// `ScepAdmin.PutChallenge`).
    pub fn put_static_challenge(
        &self,
        tenant: &str,
        profile: &str,
        secret: &[u8],
        caller: &str,
    ) -> Result<bool> {
        check_profile(profile)?;
        if secret.is_empty() || secret.len() > MAX_CHALLENGE {
            return Err(CoreError::malformed(
                "scep.challenge",
                format!("a challenge is 1 to {MAX_CHALLENGE} bytes"),
            ));
        }
        let audit = AuditEntry::new(
            "scep.challenge.put",
            tenant,
            caller,
            json!({"profile": profile, "one_time": false}),
        );
        let store = self.store()?;
        blocking(|| {
            store.put_scep_static_challenge(
                tenant,
                profile,
                challenge_digest(secret),
                crate::now_unix(),
                &audit,
            )
        })
    }
}

pub(crate) use crate::ra::blocking;

fn count(rpc: &'static str, tenant: &str, outcome: &'static str) {
    metrics::counter!("certgate_scep_core_requests_total",
        "protocol" => "scep", "rpc" => rpc, "tenant" => tenant.to_owned(), "outcome" => outcome)
    .increment(1);
}

fn outcome_of<T>(r: &Result<T>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(CoreError::NotFound { .. }) => "not_found",
        Err(CoreError::Malformed { .. }) => "malformed",
        Err(CoreError::Policy { .. }) => "refused",
        Err(_) => "error",
    }
}

fn check_profile(profile: &str) -> Result<()> {
    if profile.len() > MAX_PROFILE {
        return Err(CoreError::malformed(
            "scep.profile",
            format!("profile names are at most {MAX_PROFILE} bytes"),
        ));
    }
    Ok(())
}

/// RSAES-OAEP-params (RFC 8017 A.2.1 / RFC 4055 §4.1).
#[derive(Clone, Debug, Sequence)]
struct OaepParams {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    hash: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    mask_gen: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", optional = "true")]
    p_source: Option<AlgorithmIdentifierOwned>,
}

fn unsupported(what: impl Into<String>) -> CoreError {
    CoreError::malformed("scep.unsupported_alg", what)
}

/// The key-transport scheme a KeyTransRecipientInfo's keyEncryptionAlgorithm names: rsaEncryption
/// (PKCS#1 v1.5), or RSAES-OAEP with SHA-1 (the defaults) or SHA-256 (hash and MGF1 alike) and an
/// empty label. Anything else is `scep.unsupported_alg` (→ failInfo badAlg).
pub fn key_transport_of(alg_der: &[u8]) -> Result<KeyTransport> {
    let id = AlgorithmIdentifierOwned::from_der(alg_der)
        .map_err(|_| unsupported("keyEncryptionAlgorithm is not a DER AlgorithmIdentifier"))?;
    if id.oid == RSA_ENCRYPTION {
        return Ok(KeyTransport::RsaPkcs1V15);
    }
    if id.oid != RSAES_OAEP {
        return Err(unsupported(format!(
            "key encryption algorithm {} is not supported",
            id.oid
        )));
    }
    let params = match id.parameters.as_ref() {
        None => OaepParams {
            hash: None,
            mask_gen: None,
            p_source: None,
        },
        Some(p) => p
            .decode_as::<OaepParams>()
            .map_err(|_| unsupported("bad RSAES-OAEP parameters"))?,
    };
    let hash = params.hash.as_ref().map_or(ID_SHA1, |h| h.oid);
    let mgf_hash = match params.mask_gen.as_ref() {
        None => ID_SHA1,
        Some(m) if m.oid == ID_MGF1 => m
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<AlgorithmIdentifierOwned>().ok())
            .map(|h| h.oid)
            .ok_or_else(|| unsupported("bad MGF1 parameters"))?,
        Some(_) => return Err(unsupported("only MGF1 is supported")),
    };
    if let Some(p) = params.p_source.as_ref() {
        let empty = p.oid == ID_P_SPECIFIED
            && p.parameters
                .as_ref()
                .is_none_or(|v| v.tag() == der::Tag::OctetString && v.value().is_empty());
        if !empty {
            return Err(unsupported("OAEP labels are not supported"));
        }
    }
    match (hash, mgf_hash) {
        (h, m) if h == ID_SHA1 && m == ID_SHA1 => Ok(KeyTransport::RsaOaepSha1),
        (h, m) if h == ID_SHA256 && m == ID_SHA256 => Ok(KeyTransport::RsaOaepSha256),
        _ => Err(unsupported(
            "RSAES-OAEP is supported with SHA-1 or SHA-256 (same hash for MGF1)",
        )),
    }
}

/// The `Scep` service (edges).
#[derive(Clone)]
pub struct ScepService(pub Arc<ScepState>);

/// The `ScepAdmin` service (CLI).
#[derive(Clone)]
pub struct ScepAdminService(pub Arc<ScepState>);

impl ScepService {
    async fn decrypt_key(
        &self,
        r: &DecryptKeyRequest,
        caller: &Caller,
    ) -> Result<Zeroizing<Vec<u8>>> {
        if r.encrypted_key.is_empty() || r.encrypted_key.len() > MAX_ENCRYPTED_KEY {
            return Err(CoreError::malformed(
                "scep.decrypt_failed",
                "the encryptedKey has an impossible length",
            ));
        }
        let scheme = key_transport_of(&r.key_encryption_alg_der)?;
        let (ra, _) = ra::ensure_ra(&self.0, &r.tenant, caller).await?;
        self.0
            .signer
            .decrypt(&ra.signer_key_id, scheme, r.encrypted_key.clone())
            .await
            .map_err(|e| match e {
                CoreError::Signer(s) if s.rule == "signer.decrypt_failed" => CoreError::malformed(
                    "scep.decrypt_failed",
                    "the encryptedKey does not decrypt under the RA key",
                ),
                other => other,
            })
    }

    async fn sign_attributes(
        &self,
        r: &SignAttributesRequest,
        caller: &Caller,
    ) -> Result<SignAttributesResponse> {
        if r.signed_attributes_der.is_empty()
            || r.signed_attributes_der.len() > MAX_SIGNED_ATTRIBUTES
        {
            return Err(CoreError::malformed(
                "scep.signed_attributes",
                format!("SignedAttributes must be 1 to {MAX_SIGNED_ATTRIBUTES} bytes"),
            ));
        }
        let (ra, _) = ra::ensure_ra(&self.0, &r.tenant, caller).await?;
        let signature = self
            .ra_sign(&ra, &r.digest, &r.signed_attributes_der)
            .await?;
        Ok(SignAttributesResponse {
            signature,
            ra_cert_der: ra.cert_der,
        })
    }

    /// Has the signer sign `signed_attributes_der` with the RA key (RSA PKCS#1 v1.5 with
    /// `digest`: "sha256" or "sha512"; audited by the signer) and checks the signature against
    /// the RA certificate before it leaves the core.
    async fn ra_sign(
        &self,
        ra: &crate::store::cmp::RaRec,
        digest: &str,
        signed_attributes_der: &[u8],
    ) -> Result<Vec<u8>> {
        let alg = match digest {
            "" | "sha256" => Algorithm::RsaPkcs1Sha256,
            "sha512" => Algorithm::RsaPkcs1Sha512,
            other => {
                return Err(unsupported(format!(
                    "digest {:?} is not supported for RA signatures (sha256, sha512)",
                    other.chars().take(32).collect::<String>()
                )));
            }
        };
        let signature = self
            .0
            .signer
            .sign(&ra.signer_key_id, alg, signed_attributes_der.to_vec())
            .await?;
        crate::x509::verify_signature(
            &crate::issue::spki_of(&ra.cert_der)?,
            alg,
            signed_attributes_der,
            &signature,
        )?;
        Ok(signature)
    }

    fn check_challenge(
        &self,
        r: &CheckChallengeRequest,
        challenge: &[u8],
        caller: &Caller,
    ) -> Result<bool> {
        check_profile(&r.profile)?;
        if challenge.is_empty() || challenge.len() > MAX_CHALLENGE {
            return Ok(false);
        }
        let store = self.0.store()?;
        let audit = AuditEntry::new(
            "scep.challenge.consumed",
            &r.tenant,
            caller,
            json!({"profile": r.profile}),
        );
        let digest = challenge_digest(challenge);
        let m = blocking(|| {
            store.check_scep_challenge(&r.tenant, &r.profile, digest, crate::now_unix(), &audit)
        })?;
        Ok(m != ChallengeMatch::None)
    }
}

/// What a PKCSReq/RenewalReq is answered with: a CertRep to build, or the failInfo of a FAILURE.
type Decision = std::result::Result<Answer, FailInfo>;

/// A non-FAILURE answer.
enum Answer {
    /// SUCCESS with the issued certificate and its chain.
    Issued(Vec<Vec<u8>>),
    /// PENDING: held for manual approval.
    Pending,
}

/// The failInfo for a refusal the client caused (the edge's mapping before `Scep.Enroll`:
/// RFC 8894 §3.3.2.2); `Err` for a core or signer that cannot answer now (the client retries).
fn fail_info_of(e: CoreError) -> Result<FailInfo> {
    match &e {
        CoreError::Malformed { rule, .. } if *rule == "scep.decrypt_failed" => {
            Ok(FailInfo::BadMessageCheck)
        }
        CoreError::Malformed { rule, .. } if *rule == "scep.unsupported_alg" => {
            Ok(FailInfo::BadAlg)
        }
        CoreError::Malformed { .. }
        | CoreError::Policy { .. }
        | CoreError::AlreadyExists { .. } => Ok(FailInfo::BadRequest),
        CoreError::NotFound { .. } => Ok(FailInfo::BadCertId),
        _ => Err(e),
    }
}

/// The Issue idempotency key of a SCEP transaction: its transactionID and the client's key
/// (the same key the edge used with `Core.Issue`, so retries across the change still match).
fn idempotency_key(msg: &PkiMessage) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &msg.signer_spki_der);
    format!("scep:{}:{}", msg.transaction_id, hex::encode(d.as_ref()))
}

impl ScepService {
    /// `Scep.Enroll`: decides, then has the RA sign the CertRep.
    async fn enroll(&self, r: &EnrollRequest, caller: &Caller) -> Result<EnrollResponse> {
        let msg = PkiMessage::from_verified_parts(
            &r.message_type,
            &r.transaction_id,
            &r.sender_nonce,
            &r.signer_cert_der,
            &r.digest,
            &r.enveloped_data_der,
        )
        .map_err(|e| CoreError::malformed("scep.enroll", e.reason))?;
        if !matches!(
            msg.message_type,
            MessageType::PkcsReq | MessageType::RenewalReq
        ) {
            return Err(CoreError::malformed(
                "scep.enroll",
                "Scep.Enroll answers PKCSReq and RenewalReq only",
            ));
        }
        let (ra, _) = ra::ensure_ra(&self.0, &r.tenant, caller).await?;
        let enc = |e: certgate_scep::ScepError| CoreError::Internal(format!("CertRep: {e}"));
        let (rep, status, fail) = match self.decide_enroll(&msg, &ra, &r.tenant, caller).await? {
            Ok(Answer::Issued(certs)) => (
                CertRep::success(&msg, &certs, &[]).map_err(enc)?,
                PkiStatus::Success,
                None,
            ),
            Ok(Answer::Pending) => (
                CertRep::pending(&msg).map_err(enc)?,
                PkiStatus::Pending,
                None,
            ),
            Err(f) => {
                tracing::info!(tenant = %r.tenant, tx = %msg.transaction_id, fail = f.name(), "SCEP FAILURE");
                (
                    CertRep::failure(&msg, f).map_err(enc)?,
                    PkiStatus::Failure,
                    Some(f),
                )
            }
        };
        let signature = self
            .ra_sign(&ra, rep.digest().name(), rep.signed_attributes_der())
            .await?;
        let cert_rep_der = rep.finish(&signature, &ra.cert_der).map_err(enc)?;
        Ok(EnrollResponse {
            cert_rep_der,
            pki_status: status.name().to_owned(),
            fail_info: fail.map(|f| f.name().to_owned()).unwrap_or_default(),
        })
    }

    /// Decrypts the request with the RA key, checks the challenge (PKCSReq) or the renewed
    /// certificate (RenewalReq) and issues. Nothing is issued unless every check passed.
    async fn decide_enroll(
        &self,
        msg: &PkiMessage,
        ra: &crate::store::cmp::RaRec,
        tenant: &str,
        caller: &Caller,
    ) -> Result<Decision> {
        let kt = match msg.key_transport(&ra.cert_der) {
            Ok(kt) => kt,
            Err(e) => return Ok(Err(e.fail_info)),
        };
        if kt.encrypted_key.is_empty() || kt.encrypted_key.len() > MAX_ENCRYPTED_KEY {
            return Ok(Err(FailInfo::BadMessageCheck));
        }
        let scheme = match key_transport_of(&kt.key_encryption_alg_der) {
            Ok(s) => s,
            Err(e) => return fail_info_of(e).map(Err),
        };
        let cek = match self
            .0
            .signer
            .decrypt(&ra.signer_key_id, scheme, kt.encrypted_key)
            .await
        {
            Ok(cek) => cek,
            Err(CoreError::Signer(s)) if s.rule == "signer.decrypt_failed" => {
                return Ok(Err(FailInfo::BadMessageCheck));
            }
            Err(e) => return Err(e),
        };
        let content = match msg.decrypt_content(&cek) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e.fail_info)),
        };
        drop(cek);
        let RequestContent::CertRequest { csr_der, challenge } = content else {
            return Ok(Err(FailInfo::BadRequest));
        };
        let mut replaces = String::new();
        if msg.message_type == MessageType::PkcsReq {
            let Some(challenge) = challenge else {
                tracing::info!(tenant, tx = %msg.transaction_id, "PKCSReq without challengePassword");
                return Ok(Err(FailInfo::BadRequest));
            };
            let check = CheckChallengeRequest {
                tenant: tenant.to_owned(),
                profile: String::new(),
                challenge: Vec::new(),
            };
            match self.check_challenge(&check, &challenge, caller) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(tenant, tx = %msg.transaction_id, "SCEP challenge refused");
                    return Ok(Err(FailInfo::BadRequest));
                }
                Err(e) => return fail_info_of(e).map(Err),
            }
        } else {
            // RenewalReq: signed by a current certificate of this tenant (the store's record,
            // byte for byte, and not revoked).
            let serial = &msg.signer_id.serial;
            let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
            let serial = &serial[start..];
            if serial.is_empty() || serial.len() > 21 {
                return Ok(Err(FailInfo::BadRequest));
            }
            let serial = crate::x509::serial_hex(serial);
            let store = &self.0.core.store;
            match blocking(|| store.get_cert(tenant, &serial))? {
                Some(rec) if rec.cert_der == msg.signer_cert_der && !rec.revoked => {
                    replaces = serial;
                }
                Some(_) => return Ok(Err(FailInfo::BadRequest)),
                None => return Ok(Err(FailInfo::BadCertId)),
            }
        }
        let issued = self
            .0
            .core
            .issuer
            .issue(
                IssueRequest {
                    tenant: tenant.to_owned(),
                    request: Some(issue_request::Request::CsrDer(csr_der)),
                    protocol: "scep".into(),
                    client_identity: format!("scep:{}", msg.transaction_id),
                    idempotency_key: idempotency_key(msg),
                    replaces_serial: replaces,
                    ..Default::default()
                },
                caller,
            )
            .await;
        match issued {
            Ok(r) if r.status == issue_response::Status::Pending as i32 => {
                tracing::info!(tenant, tx = %msg.transaction_id, pending = %r.pending_id, "SCEP request awaits approval");
                metrics::counter!("certgate_scep_pending_total").increment(1);
                Ok(Ok(Answer::Pending))
            }
            Ok(r) => {
                let mut certs = vec![r.certificate_der];
                certs.extend(r.chain_der);
                Ok(Ok(Answer::Issued(certs)))
            }
            Err(e) => {
                tracing::info!(tenant, tx = %msg.transaction_id, error = %e, "SCEP request refused");
                fail_info_of(e).map(Err)
            }
        }
    }
}

#[tonic::async_trait]
impl Scep for ScepService {
    async fn get_ra_chain(
        &self,
        req: Request<GetRaChainRequest>,
    ) -> Result<Response<GetRaChainResponse>, Status> {
        let caller = caller_of(&req);
        self.0.check(false, &caller, "GetRaChain")?;
        let r = req.into_inner();
        let out = match ra::ensure_ra(&self.0, &r.tenant, &caller).await {
            Ok((ra, _)) => ra::ra_chain(&self.0, &ra),
            Err(e) => Err(e),
        };
        count("GetRaChain", &r.tenant, outcome_of(&out));
        Ok(Response::new(GetRaChainResponse { chain_der: out? }))
    }

    async fn decrypt_key(
        &self,
        req: Request<DecryptKeyRequest>,
    ) -> Result<Response<DecryptKeyResponse>, Status> {
        let caller = caller_of(&req);
        self.0.check(false, &caller, "DecryptKey")?;
        let r = req.into_inner();
        let out = ScepService::decrypt_key(self, &r, &caller).await;
        count("DecryptKey", &r.tenant, outcome_of(&out));
        // prost needs an owned Vec; the zeroizing buffer is wiped when it drops here.
        Ok(Response::new(DecryptKeyResponse {
            content_encryption_key: out?.to_vec(),
        }))
    }

    async fn sign_attributes(
        &self,
        req: Request<SignAttributesRequest>,
    ) -> Result<Response<SignAttributesResponse>, Status> {
        let caller = caller_of(&req);
        self.0.check(false, &caller, "SignAttributes")?;
        let r = req.into_inner();
        let out = ScepService::sign_attributes(self, &r, &caller).await;
        count("SignAttributes", &r.tenant, outcome_of(&out));
        Ok(Response::new(out?))
    }

    async fn check_challenge(
        &self,
        req: Request<CheckChallengeRequest>,
    ) -> Result<Response<CheckChallengeResponse>, Status> {
        let caller = caller_of(&req);
        self.0.check(false, &caller, "CheckChallenge")?;
        let mut r = req.into_inner();
        // Move the challenge into a zeroizing buffer at once so it is wiped on every path.
        let challenge = Zeroizing::new(std::mem::take(&mut r.challenge));
        let out = ScepService::check_challenge(self, &r, &challenge, &caller);
        let outcome = match &out {
            Ok(true) => "ok",
            Ok(false) => "bad_challenge",
            Err(_) => outcome_of(&out),
        };
        count("CheckChallenge", &r.tenant, outcome);
        Ok(Response::new(CheckChallengeResponse { ok: out? }))
    }

    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let caller = caller_of(&req);
        self.0.check(false, &caller, "Enroll")?;
        let r = req.into_inner();
        let out = ScepService::enroll(self, &r, &caller).await;
        let outcome = match &out {
            Ok(resp) if resp.pki_status == PkiStatus::Failure.name() => "failure",
            Ok(resp) if resp.pki_status == PkiStatus::Pending.name() => "pending",
            other => outcome_of(other),
        };
        count("Enroll", &r.tenant, outcome);
        Ok(Response::new(out?))
    }
}

#[tonic::async_trait]
impl ScepAdmin for ScepAdminService {
    async fn put_challenge(
        &self,
        req: Request<PutChallengeRequest>,
    ) -> Result<Response<PutChallengeResponse>, Status> {
        let caller = caller_of(&req);
        self.0.check(true, &caller, "PutChallenge")?;
        let mut r = req.into_inner();
        let given = Zeroizing::new(std::mem::take(&mut r.secret));
        self.0.tenant_exists(&r.tenant)?;
        check_profile(&r.profile)?;
        if !r.one_time {
            let replaced =
                self.0
                    .put_static_challenge(&r.tenant, &r.profile, &given, &caller.to_string())?;
            tracing::info!(tenant = %r.tenant, profile = %r.profile, replaced, "SCEP static challenge stored");
            return Ok(Response::new(PutChallengeResponse { secret: Vec::new() }));
        }
        let secret = if given.is_empty() {
            let mut raw = Zeroizing::new(vec![0u8; GENERATED_CHALLENGE_BYTES]);
            aws_lc_rs::rand::fill(raw.as_mut_slice())
                .map_err(|_| CoreError::Internal("CSPRNG".into()))?;
            Zeroizing::new(certgate_acme::base64url(&raw).into_bytes())
        } else if given.len() > MAX_CHALLENGE {
            return Err(CoreError::malformed(
                "scep.challenge",
                format!("a challenge is at most {MAX_CHALLENGE} bytes"),
            )
            .into());
        } else {
            given
        };
        let now = crate::now_unix();
        let audit = AuditEntry::new(
            "scep.challenge.put",
            &r.tenant,
            &caller,
            json!({"profile": r.profile, "one_time": true}),
        );
        let store = self.0.store()?;
        let added = blocking(|| {
            store.add_scep_one_time_challenge(
                &r.tenant,
                &r.profile,
                challenge_digest(&secret),
                now,
                now.saturating_add(ONE_TIME_VALIDITY_SECONDS),
                MAX_ONE_TIME_CHALLENGES,
                &audit,
            )
        })?;
        if !added {
            return Err(CoreError::policy(
                "scep.too_many_challenges",
                format!("a tenant may have at most {MAX_ONE_TIME_CHALLENGES} outstanding one-time challenges"),
            )
            .into());
        }
        tracing::info!(tenant = %r.tenant, profile = %r.profile, "SCEP one-time challenge created");
        Ok(Response::new(PutChallengeResponse {
            secret: secret.to_vec(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_transport_algorithms() {
        // rsaEncryption with NULL parameters
        let pkcs1 = hex::decode("300d06092a864886f70d0101010500").expect("hex");
        assert_eq!(
            key_transport_of(&pkcs1).expect("v1.5"),
            KeyTransport::RsaPkcs1V15
        );
        // id-RSAES-OAEP with default (SHA-1) parameters, absent
        let oaep_default = hex::decode("300b06092a864886f70d010107").expect("hex");
        assert_eq!(
            key_transport_of(&oaep_default).expect("oaep"),
            KeyTransport::RsaOaepSha1
        );
        // id-RSAES-OAEP, SHA-256 + MGF1-SHA-256
        let oaep256 = hex::decode(
            "303806092a864886f70d010107302ba00d300b0609608648016503040201a11a301806092a864886f70d010108300b0609608648016503040201",
        )
        .expect("hex");
        assert_eq!(
            key_transport_of(&oaep256).expect("oaep256"),
            KeyTransport::RsaOaepSha256
        );
        // id-ecPublicKey is not a key-transport algorithm
        let ec = hex::decode("301306072a8648ce3d020106082a8648ce3d030107").expect("hex");
        assert_eq!(
            key_transport_of(&ec).expect_err("ec").to_rpc().rule,
            "scep.unsupported_alg"
        );
        assert!(key_transport_of(b"junk").is_err());
    }
}
