//! CMP CRL update retrieval end to end (RFC 9483 §4.3.4, RFC 9480 §2.17) against `certgate up`
//! (real signer, core and edge processes on loopback). OpenSSL 3.0's `openssl cmp` cannot send
//! `id-it-crlStatusList` (that arrived in OpenSSL 3.2), so the genm is built here with the
//! certgate-cmp DER helpers and MAC-protected with the dev credentials (PasswordBasedMac); the
//! certificate and its revocation go through the real `openssl cmp`. Every CRL returned in a
//! genp is checked with `openssl crl -verify -CAfile issuing.pem`.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use certgate_cmp::FailInfo;
use certgate_cmp::crl_status::{CrlSource, CrlStatus};
use certgate_cmp::der_util::{bits, int, octets, read_all, read_tlv, seq, tlv};
use certgate_e2e::{Fleet, http_get, run, start_up};
use der::asn1::{GeneralizedTime, Ia5String};
use der::{Decode, DecodePem, Encode};
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};

/// PasswordBasedMac iterations the test client uses.
const ITERATIONS: u64 = 500;

fn oid(s: &str) -> Vec<u8> {
    der::asn1::ObjectIdentifier::new_unwrap(s)
        .to_der()
        .expect("oid")
}

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("rng");
    b
}

/// A MAC-protected genm client with the dev reference and secret.
struct Client {
    addr: std::net::SocketAddr,
    reference: Vec<u8>,
    secret: Vec<u8>,
}

impl Client {
    /// genm { crlStatusList: `value` } → the raw response.
    fn genm(&self, value: &[u8]) -> Vec<u8> {
        let salt = random16();
        let params = seq(&[
            &octets(&salt),
            &seq(&[&oid("2.16.840.1.101.3.4.2.1")]),
            &int(ITERATIONS),
            &seq(&[&oid("1.2.840.113549.2.9")]),
        ]);
        let alg = seq(&[&oid("1.2.840.113533.7.66.13"), &params]);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let time = GeneralizedTime::from_unix_duration(Duration::from_secs(now))
            .expect("time")
            .to_der()
            .expect("der");
        let null_dn = tlv(0xa4, &seq(&[]));
        let header = seq(&[
            &int(2),
            &null_dn,
            &null_dn,
            &tlv(0xa0, &time),
            &tlv(0xa1, &alg),
            &tlv(0xa2, &octets(&self.reference)),
            &tlv(0xa4, &octets(&random16())),
            &tlv(0xa5, &octets(&random16())),
        ]);
        let itav = seq(&[&oid("1.3.6.1.5.5.7.4.22"), value]);
        let body = tlv(0xb5, &seq(&[&itav]));
        // RFC 4210 §5.1.3.1: BASEKEY = SHA-256^iterationCount(secret ‖ salt), MAC = HMAC-SHA256.
        let mut k = [self.secret.as_slice(), &salt].concat();
        for _ in 0..ITERATIONS {
            k = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &k)
                .as_ref()
                .to_vec();
        }
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &k);
        let mac = aws_lc_rs::hmac::sign(&key, &seq(&[&header, &body]));
        let msg = seq(&[&header, &body, &tlv(0xa0, &bits(mac.as_ref()))]);
        post_cmp(self.addr, &msg)
    }

    /// The genp's id-it-crls: Ok(None) = absent infoValue, Err(response) = a CMP error message.
    fn crls(&self, list: &[CrlStatus]) -> Result<Option<Vec<Vec<u8>>>, Vec<u8>> {
        let resp = self.genm(&list.to_vec().to_der().expect("CRLStatusListValue"));
        let (m, _) = read_tlv(&resp).expect("a PKIMessage");
        let fields = read_all(m.content).expect("fields");
        if fields[1].tag == 0xb7 {
            return Err(resp);
        }
        assert_eq!(fields[1].tag, 0xb6, "genp");
        let (list, _) = read_tlv(fields[1].content).expect("GenRepContent");
        let itavs = read_all(list.content).expect("ITAVs");
        assert_eq!(itavs.len(), 1);
        let itav = read_all(itavs[0].content).expect("ITAV");
        assert_eq!(itav[0].raw, oid("1.3.6.1.5.5.7.4.23"), "id-it-crls");
        Ok(itav.get(1).map(|v| {
            read_all(v.content)
                .expect("CRLs")
                .iter()
                .map(|c| c.raw.to_vec())
                .collect()
        }))
    }
}

fn post_cmp(addr: std::net::SocketAddr, body: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "POST /.well-known/cmp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/pkixcmp\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .expect("write");
    s.write_all(body).expect("write body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
    let head = String::from_utf8_lossy(&raw[..split]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    raw[split + 4..].to_vec()
}

fn has_fail(resp: &[u8], fail: FailInfo) -> bool {
    let bits = fail.bit_string_der();
    resp.windows(bits.len()).any(|w| w == bits.as_slice())
}

fn uri_status(uri: &str, this_update: Option<u64>) -> CrlStatus {
    status(
        CrlSource::Dpn(DistributionPointName::FullName(vec![
            GeneralName::UniformResourceIdentifier(Ia5String::new(uri).expect("ia5")),
        ])),
        this_update,
    )
}

fn status(source: CrlSource, this_update: Option<u64>) -> CrlStatus {
    CrlStatus {
        source,
        this_update: this_update.map(|t| {
            x509_cert::time::Time::GeneralTime(
                GeneralizedTime::from_unix_duration(Duration::from_secs(t)).expect("time"),
            )
        }),
    }
}

fn openssl(args: &[&str]) -> String {
    let (ok, out, err) = run(Command::new("openssl").args(args));
    assert!(ok, "openssl {args:?}: {out}{err}");
    format!("{out}{err}")
}

/// `openssl crl -verify` with the issuing CA; returns (thisUpdate, revoked serials as hex).
fn verify_crl(fleet: &Fleet, issuing: &str, der: &[u8], tag: &str) -> (u64, Vec<String>) {
    let path = fleet.scratch().join(format!("{tag}.crl"));
    std::fs::write(&path, der).expect("write CRL");
    let out = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        &path.to_string_lossy(),
        "-verify",
        "-CAfile",
        issuing,
        "-noout",
    ]);
    assert!(out.contains("verify OK"), "{tag}: {out}");
    let crl = CertificateList::from_der(der).expect("a CRL");
    let serials = crl
        .tbs_cert_list
        .revoked_certificates
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let b = r.serial_number.as_bytes();
            hex::encode(
                b.iter()
                    .copied()
                    .skip_while(|x| *x == 0)
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    (
        crl.tbs_cert_list.this_update.to_unix_duration().as_secs(),
        serials,
    )
}

#[test]
fn genm_crl_status_list_returns_only_newer_verified_crls_against_certgate_up() {
    let fleet = Fleet::uninitialised();
    let _up = start_up(&fleet);
    let creds = fleet.credentials();
    let reference = creds.get("cmp_reference").expect("cmp_reference").clone();
    let secret = creds.get("cmp_secret").expect("cmp_secret").clone();
    let scratch = fleet.scratch();
    let p = |n: &str| -> String { scratch.join(n).to_string_lossy().into_owned() };
    let root = fleet.root_pem().to_string_lossy().into_owned();
    let server = format!("http://{}/.well-known/cmp", fleet.http);
    let cmp = |args: &[&str]| {
        let mut cmd = Command::new("openssl");
        cmd.arg("cmp")
            .args(["-server", &server, "-trusted", &root])
            .args(["-unprotected_errors", "-msg_timeout", "30"])
            .args(["-ref", &reference, "-secret", &format!("pass:{secret}")])
            .args(args);
        let (ok, out, err) = run(&mut cmd);
        assert!(ok, "openssl cmp {args:?}: {out}{err}");
    };
    let issuing = p("issuing.pem");
    openssl(&[
        "x509",
        "-in",
        &fleet.chain_pem().to_string_lossy(),
        "-out",
        &issuing,
    ]);
    let client = Client {
        addr: fleet.http,
        reference: reference.as_bytes().to_vec(),
        secret: secret.as_bytes().to_vec(),
    };

    // A certificate from `openssl cmp ir`: its CRL distribution point names a shard CRL.
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &p("k.pem"),
    ]);
    cmp(&[
        "-cmd",
        "ir",
        "-newkey",
        &p("k.pem"),
        "-subject",
        "/CN=crl-status",
        "-implicit_confirm",
        "-certout",
        &p("leaf.pem"),
    ]);
    let leaf = Certificate::from_pem(std::fs::read(p("leaf.pem")).expect("leaf")).expect("pem");
    let serial = certgate_cmp::parse::serial_hex(&leaf);
    let dp = openssl(&[
        "x509",
        "-in",
        &p("leaf.pem"),
        "-noout",
        "-ext",
        "crlDistributionPoints",
    ]);
    let shard_url = dp
        .split_whitespace()
        .find_map(|w| w.strip_prefix("URI:"))
        .unwrap_or_else(|| panic!("no CRL DP URI in {dp}"))
        .to_owned();
    let full_url = format!("{}/full.crl", shard_url.rsplit_once('/').expect("a path").0);
    let shard_path = &shard_url[shard_url.find("/crl/").expect("/crl/ path")..];
    // The shard CRL exists once the edge serves it (the core builds missing CRLs on schedule).
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(fleet.http, shard_path).map(|(s, _)| s) != Some(200) {
        assert!(Instant::now() < deadline, "{shard_path} never served");
        std::thread::sleep(Duration::from_millis(200));
    }

    // No thisUpdate: the current shard CRL; it verifies and does not list the new certificate.
    let crls = client
        .crls(&[uri_status(&shard_url, None)])
        .expect("genp")
        .expect("a CRL");
    assert_eq!(crls.len(), 1);
    let (t0, revoked) = verify_crl(&fleet, &issuing, &crls[0], "shard0");
    assert!(!revoked.contains(&serial));
    // The client's thisUpdate is the current one: absent infoValue.
    assert_eq!(
        client.crls(&[uri_status(&shard_url, Some(t0))]),
        Ok(None),
        "the client's CRL is current"
    );
    // By issuer name (the issuing CA's subject): the full CRL, which verifies too.
    let issuer = GeneralName::DirectoryName(leaf.tbs_certificate.issuer.clone());
    let crls = client
        .crls(&[status(CrlSource::Issuer(vec![issuer.clone()]), None)])
        .expect("genp")
        .expect("a CRL");
    verify_crl(&fleet, &issuing, &crls[0], "full0");
    assert!(
        crls[0]
            .windows(full_url.len())
            .any(|w| w == full_url.as_bytes()),
        "the full CRL (its IssuingDistributionPoint names {full_url})"
    );
    assert_eq!(
        client.crls(&[uri_status(&full_url, None)]),
        Ok(Some(crls)),
        "the full CRL's URL names the same CRL"
    );

    // Unknown sources: badRequest; a malformed list: badDataFormat.
    for s in [
        uri_status("http://crl.example/crl/nobody/1.crl", None),
        uri_status(&shard_url.replace("127.0.0.1", "localhost"), None),
        status(
            CrlSource::Issuer(vec![GeneralName::DirectoryName(
                "CN=Nobody".parse().expect("name"),
            )]),
            None,
        ),
    ] {
        let e = client.crls(&[s]).expect_err("an error message");
        assert!(has_fail(&e, FailInfo::BadRequest), "badRequest");
    }
    let e = client.genm(&[0x30, 0x00]);
    assert!(has_fail(&e, FailInfo::BadDataFormat), "badDataFormat");

    // Revoke the certificate; thisUpdate has second resolution, so let one second pass first
    // (then a rebuilt CRL is strictly newer than t0 whatever the machine's load).
    std::thread::sleep(Duration::from_millis(1100));
    cmp(&["-cmd", "rr", "-oldcert", &p("leaf.pem")]);
    // The core rebuilds the shard CRL after the revocation (debounced); until then the client's
    // CRL stays current. Wait for the newer one with a generous deadline.
    let newer = wait_newer(&client, &[uri_status(&shard_url, Some(t0))], "shard");
    assert_eq!(newer.len(), 1);
    let (t1, revoked) = verify_crl(&fleet, &issuing, &newer[0], "shard1");
    assert!(t1 > t0, "newer: {t1} > {t0}");
    assert!(revoked.contains(&serial), "{serial} in {revoked:?}");
    // And by issuer with the old thisUpdate: the full CRL, newer and listing it too.
    let full1 = wait_newer(
        &client,
        &[status(CrlSource::Issuer(vec![issuer]), Some(t0))],
        "full",
    );
    let (tf, revoked) = verify_crl(&fleet, &issuing, &full1[0], "full1");
    assert!(tf > t0);
    assert!(revoked.contains(&serial), "{serial} in the full CRL");
}

/// Asks until the answer carries CRLs (a CRL newer than the client's), with a generous deadline
/// for a busy machine; an error message fails at once.
fn wait_newer(client: &Client, list: &[CrlStatus], what: &str) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.crls(list) {
            Ok(Some(crls)) => return crls,
            Ok(None) => {}
            Err(_) => panic!("{what}: an error message for a known source"),
        }
        assert!(Instant::now() < deadline, "{what}: no newer CRL");
        std::thread::sleep(Duration::from_millis(200));
    }
}
