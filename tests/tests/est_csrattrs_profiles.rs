//! EST `csrattrs` and the CMP `certReqTemplate` derived from each tenant's certificate profile
//! (Core.DescribeProfile) under `certgate up`: read with curl + `openssl asn1parse` and with
//! OpenSSL's own CMP client, a second tenant with another profile gets another answer, and the
//! core never shows one tenant another tenant's profile (I-4).

use std::path::{Path, PathBuf};
use std::process::Command;

use certgate_e2e::{Fleet, run, start_up};
use certgate_proto::ErrorKind;

/// DER hex of the extendedKeyUsage extnValue for serverAuth + clientAuth, and for clientAuth.
const EKU_SERVER_CLIENT: &str = "301406082b0601050507030106082b06010505070302";
const EKU_CLIENT: &str = "300a06082b06010505070302";

fn p(fleet: &Fleet, name: &str) -> PathBuf {
    fleet.scratch().join(name)
}

/// GET `path` on the HTTPS listener: (status, body).
fn get(fleet: &Fleet, path: &str, tag: &str) -> (u16, Vec<u8>) {
    let out = p(fleet, &format!("{tag}.body"));
    let (_, code, err) = run(Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(fleet.root_pem())
        .arg("-o")
        .arg(&out)
        .args(["-w", "%{http_code}"])
        .arg(format!("https://{}{path}", fleet.https)));
    let code = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl: {err}"));
    (code, std::fs::read(&out).unwrap_or_default())
}

/// `openssl asn1parse` of a DER file.
fn asn1parse(der: &Path) -> String {
    let (ok, out, err) = run(Command::new("openssl")
        .args(["asn1parse", "-inform", "DER", "-i", "-in"])
        .arg(der));
    assert!(ok, "asn1parse: {err}");
    out
}

/// The csrattrs answer at `path`: base64 decoded by `openssl base64`, parsed by asn1parse.
fn csrattrs(fleet: &Fleet, path: &str, tag: &str) -> (String, String) {
    let (code, body) = get(fleet, path, tag);
    assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
    let b64 = p(fleet, &format!("{tag}.b64"));
    let der = p(fleet, &format!("{tag}.der"));
    std::fs::write(&b64, &body).expect("write");
    let (ok, _, err) = run(Command::new("openssl")
        .args(["base64", "-d", "-A", "-in"])
        .arg(&b64)
        .arg("-out")
        .arg(&der));
    assert!(ok, "base64: {err}");
    let bytes = std::fs::read(&der).expect("der");
    (asn1parse(&der), hex::encode(bytes))
}

fn has_all(text: &str, want: &[&str]) {
    for w in want {
        assert!(text.contains(w), "{w} missing in\n{text}");
    }
}

fn has_none(text: &str, unwanted: &[&str]) {
    for w in unwanted {
        assert!(!text.contains(w), "{w} unexpected in\n{text}");
    }
}

async fn put_tenant(fleet: &Fleet, name: &str) {
    use certgate_proto::admin::admin_client::AdminClient;
    let ch = certgate_proto::transport::unix_channel(fleet.core_socket());
    AdminClient::new(ch)
        .put_tenant(certgate_proto::admin::Tenant {
            name: name.into(),
            public_base_url: format!("http://{}", fleet.http),
            default_profile: String::new(),
            active_issuer_id: String::new(),
        })
        .await
        .expect("PutTenant");
}

async fn describe(
    fleet: &Fleet,
    tenant: &str,
    profile: &str,
) -> Result<certgate_proto::core::ProfileDescription, certgate_proto::RpcError> {
    use certgate_proto::core::core_client::CoreClient;
    let ch = certgate_proto::transport::unix_channel(fleet.core_socket());
    CoreClient::new(ch)
        .describe_profile(certgate_proto::core::DescribeProfileRequest {
            tenant: tenant.into(),
            profile: profile.into(),
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| certgate_proto::RpcError::from_status(&s))
}

/// `openssl cmp -cmd genm -infotype certReqTemplate`, the genp saved with `-rspout`; returns
/// the asn1parse of the template part and the client's output.
fn cmp_template(fleet: &Fleet, path: &str, tag: &str) -> (String, String) {
    let creds = fleet.credentials();
    let rsp = p(fleet, &format!("{tag}.genp.der"));
    let (ok, out, err) = run(Command::new("openssl")
        .args([
            "cmp",
            "-cmd",
            "genm",
            "-infotype",
            "certReqTemplate",
            "-server",
        ])
        .arg(format!("http://{}{path}", fleet.http))
        .arg("-trusted")
        .arg(fleet.root_pem())
        .args(["-ref", creds.get("cmp_reference").expect("cmp_reference")])
        .arg("-secret")
        .arg(format!(
            "pass:{}",
            creds.get("cmp_secret").expect("cmp_secret")
        ))
        .args(["-unprotected_errors", "-msg_timeout", "30", "-rspout"])
        .arg(&rsp));
    let log = format!("{out}\n{err}");
    assert!(ok, "openssl cmp genm: {log}");
    let parsed = asn1parse(&rsp);
    let start = parsed
        .find(":id-it-certReqTemplate")
        .unwrap_or_else(|| panic!("no certReqTemplate ITAV in\n{parsed}"));
    (parsed[start..].to_owned(), log)
}

/// Tenant `plant-7` with a default profile (P-384 only, client auth only, DNS names only)
/// and a second, named profile of the same content.
async fn plant_tenant(fleet: &Fleet) {
    put_tenant(fleet, "plant-7").await;
    let profile = p(fleet, "iot.toml");
    std::fs::write(
        &profile,
        "key_algorithms = [\"ecdsa-p384\"]\nekus = [\"client_auth\"]\n\
         key_usages = [\"digital_signature\"]\nmax_validity_seconds = 86400\n\
         default_validity_seconds = 86400\nallowed_dns_suffixes = [\"plant7.example\"]\n\
         max_sans = 1\n",
    )
    .expect("write profile");
    for name in ["tls-server", "iot-p384"] {
        let (ok, out, err) = fleet.cli(&[
            "profile",
            "create",
            "--tenant",
            "plant-7",
            "--name",
            name,
            "--file",
            &profile.to_string_lossy(),
        ]);
        assert!(ok, "profile create {name}: {out}{err}");
    }
}

/// Under `certgate up`: the built-in profile of tenant `default` as EST csrattrs (curl +
/// asn1parse) and as the CMP certReqTemplate (OpenSSL's CMP client); the core's
/// DescribeProfile keeps tenants apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certgate_up_publishes_the_default_profile_as_csrattrs_and_cmp_template() {
    let fleet = Fleet::uninitialised();
    let _up = start_up(&fleet);

    // Tenant `default`, the built-in `tls-server` profile: every key type, server + client
    // auth, DNS and IP names. (`certgate up` sets no edge.toml csr_attrs override.)
    let (text, der_hex) = csrattrs(&fleet, "/.well-known/est/csrattrs", "default");
    has_all(
        &text,
        &[
            ":id-ecPublicKey",
            ":prime256v1",
            ":secp384r1",
            ":ED25519",
            ":rsaEncryption",
            "INTEGER           :0800",
            ":ecdsa-with-SHA256",
            ":sha256WithRSAEncryption",
            ":Extension Request",
            ":X509v3 Extended Key Usage",
            ":X509v3 Subject Alternative Name",
        ],
    );
    assert!(der_hex.contains(EKU_SERVER_CLIENT), "{der_hex}");

    // The core, directly: each tenant sees its own profiles only (I-4).
    plant_tenant(&fleet).await;
    let own = describe(&fleet, "plant-7", "iot-p384")
        .await
        .expect("own profile");
    assert_eq!(own.key_algorithms, vec!["ecdsa-p384"]);
    assert_eq!(own.san_types, vec!["dns"]);
    assert_eq!(own.ekus, vec!["1.3.6.1.5.5.7.3.2"]);
    assert_eq!(own.version, 1);
    let default_of_plant = describe(&fleet, "plant-7", "").await.expect("default");
    assert_eq!(
        (default_of_plant.profile.as_str(), default_of_plant.version),
        ("tls-server", 2)
    );
    let builtin = describe(&fleet, "default", "").await.expect("default");
    assert_eq!(builtin.key_algorithms.len(), 4, "{builtin:?}");
    for (tenant, profile) in [
        ("default", "iot-p384"),
        ("no-such-tenant", ""),
        ("plant-7", "no-such"),
    ] {
        let e = describe(&fleet, tenant, profile)
            .await
            .expect_err("not visible");
        assert_eq!(e.kind, ErrorKind::NotFound, "{tenant}/{profile}: {e:?}");
        assert_eq!(e.rule, "profile.unknown");
    }

    // CMP genm certReqTemplate with OpenSSL's client (MAC-protected by the dev secret of
    // tenant `default`): the genp verifies and carries the built-in profile as a template.
    let (text, log) = cmp_template(&fleet, "/.well-known/cmp", "cmp-default");
    assert!(log.contains("id-it-certReqTemplate"), "{log}");
    has_all(
        &text,
        &[
            "cont [ 5 ]",
            ":commonName",
            "cont [ 9 ]",
            ":X509v3 Subject Alternative Name",
            "[HEX DUMP]:300482008700",
            ":X509v3 Extended Key Usage",
            ":1.3.6.1.5.5.7.5.1.11",
            ":prime256v1",
            ":secp384r1",
            ":ED25519",
            ":1.3.6.1.5.5.7.5.1.12",
            "INTEGER           :0800",
        ],
    );
    assert!(
        text.to_ascii_lowercase().contains(EKU_SERVER_CLIENT),
        "{text}"
    );

    // A profile path naming no profile of the tenant: the ITAV without a value (RFC 9483
    // §4.3.3 "absent"), nothing else after the infoType.
    let (text, _) = cmp_template(&fleet, "/.well-known/cmp/p/no-such", "cmp-none");
    has_none(&text, &[":commonName", ":1.3.6.1.5.5.7.5.1.11"]);
}

/// EST labels of another tenant: its profile gives another csrattrs answer; a label whose
/// tenant the core does not know answers 404. (`certgate up` rewrites edge.toml when given
/// ports, so this fleet runs the three processes directly with edge.toml edited.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_label_gets_its_own_profile_as_csrattrs() {
    let mut fleet = Fleet::init();
    let mut edge = std::fs::read_to_string(fleet.edge_config()).expect("edge.toml");
    assert!(edge.contains("[est]"), "{edge}");
    edge.push_str(
        "\n[est.labels.plant]\ntenant = \"plant-7\"\nprofile = \"iot-p384\"\n\
         \n[est.labels.ghost]\ntenant = \"no-such-tenant\"\n",
    );
    std::fs::write(fleet.edge_config(), edge).expect("write edge.toml");
    fleet.start_all();
    plant_tenant(&fleet).await;

    let (text, der_hex) = csrattrs(&fleet, "/.well-known/est/plant/csrattrs", "plant");
    has_all(
        &text,
        &[
            ":id-ecPublicKey",
            ":secp384r1",
            ":ecdsa-with-SHA384",
            ":Extension Request",
            ":X509v3 Subject Alternative Name",
        ],
    );
    has_none(
        &text,
        &[
            ":prime256v1",
            ":ED25519",
            ":rsaEncryption",
            "WithRSAEncryption",
        ],
    );
    assert!(der_hex.contains(EKU_CLIENT), "{der_hex}");
    assert!(!der_hex.contains(EKU_SERVER_CLIENT), "{der_hex}");

    // The default label still answers the built-in profile of tenant `default`.
    let (text, der_hex) = csrattrs(&fleet, "/.well-known/est/csrattrs", "default");
    has_all(&text, &[":prime256v1", ":rsaEncryption"]);
    assert!(der_hex.contains(EKU_SERVER_CLIENT), "{der_hex}");

    // No tenant, no profile: 404 (RFC 7030 §4.5.2 allows 204 or 404).
    let (code, body) = get(&fleet, "/.well-known/est/ghost/csrattrs", "ghost");
    assert_eq!(code, 404);
    assert!(
        String::from_utf8_lossy(&body).contains("no certificate profile"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}
