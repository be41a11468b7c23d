//! TLS to the fleet's stores against real servers (docs/postgres.md, docs/operations.md "TLS to
//! the stores"): a PostgreSQL with `ssl=on` and `hostssl`-only rules, and a `redis-server` with
//! a TLS port only, both with certificates made here with rcgen. The core's store works over
//! verify-full TLS (server name and CA checked, client certificate presented); every way the
//! check can fail — another CA, another name, no client certificate, plain TCP either way —
//! refuses the connection (fail closed). The edge redeems ACME nonces over `rediss://`, and a
//! wrong CA makes redemption fail exactly as an unreachable Redis does (NonceStoreUnavailable,
//! which the ACME edge answers with badNonce 503).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certgate_acme::nonce::{NonceStore, NonceVerifier};
use certgate_core::store::status::StatusStore;
use certgate_core::store::{PgConfig, PgStore, PgTlsConfig, Store, TenantRec};
use certgate_e2e::pg::PgServer;
use certgate_e2e::tls_stores::{Pki, RedisTlsServer, enable_pg_tls, pg_sessions_ssl, pki};
use certgate_edge::shared::redis_nonce::RedisNonceStore;
use certgate_edge::shared::{RedisConfig, RedisPool};
use zeroize::Zeroizing;

fn tls(ca: &Path, client: Option<&Pki>) -> PgTlsConfig {
    let mut toml_text = format!("ca_file = {:?}\n", ca.display().to_string());
    if let Some(c) = client {
        toml_text.push_str(&format!(
            "client_cert_file = {:?}\nclient_key_file = {:?}\n",
            c.client_cert_file.display().to_string(),
            c.client_key_file.display().to_string()
        ));
    }
    toml::from_str(&toml_text).expect("[store.tls] parses")
}

fn store_config(pg: &PgServer, url: &str, name: &str, tls: Option<PgTlsConfig>) -> PgConfig {
    let mut c: PgConfig = toml::from_str(&format!(
        "url = {url:?}\npassword_file = {:?}\nmigrate_url = {:?}\nmigrate_password_file = {:?}\n\
         pool_size = 4\ntimeout_ms = 10000\napplication_name = {name:?}\n",
        pg.password_file.display().to_string(),
        pg.owner_url.replace(
            "postgres://certgate_owner@127.0.0.1",
            "postgres://certgate_owner@localhost"
        ) + "?hostaddr=127.0.0.1",
        pg.owner_password_file.display().to_string(),
    ))
    .expect("[store] parses");
    c.tls = tls;
    c
}

fn refused(r: certgate_core::error::Result<PgStore>, what: &str) -> String {
    match r {
        Ok(_) => panic!("{what}: the store connected, it must be refused"),
        Err(e) => {
            eprintln!("{what}: {e}");
            e.to_string()
        }
    }
}

#[test]
fn pg_store_over_verify_full_tls_refuses_every_unverified_connection() {
    let dir = certgate_e2e::temp_dir();
    let good = pki(
        dir.path(),
        "good",
        &["127.0.0.1", "localhost"],
        "certgate_app",
    );
    let other = pki(
        dir.path(),
        "other",
        &["127.0.0.1", "localhost"],
        "certgate_app",
    );
    let pg = PgServer::start();
    // TCP only with TLS; the app role needs a password AND a client certificate naming it.
    enable_pg_tls(
        &pg,
        &good.server_cert,
        &good.server_key,
        &good.ca_pem,
        "hostssl certgate certgate_owner 127.0.0.1/32 scram-sha-256\n\
         hostssl certgate certgate_app 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n",
    );
    let port = pg.port;
    let by_ip = format!("postgres://certgate_app@127.0.0.1:{port}/certgate");
    // By DNS name, and with channel binding required: SCRAM-SHA-256-PLUS succeeds only if the
    // server computes the same tls-server-end-point hash as the core's stream offers.
    let by_name = format!(
        "postgres://certgate_app@localhost:{port}/certgate?hostaddr=127.0.0.1&channel_binding=require"
    );

    // Works: IP-address SAN (with migrations through the owner role over TLS), then a DNS name.
    let store = PgStore::connect(&store_config(
        &pg,
        &by_ip,
        "tls-core-a",
        Some(tls(&good.ca_file, Some(&good))),
    ))
    .unwrap_or_else(|e| panic!("verify-full TLS store: {e}\n{}", pg.log()));
    let t = TenantRec {
        name: "tls-tenant".into(),
        public_base_url: "https://pki.example".into(),
        default_profile: "server".into(),
        active_issuer_id: String::new(),
    };
    let audit = certgate_core::audit::AuditEntry::new(
        "tenant.put",
        "tls-tenant",
        "uid:1",
        serde_json::json!({"test": "tls"}),
    );
    store.put_tenant(&t, &audit).expect("write over TLS");
    assert_eq!(
        store.get_tenant("tls-tenant").expect("read over TLS"),
        Some(t.clone())
    );
    // The CRL lease is its own session: it must use TLS too (hostssl-only would refuse it).
    assert_eq!(
        store
            .next_crl_number("issuer-tls", "full")
            .expect("CRL lease over TLS"),
        1
    );
    let sessions = pg_sessions_ssl(&pg, "tls-core-a");
    assert!(
        sessions.len() >= 2 && sessions.iter().all(|s| *s),
        "every session of the core is encrypted (server's view): {sessions:?}"
    );
    let b = PgStore::connect(&store_config(
        &pg,
        &by_name,
        "tls-core-b",
        Some(tls(&good.ca_file, Some(&good))),
    ))
    .unwrap_or_else(|e| panic!("verify-full by DNS name: {e}"));
    assert_eq!(b.get_tenant("tls-tenant").expect("read"), Some(t));
    drop(b);

    // Another CA: refused before any password is sent.
    let e = refused(
        PgStore::connect(&store_config(
            &pg,
            &by_ip,
            "tls-wrong-ca",
            Some(tls(&other.ca_file, Some(&other))),
        )),
        "server certificate from another CA",
    );
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
    // Another name: the certificate is for 127.0.0.1 and localhost only.
    let wrong_name =
        format!("postgres://certgate_app@db.elsewhere.example:{port}/certgate?hostaddr=127.0.0.1");
    let e = refused(
        PgStore::connect(&store_config(
            &pg,
            &wrong_name,
            "tls-wrong-name",
            Some(tls(&good.ca_file, Some(&good))),
        )),
        "server certificate for another name",
    );
    assert!(
        e.contains("not valid for name \"db.elsewhere.example\""),
        "{e}"
    );
    // No client certificate: pg_hba's clientcert=verify-full refuses the role.
    let e = refused(
        PgStore::connect(&store_config(
            &pg,
            &by_ip,
            "tls-no-client-cert",
            Some(tls(&good.ca_file, None)),
        )),
        "no client certificate",
    );
    assert!(e.contains("requires a valid client certificate"), "{e}");
    // Plain TCP (no [store.tls]): no hostssl-less rule admits it.
    let e = refused(
        PgStore::connect(&store_config(&pg, &by_ip, "tls-plain", None)),
        "plain TCP",
    );
    assert!(e.contains("no encryption"), "{e}");
    // The working store is unaffected by all of that.
    assert!(
        store
            .get_tenant("tls-tenant")
            .expect("still reads")
            .is_some()
    );
}

#[test]
fn pg_store_with_tls_refuses_a_server_without_tls() {
    let dir = certgate_e2e::temp_dir();
    let good = pki(dir.path(), "good", &["127.0.0.1"], "certgate_app");
    let pg = PgServer::start();
    let by_ip = format!("postgres://certgate_app@127.0.0.1:{}/certgate", pg.port);
    // Even if the URL says sslmode=disable: [store.tls] forces TLS.
    let e = refused(
        PgStore::connect(&store_config(
            &pg,
            &format!("{by_ip}?sslmode=disable"),
            "tls-vs-plain",
            Some(tls(&good.ca_file, None)),
        )),
        "TLS required, server plain",
    );
    assert!(e.contains("does not support TLS"), "{e}");
    // A URL asking for TLS without [store.tls] is a configuration error, not a plain session.
    let c = store_config(&pg, &format!("{by_ip}?sslmode=require"), "x", None);
    assert!(c.check().is_err());
    // The plain server itself is fine for a plain store (the harness default).
    PgStore::connect(&store_config(&pg, &by_ip, "plain-ok", None)).expect("plain store");
}

fn redis_cfg(url: &str, ca: Option<&Path>, client: Option<&Pki>) -> RedisConfig {
    let mut text = format!("url = {url:?}\nop_timeout_ms = 3000\nreconnect_ms = 100\n");
    if let Some(ca) = ca {
        text.push_str(&format!("tls_ca_file = {:?}\n", ca.display().to_string()));
    }
    if let Some(c) = client {
        text.push_str(&format!(
            "tls_client_cert_file = {:?}\ntls_client_key_file = {:?}\n",
            c.client_cert_file.display().to_string(),
            c.client_key_file.display().to_string()
        ));
    }
    toml::from_str(&text).expect("[redis] parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_nonces_over_rediss_and_a_wrong_ca_fails_closed() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = certgate_e2e::temp_dir();
    let good = pki(dir.path(), "good", &["127.0.0.1"], "edge-1");
    let other = pki(dir.path(), "other", &["127.0.0.1"], "edge-1");
    // Client certificates required (tls-auth-clients yes), verified against the good CA.
    let redis = RedisTlsServer::start(&good.server_cert, &good.server_key, &good.ca_pem, true);
    let key = Zeroizing::new(vec![9u8; 32]);
    let v = NonceVerifier::new(1, &key, Duration::from_secs(300)).expect("verifier");

    let pool = RedisPool::new(&redis_cfg(&redis.url(), Some(&good.ca_file), Some(&good)))
        .expect("rediss pool");
    let store: Arc<dyn NonceStore> = Arc::new(RedisNonceStore::new(pool, 60));
    let n = v.mint(SystemTime::now(), [1; 16]);
    v.redeem(&n, SystemTime::now(), store.as_ref())
        .await
        .unwrap_or_else(|e| panic!("redeem over rediss: {e:?}\n{}", redis.log()));
    assert_eq!(
        v.redeem(&n, SystemTime::now(), store.as_ref()).await,
        Err(certgate_acme::Error::BadNonce("nonce already used")),
        "redeemed exactly once over TLS"
    );
    // The record is really in this Redis (read back with redis-cli over TLS).
    let (ok, keys) = redis.cli(
        Some((&good.client_cert_file, &good.client_key_file)),
        &["--scan", "--pattern", "certgate:nonce:*"],
    );
    assert!(ok && keys.lines().count() == 1, "{keys}");

    // Each way the TLS check can fail refuses the nonce as an unreachable Redis would.
    let failing = [
        (
            "another CA",
            redis_cfg(&redis.url(), Some(&other.ca_file), Some(&good)),
        ),
        (
            "no client certificate",
            redis_cfg(&redis.url(), Some(&good.ca_file), None),
        ),
        (
            "a client certificate of another CA",
            redis_cfg(&redis.url(), Some(&good.ca_file), Some(&other)),
        ),
        (
            "plain TCP to the TLS port",
            redis_cfg(&format!("redis://127.0.0.1:{}/0", redis.port()), None, None),
        ),
    ];
    for (what, cfg) in failing {
        let pool = RedisPool::new(&cfg).expect("pool (connects lazily)");
        let store = RedisNonceStore::new(pool, 60);
        let n = v.mint(SystemTime::now(), [2; 16]);
        assert_eq!(
            v.redeem(&n, SystemTime::now(), &store).await,
            Err(certgate_acme::Error::NonceStoreUnavailable),
            "{what}: fail closed"
        );
    }
    // Nothing was recorded by the refused attempts.
    let (_, keys) = redis.cli(
        Some((&good.client_cert_file, &good.client_key_file)),
        &["--scan", "--pattern", "certgate:nonce:*"],
    );
    assert_eq!(keys.lines().count(), 1, "{keys}");

    // Configurations that would not verify are refused before any connection.
    for (url, ca) in [
        (redis.url(), None),
        (
            format!("{}#insecure", redis.url()),
            Some(good.ca_file.as_path()),
        ),
        (
            format!("redis://127.0.0.1:{}/0", redis.port()),
            Some(good.ca_file.as_path()),
        ),
    ] {
        assert!(
            RedisPool::new(&redis_cfg(&url, ca, None)).is_err(),
            "{url} with ca {ca:?} must be refused"
        );
    }
}

/// The real `certgate-core` process: `[store.tls]` from core.toml (relative paths), ready over
/// TLS; the same core trusting another CA exits at start with the certificate error (fail
/// closed: a core that cannot verify its database serves nothing).
#[test]
fn core_process_starts_over_tls_and_refuses_to_start_with_a_foreign_ca() {
    use certgate_e2e::{ChildGuard, bin, run, wait_for_log, wait_for_path};
    use std::process::Command;

    let tmp = certgate_e2e::temp_dir();
    let dir = tmp.path();
    let good = pki(dir, "good", &["127.0.0.1"], "certgate_app");
    let other = pki(dir, "other", &["127.0.0.1"], "certgate_app");
    let pg = PgServer::start();
    enable_pg_tls(
        &pg,
        &good.server_cert,
        &good.server_key,
        &good.ca_pem,
        "hostssl certgate all 127.0.0.1/32 scram-sha-256\n",
    );
    let uid = certgate_proto::transport::current_uid();
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
    .expect("signer.toml");
    let (ok, _, err) = run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out", "c0.pem"])
        .current_dir(dir));
    assert!(ok, "{err}");
    let (ok, _, err) = run(Command::new("openssl")
        .args(["pkey", "-in", "c0.pem", "-pubout", "-out", "c0.pub.pem"])
        .current_dir(dir));
    assert!(ok, "{err}");
    let mut cmd = Command::new(bin("certgate-signer"));
    cmd.arg("--config").arg(dir.join("signer.toml"));
    let signer = ChildGuard::spawn("certgate-signer", cmd, &dir.join("signer.log"));
    wait_for_log(&signer, "certgate-signer ready", Duration::from_secs(30));
    assert!(wait_for_path(
        &dir.join("signer.sock"),
        Duration::from_secs(20)
    ));

    let core_toml = |name: &str, ca: &str| {
        let store = pg.store_toml(true, name);
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "mode = \"dev\"\nsocket = \"{name}.sock\"\nallow = [\"uid:{uid}\"]\nadmin_allow = [\"uid:{uid}\"]\nquorum = 1\n\n[signer]\nsocket = \"signer.sock\"\n\n[[custodians]]\nname = \"c0\"\npublic_key = \"c0.pub.pem\"\n\n{store}\n[store.tls]\nca_file = \"{ca}\"\n"
            ),
        )
        .expect("core toml");
        path
    };
    // Relative to the config file's directory.
    let ca_name = |p: &Pki| {
        p.ca_file
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned()
    };
    let mut cmd = Command::new(bin("certgate-core"));
    cmd.arg("--config")
        .arg(core_toml("core-tls", &ca_name(&good)));
    let core = ChildGuard::spawn("certgate-core", cmd, &dir.join("core-tls.log"));
    wait_for_log(&core, "certgate-core ready", Duration::from_secs(60));
    let sessions = pg_sessions_ssl(&pg, "core-tls");
    assert!(
        !sessions.is_empty() && sessions.iter().all(|s| *s),
        "the core's sessions are encrypted: {sessions:?}"
    );

    let mut cmd = Command::new(bin("certgate-core"));
    cmd.arg("--config")
        .arg(core_toml("core-foreign", &ca_name(&other)));
    let mut bad = ChildGuard::spawn("certgate-core", cmd, &dir.join("core-foreign.log"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(s) = bad.try_wait() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a core trusting another CA must exit:\n{}",
            bad.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!exit.success(), "exit status {exit}");
    let log = bad.log();
    assert!(
        log.contains("invalid peer certificate: UnknownIssuer"),
        "{log}"
    );
    assert!(!log.contains("certgate-core ready"), "{log}");
    assert!(!dir.join("core-foreign.sock").exists());
}
