//! The gRPC service: authenticate the caller, bound the request, look the key up, enforce the key
//! policy, sign, and write exactly one audit record per RPC whatever the outcome.

use std::sync::Arc;
use std::time::Duration;

use certgate_proto::signer::decrypter_server::Decrypter;
use certgate_proto::signer::signer_server::Signer;
use certgate_proto::signer::{
    Algorithm, DecryptRequest, DecryptResponse, GenerateKeyRequest, KeyBackend, KeyInfo, KeyRole,
    KeyTransport, KeyType, ListKeysRequest, ListKeysResponse, PublicKeyRequest, SignBatchRequest,
    SignBatchResponse, SignRequest, SignResponse,
};
use certgate_proto::transport::caller_of;
use certgate_proto::{AllowList, Caller, ErrorKind, RpcError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};

use crate::algo::{key_type_allows, sha256};
use crate::audit::{AuditEvent, AuditLog};
use crate::config::Limits;
use crate::keystore::{KeyHandle, Keyring, NewKey, Policy, StoreError, valid_key_id, valid_tenant};
use crate::policy;

/// The stable message a caller that is not on the allow-list receives.
pub const NOT_ALLOWED: &str = "caller is not allowed to use the signer";
/// The stable message a caller that is not on the admin allow-list receives for GenerateKey.
pub const NOT_ADMIN: &str = "caller is not allowed to administer signer keys";

/// Batches smaller than this are signed on the calling task (fast keys only).
const INLINE_BATCH: usize = 32;
/// Longest ciphertext Decrypt accepts: the modulus of an RSA-4096 key.
pub const MAX_CIPHERTEXT_BYTES: usize = 512;
/// Longest key id written to the audit log (a denied caller must not be able to flood it).
const AUDIT_KEY_ID_MAX: usize = 128;

/// The signer service.
#[derive(Clone)]
pub struct SignerService {
    inner: Arc<Inner>,
}

struct Inner {
    keys: Arc<Keyring>,
    audit: Arc<AuditLog>,
    allow: AllowList,
    admin: AllowList,
    limits: Limits,
    inflight: Arc<Semaphore>,
    workers: usize,
}

/// What goes into the audit record besides the outcome.
struct Ctx {
    op: &'static str,
    key_id: String,
    algorithm: &'static str,
    count: u64,
    digest: Option<[u8; 32]>,
}

impl Ctx {
    fn new(op: &'static str, key_id: &str) -> Self {
        let mut end = key_id.len().min(AUDIT_KEY_ID_MAX);
        while !key_id.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            op,
            key_id: key_id[..end].to_owned(),
            algorithm: "",
            count: 0,
            digest: None,
        }
    }
}

fn algorithm_name(raw: i32) -> &'static str {
    Algorithm::try_from(raw).map_or("UNKNOWN", |a| a.as_str_name())
}

fn internal(e: StoreError) -> RpcError {
    tracing::error!(error = %e, "key store failure");
    RpcError::unavailable(
        "the key store failed; try again later",
        Duration::from_secs(1),
    )
}

impl SignerService {
    /// A service over `keys`, writing to `audit`.
    pub fn new(
        keys: Arc<Keyring>,
        audit: Arc<AuditLog>,
        allow: AllowList,
        admin: AllowList,
        limits: Limits,
    ) -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            inner: Arc::new(Inner {
                keys,
                audit,
                allow,
                admin,
                inflight: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
                limits,
                workers,
            }),
        }
    }

    /// Writes the one audit record of this RPC and turns the result into the wire answer. If the
    /// record cannot be written, the caller gets UNAVAILABLE and no signature (fail closed).
    fn finish<T>(
        &self,
        caller: &Caller,
        ctx: &Ctx,
        result: Result<T, RpcError>,
    ) -> Result<Response<T>, Status> {
        let outcome = result.as_ref().map(|_| ());
        let ev = AuditEvent {
            caller,
            op: ctx.op,
            key_id: &ctx.key_id,
            algorithm: ctx.algorithm,
            outcome,
            count: ctx.count,
            digest: ctx.digest,
        };
        if let Err(e) = self.inner.audit.record(&ev) {
            tracing::error!(error = %e, "audit write failed; refusing the call");
            return Err(
                RpcError::unavailable("audit log unavailable", Duration::from_secs(1)).into(),
            );
        }
        match result {
            Ok(v) => Ok(Response::new(v)),
            Err(e) => {
                if e.kind != ErrorKind::Unauthorized {
                    tracing::debug!(%caller, op = ctx.op, rule = %e.rule, "refused");
                }
                Err(e.into())
            }
        }
    }

    fn authorize(&self, caller: &Caller, admin: bool) -> Result<OwnedSemaphorePermit, RpcError> {
        let (list, rule, msg) = if admin {
            (&self.inner.admin, "signer.caller_not_admin", NOT_ADMIN)
        } else {
            (&self.inner.allow, "signer.caller_not_allowed", NOT_ALLOWED)
        };
        if !list.admits(caller) {
            tracing::warn!(%caller, "caller refused");
            return Err(RpcError::unauthorized(rule, msg));
        }
        self.inner
            .inflight
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                RpcError::new(
                    ErrorKind::RateLimited,
                    "signer.overloaded",
                    "the signer is busy",
                )
                .with_retry_after(Duration::from_millis(100))
            })
    }

    fn key_for_signing(
        &self,
        key_id: &str,
        raw_alg: i32,
    ) -> Result<(Arc<dyn KeyHandle>, Algorithm), RpcError> {
        let alg = match Algorithm::try_from(raw_alg) {
            Ok(Algorithm::Unspecified) => {
                return Err(RpcError::malformed(
                    "signer.algorithm_unspecified",
                    "no algorithm given",
                ));
            }
            Ok(a) => a,
            Err(_) => {
                return Err(RpcError::malformed(
                    "signer.algorithm_unknown",
                    format!("unknown algorithm {raw_alg}"),
                ));
            }
        };
        let key = self
            .inner
            .keys
            .get(key_id)
            .ok_or_else(|| RpcError::not_found("signer.key_unknown", "no such key"))?;
        let kt = key.meta().key_type;
        if !key_type_allows(kt, alg) {
            return Err(RpcError::malformed(
                "signer.algorithm_mismatch",
                format!(
                    "algorithm {} cannot be used with a {} key",
                    alg.as_str_name(),
                    kt.as_str_name()
                ),
            ));
        }
        Ok((key, alg))
    }

    fn check_size(&self, msg: &[u8]) -> Result<(), RpcError> {
        if msg.is_empty() {
            return Err(RpcError::malformed(
                "signer.message_empty",
                "nothing to sign",
            ));
        }
        if msg.len() > self.inner.limits.max_message_bytes {
            return Err(RpcError::malformed(
                "signer.message_too_large",
                format!(
                    "messages are limited to {} bytes",
                    self.inner.limits.max_message_bytes
                ),
            ));
        }
        Ok(())
    }

    async fn do_sign(&self, caller: &Caller, r: SignRequest) -> Result<SignResponse, RpcError> {
        let _permit = self.authorize(caller, false)?;
        self.check_size(&r.message)?;
        let (key, alg) = self.key_for_signing(&r.key_id, r.algorithm)?;
        policy::check(key.meta(), alg, &r.message)
            .map_err(|f| RpcError::policy(f.rule, f.message))?;
        let signature = if key.is_fast() {
            key.sign(alg, &r.message).map_err(internal)?
        } else {
            let msg = r.message;
            tokio::task::spawn_blocking(move || key.sign(alg, &msg))
                .await
                .map_err(|_| RpcError::unavailable("signing task failed", Duration::from_secs(1)))?
                .map_err(internal)?
        };
        Ok(SignResponse { signature })
    }

    async fn do_sign_batch(
        &self,
        caller: &Caller,
        r: SignBatchRequest,
    ) -> Result<SignBatchResponse, RpcError> {
        let _permit = self.authorize(caller, false)?;
        let limits = self.inner.limits;
        if r.messages.is_empty() {
            return Err(RpcError::malformed(
                "signer.batch_empty",
                "the batch is empty",
            ));
        }
        if r.messages.len() > limits.max_batch {
            return Err(RpcError::malformed(
                "signer.batch_too_large",
                format!("batches are limited to {} messages", limits.max_batch),
            ));
        }
        for m in &r.messages {
            self.check_size(m)?;
        }
        let (key, alg) = self.key_for_signing(&r.key_id, r.algorithm)?;
        for (i, m) in r.messages.iter().enumerate() {
            policy::check(key.meta(), alg, m)
                .map_err(|f| RpcError::policy(f.rule, format!("message {i}: {}", f.message)))?;
        }
        let n = r.messages.len();
        if key.is_fast() && n < INLINE_BATCH {
            let signatures = r
                .messages
                .iter()
                .map(|m| key.sign(alg, m))
                .collect::<Result<_, _>>()
                .map_err(internal)?;
            return Ok(SignBatchResponse { signatures });
        }
        // Spread the batch over the blocking pool, one chunk per core.
        let messages = Arc::new(r.messages);
        let chunk = n.div_ceil(self.inner.workers).max(1);
        let mut tasks = Vec::new();
        for start in (0..n).step_by(chunk) {
            let key = key.clone();
            let messages = messages.clone();
            let end = (start + chunk).min(n);
            tasks.push(tokio::task::spawn_blocking(move || {
                messages[start..end]
                    .iter()
                    .map(|m| key.sign(alg, m))
                    .collect::<Result<Vec<_>, _>>()
            }));
        }
        let mut signatures = Vec::with_capacity(n);
        for t in tasks {
            let part = t
                .await
                .map_err(|_| RpcError::unavailable("signing task failed", Duration::from_secs(1)))?
                .map_err(internal)?;
            signatures.extend(part);
        }
        Ok(SignBatchResponse { signatures })
    }

    async fn do_generate(
        &self,
        caller: &Caller,
        r: GenerateKeyRequest,
    ) -> Result<KeyInfo, RpcError> {
        let _permit = self.authorize(caller, true)?;
        if !valid_key_id(&r.key_id) {
            return Err(RpcError::malformed(
                "signer.key_id_invalid",
                "key ids are [A-Za-z0-9._-]{1,128}, not starting with '.'",
            ));
        }
        if !valid_tenant(&r.tenant) {
            return Err(RpcError::malformed(
                "signer.tenant_invalid",
                "tenants are [A-Za-z0-9._-]{0,128}",
            ));
        }
        let role = match KeyRole::try_from(r.role) {
            Ok(KeyRole::RoleUnspecified) | Err(_) => {
                return Err(RpcError::malformed(
                    "signer.role_invalid",
                    "a key needs a role",
                ));
            }
            Ok(role) => role,
        };
        let key_type = match KeyType::try_from(r.key_type) {
            Ok(KeyType::Unspecified) | Err(_) => {
                return Err(RpcError::malformed(
                    "signer.key_type_invalid",
                    "a key needs a key type",
                ));
            }
            Ok(t) => t,
        };
        let backend = match KeyBackend::try_from(r.backend) {
            Ok(KeyBackend::BackendUnspecified) => KeyBackend::SealedFile,
            Ok(b) => b,
            Err(_) => {
                return Err(RpcError::malformed(
                    "signer.backend_invalid",
                    "unknown backend",
                ));
            }
        };
        if !self.inner.keys.has_backend(backend) {
            return Err(RpcError::malformed(
                "signer.backend_unavailable",
                format!("backend {} is not configured", backend.as_str_name()),
            ));
        }
        if role == KeyRole::ScepRa
            && !matches!(
                key_type,
                KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096
            )
        {
            return Err(RpcError::malformed(
                "signer.key_type_invalid",
                "SCEP_RA keys are RSA (2048 bits or more)",
            ));
        }
        let new = NewKey {
            key_id: r.key_id,
            tenant: r.tenant,
            role,
            key_type,
            policy: Policy::from(r.policy.as_ref()),
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let keys = self.inner.keys.clone();
        let meta = tokio::task::spawn_blocking(move || keys.generate(backend, &new, now))
            .await
            .map_err(|_| RpcError::unavailable("key generation failed", Duration::from_secs(1)))?
            .map_err(|e| match e {
                StoreError::Exists(_) => RpcError::new(
                    ErrorKind::AlreadyExists,
                    "signer.key_exists",
                    "a key with this id exists",
                ),
                StoreError::Unsupported(what) => RpcError::malformed(
                    "signer.key_type_unsupported",
                    format!("{what} is not supported by this backend"),
                ),
                other => internal(other),
            })?;
        tracing::info!(key_id = %meta.key_id, tenant = %meta.tenant, role = meta.role.as_str_name(),
            key_type = meta.key_type.as_str_name(), backend = meta.backend.as_str_name(), "key generated");
        Ok(meta.to_info())
    }
}

impl SignerService {
    async fn do_decrypt(
        &self,
        caller: &Caller,
        r: DecryptRequest,
    ) -> Result<DecryptResponse, RpcError> {
        let _permit = self.authorize(caller, false)?;
        let scheme = match KeyTransport::try_from(r.scheme) {
            Ok(KeyTransport::Unspecified) | Err(_) => {
                return Err(RpcError::malformed(
                    "signer.scheme_invalid",
                    "a key-transport scheme is required",
                ));
            }
            Ok(s) => s,
        };
        if r.ciphertext.is_empty() || r.ciphertext.len() > MAX_CIPHERTEXT_BYTES {
            return Err(RpcError::malformed(
                "signer.ciphertext_size",
                format!("ciphertexts are 1..={MAX_CIPHERTEXT_BYTES} bytes"),
            ));
        }
        let key = self
            .inner
            .keys
            .get(&r.key_id)
            .ok_or_else(|| RpcError::not_found("signer.key_unknown", "no such key"))?;
        policy::check_decrypt(key.meta()).map_err(|f| RpcError::policy(f.rule, f.message))?;
        let ciphertext = r.ciphertext;
        let plaintext = tokio::task::spawn_blocking(move || key.decrypt(scheme, &ciphertext))
            .await
            .map_err(|_| RpcError::unavailable("decryption task failed", Duration::from_secs(1)))?
            .map_err(|e| match e {
                StoreError::Crypto(_) => RpcError::malformed(
                    "signer.decrypt_failed",
                    "the ciphertext does not decrypt under this key",
                ),
                StoreError::Unsupported(what) => RpcError::malformed(
                    "signer.decrypt_unsupported",
                    format!("{what} is not supported by this backend"),
                ),
                other => internal(other),
            })?;
        // prost needs an owned Vec; the zeroizing buffer is wiped when it drops here.
        Ok(DecryptResponse {
            plaintext: plaintext.to_vec(),
        })
    }
}

#[tonic::async_trait]
impl Decrypter for SignerService {
    async fn decrypt(
        &self,
        request: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        let caller = caller_of(&request);
        let r = request.into_inner();
        let mut ctx = Ctx::new("Decrypt", &r.key_id);
        ctx.algorithm = KeyTransport::try_from(r.scheme).map_or("UNKNOWN", |s| s.as_str_name());
        ctx.count = 1;
        ctx.digest = Some(sha256(&r.ciphertext));
        let this = self.clone();
        detached(async move {
            let result = this.do_decrypt(&caller, r).await;
            this.finish(&caller, &ctx, result)
        })
        .await
    }
}

/// Runs an RPC's work (including its audit record) on its own task, so that a client that gives up
/// (deadline, disconnect) makes tonic drop only the waiting handler, never the half-done call:
/// every RPC that reached the service gets exactly one audit record (I-7).
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<Response<T>, Status>> + Send + 'static,
) -> Result<Response<T>, Status> {
    tokio::spawn(work).await.unwrap_or_else(|_| {
        tracing::error!("RPC task failed");
        Err(
            RpcError::unavailable("the signer failed; try again later", Duration::from_secs(1))
                .into(),
        )
    })
}

#[tonic::async_trait]
impl Signer for SignerService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let caller = caller_of(&request);
        let r = request.into_inner();
        let mut ctx = Ctx::new("Sign", &r.key_id);
        ctx.algorithm = algorithm_name(r.algorithm);
        ctx.count = 1;
        ctx.digest = Some(sha256(&r.message));
        // A software ECDSA/Ed25519 signature never yields, so the call cannot be abandoned between
        // the check and the audit record; anything that waits (RSA, PKCS#11) runs detached.
        let fast = self.inner.keys.get(&r.key_id).is_some_and(|k| k.is_fast());
        let this = self.clone();
        let work = async move {
            let result = this.do_sign(&caller, r).await;
            this.finish(&caller, &ctx, result)
        };
        if fast {
            work.await
        } else {
            detached(work).await
        }
    }

    async fn sign_batch(
        &self,
        request: Request<SignBatchRequest>,
    ) -> Result<Response<SignBatchResponse>, Status> {
        let caller = caller_of(&request);
        let r = request.into_inner();
        let mut ctx = Ctx::new("SignBatch", &r.key_id);
        ctx.algorithm = algorithm_name(r.algorithm);
        ctx.count = r.messages.len() as u64;
        let mut all = Vec::with_capacity(32 * r.messages.len());
        for m in &r.messages {
            all.extend_from_slice(&sha256(m));
        }
        ctx.digest = Some(sha256(&all));
        let this = self.clone();
        detached(async move {
            let result = this.do_sign_batch(&caller, r).await;
            this.finish(&caller, &ctx, result)
        })
        .await
    }

    async fn public_key(
        &self,
        request: Request<PublicKeyRequest>,
    ) -> Result<Response<KeyInfo>, Status> {
        let caller = caller_of(&request);
        let r = request.into_inner();
        let ctx = Ctx::new("PublicKey", &r.key_id);
        let result = self.authorize(&caller, false).and_then(|_permit| {
            self.inner
                .keys
                .get(&r.key_id)
                .map(|k| k.meta().to_info())
                .ok_or_else(|| RpcError::not_found("signer.key_unknown", "no such key"))
        });
        self.finish(&caller, &ctx, result)
    }

    async fn list_keys(
        &self,
        request: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        let caller = caller_of(&request);
        let r = request.into_inner();
        let mut ctx = Ctx::new("ListKeys", "");
        let result = self.authorize(&caller, false).map(|_permit| {
            let tenant = (!r.tenant.is_empty()).then_some(r.tenant.as_str());
            ListKeysResponse {
                keys: self
                    .inner
                    .keys
                    .list(tenant)
                    .iter()
                    .map(|m| m.to_info())
                    .collect(),
            }
        });
        if let Ok(list) = &result {
            ctx.count = list.keys.len() as u64;
        }
        self.finish(&caller, &ctx, result)
    }

    async fn generate_key(
        &self,
        request: Request<GenerateKeyRequest>,
    ) -> Result<Response<KeyInfo>, Status> {
        let caller = caller_of(&request);
        let r = request.into_inner();
        let mut ctx = Ctx::new("GenerateKey", &r.key_id);
        let this = self.clone();
        detached(async move {
            let result = this.do_generate(&caller, r).await;
            if let Ok(info) = &result {
                ctx.digest = Some(sha256(&info.public_key_der));
            }
            this.finish(&caller, &ctx, result)
        })
        .await
    }
}
