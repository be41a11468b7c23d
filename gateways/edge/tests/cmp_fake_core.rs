//! The CMP glue against an in-memory fake core (real tonic over a duplex, real HTTP listener):
//! requests captured from `openssl cmp` are POSTed to the edge; the fake core computes real
//! PasswordBasedMac values (RFC 4210 §5.1.3.1) with the secret the vectors were made with.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certgate_cmp::{Body, FailInfo, Limits};
use certgate_edge::ca::CaCerts;
use certgate_edge::cmp::{CmpConfig, CmpHandler};
use certgate_edge::config::Limits as EdgeLimits;
use certgate_edge::core_client::CoreClient;
use certgate_edge::permits::Permits;
use certgate_edge::router::{EdgeContext, Listener, Router};
use certgate_edge::server::{Pipeline, serve_listener};
use certgate_proto::RpcError;
use certgate_proto::cmp::cmp_server::{Cmp, CmpServer};
use certgate_proto::cmp::*;
use certgate_proto::core::core_server::{Core, CoreServer};
use certgate_proto::core::{
    CertificateRecord, GetCaChainRequest, GetCaChainResponse, GetCertificateRequest, IssueRequest,
    IssueResponse, RevokeRequest, RevokeResponse, StatusEvent, WatchStatusRequest,
};
use der::{Decode, DecodePem, Encode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status};
use x509_cert::Certificate;

const SECRET: &[u8] = b"sec123";
/// thisUpdate of every CRL the fake core answers (Unix seconds).
const CRL_THIS_UPDATE: u64 = 1_750_000_000;
/// The public base URL the fake core's CRLs name in their IssuingDistributionPoint.
const CRL_BASE: &str = "http://127.0.0.1:8080";
/// The fake core's tenant with its own issuer (`other-1`, CA `other_ca.pem`); every other tenant
/// has `issuing-1` (CA `ca.pem`). Both CAs are named CN=MockCA.
const OTHER_TENANT: &str = "other";

fn crl_url(issuer_id: &str, shard: &str) -> String {
    format!("{CRL_BASE}/crl/{issuer_id}/{shard}.crl")
}

/// A CRL as the core builds it: the issuer's name, thisUpdate, and an IssuingDistributionPoint
/// naming its own URL (the full CRL also every shard's). The signature is not checked by the edge.
fn fake_crl(issuer_id: &str, shard: &str) -> Vec<u8> {
    use der::asn1::{BitString, Ia5String, OctetString, UtcTime};
    use x509_cert::crl::{CertificateList, TbsCertList};
    use x509_cert::ext::Extension;
    use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
    use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
    let ca = if issuer_id == "other-1" {
        "other_ca.pem"
    } else {
        "ca.pem"
    };
    let issuer = Certificate::from_pem(data(ca))
        .expect("ca")
        .tbs_certificate
        .subject;
    let mut urls = vec![crl_url(issuer_id, shard)];
    if shard == "full" {
        urls.extend((0..16).map(|i| crl_url(issuer_id, &i.to_string())));
    }
    let idp = IssuingDistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(
            urls.iter()
                .map(|u| GeneralName::UniformResourceIdentifier(Ia5String::new(u).expect("ia5")))
                .collect(),
        )),
        only_contains_user_certs: true,
        only_contains_ca_certs: false,
        only_some_reasons: None,
        indirect_crl: false,
        only_contains_attribute_certs: false,
    };
    let time = |t: u64| {
        x509_cert::time::Time::UtcTime(
            UtcTime::from_unix_duration(Duration::from_secs(t)).expect("utc"),
        )
    };
    let alg = spki::AlgorithmIdentifierOwned {
        oid: const_oid::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
        parameters: None,
    };
    CertificateList {
        tbs_cert_list: TbsCertList {
            version: x509_cert::Version::V2,
            signature: alg.clone(),
            issuer,
            this_update: time(CRL_THIS_UPDATE),
            next_update: Some(time(CRL_THIS_UPDATE + 3600)),
            revoked_certificates: None,
            crl_extensions: Some(vec![Extension {
                extn_id: const_oid::ObjectIdentifier::new_unwrap("2.5.29.28"),
                critical: true,
                extn_value: OctetString::new(idp.to_der().expect("idp")).expect("octets"),
            }]),
        },
        signature_algorithm: alg,
        signature: BitString::from_bytes(issuer_id.as_bytes()).expect("bits"),
    }
    .to_der()
    .expect("crl")
}

/// The fake core's issuer of `tenant` (I-4: each tenant sees only its own).
fn issuer_of(tenant: &str) -> &'static str {
    if tenant == OTHER_TENANT {
        "other-1"
    } else {
        "issuing-1"
    }
}

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../cmp/tests/data/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("vector")
}

fn pem_der(name: &str) -> Vec<u8> {
    Certificate::from_pem(data(name))
        .expect("pem")
        .to_der()
        .expect("der")
}

/// PasswordBasedMac: key = OWF^iterationCount(secret ‖ salt), MAC = HMAC(key, data).
fn pbm(alg_der: &[u8], secret: &[u8], msg: &[u8]) -> Option<Vec<u8>> {
    let alg = spki::AlgorithmIdentifierOwned::from_der(alg_der).ok()?;
    let params = crmf::pop::PbmParameter::from_der(&alg.parameters?.to_der().ok()?).ok()?;
    let owf = match params.owf.oid.to_string().as_str() {
        "2.16.840.1.101.3.4.2.1" => &aws_lc_rs::digest::SHA256,
        "1.3.14.3.2.26" => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        _ => return None,
    };
    let mut k = [secret, params.salt.as_bytes()].concat();
    for _ in 0..params.iteration_count {
        k = aws_lc_rs::digest::digest(owf, &k).as_ref().to_vec();
    }
    let mac = match params.mac.oid.to_string().as_str() {
        "1.3.6.1.5.5.8.1.2" => aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        "1.2.840.113549.2.9" => aws_lc_rs::hmac::HMAC_SHA256,
        _ => return None,
    };
    let key = aws_lc_rs::hmac::Key::new(mac, &k);
    Some(aws_lc_rs::hmac::sign(&key, msg).as_ref().to_vec())
}

#[derive(Default)]
struct State {
    issued: Mutex<Vec<IssueRequest>>,
    confirmed: Mutex<Vec<ConfirmRequest>>,
    revoked: Mutex<Vec<RevokeRequest>>,
    described: Mutex<u32>,
    crl_calls: Mutex<Vec<certgate_proto::core::GetCrlRequest>>,
}

#[derive(Clone, Default)]
struct Fake(Arc<State>);

type Events = Pin<Box<dyn futures::Stream<Item = Result<StatusEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Core for Fake {
    async fn issue(&self, req: Request<IssueRequest>) -> Result<Response<IssueResponse>, Status> {
        let r = req.into_inner();
        let mut issued = self.0.issued.lock().expect("lock");
        if let Some(prev) = issued
            .iter()
            .find(|p| p.idempotency_key == r.idempotency_key)
            && prev.request != r.request
        {
            return Err(RpcError::new(
                certgate_proto::ErrorKind::AlreadyExists,
                "idempotency.conflict",
                "key reused",
            )
            .into());
        }
        issued.push(r);
        let ee = Certificate::from_pem(data("ee.pem")).expect("ee");
        Ok(Response::new(IssueResponse {
            certificate_der: ee.to_der().expect("der"),
            chain_der: vec![pem_der("ca.pem")],
            serial_hex: certgate_cmp::parse::serial_hex(&ee),
            profile: "default".into(),
            profile_version: 1,
            issuer_id: "issuing-1".into(),
            ..Default::default()
        }))
    }
    async fn revoke(
        &self,
        req: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let r = req.into_inner();
        let serial = match &r.target {
            Some(certgate_proto::core::revoke_request::Target::SerialHex(s)) => s.clone(),
            _ => String::new(),
        };
        self.0.revoked.lock().expect("lock").push(r);
        Ok(Response::new(RevokeResponse {
            serial_hex: serial,
            revoked_at_unix: 1,
            reason: 0,
            already_revoked: false,
        }))
    }
    async fn get_certificate(
        &self,
        req: Request<GetCertificateRequest>,
    ) -> Result<Response<CertificateRecord>, Status> {
        let r = req.into_inner();
        Ok(Response::new(CertificateRecord {
            tenant: r.tenant,
            serial_hex: r.serial_hex,
            certificate_der: pem_der("ee.pem"),
            ..Default::default()
        }))
    }
    async fn get_ca_chain(
        &self,
        req: Request<GetCaChainRequest>,
    ) -> Result<Response<GetCaChainResponse>, Status> {
        let r = req.into_inner();
        let own = issuer_of(&r.tenant);
        if !r.issuer_id.is_empty() && r.issuer_id != own {
            return Err(Status::not_found("no such issuing CA"));
        }
        let ca = if own == "other-1" {
            "other_ca.pem"
        } else {
            "ca.pem"
        };
        Ok(Response::new(GetCaChainResponse {
            issuer_id: own.into(),
            chain_der: vec![pem_der(ca)],
            issuer_ids: vec![own.into()],
        }))
    }
    async fn get_ocsp(
        &self,
        _: Request<certgate_proto::core::GetOcspRequest>,
    ) -> Result<Response<certgate_proto::core::OcspEntry>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn get_crl(
        &self,
        req: Request<certgate_proto::core::GetCrlRequest>,
    ) -> Result<Response<certgate_proto::core::CrlEntry>, Status> {
        let r = req.into_inner();
        self.0.crl_calls.lock().expect("lock").push(r.clone());
        let shard_ok = r.shard == "full" || r.shard.parse::<u8>().is_ok_and(|s| s < 16);
        if r.issuer_id != issuer_of(&r.tenant) || !shard_ok {
            return Err(Status::not_found("no such issuer or shard"));
        }
        Ok(Response::new(certgate_proto::core::CrlEntry {
            crl_der: fake_crl(&r.issuer_id, &r.shard),
            this_update_unix: CRL_THIS_UPDATE as i64,
            tenant: r.tenant,
            issuer_id: r.issuer_id,
            shard: r.shard,
            ..Default::default()
        }))
    }
    /// Profile `router` of tenant `default`: P-256 or RSA-3072, server and client auth, DNS and
    /// IP names; anything else: NOT_FOUND, as the core answers (I-4).
    async fn get_next_ca_chain(
        &self,
        _: Request<certgate_proto::core::GetNextCaChainRequest>,
    ) -> Result<Response<certgate_proto::core::GetCaChainResponse>, Status> {
        Err(Status::not_found("no CA rollover is staged in this fake"))
    }
    async fn describe_profile(
        &self,
        req: Request<certgate_proto::core::DescribeProfileRequest>,
    ) -> Result<Response<certgate_proto::core::ProfileDescription>, Status> {
        let r = req.into_inner();
        *self.0.described.lock().expect("lock") += 1;
        if r.tenant != "default" || r.profile != "router" {
            return Err(RpcError::new(
                certgate_proto::ErrorKind::NotFound,
                "profile.unknown",
                "no such profile",
            )
            .into());
        }
        Ok(Response::new(certgate_proto::core::ProfileDescription {
            tenant: r.tenant,
            profile: "tls-server".into(),
            version: 1,
            key_algorithms: vec!["ecdsa-p256".into(), "rsa".into()],
            min_rsa_bits: 3072,
            signature_algorithms: vec!["1.2.840.10045.4.3.2".into()],
            subject_attributes: vec!["2.5.4.3".into()],
            san_types: vec!["dns".into(), "ip".into()],
            max_sans: 10,
            allow_wildcards: false,
            ekus: vec!["1.3.6.1.5.5.7.3.1".into(), "1.3.6.1.5.5.7.3.2".into()],
            key_usages: vec!["digital_signature".into()],
            max_validity_seconds: 86_400,
            default_validity_seconds: 86_400,
            approval: "auto".into(),
        }))
    }
    type WatchStatusStream = Events;
    async fn watch_status(
        &self,
        _: Request<WatchStatusRequest>,
    ) -> Result<Response<Events>, Status> {
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }
}

#[tonic::async_trait]
impl Cmp for Fake {
    async fn compute_mac(
        &self,
        req: Request<ComputeMacRequest>,
    ) -> Result<Response<ComputeMacResponse>, Status> {
        let r = req.into_inner();
        if r.sender_kid != b"ref123" {
            return Err(RpcError::not_found("cmp.unknown_sender", "unknown reference").into());
        }
        let mac = pbm(&r.protection_alg_der, SECRET, &r.protected_part_der)
            .ok_or_else(|| Status::from(RpcError::malformed("cmp.bad_mac_params", "params")))?;
        Ok(Response::new(ComputeMacResponse { mac }))
    }
    async fn sign_protection(
        &self,
        _: Request<SignProtectionRequest>,
    ) -> Result<Response<SignProtectionResponse>, Status> {
        Err(Status::unimplemented("no RA key in this fake"))
    }
    async fn get_protection_chain(
        &self,
        _: Request<GetProtectionChainRequest>,
    ) -> Result<Response<GetProtectionChainResponse>, Status> {
        Err(Status::unimplemented("no RA key in this fake"))
    }
    async fn confirm(
        &self,
        req: Request<ConfirmRequest>,
    ) -> Result<Response<ConfirmResponse>, Status> {
        self.0
            .confirmed
            .lock()
            .expect("lock")
            .push(req.into_inner());
        Ok(Response::new(ConfirmResponse::default()))
    }
}

async fn edge(fake: Fake) -> (std::net::SocketAddr, watch::Sender<bool>) {
    // The vectors were captured once; their messageTime is old, so the window is wide here.
    edge_with(
        fake,
        CmpConfig {
            max_clock_skew_seconds: 100 * 365 * 86400,
            ..CmpConfig::default()
        },
    )
    .await
}

async fn edge_with(fake: Fake, cfg: CmpConfig) -> (std::net::SocketAddr, watch::Sender<bool>) {
    let f = fake.clone();
    let channel = Endpoint::from_static("http://fake")
        .connect_with_connector(tower::service_fn(move |_| {
            let fake = f.clone();
            async move {
                let (client, server) = tokio::io::duplex(64 * 1024);
                tokio::spawn(
                    Server::builder()
                        .add_service(CoreServer::new(fake.clone()))
                        .add_service(CmpServer::new(fake))
                        .serve_with_incoming(futures::stream::once(async move {
                            Ok::<_, std::io::Error>(server)
                        })),
                );
                Ok::<_, std::io::Error>(TokioIo::new(client))
            }
        }))
        .await
        .expect("in-memory channel");
    let core = CoreClient::from_channel(channel, Duration::from_secs(5));
    let handler = Arc::new(CmpHandler::new(&cfg).expect("handler"));
    let pipeline = Arc::new(Pipeline {
        router: certgate_edge::cmp::mount(Router::standard(), handler),
        ctx: EdgeContext {
            core,
            ca: CaCerts::new(16, Duration::from_secs(60)),
        },
        limits: EdgeLimits::default(),
        in_flight: Permits::new(8),
        guard: Default::default(),
    });
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let (tx, rx) = watch::channel(false);
    tokio::spawn(serve_listener(tcp, Listener::Http, None, pipeline, rx));
    (addr, tx)
}

async fn post(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    ct: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head, raw[split + 4..].to_vec())
}

const CT: &str = "application/pkixcmp";

async fn cmp(addr: std::net::SocketAddr, body: &[u8]) -> certgate_cmp::Request {
    let (status, head, resp) = post(addr, "POST", "/.well-known/cmp", CT, body).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains(CT), "{head}");
    certgate_cmp::parse(&resp, &Limits::default())
        .unwrap_or_else(|(e, _)| panic!("response parses: {e}"))
}

fn has_fail_bit(resp: &certgate_cmp::Request, fail: FailInfo) -> bool {
    let bits = fail.bit_string_der();
    resp.protected_part_der
        .windows(bits.len())
        .any(|w| w == bits.as_slice())
}

#[tokio::test]
async fn ir_with_mac_is_issued_once_and_the_answer_is_mac_protected() {
    let fake = Fake::default();
    let (addr, _stop) = edge(fake.clone()).await;
    let raw = data("ir_mac.der");
    let req = certgate_cmp::parse(&raw, &Limits::default()).expect("vector");
    let resp = cmp(addr, &raw).await;
    assert_eq!(resp.body, Body::Other("ip"));
    assert_eq!(resp.transaction_id, req.transaction_id);
    assert_eq!(
        resp.recip_nonce.as_deref(),
        Some(req.sender_nonce.as_slice())
    );
    assert!(resp.sender_nonce.len() > 16, "nonce carries the serial");
    assert_ne!(
        resp.protection_alg_der, req.protection_alg_der,
        "fresh salt"
    );
    let mac = pbm(
        resp.protection_alg_der.as_deref().expect("alg"),
        SECRET,
        &resp.protected_part_der,
    );
    assert_eq!(
        mac, resp.protection,
        "response MAC verifies with the shared secret"
    );
    assert!(!resp.implicit_confirm);
    {
        let issued = fake.0.issued.lock().expect("lock");
        assert_eq!(issued.len(), 1);
        let i = &issued[0];
        assert!(i.await_confirmation, "no implicitConfirm → await certConf");
        assert_eq!(
            i.idempotency_key,
            format!("cmp:ref:ref123:{}", hex::encode(&req.transaction_id))
        );
        assert_eq!(i.protocol, "cmp");
    }
    // The same request again: the same transaction (idempotent), still one key.
    let again = cmp(addr, &raw).await;
    assert_eq!(again.body, Body::Other("ip"));
}

#[tokio::test]
async fn certconf_confirms_the_serial_carried_in_the_nonce() {
    let fake = Fake::default();
    let (addr, _stop) = edge(fake.clone()).await;
    // The captured certConf answers the mock server's ip whose senderNonce had no serial:
    // refused with badRecipientNonce, nothing confirmed.
    let resp = cmp(addr, &data("certconf_mac.der")).await;
    assert_eq!(resp.body, Body::Other("error"));
    assert!(has_fail_bit(&resp, FailInfo::BadRecipientNonce));
    assert!(fake.0.confirmed.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn implicit_confirm_is_granted() {
    let fake = Fake::default();
    let (addr, _stop) = edge(fake.clone()).await;
    let resp = cmp(addr, &data("ir_mac_implicit.der")).await;
    assert_eq!(resp.body, Body::Other("ip"));
    assert!(resp.implicit_confirm);
    assert!(!fake.0.issued.lock().expect("lock")[0].await_confirmation);
}

#[tokio::test]
async fn wrong_secret_unknown_sender_and_bad_input() {
    let fake = Fake::default();
    let (addr, _stop) = edge(fake.clone()).await;
    // A flipped byte inside the protected part → MAC mismatch → badMessageCheck.
    let mut raw = data("ir_mac.der");
    let n = raw.len();
    raw[n - 5] ^= 0x01; // inside the protection BIT STRING (no extraCerts)
    let resp = cmp(addr, &raw).await;
    assert_eq!(resp.body, Body::Other("error"));
    assert!(has_fail_bit(&resp, FailInfo::BadMessageCheck));
    // Unknown reference.
    let raw = data("ir_mac.der");
    let pos = raw.windows(6).position(|w| w == b"ref123").expect("kid");
    let mut other = raw.clone();
    other[pos..pos + 6].copy_from_slice(b"ref999");
    let resp = cmp(addr, &other).await;
    assert!(has_fail_bit(&resp, FailInfo::SignerNotTrusted));
    // Garbage.
    let resp = cmp(addr, b"\x30\x03\x02\x01\x02").await;
    assert!(has_fail_bit(&resp, FailInfo::BadDataFormat));
    assert!(
        fake.0.issued.lock().expect("lock").is_empty(),
        "nothing issued"
    );
    // HTTP level: wrong content type, wrong method, unknown sub-path.
    let (s, _, _) = post(addr, "POST", "/.well-known/cmp", "text/plain", &raw).await;
    assert_eq!(s, 415);
    let (s, _, _) = post(addr, "GET", "/.well-known/cmp", CT, b"").await;
    assert_eq!(s, 405);
    let (s, _, _) = post(addr, "POST", "/.well-known/cmpx", CT, &raw).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn replayed_transaction_id_with_another_request_is_transaction_id_in_use() {
    let fake = Fake::default();
    let (addr, _stop) = edge(fake.clone()).await;
    // The implicit-confirm vector has another transactionID; seed the fake with a different
    // request under ir_mac's key.
    let req = certgate_cmp::parse(&data("ir_mac.der"), &Limits::default()).expect("vector");
    fake.0.issued.lock().expect("lock").push(IssueRequest {
        idempotency_key: format!("cmp:ref:ref123:{}", hex::encode(&req.transaction_id)),
        request: Some(certgate_proto::core::issue_request::Request::CsrDer(vec![
            1,
        ])),
        ..Default::default()
    });
    let resp = cmp(addr, &data("ir_mac.der")).await;
    assert!(has_fail_bit(&resp, FailInfo::TransactionIdInUse));
    assert_eq!(
        fake.0.issued.lock().expect("lock").len(),
        1,
        "nothing issued twice"
    );
}

#[tokio::test]
async fn genm_ca_certs_rr_and_p10cr() {
    let fake = Fake::default();
    let (addr, _stop) = edge(fake.clone()).await;
    let resp = cmp(addr, &data("genm_cacerts.der")).await;
    assert_eq!(resp.body, Body::Other("other"), "genp (not a request type)");
    let ca = pem_der("ca.pem");
    assert!(
        resp.protected_part_der
            .windows(ca.len())
            .any(|w| w == ca.as_slice()),
        "genp carries the CA certificate"
    );
    let resp = cmp(addr, &data("rr_mac.der")).await;
    assert_eq!(resp.body, Body::Other("other"), "rp");
    assert_eq!(fake.0.revoked.lock().expect("lock").len(), 1);
    let resp = cmp(addr, &data("p10cr_mac.der")).await;
    assert_eq!(resp.body, Body::Other("cp"));
    let issued = fake.0.issued.lock().expect("lock");
    assert!(matches!(
        issued[0].request,
        Some(certgate_proto::core::issue_request::Request::CsrDer(_))
    ));
}

#[tokio::test]
async fn the_profile_path_and_tenant_prefix_select_profile_and_tenant() {
    let fake = Fake::default();
    let (addr, _stop) = edge(fake.clone()).await;
    let (status, head, resp) = post(
        addr,
        "POST",
        "/t/acme-corp/.well-known/cmp/p/iot",
        CT,
        &data("p10cr_mac.der"),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let resp = certgate_cmp::parse(&resp, &Limits::default()).expect("response");
    assert_eq!(resp.body, Body::Other("cp"));
    let issued = fake.0.issued.lock().expect("lock");
    assert_eq!(issued[0].profile, "iot");
    assert_eq!(issued[0].tenant, "acme-corp");
}

#[tokio::test]
async fn stale_message_time_is_bad_time_and_oversized_is_413() {
    let fake = Fake::default();
    // Default window (300 s): the captured request is hours old.
    let (addr, _stop) = edge_with(fake.clone(), CmpConfig::default()).await;
    let resp = cmp(addr, &data("ir_mac.der")).await;
    assert_eq!(resp.body, Body::Other("error"));
    assert!(has_fail_bit(&resp, FailInfo::BadTime));
    assert!(fake.0.issued.lock().expect("lock").is_empty());
    let big = vec![0x30u8; 70 * 1024];
    let (status, head, _) = post(addr, "POST", "/.well-known/cmp", CT, &big).await;
    assert_eq!(status, 413, "{head}");
}

/// RFC 9483 §4.3.2–4.3.4: a genm (the captured caCerts genm's header, a new body, MAC recomputed
/// with the vectors' secret) asking for rootCaKeyUpdate, certReqTemplate and crlStatusList.
#[tokio::test]
async fn genm_root_ca_key_update_cert_req_template_and_crl_status_list() {
    use certgate_cmp::der_util::{bits, read_all, read_tlv, seq, tlv};
    let fake = Fake::default();
    let (addr, _stop) = edge(fake.clone()).await;
    let raw = data("genm_cacerts.der");
    let (msg, _) = read_tlv(&raw).expect("a SEQUENCE");
    let parts = read_all(msg.content).expect("fields");
    let header = parts[0].raw;
    let oid = |s: &str| {
        const_oid::ObjectIdentifier::new_unwrap(s)
            .to_der()
            .expect("oid")
    };
    let itavs = [
        seq(&[&oid("1.3.6.1.5.5.7.4.20")]),
        seq(&[&oid("1.3.6.1.5.5.7.4.19")]),
        seq(&[
            &oid("1.3.6.1.5.5.7.4.22"),
            &crl_status_list(&[issuer_status(None)]),
        ]),
    ];
    let body = tlv(0xb5, &seq(&[&itavs[0], &itavs[1], &itavs[2]]));
    let req = certgate_cmp::parse(&raw, &Limits::default()).expect("vector");
    let alg = req
        .protection_alg_der
        .clone()
        .expect("MAC-protected vector");
    let mac = pbm(&alg, SECRET, &seq(&[header, &body])).expect("pbm");
    let genm = seq(&[header, &body, &tlv(0xa0, &bits(&mac))]);

    let (status, head, resp) = post(addr, "POST", "/.well-known/cmp", CT, &genm).await;
    assert_eq!(status, 200, "{head}");
    // PKIMessage { header, body [22] genp SEQUENCE OF ITAV, ... }.
    let (m, _) = read_tlv(&resp).expect("a PKIMessage");
    let fields = read_all(m.content).expect("fields");
    assert_eq!(fields[1].tag, 0xb6, "genp");
    let (list, _) = read_tlv(fields[1].content).expect("GenRepContent");
    let itavs: Vec<Vec<Vec<u8>>> = read_all(list.content)
        .expect("ITAVs")
        .iter()
        .map(|i| {
            read_all(i.content)
                .expect("ITAV fields")
                .iter()
                .map(|f| f.raw.to_vec())
                .collect()
        })
        .collect();
    assert_eq!(itavs.len(), 3);
    assert_eq!(
        itavs[0],
        vec![oid("1.3.6.1.5.5.7.4.20")],
        "no root CA key update staged"
    );
    assert_eq!(
        itavs[1],
        vec![oid("1.3.6.1.5.5.7.4.19")],
        "no template published"
    );
    assert_eq!(
        itavs[2],
        vec![
            oid("1.3.6.1.5.5.7.4.23"),
            seq(&[&fake_crl("issuing-1", "full")])
        ],
        "id-it-crls carries the issuer's current full CRL"
    );
}

/// A CRLStatus naming the fake core's CA (CN=MockCA) as issuer.
fn issuer_status(this_update: Option<u64>) -> certgate_cmp::crl_status::CrlStatus {
    use x509_cert::ext::pkix::name::GeneralName;
    let name = Certificate::from_pem(data("ca.pem"))
        .expect("ca")
        .tbs_certificate
        .subject;
    crl_status(
        certgate_cmp::crl_status::CrlSource::Issuer(vec![GeneralName::DirectoryName(name)]),
        this_update,
    )
}

/// A CRLStatus naming a distribution point URI.
fn url_status(uri: &str, this_update: Option<u64>) -> certgate_cmp::crl_status::CrlStatus {
    use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
    crl_status(
        certgate_cmp::crl_status::CrlSource::Dpn(DistributionPointName::FullName(vec![
            GeneralName::UniformResourceIdentifier(der::asn1::Ia5String::new(uri).expect("ia5")),
        ])),
        this_update,
    )
}

fn crl_status(
    source: certgate_cmp::crl_status::CrlSource,
    this_update: Option<u64>,
) -> certgate_cmp::crl_status::CrlStatus {
    certgate_cmp::crl_status::CrlStatus {
        source,
        this_update: this_update.map(|t| {
            x509_cert::time::Time::GeneralTime(
                der::asn1::GeneralizedTime::from_unix_duration(Duration::from_secs(t))
                    .expect("time"),
            )
        }),
    }
}

/// The crlStatusList infoValue DER.
fn crl_status_list(list: &[certgate_cmp::crl_status::CrlStatus]) -> Vec<u8> {
    list.to_vec().to_der().expect("CRLStatusListValue")
}

/// A MAC-protected genm with one crlStatusList ITAV (the captured caCerts genm's header, MAC
/// recomputed with the vectors' secret); `value` None = no infoValue.
fn crl_status_genm(value: Option<&[u8]>) -> Vec<u8> {
    use certgate_cmp::der_util::{bits, read_all, read_tlv, seq, tlv};
    let raw = data("genm_cacerts.der");
    let (msg, _) = read_tlv(&raw).expect("a SEQUENCE");
    let parts = read_all(msg.content).expect("fields");
    let header = parts[0].raw;
    let oid = certgate_cmp::parse::ID_IT_CRL_STATUS_LIST
        .to_der()
        .expect("oid");
    let itav = match value {
        Some(v) => seq(&[&oid, v]),
        None => seq(&[&oid]),
    };
    let body = tlv(0xb5, &seq(&[&itav]));
    let req = certgate_cmp::parse(&raw, &Limits::default()).expect("vector");
    let alg = req.protection_alg_der.expect("MAC-protected vector");
    let mac = pbm(&alg, SECRET, &seq(&[header, &body])).expect("pbm");
    seq(&[header, &body, &tlv(0xa0, &bits(&mac))])
}

/// POSTs a crlStatusList genm to `path`; Ok(the id-it-crls value: None = absent) or Err(the
/// error message).
async fn crl_status_answer(
    addr: std::net::SocketAddr,
    path: &str,
    value: Option<&[u8]>,
) -> Result<Option<Vec<Vec<u8>>>, certgate_cmp::Request> {
    use certgate_cmp::der_util::{read_all, read_tlv};
    let (status, head, resp) = post(addr, "POST", path, CT, &crl_status_genm(value)).await;
    assert_eq!(status, 200, "{head}");
    let parsed = certgate_cmp::parse(&resp, &Limits::default())
        .unwrap_or_else(|(e, _)| panic!("response parses: {e}"));
    if parsed.body == Body::Other("error") {
        return Err(parsed);
    }
    let (m, _) = read_tlv(&resp).expect("a PKIMessage");
    let fields = read_all(m.content).expect("fields");
    assert_eq!(fields[1].tag, 0xb6, "genp");
    let (list, _) = read_tlv(fields[1].content).expect("GenRepContent");
    let itavs = read_all(list.content).expect("ITAVs");
    assert_eq!(itavs.len(), 1, "one answer ITAV");
    let itav = read_all(itavs[0].content).expect("ITAV");
    assert_eq!(
        itav[0].raw,
        certgate_cmp::parse::ID_IT_CRLS.to_der().expect("oid"),
        "answered with id-it-crls"
    );
    Ok(itav.get(1).map(|v| {
        assert_eq!(v.tag, 0x30, "SEQUENCE OF CertificateList");
        let crls = read_all(v.content).expect("CRLs");
        assert!(!crls.is_empty(), "SIZE (1..MAX)");
        crls.iter().map(|c| c.raw.to_vec()).collect()
    }))
}

/// RFC 9483 §4.3.4 / RFC 9480 §2.17: each source resolves to one of the tenant's CRLs; only CRLs
/// newer than the client's thisUpdate are sent (absent infoValue when all are current).
#[tokio::test]
async fn genm_crl_status_list_sends_only_crls_newer_than_the_clients() {
    let fake = Fake::default();
    let (addr, _stop) = edge(fake.clone()).await;
    let path = "/.well-known/cmp";
    let shard3 = crl_url("issuing-1", "3");
    let ans = |list: Vec<certgate_cmp::crl_status::CrlStatus>| async move {
        crl_status_answer(addr, path, Some(&crl_status_list(&list))).await
    };

    // No thisUpdate: the client has none, the current shard CRL is sent.
    let got = ans(vec![url_status(&shard3, None)]).await.expect("genp");
    assert_eq!(got, Some(vec![fake_crl("issuing-1", "3")]));
    // The client's thisUpdate is the CRL's: nothing newer → absent infoValue.
    let got = ans(vec![url_status(&shard3, Some(CRL_THIS_UPDATE))]).await;
    assert_eq!(got.expect("genp"), None, "current CRL → absent value");
    // Newer than the client's by one second, from both source kinds, in request order; a
    // source named twice is answered once.
    let older = Some(CRL_THIS_UPDATE - 1);
    let got = ans(vec![
        url_status(&shard3, older),
        issuer_status(older),
        url_status(&shard3, None),
        url_status(&crl_url("issuing-1", "full"), Some(CRL_THIS_UPDATE)),
    ])
    .await
    .expect("genp");
    assert_eq!(
        got,
        Some(vec![
            fake_crl("issuing-1", "3"),
            fake_crl("issuing-1", "full")
        ])
    );
    // A client ahead of the server's CRL gets nothing.
    let got = ans(vec![issuer_status(Some(CRL_THIS_UPDATE + 60))]).await;
    assert_eq!(got.expect("genp"), None);
}

/// Unknown sources are badRequest (well-formed, but no CRL of this CA), undecodable or absent
/// values badDataFormat; I-4: another tenant's issuer is never looked up, let alone answered.
#[tokio::test]
async fn genm_crl_status_list_refuses_unknown_sources_and_other_tenants_crls() {
    let fake = Fake::default();
    let (addr, _stop) = edge(fake.clone()).await;
    let path = "/.well-known/cmp";
    let refused = |r: Result<Option<Vec<Vec<u8>>>, certgate_cmp::Request>, fail: FailInfo| {
        let e = r.expect_err("an error message");
        assert!(has_fail_bit(&e, fail), "failInfo {fail:?}");
    };
    let one = |s| crl_status_list(&[s]);

    // Another host with certgate's path: not the URL the CRL names (IssuingDistributionPoint).
    let evil = "http://crl.example/crl/issuing-1/3.crl";
    let r = crl_status_answer(addr, path, Some(&one(url_status(evil, None)))).await;
    refused(r, FailInfo::BadRequest);
    // A shard the core does not have, a URL that is no CRL path, a name of no CA of the tenant.
    for s in [
        url_status(&crl_url("issuing-1", "99"), None),
        url_status("http://127.0.0.1:8080/ocsp", None),
        crl_status(
            certgate_cmp::crl_status::CrlSource::Issuer(vec![
                x509_cert::ext::pkix::name::GeneralName::DirectoryName(
                    "CN=Nobody".parse().expect("name"),
                ),
            ]),
            None,
        ),
    ] {
        let r = crl_status_answer(addr, path, Some(&one(s))).await;
        refused(r, FailInfo::BadRequest);
    }
    // Malformed: absent value, empty list, not a CRLStatus.
    for v in [
        None,
        Some(&[0x30u8, 0x00][..]),
        Some(&[0x30, 0x03, 0x02, 0x01, 0x07][..]),
    ] {
        refused(
            crl_status_answer(addr, path, v).await,
            FailInfo::BadDataFormat,
        );
    }

    // I-4: the default tenant names the other tenant's CRL URL → refused without asking the core.
    let other_url = crl_url("other-1", "full");
    let r = crl_status_answer(addr, path, Some(&one(url_status(&other_url, None)))).await;
    refused(r, FailInfo::BadRequest);
    // ... and the other tenant names the default tenant's.
    let other_path = format!("/t/{OTHER_TENANT}/.well-known/cmp");
    let r = crl_status_answer(
        addr,
        &other_path,
        Some(&one(url_status(&crl_url("issuing-1", "3"), None))),
    )
    .await;
    refused(r, FailInfo::BadRequest);
    // The other tenant asking by issuer name CN=MockCA (both CAs carry it) gets its own CRL.
    let got = crl_status_answer(addr, &other_path, Some(&one(issuer_status(None))))
        .await
        .expect("genp");
    assert_eq!(got, Some(vec![fake_crl("other-1", "full")]));
    let calls = fake.0.crl_calls.lock().expect("lock");
    assert!(
        calls.iter().all(|c| c.issuer_id == issuer_of(&c.tenant)),
        "GetCrl only ever asked for the tenant's own issuer: {calls:?}"
    );
}

/// A MAC-protected genm asking for `id-it-certReqTemplate` (the captured `openssl cmp` genm
/// header, body replaced, MAC recomputed with the vector's secret).
fn genm_cert_req_template() -> Vec<u8> {
    use certgate_cmp::der_util::{bits, read_all, read_tlv, seq, tlv};
    let raw = data("genm_cacerts.der");
    let (msg, _) = read_tlv(&raw).expect("a SEQUENCE");
    let parts = read_all(msg.content).expect("fields");
    let header = parts[0].raw;
    let itav = seq(&[
        &const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.4.19")
            .to_der()
            .expect("oid"),
    ]);
    let body = tlv(0xb5, &seq(&[&itav]));
    let req = certgate_cmp::parse(&raw, &Limits::default()).expect("vector");
    let alg = req
        .protection_alg_der
        .clone()
        .expect("MAC-protected vector");
    let mac = pbm(&alg, SECRET, &seq(&[header, &body])).expect("pbm");
    seq(&[header, &body, &tlv(0xa0, &bits(&mac))])
}

/// The fields of the one ITAV of a genp PKIMessage (infoType, then the value if present).
fn genp_single_itav(resp: &[u8]) -> Vec<Vec<u8>> {
    use certgate_cmp::der_util::{read_all, read_tlv};
    let (m, _) = read_tlv(resp).expect("a PKIMessage");
    let fields = read_all(m.content).expect("fields");
    assert_eq!(fields[1].tag, 0xb6, "genp");
    let (list, _) = read_tlv(fields[1].content).expect("GenRepContent");
    let itavs = read_all(list.content).expect("ITAVs");
    assert_eq!(itavs.len(), 1);
    read_all(itavs[0].content)
        .expect("ITAV fields")
        .iter()
        .map(|f| f.raw.to_vec())
        .collect()
}

#[tokio::test]
async fn genm_cert_req_template_comes_from_the_profile_and_is_cached() {
    use x509_cert::attr::AttributeTypeAndValue;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};
    #[derive(der::Sequence)]
    struct Content {
        cert_template: crmf::request::CertTemplate,
        key_spec: Option<Vec<AttributeTypeAndValue>>,
    }
    let oid = |s: &str| const_oid::ObjectIdentifier::new_unwrap(s);
    let fake = Fake::default();
    let (addr, _stop) = edge(fake.clone()).await;
    let genm = genm_cert_req_template();

    // `/p/router` selects the fake core's `router` profile of tenant `default`.
    for _ in 0..2 {
        let (status, head, resp) = post(addr, "POST", "/.well-known/cmp/p/router", CT, &genm).await;
        assert_eq!(status, 200, "{head}");
        let itav = genp_single_itav(&resp);
        assert_eq!(itav.len(), 2, "a value is present");
        assert_eq!(itav[0], oid("1.3.6.1.5.5.7.4.19").to_der().expect("oid"));
        let c = Content::from_der(&itav[1]).expect("CertReqTemplateContent");
        let t = &c.cert_template;
        assert!(t.subject_public_key_info.is_none());
        assert_eq!(t.subject.as_ref().expect("subject").to_string(), "CN=");
        let exts = t.extensions.as_ref().expect("extensions");
        let san = SubjectAltName::from_der(exts[0].extn_value.as_bytes()).expect("SAN");
        assert!(matches!(
            &san.0[..],
            [GeneralName::DnsName(_), GeneralName::IpAddress(_)]
        ));
        let eku = ExtendedKeyUsage::from_der(exts[1].extn_value.as_bytes()).expect("EKU");
        assert_eq!(
            eku.0,
            vec![oid("1.3.6.1.5.5.7.3.1"), oid("1.3.6.1.5.5.7.3.2")]
        );
        let spec = c.key_spec.expect("keySpec");
        assert_eq!(spec.len(), 2, "P-256 and RSA");
        assert_eq!(spec[0].oid, oid("1.3.6.1.5.5.7.5.1.11"));
        let alg: spki::AlgorithmIdentifierOwned = spec[0].value.decode_as().expect("algId");
        let curve: const_oid::ObjectIdentifier =
            alg.parameters.expect("curve").decode_as().expect("oid");
        assert_eq!(curve, oid("1.2.840.10045.3.1.7"));
        assert_eq!(spec[1].oid, oid("1.3.6.1.5.5.7.5.1.12"));
        let bits: u32 = spec[1].value.decode_as().expect("INTEGER");
        assert_eq!(bits, 3072);
    }
    assert_eq!(
        *fake.0.described.lock().expect("lock"),
        1,
        "the second genm is answered from the edge's cache"
    );

    // A profile the tenant does not have: the ITAV with an absent value; not cached.
    for _ in 0..2 {
        let (status, head, resp) = post(addr, "POST", "/.well-known/cmp/p/other", CT, &genm).await;
        assert_eq!(status, 200, "{head}");
        assert_eq!(genp_single_itav(&resp).len(), 1, "absent value");
    }
    assert_eq!(*fake.0.described.lock().expect("lock"), 3);
}
