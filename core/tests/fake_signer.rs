#![allow(clippy::unwrap_used, missing_docs)]
//! The core against an in-process FAKE signer (aws-lc-rs keys) over a real Unix-socket gRPC hop.
//! The fake is a dev-dependency-only stand-in; the core's normal dependencies never include the
//! signer crate (I-1).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use certgate_core::ca::Authority;
use certgate_core::config::Custodian;
use certgate_core::issue::{Fault, Issuer};
use certgate_core::service::{AdminService, CoreService, State};
use certgate_core::signer_client::Signer as SignerClientWrap;
use certgate_core::store::{SqliteStore, Store};
use certgate_proto::admin::admin_client::AdminClient;
use certgate_proto::admin::admin_server::AdminServer;
use certgate_proto::admin::{
    ApproveCeremonyRequest, CeremonyAction, CreateIssuingCaRequest, CreateRoot,
    ExecuteCeremonyRequest, StartCeremonyRequest, Tenant, VerifyAuditRequest, ceremony_action,
};
use certgate_proto::core::core_client::CoreClient;
use certgate_proto::core::core_server::CoreServer;
use certgate_proto::core::{
    GetCertificateRequest, IssueRequest, RevokeRequest, issue_request, revoke_request,
};
use certgate_proto::signer::signer_server::{Signer, SignerServer};
use certgate_proto::signer::*;
use certgate_proto::transport::{AllowList, bind_unix, current_uid, unix_channel, unix_incoming};
use certgate_proto::{ErrorKind, RpcError};
use tonic::{Request, Response, Status};

enum FakeKey {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

#[derive(Default)]
struct Fake {
    keys: Mutex<HashMap<String, (KeyInfo, Arc<FakeKey>)>>,
    signs: AtomicUsize,
    /// Fail this many Sign calls with UNAVAILABLE *after* signing (a lost answer).
    fail_next: AtomicUsize,
}

#[derive(Clone, Default)]
struct FakeSigner(Arc<Fake>);

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

struct Fleet {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    fake: FakeSigner,
    store: Arc<SqliteStore>,
    core: CoreClient<tonic::transport::Channel>,
    admin: AdminClient<tonic::transport::Channel>,
    custodians: Vec<(String, Ed25519KeyPair)>,
    signer_stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The signer server task: ends once it has stopped and closed its connections.
    signer_task: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

type SignerTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

fn serve_signer(path: &Path, fake: FakeSigner) -> (tokio::sync::oneshot::Sender<()>, SignerTask) {
    let listener = bind_unix(path).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SignerServer::new(fake))
            .serve_with_incoming_shutdown(unix_incoming(listener), async {
                let _ = rx.await;
            }),
    );
    (tx, task)
}

async fn fleet(quorum: u32, custodian_count: usize, admin_allow: AllowList) -> Fleet {
    fleet_with(quorum, custodian_count, admin_allow, 64).await
}

async fn fleet_with(
    quorum: u32,
    custodian_count: usize,
    admin_allow: AllowList,
    max_in_flight: usize,
) -> Fleet {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let fake = FakeSigner::default();
    let signer_sock = dir.join("signer.sock");
    let (signer_stop, signer_task) = serve_signer(&signer_sock, fake.clone());
    let rng = SystemRandom::new();
    let custodians: Vec<(String, Ed25519KeyPair)> = (0..custodian_count)
        .map(|i| {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
            (
                format!("c{i}"),
                Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
            )
        })
        .collect();
    let store = Arc::new(SqliteStore::open(&dir.join("core.db")).unwrap());
    let dyn_store: Arc<dyn Store> = store.clone();
    let signer = SignerClientWrap::new(unix_channel(&signer_sock), Duration::from_secs(5));
    let state = Arc::new(State {
        store: dyn_store.clone(),
        issuer: Issuer::new(
            dyn_store.clone(),
            signer.clone(),
            max_in_flight,
            Fault::None,
        ),
        authority: Authority::new(
            dyn_store.clone(),
            signer.clone(),
            custodians
                .iter()
                .map(|(n, k)| Custodian {
                    name: n.clone(),
                    ed25519: k.public_key().as_ref().to_vec(),
                })
                .collect(),
            quorum,
        ),
        allow: AllowList::uid(current_uid()),
        admin_allow,
        audit_key_sha256: None,
    });
    let core_sock = dir.join("core.sock");
    let listener = bind_unix(&core_sock).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CoreServer::new(CoreService(state.clone())))
            .add_service(AdminServer::new(AdminService(state.clone())))
            .serve_with_incoming(unix_incoming(listener)),
    );
    tokio::spawn(certgate_core::tasks::run_audit_loop(
        dyn_store,
        signer,
        "core-audit".into(),
        None,
        Duration::from_millis(200),
        Duration::from_millis(200),
    ));
    let ch = unix_channel(&core_sock);
    Fleet {
        _dir: tmp,
        dir,
        fake,
        store,
        core: CoreClient::new(ch.clone()),
        admin: AdminClient::new(ch),
        custodians,
        signer_stop: Some(signer_stop),
        signer_task: Some(signer_task),
    }
}

impl Fleet {
    async fn bootstrap(&mut self, tenant: &str, ca_key: KeyType) {
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
        if self.store.get_ca(&root_id).unwrap().is_none() {
            let c = self
                .admin
                .start_ceremony(StartCeremonyRequest {
                    action: Some(CeremonyAction {
                        action: Some(ceremony_action::Action::CreateRoot(CreateRoot {
                            ca_id: root_id.clone(),
                            key_type: ca_key as i32,
                            common_name: "certgate test root".into(),
                            validity_seconds: 0,
                        })),
                    }),
                })
                .await
                .unwrap()
                .into_inner();
            for (name, key) in &self.custodians {
                self.admin
                    .approve_ceremony(ApproveCeremonyRequest {
                        id: c.id.clone(),
                        custodian: name.clone(),
                        signature: key.sign(&c.digest).as_ref().to_vec(),
                    })
                    .await
                    .unwrap();
            }
            self.admin
                .execute_ceremony(ExecuteCeremonyRequest { id: c.id })
                .await
                .unwrap();
        }
        self.admin
            .create_issuing_ca(CreateIssuingCaRequest {
                tenant: tenant.into(),
                ca_id: format!("{tenant}-issuing"),
                parent_ca_id: root_id,
                key_type: ca_key as i32,
                common_name: format!("certgate {tenant} issuing"),
                validity_seconds: 0,
                activate: true,
            })
            .await
            .unwrap();
    }
}

fn csr(names: &[&str]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn issue_req(tenant: &str, key: &str, csr_der: Vec<u8>) -> IssueRequest {
    IssueRequest {
        tenant: tenant.into(),
        request: Some(issue_request::Request::CsrDer(csr_der)),
        protocol: "test".into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

fn err(s: Status) -> RpcError {
    RpcError::from_status(&s)
}

fn pem(label: &str, der: &[u8]) -> String {
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

#[tokio::test]
async fn i3_same_key_same_request_returns_the_same_bytes() {
    let mut f = fleet(1, 1, AllowList::uid(current_uid())).await;
    f.bootstrap("t1", KeyType::EcP256).await;
    let c = csr(&["www.example.com"]);
    let a = f
        .core
        .issue(issue_req("t1", "k1", c.clone()))
        .await
        .unwrap()
        .into_inner();
    let b = f
        .core
        .issue(issue_req("t1", "k1", c))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, b);
    assert_eq!(a.profile, "tls-server");
    assert_eq!(a.profile_version, 1);
    assert_eq!(a.chain_der.len(), 1);
}

#[tokio::test]
async fn i3_same_key_different_request_is_already_exists() {
    let mut f = fleet(1, 1, AllowList::uid(current_uid())).await;
    f.bootstrap("t1", KeyType::EcP256).await;
    f.core
        .issue(issue_req("t1", "k1", csr(&["a.example.com"])))
        .await
        .unwrap();
    let e = err(f
        .core
        .issue(issue_req("t1", "k1", csr(&["b.example.com"])))
        .await
        .unwrap_err());
    assert_eq!(e.kind, ErrorKind::AlreadyExists);
    assert_eq!(e.rule, "idempotency.key_reused");
}

#[tokio::test]
async fn i3_concurrent_duplicates_mint_one_certificate() {
    let mut f = fleet(1, 1, AllowList::uid(current_uid())).await;
    f.bootstrap("t1", KeyType::EcP256).await;
    let before = f.fake.0.signs.load(Ordering::SeqCst);
    let c = csr(&["c.example.com"]);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut client = f.core.clone();
        let req = issue_req("t1", "same", c.clone());
        tasks.push(tokio::spawn(async move {
            client.issue(req).await.unwrap().into_inner()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert!(results.iter().all(|r| r == &results[0]));
    // one leaf signature (audit batches may add more; count only Sign calls by the issuing key)
    let signs = f.fake.0.signs.load(Ordering::SeqCst) - before;
    let audit_signed = f.store.audit_records().unwrap().len();
    assert!(signs <= 1 + audit_signed, "signs {signs}");
    let certs: usize = f
        .store
        .audit_records()
        .unwrap()
        .iter()
        .filter(|r| r.kind == "issue.stored")
        .count();
    assert_eq!(certs, 1, "exactly one certificate stored");
}

#[tokio::test]
async fn i3_retry_after_a_lost_signature_reuses_the_recorded_tbs() {
    let mut f = fleet(1, 1, AllowList::uid(current_uid())).await;
    f.bootstrap("t1", KeyType::Ed25519Key).await;
    let c = csr(&["d.example.com"]);
    f.fake.0.fail_next.store(1, Ordering::SeqCst);
    let e = err(f
        .core
        .issue(issue_req("t1", "k", c.clone()))
        .await
        .unwrap_err());
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.retry_after.is_some());
    let intent = f
        .store
        .get_intent("t1", "k")
        .unwrap()
        .expect("intent recorded before signing");
    let r = f
        .core
        .issue(issue_req("t1", "k", c))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.serial_hex, intent.serial_hex);
    let cert = x509_cert::Certificate::from_der(&r.certificate_der).unwrap();
    use der::{Decode, Encode};
    assert_eq!(cert.tbs_certificate.to_der().unwrap(), intent.tbs_der);
}

#[tokio::test]
async fn i4_tenant_b_cannot_get_or_revoke_tenant_a_certificates() {
    let mut f = fleet(1, 1, AllowList::uid(current_uid())).await;
    f.bootstrap("ta", KeyType::EcP256).await;
    f.bootstrap("tb", KeyType::EcP256).await;
    let a = f
        .core
        .issue(issue_req("ta", "k", csr(&["e.example.com"])))
        .await
        .unwrap()
        .into_inner();
    let e = err(f
        .core
        .get_certificate(GetCertificateRequest {
            tenant: "tb".into(),
            serial_hex: a.serial_hex.clone(),
        })
        .await
        .unwrap_err());
    assert_eq!(e.kind, ErrorKind::NotFound);
    let e = err(f
        .core
        .revoke(RevokeRequest {
            tenant: "tb".into(),
            target: Some(revoke_request::Target::SerialHex(a.serial_hex.clone())),
            reason: 1,
            idempotency_key: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap_err());
    assert_eq!(e.kind, ErrorKind::NotFound);
    let rec = f
        .core
        .get_certificate(GetCertificateRequest {
            tenant: "ta".into(),
            serial_hex: a.serial_hex,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!rec.revoked);
}

#[tokio::test]
async fn ceremony_short_of_quorum_is_refused_and_audited() {
    let mut f = fleet(2, 3, AllowList::uid(current_uid())).await;
    let c = f
        .admin
        .start_ceremony(StartCeremonyRequest {
            action: Some(CeremonyAction {
                action: Some(ceremony_action::Action::CreateRoot(CreateRoot {
                    ca_id: "r1".into(),
                    key_type: KeyType::EcP256 as i32,
                    common_name: "root".into(),
                    validity_seconds: 0,
                })),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.required, 2);
    let (n0, k0) = &f.custodians[0];
    f.admin
        .approve_ceremony(ApproveCeremonyRequest {
            id: c.id.clone(),
            custodian: n0.clone(),
            signature: k0.sign(&c.digest).as_ref().to_vec(),
        })
        .await
        .unwrap();
    // the same custodian twice still counts once
    f.admin
        .approve_ceremony(ApproveCeremonyRequest {
            id: c.id.clone(),
            custodian: n0.clone(),
            signature: k0.sign(&c.digest).as_ref().to_vec(),
        })
        .await
        .unwrap();
    // custodian 1's name with custodian 2's signature is refused
    let e = err(f
        .admin
        .approve_ceremony(ApproveCeremonyRequest {
            id: c.id.clone(),
            custodian: "c1".into(),
            signature: f.custodians[2].1.sign(&c.digest).as_ref().to_vec(),
        })
        .await
        .unwrap_err());
    assert_eq!(e.rule, "ceremony.bad_signature");
    let e = err(f
        .admin
        .execute_ceremony(ExecuteCeremonyRequest { id: c.id.clone() })
        .await
        .unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::PolicyRefused, "ceremony.quorum")
    );
    assert!(
        f.store
            .audit_records()
            .unwrap()
            .iter()
            .any(|r| r.kind == "ceremony.refused")
    );
    assert!(f.store.get_ca("r1").unwrap().is_none());
    let (n1, k1) = &f.custodians[1];
    f.admin
        .approve_ceremony(ApproveCeremonyRequest {
            id: c.id.clone(),
            custodian: n1.clone(),
            signature: k1.sign(&c.digest).as_ref().to_vec(),
        })
        .await
        .unwrap();
    let done = f
        .admin
        .execute_ceremony(ExecuteCeremonyRequest { id: c.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.result_ca_ids, vec!["r1".to_string()]);
}

#[tokio::test]
async fn i5_admin_refuses_callers_not_on_admin_allow_and_audits_it() {
    let mut f = fleet(1, 1, AllowList::default()).await;
    let e = err(f
        .admin
        .verify_audit(VerifyAuditRequest {})
        .await
        .unwrap_err());
    assert_eq!(e.kind, ErrorKind::Unauthorized);
    assert!(
        f.store
            .audit_records()
            .unwrap()
            .iter()
            .any(|r| r.kind == "auth.denied")
    );
}

#[tokio::test]
async fn i5_signer_down_is_unavailable_with_retry_after() {
    let mut f = fleet(1, 1, AllowList::uid(current_uid())).await;
    f.bootstrap("t1", KeyType::EcP256).await;
    if let Some(stop) = f.signer_stop.take() {
        let _ = stop.send(());
    }
    // Wait for the signer to be down (its connections closed), not a fixed time: on a loaded
    // machine the core's open connection could otherwise still answer.
    let task = f.signer_task.take().expect("signer task");
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the signer stops")
        .expect("join")
        .expect("signer server");
    let _ = std::fs::remove_file(f.dir.join("signer.sock"));
    let e = err(f
        .core
        .issue(issue_req("t1", "down", csr(&["f.example.com"])))
        .await
        .unwrap_err());
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e:?}");
    assert!(e.retry_after.is_some());
}

#[tokio::test]
async fn malformed_csrs_are_refused_clearly() {
    let mut f = fleet(1, 1, AllowList::uid(current_uid())).await;
    f.bootstrap("t1", KeyType::EcP256).await;
    let e = err(f
        .core
        .issue(issue_req("t1", "g", b"garbage".to_vec()))
        .await
        .unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::Malformed, "csr.syntax")
    );
    let mut c = csr(&["g.example.com"]);
    let n = c.len();
    c[n - 5] ^= 0x01; // inside the signature
    let e = err(f.core.issue(issue_req("t1", "h", c)).await.unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::Malformed, "csr.signature")
    );
    let e = err(f
        .core
        .issue(issue_req("t1", "i", vec![0x30; 70 * 1024]))
        .await
        .unwrap_err());
    assert_eq!(e.kind, ErrorKind::Malformed);
    // the core keeps serving: a good CSR after the bad ones is issued
    f.core
        .issue(issue_req("t1", "j", csr(&["x.example.com"])))
        .await
        .unwrap();
}

#[tokio::test]
async fn issued_and_ca_certificates_pass_openssl_verify_and_pkilint() {
    for kt in [KeyType::EcP256, KeyType::Ed25519Key] {
        let mut f = fleet(1, 1, AllowList::uid(current_uid())).await;
        f.bootstrap("t1", kt).await;
        let r = f
            .core
            .issue(issue_req(
                "t1",
                "v",
                csr(&["www.example.com", "example.com"]),
            ))
            .await
            .unwrap()
            .into_inner();
        let root = f.store.get_ca("root-t1").unwrap().unwrap().cert_der;
        std::fs::write(f.dir.join("root.pem"), pem("CERTIFICATE", &root)).unwrap();
        std::fs::write(f.dir.join("chain.pem"), pem("CERTIFICATE", &r.chain_der[0])).unwrap();
        std::fs::write(
            f.dir.join("leaf.pem"),
            pem("CERTIFICATE", &r.certificate_der),
        )
        .unwrap();
        let out = std::process::Command::new("openssl")
            .args(["verify", "-x509_strict", "-CAfile"])
            .arg(f.dir.join("root.pem"))
            .arg("-untrusted")
            .arg(f.dir.join("chain.pem"))
            .arg(f.dir.join("leaf.pem"))
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "{kt:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if std::env::var_os("CERTGATE_KEEP_CERTS").is_some() {
            let keep = std::env::temp_dir().join(format!("certgate-certs-{kt:?}"));
            std::fs::create_dir_all(&keep).unwrap();
            for name in ["root.pem", "chain.pem", "leaf.pem"] {
                std::fs::copy(f.dir.join(name), keep.join(name)).unwrap();
            }
        }
        for name in ["root.pem", "chain.pem", "leaf.pem"] {
            let out = std::process::Command::new("lint_pkix_cert")
                .args(["lint", "-s", "ERROR", "--document-format", "PEM"])
                .arg(f.dir.join(name))
                .output()
                .expect("pkilint (lint_pkix_cert) is installed");
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            let errors: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            assert!(
                errors.is_empty(),
                "{kt:?} {name}: pkilint findings:\n{text}"
            );
        }
    }
}

#[tokio::test]
async fn i7_audit_chain_is_signed_and_verifies() {
    let mut f = fleet(1, 1, AllowList::uid(current_uid())).await;
    f.bootstrap("t1", KeyType::EcP256).await;
    f.core
        .issue(issue_req("t1", "a", csr(&["a.example.com"])))
        .await
        .unwrap();
    // The audit loop signs pending records every 200 ms: wait until it has signed them (a loaded
    // machine may take seconds) instead of sleeping a fixed time.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while f
        .store
        .audit_records()
        .unwrap()
        .iter()
        .filter(|r| r.signature.is_some())
        .count()
        < 5
    {
        assert!(
            std::time::Instant::now() < deadline,
            "audit records never signed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v = f
        .admin
        .verify_audit(VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
    let records = f.store.audit_records().unwrap();
    assert!(records.iter().filter(|r| r.signature.is_some()).count() >= 5);
    f.store
        .execute_raw("UPDATE audit SET actor = 'tampered' WHERE seq = 3")
        .unwrap();
    let v = f
        .admin
        .verify_audit(VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!v.ok);
    assert_eq!(v.first_bad_seq, 3);
}

#[tokio::test]
async fn key_requests_and_validated_identifiers_decide_the_names() {
    let mut f = fleet(1, 1, AllowList::uid(current_uid())).await;
    f.bootstrap("t1", KeyType::EcP256).await;
    use certgate_proto::core::{Identifier, KeyRequest, identifier};
    use der::Decode;
    let dns = |v: &str| Identifier {
        r#type: identifier::Type::Dns as i32,
        value: v.into(),
    };
    // a CSR naming a name the edge did not validate is refused
    let mut req = issue_req("t1", "v1", csr(&["a.example.com", "evil.example.net"]));
    req.validated_identifiers = vec![dns("a.example.com")];
    let e = err(f.core.issue(req).await.unwrap_err());
    assert_eq!(e.rule, "request.unvalidated_name");
    // validated identifiers replace the CSR's (here: none) names
    let mut req = issue_req("t1", "v2", csr(&[]));
    req.validated_identifiers = vec![
        dns("b.example.com"),
        Identifier {
            r#type: identifier::Type::Ip as i32,
            value: "10.1.2.3".into(),
        },
    ];
    let r = f.core.issue(req).await.unwrap().into_inner();
    let cert = x509_cert::Certificate::from_der(&r.certificate_der).unwrap();
    let (_, san) = cert
        .tbs_certificate
        .get::<x509_cert::ext::pkix::SubjectAltName>()
        .unwrap()
        .unwrap();
    assert_eq!(san.0.len(), 2);
    // a KeyRequest (CMP-style): public key + names, no CSR
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let req = IssueRequest {
        tenant: "t1".into(),
        request: Some(issue_request::Request::KeyRequest(KeyRequest {
            public_key_der: rcgen::PublicKeyData::subject_public_key_info(&key),
            subject_der: vec![],
            sans: vec![dns("cmp.example.com")],
        })),
        idempotency_key: "kr".into(),
        ..Default::default()
    };
    let r = f.core.issue(req).await.unwrap().into_inner();
    let cert = x509_cert::Certificate::from_der(&r.certificate_der).unwrap();
    use der::Encode;
    assert_eq!(
        cert.tbs_certificate
            .subject_public_key_info
            .to_der()
            .unwrap(),
        rcgen::PublicKeyData::subject_public_key_info(&key)
    );
}

#[tokio::test]
async fn revoke_by_certificate_is_idempotent_and_rotation_retires_the_old_root() {
    let mut f = fleet(1, 1, AllowList::uid(current_uid())).await;
    f.bootstrap("t1", KeyType::EcP256).await;
    let r = f
        .core
        .issue(issue_req("t1", "k", csr(&["r.example.com"])))
        .await
        .unwrap()
        .into_inner();
    let revoke = |der: Vec<u8>| RevokeRequest {
        tenant: "t1".into(),
        target: Some(revoke_request::Target::CertificateDer(der)),
        reason: 4,
        idempotency_key: "rv".into(),
        ..Default::default()
    };
    let first = f
        .core
        .revoke(revoke(r.certificate_der.clone()))
        .await
        .unwrap()
        .into_inner();
    let second = f
        .core
        .revoke(revoke(r.certificate_der.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.already_revoked && second.already_revoked);
    assert_eq!(first.revoked_at_unix, second.revoked_at_unix);

    use certgate_proto::admin::{ListCasRequest, RotateCa};
    let c = f
        .admin
        .start_ceremony(StartCeremonyRequest {
            action: Some(CeremonyAction {
                action: Some(ceremony_action::Action::Rotate(RotateCa {
                    old_ca_id: "root-t1".into(),
                    new_ca_id: "root-t1-2".into(),
                    key_type: KeyType::EcP256 as i32,
                    validity_seconds: 0,
                })),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let (name, key) = &f.custodians[0];
    f.admin
        .approve_ceremony(ApproveCeremonyRequest {
            id: c.id.clone(),
            custodian: name.clone(),
            signature: key.sign(&c.digest).as_ref().to_vec(),
        })
        .await
        .unwrap();
    f.admin
        .execute_ceremony(ExecuteCeremonyRequest { id: c.id })
        .await
        .unwrap();
    let cas = f
        .admin
        .list_cas(ListCasRequest {
            tenant: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .cas;
    let state = |id: &str| cas.iter().find(|c| c.ca_id == id).map(|c| c.state.clone());
    assert_eq!(state("root-t1").as_deref(), Some("retiring"));
    assert_eq!(state("root-t1-2").as_deref(), Some("active"));
    // no new issuing CA under a retiring parent
    let e = err(f
        .admin
        .create_issuing_ca(CreateIssuingCaRequest {
            tenant: "t1".into(),
            ca_id: "t1-issuing-2".into(),
            parent_ca_id: "root-t1".into(),
            key_type: KeyType::EcP256 as i32,
            common_name: "x".into(),
            validity_seconds: 0,
            activate: false,
        })
        .await
        .unwrap_err());
    assert_eq!(e.rule, "ca.parent_retiring");
}

/// Not a test of speed (no timing assertion): prints Issue/s through the full gRPC + store path
/// with the fake signer. `cargo nextest run -p certgate-core --release --run-ignored only`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn probe_issue_throughput() {
    let mut f = fleet(1, 1, AllowList::uid(current_uid())).await;
    f.bootstrap("t1", KeyType::EcP256).await;
    let csrs: Vec<Vec<u8>> = (0..64)
        .map(|i| csr(&[&format!("h{i}.example.com")]))
        .collect();
    let n = 3000;
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for w in 0..32 {
        let mut client = f.core.clone();
        let csrs = csrs.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(32) {
                client
                    .issue(issue_req("t1", &format!("p{i}"), csrs[i % 64].clone()))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{n} issuances in {secs:.2} s: {:.0}/s", n as f64 / secs);
}

#[tokio::test]
async fn i8_issue_beyond_the_in_flight_bound_is_shed_with_retry_after() {
    let mut f = fleet_with(1, 1, AllowList::uid(current_uid()), 0).await;
    f.bootstrap("t1", KeyType::EcP256).await;
    let e = err(f
        .core
        .issue(issue_req("t1", "k", csr(&["o.example.com"])))
        .await
        .unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::RateLimited, "core.overloaded")
    );
    assert!(e.retry_after.is_some());
}
