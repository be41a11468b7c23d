#![allow(clippy::unwrap_used, missing_docs)]
//! Issuing-CA rollover (admin.proto StageRollover / ActivateRollover, core.proto GetNextCaChain)
//! over real Unix-socket gRPC against a real core with the in-process fake signer: stage → the
//! staged CA is listed, published and issues nothing → activate → new issuance chains to the new
//! CA (`openssl verify`), certificates of the old CA still get OCSP answers (`openssl ocsp`
//! verifies them), the SCEP RA is re-certified under the new CA with the same key, and every step
//! is in the verified audit chain.

mod common;

use std::process::Command;

use certgate_core::store::Store;
use certgate_proto::ErrorKind;
use certgate_proto::admin::{
    ActivateRolloverRequest, CaInfo, ListCasRequest, StageRolloverRequest, VerifyAuditRequest,
};
use certgate_proto::core::{
    CertRef, GetNextCaChainRequest, GetOcspRequest, IssueRequest, IssueResponse, issue_request,
};
use certgate_proto::scep::GetRaChainRequest;
use common::{Fleet, err, fleet, pem};

const T: &str = "roll-t";
const OTHER: &str = "roll-other";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("tool runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

fn csr(name: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.serialize_request(&key).unwrap().der().to_vec()
}

async fn issue(f: &Fleet, key: &str, issuer_id: &str) -> Result<IssueResponse, tonic::Status> {
    f.core
        .clone()
        .issue(IssueRequest {
            tenant: T.into(),
            request: Some(issue_request::Request::CsrDer(csr(&format!(
                "{key}.rollover.example"
            )))),
            protocol: "test".into(),
            idempotency_key: key.into(),
            issuer_id: issuer_id.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn stage(f: &Fleet, tenant: &str) -> Result<CaInfo, tonic::Status> {
    f.admin
        .clone()
        .stage_rollover(StageRolloverRequest {
            tenant: tenant.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn activate(f: &Fleet, tenant: &str) -> Result<CaInfo, tonic::Status> {
    f.admin
        .clone()
        .activate_rollover(ActivateRolloverRequest {
            tenant: tenant.into(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn states(f: &Fleet) -> Vec<(String, String)> {
    f.admin
        .clone()
        .list_cas(ListCasRequest { tenant: T.into() })
        .await
        .unwrap()
        .into_inner()
        .cas
        .into_iter()
        .map(|c| (c.ca_id, c.state))
        .collect()
}

fn write(f: &Fleet, name: &str, ders: &[&[u8]]) -> std::path::PathBuf {
    let path = f.dir.join(name);
    let text: String = ders.iter().map(|d| pem("CERTIFICATE", d)).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// Verifies `leaf` under `issuer` and the tenant's root with OpenSSL.
fn openssl_verify(f: &Fleet, name: &str, leaf: &[u8], issuer: &[u8]) {
    let root = write(f, "root.pem", &[&f.root_der(T)]);
    let untrusted = write(f, &format!("{name}-issuer.pem"), &[issuer]);
    let leaf = write(f, &format!("{name}.pem"), &[leaf]);
    let out = run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&untrusted)
        .arg(&leaf));
    assert!(out.contains(": OK"), "{out}");
}

/// The precomputed OCSP response for `serial` from `issuer_id`, checked by `openssl ocsp`.
async fn ocsp_status(
    f: &Fleet,
    issuer_id: &str,
    serial: &str,
    cert: &[u8],
    issuer: &[u8],
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let entry = loop {
        match f
            .core
            .clone()
            .get_ocsp(GetOcspRequest {
                tenant: T.into(),
                certs: vec![CertRef {
                    issuer_id: issuer_id.into(),
                    hash_alg: "sha1".into(),
                    serial_hex: serial.into(),
                }],
            })
            .await
        {
            Ok(e) => break e.into_inner(),
            Err(s) if err(s.clone()).kind == ErrorKind::Unavailable => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "OCSP never ready: {s:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(s) => panic!("GetOcsp: {s:?}"),
        }
    };
    assert_eq!(entry.issuer_id, issuer_id);
    let resp = f.dir.join(format!("{serial}.ocsp"));
    std::fs::write(&resp, &entry.response_der).unwrap();
    let root = write(f, "root.pem", &[&f.root_der(T)]);
    let issuer_pem = write(f, &format!("{serial}-issuer.pem"), &[issuer]);
    let cert_pem = write(f, &format!("{serial}-cert.pem"), &[cert]);
    run(Command::new("openssl")
        .args(["ocsp", "-respin"])
        .arg(&resp)
        .arg("-CAfile")
        .arg(&root)
        .arg("-verify_other")
        .arg(&issuer_pem)
        .arg("-issuer")
        .arg(&issuer_pem)
        .arg("-cert")
        .arg(&cert_pem))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_list_publish_activate_and_old_certificates_keep_their_status() {
    let mut f = fleet(certgate_core::acme::AcmeConfig::default()).await;
    f.bootstrap(T).await;
    f.bootstrap(OTHER).await;
    let old_id = format!("{T}-issuing");
    let old_ca = f.store.get_ca(&old_id).unwrap().unwrap();

    // Nothing staged: NOT_FOUND, and activation has nothing to activate.
    let e = err(f
        .core
        .clone()
        .get_next_ca_chain(GetNextCaChainRequest { tenant: T.into() })
        .await
        .unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::NotFound, "ca.rollover_none")
    );
    let e = err(activate(&f, T).await.unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::NotFound, "ca.rollover_none")
    );

    // A certificate of the old CA, and the SCEP RA as the old CA certified it.
    let before = issue(&f, "before", "").await.unwrap();
    assert_eq!(before.issuer_id, old_id);
    let ra_before = f
        .scep
        .clone()
        .get_ra_chain(GetRaChainRequest { tenant: T.into() })
        .await
        .unwrap()
        .into_inner()
        .chain_der;
    assert_eq!(ra_before[1], old_ca.cert_der);

    // Stage: a new key and certificate from the same root, same subject, state "staged".
    let staged = stage(&f, T).await.unwrap();
    assert_eq!(staged.state, "staged");
    assert_eq!(staged.kind, "issuing");
    assert_eq!(staged.tenant, T);
    assert_eq!(staged.parent_ca_id, format!("root-{T}"));
    assert_ne!(staged.ca_id, old_id);
    assert_ne!(staged.signer_key_id, old_ca.signer_key_id);
    assert_eq!(staged.chain_der.len(), 2, "new CA, root");
    assert_eq!(staged.chain_der[1], f.root_der(T));
    let new_cert = x509_cert::Certificate::from_der_helper(&staged.certificate_der);
    let old_cert = x509_cert::Certificate::from_der_helper(&old_ca.cert_der);
    assert_eq!(
        new_cert.tbs_certificate.subject,
        old_cert.tbs_certificate.subject
    );
    assert_ne!(
        new_cert.tbs_certificate.subject_public_key_info,
        old_cert.tbs_certificate.subject_public_key_info
    );
    // The validity windows overlap: the new CA is valid now, while the old one still is.
    assert!(
        new_cert
            .tbs_certificate
            .validity
            .not_before
            .to_unix_duration()
            <= old_cert
                .tbs_certificate
                .validity
                .not_after
                .to_unix_duration()
    );
    // OpenSSL accepts the new CA under the root.
    let root = write(&f, "root.pem", &[&f.root_der(T)]);
    let next = write(&f, "next.pem", &[&staged.certificate_der]);
    let out = run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&root)
        .arg(&next));
    assert!(out.contains(": OK"), "{out}");

    // Listed as staged beside the active one; published; a second stage is refused.
    let st = states(&f).await;
    assert!(st.contains(&(old_id.clone(), "active".into())), "{st:?}");
    assert!(
        st.contains(&(staged.ca_id.clone(), "staged".into())),
        "{st:?}"
    );
    let next_chain = f
        .core
        .clone()
        .get_next_ca_chain(GetNextCaChainRequest { tenant: T.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_chain.issuer_id, staged.ca_id);
    assert_eq!(next_chain.chain_der, staged.chain_der);
    let e = err(stage(&f, T).await.unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::AlreadyExists, "ca.rollover_staged")
    );
    // Another tenant sees nothing staged (I-4).
    let e = err(f
        .core
        .clone()
        .get_next_ca_chain(GetNextCaChainRequest {
            tenant: OTHER.into(),
        })
        .await
        .unwrap_err());
    assert_eq!(e.kind, ErrorKind::NotFound);

    // PutTenant cannot make it the issuer behind ActivateRollover's back.
    let e = err(f
        .admin
        .clone()
        .put_tenant(certgate_proto::admin::Tenant {
            name: T.into(),
            public_base_url: "http://127.0.0.1:8080".into(),
            default_profile: String::new(),
            active_issuer_id: staged.ca_id.clone(),
        })
        .await
        .unwrap_err());
    assert_eq!(e.rule, "ca.rollover_staged");
    assert_eq!(
        f.store.get_tenant(T).unwrap().unwrap().active_issuer_id,
        old_id
    );

    // A staged CA issues nothing, even when named; default issuance stays on the old CA.
    let e = err(issue(&f, "named-staged", &staged.ca_id).await.unwrap_err());
    assert_eq!(e.rule, "issuer.not_active");
    let still_old = issue(&f, "still-old", "").await.unwrap();
    assert_eq!(still_old.issuer_id, old_id);

    // Activate: the staged CA issues, the old one retires.
    let active = activate(&f, T).await.unwrap();
    assert_eq!(
        (active.ca_id.as_str(), active.state.as_str()),
        (staged.ca_id.as_str(), "active")
    );
    let st = states(&f).await;
    assert!(st.contains(&(old_id.clone(), "retiring".into())), "{st:?}");
    assert!(
        st.contains(&(staged.ca_id.clone(), "active".into())),
        "{st:?}"
    );
    assert_eq!(
        f.store.get_tenant(T).unwrap().unwrap().active_issuer_id,
        staged.ca_id
    );
    let e = err(activate(&f, T).await.unwrap_err());
    assert_eq!(e.rule, "ca.rollover_none");
    let e = err(f
        .core
        .clone()
        .get_next_ca_chain(GetNextCaChainRequest { tenant: T.into() })
        .await
        .unwrap_err());
    assert_eq!(e.rule, "ca.rollover_none");

    let after = issue(&f, "after", "").await.unwrap();
    assert_eq!(after.issuer_id, staged.ca_id);
    assert_eq!(after.chain_der[0], staged.certificate_der);
    openssl_verify(&f, "after", &after.certificate_der, &staged.certificate_der);
    let e = err(issue(&f, "named-old", &old_id).await.unwrap_err());
    assert_eq!(e.rule, "issuer.not_active");
    // The other tenant is untouched.
    assert_eq!(
        f.store.get_tenant(OTHER).unwrap().unwrap().active_issuer_id,
        format!("{OTHER}-issuing")
    );

    // Certificates of the old CA keep their OCSP service (signed for the old CA), and the new
    // CA's certificates get theirs.
    let out = ocsp_status(
        &f,
        &old_id,
        &before.serial_hex,
        &before.certificate_der,
        &old_ca.cert_der,
    )
    .await;
    assert!(out.contains(": good"), "{out}");
    assert!(out.contains("Response verify OK"), "{out}");
    let out = ocsp_status(
        &f,
        &staged.ca_id,
        &after.serial_hex,
        &after.certificate_der,
        &staged.certificate_der,
    )
    .await;
    assert!(out.contains(": good"), "{out}");

    // The SCEP RA is re-certified under the new CA with the same key (clients that fetched the
    // old RA certificate still encrypt to a key the signer holds).
    let ra_after = f
        .scep
        .clone()
        .get_ra_chain(GetRaChainRequest { tenant: T.into() })
        .await
        .unwrap()
        .into_inner()
        .chain_der;
    assert_eq!(ra_after[1], staged.certificate_der);
    assert_ne!(ra_after[0], ra_before[0]);
    let spki = |d: &[u8]| {
        x509_cert::Certificate::from_der_helper(d)
            .tbs_certificate
            .subject_public_key_info
    };
    assert_eq!(spki(&ra_after[0]), spki(&ra_before[0]));
    openssl_verify(&f, "ra-after", &ra_after[0], &staged.certificate_der);

    // Every step is audited and the chain verifies.
    let kinds: Vec<String> = f
        .store
        .audit_records()
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    for k in [
        "ca.created",
        "ca.rollover_refused",
        "ca.rollover_activated",
        "scep.ra.recertified",
    ] {
        assert!(
            kinds.iter().any(|x| x == k),
            "no {k} audit record in {kinds:?}"
        );
    }
    let v = f
        .admin
        .clone()
        .verify_audit(VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
}

/// A small helper trait so the test reads certificates without `unwrap` noise.
trait FromDerHelper {
    fn from_der_helper(d: &[u8]) -> Self;
}

impl FromDerHelper for x509_cert::Certificate {
    fn from_der_helper(d: &[u8]) -> Self {
        use der::Decode;
        x509_cert::Certificate::from_der(d).expect("a DER certificate")
    }
}
