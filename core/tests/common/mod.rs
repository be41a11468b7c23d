#![allow(dead_code, clippy::unwrap_used, missing_docs)]
//! Shared test harness: a real core (Core, Admin and Acme services) served over a real Unix-socket
//! gRPC hop, backed by an in-process FAKE signer (aws-lc-rs keys; a dev-only stand-in, the core's
//! normal dependencies never include the signer crate, I-1). The fake signer is the one of
//! tests/fake_signer.rs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use certgate_core::acme::AcmeConfig;
use certgate_core::acme::service::AcmeState;
use certgate_core::ca::Authority;
use certgate_core::config::Custodian;
use certgate_core::issue::{Fault, Issuer};
use certgate_core::service::{AdminService, CoreService, State};
use certgate_core::signer_client::Signer as SignerClientWrap;
use certgate_core::store::{SqliteStore, Store};
use certgate_proto::acme::acme_client::AcmeClient;
use certgate_proto::acme::acme_server::AcmeServer;
use certgate_proto::admin::admin_client::AdminClient;
use certgate_proto::admin::admin_server::AdminServer;
use certgate_proto::admin::{
    ApproveCeremonyRequest, CeremonyAction, CreateIssuingCaRequest, CreateRoot,
    ExecuteCeremonyRequest, StartCeremonyRequest, Tenant, ceremony_action,
};
use certgate_proto::cmp::cmp_admin_client::CmpAdminClient;
use certgate_proto::cmp::cmp_admin_server::CmpAdminServer;
use certgate_proto::cmp::cmp_client::CmpClient;
use certgate_proto::cmp::cmp_server::CmpServer;
use certgate_proto::core::core_client::CoreClient;
use certgate_proto::core::core_server::CoreServer;
use certgate_proto::signer::signer_server::{Signer, SignerServer};
use certgate_proto::signer::*;
use certgate_proto::transport::{AllowList, bind_unix, current_uid, unix_channel, unix_incoming};
use certgate_proto::{ErrorKind, RpcError};
use tonic::{Request, Response, Status};

enum FakeKey {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    /// RSA (SCEP_RA keys): signs PKCS#1 v1.5 and decrypts key transport.
    Rsa(
        aws_lc_rs::signature::RsaKeyPair,
        aws_lc_rs::rsa::PrivateDecryptingKey,
    ),
}

#[derive(Default)]
pub struct Fake {
    keys: Mutex<HashMap<String, (KeyInfo, Arc<FakeKey>)>>,
    signs: AtomicUsize,
    /// Fail this many Sign calls with UNAVAILABLE *after* signing (a lost answer).
    fail_next: AtomicUsize,
}

#[derive(Clone, Default)]
pub struct FakeSigner(Arc<Fake>);

#[tonic::async_trait]
impl Signer for FakeSigner {
    async fn sign(&self, r: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let r = r.into_inner();
        let key = self
            .0
            .keys
            .lock()
            .unwrap()
            .get(&r.key_id)
            .map(|k| k.1.clone());
        let key =
            key.ok_or_else(|| Status::from(RpcError::not_found("signer.key_unknown", "no key")))?;
        self.0.signs.fetch_add(1, Ordering::SeqCst);
        let sig = match &*key {
            FakeKey::Ec(k) => k
                .sign(&SystemRandom::new(), &r.message)
                .unwrap()
                .as_ref()
                .to_vec(),
            FakeKey::Ed(k) => k.sign(&r.message).as_ref().to_vec(),
            FakeKey::Rsa(k, _) => {
                let enc: &'static dyn aws_lc_rs::signature::RsaEncoding =
                    match Algorithm::try_from(r.algorithm) {
                        Ok(Algorithm::RsaPkcs1Sha256) => &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                        Ok(Algorithm::RsaPkcs1Sha512) => &aws_lc_rs::signature::RSA_PKCS1_SHA512,
                        _ => {
                            return Err(RpcError::malformed(
                                "signer.algorithm_mismatch",
                                "fake signer: RSA PKCS#1 SHA-256/512 only",
                            )
                            .into());
                        }
                    };
                let mut out = vec![0u8; k.public_modulus_len()];
                k.sign(enc, &SystemRandom::new(), &r.message, &mut out)
                    .unwrap();
                out
            }
        };
        if self.0.fail_next.load(Ordering::SeqCst) > 0 {
            self.0.fail_next.fetch_sub(1, Ordering::SeqCst);
            return Err(Status::unavailable("lost answer"));
        }
        Ok(Response::new(SignResponse { signature: sig }))
    }
    async fn sign_batch(
        &self,
        r: Request<SignBatchRequest>,
    ) -> Result<Response<SignBatchResponse>, Status> {
        let r = r.into_inner();
        let mut signatures = Vec::new();
        for m in r.messages {
            let resp = self
                .sign(Request::new(SignRequest {
                    key_id: r.key_id.clone(),
                    algorithm: r.algorithm,
                    message: m,
                }))
                .await?;
            signatures.push(resp.into_inner().signature);
        }
        Ok(Response::new(SignBatchResponse { signatures }))
    }
    async fn public_key(&self, r: Request<PublicKeyRequest>) -> Result<Response<KeyInfo>, Status> {
        let id = r.into_inner().key_id;
        let k = self.0.keys.lock().unwrap().get(&id).map(|k| k.0.clone());
        k.map(Response::new)
            .ok_or_else(|| RpcError::not_found("signer.key_unknown", "no key").into())
    }
    async fn list_keys(
        &self,
        _r: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        let keys = self
            .0
            .keys
            .lock()
            .unwrap()
            .values()
            .map(|k| k.0.clone())
            .collect();
        Ok(Response::new(ListKeysResponse { keys }))
    }
    async fn generate_key(
        &self,
        r: Request<GenerateKeyRequest>,
    ) -> Result<Response<KeyInfo>, Status> {
        let r = r.into_inner();
        let mut keys = self.0.keys.lock().unwrap();
        if keys.contains_key(&r.key_id) {
            return Err(
                RpcError::new(ErrorKind::AlreadyExists, "signer.key_exists", "exists").into(),
            );
        }
        let rng = SystemRandom::new();
        let (key, spki) = match KeyType::try_from(r.key_type).unwrap() {
            KeyType::EcP256 => {
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
                let k = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
                    .unwrap();
                let spki = k.public_key().as_der().unwrap().as_ref().to_vec();
                (FakeKey::Ec(k), spki)
            }
            KeyType::Ed25519Key => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
                let k = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
                let spki = k.public_key().as_der().unwrap().as_ref().to_vec();
                (FakeKey::Ed(k), spki)
            }
            KeyType::Rsa2048 => {
                let k = aws_lc_rs::rsa::PrivateDecryptingKey::generate(
                    aws_lc_rs::rsa::KeySize::Rsa2048,
                )
                .unwrap();
                let pkcs8 = k.as_der().unwrap();
                let s = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
                let spki = s.public_key().as_der().unwrap().as_ref().to_vec();
                (FakeKey::Rsa(s, k), spki)
            }
            other => return Err(Status::invalid_argument(format!("fake signer: {other:?}"))),
        };
        let info = KeyInfo {
            key_id: r.key_id.clone(),
            tenant: r.tenant,
            role: r.role,
            key_type: r.key_type,
            backend: 1,
            public_key_der: spki,
            policy: r.policy,
            created_unix: 0,
        };
        keys.insert(r.key_id, (info.clone(), Arc::new(key)));
        Ok(Response::new(info))
    }
}

/// The signer's Decrypter service: SCEP_RA (RSA) keys only, like the real signer's policy.
#[tonic::async_trait]
impl certgate_proto::signer::decrypter_server::Decrypter for FakeSigner {
    async fn decrypt(
        &self,
        r: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        let r = r.into_inner();
        let entry = self.0.keys.lock().unwrap().get(&r.key_id).cloned();
        let (info, key) = entry
            .ok_or_else(|| Status::from(RpcError::not_found("signer.key_unknown", "no key")))?;
        let FakeKey::Rsa(_, k) = &*key else {
            return Err(RpcError::policy("policy.decrypt_not_allowed", "not an RSA key").into());
        };
        if info.role != KeyRole::ScepRa as i32 {
            return Err(RpcError::policy("policy.decrypt_not_allowed", "not SCEP_RA").into());
        }
        let mut out = vec![0u8; k.key_size_bytes()];
        let n = match KeyTransport::try_from(r.scheme) {
            Ok(KeyTransport::RsaPkcs1V15) => {
                aws_lc_rs::rsa::Pkcs1PrivateDecryptingKey::new(k.clone())
                    .unwrap()
                    .decrypt(&r.ciphertext, &mut out)
                    .map(|p| p.len())
            }
            Ok(KeyTransport::RsaOaepSha1) => {
                aws_lc_rs::rsa::OaepPrivateDecryptingKey::new(k.clone())
                    .unwrap()
                    .decrypt(
                        &aws_lc_rs::rsa::OAEP_SHA1_MGF1SHA1,
                        &r.ciphertext,
                        &mut out,
                        None,
                    )
                    .map(|p| p.len())
            }
            Ok(KeyTransport::RsaOaepSha256) => {
                aws_lc_rs::rsa::OaepPrivateDecryptingKey::new(k.clone())
                    .unwrap()
                    .decrypt(
                        &aws_lc_rs::rsa::OAEP_SHA256_MGF1SHA256,
                        &r.ciphertext,
                        &mut out,
                        None,
                    )
                    .map(|p| p.len())
            }
            _ => return Err(RpcError::malformed("signer.scheme_invalid", "scheme").into()),
        }
        .map_err(|_| {
            Status::from(RpcError::malformed(
                "signer.decrypt_failed",
                "does not decrypt",
            ))
        })?;
        out.truncate(n);
        Ok(Response::new(DecryptResponse { plaintext: out }))
    }
}

/// A running core (Core, Admin, Acme on one Unix socket) over a fake signer.
pub struct Fleet {
    _dir: tempfile::TempDir,
    pub dir: PathBuf,
    pub store: Arc<SqliteStore>,
    pub core: CoreClient<tonic::transport::Channel>,
    pub admin: AdminClient<tonic::transport::Channel>,
    pub acme: AcmeClient<tonic::transport::Channel>,
    /// The CMP services (tests/cmp_service.rs).
    pub cmp: CmpClient<tonic::transport::Channel>,
    pub cmp_admin: CmpAdminClient<tonic::transport::Channel>,
    pub cmp_state: Arc<certgate_core::cmp::CmpState>,
    /// The SCEP services (tests/scep_service.rs).
    pub scep: certgate_proto::scep::scep_client::ScepClient<tonic::transport::Channel>,
    pub scep_admin:
        certgate_proto::scep::scep_admin_client::ScepAdminClient<tonic::transport::Channel>,
    /// Manual approval (tests/approval.rs): the edges' poll and the operators' decisions.
    pub pending: certgate_proto::core::pending_client::PendingClient<tonic::transport::Channel>,
    pub requests:
        certgate_proto::admin::request_admin_client::RequestAdminClient<tonic::transport::Channel>,
    pub state: Arc<State>,
    custodian: Ed25519KeyPair,
}

fn serve_signer(path: &Path, fake: FakeSigner) {
    let listener = bind_unix(path).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SignerServer::new(fake.clone()))
            .add_service(certgate_proto::signer::decrypter_server::DecrypterServer::new(fake))
            .serve_with_incoming(unix_incoming(listener)),
    );
}

/// Starts a core with these `[acme]` settings; the caller's uid is on both allow-lists.
pub async fn fleet(acme: AcmeConfig) -> Fleet {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let signer_sock = dir.join("signer.sock");
    serve_signer(&signer_sock, FakeSigner::default());
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let custodian = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let store = Arc::new(SqliteStore::open(&dir.join("core.db")).unwrap());
    let dyn_store: Arc<dyn Store> = store.clone();
    let signer = SignerClientWrap::new(unix_channel(&signer_sock), Duration::from_secs(5));
    let state = Arc::new(State {
        store: dyn_store.clone(),
        issuer: Issuer::new(dyn_store.clone(), signer.clone(), 64, Fault::None),
        authority: Authority::new(
            dyn_store.clone(),
            signer.clone(),
            vec![Custodian {
                name: "c0".into(),
                ed25519: custodian.public_key().as_ref().to_vec(),
            }],
            1,
        ),
        allow: AllowList::uid(current_uid()),
        admin_allow: AllowList::uid(current_uid()),
        audit_key_sha256: None,
    });
    // The revocation-status engine, as main.rs attaches it (OCSP/CRL see ACME revocations).
    let status = certgate_core::status::StatusEngine::new(
        dyn_store.clone(),
        store.clone(),
        signer.clone(),
        certgate_core::status::StatusConfig::default(),
    )
    .unwrap();
    status.spawn();
    state.issuer.attach_status(status);
    let acme_state = Arc::new(AcmeState::new(state.clone(), acme));
    let cmp_state = Arc::new(certgate_core::cmp::CmpState::new(
        state.clone(),
        signer.clone(),
        certgate_core::cmp::CmpConfig::default(),
    ));
    let scep_state = Arc::new(certgate_core::scep::ScepState::new(
        state.clone(),
        signer.clone(),
    ));
    let core_sock = dir.join("core.sock");
    let listener = bind_unix(&core_sock).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CoreServer::new(CoreService(state.clone())))
            .add_service(AdminServer::new(AdminService(state.clone())))
            .add_service(AcmeServer::new(certgate_core::acme::AcmeService(
                acme_state,
            )))
            .add_service(CmpServer::new(certgate_core::cmp::CmpService(
                cmp_state.clone(),
            )))
            .add_service(CmpAdminServer::new(certgate_core::cmp::CmpAdminService(
                cmp_state.clone(),
            )))
            .add_service(certgate_proto::scep::scep_server::ScepServer::new(
                certgate_core::scep::ScepService(scep_state.clone()),
            ))
            .add_service(
                certgate_proto::scep::scep_admin_server::ScepAdminServer::new(
                    certgate_core::scep::ScepAdminService(scep_state),
                ),
            )
            .add_service(certgate_proto::core::pending_server::PendingServer::new(
                certgate_core::approval::PendingService(state.clone()),
            ))
            .add_service(
                certgate_proto::admin::request_admin_server::RequestAdminServer::new(
                    certgate_core::approval::RequestAdminService(state.clone()),
                ),
            )
            .serve_with_incoming(unix_incoming(listener)),
    );
    let ch = unix_channel(&core_sock);
    Fleet {
        _dir: tmp,
        dir,
        store,
        core: CoreClient::new(ch.clone()),
        admin: AdminClient::new(ch.clone()),
        acme: AcmeClient::new(ch.clone()),
        cmp: CmpClient::new(ch.clone()),
        cmp_admin: CmpAdminClient::new(ch.clone()),
        cmp_state,
        scep: certgate_proto::scep::scep_client::ScepClient::new(ch.clone()),
        scep_admin: certgate_proto::scep::scep_admin_client::ScepAdminClient::new(ch.clone()),
        pending: certgate_proto::core::pending_client::PendingClient::new(ch.clone()),
        requests: certgate_proto::admin::request_admin_client::RequestAdminClient::new(ch),
        state,
        custodian,
    }
}

impl Fleet {
    /// A tenant with a P-256 root (via a one-custodian ceremony) and an active issuing CA.
    pub async fn bootstrap(&mut self, tenant: &str) {
        self.admin
            .put_tenant(Tenant {
                name: tenant.into(),
                public_base_url: "http://127.0.0.1:8080".into(),
                default_profile: String::new(),
                active_issuer_id: String::new(),
            })
            .await
            .unwrap();
        let root_id = format!("root-{tenant}");
        let c = self
            .admin
            .start_ceremony(StartCeremonyRequest {
                action: Some(CeremonyAction {
                    action: Some(ceremony_action::Action::CreateRoot(CreateRoot {
                        ca_id: root_id.clone(),
                        key_type: KeyType::EcP256 as i32,
                        common_name: format!("certgate test root {tenant}"),
                        validity_seconds: 0,
                    })),
                }),
            })
            .await
            .unwrap()
            .into_inner();
        self.admin
            .approve_ceremony(ApproveCeremonyRequest {
                id: c.id.clone(),
                custodian: "c0".into(),
                signature: self.custodian.sign(&c.digest).as_ref().to_vec(),
            })
            .await
            .unwrap();
        self.admin
            .execute_ceremony(ExecuteCeremonyRequest { id: c.id })
            .await
            .unwrap();
        self.admin
            .create_issuing_ca(CreateIssuingCaRequest {
                tenant: tenant.into(),
                ca_id: format!("{tenant}-issuing"),
                parent_ca_id: root_id,
                key_type: KeyType::EcP256 as i32,
                common_name: format!("certgate {tenant} issuing"),
                validity_seconds: 0,
                activate: true,
            })
            .await
            .unwrap();
    }

    /// The root certificate DER of a tenant bootstrapped with [`Fleet::bootstrap`].
    pub fn root_der(&self, tenant: &str) -> Vec<u8> {
        self.store
            .get_ca(&format!("root-{tenant}"))
            .unwrap()
            .expect("root exists")
            .cert_der
    }
}

/// The typed error in a status.
pub fn err(s: Status) -> RpcError {
    RpcError::from_status(&s)
}

/// PEM armour.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
