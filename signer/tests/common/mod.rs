//! Shared helpers for the signer's integration tests: a signer on a temporary Unix socket (in
//! process or as a child process), clients, audit readers, DER fixtures and OpenSSL verification.
#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use certgate_proto::signer::signer_client::SignerClient;
use certgate_proto::signer::{
    Algorithm, GenerateKeyRequest, KeyBackend, KeyInfo, KeyPolicy, KeyRole, KeyType, SignRequest,
};
use certgate_signer::config::Config;
use certgate_signer::keystore::Kek;
use der::{Decode, Encode};
use tonic::transport::Channel;

pub fn uid() -> u32 {
    certgate_proto::transport::current_uid()
}

/// Writes a KEK into `dir` and returns a dev config serving on `dir/signer.sock`.
pub fn config(dir: &Path, allow: &[String], admin: &[String]) -> Config {
    let kek = dir.join("kek");
    if !kek.exists() {
        std::fs::write(&kek, Kek::generate().expect("kek").to_base64().as_bytes()).expect("kek");
    }
    let text = format!(
        r#"
mode = "dev"
socket = "signer.sock"
allow = {allow:?}
admin_allow = {admin:?}
audit_log = "audit.jsonl"
key_dir = "keys"
kek_file = "kek"
"#
    );
    Config::parse(&text, dir).expect("config")
}

/// A config admitting the current uid for everything.
pub fn own_config(dir: &Path) -> Config {
    let me = vec![format!("uid:{}", uid())];
    config(dir, &me, &me)
}

pub fn client(socket: &Path) -> SignerClient<Channel> {
    SignerClient::new(certgate_proto::transport::unix_channel(socket.to_owned()))
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024)
}

pub fn generate_request(id: &str, role: KeyRole, key_type: KeyType) -> GenerateKeyRequest {
    GenerateKeyRequest {
        key_id: id.into(),
        tenant: "acme".into(),
        role: role as i32,
        key_type: key_type as i32,
        backend: KeyBackend::SealedFile as i32,
        policy: Some(KeyPolicy::default()),
    }
}

pub async fn generate(
    c: &mut SignerClient<Channel>,
    id: &str,
    role: KeyRole,
    kt: KeyType,
) -> KeyInfo {
    c.generate_key(generate_request(id, role, kt))
        .await
        .expect("generate key")
        .into_inner()
}

pub fn sign_request(key_id: &str, alg: Algorithm, message: &[u8]) -> SignRequest {
    SignRequest {
        key_id: key_id.into(),
        algorithm: alg as i32,
        message: message.to_vec(),
    }
}

/// Every record of an audit file, parsed.
pub fn audit_records(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read(path).unwrap_or_default();
    assert!(
        certgate_signer::audit::verify(&text).is_ok(),
        "audit chain must verify"
    );
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("audit json"))
        .collect()
}

/// The rule carried in a status's details.
pub fn rule_of(status: &tonic::Status) -> String {
    certgate_proto::RpcError::from_status(status).rule
}

// ---- DER fixtures -------------------------------------------------------------------------

/// A TBSCertificate (signed by a throwaway ECDSA P-256 key, so its AlgorithmIdentifier is
/// ecdsa-with-SHA256). `ca`: None = end entity, Some(path_len).
pub fn tbs_certificate(ca: Option<Option<u8>>, days: i64) -> Vec<u8> {
    let mut params =
        rcgen::CertificateParams::new(vec!["leaf.example".to_owned()]).expect("params");
    params.is_ca = match ca {
        None => rcgen::IsCa::NoCa,
        Some(None) => rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
        Some(Some(n)) => rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(n)),
    };
    if ca.is_some() {
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
    }
    params.not_before = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("t");
    params.not_after = params.not_before + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let cert = x509_cert::Certificate::from_der(cert.der()).expect("parse");
    cert.tbs_certificate.to_der().expect("der")
}

pub fn ecdsa_sha256_id() -> spki::AlgorithmIdentifierOwned {
    spki::AlgorithmIdentifierOwned {
        oid: const_oid::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
        parameters: None,
    }
}

pub fn tbs_cert_list() -> Vec<u8> {
    x509_cert::crl::TbsCertList {
        version: x509_cert::Version::V2,
        signature: ecdsa_sha256_id(),
        issuer: x509_cert::name::Name::from_str("CN=Test CA").expect("name"),
        this_update: x509_cert::time::Time::UtcTime(
            der::asn1::UtcTime::from_unix_duration(Duration::from_secs(1_800_000_000)).expect("t"),
        ),
        next_update: None,
        revoked_certificates: None,
        crl_extensions: None,
    }
    .to_der()
    .expect("der")
}

pub fn response_data(serial: u32) -> Vec<u8> {
    use sha1::Digest as _;
    let name = x509_cert::name::Name::from_str("CN=Test CA").expect("name");
    let cert_id = x509_ocsp::CertId {
        hash_algorithm: spki::AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::ID_SHA_1,
            parameters: None,
        },
        issuer_name_hash: der::asn1::OctetString::new(
            sha1::Sha1::digest(name.to_der().expect("der")).to_vec(),
        )
        .expect("octets"),
        issuer_key_hash: der::asn1::OctetString::new(vec![7u8; 20]).expect("octets"),
        serial_number: x509_cert::serial_number::SerialNumber::from(serial),
    };
    let t = |s: u64| {
        x509_ocsp::OcspGeneralizedTime(
            der::asn1::GeneralizedTime::from_unix_duration(Duration::from_secs(s)).expect("t"),
        )
    };
    x509_ocsp::ResponseData {
        version: x509_ocsp::Version::V1,
        responder_id: x509_ocsp::ResponderId::ByName(name),
        produced_at: t(1_800_000_000),
        responses: vec![x509_ocsp::SingleResponse {
            cert_id,
            cert_status: x509_ocsp::CertStatus::good(),
            this_update: t(1_800_000_000),
            next_update: Some(t(1_800_604_800)),
            single_extensions: None,
        }],
        response_extensions: None,
    }
    .to_der()
    .expect("der")
}

// ---- OpenSSL -------------------------------------------------------------------------------

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Verifies `sig` over `msg` under the SubjectPublicKeyInfo `spki` with the `openssl` CLI, in a
/// separate process. Returns OpenSSL's output on failure.
pub fn openssl_verify(spki: &[u8], alg: Algorithm, msg: &[u8], sig: &[u8]) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("pub.pem"), pem("PUBLIC KEY", spki)).expect("write");
    std::fs::write(p("msg.bin"), msg).expect("write");
    std::fs::write(p("sig.bin"), sig).expect("write");
    let s = |x: PathBuf| x.to_str().expect("utf8 path").to_owned();
    let (pubkey, m, sg) = (s(p("pub.pem")), s(p("msg.bin")), s(p("sig.bin")));
    let mut args: Vec<String> = Vec::new();
    let digest = |d: &str| vec!["dgst".to_owned(), format!("-{d}")];
    let pss = [
        "-sigopt",
        "rsa_padding_mode:pss",
        "-sigopt",
        "rsa_pss_saltlen:digest",
    ];
    match alg {
        Algorithm::EcdsaP256Sha256 | Algorithm::RsaPkcs1Sha256 => args.extend(digest("sha256")),
        Algorithm::EcdsaP384Sha384 | Algorithm::RsaPkcs1Sha384 => args.extend(digest("sha384")),
        Algorithm::RsaPkcs1Sha512 => args.extend(digest("sha512")),
        Algorithm::RsaPssSha256 => {
            args.extend(digest("sha256"));
            args.extend(pss.iter().map(|s| s.to_string()));
        }
        Algorithm::RsaPssSha384 => {
            args.extend(digest("sha384"));
            args.extend(pss.iter().map(|s| s.to_string()));
        }
        Algorithm::RsaPssSha512 => {
            args.extend(digest("sha512"));
            args.extend(pss.iter().map(|s| s.to_string()));
        }
        Algorithm::Ed25519 => {
            args.extend(
                [
                    "pkeyutl", "-verify", "-pubin", "-inkey", &pubkey, "-rawin", "-in", &m,
                    "-sigfile", &sg,
                ]
                .iter()
                .map(|s| s.to_string()),
            );
        }
        Algorithm::Unspecified => return Err("unspecified algorithm".into()),
    }
    if alg != Algorithm::Ed25519 {
        args.extend(
            ["-verify", &pubkey, "-signature", &sg, &m]
                .iter()
                .map(|s| s.to_string()),
        );
    }
    let out = Command::new("openssl")
        .args(&args)
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success()
        && (text.contains("Verified Successfully") || text.contains("Verified OK"))
    {
        Ok(())
    } else {
        Err(format!("openssl {args:?}: {text}"))
    }
}

// ---- the real binary -----------------------------------------------------------------------

/// A `certgate-signer` child process, killed on drop.
pub struct SignerProcess {
    pub child: Child,
    pub socket: PathBuf,
}

impl SignerProcess {
    /// Starts the binary with `config_path` and `envs`, waits until its socket accepts.
    pub fn start(config_path: &Path, socket: &Path, envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_certgate-signer"));
        cmd.arg("--config")
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn certgate-signer");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("certgate-signer exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "certgate-signer did not open {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            socket: socket.to_owned(),
        }
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SignerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a config file for the binary and returns its path.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let kek = dir.join("kek");
    if !kek.exists() {
        std::fs::write(&kek, Kek::generate().expect("kek").to_base64().as_bytes()).expect("kek");
    }
    let me = format!("uid:{}", uid());
    let text = format!(
        r#"mode = "dev"
socket = "signer.sock"
allow = ["{me}"]
admin_allow = ["{me}"]
audit_log = "audit.jsonl"
key_dir = "keys"
kek_file = "kek"
{extra}
"#
    );
    let path = dir.join("signer.toml");
    std::fs::write(&path, text).expect("write config");
    path
}
