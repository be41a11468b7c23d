//! EST end to end (real signer, core and edge processes, real TLS): RFC 7030 §3.5 channel
//! binding with the RFC 9266 `tls-exporter` value, and §4.4.2 encrypted server-side key
//! delivery opened with real OpenSSL (`openssl cms -decrypt`, `openssl cms -verify`).
//!
//! The client is Rust (rustls over tokio): it exports the binding value of its own TLS 1.3
//! connection, puts it base64 into the CSR's challengePassword and posts the CSR on that same
//! connection. Encrypted keys are asked for with DecryptKeyIdentifier (a pre-shared AES key of
//! the label) and AsymmetricDecryptKeyIdentifier (the SKI of the client's TLS certificate, EC
//! P-256: KeyAgreeRecipientInfo).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use certgate_e2e::{Fleet, run};
use der::asn1::{BitString, ObjectIdentifier, OctetStringRef, PrintableStringRef, SetOfVec};
use der::{Any, Decode, Encode};
use http_body_util::{BodyExt, Full};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::attr::Attribute;
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, Version};
use zeroize::Zeroizing;

const CHALLENGE_PASSWORD: &str = "1.2.840.113549.1.9.7";
const DECRYPT_KEY_ID: &str = "1.2.840.113549.1.9.16.2.37";
const ASYMM_DECRYPT_KEY_ID: &str = "1.2.840.113549.1.9.16.2.54";
const KEK_ID: &[u8] = b"kek-1";
const SMIME_CAPABILITIES: &str = "1.2.840.113549.1.9.15";
const AES128_CBC: &str = "2.16.840.1.101.3.4.1.2";
const AES256_WRAP: &str = "2.16.840.1.101.3.4.1.45";
const AES256_GCM: &str = "2.16.840.1.101.3.4.1.46";
const DES_EDE3_CBC: &str = "1.2.840.113549.3.7";

/// An SMIMECapabilities value (RFC 8551 §2.5.2) listing `oids` in this order.
fn capabilities(oids: &[&str]) -> Any {
    let caps: Vec<u8> = oids
        .iter()
        .flat_map(|o| tlv(0x30, &oid(o).to_der().expect("oid")))
        .collect();
    Any::from_der(&tlv(0x30, &caps)).expect("SMIMECapabilities")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn oid(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::new(s).expect("oid")
}

fn attr(o: &str, value: Any) -> Attribute {
    Attribute {
        oid: oid(o),
        values: SetOfVec::try_from(vec![value]).expect("set"),
    }
}

fn printable(v: &str) -> Any {
    Any::encode_from(&PrintableStringRef::new(v).expect("printable")).expect("any")
}

fn octets(v: &[u8]) -> Any {
    Any::encode_from(&OctetStringRef::new(v).expect("octets")).expect("any")
}

/// A P-256 CSR for `cn` with `attrs`, signed with a fresh key (aws-lc-rs); DER.
fn csr(cn: &str, attrs: Vec<Attribute>) -> Vec<u8> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref()).expect("key");
    let info = CertReqInfo {
        version: Version::V1,
        subject: cn.parse::<Name>().expect("name"),
        public_key: SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: oid("1.2.840.10045.2.1"),
                parameters: Some(Any::encode_from(&oid("1.2.840.10045.3.1.7")).expect("curve")),
            },
            subject_public_key: BitString::from_bytes(key.public_key().as_ref()).expect("bits"),
        },
        attributes: SetOfVec::try_from(attrs).expect("attributes"),
    };
    let sig = key.sign(&rng, &info.to_der().expect("tbs")).expect("signs");
    CertReq {
        info,
        algorithm: AlgorithmIdentifierOwned {
            oid: oid("1.2.840.10045.4.3.2"),
            parameters: None,
        },
        signature: BitString::from_bytes(sig.as_ref()).expect("sig"),
    }
    .to_der()
    .expect("csr der")
}

/// One TLS connection to the edge's HTTPS listener, with HTTP/1.1 on top.
struct Conn {
    exporter: Option<[u8; 32]>,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

/// What the client presents.
struct Client {
    roots: rustls::RootCertStore,
    identity: Option<(PathBuf, PathBuf)>,
}

impl Client {
    fn new(fleet: &Fleet, identity: Option<(PathBuf, PathBuf)>) -> Self {
        let pem = std::fs::read(fleet.root_pem()).expect("dev root");
        let mut roots = rustls::RootCertStore::empty();
        for c in certgate_proto::transport::certs_from_pem(&pem).expect("root pem") {
            roots.add(c).expect("add root");
        }
        Self { roots, identity }
    }

    async fn connect(&self, fleet: &Fleet, tls12: bool) -> Conn {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(self.roots.clone());
        let mut cfg = match &self.identity {
            None => b.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certgate_proto::transport::certs_from_pem(
                    &std::fs::read(cert).expect("client cert"),
                )
                .expect("cert pem");
                let key = certgate_proto::transport::key_from_pem(
                    &std::fs::read(key).expect("client key"),
                )
                .expect("key pem");
                b.with_client_auth_cert(chain, key).expect("client auth")
            }
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(fleet.https)
            .await
            .expect("connect");
        let name = rustls_pki_types::ServerName::IpAddress(fleet.https.ip().into());
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let exporter = if tls12 {
            None
        } else {
            Some(
                tls.get_ref()
                    .1
                    .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", Some(&[]))
                    .expect("tls-exporter"),
            )
        };
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .expect("http1 handshake");
        tokio::spawn(conn);
        Conn {
            exporter,
            sender,
            host: fleet.https.to_string(),
        }
    }
}

impl Conn {
    /// POSTs base64 `csr_der` to `/.well-known/est/{path}` with HTTP Basic `userpass`;
    /// (status, content-type, body).
    async fn post(&mut self, path: &str, userpass: &str, csr_der: &[u8]) -> (u16, String, Vec<u8>) {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("/.well-known/est/{path}"))
            .header("host", &self.host)
            .header("content-type", "application/pkcs10")
            .header(
                "authorization",
                format!("Basic {}", STANDARD.encode(userpass)),
            )
            .body(Full::new(Bytes::from(STANDARD.encode(csr_der))))
            .expect("request");
        self.sender
            .ready()
            .await
            .unwrap_or_else(|e| panic!("connection closed before POST {path}: {e}"));
        let resp = self.sender.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        (status, ct, body)
    }
}

/// The parts of a multipart/mixed body: (content-type, decoded base64 body).
fn parts(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("boundary")
        .trim_matches('"');
    let text = String::from_utf8(body.to_vec()).expect("utf8 body");
    text.split(&format!("--{boundary}"))
        .filter_map(|p| {
            let (head, body) = p.split_once("\r\n\r\n")?;
            let ct = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Type: "))?
                .to_owned();
            let b64: String = body.split_whitespace().collect();
            Some((ct, STANDARD.decode(b64).expect("part base64")))
        })
        .collect()
}

/// DER tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    der::Length::try_from(content.len())
        .expect("length")
        .encode_to_vec(&mut v)
        .expect("encodes");
    v.extend_from_slice(content);
    v
}

/// Opens the server-generated-key part with OpenSSL (`decrypt_args` name the key), verifies
/// the SignedData against the dev root alone (signed by the edge's TLS key, which sends its
/// chain along), and checks the key is
/// the certificate's: the public key of the decrypted PKCS#8 equals the certificate's.
fn open_and_match(fleet: &Fleet, dir: &Path, parts: &[(String, Vec<u8>)], decrypt_args: &[&str]) {
    assert_eq!(parts.len(), 2, "two parts");
    assert_eq!(
        parts[0].0,
        "application/pkcs7-mime; smime-type=server-generated-key"
    );
    assert!(
        parts[1].0.contains("smime-type=certs-only"),
        "{}",
        parts[1].0
    );
    std::fs::write(dir.join("env.der"), &parts[0].1).expect("write");
    std::fs::write(dir.join("certs.p7"), &parts[1].1).expect("write");
    let mut args = vec!["cms", "-decrypt", "-inform", "DER", "-in"];
    let env = s(&dir.join("env.der"));
    let sd = s(&dir.join("sd.der"));
    args.push(&env);
    args.extend_from_slice(decrypt_args);
    args.extend_from_slice(&["-out", &sd]);
    let (ok, _, err) = run(Command::new("openssl").args(&args));
    assert!(ok, "openssl cms -decrypt: {err}");
    // The decrypted content is a SignedData: wrap it in a ContentInfo for `openssl cms -verify`.
    let sd_der = std::fs::read(dir.join("sd.der")).expect("sd");
    let ci = tlv(
        0x30,
        &[
            oid("1.2.840.113549.1.7.2").to_der().expect("oid"),
            tlv(0xa0, &sd_der),
        ]
        .concat(),
    );
    std::fs::write(dir.join("ci.der"), ci).expect("write");
    let (ok, _, err) = run(Command::new("openssl").args([
        "cms",
        "-verify",
        "-inform",
        "DER",
        "-in",
        &s(&dir.join("ci.der")),
        "-CAfile",
        &s(&fleet.root_pem()),
        "-purpose",
        "any",
        "-out",
        &s(&dir.join("pkg.der")),
    ]));
    assert!(ok, "openssl cms -verify: {err}");
    let pkg = std::fs::read(dir.join("pkg.der")).expect("pkg");
    let keys: Vec<Any> = Vec::from_der(&pkg).expect("AsymmetricKeyPackage");
    assert_eq!(keys.len(), 1);
    let pkcs8 = Zeroizing::new(keys[0].to_der().expect("der"));
    std::fs::write(dir.join("key.der"), &*pkcs8).expect("write");
    let (ok, key_pub, err) = run(Command::new("openssl").args([
        "pkey",
        "-inform",
        "DER",
        "-in",
        &s(&dir.join("key.der")),
        "-pubout",
    ]));
    assert!(ok, "openssl pkey: {err}");
    let (ok, cert_pem, err) = run(Command::new("openssl").args([
        "pkcs7",
        "-inform",
        "DER",
        "-in",
        &s(&dir.join("certs.p7")),
        "-print_certs",
    ]));
    assert!(ok, "openssl pkcs7: {err}");
    std::fs::write(dir.join("cert.pem"), cert_pem).expect("write");
    let (ok, cert_pub, err) = run(Command::new("openssl").args([
        "x509",
        "-noout",
        "-pubkey",
        "-in",
        &s(&dir.join("cert.pem")),
    ]));
    assert!(ok, "openssl x509: {err}");
    assert_eq!(key_pub, cert_pub, "the delivered key is the certificate's");
}

/// Enrolls a TLS client certificate for `name` (key made by `openssl req -newkey NEWKEY`) on
/// the `enc` label; returns (key path, leaf + issuing CA chain path, subjectKeyIdentifier).
async fn enroll_client(
    fleet: &Fleet,
    c: &mut Conn,
    userpass: &str,
    name: &str,
    newkey: &[&str],
) -> (PathBuf, PathBuf, Vec<u8>) {
    let dir = fleet.scratch();
    let key = dir.join(format!("{name}.key"));
    let csr_der = dir.join(format!("{name}.csr.der"));
    let mut args = vec!["req", "-new", "-nodes", "-newkey"];
    args.extend_from_slice(newkey);
    let (key_s, csr_s) = (s(&key), s(&csr_der));
    let subj = format!("/CN={name}.example");
    let san = format!("subjectAltName=DNS:{name}.example");
    args.extend_from_slice(&[
        "-keyout", &key_s, "-out", &csr_s, "-outform", "DER", "-subj", &subj, "-addext", &san,
    ]);
    let (ok, _, err) = run(Command::new("openssl").args(&args));
    assert!(ok, "openssl req: {err}");
    let der = std::fs::read(&csr_der).expect("csr der");
    let (st, _, body) = c.post("enc/simpleenroll", userpass, &der).await;
    assert_eq!(st, 200, "{name}: {}", String::from_utf8_lossy(&body));
    let p7 = STANDARD
        .decode(
            body.iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect::<Vec<_>>(),
        )
        .expect("base64");
    let p7_path = dir.join(format!("{name}.p7"));
    std::fs::write(&p7_path, &p7).expect("write");
    let (ok, cert_pem, err) = run(Command::new("openssl").args([
        "pkcs7",
        "-inform",
        "DER",
        "-in",
        &s(&p7_path),
        "-print_certs",
    ]));
    assert!(ok, "{err}");
    // The TLS client chain: the leaf and its issuing CA (the edge trusts the root only).
    let chain_path = dir.join(format!("{name}-chain.pem"));
    let chain = std::fs::read_to_string(fleet.chain_pem()).expect("chain.pem");
    std::fs::write(&chain_path, format!("{cert_pem}{chain}")).expect("write");
    let leaf = certgate_proto::transport::certs_from_pem(cert_pem.as_bytes())
        .expect("client cert pem")[0]
        .to_vec();
    let parsed = x509_cert::Certificate::from_der(&leaf).expect("leaf");
    let ski = parsed
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == oid("2.5.29.14"))
        .map(|e| {
            der::asn1::OctetString::from_der(e.extn_value.as_bytes())
                .expect("ski")
                .as_bytes()
                .to_vec()
        })
        .expect("issued leaves carry a subjectKeyIdentifier");
    (key, chain_path, ski)
}

/// Adds the test labels to edge.toml: `bound` (channel binding) and `enc` (a pre-shared key
/// and TLS client certificates), both with the dev Basic credentials of the default label.
fn configure(fleet: &Fleet) -> Vec<u8> {
    let path = fleet.edge_config();
    let edge = std::fs::read_to_string(&path).expect("edge.toml");
    let hash_line = edge
        .lines()
        .find(|l| l.starts_with("basic_password_hash"))
        .expect("dev EST hash")
        .to_owned();
    let user_line = edge
        .lines()
        .find(|l| l.starts_with("basic_username"))
        .expect("dev EST user")
        .to_owned();
    let kek: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let kek_path = fleet.scratch().join("kek.bin");
    std::fs::write(&kek_path, &kek).expect("write kek");
    let extra = format!(
        "\n[est.labels.bound]\n{user_line}\n{hash_line}\nchannel_binding = true\n\
         \n[est.labels.enc]\n{user_line}\n{hash_line}\n\
         [est.labels.enc.decrypt_key_files]\n\"{}\" = {:?}\n",
        hex::encode(KEK_ID),
        s(&kek_path)
    );
    std::fs::write(&path, format!("{edge}{extra}")).expect("edge.toml");
    kek
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_and_encrypted_serverkeygen_against_real_processes() {
    let mut fleet = Fleet::init();
    let kek = configure(&fleet);
    tokio::task::block_in_place(|| fleet.start_all());
    let creds = fleet.credentials();
    let userpass = format!(
        "{}:{}",
        creds.get("est_username").expect("est_username"),
        creds.get("est_password").expect("est_password")
    );
    let dir = fleet.scratch();
    let anon = Client::new(&fleet, None);

    // --- RFC 7030 §3.5 channel binding (label `bound`) ---
    let mut c1 = anon.connect(&fleet, false).await;
    let mut c2 = anon.connect(&fleet, false).await;
    let v1 = c1.exporter.expect("TLS 1.3 exporter");
    let v2 = c2.exporter.expect("TLS 1.3 exporter");
    assert_ne!(v1, v2, "each connection has its own binding");
    let bound_csr = |v: &[u8; 32], cn: &str| {
        csr(
            &format!("CN={cn}"),
            vec![attr(CHALLENGE_PASSWORD, printable(&STANDARD.encode(v)))],
        )
    };
    // The value of this very connection: enrolled.
    let (st, ct, body) = c1
        .post("bound/simpleenroll", &userpass, &bound_csr(&v1, "bound-ok"))
        .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    assert!(ct.contains("certs-only"), "{ct}");
    // Another connection's value (a CSR replayed or relayed from elsewhere): refused.
    let (st, _, body) = c1
        .post(
            "bound/simpleenroll",
            &userpass,
            &bound_csr(&v2, "bound-other"),
        )
        .await;
    assert_eq!(st, 403, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("channel binding"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // No challengePassword at all: refused.
    let (st, _, body) = c2
        .post(
            "bound/simpleenroll",
            &userpass,
            &csr("CN=bound-none", vec![]),
        )
        .await;
    assert_eq!(st, 403, "{}", String::from_utf8_lossy(&body));
    // c2's own value on c2 works too (the check is per connection, not per label).
    let (st, _, body) = c2
        .post(
            "bound/simpleenroll",
            &userpass,
            &bound_csr(&v2, "bound-two"),
        )
        .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    // TLS 1.2 has no tls-exporter here (and rustls no tls-unique): refused, naming TLS 1.3.
    let mut old = anon.connect(&fleet, true).await;
    let (st, _, body) = old
        .post(
            "bound/simpleenroll",
            &userpass,
            &bound_csr(&v1, "bound-tls12"),
        )
        .await;
    assert_eq!(st, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("TLS 1.3"));
    // serverkeygen on a bound label needs the binding as well.
    let (st, _, _) = c1
        .post(
            "bound/serverkeygen",
            &userpass,
            &bound_csr(&v2, "bound-skg"),
        )
        .await;
    assert_eq!(st, 403);

    // --- RFC 7030 §4.4.2 encrypted serverkeygen (label `enc`) ---
    // Symmetric: DecryptKeyIdentifier naming the label's pre-shared key → KEKRecipientInfo.
    let mut c = anon.connect(&fleet, false).await;
    let (st, ct, body) = c
        .post(
            "enc/serverkeygen",
            &userpass,
            &csr("CN=skg-kek", vec![attr(DECRYPT_KEY_ID, octets(KEK_ID))]),
        )
        .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let kek_dir = dir.join("kek");
    std::fs::create_dir_all(&kek_dir).expect("mkdir");
    let key_hex = hex::encode(&kek);
    let id_hex = hex::encode(KEK_ID);
    let p = parts(&ct, &body);
    tokio::task::block_in_place(|| {
        open_and_match(
            &fleet,
            &kek_dir,
            &p,
            &["-secretkey", &key_hex, "-secretkeyid", &id_hex],
        )
    });
    // SMIMECapabilities (RFC 8551 §2.5.2) choose the algorithms: the client prefers AES-256-GCM
    // (not supported, skipped), then AES-128-CBC, with the 32-byte KEK's AES-256 wrap.
    let mut c = anon.connect(&fleet, false).await;
    let (st, ct, body) = c
        .post(
            "enc/serverkeygen",
            &userpass,
            &csr(
                "CN=skg-caps",
                vec![
                    attr(DECRYPT_KEY_ID, octets(KEK_ID)),
                    attr(
                        SMIME_CAPABILITIES,
                        capabilities(&[AES256_GCM, AES128_CBC, AES256_WRAP]),
                    ),
                ],
            ),
        )
        .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let p = parts(&ct, &body);
    let aes128_cbc = oid(AES128_CBC).to_der().expect("oid");
    assert!(
        p[0].1.windows(aes128_cbc.len()).any(|w| w == aes128_cbc),
        "the content is AES-128-CBC, the client's first supported choice"
    );
    let caps_dir = dir.join("kek-caps");
    std::fs::create_dir_all(&caps_dir).expect("mkdir");
    tokio::task::block_in_place(|| {
        open_and_match(
            &fleet,
            &caps_dir,
            &p,
            &["-secretkey", &key_hex, "-secretkeyid", &id_hex],
        )
    });
    // Only algorithms this server does not support: 400 that says so, never the key.
    let mut c = anon.connect(&fleet, false).await;
    let (st, ct, body) = c
        .post(
            "enc/serverkeygen",
            &userpass,
            &csr(
                "CN=skg-caps-none",
                vec![
                    attr(DECRYPT_KEY_ID, octets(KEK_ID)),
                    attr(SMIME_CAPABILITIES, capabilities(&[DES_EDE3_CBC])),
                ],
            ),
        )
        .await;
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));
    assert!(!ct.contains("multipart"), "{ct}");
    assert!(
        String::from_utf8_lossy(&body).contains("SMIMECapabilities"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // OpenSSL may take longer than the edge's keep-alive idle timeout: a new connection.
    let mut c = anon.connect(&fleet, false).await;
    // An unknown key identifier: 400, and never the unencrypted key.
    let (st, ct, body) = c
        .post(
            "enc/serverkeygen",
            &userpass,
            &csr(
                "CN=skg-unknown",
                vec![attr(DECRYPT_KEY_ID, octets(b"nope"))],
            ),
        )
        .await;
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));
    assert!(!ct.contains("multipart"), "{ct}");
    // AsymmetricDecryptKeyIdentifier without a TLS client certificate: 400.
    let (st, _, body) = c
        .post(
            "enc/serverkeygen",
            &userpass,
            &csr(
                "CN=skg-nocert",
                vec![attr(ASYMM_DECRYPT_KEY_ID, octets(b"x"))],
            ),
        )
        .await;
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));

    // Asymmetric: enroll a TLS client certificate first (EC P-256, then RSA-2048), then ask
    // for the key encrypted to it (its SKI) → KeyAgreeRecipientInfo (ECDH) /
    // KeyTransRecipientInfo (RSA), opened by OpenSSL with that certificate's key.
    let mut last = None;
    for (name, newkey) in [
        (
            "ecdh",
            ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"].as_slice(),
        ),
        ("rsa", ["rsa:2048"].as_slice()),
    ] {
        let mut c = anon.connect(&fleet, false).await;
        let (ckey, cchain, ski) = enroll_client(&fleet, &mut c, &userpass, name, newkey).await;
        let with_cert = Client::new(&fleet, Some((cchain.clone(), ckey.clone())));
        let mut cc = with_cert.connect(&fleet, false).await;
        let (st, ct, body) = cc
            .post(
                "enc/serverkeygen",
                &userpass,
                &csr(
                    &format!("CN=skg-{name}"),
                    vec![attr(ASYMM_DECRYPT_KEY_ID, octets(&ski))],
                ),
            )
            .await;
        assert_eq!(st, 200, "{name}: {}", String::from_utf8_lossy(&body));
        let out = dir.join(name);
        std::fs::create_dir_all(&out).expect("mkdir");
        let p = parts(&ct, &body);
        tokio::task::block_in_place(|| {
            open_and_match(
                &fleet,
                &out,
                &p,
                &["-recip", &s(&cchain), "-inkey", &s(&ckey)],
            )
        });
        last = Some(with_cert);
    }
    let with_cert = last.expect("a client");
    // A key identifier that is not the presented certificate's: 400.
    let mut cc = with_cert.connect(&fleet, false).await;
    let (st, _, body) = cc
        .post(
            "enc/serverkeygen",
            &userpass,
            &csr(
                "CN=skg-wrong",
                vec![attr(ASYMM_DECRYPT_KEY_ID, octets(b"not-the-ski"))],
            ),
        )
        .await;
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));
}
