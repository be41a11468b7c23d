#![allow(clippy::unwrap_used, missing_docs)]
//! Revocation status in the core (docs/status.md): a real core with its status engine, over a real
//! Unix-socket gRPC hop, against an in-process FAKE signer that really signs (aws-lc-rs keys; a
//! dev-only stand-in, I-1). OpenSSL (`ocsp`, `crl`, `verify`) and pkilint judge the output.
//!
//! Each core runs on its own Tokio runtime so a test can stop it (every task of it) and start a
//! new one on the same store file: a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use certgate_core::ca::Authority;
use certgate_core::config::Custodian;
use certgate_core::issue::{Fault, Issuer};
use certgate_core::service::{AdminService, CoreService, State};
use certgate_core::signer_client::Signer as SignerClientWrap;
use certgate_core::status::{ResponderMode, StatusConfig, StatusEngine};
use certgate_core::store::status::StatusStore;
use certgate_core::store::{SqliteStore, Store};
use certgate_proto::admin::admin_client::AdminClient;
use certgate_proto::admin::admin_server::AdminServer;
use certgate_proto::admin::{
    ApproveCeremonyRequest, CeremonyAction, CreateIssuingCaRequest, CreateRoot,
    ExecuteCeremonyRequest, StartCeremonyRequest, Tenant, ceremony_action,
};
use certgate_proto::core::core_client::CoreClient;
use certgate_proto::core::core_server::CoreServer;
use certgate_proto::core::{
    CertRef, GetCrlRequest, GetOcspRequest, IssueRequest, RevokeRequest, StatusEvent,
    WatchStatusRequest, issue_request, revoke_request, status_event::Event,
};
use certgate_proto::signer::signer_server::{Signer, SignerServer};
use certgate_proto::signer::*;
use certgate_proto::transport::{AllowList, bind_unix, current_uid, unix_channel, unix_incoming};
use certgate_proto::{ErrorKind, RpcError};
use der::Decode;
use tonic::{Request, Response, Status};

// ---------------------------------------------------------------------------------------------
// The fake signer (as in fake_signer.rs): P-256 keys, really signs, counts batches.

#[derive(Default)]
struct Fake {
    keys: Mutex<HashMap<String, (KeyInfo, Arc<EcdsaKeyPair>)>>,
    batches: std::sync::atomic::AtomicUsize,
}

#[derive(Clone, Default)]
struct FakeSigner(Arc<Fake>);

impl FakeSigner {
    fn sign_one(&self, key_id: &str, msg: &[u8]) -> Result<Vec<u8>, Status> {
        let key = self.0.keys.lock().unwrap().get(key_id).map(|k| k.1.clone());
        let key =
            key.ok_or_else(|| Status::from(RpcError::not_found("signer.key_unknown", "no key")))?;
        Ok(key
            .sign(&SystemRandom::new(), msg)
            .unwrap()
            .as_ref()
            .to_vec())
    }
}

#[tonic::async_trait]
impl Signer for FakeSigner {
    async fn sign(&self, r: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let r = r.into_inner();
        Ok(Response::new(SignResponse {
            signature: self.sign_one(&r.key_id, &r.message)?,
        }))
    }
    async fn sign_batch(
        &self,
        r: Request<SignBatchRequest>,
    ) -> Result<Response<SignBatchResponse>, Status> {
        let r = r.into_inner();
        self.0
            .batches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut signatures = Vec::new();
        for m in r.messages {
            signatures.push(self.sign_one(&r.key_id, &m)?);
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
        if r.key_type != KeyType::EcP256 as i32 {
            return Err(Status::invalid_argument("fake signer: P-256 only"));
        }
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let k = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let spki = k.public_key().as_der().unwrap().as_ref().to_vec();
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
        keys.insert(r.key_id, (info.clone(), Arc::new(k)));
        Ok(Response::new(info))
    }
}

// ---------------------------------------------------------------------------------------------
// A core on its own runtime.

struct CoreProc {
    rt: Option<tokio::runtime::Runtime>,
    engine: Arc<StatusEngine>,
    store: Arc<SqliteStore>,
}

impl Drop for CoreProc {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    fake: FakeSigner,
    custodian: Ed25519KeyPair,
    core_proc: Option<CoreProc>,
    core: CoreClient<tonic::transport::Channel>,
    admin: AdminClient<tonic::transport::Channel>,
}

fn cfg() -> StatusConfig {
    StatusConfig {
        sweep_interval_secs: 3600,
        ..StatusConfig::default()
    }
}

fn start_core(dir: &Path, custodian: &Ed25519KeyPair, cfg: StatusConfig) -> CoreProc {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let core_sock = dir.join("core.sock");
    let _ = std::fs::remove_file(&core_sock);
    let custodian_pub = custodian.public_key().as_ref().to_vec();
    let dir = dir.to_owned();
    let (engine, store) = rt.block_on(async move {
        let store = Arc::new(SqliteStore::open(&dir.join("core.db")).unwrap());
        let dyn_store: Arc<dyn Store> = store.clone();
        let signer = SignerClientWrap::new(
            unix_channel(dir.join("signer.sock")),
            Duration::from_secs(5),
        );
        let state = Arc::new(State {
            store: dyn_store.clone(),
            issuer: Issuer::new(dyn_store.clone(), signer.clone(), 64, Fault::None),
            authority: Authority::new(
                dyn_store.clone(),
                signer.clone(),
                vec![Custodian {
                    name: "c0".into(),
                    ed25519: custodian_pub,
                }],
                1,
            ),
            allow: AllowList::uid(current_uid()),
            admin_allow: AllowList::uid(current_uid()),
            audit_key_sha256: None,
        });
        let engine = StatusEngine::new(dyn_store, store.clone(), signer, cfg).unwrap();
        engine.spawn();
        state.issuer.attach_status(engine.clone());
        let listener = bind_unix(&core_sock).unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(CoreServer::new(CoreService(state.clone())))
                .add_service(AdminServer::new(AdminService(state)))
                .serve_with_incoming(unix_incoming(listener)),
        );
        (engine, store)
    });
    CoreProc {
        rt: Some(rt),
        engine,
        store,
    }
}

async fn env(cfg: StatusConfig) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let fake = FakeSigner::default();
    let listener = bind_unix(&dir.join("signer.sock")).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SignerServer::new(fake.clone()))
            .serve_with_incoming(unix_incoming(listener)),
    );
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let custodian = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let d = dir.clone();
    let c = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let core_proc = tokio::task::spawn_blocking(move || start_core(&d, &c, cfg))
        .await
        .unwrap();
    let ch = unix_channel(dir.join("core.sock"));
    Env {
        _tmp: tmp,
        dir,
        fake,
        custodian,
        core_proc: Some(core_proc),
        core: CoreClient::new(ch.clone()),
        admin: AdminClient::new(ch),
    }
}

impl Env {
    fn engine(&self) -> Arc<StatusEngine> {
        self.core_proc.as_ref().unwrap().engine.clone()
    }

    fn status(&self) -> Arc<SqliteStore> {
        self.core_proc.as_ref().unwrap().store.clone()
    }

    async fn restart(&mut self, cfg: StatusConfig) {
        let old = self.core_proc.take();
        tokio::task::spawn_blocking(move || drop(old))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let d = self.dir.clone();
        let pkcs8_pub = self.custodian.public_key().as_ref().to_vec();
        let _ = pkcs8_pub;
        // The custodian key is only needed for ceremonies, already done; a throwaway one will do.
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let c = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        self.core_proc = Some(
            tokio::task::spawn_blocking(move || start_core(&d, &c, cfg))
                .await
                .unwrap(),
        );
        let ch = unix_channel(self.dir.join("core.sock"));
        self.core = CoreClient::new(ch.clone());
        self.admin = AdminClient::new(ch);
    }

    async fn bootstrap(&mut self, tenant: &str) {
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
        // PEM files for OpenSSL.
        let store = self.status();
        let root = store.get_ca(&format!("root-{tenant}")).unwrap().unwrap();
        let issuing = store.get_ca(&format!("{tenant}-issuing")).unwrap().unwrap();
        std::fs::write(
            self.dir.join(format!("{tenant}-root.pem")),
            pem("CERTIFICATE", &root.cert_der),
        )
        .unwrap();
        std::fs::write(
            self.dir.join(format!("{tenant}-issuing.pem")),
            pem("CERTIFICATE", &issuing.cert_der),
        )
        .unwrap();
    }

    /// Issues a certificate; writes `{name}.pem`; returns the serial.
    async fn issue(&mut self, tenant: &str, name: &str) -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec![format!("{name}.example.com")]).unwrap();
        let csr = params.serialize_request(&key).unwrap().der().to_vec();
        let resp = self
            .core
            .issue(IssueRequest {
                tenant: tenant.into(),
                request: Some(issue_request::Request::CsrDer(csr)),
                protocol: "test".into(),
                idempotency_key: format!("issue-{name}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        std::fs::write(
            self.dir.join(format!("{name}.pem")),
            pem("CERTIFICATE", &resp.certificate_der),
        )
        .unwrap();
        resp.serial_hex
    }

    async fn revoke(&mut self, tenant: &str, serial: &str, reason: u32) {
        self.core
            .revoke(RevokeRequest {
                tenant: tenant.into(),
                target: Some(revoke_request::Target::SerialHex(serial.into())),
                reason,
                idempotency_key: format!("revoke-{serial}"),
                protocol: "test".into(),
                client_identity: "test".into(),
            })
            .await
            .unwrap();
    }

    /// Waits until the stored response for (serial, alg) satisfies `ok`.
    async fn wait_ocsp(
        &self,
        tenant: &str,
        serial: &str,
        alg: &str,
        ok: impl Fn(&[u8]) -> bool,
    ) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let store = self.status();
            if let Some(r) = store.get_ocsp(tenant, serial, alg).unwrap()
                && ok(&r.response_der)
            {
                return r.response_der;
            }
            assert!(
                Instant::now() < deadline,
                "no precomputed {alg} response for {serial}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
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

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn pkilint(tool: &str, extra: &[&str], file: &Path) {
    let out = Command::new(tool)
        .arg("lint")
        .args(extra)
        .args(["-s", "ERROR", "--document-format", "DER"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("pkilint ({tool}) is installed: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let findings: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        findings.is_empty(),
        "{tool} {}: findings:\n{text}",
        file.display()
    );
}

fn is_revoked(der: &[u8]) -> bool {
    let resp = x509_ocsp::OcspResponse::from_der(der).unwrap();
    let basic =
        x509_ocsp::BasicOcspResponse::from_der(resp.response_bytes.unwrap().response.as_bytes())
            .unwrap();
    matches!(
        basic.tbs_response_data.responses[0].cert_status,
        x509_ocsp::CertStatus::Revoked(_)
    )
}

fn crl_number(der: &[u8]) -> u64 {
    let crl = x509_cert::crl::CertificateList::from_der(der).unwrap();
    let ext = crl
        .tbs_cert_list
        .crl_extensions
        .unwrap()
        .into_iter()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_CRL_NUMBER)
        .unwrap();
    let n = x509_cert::ext::pkix::CrlNumber::from_der(ext.extn_value.as_bytes()).unwrap();
    n.0.as_bytes()
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

fn crl_lists(der: &[u8], serial: &str) -> bool {
    let crl = x509_cert::crl::CertificateList::from_der(der).unwrap();
    crl.tbs_cert_list
        .revoked_certificates
        .unwrap_or_default()
        .iter()
        .any(|r| hex::encode(r.serial_number.as_bytes()) == serial)
}

fn shard(serial: &str) -> String {
    certgate_core::status::crl::shard_of(serial)
        .unwrap()
        .to_string()
}

// ---------------------------------------------------------------------------------------------

/// Checks a precomputed response with `openssl ocsp -respin` for both CertID hash algorithms;
/// returns OpenSSL's text for the SHA-256 one.
fn openssl_check_ocsp(e: &Env, name: &str, serial: &str, resps: &[(&str, Vec<u8>)]) -> String {
    let mut last = String::new();
    for (alg, der) in resps {
        let file = format!("{name}-{alg}.der");
        std::fs::write(e.dir.join(&file), der).unwrap();
        // The request OpenSSL would send (its CertID) must be the one the response answers.
        let req = format!("{name}-{alg}-req.der");
        let (ok, out) = openssl(
            &e.dir,
            &[
                "ocsp",
                "-issuer",
                "t1-issuing.pem",
                &format!("-{alg}"),
                "-cert",
                &format!("{name}.pem"),
                "-no_nonce",
                "-reqout",
                &req,
            ],
        );
        assert!(ok, "openssl ocsp -reqout: {out}");
        let (ok, out) = openssl(
            &e.dir,
            &[
                "ocsp",
                "-respin",
                &file,
                "-issuer",
                "t1-issuing.pem",
                &format!("-{alg}"),
                "-cert",
                &format!("{name}.pem"),
                "-verify_other",
                "t1-issuing.pem",
                "-CAfile",
                "t1-root.pem",
                "-no_nonce",
                "-resp_text",
            ],
        );
        assert!(ok, "openssl ocsp -respin {alg}: {out}");
        assert!(out.contains("Response verify OK"), "{alg}: {out}");
        // OpenSSL found a status for the CertID it computed with this hash algorithm.
        assert!(
            out.contains(&format!("{name}.pem: good"))
                || out.contains(&format!("{name}.pem: revoked")),
            "{alg}: {out}"
        );
        assert!(std::fs::metadata(e.dir.join(&req)).unwrap().len() > 0);
        let id_alg = if *alg == "sha1" { "sha1" } else { "sha256" };
        assert!(
            out.contains(&format!("Hash Algorithm: {id_alg}")),
            "{alg}: {out}"
        );
        assert!(
            out.to_ascii_lowercase()
                .contains(&serial.to_ascii_lowercase()),
            "serial {serial} in {out}"
        );
        assert!(!out.contains("Response Extensions"), "no nonce: {out}");
        pkilint("lint_ocsp_response", &[], &e.dir.join(&file));
        last = out;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precomputed_ocsp_good_and_revoked_verify_with_openssl_for_sha1_and_sha256() {
    let mut e = env(cfg()).await;
    e.bootstrap("t1").await;
    let good = e.issue("t1", "good").await;
    let bad = e.issue("t1", "bad").await;

    // Precomputed at issuance, both CertID variants, without anyone asking.
    let mut resps = Vec::new();
    for alg in ["sha1", "sha256"] {
        resps.push((alg, e.wait_ocsp("t1", &good, alg, |_| true).await));
    }
    let text = openssl_check_ocsp(&e, "good", &good, &resps);
    assert!(text.contains("Cert Status: good"), "{text}");

    e.wait_ocsp("t1", &bad, "sha256", |_| true).await;
    let t0 = Instant::now();
    e.revoke("t1", &bad, 1).await;
    let mut resps = Vec::new();
    for alg in ["sha1", "sha256"] {
        resps.push((alg, e.wait_ocsp("t1", &bad, alg, is_revoked).await));
    }
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "re-signed {:?} after the revocation",
        t0.elapsed()
    );
    let text = openssl_check_ocsp(&e, "bad", &bad, &resps);
    assert!(text.contains("Cert Status: revoked"), "{text}");
    assert!(text.contains("Revocation Reason: keyCompromise"), "{text}");
    assert!(text.contains("Revocation Time:"), "{text}");

    // The precompute worker batches: both variants of a certificate went in one SignBatch.
    assert!(e.fake.0.batches.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_ocsp_serves_precomputed_sets_and_refuses_other_tenants() {
    let mut e = env(cfg()).await;
    e.bootstrap("t1").await;
    e.bootstrap("t2").await;
    let a = e.issue("t1", "a").await;
    let b = e.issue("t1", "b").await;
    let other = e.issue("t2", "other").await;
    let pre = e.wait_ocsp("t1", &a, "sha1", |_| true).await;

    let one = e
        .core
        .get_ocsp(GetOcspRequest {
            tenant: "t1".into(),
            certs: vec![CertRef {
                issuer_id: "t1-issuing".into(),
                hash_alg: "sha1".into(),
                serial_hex: a.to_uppercase(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.response_der, pre, "the precomputed bytes");
    assert_eq!(one.serial_hex, a);
    assert_eq!(one.certs.len(), 1);
    assert!(one.next_update_unix > one.this_update_unix);

    // A set: signed on demand, covering exactly those certificates.
    let set = e
        .core
        .get_ocsp(GetOcspRequest {
            tenant: "t1".into(),
            certs: vec![
                CertRef {
                    issuer_id: "t1-issuing".into(),
                    hash_alg: "sha256".into(),
                    serial_hex: a.clone(),
                },
                CertRef {
                    issuer_id: "t1-issuing".into(),
                    hash_alg: "sha1".into(),
                    serial_hex: b.clone(),
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(set.serial_hex.is_empty());
    assert_eq!(set.certs.len(), 2);
    let resp = x509_ocsp::OcspResponse::from_der(&set.response_der).unwrap();
    let basic =
        x509_ocsp::BasicOcspResponse::from_der(resp.response_bytes.unwrap().response.as_bytes())
            .unwrap();
    let serials: Vec<String> = basic
        .tbs_response_data
        .responses
        .iter()
        .map(|r| hex::encode(r.cert_id.serial_number.as_bytes()))
        .collect();
    assert_eq!(serials, vec![a.clone(), b.clone()]);
    std::fs::write(e.dir.join("set.der"), &set.response_der).unwrap();
    let (ok, out) = openssl(
        &e.dir,
        &[
            "ocsp",
            "-respin",
            "set.der",
            "-verify_other",
            "t1-issuing.pem",
            "-CAfile",
            "t1-root.pem",
            "-no_nonce",
            "-resp_text",
        ],
    );
    assert!(ok && out.contains("Response verify OK"), "{out}");

    // I-4: tenant t1 cannot get t2's certificate, not even under t2's issuer id.
    for issuer in ["t1-issuing", "t2-issuing"] {
        let err = e
            .core
            .get_ocsp(GetOcspRequest {
                tenant: "t1".into(),
                certs: vec![CertRef {
                    issuer_id: issuer.into(),
                    hash_alg: "sha1".into(),
                    serial_hex: other.clone(),
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{issuer}: {err:?}");
    }
    // Bad input: unknown hash algorithm, garbage serial, empty set.
    for (alg, serial) in [("md5", a.as_str()), ("sha1", "zz"), ("sha1", "")] {
        let err = e
            .core
            .get_ocsp(GetOcspRequest {
                tenant: "t1".into(),
                certs: vec![CertRef {
                    issuer_id: "t1-issuing".into(),
                    hash_alg: alg.into(),
                    serial_hex: serial.into(),
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{alg} {serial}");
    }
    let err = e
        .core
        .get_ocsp(GetOcspRequest {
            tenant: "t1".into(),
            certs: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Right after a revocation the single answer is already "revoked", whether or not the
    // worker has re-signed yet (a stale "good" is never served).
    e.revoke("t1", &b, 1).await;
    let now_revoked = e
        .core
        .get_ocsp(GetOcspRequest {
            tenant: "t1".into(),
            certs: vec![CertRef {
                issuer_id: "t1-issuing".into(),
                hash_alg: "sha256".into(),
                serial_hex: b.clone(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(is_revoked(&now_revoked.response_der));
    // GetCrl: another tenant's issuer and unknown shards are NOT_FOUND.
    for (tenant, issuer, shard) in [
        ("t1", "t2-issuing", "full"),
        ("t1", "t1-issuing", "16"),
        ("t1", "t1-issuing", "x"),
        ("t1", "nope", "full"),
    ] {
        let err = e
            .core
            .get_crl(GetCrlRequest {
                tenant: tenant.into(),
                issuer_id: issuer.into(),
                shard: shard.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{issuer} {shard}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_set_signing_is_bounded() {
    let mut e = env(StatusConfig {
        max_on_demand: 1,
        ..cfg()
    })
    .await;
    e.bootstrap("t1").await;
    let a = e.issue("t1", "a").await;
    let b = e.issue("t1", "b").await;
    let req = GetOcspRequest {
        tenant: "t1".into(),
        certs: [&a, &b]
            .iter()
            .map(|s| CertRef {
                issuer_id: "t1-issuing".into(),
                hash_alg: "sha1".into(),
                serial_hex: (*s).clone(),
            })
            .collect(),
    };
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let mut c = e.core.clone();
        let r = req.clone();
        tasks.push(tokio::spawn(async move { c.get_ocsp(r).await }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                assert!(RpcError::from_status(&s).retry_after.is_some());
                busy += 1;
            }
        }
    }
    assert!(ok >= 1, "some were signed");
    assert!(
        busy >= 1,
        "beyond the bound: UNAVAILABLE with retry-after ({ok} ok)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crls_verify_with_openssl_and_revocation_fails_crl_check() {
    let mut e = env(cfg()).await;
    e.bootstrap("t1").await;
    let good = e.issue("t1", "good").await;
    let bad = e.issue("t1", "bad").await;
    e.revoke("t1", &bad, 4).await;
    let bad_shard = shard(&bad);
    // Wait for the rebuilt shard and full CRLs listing the revoked certificate.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (full, bad_crl) = loop {
        let full = e.status().get_crl("t1-issuing", "full").unwrap();
        let sh = e.status().get_crl("t1-issuing", &bad_shard).unwrap();
        if let (Some(f), Some(s)) = (full, sh)
            && crl_lists(&f.crl_der, &bad)
            && crl_lists(&s.crl_der, &bad)
        {
            break (f, s);
        }
        assert!(Instant::now() < deadline, "CRLs not rebuilt");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Served over the RPC byte for byte.
    let served = e
        .core
        .get_crl(GetCrlRequest {
            tenant: "t1".into(),
            issuer_id: "t1-issuing".into(),
            shard: bad_shard.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served.crl_der, bad_crl.crl_der);
    let good_crl = e
        .core
        .get_crl(GetCrlRequest {
            tenant: "t1".into(),
            issuer_id: "t1-issuing".into(),
            shard: shard(&good),
        })
        .await
        .unwrap()
        .into_inner();

    std::fs::write(e.dir.join("full.der"), &full.crl_der).unwrap();
    std::fs::write(e.dir.join("bad-shard.der"), &bad_crl.crl_der).unwrap();
    std::fs::write(e.dir.join("good-shard.der"), &good_crl.crl_der).unwrap();
    std::fs::write(
        e.dir.join("bad-shard.pem"),
        pem("X509 CRL", &bad_crl.crl_der),
    )
    .unwrap();
    std::fs::write(
        e.dir.join("good-shard.pem"),
        pem("X509 CRL", &good_crl.crl_der),
    )
    .unwrap();
    for f in ["full.der", "bad-shard.der", "good-shard.der"] {
        let (ok, out) = openssl(
            &e.dir,
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                f,
                "-CAfile",
                "t1-issuing.pem",
                "-noout",
                "-text",
            ],
        );
        assert!(ok && out.contains("verify OK"), "{f}: {out}");
        assert!(
            out.contains("Issuing Distribution Point: critical"),
            "{out}"
        );
        assert!(out.contains("Only User Certificates"), "{out}");
        pkilint("lint_crl", &["-t", "CRL", "-p", "PKIX"], &e.dir.join(f));
    }
    let (_, text) = openssl(
        &e.dir,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "bad-shard.der",
            "-noout",
            "-text",
        ],
    );
    assert!(
        text.contains(&format!(
            "http://127.0.0.1:8080/crl/t1-issuing/{bad_shard}.crl"
        )),
        "{text}"
    );
    assert!(text.contains("Superseded"), "{text}");

    // The relying party: the good certificate passes a CRL check with its shard's CRL, the
    // revoked one fails with its shard's CRL.
    let (ok, out) = openssl(
        &e.dir,
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "t1-root.pem",
            "-untrusted",
            "t1-issuing.pem",
            "-CRLfile",
            "good-shard.pem",
            "good.pem",
        ],
    );
    assert!(ok, "good cert with its shard CRL: {out}");
    let (ok, out) = openssl(
        &e.dir,
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "t1-root.pem",
            "-untrusted",
            "t1-issuing.pem",
            "-CRLfile",
            "bad-shard.pem",
            "bad.pem",
        ],
    );
    assert!(!ok && out.contains("revoked"), "revoked cert: {out}");

    // The full CRL is in scope for every certificate (its IDP names every shard URL too).
    std::fs::write(e.dir.join("full.pem"), pem("X509 CRL", &full.crl_der)).unwrap();
    for (leaf, want_ok) in [("good.pem", true), ("bad.pem", false)] {
        let (ok, out) = openssl(
            &e.dir,
            &[
                "verify",
                "-crl_check",
                "-CAfile",
                "t1-root.pem",
                "-untrusted",
                "t1-issuing.pem",
                "-CRLfile",
                "full.pem",
                leaf,
            ],
        );
        assert_eq!(ok, want_ok, "{leaf} with the full CRL: {out}");
        if !want_ok {
            assert!(out.contains("revoked"), "{out}");
        }
    }
    // A shard CRL is not a valid answer for a certificate of another shard.
    if shard(&good) != bad_shard {
        let (ok, out) = openssl(
            &e.dir,
            &[
                "verify",
                "-crl_check",
                "-CAfile",
                "t1-root.pem",
                "-untrusted",
                "t1-issuing.pem",
                "-CRLfile",
                "bad-shard.pem",
                "good.pem",
            ],
        );
        assert!(
            !ok,
            "another shard's CRL must not vouch for a certificate: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_numbers_increase_across_a_core_restart() {
    let mut e = env(cfg()).await;
    e.bootstrap("t1").await;
    let a = e.issue("t1", "a").await;
    e.revoke("t1", &a, 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        if let Some(f) = e.status().get_crl("t1-issuing", "full").unwrap()
            && crl_lists(&f.crl_der, &a)
        {
            break crl_number(&f.crl_der);
        }
        assert!(Instant::now() < deadline, "full CRL not rebuilt");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(before >= 1, "numbers start at 1");

    e.restart(cfg()).await;
    let b = e.issue("t1", "b").await;
    e.revoke("t1", &b, 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        if let Some(f) = e.status().get_crl("t1-issuing", "full").unwrap()
            && crl_lists(&f.crl_der, &b)
        {
            assert!(crl_lists(&f.crl_der, &a), "still lists the earlier one");
            break crl_number(&f.crl_der);
        }
        assert!(
            Instant::now() < deadline,
            "full CRL not rebuilt after restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        after > before,
        "CRL number {after} after restart, {before} before"
    );
}

async fn next(stream: &mut tonic::Streaming<StatusEvent>) -> StatusEvent {
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("an event within 30 s")
        .unwrap()
        .expect("stream open")
}

/// Reads a stream up to `snapshot_complete`; returns (events before it, its cursor).
async fn until_complete(stream: &mut tonic::Streaming<StatusEvent>) -> (Vec<StatusEvent>, u64) {
    let mut seen = Vec::new();
    loop {
        let ev = next(stream).await;
        if let Some(Event::SnapshotComplete(_)) = ev.event {
            return (seen, ev.cursor);
        }
        seen.push(ev);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_status_snapshot_live_resume_and_reset() {
    let mut e = env(StatusConfig {
        event_retention: 100,
        heartbeat_secs: 1,
        ..cfg()
    })
    .await;
    e.bootstrap("t1").await;
    e.bootstrap("t2").await;
    let a = e.issue("t1", "a").await;
    let b = e.issue("t1", "b").await;
    let _c = e.issue("t2", "c").await;
    for s in [&a, &b] {
        e.wait_ocsp("t1", s, "sha256", |_| true).await;
        e.wait_ocsp("t1", s, "sha1", |_| true).await;
    }
    // Wait for the CRLs built at CA creation.
    let deadline = Instant::now() + Duration::from_secs(30);
    while e
        .status()
        .crl_times()
        .unwrap()
        .iter()
        .filter(|c| c.0 == "t1-issuing")
        .count()
        < 17
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Snapshot for tenant t1 only: issuer first, every response and CRL, then complete.
    let mut s = e
        .core
        .watch_status(WatchStatusRequest {
            cursor: 0,
            tenants: vec!["t1".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let (snap, snap_cursor) = until_complete(&mut s).await;
    assert!(
        matches!(&snap[0].event, Some(Event::Issuer(i)) if i.issuer_id == "t1-issuing" && !i.cert_der.is_empty()),
        "issuer first: {:?}",
        snap[0]
    );
    let ocsp: Vec<_> = snap
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Ocsp(o)) => Some(o),
            _ => None,
        })
        .collect();
    let crls = snap
        .iter()
        .filter(|e| matches!(e.event, Some(Event::Crl(_))))
        .count();
    assert_eq!(ocsp.len(), 4, "two certificates × two CertID algorithms");
    assert!(ocsp.iter().all(|o| o.tenant == "t1"));
    assert_eq!(crls, 17, "full + 16 shards");
    assert!(
        snap.iter().all(|e| e.cursor == 0),
        "snapshot entries carry no cursor"
    );
    assert!(snap_cursor > 0);

    // Live: a revocation arrives within a second.
    let t0 = Instant::now();
    e.revoke("t1", &a, 1).await;
    let live_cursor;
    loop {
        let ev = next(&mut s).await;
        if let Some(Event::Ocsp(o)) = &ev.event
            && o.serial_hex == a
            && is_revoked(&o.response_der)
        {
            assert!(ev.cursor > snap_cursor);
            live_cursor = ev.cursor;
            break;
        }
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "live event after {took:?}");
    drop(s);

    // Resume from the snapshot cursor: issuers, then only newer events — no snapshot.
    let d = e.issue("t1", "d").await;
    e.wait_ocsp("t1", &d, "sha256", |_| true).await;
    let mut s = e
        .core
        .watch_status(WatchStatusRequest {
            cursor: live_cursor,
            tenants: vec!["t1".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let mut serials = Vec::new();
    loop {
        let ev = next(&mut s).await;
        match ev.event {
            Some(Event::Issuer(_)) => {}
            Some(Event::Ocsp(o)) => {
                assert!(ev.cursor > live_cursor, "only newer events");
                serials.push(o.serial_hex);
            }
            Some(Event::Crl(_)) => assert!(ev.cursor > live_cursor),
            Some(Event::Heartbeat(_)) => break,
            other => panic!("unexpected on resume: {other:?}"),
        }
    }
    assert!(serials.contains(&d), "the new certificate: {serials:?}");
    assert!(!serials.contains(&b), "nothing from before the cursor");
    drop(s);

    // Too old: push > retention events, prune, and a stale cursor gets reset + snapshot.
    for i in 0..60 {
        e.issue("t2", &format!("bulk{i}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !e.status().pending(1).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "queue not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    e.engine().sweep_once(false).await.unwrap();
    assert!(e.status().resumable_from().unwrap() > snap_cursor);
    let mut s = e
        .core
        .watch_status(WatchStatusRequest {
            cursor: snap_cursor,
            tenants: vec!["t1".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let mut got_reset = false;
    loop {
        let ev = next(&mut s).await;
        match ev.event {
            Some(Event::Issuer(_)) => assert!(!got_reset),
            Some(Event::Reset(_)) => got_reset = true,
            Some(Event::SnapshotComplete(_)) => break,
            Some(Event::Ocsp(_) | Event::Crl(_)) => assert!(got_reset, "reset before snapshot"),
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert!(got_reset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegated_responder_signs_with_an_ocsp_nocheck_certificate() {
    let mut responders = std::collections::BTreeMap::new();
    responders.insert("t1".to_owned(), ResponderMode::Delegated);
    let mut e = env(StatusConfig {
        responders,
        ..cfg()
    })
    .await;
    e.bootstrap("t1").await;
    let a = e.issue("t1", "a").await;
    let der = e.wait_ocsp("t1", &a, "sha1", |_| true).await;
    let resp = x509_ocsp::OcspResponse::from_der(&der).unwrap();
    let basic =
        x509_ocsp::BasicOcspResponse::from_der(resp.response_bytes.unwrap().response.as_bytes())
            .unwrap();
    let certs = basic.certs.expect("the responder certificate is included");
    assert_eq!(certs.len(), 1);
    let responder_pem = pem("CERTIFICATE", &der::Encode::to_der(&certs[0]).unwrap());
    std::fs::write(e.dir.join("responder.pem"), responder_pem).unwrap();
    let (_, text) = openssl(&e.dir, &["x509", "-in", "responder.pem", "-noout", "-text"]);
    assert!(text.contains("OCSP Signing"), "{text}");
    assert!(text.contains("OCSP No Check"), "{text}");
    // The responder key lives in the signer with role OCSP.
    let role = e
        .fake
        .0
        .keys
        .lock()
        .unwrap()
        .get("t1-issuing-ocsp")
        .map(|k| k.0.role)
        .expect("responder key generated");
    assert_eq!(role, KeyRole::Ocsp as i32);
    let resps = vec![
        ("sha1", der),
        ("sha256", e.wait_ocsp("t1", &a, "sha256", |_| true).await),
    ];
    let text = openssl_check_ocsp(&e, "a", &a, &resps);
    assert!(text.contains("Cert Status: good"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_sweep_re_signs_responses_before_next_update_with_sign_batch() {
    let mut e = env(StatusConfig {
        ocsp_validity_secs: 60,
        ocsp_refresh_after_secs: 1,
        ..cfg()
    })
    .await;
    e.bootstrap("t1").await;
    let a = e.issue("t1", "a").await;
    e.wait_ocsp("t1", &a, "sha1", |_| true).await;
    let first = e.status().get_ocsp("t1", &a, "sha1").unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let batches = e.fake.0.batches.load(std::sync::atomic::Ordering::SeqCst);
    e.engine().sweep_once(false).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let r = e.status().get_ocsp("t1", &a, "sha1").unwrap().unwrap();
        if r.cursor > first.cursor {
            break r;
        }
        assert!(Instant::now() < deadline, "not refreshed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(second.this_update_unix > first.this_update_unix);
    assert!(second.next_update_unix > first.next_update_unix);
    assert_ne!(second.response_der, first.response_der);
    assert!(e.fake.0.batches.load(std::sync::atomic::Ordering::SeqCst) > batches);
    // Still valid for OpenSSL.
    let resps = vec![
        ("sha1", second.response_der),
        (
            "sha256",
            e.status()
                .get_ocsp("t1", &a, "sha256")
                .unwrap()
                .unwrap()
                .response_der,
        ),
    ];
    openssl_check_ocsp(&e, "a", &a, &resps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_that_cannot_sign_does_not_hold_up_the_others() {
    let mut e = env(cfg()).await;
    e.bootstrap("t1").await;
    e.bootstrap("t2").await;
    let stuck = e.issue("t2", "stuck").await;
    e.wait_ocsp("t2", &stuck, "sha1", |_| true).await;
    // t2's issuing key disappears from the signer: its work keeps failing.
    e.fake.0.keys.lock().unwrap().remove("t2-issuing");
    e.revoke("t2", &stuck, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = e.issue("t1", "a").await;
    e.revoke("t1", &a, 1).await;
    e.wait_ocsp("t1", &a, "sha256", is_revoked).await;
    // The failing row is still queued (retried later), not lost.
    let pending = e.status().pending(100).unwrap();
    assert!(pending.iter().any(|p| p.serial_hex == stuck), "{pending:?}");
    let stored = e.status().get_ocsp("t2", &stuck, "sha1").unwrap().unwrap();
    assert!(!is_revoked(&stored.response_der));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_is_dropped_and_resumes_by_cursor() {
    let mut e = env(StatusConfig {
        subscriber_timeout_ms: 300,
        heartbeat_secs: 2,
        ..cfg()
    })
    .await;
    e.bootstrap("t1").await;
    // A client with a small HTTP/2 window, so transport buffers do not hide the stall.
    let path = Arc::new(e.dir.join("core.sock"));
    let ch = tonic::transport::Endpoint::from_static("http://localhost")
        .initial_stream_window_size(Some(4096))
        .initial_connection_window_size(Some(65_535))
        .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(&*path).await?,
                ))
            }
        }));
    let mut s = CoreClient::new(ch)
        .watch_status(WatchStatusRequest {
            cursor: 0,
            tenants: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let (_, cursor) = until_complete(&mut s).await;
    // Stop reading while far more events than the channel and the HTTP/2 windows hold arrive.
    let mut last = String::new();
    for i in 0..150 {
        last = e.issue("t1", &format!("flood{i}")).await;
    }
    e.wait_ocsp("t1", &last, "sha256", |_| true).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Draining what was buffered, the stream then ends: the core dropped this subscriber.
    let mut got = 0usize;
    let mut last_cursor = cursor;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(30), s.message()).await {
            Ok(Ok(Some(ev))) => {
                got += 1;
                if ev.cursor != 0 {
                    last_cursor = ev.cursor;
                }
                assert!(
                    !matches!(ev.event, Some(Event::Heartbeat(_))),
                    "a heartbeat means the stream was kept, after {got} events"
                );
            }
            Ok(Ok(None)) | Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    assert!(
        ended,
        "the stream of a stalled subscriber ends ({got} events read)"
    );
    assert!(
        got < 300,
        "it did not get all 300 events before being dropped: {got}"
    );
    // Reconnecting with its last cursor resumes: no reset, no snapshot, the rest follows.
    let mut s = e
        .core
        .watch_status(WatchStatusRequest {
            cursor: last_cursor,
            tenants: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut resumed = 0usize;
    loop {
        let ev = next(&mut s).await;
        match ev.event {
            Some(Event::Issuer(_)) => {}
            Some(Event::Ocsp(_)) => {
                assert!(ev.cursor > last_cursor);
                resumed += 1;
            }
            Some(Event::Crl(_)) => assert!(ev.cursor > last_cursor),
            Some(Event::Heartbeat(_)) => break,
            other => panic!("unexpected on resume: {other:?}"),
        }
    }
    assert!(
        resumed > 0 && got + resumed >= 300,
        "got {got} + resumed {resumed}"
    );
}
