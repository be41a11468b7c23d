//! certgate-core as a real process against the real certgate-signer binary: idempotency across a
//! kill (CERTGATE_FAULT=crash_after_sign), signer down, malformed CSRs and profile refusals,
//! ceremony quorum, tenant isolation, `openssl verify` and `audit-verify` tamper detection.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use certgate_e2e::{ChildGuard, bin, run, temp_dir, wait_for_path};
use certgate_proto::admin::admin_client::AdminClient;
use certgate_proto::admin::{
    ApproveCeremonyRequest, CeremonyAction, CreateIntermediate, CreateIssuingCaRequest, CreateRoot,
    ExecuteCeremonyRequest, ListCasRequest, StartCeremonyRequest, Tenant, ceremony_action,
};
use certgate_proto::core::core_client::CoreClient;
use certgate_proto::core::{
    GetCertificateRequest, IssueRequest, RevokeRequest, issue_request, revoke_request,
};
use certgate_proto::signer::KeyType;
use certgate_proto::transport::{current_uid, unix_channel};
use certgate_proto::{ErrorKind, RpcError};
use tonic::transport::Channel;

struct Fleet {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    signer: Option<ChildGuard>,
    core: Option<ChildGuard>,
    custodians: usize,
}

fn openssl(args: &[&str], dir: &Path) -> String {
    let (ok, out, err) = run(Command::new("openssl").args(args).current_dir(dir));
    assert!(ok, "openssl {args:?}: {err}");
    out
}

fn wait_for_log(guard: &ChildGuard, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if guard.log().matches(needle).count() >= count {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} never logged {needle:?}:\n{}", guard.name(), guard.log());
}

impl Fleet {
    fn start(quorum: usize, custodians: usize) -> Self {
        let tmp = temp_dir();
        let dir = tmp.path().to_owned();
        let uid = current_uid();
        let (ok, _, err) = run(Command::new(bin("certgate-signer"))
            .arg("init-kek")
            .arg(dir.join("kek")));
        assert!(ok, "init-kek: {err}");
        std::fs::write(
            dir.join("signer.toml"),
            format!(
                "mode = \"dev\"\nsocket = \"signer.sock\"\nallow = [\"uid:{uid}\"]\nadmin_allow = [\"uid:{uid}\"]\naudit_log = \"audit.jsonl\"\nkey_dir = \"keys\"\nkek_file = \"kek\"\n"
            ),
        )
        .unwrap();
        let mut custodian_toml = String::new();
        for i in 0..custodians {
            openssl(
                &[
                    "genpkey",
                    "-algorithm",
                    "ed25519",
                    "-out",
                    &format!("c{i}.pem"),
                ],
                &dir,
            );
            openssl(
                &[
                    "pkey",
                    "-in",
                    &format!("c{i}.pem"),
                    "-pubout",
                    "-out",
                    &format!("c{i}.pub.pem"),
                ],
                &dir,
            );
            custodian_toml.push_str(&format!(
                "[[custodians]]\nname = \"c{i}\"\npublic_key = \"c{i}.pub.pem\"\n\n"
            ));
        }
        let core_toml = format!(
            "mode = \"dev\"\nsocket = \"core.sock\"\nallow = [\"uid:{uid}\"]\nadmin_allow = [\"uid:{uid}\"]\nstore = \"core.db\"\nquorum = {quorum}\n\n[signer]\nsocket = \"signer.sock\"\n\n[audit]\nsigner_log = \"audit.jsonl\"\nsign_interval_ms = 200\ningest_interval_ms = 200\n\n{custodian_toml}"
        );
        std::fs::write(dir.join("core.toml"), &core_toml).unwrap();
        std::fs::write(
            dir.join("core-prod.toml"),
            core_toml.replace("mode = \"dev\"", "mode = \"production\""),
        )
        .unwrap();
        let mut f = Fleet {
            _tmp: tmp,
            dir,
            signer: None,
            core: None,
            custodians,
        };
        f.start_signer();
        f.start_core(None);
        f
    }

    fn start_signer(&mut self) {
        let before = std::fs::read_to_string(self.dir.join("signer.log"))
            .unwrap_or_default()
            .matches("certgate-signer ready")
            .count();
        let mut cmd = Command::new(bin("certgate-signer"));
        cmd.arg("--config").arg(self.dir.join("signer.toml"));
        let guard = ChildGuard::spawn("certgate-signer", cmd, &self.dir.join("signer.log"));
        wait_for_log(&guard, "certgate-signer ready", before + 1);
        assert!(wait_for_path(
            &self.dir.join("signer.sock"),
            Duration::from_secs(20)
        ));
        self.signer = Some(guard);
    }

    fn start_core(&mut self, fault: Option<&str>) {
        let before = std::fs::read_to_string(self.dir.join("core.log"))
            .unwrap_or_default()
            .matches("certgate-core ready")
            .count();
        let mut cmd = Command::new(bin("certgate-core"));
        cmd.arg("--config").arg(self.dir.join("core.toml"));
        match fault {
            Some(f) => cmd.env("CERTGATE_FAULT", f),
            None => cmd.env_remove("CERTGATE_FAULT"),
        };
        let guard = ChildGuard::spawn("certgate-core", cmd, &self.dir.join("core.log"));
        wait_for_log(&guard, "certgate-core ready", before + 1);
        self.core = Some(guard);
    }

    fn channel(&self) -> Channel {
        unix_channel(self.dir.join("core.sock"))
    }

    fn core(&self) -> CoreClient<Channel> {
        CoreClient::new(self.channel())
    }

    fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel())
    }

    fn sign_digest(&self, custodian: usize, digest: &[u8]) -> Vec<u8> {
        std::fs::write(self.dir.join("digest.bin"), digest).unwrap();
        openssl(
            &[
                "pkeyutl",
                "-sign",
                "-rawin",
                "-inkey",
                &format!("c{custodian}.pem"),
                "-in",
                "digest.bin",
                "-out",
                "sig.bin",
            ],
            &self.dir,
        );
        std::fs::read(self.dir.join("sig.bin")).unwrap()
    }

    async fn ceremony(
        &self,
        action: ceremony_action::Action,
        approvals: usize,
    ) -> Result<(), RpcError> {
        let mut admin = self.admin();
        let c = admin
            .start_ceremony(StartCeremonyRequest {
                action: Some(CeremonyAction {
                    action: Some(action),
                }),
            })
            .await
            .map_err(RpcError::from)?
            .into_inner();
        for i in 0..approvals.min(self.custodians) {
            admin
                .approve_ceremony(ApproveCeremonyRequest {
                    id: c.id.clone(),
                    custodian: format!("c{i}"),
                    signature: self.sign_digest(i, &c.digest),
                })
                .await
                .map_err(RpcError::from)?;
        }
        admin
            .execute_ceremony(ExecuteCeremonyRequest { id: c.id })
            .await
            .map_err(RpcError::from)?;
        Ok(())
    }

    async fn bootstrap(&self, tenants: &[&str]) {
        let mut admin = self.admin();
        self.ceremony(
            ceremony_action::Action::CreateRoot(CreateRoot {
                ca_id: "root-1".into(),
                key_type: KeyType::EcP256 as i32,
                common_name: "certgate e2e root".into(),
                validity_seconds: 0,
            }),
            self.custodians,
        )
        .await
        .unwrap();
        self.ceremony(
            ceremony_action::Action::CreateIntermediate(CreateIntermediate {
                ca_id: "int-1".into(),
                parent_ca_id: "root-1".into(),
                key_type: KeyType::EcP256 as i32,
                common_name: "certgate e2e intermediate".into(),
                validity_seconds: 0,
                path_len: Some(1),
            }),
            self.custodians,
        )
        .await
        .unwrap();
        for t in tenants {
            admin
                .put_tenant(Tenant {
                    name: t.to_string(),
                    public_base_url: "http://127.0.0.1:8080".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            admin
                .create_issuing_ca(CreateIssuingCaRequest {
                    tenant: t.to_string(),
                    ca_id: format!("{t}-issuing"),
                    parent_ca_id: "int-1".into(),
                    key_type: KeyType::EcP256 as i32,
                    common_name: format!("certgate e2e issuing {t}"),
                    validity_seconds: 0,
                    activate: true,
                })
                .await
                .unwrap();
        }
    }

    /// An OpenSSL-made CSR (DER) for `name` with the given key options.
    fn csr(&self, name: &str, key: &[&str]) -> Vec<u8> {
        let mut args = vec![
            "req", "-new", "-nodes", "-keyout", "k.pem", "-outform", "DER", "-out", "r.der",
        ];
        args.extend_from_slice(key);
        let subj = format!("/CN={name}");
        let san = format!("subjectAltName=DNS:{name}");
        args.extend_from_slice(&["-subj", &subj, "-addext", &san]);
        openssl(&args, &self.dir);
        std::fs::read(self.dir.join("r.der")).unwrap()
    }

    fn p256_csr(&self, name: &str) -> Vec<u8> {
        self.csr(
            name,
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        )
    }

    fn sql(&self, statement: &str) {
        let (ok, _, err) = run(Command::new("sqlite3")
            .arg(self.dir.join("core.db"))
            .arg(statement));
        assert!(ok, "sqlite3: {err}");
    }

    fn audit_verify(&self) -> (bool, String) {
        let (ok, out, err) = run(Command::new(bin("certgate-core"))
            .arg("audit-verify")
            .arg("--config")
            .arg(self.dir.join("core.toml")));
        (ok, out + &err)
    }
}

fn issue(tenant: &str, key: &str, csr: Vec<u8>) -> IssueRequest {
    IssueRequest {
        tenant: tenant.into(),
        request: Some(issue_request::Request::CsrDer(csr)),
        idempotency_key: key.into(),
        protocol: "cli".into(),
        ..Default::default()
    }
}

fn pem(der: &[u8]) -> String {
    let (ok, out, err) = {
        let tmp = temp_dir();
        std::fs::write(tmp.path().join("c.der"), der).unwrap();
        run(Command::new("openssl")
            .args(["x509", "-inform", "DER", "-in"])
            .arg(tmp.path().join("c.der")))
    };
    assert!(ok, "{err}");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn i3_core_killed_after_signing_returns_the_same_certificate_on_retry() {
    let mut f = Fleet::start(1, 1);
    f.bootstrap(&["default"]).await;
    let csr = f.p256_csr("kill.example.com");

    // restart with the fault hook: the core aborts right after the signer answered
    f.core.take().unwrap().kill();
    f.start_core(Some("crash_after_sign"));
    let e = f
        .core()
        .issue(issue("default", "kill-1", csr.clone()))
        .await
        .unwrap_err();
    assert_ne!(RpcError::from_status(&e).kind, ErrorKind::AlreadyExists);
    let mut crashed = f.core.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while crashed.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!crashed.is_running(), "the fault hook must abort the core");
    assert!(
        crashed
            .log()
            .contains("crash_after_sign: aborting after the signature"),
        "the core must have died after signing:\n{}",
        crashed.log()
    );

    f.start_core(None);
    let a = f
        .core()
        .issue(issue("default", "kill-1", csr.clone()))
        .await
        .unwrap()
        .into_inner();
    let b = f
        .core()
        .issue(issue("default", "kill-1", csr))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, b, "same key, same bytes");
    // the intent recorded before the crash was reused: exactly one certificate, one serial
    let (ok, out, _) = run(Command::new("sqlite3").arg(f.dir.join("core.db")).arg(
        "SELECT COUNT(*), MIN(serial_hex) FROM certificates WHERE idem_key = 'kill-1'; SELECT serial_hex FROM intents WHERE idem_key = 'kill-1';",
    ));
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("1|{}", a.serial_hex));
    assert_eq!(lines[1], a.serial_hex);
    // a different request under the used key is refused
    let e = f
        .core()
        .issue(issue("default", "kill-1", f.p256_csr("other.example.com")))
        .await
        .unwrap_err();
    assert_eq!(RpcError::from_status(&e).kind, ErrorKind::AlreadyExists);
}

#[tokio::test(flavor = "multi_thread")]
async fn i3_concurrent_duplicates_across_connections_mint_one_certificate() {
    let f = Fleet::start(1, 1);
    f.bootstrap(&["default"]).await;
    let csr = f.p256_csr("concurrent.example.com");
    // 16 callers, each on its own connection to the real core process, race with one key
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let mut client = f.core();
            let req = issue("default", "race-1", csr.clone());
            tokio::spawn(async move { client.issue(req).await.map(|r| r.into_inner()) })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap().expect("every duplicate succeeds"));
    }
    assert!(
        results.iter().all(|r| r == &results[0]),
        "every duplicate gets the same bytes"
    );
    let (ok, out, err) = run(Command::new("sqlite3").arg(f.dir.join("core.db")).arg(
        "SELECT COUNT(*) FROM certificates WHERE idem_key = 'race-1'; SELECT COUNT(*) FROM intents WHERE idem_key = 'race-1';",
    ));
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["1", "1"],
        "one certificate, one intent"
    );
}

#[test]
fn i5_fault_hook_refused_in_production() {
    let f = Fleet::start(1, 1);
    let (ok, out, err) = run(Command::new(bin("certgate-core"))
        .arg("--config")
        .arg(f.dir.join("core-prod.toml"))
        .env("CERTGATE_FAULT", "crash_after_sign"));
    assert!(!ok, "production with CERTGATE_FAULT must not start: {out}");
    assert!(err.contains("CERTGATE_FAULT"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn i5_signer_down_is_unavailable_and_the_core_keeps_serving() {
    let mut f = Fleet::start(1, 1);
    f.bootstrap(&["default"]).await;
    let good = f
        .core()
        .issue(issue("default", "a", f.p256_csr("a.example.com")))
        .await
        .unwrap()
        .into_inner();
    f.signer.take().unwrap().kill();
    let csr_b = f.p256_csr("b.example.com");
    let e = RpcError::from_status(
        &f.core()
            .issue(issue("default", "b", csr_b.clone()))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e:?}");
    assert!(e.retry_after.is_some());
    // reads that need no signer still work
    let rec = f
        .core()
        .get_certificate(GetCertificateRequest {
            tenant: "default".into(),
            serial_hex: good.serial_hex,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rec.certificate_der, good.certificate_der);
    // and issuance resumes when the signer is back: the retry (same key, same request) finds the
    // intent recorded before the failed signature
    f.start_signer();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match f.core().issue(issue("default", "b", csr_b.clone())).await {
            Ok(_) => break,
            Err(s)
                if RpcError::from_status(&s).kind == ErrorKind::Unavailable
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("issue after the signer came back: {s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_refused_requests_get_clear_errors_and_openssl_verifies_the_rest() {
    let f = Fleet::start(1, 1);
    f.bootstrap(&["default"]).await;
    let mut core = f.core();
    let kind_rule = |s: tonic::Status| {
        let e = RpcError::from_status(&s);
        (e.kind, e.rule)
    };
    let e = kind_rule(
        core.issue(issue("default", "g", b"not a csr".to_vec()))
            .await
            .unwrap_err(),
    );
    assert_eq!(e, (ErrorKind::Malformed, "csr.syntax".into()));
    let mut bad = f.p256_csr("bad.example.com");
    let n = bad.len();
    bad[n - 3] ^= 0x40;
    let e = kind_rule(core.issue(issue("default", "s", bad)).await.unwrap_err());
    assert_eq!(e, (ErrorKind::Malformed, "csr.signature".into()));
    let huge = vec![0x30u8; 1024 * 1024];
    let e = RpcError::from_status(&core.issue(issue("default", "h", huge)).await.unwrap_err());
    assert!(
        matches!(e.kind, ErrorKind::Malformed | ErrorKind::Unspecified),
        "{e:?}"
    );
    let rsa1024 = f.csr("weak.example.com", &["-newkey", "rsa:1024"]);
    let e = kind_rule(
        core.issue(issue("default", "w", rsa1024))
            .await
            .unwrap_err(),
    );
    assert_eq!(e, (ErrorKind::PolicyRefused, "profile.min_rsa_bits".into()));
    let mut long = issue("default", "l", f.p256_csr("long.example.com"));
    long.validity_seconds = 91 * 86_400;
    let e = kind_rule(core.issue(long).await.unwrap_err());
    assert_eq!(e, (ErrorKind::PolicyRefused, "profile.max_validity".into()));
    // a profile version 2 that forbids wildcards and other zones
    let mut admin = f.admin();
    let body = "key_algorithms = [\"ecdsa-p256\", \"rsa\"]\nekus = [\"server_auth\"]\nkey_usages = [\"digital_signature\"]\nmax_validity_seconds = 86400\ndefault_validity_seconds = 86400\nallowed_dns_suffixes = [\"example.com\"]\nallow_wildcards = false\nmax_sans = 5\n";
    let v = admin
        .put_profile(certgate_proto::admin::PutProfileRequest {
            tenant: "default".into(),
            name: "tls-server".into(),
            body: body.into(),
            format: "toml".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version, 2);
    let e = kind_rule(
        core.issue(issue("default", "wc", f.p256_csr("*.example.com")))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e,
        (ErrorKind::PolicyRefused, "profile.allow_wildcards".into())
    );
    let e = kind_rule(
        core.issue(issue("default", "sfx", f.p256_csr("www.example.org")))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e,
        (ErrorKind::PolicyRefused, "profile.allowed_suffixes".into())
    );

    // the core still serves, and what it issues verifies with OpenSSL
    let r = core
        .issue(issue("default", "ok", f.p256_csr("www.example.com")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.profile_version, 2);
    let rsa = core
        .issue(issue(
            "default",
            "ok-rsa",
            f.csr("rsa.example.com", &["-newkey", "rsa:2048"]),
        ))
        .await
        .unwrap()
        .into_inner();
    let cas = admin
        .list_cas(ListCasRequest {
            tenant: "default".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .cas;
    let chain = &cas[0].chain_der; // issuing, intermediate, root
    assert_eq!(chain.len(), 3);
    std::fs::write(f.dir.join("root.pem"), pem(&chain[2])).unwrap();
    std::fs::write(f.dir.join("chain.pem"), pem(&chain[0]) + &pem(&chain[1])).unwrap();
    for (name, der) in [
        ("leaf.pem", &r.certificate_der),
        ("rsa.pem", &rsa.certificate_der),
    ] {
        std::fs::write(f.dir.join(name), pem(der)).unwrap();
        let out = openssl(
            &[
                "verify",
                "-x509_strict",
                "-purpose",
                "sslserver",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "chain.pem",
                name,
            ],
            &f.dir,
        );
        assert!(out.contains(": OK"), "{out}");
    }
    // RFC 5280 lints of pkilint on every certificate of the chain; zero findings at ERROR or above
    std::fs::write(f.dir.join("issuing.pem"), pem(&chain[0])).unwrap();
    std::fs::write(f.dir.join("intermediate.pem"), pem(&chain[1])).unwrap();
    for name in [
        "root.pem",
        "intermediate.pem",
        "issuing.pem",
        "leaf.pem",
        "rsa.pem",
    ] {
        let (_, out, err) = run(Command::new("lint_pkix_cert")
            .args(["lint", "-s", "ERROR", "--document-format", "PEM"])
            .arg(f.dir.join(name)));
        assert!(
            out.trim().is_empty() && err.trim().is_empty(),
            "pkilint {name}:\n{out}{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ceremony_quorum_tenant_isolation_and_audit_tamper_detection() {
    let f = Fleet::start(2, 2);
    let root = ceremony_action::Action::CreateRoot(CreateRoot {
        ca_id: "short".into(),
        key_type: KeyType::EcP256 as i32,
        common_name: "short of quorum".into(),
        validity_seconds: 0,
    });
    let e = f.ceremony(root, 1).await.unwrap_err();
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::PolicyRefused, "ceremony.quorum")
    );
    f.bootstrap(&["ta", "tb"]).await;

    let a = f
        .core()
        .issue(issue("ta", "k", f.p256_csr("a.example.com")))
        .await
        .unwrap()
        .into_inner();
    let e = RpcError::from_status(
        &f.core()
            .get_certificate(GetCertificateRequest {
                tenant: "tb".into(),
                serial_hex: a.serial_hex.clone(),
            })
            .await
            .unwrap_err(),
    );
    assert_eq!(e.kind, ErrorKind::NotFound);
    let e = RpcError::from_status(
        &f.core()
            .revoke(RevokeRequest {
                tenant: "tb".into(),
                target: Some(revoke_request::Target::SerialHex(a.serial_hex.clone())),
                reason: 1,
                idempotency_key: "r".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    );
    assert_eq!(e.kind, ErrorKind::NotFound);
    let r = f
        .core()
        .revoke(RevokeRequest {
            tenant: "ta".into(),
            target: Some(revoke_request::Target::SerialHex(a.serial_hex.clone())),
            reason: 1,
            idempotency_key: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.already_revoked);

    // let the background task sign the chain and ingest the signer's log (every 200 ms; waited
    // for, not slept for: a loaded machine may take seconds), then verify offline, then tamper
    // three ways
    let ingested = || {
        let (ok, count, _) = run(Command::new("sqlite3")
            .arg(f.dir.join("core.db"))
            .arg("SELECT COUNT(*) FROM audit WHERE kind = 'signer.audit'"));
        (ok && count.trim() != "0", count)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let out = loop {
        // the signer's own JSONL audit log was ingested into the core chain, and the chain is
        // signed (audit-verify names the audit key)
        let (done, count) = ingested();
        let (ok, out) = f.audit_verify();
        if done && ok && out.contains("audit key sha256 ") {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "signer log not ingested ({count}) or chain not signed: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(out.starts_with("OK"), "{out}");
    // pinning the audit key: the right hash verifies, a wrong one fails
    let sha = out
        .split("audit key sha256 ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap()
        .to_owned();
    assert_eq!(sha.len(), 64, "{out}");
    let base = std::fs::read_to_string(f.dir.join("core.toml")).unwrap();
    for (pin, good) in [(sha.clone(), true), ("0".repeat(64), false)] {
        let text = base.replace(
            "[audit]\n",
            &format!("[audit]\npublic_key_sha256 = \"{pin}\"\n"),
        );
        std::fs::write(f.dir.join("pinned.toml"), text).unwrap();
        let (ok, out, err) = run(Command::new(bin("certgate-core"))
            .arg("audit-verify")
            .arg("--config")
            .arg(f.dir.join("pinned.toml")));
        assert_eq!(ok, good, "pin {pin}: {out}{err}");
    }
    let backup = f.dir.join("core.db.bak");
    f.sql(&format!("VACUUM INTO '{}'", backup.display()));
    for tamper in [
        "UPDATE audit SET details = '{}' WHERE seq = 5",
        "DELETE FROM audit WHERE seq = 5",
        "UPDATE audit SET seq = 1000 WHERE seq = 5; UPDATE audit SET seq = 5 WHERE seq = 6; UPDATE audit SET seq = 6 WHERE seq = 1000",
    ] {
        std::fs::copy(&backup, f.dir.join("tampered.db")).unwrap();
        let (ok, _, err) = run(Command::new("sqlite3")
            .arg(f.dir.join("tampered.db"))
            .arg(tamper));
        assert!(ok, "{err}");
        let text = std::fs::read_to_string(f.dir.join("core.toml"))
            .unwrap()
            .replace("store = \"core.db\"", "store = \"tampered.db\"");
        std::fs::write(f.dir.join("tampered.toml"), text).unwrap();
        let (ok, out, err) = run(Command::new(bin("certgate-core"))
            .arg("audit-verify")
            .arg("--config")
            .arg(f.dir.join("tampered.toml")));
        assert!(!ok, "tamper not detected: {tamper}\n{out}{err}");
        assert!(out.contains("BAD record"), "{out}");
    }
}

/// The optional TCP + mTLS listener: a client certificate whose SPIFFE ID is on `allow` may call
/// Core; another SPIFFE ID, or no certificate, is refused at the TLS handshake (fail closed,
/// core/src/tls_listener.rs): the call never reaches a service and nothing is issued.
#[tokio::test(flavor = "multi_thread")]
async fn i5_tls_listener_admits_only_allowed_spiffe_ids() {
    let mut f = Fleet::start(1, 1);
    f.bootstrap(&["default"]).await;
    let d = f.dir.clone();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=link CA",
            "-days",
            "2",
        ],
        &d,
    );
    let leaf = |name: &str, ext: &str| {
        std::fs::write(d.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
            &d,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ],
            &d,
        );
    };
    leaf(
        "server",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    leaf(
        "edge",
        "subjectAltName=URI:spiffe://certgate.test/edge\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    leaf(
        "other",
        "subjectAltName=URI:spiffe://certgate.test/other\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    let port = certgate_e2e::free_port();
    let toml = std::fs::read_to_string(d.join("core.toml"))
        .unwrap()
        .replace("allow = [\"uid:", "allow = [\"spiffe://certgate.test/edge\", \"uid:")
        .replace("[signer]", &format!("[tls]\nlisten = \"127.0.0.1:{port}\"\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\n\n[signer]"));
    std::fs::write(d.join("core.toml"), toml).unwrap();
    f.core.take().unwrap().kill();
    f.start_core(None);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ca = std::fs::read(d.join("ca.pem")).unwrap();
    let client = |name: Option<&str>| {
        let (cert, key) = match name {
            Some(n) => (
                Some(std::fs::read(d.join(format!("{n}.pem"))).unwrap()),
                Some(std::fs::read(d.join(format!("{n}.key"))).unwrap()),
            ),
            None => (None, None),
        };
        let config =
            certgate_proto::transport::client_tls_config(cert.as_deref(), key.as_deref(), &ca)
                .unwrap();
        CoreClient::new(certgate_proto::transport::tls_channel(
            addr,
            "localhost".try_into().unwrap(),
            config,
        ))
    };
    let csr = f.p256_csr("tls.example.com");
    client(Some("edge"))
        .issue(issue("default", "tls", csr.clone()))
        .await
        .unwrap();
    for who in [Some("other"), None] {
        let status = client(who)
            .issue(issue("default", "tls2", csr.clone()))
            .await
            .unwrap_err();
        let e = RpcError::from_status(&status);
        // A handshake refusal is a transport error: no certgate error detail, not a verdict of
        // the service.
        assert!(
            e.rule.is_empty() && matches!(e.kind, ErrorKind::Unavailable | ErrorKind::Unspecified),
            "{who:?}: {e:?}"
        );
    }
}

/// Issuing CAs of every key type the signer offers (RSA, P-384, Ed25519) under a P-256
/// intermediate; each leaf verifies with OpenSSL and passes pkilint.
#[tokio::test(flavor = "multi_thread")]
async fn issuing_cas_of_every_key_type_issue_verifiable_certificates() {
    let f = Fleet::start(1, 1);
    f.bootstrap(&[]).await;
    let mut admin = f.admin();
    for (tenant, kt) in [
        ("rsa", KeyType::Rsa2048),
        ("p384", KeyType::EcP384),
        ("ed", KeyType::Ed25519Key),
    ] {
        admin
            .put_tenant(Tenant {
                name: tenant.into(),
                public_base_url: "http://127.0.0.1:8080".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let ca = admin
            .create_issuing_ca(CreateIssuingCaRequest {
                tenant: tenant.into(),
                ca_id: format!("{tenant}-issuing"),
                parent_ca_id: "int-1".into(),
                key_type: kt as i32,
                common_name: format!("issuing {tenant}"),
                validity_seconds: 0,
                activate: true,
            })
            .await
            .unwrap()
            .into_inner();
        let r = f
            .core()
            .issue(issue(
                tenant,
                "k",
                f.p256_csr(&format!("{tenant}.example.com")),
            ))
            .await
            .unwrap()
            .into_inner();
        std::fs::write(f.dir.join("root.pem"), pem(&ca.chain_der[2])).unwrap();
        std::fs::write(
            f.dir.join("chain.pem"),
            pem(&ca.chain_der[0]) + &pem(&ca.chain_der[1]),
        )
        .unwrap();
        std::fs::write(f.dir.join("issuing.pem"), pem(&ca.chain_der[0])).unwrap();
        std::fs::write(f.dir.join("leaf.pem"), pem(&r.certificate_der)).unwrap();
        let out = openssl(
            &[
                "verify",
                "-x509_strict",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "chain.pem",
                "leaf.pem",
            ],
            &f.dir,
        );
        assert!(out.contains(": OK"), "{tenant}: {out}");
        for name in ["issuing.pem", "leaf.pem"] {
            let (_, out, err) = run(Command::new("lint_pkix_cert")
                .args(["lint", "-s", "ERROR", "--document-format", "PEM"])
                .arg(f.dir.join(name)));
            assert!(
                out.trim().is_empty() && err.trim().is_empty(),
                "pkilint {tenant} {name}:\n{out}{err}"
            );
        }
    }
}
