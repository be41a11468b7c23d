#![allow(clippy::unwrap_used, missing_docs)]
//! The core's ACME state service driven over real Unix-socket gRPC (the hop the edge uses), with
//! validation against real responders started by the test on 127.0.0.1: an HTTP server
//! (http-01), a rustls server presenting an rcgen acmeIdentifier certificate (tls-alpn-01) and a
//! UDP DNS responder built with hickory-proto (dns-01). Issued chains are checked with
//! `openssl verify`.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use certgate_acme::jwk::Jwk;
use certgate_core::acme::AcmeConfig;
use certgate_core::store::Store;
use certgate_core::store::acme::AcmeStore;
use certgate_proto::acme::{
    Authorization, FinalizeRequest, GetAccountRequest, GetAuthorizationRequest,
    GetOrderCertificateRequest, GetOrderRequest, GetTenantMetaRequest, Identifier,
    ListOrdersRequest, NewAccountRequest, NewOrderRequest, Order, RespondChallengeRequest,
    RevokeCertificateRequest, get_account_request, revoke_certificate_request,
};
use certgate_proto::core::GetCertificateRequest;
use common::{Fleet, err, fleet, pem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: &str = "acme-t";

// ---------------------------------------------------------------- responders

/// token → body served at /.well-known/acme-challenge/{token}; Host headers seen.
#[derive(Clone, Default)]
struct HttpResponder {
    answers: Arc<Mutex<HashMap<String, String>>>,
    hosts: Arc<Mutex<Vec<String>>>,
}

async fn http_responder() -> (u16, HttpResponder) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let r = HttpResponder::default();
    let rr = r.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let rr = rr.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                if let Some(h) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("host: ").or(l.strip_prefix("Host: ")))
                {
                    rr.hosts.lock().unwrap().push(h.trim().to_owned());
                }
                // Keyed by the token, or by the whole path outside the challenge directory.
                let token = path
                    .strip_prefix("/.well-known/acme-challenge/")
                    .unwrap_or(&path);
                let body = rr.answers.lock().unwrap().get(token).cloned();
                let resp = match body {
                    Some(b) if b.starts_with("REDIRECT:") => format!(
                        "HTTP/1.1 302 Found\r\nlocation: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        &b["REDIRECT:".len()..]
                    ),
                    Some(b) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                        b.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .into()
                    }
                };
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, r)
}

/// (certificate DER, PKCS#8 key DER).
type CertAndKey = (Vec<u8>, Vec<u8>);

/// The certificate (DER, PKCS#8 key) the tls-alpn-01 responder presents; SNI names seen.
#[derive(Clone, Default)]
struct TlsResponder {
    cert: Arc<Mutex<Option<CertAndKey>>>,
    snis: Arc<Mutex<Vec<String>>>,
    /// Speak TLS 1.2 only.
    tls12_only: Arc<std::sync::atomic::AtomicBool>,
}

async fn tls_responder() -> (u16, TlsResponder) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let r = TlsResponder::default();
    let rr = r.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                return;
            };
            let Some((cert, key)) = rr.cert.lock().unwrap().clone() else {
                continue;
            };
            let rr = rr.clone();
            tokio::spawn(async move {
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                // Not `with_single_cert`: webpki refuses the critical acmeIdentifier extension
                // there; the validation certificate is served as is.
                let signing = provider
                    .key_provider
                    .load_private_key(rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()))
                    .unwrap();
                let certified = Arc::new(rustls::sign::CertifiedKey::new(
                    vec![rustls::pki_types::CertificateDer::from(cert)],
                    signing,
                ));
                let versions: &[&rustls::SupportedProtocolVersion] =
                    if rr.tls12_only.load(std::sync::atomic::Ordering::SeqCst) {
                        &[&rustls::version::TLS12]
                    } else {
                        rustls::DEFAULT_VERSIONS
                    };
                let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
                    .with_protocol_versions(versions)
                    .unwrap()
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(Fixed(certified)));
                cfg.alpn_protocols = vec![b"acme-tls/1".to_vec()];
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
                if let Ok(mut tls) = acceptor.accept(s).await {
                    if let Some(n) = tls.get_ref().1.server_name() {
                        rr.snis.lock().unwrap().push(n.to_owned());
                    }
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (port, r)
}

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// An RFC 8737 validation certificate for `name` holding SHA-256(`key_auth`).
fn alpn_cert(name: &str, key_auth: &str) -> (Vec<u8>, Vec<u8>) {
    alpn_cert_with(name, key_auth, &rcgen::PKCS_ECDSA_P256_SHA256)
}

/// [`alpn_cert`] with a key of the given algorithm.
fn alpn_cert_with(
    name: &str,
    key_auth: &str,
    alg: &'static rcgen::SignatureAlgorithm,
) -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut p = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_auth.as_bytes());
    p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let cert = p.self_signed(&key).unwrap();
    (cert.der().to_vec(), key.serialize_der())
}

/// name (lower case, trailing dot) → TXT values; "CAA:" + name → CAA issuer domains (`wild:`
/// prefix: issuewild), optionally with RFC 8657 parameters (`ca.example; accounturi=URL`).
type TxtMap = Arc<Mutex<HashMap<String, Vec<String>>>>;

async fn dns_responder() -> (SocketAddr, TxtMap) {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::rdata::{CAA, TXT};
    use hickory_proto::rr::{RData, Record};
    use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let map: TxtMap = Arc::default();
    let m = map.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Message::from_bytes(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::new();
            resp.set_id(q.id())
                .set_message_type(MessageType::Response)
                .set_op_code(q.op_code())
                .set_recursion_desired(q.recursion_desired())
                .set_recursion_available(true);
            let mut found = false;
            for query in q.queries() {
                resp.add_query(query.clone());
                let name = query.name().to_ascii().to_ascii_lowercase();
                let caa = query.query_type() == hickory_proto::rr::RecordType::CAA;
                let key = if caa { format!("CAA:{name}") } else { name };
                if let Some(values) = m.lock().unwrap().get(&key) {
                    found = true;
                    for v in values {
                        let rdata = if !caa {
                            RData::TXT(TXT::new(vec![v.clone()]))
                        } else {
                            let (wild, v) = match v.strip_prefix("wild:") {
                                Some(w) => (true, w),
                                None => (false, v.as_str()),
                            };
                            let mut parts = v.split(';').map(str::trim);
                            let issuer = Some(
                                hickory_proto::rr::Name::from_ascii(parts.next().unwrap()).unwrap(),
                            );
                            let params = parts
                                .filter_map(|p| p.split_once('='))
                                .map(|(k, v)| hickory_proto::rr::rdata::caa::KeyValue::new(k, v))
                                .collect();
                            RData::CAA(if wild {
                                CAA::new_issuewild(false, issuer, params)
                            } else {
                                CAA::new_issue(false, issuer, params)
                            })
                        };
                        resp.add_answer(Record::from_rdata(query.name().clone(), 60, rdata));
                    }
                }
            }
            if !found {
                resp.set_response_code(ResponseCode::NXDomain);
            }
            let out = resp.to_bytes().unwrap();
            let _ = sock.send_to(&out, peer).await;
        }
    });
    (addr, map)
}

// ---------------------------------------------------------------- harness

struct Env {
    f: Fleet,
    http: HttpResponder,
    tls: TlsResponder,
    txt: TxtMap,
}

/// Names under `.test.example` resolve to 127.0.0.1 through the static map; `closed.test.example`
/// to 127.0.0.2, where nothing listens.
async fn env() -> Env {
    env_with(|_| {}).await
}

/// [`env`] with the `[acme]` settings adjusted.
async fn env_with(adjust: impl FnOnce(&mut AcmeConfig)) -> Env {
    let (http_port, http) = http_responder().await;
    let (tls_port, tls) = tls_responder().await;
    let (dns, txt) = dns_responder().await;
    let mut hosts = std::collections::BTreeMap::new();
    for n in [
        "test.example",
        "www.test.example",
        "alpn.test.example",
        "bad.test.example",
        "dns.test.example",
        "other.test.example",
    ] {
        hosts.insert(n.to_owned(), "127.0.0.1".parse().unwrap());
    }
    hosts.insert("closed.test.example".into(), "127.0.0.2".parse().unwrap());
    let mut cfg = AcmeConfig {
        http_port,
        tls_alpn_port: tls_port,
        dns_resolver: Some(dns),
        hosts,
        validation_timeout_ms: 5_000,
        // The responders listen on loopback, which the default SSRF block list refuses.
        allowed_ranges: vec!["127.0.0.0/8".parse().unwrap()],
        ..AcmeConfig::default()
    };
    adjust(&mut cfg);
    let mut f = fleet(cfg).await;
    f.bootstrap(T).await;
    Env { f, http, tls, txt }
}

/// An ACME account key (P-256) as the edge would pass it: the JWK JSON.
struct AccountKey {
    key: EcdsaKeyPair,
    jwk: Jwk,
    json: String,
}

fn account_key() -> AccountKey {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let pk = key.public_key().as_ref().to_vec();
    let v = serde_json::json!({
        "kty": "EC", "crv": "P-256",
        "x": certgate_acme::base64url(&pk[1..33]),
        "y": certgate_acme::base64url(&pk[33..65]),
    });
    let jwk = Jwk::from_value(&v).unwrap();
    AccountKey {
        key,
        json: v.to_string(),
        jwk,
    }
}

async fn new_account(f: &mut Fleet, tenant: &str, k: &AccountKey) -> String {
    f.acme
        .new_account(NewAccountRequest {
            tenant: tenant.into(),
            jwk_json: k.json.clone(),
            contacts: vec!["mailto:admin@test.example".into()],
            terms_agreed: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
        .account_id
}

fn dns(v: &str) -> Identifier {
    Identifier {
        r#type: "dns".into(),
        value: v.into(),
    }
}

async fn order(f: &mut Fleet, account: &str, names: &[&str]) -> Order {
    f.acme
        .new_order(NewOrderRequest {
            tenant: T.into(),
            account_id: account.into(),
            identifiers: names.iter().map(|n| dns(n)).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn authz(f: &mut Fleet, account: &str, id: &str) -> Authorization {
    f.acme
        .get_authorization(GetAuthorizationRequest {
            tenant: T.into(),
            account_id: account.into(),
            authz_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn get_order(f: &mut Fleet, account: &str, id: &str) -> Order {
    f.acme
        .get_order(GetOrderRequest {
            tenant: T.into(),
            account_id: account.into(),
            order_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Responds to the challenge of `kind` in the authorization and waits for the result.
async fn respond(
    f: &mut Fleet,
    account: &str,
    a: &Authorization,
    kind: &str,
) -> certgate_proto::acme::Challenge {
    let ch = a.challenges.iter().find(|c| c.r#type == kind).unwrap();
    f.acme
        .respond_challenge(RespondChallengeRequest {
            tenant: T.into(),
            account_id: account.into(),
            challenge_id: ch.challenge_id.clone(),
            wait_ms: 8_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .challenge
        .unwrap()
}

fn token(a: &Authorization, kind: &str) -> String {
    a.challenges
        .iter()
        .find(|c| c.r#type == kind)
        .unwrap()
        .token
        .clone()
}

fn csr_with_key(names: &[&str]) -> (Vec<u8>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    (p.serialize_request(&key).unwrap().der().to_vec(), key)
}

fn csr(names: &[&str]) -> Vec<u8> {
    csr_with_key(names).0
}

async fn finalize(
    f: &mut Fleet,
    account: &str,
    order_id: &str,
    csr_der: Vec<u8>,
) -> Result<Order, tonic::Status> {
    f.acme
        .finalize(FinalizeRequest {
            tenant: T.into(),
            account_id: account.into(),
            order_id: order_id.into(),
            csr_der,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Validates every authorization of the order with http-01 through the test's HTTP server.
async fn validate_http(e: &mut Env, account: &str, k: &AccountKey, o: &Order) {
    for id in &o.authorization_ids {
        let a = authz(&mut e.f, account, id).await;
        if a.status == "valid" {
            continue;
        }
        let tok = token(&a, "http-01");
        e.http
            .answers
            .lock()
            .unwrap()
            .insert(tok.clone(), k.jwk.key_authorization(&tok));
        let ch = respond(&mut e.f, account, &a, "http-01").await;
        assert_eq!(ch.status, "valid", "{ch:?}");
    }
}

fn openssl_verify(dir: &std::path::Path, root: &[u8], chain: &[Vec<u8>], leaf: &[u8]) {
    let root_p = dir.join("root.pem");
    let chain_p = dir.join("chain.pem");
    let leaf_p = dir.join("leaf.pem");
    std::fs::write(&root_p, pem("CERTIFICATE", root)).unwrap();
    std::fs::write(
        &chain_p,
        chain
            .iter()
            .map(|c| pem("CERTIFICATE", c))
            .collect::<String>(),
    )
    .unwrap();
    std::fs::write(&leaf_p, pem("CERTIFICATE", leaf)).unwrap();
    let out = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root_p)
        .arg("-untrusted")
        .arg(&chain_p)
        .arg(&leaf_p)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------- tests

/// RFC 8555 §7.3, §7.4, §7.5.1, §8.3: account → order → http-01 (validated by the core against
/// the test's HTTP server, Host header = the name) → finalize → certificate that `openssl
/// verify` accepts; a second finalize returns the same certificate; a second order reuses the
/// valid authorizations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_full_flow_issues_a_verifiable_certificate_once() {
    let mut e = env().await;
    let k = account_key();
    let meta =
        e.f.acme
            .get_tenant_meta(GetTenantMetaRequest { tenant: T.into() })
            .await
            .unwrap()
            .into_inner();
    assert!(meta.profiles.contains_key("tls-server"), "{meta:?}");
    assert_eq!(meta.default_profile, "tls-server");

    let acct = new_account(&mut e.f, T, &k).await;
    // The same key again: the same account, not a new one.
    let again =
        e.f.acme
            .new_account(NewAccountRequest {
                tenant: T.into(),
                jwk_json: k.json.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert!(!again.created);
    assert_eq!(again.account.unwrap().account_id, acct);
    let by_tp =
        e.f.acme
            .get_account(GetAccountRequest {
                tenant: T.into(),
                by: Some(get_account_request::By::JwkThumbprint(k.jwk.thumbprint())),
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(by_tp.account_id, acct);

    let o = order(&mut e.f, &acct, &["www.test.example", "test.example"]).await;
    assert_eq!(o.status, "pending");
    assert_eq!(o.authorization_ids.len(), 2);
    let a0 = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    let kinds: Vec<&str> = a0.challenges.iter().map(|c| c.r#type.as_str()).collect();
    assert_eq!(kinds, ["http-01", "dns-01", "tls-alpn-01"]);
    assert!(
        a0.challenges.iter().all(|c| c.token.len() >= 22),
        "tokens carry ≥128 bits"
    );

    // Finalize before ready: orderNotReady, nothing issued.
    let e1 = err(finalize(
        &mut e.f,
        &acct,
        &o.order_id,
        csr(&["test.example", "www.test.example"]),
    )
    .await
    .unwrap_err());
    assert_eq!(e1.rule, "orderNotReady");

    validate_http(&mut e, &acct, &k, &o).await;
    let hosts = e.http.hosts.lock().unwrap().clone();
    assert!(hosts.contains(&"www.test.example".to_owned()), "{hosts:?}");
    assert!(hosts.contains(&"test.example".to_owned()), "{hosts:?}");
    let o = get_order(&mut e.f, &acct, &o.order_id).await;
    assert_eq!(o.status, "ready");

    // A CSR with an extra name: badCSR, the order stays ready.
    let e2 = err(finalize(
        &mut e.f,
        &acct,
        &o.order_id,
        csr(&["test.example", "www.test.example", "evil.test.example"]),
    )
    .await
    .unwrap_err());
    assert_eq!(e2.rule, "badCSR");
    assert_eq!(
        get_order(&mut e.f, &acct, &o.order_id).await.status,
        "ready"
    );

    let done = finalize(
        &mut e.f,
        &acct,
        &o.order_id,
        csr(&["test.example", "www.test.example"]),
    )
    .await
    .unwrap();
    assert_eq!(done.status, "valid", "{done:?}");
    assert!(!done.certificate_serial_hex.is_empty());
    // Finalize twice: the same order, the same certificate.
    let twice = finalize(
        &mut e.f,
        &acct,
        &o.order_id,
        csr(&["test.example", "www.test.example"]),
    )
    .await
    .unwrap();
    assert_eq!(twice.certificate_serial_hex, done.certificate_serial_hex);

    let chain =
        e.f.acme
            .get_order_certificate(GetOrderCertificateRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                serial_hex: done.certificate_serial_hex.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    let chain_der = chain.chain.unwrap().chain_der;
    assert_eq!(chain_der.len(), 1, "issuing CA only, the root excluded");
    let root = e.f.root_der(T);
    openssl_verify(&e.f.dir, &root, &chain_der, &chain.certificate_der);
    let stored =
        e.f.core
            .get_certificate(GetCertificateRequest {
                tenant: T.into(),
                serial_hex: done.certificate_serial_hex.clone(),
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(stored.certificate_der, chain.certificate_der);

    // ARI (RFC 9773 §5): `replaces` must name a certificate of this account, once.
    let ari_id = certgate_acme::ari::CertId::from_certificate(&chain.certificate_der)
        .unwrap()
        .to_string();
    let renewal = |account: &str, replaces: &str| NewOrderRequest {
        tenant: T.into(),
        account_id: account.into(),
        identifiers: vec![dns("test.example"), dns("www.test.example")],
        replaces: replaces.into(),
        ..Default::default()
    };
    let k_other = account_key();
    let other = new_account(&mut e.f, T, &k_other).await;
    let s =
        e.f.acme
            .new_order(renewal(&other, &ari_id))
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "malformed", "another account's certificate");
    let s =
        e.f.acme
            .new_order(renewal(&acct, "AAAA.AQ"))
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "malformed", "no such certificate");
    let renew =
        e.f.acme
            .new_order(renewal(&acct, &ari_id))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(renew.replaces, ari_id);
    let s =
        e.f.acme
            .new_order(renewal(&acct, &ari_id))
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "alreadyReplaced");
    let renewed = finalize(
        &mut e.f,
        &acct,
        &renew.order_id,
        csr(&["test.example", "www.test.example"]),
    )
    .await
    .unwrap();
    assert_eq!(renewed.status, "valid");
    assert_ne!(renewed.certificate_serial_hex, done.certificate_serial_hex);

    // A second order for the same names reuses the valid authorizations: ready at once.
    let o2 = order(&mut e.f, &acct, &["test.example", "www.test.example"]).await;
    assert_eq!(o2.status, "ready");
    let mut a = o.authorization_ids.clone();
    let mut b = o2.authorization_ids.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b);

    let list =
        e.f.acme
            .list_orders(ListOrdersRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                cursor: String::new(),
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(list.order_ids, vec![o2.order_id.clone()], "newest first");
    assert!(!list.next_cursor.is_empty());
    let page2 =
        e.f.acme
            .list_orders(ListOrdersRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                cursor: list.next_cursor,
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(page2.order_ids, vec![renew.order_id.clone()]);
    assert!(!page2.next_cursor.is_empty());
}

/// I-4: another account of the tenant, and the same account id under another tenant, get
/// NOT_FOUND for the order, its authorizations and its certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_accounts_and_tenants_see_nothing() {
    let mut e = env().await;
    e.f.bootstrap("acme-b").await;
    let ka = account_key();
    let kb = account_key();
    let a = new_account(&mut e.f, T, &ka).await;
    let b = new_account(&mut e.f, T, &kb).await;
    let o = order(&mut e.f, &a, &["test.example"]).await;
    validate_http(&mut e, &a, &ka, &o).await;
    let done = finalize(&mut e.f, &a, &o.order_id, csr(&["test.example"]))
        .await
        .unwrap();
    for (tenant, account) in [(T, b.as_str()), ("acme-b", a.as_str())] {
        let s =
            e.f.acme
                .get_order(GetOrderRequest {
                    tenant: tenant.into(),
                    account_id: account.into(),
                    order_id: o.order_id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
        assert_eq!(s.code(), tonic::Code::NotFound, "{tenant}/{account}");
        let s =
            e.f.acme
                .get_authorization(GetAuthorizationRequest {
                    tenant: tenant.into(),
                    account_id: account.into(),
                    authz_id: o.authorization_ids[0].clone(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
        assert_eq!(s.code(), tonic::Code::NotFound);
        let s =
            e.f.acme
                .get_order_certificate(GetOrderCertificateRequest {
                    tenant: tenant.into(),
                    account_id: account.into(),
                    serial_hex: done.certificate_serial_hex.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
        assert_eq!(s.code(), tonic::Code::NotFound);
        let s =
            e.f.acme
                .finalize(FinalizeRequest {
                    tenant: tenant.into(),
                    account_id: account.into(),
                    order_id: o.order_id.clone(),
                    csr_der: csr(&["test.example"]),
                    ..Default::default()
                })
                .await
                .unwrap_err();
        assert_eq!(s.code(), tonic::Code::NotFound);
    }
    // The same key is a different account in another tenant.
    let b_in_other = new_account(&mut e.f, "acme-b", &ka).await;
    assert_ne!(b_in_other, a);
}

/// RFC 8737 + RFC 8555 §8: tls-alpn-01 validated with a real handshake (ALPN acme-tls/1, SNI =
/// the name) against a rustls responder; a certificate with the wrong digest is
/// incorrectResponse and makes the authorization and the order invalid with a subproblem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_validates_and_a_wrong_digest_fails() {
    let mut e = env().await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let o = order(&mut e.f, &acct, &["alpn.test.example"]).await;
    let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    let tok = token(&a, "tls-alpn-01");
    *e.tls.cert.lock().unwrap() = Some(alpn_cert(
        "alpn.test.example",
        &k.jwk.key_authorization(&tok),
    ));
    let ch = respond(&mut e.f, &acct, &a, "tls-alpn-01").await;
    assert_eq!(ch.status, "valid", "{ch:?}");
    assert!(
        e.tls
            .snis
            .lock()
            .unwrap()
            .contains(&"alpn.test.example".to_owned())
    );
    let done = finalize(&mut e.f, &acct, &o.order_id, csr(&["alpn.test.example"]))
        .await
        .unwrap();
    assert_eq!(done.status, "valid");

    let o = order(&mut e.f, &acct, &["bad.test.example"]).await;
    let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    *e.tls.cert.lock().unwrap() = Some(alpn_cert("bad.test.example", "not the key authorization"));
    let ch = respond(&mut e.f, &acct, &a, "tls-alpn-01").await;
    assert_eq!(ch.status, "invalid");
    assert_eq!(ch.error.unwrap().r#type, "incorrectResponse");
    assert_eq!(authz(&mut e.f, &acct, &a.authz_id).await.status, "invalid");
    let o = get_order(&mut e.f, &acct, &o.order_id).await;
    assert_eq!(o.status, "invalid");
    let p = o.error.unwrap();
    assert_eq!(p.subproblems.len(), 1);
    assert_eq!(
        p.subproblems[0].identifier.as_ref().unwrap().value,
        "bad.test.example"
    );
    assert_eq!(p.subproblems[0].r#type, "incorrectResponse");
}

/// RFC 8555 §8.4, §7.1.3: a wildcard gets only dns-01 (base name, wildcard flag); the TXT record
/// at _acme-challenge is queried from the configured resolver; a missing record is `dns`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_validates_a_wildcard_and_a_missing_record_fails() {
    let mut e = env().await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let o = order(&mut e.f, &acct, &["*.dns.test.example"]).await;
    let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    assert!(a.wildcard);
    assert_eq!(a.identifier.as_ref().unwrap().value, "dns.test.example");
    let kinds: Vec<&str> = a.challenges.iter().map(|c| c.r#type.as_str()).collect();
    assert_eq!(kinds, ["dns-01"]);
    let tok = token(&a, "dns-01");
    e.txt.lock().unwrap().insert(
        "_acme-challenge.dns.test.example.".into(),
        vec!["unrelated".into(), k.jwk.dns01_txt_value(&tok)],
    );
    let ch = respond(&mut e.f, &acct, &a, "dns-01").await;
    assert_eq!(ch.status, "valid", "{ch:?}");
    let done = finalize(&mut e.f, &acct, &o.order_id, csr(&["*.dns.test.example"]))
        .await
        .unwrap();
    assert_eq!(done.status, "valid", "{done:?}");

    let o = order(&mut e.f, &acct, &["other.test.example"]).await;
    let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    let ch = respond(&mut e.f, &acct, &a, "dns-01").await;
    assert_eq!(ch.status, "invalid");
    assert_eq!(ch.error.unwrap().r#type, "dns");
}

/// http-01 failure paths: a wrong key authorization is incorrectResponse; nothing listening is
/// connection. Both leave the authorization invalid and nothing issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_wrong_answer_and_closed_port_fail_with_the_right_problem() {
    let mut e = env().await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let o = order(&mut e.f, &acct, &["bad.test.example"]).await;
    let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    let tok = token(&a, "http-01");
    e.http
        .answers
        .lock()
        .unwrap()
        .insert(tok.clone(), format!("{tok}.not-the-thumbprint"));
    let ch = respond(&mut e.f, &acct, &a, "http-01").await;
    assert_eq!(ch.status, "invalid");
    assert_eq!(ch.error.unwrap().r#type, "incorrectResponse");
    let e1 = err(
        finalize(&mut e.f, &acct, &o.order_id, csr(&["bad.test.example"]))
            .await
            .unwrap_err(),
    );
    assert_eq!(e1.rule, "orderNotReady");

    let o = order(&mut e.f, &acct, &["closed.test.example"]).await;
    let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    let ch = respond(&mut e.f, &acct, &a, "http-01").await;
    assert_eq!(ch.status, "invalid");
    assert_eq!(ch.error.unwrap().r#type, "connection");
}

/// newOrder refusals: an unknown profile is invalidProfile; an unsupported identifier type is
/// unsupportedIdentifier; an unknown account is accountDoesNotExist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_order_refusals_carry_acme_problem_types() {
    let mut e = env().await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let s =
        e.f.acme
            .new_order(NewOrderRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                identifiers: vec![dns("test.example")],
                profile: "no-such-profile".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "invalidProfile");
    let s =
        e.f.acme
            .new_order(NewOrderRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                identifiers: vec![Identifier {
                    r#type: "email".into(),
                    value: "a@b.example".into(),
                }],
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "unsupportedIdentifier");
    let s =
        e.f.acme
            .new_order(NewOrderRequest {
                tenant: T.into(),
                account_id: "nobody".into(),
                identifiers: vec![dns("test.example")],
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "accountDoesNotExist");
    let s =
        e.f.acme
            .get_tenant_meta(GetTenantMetaRequest {
                tenant: "no-such-tenant".into(),
            })
            .await
            .unwrap_err();
    assert_eq!(s.code(), tonic::Code::NotFound);
}

/// RFC 8555 §7.6: revocation by the ordering account, refused for an unrelated account, by the
/// certificate's own key; reason 7 is badRevocationReason, a second revocation alreadyRevoked.
/// The store records the revocation (what OCSP/CRL read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_by_owner_or_certificate_key_only() {
    let mut e = env().await;
    let k = account_key();
    let stranger = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let other = new_account(&mut e.f, T, &stranger).await;
    let o = order(&mut e.f, &acct, &["test.example"]).await;
    validate_http(&mut e, &acct, &k, &o).await;
    let (csr1, cert_key) = csr_with_key(&["test.example"]);
    let d1 = finalize(&mut e.f, &acct, &o.order_id, csr1).await.unwrap();
    let o2 = order(&mut e.f, &acct, &["www.test.example"]).await;
    validate_http(&mut e, &acct, &k, &o2).await;
    let d2 = finalize(&mut e.f, &acct, &o2.order_id, csr(&["www.test.example"]))
        .await
        .unwrap();
    let der = |serial: &str| {
        e.f.store
            .get_cert(T, serial)
            .unwrap()
            .expect("stored")
            .cert_der
    };
    let (c1, c2) = (
        der(&d1.certificate_serial_hex),
        der(&d2.certificate_serial_hex),
    );
    let revoke = |cert: Vec<u8>, reason: u32, auth: revoke_certificate_request::Auth| {
        RevokeCertificateRequest {
            tenant: T.into(),
            certificate_der: cert,
            reason,
            auth: Some(auth),
            ..Default::default()
        }
    };
    use revoke_certificate_request::Auth;
    let s =
        e.f.acme
            .revoke_certificate(revoke(c2.clone(), 7, Auth::AccountId(acct.clone())))
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "badRevocationReason");
    let s =
        e.f.acme
            .revoke_certificate(revoke(c2.clone(), 1, Auth::AccountId(other.clone())))
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "unauthorized");
    // A key that is not the certificate's is refused too.
    let s =
        e.f.acme
            .revoke_certificate(revoke(
                c1.clone(),
                1,
                Auth::CertificateKeyJwkJson(k.json.clone()),
            ))
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "unauthorized");
    e.f.acme
        .revoke_certificate(revoke(c2.clone(), 4, Auth::AccountId(acct.clone())))
        .await
        .unwrap();
    let s =
        e.f.acme
            .revoke_certificate(revoke(c2.clone(), 4, Auth::AccountId(acct.clone())))
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "alreadyRevoked");
    let rec =
        e.f.store
            .get_cert(T, &d2.certificate_serial_hex)
            .unwrap()
            .unwrap();
    assert!(rec.revoked);
    assert_eq!(rec.revocation_reason, 4);
    // OCSP answers revoked for it (the store's revoke queued the re-signing; the ACME path woke
    // the status worker).
    let mut status_text = String::new();
    for _ in 0..50 {
        let entry =
            e.f.core
                .get_ocsp(certgate_proto::core::GetOcspRequest {
                    tenant: T.into(),
                    certs: vec![certgate_proto::core::CertRef {
                        issuer_id: format!("{T}-issuing"),
                        hash_alg: "sha256".into(),
                        serial_hex: d2.certificate_serial_hex.clone(),
                    }],
                })
                .await
                .unwrap()
                .into_inner();
        let path = e.f.dir.join("ocsp.der");
        std::fs::write(&path, &entry.response_der).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["ocsp", "-respin"])
            .arg(&path)
            .args(["-resp_text", "-noverify"])
            .output()
            .unwrap();
        status_text = String::from_utf8_lossy(&out.stdout).to_string();
        if status_text.contains("Cert Status: revoked") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        status_text.contains("Cert Status: revoked"),
        "{status_text}"
    );
    assert!(status_text.contains("superseded"), "{status_text}");

    // By the certificate's own key (the CSR key), as a `jwk` request.
    let pk = cert_key.public_key_raw().to_vec();
    let cert_jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256",
        "x": certgate_acme::base64url(&pk[1..33]),
        "y": certgate_acme::base64url(&pk[33..65]),
    })
    .to_string();
    e.f.acme
        .revoke_certificate(revoke(c1.clone(), 1, Auth::CertificateKeyJwkJson(cert_jwk)))
        .await
        .unwrap();
    assert!(
        e.f.store
            .get_cert(T, &d1.certificate_serial_hex)
            .unwrap()
            .unwrap()
            .revoked
    );
    let _ = &k.key;
}

fn eab_jws(kid: &str, mac_key: &[u8], account_jwk: &str, url: &str) -> Vec<u8> {
    let protected = certgate_acme::base64url(
        serde_json::json!({"alg": "HS256", "kid": kid, "url": url})
            .to_string()
            .as_bytes(),
    );
    let payload = certgate_acme::base64url(account_jwk.as_bytes());
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, mac_key);
    let sig = aws_lc_rs::hmac::sign(&key, format!("{protected}.{payload}").as_bytes());
    serde_json::json!({
        "protected": protected,
        "payload": payload,
        "signature": certgate_acme::base64url(sig.as_ref()),
    })
    .to_string()
    .into_bytes()
}

/// RFC 8555 §7.3.4: when the tenant requires EAB, newAccount without one is
/// externalAccountRequired; an unknown kid or a wrong MAC is unauthorized; a good binding
/// creates the account and consumes the key; reusing the key for another account is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding_is_required_verified_and_single_use() {
    let mut e = env().await;
    e.f.admin
        .set_acme_settings(certgate_proto::admin::AcmeSettings {
            tenant: T.into(),
            terms_of_service: "https://example.invalid/tos".into(),
            website: "https://example.invalid/".into(),
            caa_identities: vec!["ca.example".into()],
            external_account_required: true,
        })
        .await
        .unwrap();
    let meta =
        e.f.acme
            .get_tenant_meta(GetTenantMetaRequest { tenant: T.into() })
            .await
            .unwrap()
            .into_inner();
    assert!(meta.external_account_required);
    assert_eq!(meta.caa_identities, ["ca.example"]);
    let created =
        e.f.admin
            .create_eab_key(certgate_proto::admin::CreateEabKeyRequest { tenant: T.into() })
            .await
            .unwrap()
            .into_inner();
    let kid = created.key_id.clone();
    let mac = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&created.hmac_key_b64url)
            .unwrap()
    };
    assert_eq!(mac.len(), 32);
    // The key is stored, unbound; no audit record carries it.
    let stored = AcmeStore::eab_key(e.f.store.as_ref(), T, &kid)
        .unwrap()
        .unwrap();
    assert_eq!(stored.key.as_slice(), mac.as_slice());
    let audit = e.f.store.audit_records().unwrap();
    assert!(
        !audit
            .iter()
            .any(|r| r.details.contains(&created.hmac_key_b64url)),
        "the HMAC key is never audited"
    );
    let url = "https://127.0.0.1:8443/acme/new-account";
    let k = account_key();
    let req = |eab: Vec<u8>, k: &AccountKey, terms: bool| NewAccountRequest {
        tenant: T.into(),
        jwk_json: k.json.clone(),
        terms_agreed: terms,
        external_account_binding_json: eab,
        new_account_url: url.into(),
        ..Default::default()
    };
    let s =
        e.f.acme
            .new_account(req(Vec::new(), &k, true))
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "externalAccountRequired");
    let s =
        e.f.acme
            .new_account(req(eab_jws(&kid, &mac, &k.json, url), &k, false))
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "malformed", "terms must be agreed");
    let s =
        e.f.acme
            .new_account(req(eab_jws("kid-unknown", &mac, &k.json, url), &k, true))
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "unauthorized");
    let s =
        e.f.acme
            .new_account(req(eab_jws(&kid, &[8u8; 32], &k.json, url), &k, true))
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "unauthorized");
    let ok =
        e.f.acme
            .new_account(req(eab_jws(&kid, &mac, &k.json, url), &k, true))
            .await
            .unwrap()
            .into_inner();
    assert!(ok.created);
    assert_eq!(ok.account.unwrap().eab_key_id, kid);
    let k2 = account_key();
    let s =
        e.f.acme
            .new_account(req(eab_jws(&kid, &mac, &k2.json, url), &k2, true))
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "unauthorized", "an EAB key binds one account");
}

/// RFC 8738: an IP identifier gets http-01 and tls-alpn-01 (never dns-01); http-01 connects to
/// the address itself; tls-alpn-01 sends the reverse-DNS name as SNI (§6) and wants the
/// address as the certificate's only iPAddress SAN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_identifiers_validate_with_http01_and_tls_alpn01() {
    let mut e = env().await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let ip = |v: &str| Identifier {
        r#type: "ip".into(),
        value: v.into(),
    };
    let o =
        e.f.acme
            .new_order(NewOrderRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                identifiers: vec![ip("127.0.0.1")],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    let kinds: Vec<&str> = a.challenges.iter().map(|c| c.r#type.as_str()).collect();
    assert_eq!(kinds, ["http-01", "tls-alpn-01"]);
    let tok = token(&a, "tls-alpn-01");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        k.jwk.key_authorization(&tok).as_bytes(),
    );
    p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let cert = p.self_signed(&key).unwrap();
    *e.tls.cert.lock().unwrap() = Some((cert.der().to_vec(), key.serialize_der()));
    let ch = respond(&mut e.f, &acct, &a, "tls-alpn-01").await;
    assert_eq!(ch.status, "valid", "{ch:?}");
    assert!(
        e.tls
            .snis
            .lock()
            .unwrap()
            .contains(&"1.0.0.127.in-addr.arpa".to_owned())
    );
    let (csr_der, _) = {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())];
        p.distinguished_name = rcgen::DistinguishedName::new();
        (p.serialize_request(&key).unwrap().der().to_vec(), key)
    };
    let done = finalize(&mut e.f, &acct, &o.order_id, csr_der)
        .await
        .unwrap();
    assert_eq!(done.status, "valid", "{done:?}");

    // http-01 for an IPv4 address goes to the address (Host = the address). Another account,
    // so the valid authorization above is not reused.
    let k3 = account_key();
    let acct3 = new_account(&mut e.f, T, &k3).await;
    let o3 =
        e.f.acme
            .new_order(NewOrderRequest {
                tenant: T.into(),
                account_id: acct3.clone(),
                identifiers: vec![ip("127.0.0.1")],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(o3.status, "pending");
    validate_http(&mut e, &acct3, &k3, &o3).await;
    assert!(
        e.http
            .hosts
            .lock()
            .unwrap()
            .contains(&"127.0.0.1".to_owned())
    );

    let o =
        e.f.acme
            .new_order(NewOrderRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                identifiers: vec![ip("127.0.0.3")],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    let tok = token(&a, "http-01");
    e.http
        .answers
        .lock()
        .unwrap()
        .insert(tok.clone(), k.jwk.key_authorization(&tok));
    let ch = respond(&mut e.f, &acct, &a, "http-01").await;
    // Nothing listens on 127.0.0.3 (the responder is bound to 127.0.0.1 only).
    assert_eq!(ch.status, "invalid");
    assert_eq!(ch.error.unwrap().r#type, "connection");
}

/// RFC 8555 §7.3.2, §7.3.5, §7.3.6, §7.5.2, §7.5.1: contact update, key change (a key already
/// bound is reported as a conflict), authorization deactivation (the order turns invalid),
/// polling a challenge answered without waiting, and account deactivation (final: further
/// orders are unauthorized).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_lifecycle_deactivation_and_polling() {
    use certgate_proto::acme::{KeyChangeRequest, UpdateAccountRequest};
    let mut e = env().await;
    let k = account_key();
    let k_other = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let other = new_account(&mut e.f, T, &k_other).await;
    let a =
        e.f.acme
            .update_account(UpdateAccountRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                set_contacts: true,
                contacts: vec!["mailto:new@test.example".into()],
                deactivate: false,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(a.contacts, ["mailto:new@test.example"]);
    let s =
        e.f.acme
            .update_account(UpdateAccountRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                set_contacts: true,
                contacts: vec!["tel:+1555".into()],
                deactivate: false,
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "unsupportedContact");

    let conflict =
        e.f.acme
            .key_change(KeyChangeRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                new_jwk_json: k_other.json.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(conflict.conflicting_account_id, other);
    let k2 = account_key();
    let changed =
        e.f.acme
            .key_change(KeyChangeRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                new_jwk_json: k2.json.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert!(changed.conflicting_account_id.is_empty());
    assert_eq!(changed.account.unwrap().jwk_thumbprint, k2.jwk.thumbprint());

    // Respond without waiting: processing (or already done); polling shows the result, which
    // used the NEW key for the key authorization.
    let o = order(&mut e.f, &acct, &["test.example"]).await;
    let az = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    let tok = token(&az, "http-01");
    e.http
        .answers
        .lock()
        .unwrap()
        .insert(tok.clone(), k2.jwk.key_authorization(&tok));
    let ch = az
        .challenges
        .iter()
        .find(|c| c.r#type == "http-01")
        .unwrap();
    let first =
        e.f.acme
            .respond_challenge(RespondChallengeRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                challenge_id: ch.challenge_id.clone(),
                wait_ms: 0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert!(["processing", "valid"].contains(&first.challenge.unwrap().status.as_str()));
    assert_eq!(first.authz_id, az.authz_id);
    let mut status = String::new();
    for _ in 0..100 {
        status = authz(&mut e.f, &acct, &az.authz_id).await.status;
        if status != "pending" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, "valid");

    // Deactivating an authorization invalidates the order that needs it.
    let o2 = order(&mut e.f, &acct, &["www.test.example"]).await;
    let d =
        e.f.acme
            .deactivate_authorization(GetAuthorizationRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                authz_id: o2.authorization_ids[0].clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(d.status, "deactivated");
    let o2 = get_order(&mut e.f, &acct, &o2.order_id).await;
    assert_eq!(o2.status, "invalid");
    assert_eq!(
        o2.error.unwrap().subproblems[0]
            .identifier
            .as_ref()
            .unwrap()
            .value,
        "www.test.example"
    );

    let pending = order(&mut e.f, &acct, &["alpn.test.example"]).await;
    assert_eq!(pending.status, "pending");
    e.f.acme
        .update_account(UpdateAccountRequest {
            tenant: T.into(),
            account_id: acct.clone(),
            set_contacts: false,
            contacts: Vec::new(),
            deactivate: true,
            ..Default::default()
        })
        .await
        .unwrap();
    // Its pending operations are cancelled.
    assert_eq!(
        get_order(&mut e.f, &acct, &pending.order_id).await.status,
        "invalid"
    );
    assert_eq!(
        authz(&mut e.f, &acct, &pending.authorization_ids[0])
            .await
            .status,
        "deactivated"
    );
    let s =
        e.f.acme
            .new_order(NewOrderRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                identifiers: vec![dns("test.example")],
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "unauthorized");
}

/// I-5 at the process level: the real `certgate-core` binary refuses to start in production
/// mode with the dev validation shortcut.
#[test]
fn core_binary_refuses_dev_validation_in_production() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("core.toml");
    std::fs::write(
        &cfg,
        "mode = \"production\"\nsocket = \"core.sock\"\nstore = \"core.db\"\n[signer]\nsocket = \"s.sock\"\n[acme]\ndev_validate_on_localhost = true\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_certgate-core"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dev_validate_on_localhost"), "{stderr}");
    assert!(!dir.path().join("core.sock").exists());
}

/// RFC 8555 §7.6: an account that did not order the certificate may revoke it once it holds
/// valid authorizations for every name in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_by_an_account_holding_authorizations_for_all_names() {
    let mut e = env().await;
    let k = account_key();
    let k2 = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let holder = new_account(&mut e.f, T, &k2).await;
    let o = order(&mut e.f, &acct, &["test.example", "www.test.example"]).await;
    validate_http(&mut e, &acct, &k, &o).await;
    let done = finalize(
        &mut e.f,
        &acct,
        &o.order_id,
        csr(&["test.example", "www.test.example"]),
    )
    .await
    .unwrap();
    let cert =
        e.f.store
            .get_cert(T, &done.certificate_serial_hex)
            .unwrap()
            .unwrap()
            .cert_der;
    let req = |account: &str| RevokeCertificateRequest {
        tenant: T.into(),
        certificate_der: cert.clone(),
        reason: 0,
        auth: Some(revoke_certificate_request::Auth::AccountId(account.into())),
        ..Default::default()
    };
    // Authorized for one of the two names only: refused.
    let o1 = order(&mut e.f, &holder, &["test.example"]).await;
    validate_http(&mut e, &holder, &k2, &o1).await;
    let s = e.f.acme.revoke_certificate(req(&holder)).await.unwrap_err();
    assert_eq!(err(s).rule, "unauthorized");
    // Both names: allowed.
    let o2 = order(&mut e.f, &holder, &["www.test.example"]).await;
    validate_http(&mut e, &holder, &k2, &o2).await;
    e.f.acme.revoke_certificate(req(&holder)).await.unwrap();
    assert!(
        e.f.store
            .get_cert(T, &done.certificate_serial_hex)
            .unwrap()
            .unwrap()
            .revoked
    );
}

/// A challenge a stopped core left `processing` (no validation running in this process) is
/// validated again on the next response instead of staying stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_left_processing_by_a_stopped_core_is_validated_again() {
    let mut e = env().await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let o = order(&mut e.f, &acct, &["test.example"]).await;
    let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    let ch = a.challenges.iter().find(|c| c.r#type == "http-01").unwrap();
    // What a core that died after marking the challenge leaves behind.
    let audit = certgate_core::audit::AuditEntry::new("test", T, "test", serde_json::json!({}));
    assert!(
        AcmeStore::start_challenge(e.f.store.as_ref(), T, &a.authz_id, &ch.challenge_id, &audit)
            .unwrap()
    );
    assert_eq!(
        authz(&mut e.f, &acct, &a.authz_id).await.challenges[0].status,
        "processing"
    );
    e.http
        .answers
        .lock()
        .unwrap()
        .insert(ch.token.clone(), k.jwk.key_authorization(&ch.token));
    let again = respond(&mut e.f, &acct, &a, "http-01").await;
    assert_eq!(again.status, "valid", "{again:?}");
    assert_eq!(
        get_order(&mut e.f, &acct, &o.order_id).await.status,
        "ready"
    );
}

/// I-8: validations are bounded; when every slot is busy, RespondChallenge is refused at once
/// (RATE_LIMITED) and the challenge stays pending; the running one ends at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_validations_are_refused_not_queued() {
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let mut e = env_with(|c| {
        c.dns_resolver = Some(silent_addr);
        c.max_concurrent_validations = 1;
        c.validation_timeout_ms = 1_500;
    })
    .await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let o1 = order(&mut e.f, &acct, &["test.example"]).await;
    let o2 = order(&mut e.f, &acct, &["www.test.example"]).await;
    let a1 = authz(&mut e.f, &acct, &o1.authorization_ids[0]).await;
    let a2 = authz(&mut e.f, &acct, &o2.authorization_ids[0]).await;
    let id = |a: &Authorization| {
        a.challenges
            .iter()
            .find(|c| c.r#type == "dns-01")
            .unwrap()
            .challenge_id
            .clone()
    };
    let req = |cid: String| RespondChallengeRequest {
        tenant: T.into(),
        account_id: acct.clone(),
        challenge_id: cid,
        wait_ms: 0,
        ..Default::default()
    };
    let first =
        e.f.acme
            .respond_challenge(req(id(&a1)))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(first.challenge.unwrap().status, "processing");
    let s = e.f.acme.respond_challenge(req(id(&a2))).await.unwrap_err();
    assert_eq!(err(s).kind, certgate_proto::ErrorKind::RateLimited);
    assert_eq!(
        authz(&mut e.f, &acct, &a2.authz_id).await.challenges[1].status,
        "pending"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let a1 = authz(&mut e.f, &acct, &a1.authz_id).await;
    let ch = a1.challenges.iter().find(|c| c.r#type == "dns-01").unwrap();
    assert_eq!(ch.status, "invalid");
    assert_eq!(ch.error.as_ref().unwrap().r#type, "dns");
    drop(silent);
}

/// An order a stopped core left `processing` after its certificate was stored becomes valid
/// (with that certificate) on the next read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_left_processing_after_issuance_recovers_its_certificate() {
    let mut e = env().await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let o = order(&mut e.f, &acct, &["test.example"]).await;
    validate_http(&mut e, &acct, &k, &o).await;
    let done = finalize(&mut e.f, &acct, &o.order_id, csr(&["test.example"]))
        .await
        .unwrap();
    // What a crash between storing the certificate and marking the order leaves.
    e.f.store
        .execute_raw(&format!(
            "UPDATE acme_orders SET status = 'processing', certificate_serial_hex = '' WHERE order_id = '{}'",
            o.order_id
        ))
        .unwrap();
    let again = get_order(&mut e.f, &acct, &o.order_id).await;
    assert_eq!(again.status, "valid");
    assert_eq!(again.certificate_serial_hex, done.certificate_serial_hex);
}

/// An order a stopped core left `processing` before its certificate existed (the CSR was
/// accepted) is issued on the next read, under the same key: finalizing afterwards returns
/// that one certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_left_processing_before_issuance_is_issued_on_the_next_read() {
    let mut e = env().await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let o = order(&mut e.f, &acct, &["test.example"]).await;
    validate_http(&mut e, &acct, &k, &o).await;
    assert_eq!(
        get_order(&mut e.f, &acct, &o.order_id).await.status,
        "ready"
    );
    let csr_der = csr(&["test.example"]);
    e.f.store
        .execute_raw(&format!(
            "UPDATE acme_orders SET status = 'processing', csr_der = X'{}' WHERE order_id = '{}'",
            hex::encode(&csr_der),
            o.order_id
        ))
        .unwrap();
    let again = get_order(&mut e.f, &acct, &o.order_id).await;
    assert_eq!(again.status, "valid", "{again:?}");
    assert!(!again.certificate_serial_hex.is_empty());
    let fin = finalize(&mut e.f, &acct, &o.order_id, csr_der)
        .await
        .unwrap();
    assert_eq!(fin.certificate_serial_hex, again.certificate_serial_hex);
}

/// Bad input gets a typed refusal with the ACME problem type as its rule, and the service keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_inputs_are_refused_with_problem_types_and_the_core_keeps_serving() {
    let mut e = env().await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    for (jwk, rule) in [
        ("not json", "badPublicKey"),
        ("{}", "badPublicKey"),
        (r#"{"kty":"oct","k":"AAAA"}"#, "badPublicKey"),
        (
            r#"{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}"#,
            "badPublicKey",
        ),
    ] {
        let s =
            e.f.acme
                .new_account(NewAccountRequest {
                    tenant: T.into(),
                    jwk_json: jwk.into(),
                    terms_agreed: true,
                    ..Default::default()
                })
                .await
                .unwrap_err();
        assert_eq!(err(s).rule, rule, "{jwk}");
    }
    let s =
        e.f.acme
            .new_account(NewAccountRequest {
                tenant: T.into(),
                jwk_json: account_key().json,
                external_account_binding_json: b"{not json".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "malformed");
    let s =
        e.f.acme
            .new_account(NewAccountRequest {
                tenant: T.into(),
                jwk_json: account_key().json,
                contacts: vec!["mailto:a@b.example?subject=x".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "invalidContact");
    let too_many: Vec<Identifier> = (0..101)
        .map(|i| dns(&format!("n{i}.test.example")))
        .collect();
    let s =
        e.f.acme
            .new_order(NewOrderRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                identifiers: too_many,
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "rejectedIdentifier");
    let o = order(&mut e.f, &acct, &["test.example"]).await;
    validate_http(&mut e, &acct, &k, &o).await;
    let s = finalize(&mut e.f, &acct, &o.order_id, vec![0x30, 0x03, 0x02, 0x01])
        .await
        .unwrap_err();
    assert_eq!(err(s).rule, "badCSR");
    let s =
        e.f.acme
            .revoke_certificate(RevokeCertificateRequest {
                tenant: T.into(),
                certificate_der: b"garbage".to_vec(),
                reason: 0,
                auth: Some(revoke_certificate_request::Auth::AccountId(acct.clone())),
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "malformed");
    let s =
        e.f.acme
            .list_orders(ListOrdersRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                cursor: "not-a-cursor".into(),
                page_size: 0,
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "malformed");
    let s =
        e.f.acme
            .get_account(GetAccountRequest {
                tenant: T.into(),
                by: None,
            })
            .await
            .unwrap_err();
    assert_eq!(err(s).rule, "accountDoesNotExist");
    // Still serving: the order finalizes.
    let done = finalize(&mut e.f, &acct, &o.order_id, csr(&["test.example"]))
        .await
        .unwrap();
    assert_eq!(done.status, "valid");
}

/// RFC 8659: with CAA identities configured for the tenant, a proven name whose closest CAA set
/// names another CA is refused with `caa`; a set naming this CA (found at a parent) allows it;
/// `issuewild` governs wildcards; no CAA anywhere allows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caa_records_are_checked_after_validation() {
    let mut e = env().await;
    e.f.admin
        .set_acme_settings(certgate_proto::admin::AcmeSettings {
            tenant: T.into(),
            caa_identities: vec!["ca.example".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    {
        let mut m = e.txt.lock().unwrap();
        m.insert("CAA:test.example.".into(), vec!["ca.example".into()]);
        m.insert(
            "CAA:bad.test.example.".into(),
            vec!["other-ca.example".into()],
        );
        m.insert(
            "CAA:dns.test.example.".into(),
            vec!["ca.example".into(), "wild:other-ca.example".into()],
        );
    }
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    // Allowed through the parent's set.
    let o = order(&mut e.f, &acct, &["www.test.example"]).await;
    validate_http(&mut e, &acct, &k, &o).await;
    // Forbidden at the name itself.
    let o = order(&mut e.f, &acct, &["bad.test.example"]).await;
    let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    let tok = token(&a, "http-01");
    e.http
        .answers
        .lock()
        .unwrap()
        .insert(tok.clone(), k.jwk.key_authorization(&tok));
    let ch = respond(&mut e.f, &acct, &a, "http-01").await;
    assert_eq!(ch.status, "invalid");
    assert_eq!(ch.error.unwrap().r#type, "caa");
    // A wildcard follows issuewild (another CA), though issue names this one.
    let o = order(&mut e.f, &acct, &["*.dns.test.example"]).await;
    let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    let tok = token(&a, "dns-01");
    e.txt.lock().unwrap().insert(
        "_acme-challenge.dns.test.example.".into(),
        vec![k.jwk.dns01_txt_value(&tok)],
    );
    let ch = respond(&mut e.f, &acct, &a, "dns-01").await;
    assert_eq!(ch.status, "invalid");
    assert_eq!(ch.error.unwrap().r#type, "caa");
    // The same name without the wildcard: issue allows it.
    let o = order(&mut e.f, &acct, &["dns.test.example"]).await;
    let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    let tok = token(&a, "dns-01");
    e.txt.lock().unwrap().insert(
        "_acme-challenge.dns.test.example.".into(),
        vec![k.jwk.dns01_txt_value(&tok)],
    );
    let ch = respond(&mut e.f, &acct, &a, "dns-01").await;
    assert_eq!(ch.status, "valid", "{ch:?}");
    // No CAA anywhere on the way up (a name outside test.example): allowed.
    let o =
        e.f.acme
            .new_order(NewOrderRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                identifiers: vec![dns("other.example")],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    let tok = token(&a, "dns-01");
    e.txt.lock().unwrap().insert(
        "_acme-challenge.other.example.".into(),
        vec![k.jwk.dns01_txt_value(&tok)],
    );
    let ch = respond(&mut e.f, &acct, &a, "dns-01").await;
    assert_eq!(ch.status, "valid", "{ch:?}");
}

/// RFC 8555 §8.3: http-01 follows http redirects on the validation port (here to another name
/// and path), refuses https redirects to a port that is neither 443 nor the TLS port, and stops
/// redirect loops (https targets: `acme::validate::tests`, with a real rustls server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_follows_http_redirects_within_bounds() {
    let port = std::sync::Arc::new(std::sync::Mutex::new(0u16));
    let p2 = port.clone();
    let mut e = env_with(move |c| *p2.lock().unwrap() = c.http_port).await;
    let port = *port.lock().unwrap();
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let names = ["test.example", "www.test.example", "bad.test.example"];
    let o = order(&mut e.f, &acct, &names).await;
    let mut by_name = HashMap::new();
    for id in &o.authorization_ids {
        let a = authz(&mut e.f, &acct, id).await;
        by_name.insert(a.identifier.as_ref().unwrap().value.clone(), a);
    }
    {
        let mut m = e.http.answers.lock().unwrap();
        // test.example → www.test.example:PORT/central/TOKEN, served there.
        let a = &by_name["test.example"];
        let tok = token(a, "http-01");
        m.insert(
            tok.clone(),
            format!("REDIRECT:http://www.test.example:{port}/central/{tok}"),
        );
        m.insert(format!("/central/{tok}"), k.jwk.key_authorization(&tok));
        // www.test.example → https on the http port: refused.
        let tok = token(&by_name["www.test.example"], "http-01");
        m.insert(tok, format!("REDIRECT:https://www.test.example:{port}/x"));
        // bad.test.example → itself, forever.
        let tok = token(&by_name["bad.test.example"], "http-01");
        m.insert(
            tok.clone(),
            format!("REDIRECT:http://bad.test.example:{port}/.well-known/acme-challenge/{tok}"),
        );
    }
    let ch = respond(&mut e.f, &acct, &by_name["test.example"], "http-01").await;
    assert_eq!(ch.status, "valid", "{ch:?}");
    let ch = respond(&mut e.f, &acct, &by_name["www.test.example"], "http-01").await;
    assert_eq!(ch.status, "invalid");
    let p = ch.error.unwrap();
    assert_eq!(p.r#type, "connection");
    assert!(p.detail.contains("only ports 443 and"), "{}", p.detail);
    let ch = respond(&mut e.f, &acct, &by_name["bad.test.example"], "http-01").await;
    assert_eq!(ch.status, "invalid");
    assert!(ch.error.unwrap().detail.contains("redirects"));
}

/// RFC 8737 over TLS 1.2 too: the handshake signature is checked against the validation
/// certificate's raw key (P-256 and Ed25519 keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_validates_over_tls12() {
    let mut e = env().await;
    e.tls
        .tls12_only
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    for (name, alg) in [
        ("alpn.test.example", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("test.example", &rcgen::PKCS_ED25519),
    ] {
        let o = order(&mut e.f, &acct, &[name]).await;
        let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
        let tok = token(&a, "tls-alpn-01");
        *e.tls.cert.lock().unwrap() =
            Some(alpn_cert_with(name, &k.jwk.key_authorization(&tok), alg));
        let ch = respond(&mut e.f, &acct, &a, "tls-alpn-01").await;
        assert_eq!(ch.status, "valid", "{name}: {ch:?}");
    }
}

/// newOrder notBefore/notAfter (RFC 8555 §7.4): a window inside the profile is echoed by the
/// order and is exactly the certificate's validity (no backdating); finalizing again through the
/// issuance path (order put back to ready) is the same request under the same key, so the same
/// certificate. Windows outside the profile, in the past or inverted are `malformed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_not_before_and_not_after_are_the_certificates_validity() {
    let mut e = env().await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (nb, na) = (now + 3_600, now + 3_600 + 7 * 86_400);
    let o =
        e.f.acme
            .new_order(NewOrderRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                identifiers: vec![dns("test.example")],
                not_before_unix: nb,
                not_after_unix: na,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!((o.not_before_unix, o.not_after_unix), (nb, na));
    validate_http(&mut e, &acct, &k, &o).await;
    let csr_der = csr(&["test.example"]);
    let done = finalize(&mut e.f, &acct, &o.order_id, csr_der.clone())
        .await
        .unwrap();
    assert_eq!(done.status, "valid", "{done:?}");
    assert_eq!((done.not_before_unix, done.not_after_unix), (nb, na));
    let cert =
        e.f.acme
            .get_order_certificate(GetOrderCertificateRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                serial_hex: done.certificate_serial_hex.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(
        certgate_core::x509::validity_of(&cert.certificate_der).unwrap(),
        (nb, na)
    );
    // A retried finalize that reaches Core.Issue again: same request hash, same certificate.
    e.f.store
        .execute_raw(&format!(
            "UPDATE acme_orders SET status = 'ready', certificate_serial_hex = '' WHERE order_id = '{}'",
            o.order_id
        ))
        .unwrap();
    let again = finalize(&mut e.f, &acct, &o.order_id, csr_der)
        .await
        .unwrap();
    assert_eq!(again.status, "valid", "{again:?}");
    assert_eq!(again.certificate_serial_hex, done.certificate_serial_hex);

    // notAfter alone: the certificate starts at issuance and ends exactly then.
    let na2 = now + 2 * 86_400;
    let o2 =
        e.f.acme
            .new_order(NewOrderRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                identifiers: vec![dns("test.example")],
                not_after_unix: na2,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!((o2.not_before_unix, o2.not_after_unix), (0, na2));
    assert_eq!(o2.status, "ready", "the authorization is reused");
    let done2 = finalize(&mut e.f, &acct, &o2.order_id, csr(&["test.example"]))
        .await
        .unwrap();
    let cert2 =
        e.f.acme
            .get_order_certificate(GetOrderCertificateRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                serial_hex: done2.certificate_serial_hex.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    let (nb2, got_na2) = certgate_core::x509::validity_of(&cert2.certificate_der).unwrap();
    assert_eq!(got_na2, na2);
    assert!(
        nb2 <= now + 600 && nb2 < na2,
        "starts at issuance: {nb2} vs {now}"
    );

    // Refusals: beyond the profile's 90 days, notBefore an hour ago, inverted, notAfter past.
    let day = 86_400;
    for (nb, na, needle) in [
        (now, now + 120 * day, "profile"),
        (0, now + 120 * day, "profile"),
        (now - 3_600, now + day, "in the past"),
        (now + 2 * day, now + day, "after notBefore"),
        (0, now - 10, "in the past"),
    ] {
        let st =
            e.f.acme
                .new_order(NewOrderRequest {
                    tenant: T.into(),
                    account_id: acct.clone(),
                    identifiers: vec![dns("test.example")],
                    not_before_unix: nb,
                    not_after_unix: na,
                    ..Default::default()
                })
                .await
                .unwrap_err();
        let r = err(st);
        assert_eq!(r.rule, "malformed", "({nb}, {na}): {r:?}");
        assert!(r.message.contains(needle), "({nb}, {na}): {}", r.message);
    }
}

/// SSRF protection through the service: with the default block list (no loopback exception) a
/// name mapped to 127.0.0.1 fails http-01 with `connection` naming the blocked range, although
/// the responder there holds the right answer; nothing is contacted, and the refusal is counted
/// as outcome `blocked` (this test installs the process's Prometheus recorder: nextest runs each
/// test in its own process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_targets_in_blocked_ranges_are_refused() {
    let metrics = certgate_core::metrics_http::install().unwrap();
    let mut e = env_with(|c| c.allowed_ranges.clear()).await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let o = order(&mut e.f, &acct, &["test.example"]).await;
    let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
    let tok = token(&a, "http-01");
    e.http
        .answers
        .lock()
        .unwrap()
        .insert(tok.clone(), k.jwk.key_authorization(&tok));
    let ch = respond(&mut e.f, &acct, &a, "http-01").await;
    assert_eq!(ch.status, "invalid");
    let p = ch.error.unwrap();
    assert_eq!(p.r#type, "connection");
    assert!(
        p.detail.contains("blocked address range 127.0.0.0/8"),
        "{p:?}"
    );
    assert!(
        e.http.hosts.lock().unwrap().is_empty(),
        "nothing was contacted"
    );
    assert_eq!(
        get_order(&mut e.f, &acct, &o.order_id).await.status,
        "invalid"
    );
    let text = metrics.render();
    let blocked = text
        .lines()
        .find(|l| {
            l.starts_with("certgate_acme_validations_total{")
                && l.contains("outcome=\"blocked\"")
                && l.contains("type=\"http-01\"")
        })
        .unwrap_or_else(|| panic!("no blocked validation counted:\n{text}"));
    assert!(blocked.ends_with(" 1"), "{blocked}");
}

/// Edges cache account keys and state on every call the key that verified the request: the
/// core refuses (unauthorized) a key that is no longer the account's (rolled over through
/// another edge) and a deactivated account, on reads as on writes, so a stale edge cache
/// authorizes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stated_key_must_be_the_accounts_current_key_of_a_valid_account() {
    use certgate_proto::acme::{KeyChangeRequest, UpdateAccountRequest};
    let mut e = env().await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let old_tp = k.jwk.thumbprint();
    let o = order(&mut e.f, &acct, &["stated.test.example"]).await;
    let get = |tp: &str| GetOrderRequest {
        tenant: T.into(),
        account_id: acct.clone(),
        order_id: o.order_id.clone(),
        account_key_thumbprint: tp.into(),
    };
    // The current key: served.
    e.f.acme.get_order(get(&old_tp)).await.expect("current key");
    // Another key: refused, on reads and writes alike.
    let bad = account_key().jwk.thumbprint();
    let s = e.f.acme.get_order(get(&bad)).await.expect_err("other key");
    assert_eq!(err(s).rule, "unauthorized");
    let s =
        e.f.acme
            .new_order(NewOrderRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                identifiers: vec![dns("stated2.test.example")],
                account_key_thumbprint: bad.clone(),
                ..Default::default()
            })
            .await
            .expect_err("other key");
    assert_eq!(err(s).rule, "unauthorized");

    // Rolled over: the old key is refused at once, the new one served.
    let k2 = account_key();
    e.f.acme
        .key_change(KeyChangeRequest {
            tenant: T.into(),
            account_id: acct.clone(),
            new_jwk_json: k2.json.clone(),
            account_key_thumbprint: old_tp.clone(),
        })
        .await
        .expect("key change");
    let s = e.f.acme.get_order(get(&old_tp)).await.expect_err("old key");
    assert_eq!(err(s).rule, "unauthorized");
    let s =
        e.f.acme
            .get_authorization(GetAuthorizationRequest {
                tenant: T.into(),
                account_id: acct.clone(),
                authz_id: o.authorization_ids[0].clone(),
                account_key_thumbprint: old_tp.clone(),
            })
            .await
            .expect_err("old key");
    assert_eq!(err(s).rule, "unauthorized");
    let new_tp = k2.jwk.thumbprint();
    e.f.acme.get_order(get(&new_tp)).await.expect("new key");

    // Deactivated: refused even under its current key.
    e.f.acme
        .update_account(UpdateAccountRequest {
            tenant: T.into(),
            account_id: acct.clone(),
            deactivate: true,
            account_key_thumbprint: new_tp.clone(),
            ..Default::default()
        })
        .await
        .expect("deactivate");
    let s =
        e.f.acme
            .get_order(get(&new_tp))
            .await
            .expect_err("deactivated");
    assert_eq!(err(s).rule, "unauthorized");
}

/// Sets the tenant's CAA identities to `ca.example` and the CAA records of `test.example.`.
async fn caa_setup(e: &mut Env, records: &[&str]) {
    e.f.admin
        .set_acme_settings(certgate_proto::admin::AcmeSettings {
            tenant: T.into(),
            caa_identities: vec!["ca.example".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    set_caa(e, records);
}

fn set_caa(e: &Env, records: &[&str]) {
    e.txt.lock().unwrap().insert(
        "CAA:test.example.".into(),
        records.iter().map(|r| (*r).to_owned()).collect(),
    );
}

/// RFC 8657 at validation: a CAA record restricted to another account (`accounturi`) or to
/// other methods (`validationmethods`) does not authorize (`caa`); one naming this account's URL
/// and the method used does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caa_rfc8657_accounturi_and_validationmethods_are_enforced() {
    let mut e = env().await;
    caa_setup(&mut e, &[]).await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let mine = format!("https://acme.example.org/t/{T}/acme/acct/{acct}");
    let cases = [
        (
            "ca.example; accounturi=https://acme.example.org/t/acme-t/acme/acct/someone-else"
                .to_owned(),
            false,
        ),
        ("ca.example; validationmethods=dns-01".to_owned(), false),
        (format!("ca.example; accounturi={mine}"), true),
        (
            format!("ca.example; accounturi={mine}; validationmethods=tls-alpn-01,http-01"),
            true,
        ),
    ];
    for (record, allowed) in cases {
        set_caa(&e, &[record.as_str()]);
        let o = order(&mut e.f, &acct, &["www.test.example"]).await;
        let a = authz(&mut e.f, &acct, &o.authorization_ids[0]).await;
        assert_eq!(a.status, "pending", "a fresh authorization per case");
        let tok = token(&a, "http-01");
        e.http
            .answers
            .lock()
            .unwrap()
            .insert(tok.clone(), k.jwk.key_authorization(&tok));
        let ch = respond(&mut e.f, &acct, &a, "http-01").await;
        if allowed {
            assert_eq!(ch.status, "valid", "{record}: {ch:?}");
            // Next case needs a fresh authorization: drop this one.
            e.f.acme
                .deactivate_authorization(GetAuthorizationRequest {
                    tenant: T.into(),
                    account_id: acct.clone(),
                    authz_id: a.authz_id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        } else {
            assert_eq!(ch.status, "invalid", "{record}");
            let p = ch.error.unwrap();
            assert_eq!(p.r#type, "caa", "{record}: {p:?}");
            assert!(p.detail.contains("RFC 8657"), "{}", p.detail);
        }
    }
}

/// CAA again at finalize (RFC 8659, BR 3.2.2.8): with `caa_recheck_secs = 0` every finalize
/// re-checks, so CAA records changed after validation to name another CA, or to allow only a
/// method other than the one that proved the name, fail finalize with `caa` and nothing is
/// issued (the order stays ready, no certificate under its key); restoring the records lets the
/// same order finalize. Within the default 8-hour window the validation-time check stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caa_is_checked_again_at_finalize_when_the_proof_is_old() {
    let mut e = env_with(|c| c.caa_recheck_secs = 0).await;
    caa_setup(&mut e, &["ca.example"]).await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let o = order(&mut e.f, &acct, &["www.test.example"]).await;
    validate_http(&mut e, &acct, &k, &o).await;
    assert_eq!(
        get_order(&mut e.f, &acct, &o.order_id).await.status,
        "ready"
    );
    for records in [
        &["other-ca.example"][..],
        &["ca.example; validationmethods=dns-01"],
    ] {
        set_caa(&e, records);
        let s = finalize(&mut e.f, &acct, &o.order_id, csr(&["www.test.example"]))
            .await
            .expect_err("CAA refuses at finalize");
        assert_eq!(err(s).rule, "caa", "{records:?}");
        let now = get_order(&mut e.f, &acct, &o.order_id).await;
        assert_eq!(now.status, "ready");
        assert!(now.certificate_serial_hex.is_empty());
        assert!(
            e.f.store
                .cert_by_key(T, &format!("acme-order:{}", o.order_id))
                .unwrap()
                .is_none(),
            "nothing issued"
        );
    }
    set_caa(&e, &["ca.example; validationmethods=http-01"]);
    let done = finalize(&mut e.f, &acct, &o.order_id, csr(&["www.test.example"]))
        .await
        .unwrap();
    assert_eq!(done.status, "valid");

    // Default window: the proof is seconds old, so finalize relies on the validation's check.
    let mut e = env().await;
    caa_setup(&mut e, &["ca.example"]).await;
    let k = account_key();
    let acct = new_account(&mut e.f, T, &k).await;
    let o = order(&mut e.f, &acct, &["www.test.example"]).await;
    validate_http(&mut e, &acct, &k, &o).await;
    set_caa(&e, &["other-ca.example"]);
    let done = finalize(&mut e.f, &acct, &o.order_id, csr(&["www.test.example"]))
        .await
        .unwrap();
    assert_eq!(done.status, "valid");
}
