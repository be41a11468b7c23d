#![allow(clippy::unwrap_used, missing_docs)]
//! Deferred issuance with manual approval (crate::approval) over real Unix-socket gRPC against a
//! real core with the in-process fake signer (tests/common): a manual-approval profile holds
//! requests as PENDING (nothing signed), polls see the same pending request, an operator's
//! approval issues exactly once and every later Issue/Poll returns the same bytes, a denial or
//! an expiry refuses every poll, the per-tenant bound refuses new requests clearly, and each
//! step leaves one audit record.

mod common;

use certgate_core::approval::ApprovalConfig;
use certgate_core::store::Store;
use certgate_proto::ErrorKind;
use certgate_proto::admin::{DecideRequest, ListRequestsRequest, PutProfileRequest};
use certgate_proto::core::{IssueRequest, PollRequest, issue_request, issue_response};
use common::{Fleet, err, fleet};

const T: &str = "appr-t";

fn csr(names: &[&str]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn req(key: &str, csr_der: Vec<u8>) -> IssueRequest {
    IssueRequest {
        tenant: T.into(),
        request: Some(issue_request::Request::CsrDer(csr_der)),
        protocol: "est".into(),
        client_identity: "basic:device".into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

fn poll(key: &str) -> PollRequest {
    PollRequest {
        tenant: T.into(),
        idempotency_key: key.into(),
        protocol: "scep".into(),
        client_identity: "test".into(),
    }
}

fn decide(id: &str) -> DecideRequest {
    DecideRequest {
        tenant: T.into(),
        id: id.into(),
        reason: "test".into(),
    }
}

fn audits(f: &Fleet, kind: &str) -> usize {
    f.store
        .audit_records()
        .unwrap()
        .iter()
        .filter(|r| r.kind == kind && r.tenant == T)
        .count()
}

/// A tenant whose default profile (`tls-server` v2) needs manual approval and admits only
/// names under example.com.
async fn setup(config: Option<ApprovalConfig>) -> Fleet {
    let mut f = fleet(certgate_core::acme::AcmeConfig::default()).await;
    if let Some(c) = config {
        f.state.issuer.attach_approval(c);
    }
    f.bootstrap(T).await;
    let body = certgate_core::profile::BUILTIN_TLS_SERVER_TOML.replace(
        "allowed_dns_suffixes = [\".\"]",
        "allowed_dns_suffixes = [\"example.com\"]",
    ) + "\napproval = \"manual\"\n";
    f.admin
        .put_profile(PutProfileRequest {
            tenant: T.into(),
            name: "tls-server".into(),
            body,
            format: "toml".into(),
        })
        .await
        .unwrap();
    f
}

const PENDING: i32 = issue_response::Status::Pending as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_until_approved_then_issued_once_and_the_same_bytes_on_every_poll() {
    let mut f = setup(None).await;
    let der = csr(&["dev1.example.com"]);
    let first = f
        .core
        .issue(req("k1", der.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.status, PENDING);
    assert!(first.certificate_der.is_empty(), "nothing signed");
    assert!(first.pending_id.starts_with('r'), "{}", first.pending_id);
    assert_eq!(first.retry_after_seconds, 5);
    // The same request again, and a poll: the same pending request, no second record.
    let again = f
        .core
        .issue(req("k1", der.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.status, &again.pending_id),
        (PENDING, &first.pending_id)
    );
    let polled = f.pending.poll(poll("k1")).await.unwrap().into_inner();
    assert_eq!(
        (polled.status, &polled.pending_id),
        (PENDING, &first.pending_id)
    );
    assert_eq!(audits(&f, "approval.requested"), 1);
    assert_eq!(audits(&f, "issue.intent"), 0);
    assert!(f.store.cert_by_key(T, "k1").unwrap().is_none());
    // A different request under the key is refused (I-3).
    let e = err(f
        .core
        .issue(req("k1", csr(&["other.example.com"])))
        .await
        .unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::AlreadyExists, "idempotency.key_reused")
    );

    let listed = f
        .requests
        .list_requests(ListRequestsRequest {
            tenant: T.into(),
            state: "pending".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, first.pending_id);
    assert_eq!(listed[0].protocol, "est");
    assert_eq!(listed[0].client_identity, "basic:device");
    assert!(
        listed[0].summary.contains("DNS:dev1.example.com"),
        "{}",
        listed[0].summary
    );

    // Approval issues now, once.
    let approved = f
        .requests
        .approve_request(decide(&first.pending_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.state, "approved");
    assert!(approved.issue_error.is_empty(), "{}", approved.issue_error);
    assert!(!approved.serial_hex.is_empty());
    let issued = f
        .core
        .issue(req("k1", der.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.status, issue_response::Status::Issued as i32);
    assert_eq!(issued.serial_hex, approved.serial_hex);
    let polled = f.pending.poll(poll("k1")).await.unwrap().into_inner();
    assert_eq!(
        polled.certificate_der, issued.certificate_der,
        "byte for byte"
    );
    assert!(!polled.awaits_confirmation);
    assert_eq!(audits(&f, "issue.intent"), 1, "signed once");
    assert_eq!(audits(&f, "approval.approved"), 1);
    // A decided request cannot be decided again.
    let e = err(f
        .requests
        .deny_request(decide(&first.pending_id))
        .await
        .unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::PolicyRefused, "approval.not_pending")
    );
    // Listing shows the serial it was issued under.
    let all = f
        .requests
        .list_requests(ListRequestsRequest {
            tenant: T.into(),
            state: String::new(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(all[0].serial_hex, issued.serial_hex);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_requests_are_refused_on_every_poll_and_nothing_is_signed() {
    let mut f = setup(None).await;
    let der = csr(&["dev2.example.com"]);
    let p = f
        .core
        .issue(req("k2", der.clone()))
        .await
        .unwrap()
        .into_inner();
    let denied = f
        .requests
        .deny_request(decide(&p.pending_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.state, "denied");
    assert_eq!(denied.reason, "test");
    for e in [
        err(f.core.issue(req("k2", der.clone())).await.unwrap_err()),
        err(f.pending.poll(poll("k2")).await.unwrap_err()),
    ] {
        assert_eq!(
            (e.kind, e.rule.as_str()),
            (ErrorKind::PolicyRefused, "approval.denied")
        );
    }
    let e = err(f
        .requests
        .approve_request(decide(&p.pending_id))
        .await
        .unwrap_err());
    assert_eq!(e.rule, "approval.not_pending");
    assert_eq!(audits(&f, "issue.intent"), 0);
    assert_eq!(audits(&f, "approval.denied"), 1);
    // Unknown keys and ids.
    let e = err(f.pending.poll(poll("never")).await.unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::NotFound, "approval.unknown")
    );
    let e = err(f
        .requests
        .approve_request(decide("r0000000000"))
        .await
        .unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::NotFound, "approval.unknown")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_refusals_come_first_and_the_tenant_bound_refuses_new_requests() {
    let mut f = setup(Some(ApprovalConfig {
        max_open_per_tenant: 2,
        ..ApprovalConfig::default()
    }))
    .await;
    // Policy before approval (I-9): a name the profile refuses is never held.
    let e = err(f
        .core
        .issue(req("bad", csr(&["x.example.org"])))
        .await
        .unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::PolicyRefused, "profile.allowed_suffixes")
    );
    assert_eq!(audits(&f, "approval.requested"), 0);

    for k in ["a", "b"] {
        let r = f
            .core
            .issue(req(k, csr(&[&format!("{k}.example.com")])))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, PENDING);
    }
    let e = err(f
        .core
        .issue(req("c", csr(&["c.example.com"])))
        .await
        .unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::PolicyRefused, "approval.queue_full")
    );
    assert!(e.message.contains("2 requests"), "{}", e.message);
    assert_eq!(audits(&f, "approval.requested"), 2);
    // Deciding one frees a slot.
    let first = f.pending.poll(poll("a")).await.unwrap().into_inner();
    f.requests
        .deny_request(decide(&first.pending_id))
        .await
        .unwrap();
    let r = f
        .core
        .issue(req("c", csr(&["c.example.com"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, PENDING);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecided_requests_expire() {
    let mut f = setup(Some(ApprovalConfig {
        ttl_seconds: -1,
        ..ApprovalConfig::default()
    }))
    .await;
    let p = f
        .core
        .issue(req("k3", csr(&["dev3.example.com"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.status, PENDING);
    let e = err(f.pending.poll(poll("k3")).await.unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::PolicyRefused, "approval.expired")
    );
    let e = err(f
        .requests
        .approve_request(decide(&p.pending_id))
        .await
        .unwrap_err());
    assert_eq!(e.rule, "approval.not_pending");
    assert_eq!(audits(&f, "approval.expired"), 1);
    assert_eq!(audits(&f, "issue.intent"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_callers_on_the_admin_allow_list_decide() {
    use certgate_proto::admin::request_admin_server::RequestAdmin;
    let mut f = setup(None).await;
    let p = f
        .core
        .issue(req("k4", csr(&["dev4.example.com"])))
        .await
        .unwrap()
        .into_inner();
    // A caller the transport did not authenticate as an operator (no uid on admin_allow).
    let svc = certgate_core::approval::RequestAdminService(f.state.clone());
    let e = err(svc
        .approve_request(tonic::Request::new(decide(&p.pending_id)))
        .await
        .unwrap_err());
    assert_eq!(e.kind, ErrorKind::Unauthorized);
    let e = err(svc
        .deny_request(tonic::Request::new(decide(&p.pending_id)))
        .await
        .unwrap_err());
    assert_eq!(e.kind, ErrorKind::Unauthorized);
    assert!(audits_any(&f, "auth.denied") >= 2, "denials audited");
    // Still pending: a poll cannot decide either.
    let polled = f.pending.poll(poll("k4")).await.unwrap().into_inner();
    assert_eq!(polled.status, PENDING);
    assert_eq!(audits(&f, "approval.approved"), 0);
}

fn audits_any(f: &Fleet, kind: &str) -> usize {
    f.store
        .audit_records()
        .unwrap()
        .iter()
        .filter(|r| r.kind == kind)
        .count()
}
