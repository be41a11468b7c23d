//! The PostgreSQL store against a real `postgres` (Debian's package, started by
//! `certgate_e2e::pg::PgServer`): the invariants the database itself enforces when several cores
//! share it (docs/postgres.md). Each "core" here is its own `PgStore` with its own pool,
//! connections and `application_name`, exactly what a core process builds from its config.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use certgate_core::audit::{AuditEntry, verify_chain};
use certgate_core::error::CoreError;
use certgate_core::store::status::{CrlRec, OcspRec, StatusItem, StatusStore};
use certgate_core::store::{
    CertRec, IntentOutcome, IntentRec, PgConfig, PgStore, RevokeOp, Store, TenantRec,
};
use certgate_e2e::pg::PgServer;

fn config(pg: &PgServer, name: &str, migrate: bool) -> PgConfig {
    PgConfig {
        url: pg.url.clone(),
        password_file: Some(pg.password_file.clone()),
        password_env: None,
        migrate_url: migrate.then(|| pg.owner_url.clone()),
        migrate_password_file: migrate.then(|| pg.owner_password_file.clone()),
        migrate_password_env: None,
        pool_size: 8,
        timeout_ms: 5000,
        crl_lease_secs: 60,
        application_name: name.into(),
        tls: None,
    }
}

/// Two cores on one database, both applying migrations at once (the advisory lock serialises
/// them; the second finds the schema current).
fn two_cores(pg: &PgServer) -> (Arc<PgStore>, Arc<PgStore>) {
    let (ca, cb) = (config(pg, "coreA", true), config(pg, "coreB", true));
    let a = std::thread::spawn(move || PgStore::connect(&ca));
    let b = std::thread::spawn(move || PgStore::connect(&cb));
    let a = a.join().expect("thread").expect("core A connects");
    let b = b.join().expect("thread").expect("core B connects");
    (Arc::new(a), Arc::new(b))
}

fn audit(kind: &str, tenant: &str) -> AuditEntry {
    AuditEntry::new(kind, tenant, "uid:1", serde_json::json!({"test": kind}))
}

fn intent(tenant: &str, key: &str, serial: &str) -> IntentRec {
    IntentRec {
        tenant: tenant.into(),
        idem_key: key.into(),
        request_hash: vec![1; 32],
        serial_hex: serial.into(),
        tbs_der: serial.as_bytes().to_vec(),
        issuer_id: "issuer-1".into(),
        profile: "server".into(),
        profile_version: 1,
        created_unix: 1,
    }
}

fn cert(tenant: &str, key: &str, serial: &str) -> CertRec {
    CertRec {
        tenant: tenant.into(),
        serial_hex: serial.into(),
        cert_der: format!("der-{serial}").into_bytes(),
        issuer_id: "issuer-1".into(),
        profile: "server".into(),
        profile_version: 1,
        not_before_unix: 0,
        not_after_unix: i64::MAX / 2,
        idem_key: key.into(),
        revoked: false,
        revoked_at_unix: 0,
        revocation_reason: 0,
    }
}

fn last_line(out: &str) -> String {
    out.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Two cores receiving the same idempotency key at the same moment mint one certificate: the
/// intents' and certificates' unique keys decide, not any in-process lock.
#[test]
fn idempotency_holds_across_two_cores_racing_the_same_key() {
    let pg = PgServer::start();
    let (a, b) = two_cores(&pg);
    for round in 0..5 {
        let key = format!("key-{round}");
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                let (barrier, key) = (barrier.clone(), key.clone());
                std::thread::spawn(move || {
                    // Each caller would sign its own serial; only the recorded intent's counts.
                    let mine = format!("{round:02x}{i:02x}");
                    barrier.wait();
                    let serial = match store
                        .insert_intent(&intent("t1", &key, &mine), &audit("intent", "t1"))
                        .expect("insert_intent")
                    {
                        IntentOutcome::Inserted => mine,
                        IntentOutcome::Exists(existing) => existing.serial_hex,
                    };
                    store
                        .complete_issue(&cert("t1", &key, &serial), &audit("issue", "t1"))
                        .expect("complete_issue")
                })
            })
            .collect();
        let results: Vec<CertRec> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        assert!(
            results.iter().all(|c| *c == results[0]),
            "callers got different certificates for one key: {results:?}"
        );
        let count = pg.psql_admin(&format!(
            "SELECT count(*) FROM certificates WHERE tenant = 't1' AND idem_key = '{key}'"
        ));
        assert_eq!(count.trim(), "1", "one certificate row per key");
        let intents = pg.psql_admin(&format!(
            "SELECT count(*) FROM intents WHERE tenant = 't1' AND idem_key = '{key}'"
        ));
        assert_eq!(intents.trim(), "1", "one intent row per key");
        // Both cores now answer the retry with that certificate.
        for s in [&a, &b] {
            assert_eq!(
                s.cert_by_key("t1", &key).expect("lookup"),
                Some(results[0].clone())
            );
        }
    }
    // Racing complete_issue itself with different certificates under one key: the first stored
    // is the certificate for everyone.
    let barrier = Arc::new(Barrier::new(6));
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                store
                    .complete_issue(
                        &cert("t1", "direct", &format!("ff{i:02x}")),
                        &audit("issue", "t1"),
                    )
                    .expect("complete_issue")
            })
        })
        .collect();
    let got: Vec<CertRec> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    assert!(got.iter().all(|c| *c == got[0]), "{got:?}");
}

/// Serial numbers are unique per tenant and per issuer, enforced by constraints.
#[test]
fn serial_numbers_are_unique_per_issuer_by_constraint() {
    let pg = PgServer::start();
    let (a, b) = two_cores(&pg);
    a.complete_issue(&cert("t1", "k1", "0abc"), &audit("issue", "t1"))
        .expect("first");
    let dup_same_tenant = b.complete_issue(&cert("t1", "k2", "0abc"), &audit("issue", "t1"));
    assert!(
        matches!(dup_same_tenant, Err(CoreError::Store(ref m)) if m.contains("23505")),
        "a second certificate with the serial must be refused: {dup_same_tenant:?}"
    );
    let dup_other_tenant = b.complete_issue(&cert("t2", "k1", "0abc"), &audit("issue", "t2"));
    assert!(
        matches!(dup_other_tenant, Err(CoreError::Store(ref m)) if m.contains("23505")),
        "the same issuer cannot reuse a serial in another tenant: {dup_other_tenant:?}"
    );
    a.insert_intent(&intent("t1", "i1", "0def"), &audit("intent", "t1"))
        .expect("intent");
    let dup_intent = b.insert_intent(&intent("t1", "i2", "0def"), &audit("intent", "t1"));
    assert!(dup_intent.is_err(), "{dup_intent:?}");
    // Nothing half-written: the refused calls rolled back their audit records too.
    let records = a.audit_records().expect("records");
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(verify_chain(&records, None).error, None);
    // Nor can the app role insert a duplicate serial behind the store's back.
    let (ok, _, err) = pg.psql_as_app(
        "BEGIN; SELECT set_config('certgate.tenant', 't1', true);
         INSERT INTO certificates (tenant, serial_hex, cert_der, issuer_id, profile,
           profile_version, not_before_unix, not_after_unix, idem_key)
         VALUES ('t1', '0abc', '\\x00', 'issuer-1', 'p', 1, 0, 1, 'k9'); COMMIT;",
    );
    assert!(
        !ok && err.contains("duplicate key"),
        "raw duplicate accepted: {err}"
    );
}

/// Row-level security: the app role sees nothing without a tenant, only its tenant's rows with
/// one, and cannot write another tenant's rows.
#[test]
fn row_level_security_isolates_tenants_and_fails_closed_when_unset() {
    let pg = PgServer::start();
    let (a, _b) = two_cores(&pg);
    for t in ["t1", "t2"] {
        a.put_tenant(
            &TenantRec {
                name: t.into(),
                public_base_url: "https://x".into(),
                default_profile: "server".into(),
                active_issuer_id: String::new(),
            },
            &audit("tenant", t),
        )
        .expect("tenant");
    }
    a.complete_issue(&cert("t1", "k", "01"), &audit("issue", "t1"))
        .expect("t1 cert");
    a.complete_issue(&cert("t2", "k", "02"), &audit("issue", "t2"))
        .expect("t2 cert");
    // The rows are there (superuser bypasses RLS).
    assert_eq!(
        pg.psql_admin("SELECT count(*) FROM certificates").trim(),
        "2"
    );
    // The app role with no tenant set: nothing, in every tenant table.
    for table in [
        "certificates",
        "tenants",
        "intents",
        "status_pending",
        "idempotency",
        "audit",
    ] {
        let (ok, out, err) = pg.psql_as_app(&format!("SELECT count(*) FROM {table}"));
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "0", "{table} visible without a tenant");
    }
    // After a transaction-local setting ended, the session shows '' — still nothing.
    let (ok, out, err) = pg.psql_as_app(
        "BEGIN; SELECT set_config('certgate.tenant', 't1', true); COMMIT;
         SELECT count(*) FROM certificates;",
    );
    assert!(ok, "{err}");
    assert_eq!(last_line(&out), "0", "a finished scope must not linger");
    // Scoped to t1: t1's rows only.
    let (ok, out, err) = pg.psql_as_app(
        "BEGIN; SELECT set_config('certgate.tenant', 't1', true);
         SELECT string_agg(serial_hex, ',') FROM certificates; COMMIT;",
    );
    assert!(ok, "{err}");
    assert!(out.contains("01") && !out.contains("02"), "{out}");
    // Scoped to t1, writing a t2 row (or moving a row to t2) is refused.
    let (ok, _, err) = pg.psql_as_app(
        "BEGIN; SELECT set_config('certgate.tenant', 't1', true);
         INSERT INTO certificates (tenant, serial_hex, cert_der, issuer_id, profile,
           profile_version, not_before_unix, not_after_unix, idem_key)
         VALUES ('t2', '03', '\\x00', 'issuer-1', 'p', 1, 0, 1, 'k3'); COMMIT;",
    );
    assert!(!ok && err.contains("row-level security"), "{err}");
    let (_, out, _) = pg.psql_as_app(
        "BEGIN; SELECT set_config('certgate.tenant', 't1', true);
         UPDATE certificates SET revoked = true WHERE tenant = 't2'; COMMIT;",
    );
    assert!(!out.contains("UPDATE 1"), "{out}");
    assert_eq!(
        pg.psql_admin("SELECT count(*) FROM certificates WHERE revoked")
            .trim(),
        "0",
        "t1's scope revoked a t2 certificate"
    );
    // The app role may not rewrite history.
    let (ok, _, err) = pg.psql_as_app("DELETE FROM audit");
    assert!(!ok && err.contains("permission denied"), "{err}");
    // Through the store: tenant t1 never sees t2's certificate.
    assert_eq!(a.get_cert("t1", "02").expect("get"), None);
    assert_eq!(
        a.get_tenant("t1").expect("get").map(|t| t.name),
        Some("t1".into())
    );
    assert_eq!(a.list_tenants().expect("list").len(), 2);
    // A tenant literally named '*' gets no wildcard: it sees nothing.
    assert_eq!(a.get_cert("*", "01").expect("get"), None);
    // The store refuses to run as a role that bypasses RLS.
    pg.psql_admin("ALTER ROLE certgate_app BYPASSRLS");
    let refused = PgStore::connect(&config(&pg, "coreC", false));
    assert!(
        matches!(refused, Err(CoreError::Store(ref m)) if m.contains("BYPASSRLS")),
        "a BYPASSRLS role must be refused"
    );
}

fn crl(number: u64) -> CrlRec {
    CrlRec {
        tenant: "t1".into(),
        issuer_id: "issuer-1".into(),
        shard: "full".into(),
        crl_der: vec![number as u8],
        crl_number: number,
        this_update_unix: 1,
        next_update_unix: 2,
        cursor: 0,
    }
}

/// One CRL generator per shard at a time across cores; when the holder's session dies, another
/// core takes over and the numbers keep increasing; the old holder cannot store under a lock it
/// lost; the database refuses any number going backwards.
#[test]
fn crl_numbers_stay_monotonic_when_the_generator_is_killed() {
    let pg = PgServer::start();
    let (a, b) = two_cores(&pg);
    assert_eq!(a.next_crl_number("issuer-1", "full").expect("a"), 1);
    a.put_crl(&crl(1)).expect("a stores 1");
    assert_eq!(b.next_crl_number("issuer-1", "full").expect("b"), 2);
    b.put_crl(&crl(2)).expect("b stores 2");
    // A takes the shard and holds it (generating).
    assert_eq!(a.next_crl_number("issuer-1", "full").expect("a"), 3);
    let lease_pid = a
        .crl_lease_pid()
        .expect("pid")
        .expect("A holds a lease session");
    // B must wait for it.
    let b2 = b.clone();
    let waiter = std::thread::spawn(move || b2.next_crl_number("issuer-1", "full"));
    std::thread::sleep(Duration::from_millis(700));
    assert!(!waiter.is_finished(), "B generated while A held the shard");
    // Kill A's session (as if A's host vanished): PostgreSQL drops its lock.
    assert_eq!(pg.terminate_backends("coreA-crl-lease"), 1);
    let n = waiter.join().expect("thread").expect("B takes over");
    assert_eq!(n, 4, "numbers continue from the stored counter");
    // A's CRL 3 is not stored: its lock is gone.
    let late = a.put_crl(&crl(3));
    assert!(late.is_err(), "a stale generator stored its CRL: {late:?}");
    b.put_crl(&crl(4)).expect("b stores 4");
    assert_eq!(
        a.get_crl("issuer-1", "full")
            .expect("get")
            .map(|c| c.crl_number),
        Some(4)
    );
    // A comes back with a new session and numbers after B.
    assert_eq!(a.next_crl_number("issuer-1", "full").expect("a again"), 5);
    assert_ne!(a.crl_lease_pid().expect("pid"), Some(lease_pid));
    a.put_crl(&crl(5)).expect("a stores 5");
    // Another shard is independent.
    assert_eq!(b.next_crl_number("issuer-1", "3").expect("shard 3"), 1);
    // The database refuses a backwards move even from the superuser.
    let out = std::process::Command::new(certgate_e2e::pg::bin_dir().expect("bin").join("psql"))
        .arg("-h")
        .arg(&pg.socket_dir)
        .args([
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "certgate",
        ])
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "UPDATE crls SET crl_number = 2 WHERE shard = 'full'",
        ])
        .output()
        .expect("psql");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("would go from"),
        "{err}"
    );
    let out = std::process::Command::new(certgate_e2e::pg::bin_dir().expect("bin").join("psql"))
        .arg("-h")
        .arg(&pg.socket_dir)
        .args([
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "certgate",
        ])
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "UPDATE crl_numbers SET last_number = 1",
        ])
        .output()
        .expect("psql");
    assert!(!out.status.success(), "CRL counter moved backwards");
}

/// The audit chain stays one verifiable chain when two cores append concurrently, each append
/// in the same transaction as its change.
#[test]
fn audit_chain_verifies_with_two_cores_writing_concurrently() {
    let pg = PgServer::start();
    let (a, b) = two_cores(&pg);
    let per_thread = 25;
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            std::thread::spawn(move || {
                for n in 0..per_thread {
                    if n % 2 == 0 {
                        store.append_audit(&audit("note", "t1")).expect("append");
                    } else {
                        store
                            .complete_issue(
                                &cert("t1", &format!("k{i}-{n}"), &format!("{i:02x}{n:04x}")),
                                &audit("issue", "t1"),
                            )
                            .expect("issue");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let records = b.audit_records().expect("records");
    assert_eq!(records.len(), 6 * per_thread);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "gap or duplicate in seq");
    }
    let v = verify_chain(&records, None);
    assert_eq!(v.error, None, "chain broken: {v:?}");
    // One issuance = one audit record: a certificate never exists without its record.
    let issued = pg.psql_admin("SELECT count(*) FROM certificates");
    let audited = pg.psql_admin("SELECT count(*) FROM audit WHERE kind = 'issue'");
    assert_eq!(issued.trim(), audited.trim());
    // The chain is append-only in the database: editing a record is refused.
    let (ok, _, err) = pg.psql_as_app(
        "BEGIN; SELECT set_config('certgate.tenant', '*', true);
         UPDATE audit SET details = '{}' WHERE seq = 2; COMMIT;",
    );
    assert!(!ok && err.contains("only gain a signature"), "{err}");
    // Signing adds a signature once; a second signature is ignored.
    a.set_audit_signatures(&[(1, vec![1, 2, 3])]).expect("sign");
    b.set_audit_signatures(&[(1, vec![9])]).expect("sign again");
    let first = &a.audit_records().expect("records")[0];
    assert_eq!(first.signature.as_deref(), Some(&[1u8, 2, 3][..]));
    assert_eq!(
        a.unsigned_audit(1000).expect("unsigned").len(),
        records.len() - 1
    );
}

/// Revocation, the OCSP work queue filled by triggers, events and snapshot: the status side a
/// core runs on PostgreSQL.
#[test]
fn revocation_and_status_work_on_postgres() {
    let pg = PgServer::start();
    let (a, b) = two_cores(&pg);
    a.complete_issue(&cert("t1", "k", "0a"), &audit("issue", "t1"))
        .expect("issue");
    let pending = b.pending(10).expect("pending");
    assert_eq!(pending.len(), 1, "the issuance queued its OCSP work");
    let op = |reason: u32, key: &str| RevokeOp {
        serial_hex: "0a".into(),
        reason,
        now: 50,
        idem_key: key.into(),
        request_hash: vec![reason as u8],
    };
    assert_eq!(
        b.revoke("t2", &op(1, "r"), &audit("revoke", "t2"))
            .expect("revoke"),
        None,
        "another tenant cannot revoke it"
    );
    let (rec, already) = b
        .revoke("t1", &op(1, "r"), &audit("revoke", "t1"))
        .expect("revoke")
        .expect("found");
    assert!(rec.revoked && !already);
    let (_, already) = a
        .revoke("t1", &op(1, "r"), &audit("revoke", "t1"))
        .expect("replay on the other core")
        .expect("found");
    assert!(already);
    assert!(matches!(
        a.revoke("t1", &op(4, "r"), &audit("revoke", "t1")),
        Err(CoreError::AlreadyExists { .. })
    ));
    assert_eq!(
        b.pending(10).expect("pending").len(),
        2,
        "revocation queued"
    );
    let revoked = a.revoked_of("issuer-1", 0).expect("revoked");
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].reason, 1);
    let ids: Vec<i64> = a.pending(10).expect("p").iter().map(|p| p.id).collect();
    let ocsp = OcspRec {
        tenant: "t1".into(),
        issuer_id: "issuer-1".into(),
        serial_hex: "0a".into(),
        hash_alg: "sha1".into(),
        response_der: vec![7],
        this_update_unix: 1,
        next_update_unix: 2,
        cursor: 0,
    };
    let c1 = a.put_ocsp(std::slice::from_ref(&ocsp), &ids).expect("put");
    assert!(b.pending(10).expect("pending").is_empty());
    let c2 = b
        .put_ocsp(
            &[OcspRec {
                response_der: vec![8],
                ..ocsp.clone()
            }],
            &[],
        )
        .expect("put");
    assert!(c2 > c1);
    assert_eq!(a.latest_cursor().expect("cursor"), c2);
    let page = a.events_after(0, 100).expect("events");
    assert_eq!(page.last_cursor, c2);
    assert_eq!(page.items.len(), 1, "superseded event skipped");
    assert!(matches!(&page.items[0].1, StatusItem::Ocsp(o) if o.response_der == vec![8]));
    assert_eq!(
        a.get_ocsp("t1", "0a", "sha1")
            .expect("get")
            .map(|o| o.response_der),
        Some(vec![8])
    );
    assert_eq!(a.get_ocsp("t2", "0a", "sha1").expect("get"), None);
    assert_eq!(a.prune_events(0).expect("prune"), 2);
    assert_eq!(a.resumable_from().expect("mark"), c2);
    assert_eq!(
        a.latest_cursor().expect("cursor"),
        c2,
        "high-water mark kept"
    );
}

/// The sync store is safe to call from every place the core calls it: a current-thread runtime
/// (no block_in_place possible), block_in_place on a multi-thread runtime, spawn_blocking; and
/// dropping it inside an async context does not panic.
#[test]
fn store_calls_work_from_every_runtime_context() {
    let pg = PgServer::start();
    let (a, _b) = two_cores(&pg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let s = a.clone();
    rt.block_on(async move { s.list_tenants().expect("from current-thread") });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let (s1, s2) = (a.clone(), a.clone());
    rt.block_on(async move {
        tokio::task::block_in_place(|| s1.list_tenants().expect("block_in_place"));
        tokio::task::spawn_blocking(move || s2.list_tenants().expect("spawn_blocking"))
            .await
            .expect("join");
        let own = PgStore::connect(&config(&pg, "coreD", false)).expect("connect in async");
        drop(own);
    });
}

mod processes {
    //! Two real `certgate-core` processes sharing one PostgreSQL database, one real signer.

    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    use certgate_e2e::pg::PgServer;
    use certgate_e2e::{ChildGuard, bin, run, temp_dir, wait_for_path};
    use certgate_proto::acme::NewAccountRequest;
    use certgate_proto::acme::acme_client::AcmeClient;
    use certgate_proto::admin::admin_client::AdminClient;
    use certgate_proto::admin::{
        ApproveCeremonyRequest, CeremonyAction, CreateIntermediate, CreateIssuingCaRequest,
        CreateRoot, ExecuteCeremonyRequest, StartCeremonyRequest, Tenant, ceremony_action,
    };
    use certgate_proto::core::core_client::CoreClient;
    use certgate_proto::core::{
        GetCertificateRequest, GetCrlRequest, IssueRequest, RevokeRequest, issue_request,
        revoke_request,
    };
    use certgate_proto::signer::KeyType;
    use certgate_proto::transport::{current_uid, unix_channel};
    use tonic::transport::Channel;

    fn openssl(args: &[&str], dir: &Path) -> String {
        let (ok, out, err) = run(Command::new("openssl").args(args).current_dir(dir));
        assert!(ok, "openssl {args:?}: {err}");
        out
    }

    fn wait_for_log(log: &Path, needle: &str, count: usize, guard: &mut ChildGuard) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.matches(needle).count() >= count {
                return;
            }
            assert!(guard.is_running(), "{} exited:\n{text}", guard.name());
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} never logged {needle:?}:\n{}", guard.name(), guard.log());
    }

    struct Cores {
        dir: PathBuf,
        _tmp: tempfile::TempDir,
        _signer: ChildGuard,
        cores: [Option<ChildGuard>; 2],
    }

    impl Cores {
        fn start(pg: &PgServer) -> Self {
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
            .expect("signer.toml");
            openssl(
                &["genpkey", "-algorithm", "ed25519", "-out", "c0.pem"],
                &dir,
            );
            openssl(
                &["pkey", "-in", "c0.pem", "-pubout", "-out", "c0.pub.pem"],
                &dir,
            );
            for (i, name) in ["a", "b"].iter().enumerate() {
                // Core A applies the migrations; core B only connects as the app role.
                let store = pg.store_toml(i == 0, &format!("core-{name}"));
                std::fs::write(
                    dir.join(format!("core-{name}.toml")),
                    format!(
                        "mode = \"dev\"\nsocket = \"core-{name}.sock\"\nallow = [\"uid:{uid}\"]\nadmin_allow = [\"uid:{uid}\"]\nquorum = 1\n\n[signer]\nsocket = \"signer.sock\"\n\n[audit]\nsign_interval_ms = 200\n\n[[custodians]]\nname = \"c0\"\npublic_key = \"c0.pub.pem\"\n\n{store}"
                    ),
                )
                .expect("core toml");
            }
            let mut cmd = Command::new(bin("certgate-signer"));
            cmd.arg("--config").arg(dir.join("signer.toml"));
            let mut signer = ChildGuard::spawn("certgate-signer", cmd, &dir.join("signer.log"));
            wait_for_log(
                &dir.join("signer.log"),
                "certgate-signer ready",
                1,
                &mut signer,
            );
            assert!(wait_for_path(
                &dir.join("signer.sock"),
                Duration::from_secs(20)
            ));
            let mut me = Self {
                dir,
                _tmp: tmp,
                _signer: signer,
                cores: [None, None],
            };
            me.start_core(0, None);
            me.start_core(1, None);
            me
        }

        fn name(i: usize) -> &'static str {
            ["a", "b"][i]
        }

        fn start_core(&mut self, i: usize, fault: Option<&str>) {
            let name = Self::name(i);
            let log = self.dir.join(format!("core-{name}.log"));
            let before = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("certgate-core ready")
                .count();
            let mut cmd = Command::new(bin("certgate-core"));
            cmd.arg("--config")
                .arg(self.dir.join(format!("core-{name}.toml")));
            match fault {
                Some(f) => cmd.env("CERTGATE_FAULT", f),
                None => cmd.env_remove("CERTGATE_FAULT"),
            };
            let mut g = ChildGuard::spawn(&format!("certgate-core-{name}"), cmd, &log);
            wait_for_log(&log, "certgate-core ready", before + 1, &mut g);
            self.cores[i] = Some(g);
        }

        fn channel(&self, i: usize) -> Channel {
            unix_channel(self.dir.join(format!("core-{}.sock", Self::name(i))))
        }

        fn core(&self, i: usize) -> CoreClient<Channel> {
            CoreClient::new(self.channel(i))
        }

        fn sign_digest(&self, digest: &[u8]) -> Vec<u8> {
            std::fs::write(self.dir.join("digest.bin"), digest).expect("digest");
            openssl(
                &[
                    "pkeyutl",
                    "-sign",
                    "-rawin",
                    "-inkey",
                    "c0.pem",
                    "-in",
                    "digest.bin",
                    "-out",
                    "sig.bin",
                ],
                &self.dir,
            );
            std::fs::read(self.dir.join("sig.bin")).expect("sig")
        }

        async fn ceremony(&self, core: usize, action: ceremony_action::Action) {
            let mut admin = AdminClient::new(self.channel(core));
            let c = admin
                .start_ceremony(StartCeremonyRequest {
                    action: Some(CeremonyAction {
                        action: Some(action),
                    }),
                })
                .await
                .expect("start ceremony")
                .into_inner();
            // Approved and executed on the other core: the ceremony lives in the shared store.
            let mut other = AdminClient::new(self.channel(1 - core));
            other
                .approve_ceremony(ApproveCeremonyRequest {
                    id: c.id.clone(),
                    custodian: "c0".into(),
                    signature: self.sign_digest(&c.digest),
                })
                .await
                .expect("approve");
            other
                .execute_ceremony(ExecuteCeremonyRequest { id: c.id })
                .await
                .expect("execute");
        }

        async fn bootstrap(&self) {
            self.ceremony(
                0,
                ceremony_action::Action::CreateRoot(CreateRoot {
                    ca_id: "root-1".into(),
                    key_type: KeyType::EcP256 as i32,
                    common_name: "certgate pg root".into(),
                    validity_seconds: 0,
                }),
            )
            .await;
            self.ceremony(
                1,
                ceremony_action::Action::CreateIntermediate(CreateIntermediate {
                    ca_id: "int-1".into(),
                    parent_ca_id: "root-1".into(),
                    key_type: KeyType::EcP256 as i32,
                    common_name: "certgate pg intermediate".into(),
                    validity_seconds: 0,
                    path_len: Some(1),
                }),
            )
            .await;
            let mut admin = AdminClient::new(self.channel(0));
            admin
                .put_tenant(Tenant {
                    name: "default".into(),
                    public_base_url: "http://127.0.0.1:8080".into(),
                    ..Default::default()
                })
                .await
                .expect("tenant");
            admin
                .create_issuing_ca(CreateIssuingCaRequest {
                    tenant: "default".into(),
                    ca_id: "default-issuing".into(),
                    parent_ca_id: "int-1".into(),
                    key_type: KeyType::EcP256 as i32,
                    common_name: "certgate pg issuing".into(),
                    validity_seconds: 0,
                    activate: true,
                })
                .await
                .expect("issuing CA");
        }

        fn csr(&self, name: &str) -> Vec<u8> {
            let subj = format!("/CN={name}");
            let san = format!("subjectAltName=DNS:{name}");
            openssl(
                &[
                    "req",
                    "-new",
                    "-nodes",
                    "-keyout",
                    "k.pem",
                    "-outform",
                    "DER",
                    "-out",
                    "r.der",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-subj",
                    &subj,
                    "-addext",
                    &san,
                ],
                &self.dir,
            );
            std::fs::read(self.dir.join("r.der")).expect("csr")
        }
    }

    /// A fresh P-256 account key as a JWK JSON string.
    fn account_jwk() -> String {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("key");
        let pk = key.public_key().as_ref();
        serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&pk[1..33]), "y": b64(&pk[33..65])})
            .to_string()
    }

    fn issue(key: &str, csr: Vec<u8>) -> IssueRequest {
        IssueRequest {
            tenant: "default".into(),
            request: Some(issue_request::Request::CsrDer(csr)),
            idempotency_key: key.into(),
            protocol: "cli".into(),
            ..Default::default()
        }
    }

    /// Issue on one core, retry on the other, race both, crash one between signing and
    /// replying, revoke on one and read on the other; the audit chain verifies at the end.
    #[tokio::test(flavor = "multi_thread")]
    async fn two_core_processes_share_one_postgres() {
        let pg = PgServer::start();
        let mut f = Cores::start(&pg);
        f.bootstrap().await;

        // ACME state is shared: an account created through core A is the key's account on B.
        let jwk = account_jwk();
        let new_account = |jwk: &str| NewAccountRequest {
            tenant: "default".into(),
            jwk_json: jwk.to_owned(),
            terms_agreed: true,
            new_account_url: "https://127.0.0.1/acme/new-acct".into(),
            ..Default::default()
        };
        let first = AcmeClient::new(f.channel(0))
            .new_account(new_account(&jwk))
            .await
            .expect("newAccount on A")
            .into_inner();
        let again = AcmeClient::new(f.channel(1))
            .new_account(new_account(&jwk))
            .await
            .expect("newAccount on B")
            .into_inner();
        assert!(
            first.created && !again.created,
            "one account per key across cores"
        );
        assert_eq!(
            first.account.map(|a| a.account_id),
            again.account.map(|a| a.account_id)
        );

        // One key, two cores: one certificate.
        let csr = f.csr("pg1.example.com");
        let a = f
            .core(0)
            .issue(issue("pg-1", csr.clone()))
            .await
            .expect("issue on A")
            .into_inner();
        let b = f
            .core(1)
            .issue(issue("pg-1", csr))
            .await
            .expect("retry on B")
            .into_inner();
        assert_eq!(
            a, b,
            "the retry on the other core returns the same certificate"
        );

        // Racing the same key on both cores at once.
        let csr = f.csr("pg2.example.com");
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let mut c = f.core(i % 2);
                let req = issue("pg-2", csr.clone());
                tokio::spawn(async move { c.issue(req).await.map(|r| r.into_inner()) })
            })
            .collect();
        let mut got = Vec::new();
        for c in calls {
            got.push(c.await.expect("join").expect("every duplicate succeeds"));
        }
        assert!(got.iter().all(|r| *r == got[0]), "different certificates");
        assert_eq!(
            pg.psql_admin("SELECT count(*) FROM certificates WHERE idem_key = 'pg-2'")
                .trim(),
            "1"
        );

        // Core A dies between signing and replying; the retry on core B returns that
        // certificate (the intent recorded before signing is shared).
        let csr = f.csr("pg3.example.com");
        if let Some(mut g) = f.cores[0].take() {
            g.kill();
        }
        f.start_core(0, Some("crash_after_sign"));
        let crashed = f.core(0).issue(issue("pg-3", csr.clone())).await;
        assert!(crashed.is_err(), "the fault hook must abort the call");
        let retried = f
            .core(1)
            .issue(issue("pg-3", csr))
            .await
            .expect("retry on B")
            .into_inner();
        let intent_serial = pg.psql_admin("SELECT serial_hex FROM intents WHERE idem_key = 'pg-3'");
        assert_eq!(
            intent_serial.trim(),
            retried.serial_hex,
            "the crashed core's intent was used"
        );
        if let Some(mut g) = f.cores[0].take() {
            g.kill();
        }
        f.start_core(0, None);

        // Revoke on B, see it on A; the CRL one of them generates lists it.
        let r = f
            .core(1)
            .revoke(RevokeRequest {
                tenant: "default".into(),
                target: Some(revoke_request::Target::SerialHex(a.serial_hex.clone())),
                reason: 1,
                idempotency_key: "rv-1".into(),
                ..Default::default()
            })
            .await
            .expect("revoke on B")
            .into_inner();
        assert!(!r.already_revoked);
        let rec = f
            .core(0)
            .get_certificate(GetCertificateRequest {
                tenant: "default".into(),
                serial_hex: a.serial_hex.clone(),
            })
            .await
            .expect("get on A")
            .into_inner();
        assert!(rec.revoked && rec.revocation_reason == 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let crl = f
                .core(0)
                .get_crl(GetCrlRequest {
                    tenant: "default".into(),
                    issuer_id: "default-issuing".into(),
                    shard: "full".into(),
                })
                .await;
            if let Ok(crl) = crl {
                std::fs::write(f.dir.join("crl.der"), &crl.get_ref().crl_der).expect("crl");
                let text = openssl(
                    &["crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text"],
                    &f.dir,
                );
                if text
                    .to_ascii_uppercase()
                    .contains(&a.serial_hex.to_ascii_uppercase())
                {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no CRL listing the revocation; core A:\n{}\ncore B:\n{}",
                std::fs::read_to_string(f.dir.join("core-a.log")).unwrap_or_default(),
                std::fs::read_to_string(f.dir.join("core-b.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // The shared audit chain verifies (both cores appended to it).
        let (ok, out, err) = run(Command::new(bin("certgate-core"))
            .arg("audit-verify")
            .arg("--config")
            .arg(f.dir.join("core-b.toml")));
        assert!(ok && out.starts_with("OK"), "audit-verify: {out}{err}");
        // No store call failed on either core along the way (a PostgreSQL error would be logged
        // as a store failure and answered UNAVAILABLE).
        for name in ["a", "b"] {
            let log =
                std::fs::read_to_string(f.dir.join(format!("core-{name}.log"))).unwrap_or_default();
            assert!(
                !log.contains("store failure") && !log.contains("store: postgres"),
                "core {name} hit a store error:\n{log}"
            );
        }
    }
}

mod acme {
    //! The ACME state store on PostgreSQL: the SQLite store's rules, and its compare-and-set
    //! transitions racing between two cores.

    use std::sync::{Arc, Barrier};

    use certgate_core::error::CoreError;
    use certgate_core::store::Store;
    use certgate_core::store::acme::{
        AccountRec, AcmeStore, AuthzRec, ChallengeRec, ChallengeResult, EabKey, IdentRec,
        NewAccountOutcome, OrderRec, OrderUpdate,
    };
    use certgate_e2e::pg::PgServer;
    use zeroize::Zeroizing;

    use super::{audit, two_cores};

    fn account(tenant: &str, id: &str, tp: &str, eab: &str) -> AccountRec {
        AccountRec {
            tenant: tenant.into(),
            account_id: id.into(),
            status: "valid".into(),
            contacts: vec!["mailto:a@example.org".into()],
            terms_agreed: true,
            jwk_json: "{}".into(),
            jwk_thumbprint: tp.into(),
            eab_key_id: eab.into(),
            created_unix: 1,
        }
    }

    fn authz(tenant: &str, account: &str, id: &str, name: &str) -> AuthzRec {
        AuthzRec {
            tenant: tenant.into(),
            authz_id: id.into(),
            account_id: account.into(),
            identifier: IdentRec {
                kind: "dns".into(),
                value: name.into(),
            },
            wildcard: false,
            status: "pending".into(),
            expires_unix: 1_000,
            challenges: ["http-01", "dns-01", "tls-alpn-01"]
                .iter()
                .map(|k| ChallengeRec {
                    challenge_id: format!("{id}-{k}"),
                    kind: (*k).into(),
                    status: "pending".into(),
                    token: format!("tok-{id}-{k}"),
                    validated_unix: 0,
                    error: Vec::new(),
                })
                .collect(),
            created_unix: 1,
        }
    }

    fn order(tenant: &str, account: &str, id: &str, authzs: &[&str]) -> OrderRec {
        OrderRec {
            tenant: tenant.into(),
            order_id: id.into(),
            account_id: account.into(),
            status: "pending".into(),
            expires_unix: 1_000,
            identifiers: vec![IdentRec {
                kind: "dns".into(),
                value: "a.example".into(),
            }],
            authz_ids: authzs.iter().map(|s| (*s).to_owned()).collect(),
            not_before_unix: 0,
            not_after_unix: 0,
            error: Vec::new(),
            certificate_serial_hex: String::new(),
            profile: "tls-server".into(),
            replaces: String::new(),
            created_unix: 1,
            csr_der: Vec::new(),
        }
    }

    fn acme(s: &Arc<certgate_core::store::PgStore>) -> &dyn AcmeStore {
        s.as_acme().expect("the PostgreSQL store has ACME state")
    }

    /// Isolation by tenant and account, one account per key, EAB binding once, paging and the
    /// challenge/order transitions — and the races between two cores each won exactly once.
    #[test]
    fn acme_state_on_postgres_is_isolated_and_its_transitions_race_safely() {
        let pg = PgServer::start();
        let (a, b) = two_cores(&pg);
        let (sa, sb) = (acme(&a), acme(&b));

        // One account per key per tenant, even when two cores create it at once.
        let barrier = Arc::new(Barrier::new(6));
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    acme(&s)
                        .create_account(
                            &account("ta", &format!("A{i}"), "tpA", ""),
                            &audit("acct", "ta"),
                        )
                        .expect("create")
                })
            })
            .collect();
        let outcomes: Vec<NewAccountOutcome> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let created: Vec<&AccountRec> = outcomes
            .iter()
            .filter_map(|o| match o {
                NewAccountOutcome::Created(a) => Some(a),
                NewAccountOutcome::Existing(_) => None,
            })
            .collect();
        assert_eq!(created.len(), 1, "{outcomes:?}");
        let winner = created[0].account_id.clone();
        assert!(outcomes.iter().all(|o| match o {
            NewAccountOutcome::Created(a) | NewAccountOutcome::Existing(a) =>
                a.account_id == winner,
        }));
        let other_tenant = sb
            .create_account(&account("tb", "X", "tpA", ""), &audit("acct", "tb"))
            .expect("tb");
        assert!(matches!(other_tenant, NewAccountOutcome::Created(_)));
        sa.create_account(&account("ta", "B", "tpB", ""), &audit("acct", "ta"))
            .expect("B");

        // Orders and authorizations: found by their account only, in their tenant only.
        sa.insert_order(
            &order("ta", &winner, "o1", &["z1"]),
            &[authz("ta", &winner, "z1", "a.example")],
            &audit("order", "ta"),
        )
        .expect("order");
        assert!(sb.order("ta", &winner, "o1").expect("q").is_some());
        assert_eq!(
            sb.authz("ta", &winner, "z1")
                .expect("q")
                .expect("z")
                .challenges
                .len(),
            3
        );
        for (tenant, acct) in [("ta", "B"), ("tb", winner.as_str())] {
            assert!(sb.order(tenant, acct, "o1").expect("q").is_none());
            assert!(sb.authz(tenant, acct, "z1").expect("q").is_none());
            assert!(
                sb.authz_of_challenge(tenant, acct, "z1-http-01")
                    .expect("q")
                    .is_none()
            );
            assert!(
                sb.list_orders(tenant, acct, None, 10)
                    .expect("q")
                    .order_ids
                    .is_empty()
            );
        }
        let (found, idx) = sb
            .authz_of_challenge("ta", &winner, "z1-dns-01")
            .expect("q")
            .expect("found");
        assert_eq!((found.authz_id.as_str(), idx), ("z1", 1));
        let reuse = sa
            .reusable_authz(
                "ta",
                &winner,
                &IdentRec {
                    kind: "dns".into(),
                    value: "a.example".into(),
                },
                false,
                0,
            )
            .expect("q");
        assert_eq!(reuse.map(|z| z.authz_id), Some("z1".into()));

        // Three challenges of one authorization started at once on two cores: one wins.
        let barrier = Arc::new(Barrier::new(3));
        let handles: Vec<_> = ["http-01", "dns-01", "tls-alpn-01"]
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                let (barrier, ch) = (barrier.clone(), format!("z1-{k}"));
                std::thread::spawn(move || {
                    barrier.wait();
                    acme(&s)
                        .start_challenge("ta", "z1", &ch, &audit("start", "ta"))
                        .expect("start")
                })
            })
            .collect();
        let started: Vec<bool> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        assert_eq!(started.iter().filter(|s| **s).count(), 1, "{started:?}");
        let z = sa.authz("ta", &winner, "z1").expect("q").expect("z");
        let running = z
            .challenges
            .iter()
            .find(|c| c.status == "processing")
            .expect("one processing")
            .challenge_id
            .clone();
        let readied = sb
            .finish_challenge(
                "ta",
                "z1",
                &running,
                &ChallengeResult {
                    valid: true,
                    now: 5,
                    valid_until: 2_000,
                    error: Vec::new(),
                },
                &audit("finish", "ta"),
            )
            .expect("finish");
        // z1 is o1's only authorization: the same transaction made o1 ready.
        assert_eq!(readied.as_deref(), Some("o1"));
        let z = sa.authz("ta", &winner, "z1").expect("q").expect("z");
        assert_eq!((z.status.as_str(), z.expires_unix), ("valid", 2_000));
        assert!(
            !sa.start_challenge("ta", "z1", "z1-dns-01", &audit("s", "ta"))
                .expect("after")
        );
        assert!(
            !sa.start_challenge("tb", "z1", "z1-dns-01", &audit("s", "tb"))
                .expect("tb")
        );

        // Finalize's ready → processing is taken once across cores; the CSR is kept.
        let to = |st: &str, csr: &[u8]| OrderUpdate {
            status: st.into(),
            csr_der: csr.to_vec(),
            ..OrderUpdate::default()
        };
        assert!(
            !sa.set_order_status(
                "ta",
                "o1",
                &["pending"],
                &to("ready", b""),
                &audit("o", "ta")
            )
            .expect("ready"),
            "already ready"
        );
        assert_eq!(
            sb.order("ta", &winner, "o1").expect("q").expect("o").status,
            "ready"
        );
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    acme(&s)
                        .set_order_status(
                            "ta",
                            "o1",
                            &["ready"],
                            &OrderUpdate {
                                status: "processing".into(),
                                csr_der: vec![i as u8 + 1],
                                ..OrderUpdate::default()
                            },
                            &audit("finalize", "ta"),
                        )
                        .expect("cas")
                })
            })
            .collect();
        let took: Vec<bool> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        assert_eq!(took.iter().filter(|t| **t).count(), 1, "{took:?}");
        let o = sb.order("ta", &winner, "o1").expect("q").expect("o");
        assert_eq!(o.status, "processing");
        assert_eq!(o.csr_der.len(), 1, "the winner's CSR is stored");
        assert!(
            !sb.set_order_status(
                "tb",
                "o1",
                &["processing"],
                &to("valid", b""),
                &audit("o", "tb")
            )
            .expect("other tenant")
        );
        let mut valid = to("valid", b"");
        valid.certificate_serial_hex = "0abc".into();
        assert!(
            sb.set_order_status("ta", "o1", &["processing"], &valid, &audit("o", "ta"))
                .expect("valid")
        );
        let o = sa.order_by_serial("ta", "0abc").expect("q").expect("o");
        assert_eq!(
            o.csr_der.len(),
            1,
            "an empty CSR update keeps the stored one"
        );

        // Paging, newest first.
        for n in 2..=5 {
            sa.insert_order(
                &order("ta", "B", &format!("o{n}"), &[]),
                &[],
                &audit("order", "ta"),
            )
            .expect("order");
        }
        let p1 = sb.list_orders("ta", "B", None, 3).expect("page");
        assert_eq!(p1.order_ids, ["o5", "o4", "o3"]);
        let p2 = sb.list_orders("ta", "B", p1.next, 3).expect("page");
        assert_eq!(
            (p2.order_ids.as_slice(), p2.next),
            (&["o2".to_owned()][..], None)
        );

        // A validation moves the order that created the authorization pending → ready in its
        // own transaction, once all of the order's authorizations are valid; two cores finishing
        // its last two authorizations at once leave it ready (exactly one of them moves it).
        sa.insert_order(
            &order("ta", &winner, "o7", &["z7a", "z7b"]),
            &[
                authz("ta", &winner, "z7a", "h.example"),
                authz("ta", &winner, "z7b", "i.example"),
            ],
            &audit("order", "ta"),
        )
        .expect("o7");
        for z in ["z7a", "z7b"] {
            assert!(
                sa.start_challenge("ta", z, &format!("{z}-http-01"), &audit("s", "ta"))
                    .expect("start")
            );
        }
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = ["z7a", "z7b"]
            .iter()
            .enumerate()
            .map(|(i, z)| {
                let s = if i == 0 { a.clone() } else { b.clone() };
                let (barrier, z) = (barrier.clone(), (*z).to_owned());
                std::thread::spawn(move || {
                    barrier.wait();
                    acme(&s)
                        .finish_challenge(
                            "ta",
                            &z,
                            &format!("{z}-http-01"),
                            &ChallengeResult {
                                valid: true,
                                now: 5,
                                valid_until: 2_000,
                                error: Vec::new(),
                            },
                            &audit("finish", "ta"),
                        )
                        .expect("finish")
                })
            })
            .collect();
        let readied: Vec<Option<String>> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        assert_eq!(
            readied.iter().flatten().collect::<Vec<_>>(),
            ["o7"],
            "{readied:?}"
        );
        assert_eq!(
            sb.order("ta", &winner, "o7").expect("q").expect("o").status,
            "ready"
        );

        // An EAB key binds exactly one account; an unknown or used key creates nothing.
        sa.insert_eab_key(
            &EabKey {
                tenant: "ta".into(),
                key_id: "k1".into(),
                key: Zeroizing::new(vec![7; 32]),
                account_id: String::new(),
                created_unix: 0,
            },
            &audit("eab", "ta"),
        )
        .expect("key");
        sb.create_account(&account("ta", "E1", "tpE1", "k1"), &audit("acct", "ta"))
            .expect("binds");
        assert_eq!(
            sa.eab_key("ta", "k1").expect("q").expect("k").account_id,
            "E1"
        );
        let e = sa
            .create_account(&account("ta", "E2", "tpE2", "k1"), &audit("acct", "ta"))
            .expect_err("reuse");
        assert!(matches!(
            e,
            CoreError::Policy {
                rule: "unauthorized",
                ..
            }
        ));
        assert!(sa.account("ta", "E2").expect("q").is_none(), "rolled back");
        assert!(sa.eab_key("tb", "k1").expect("q").is_none());

        // Key rollover to a key another account holds is refused; deactivation ends pending
        // authorizations.
        assert_eq!(
            sa.change_account_key("ta", "B", "{}", "tpE1", &audit("key", "ta"))
                .expect("q"),
            Some("E1".into())
        );
        assert_eq!(
            sa.change_account_key("ta", "B", "{\"n\":1}", "tpB2", &audit("key", "ta"))
                .expect("q"),
            None
        );
        assert_eq!(
            sb.account_by_thumbprint("ta", "tpB2")
                .expect("q")
                .map(|a| a.account_id),
            Some("B".into())
        );
        sa.insert_order(
            &order("ta", "B", "o9", &["z9"]),
            &[authz("ta", "B", "z9", "b.example")],
            &audit("order", "ta"),
        )
        .expect("order");
        let mut deact = sa.account("ta", "B").expect("q").expect("B");
        deact.status = "deactivated".into();
        sb.update_account(&deact, &audit("deactivate", "ta"))
            .expect("deactivate");
        assert_eq!(
            sa.authz("ta", "B", "z9").expect("q").expect("z").status,
            "deactivated"
        );
        assert!(sa.update_account(&deact, &audit("again", "ta")).is_err());

        // Every change above audited on one chain.
        let v = certgate_core::audit::verify_chain(&a.audit_records().expect("records"), None);
        assert_eq!(v.error, None);
        // And the app role without a tenant sees no ACME rows.
        let (ok, out, err) = pg.psql_as_app("SELECT count(*) FROM acme_accounts");
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "0");
    }
}

mod cmp {
    //! The CMP state store on PostgreSQL.

    use std::sync::{Arc, Barrier};

    use certgate_core::store::Store;
    use certgate_core::store::cmp::RaRec;
    use certgate_e2e::pg::PgServer;
    use zeroize::Zeroizing;

    use super::{audit, two_cores};

    /// Secrets and RA per tenant; a certConf decision taken once when two cores race it; the
    /// sweep sees due entries of every tenant.
    #[test]
    fn cmp_state_on_postgres_is_per_tenant_and_confirmations_decide_once() {
        let pg = PgServer::start();
        let (a, b) = two_cores(&pg);
        let (ca, cb) = (
            a.as_cmp().expect("CMP on PostgreSQL"),
            b.as_cmp().expect("CMP on PostgreSQL"),
        );
        let secret = Zeroizing::new(b"s3cret".to_vec());
        assert!(
            !ca.put_cmp_secret("ta", b"ref1", &secret, 1, &audit("secret", "ta"))
                .expect("put")
        );
        assert!(
            cb.put_cmp_secret("ta", b"ref1", &secret, 2, &audit("secret", "ta"))
                .expect("replace"),
            "the second put replaces"
        );
        assert_eq!(
            cb.cmp_secret("ta", b"ref1")
                .expect("get")
                .map(|s| s.to_vec()),
            Some(b"s3cret".to_vec())
        );
        assert!(cb.cmp_secret("tb", b"ref1").expect("get").is_none());
        let ra = RaRec {
            tenant: "ta".into(),
            signer_key_id: "ra-key".into(),
            key_type: 1,
            cert_der: vec![1, 2],
            issuer_id: "i".into(),
            created_unix: 3,
        };
        ca.put_cmp_ra(&ra, &audit("ra", "ta")).expect("ra");
        assert_eq!(cb.cmp_ra("ta").expect("ra"), Some(ra));
        assert_eq!(cb.cmp_ra("tb").expect("ra"), None);
        assert!(
            !cb.delete_cmp_secret("tb", b"ref1", &audit("del", "tb"))
                .expect("del"),
            "another tenant deletes nothing"
        );

        ca.await_confirm("ta", "k1", 100).expect("await");
        cb.await_confirm("ta", "k1", 999)
            .expect("await again keeps the first");
        assert_eq!(
            ca.pending_confirm("ta", "k1")
                .expect("q")
                .map(|p| p.deadline_unix),
            Some(100)
        );
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let to = "accepted";
                    barrier.wait();
                    s.as_cmp()
                        .expect("cmp")
                        .transition_confirm("ta", "k1", to, &audit("confirm", "ta"))
                        .expect("transition")
                        .expect("exists")
                        .state
                })
            })
            .collect();
        let before: Vec<String> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        assert_eq!(
            before.iter().filter(|s| *s == "pending").count(),
            1,
            "exactly one caller saw it pending and decided: {before:?}"
        );
        ca.await_confirm("tb", "k2", 5).expect("await");
        let due = cb.confirm_sweep_due(50, 10).expect("due");
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(
            (due[0].tenant.as_str(), due[0].idem_key.as_str()),
            ("tb", "k2")
        );
        let v = certgate_core::audit::verify_chain(&a.audit_records().expect("records"), None);
        assert_eq!(v.error, None);
        let (ok, out, err) = pg.psql_as_app("SELECT count(*) FROM cmp_secrets");
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "0", "no tenant, no rows");
    }
}

mod scep {
    //! The SCEP state store on PostgreSQL.

    use std::sync::{Arc, Barrier};

    use certgate_core::store::Store;
    use certgate_core::store::scep::{ChallengeMatch, challenge_digest};
    use certgate_e2e::pg::PgServer;

    use super::{audit, two_cores};

    /// Static and one-time challenges per tenant; a one-time challenge checked on two cores at
    /// once matches exactly once; the outstanding bound holds across cores.
    #[test]
    fn scep_challenges_on_postgres_match_once_across_cores() {
        let pg = PgServer::start();
        let (a, b) = two_cores(&pg);
        let (sa, sb) = (
            a.as_scep().expect("SCEP on PostgreSQL"),
            b.as_scep().expect("SCEP on PostgreSQL"),
        );
        // The SCEP RA: per tenant, seen by the other core, and kept apart from the CMP RA table.
        let ra = certgate_core::store::cmp::RaRec {
            tenant: "ta".into(),
            signer_key_id: "scep-ra-key".into(),
            key_type: 1,
            cert_der: vec![3, 4],
            issuer_id: "i".into(),
            created_unix: 7,
        };
        sa.put_scep_ra(&ra, &audit("scep-ra", "ta"))
            .expect("scep ra");
        assert_eq!(sb.scep_ra("ta").expect("scep ra"), Some(ra));
        assert_eq!(sb.scep_ra("tb").expect("scep ra"), None);
        let cmp = b.as_cmp().expect("CMP on PostgreSQL");
        assert_eq!(cmp.cmp_ra("ta").expect("cmp ra"), None);

        let st = challenge_digest(b"static-pw");
        assert!(
            !sa.put_scep_static_challenge("ta", "", st, 1, &audit("scep", "ta"))
                .expect("put")
        );
        assert_eq!(
            sb.check_scep_challenge("ta", "server", st, 5, &audit("c", "ta"))
                .expect("check"),
            ChallengeMatch::Static
        );
        assert_eq!(
            sb.check_scep_challenge("tb", "server", st, 5, &audit("c", "tb"))
                .expect("check"),
            ChallengeMatch::None,
            "another tenant's password does not match"
        );
        let otp = challenge_digest(b"one-time");
        assert!(
            sa.add_scep_one_time_challenge("ta", "server", otp, 1, 100, 3, &audit("otp", "ta"))
                .expect("add")
        );
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    s.as_scep()
                        .expect("scep")
                        .check_scep_challenge("ta", "server", otp, 5, &audit("consume", "ta"))
                        .expect("check")
                })
            })
            .collect();
        let got: Vec<ChallengeMatch> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        assert_eq!(
            got.iter()
                .filter(|m| **m == ChallengeMatch::OneTime)
                .count(),
            1,
            "{got:?}"
        );
        // The bound of outstanding one-time challenges holds when two cores add at once.
        let barrier = Arc::new(Barrier::new(6));
        let handles: Vec<_> = (0..6u8)
            .map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    s.as_scep()
                        .expect("scep")
                        .add_scep_one_time_challenge(
                            "ta",
                            "server",
                            challenge_digest(&[i]),
                            10,
                            100,
                            3,
                            &audit("otp", "ta"),
                        )
                        .expect("add")
                })
            })
            .collect();
        let added = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .filter(|ok| *ok)
            .count();
        assert_eq!(added, 3, "bound of 3 outstanding");
        assert_eq!(
            pg.psql_admin("SELECT count(*) FROM scep_one_time_challenges")
                .trim(),
            "3"
        );
        let (ok, out, err) = pg.psql_as_app("SELECT count(*) FROM scep_static_challenges");
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "0", "no tenant, no rows");
    }
}

mod pending {
    //! Requests held for manual approval, on PostgreSQL.

    use std::sync::{Arc, Barrier};

    use certgate_core::store::Store;
    use certgate_core::store::pending::{Decision, PendingInsert, PendingRec};
    use certgate_e2e::pg::PgServer;

    use super::{audit, two_cores};

    fn rec(tenant: &str, id: &str, key: &str) -> PendingRec {
        PendingRec {
            tenant: tenant.into(),
            id: id.into(),
            idem_key: key.into(),
            request_hash: vec![1],
            request_pb: vec![2],
            protocol: "est".into(),
            client_identity: "cn=device".into(),
            profile: "manual".into(),
            summary: "CN=device".into(),
            state: "pending".into(),
            created_unix: 10,
            expires_unix: 1_000,
            decided_by: String::new(),
            decided_unix: 0,
            reason: String::new(),
        }
    }

    /// The open-request bound holds with two cores inserting at once; one record per key; a
    /// decision is taken once; another tenant sees nothing.
    #[test]
    fn pending_requests_on_postgres_bound_and_decide_once_across_cores() {
        let pg = PgServer::start();
        let (a, b) = two_cores(&pg);
        let barrier = Arc::new(Barrier::new(6));
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    s.as_pending()
                        .expect("pending on PostgreSQL")
                        .insert_pending(
                            &rec("ta", &format!("r{i}"), &format!("k{i}")),
                            4,
                            &audit("approval.requested", "ta"),
                        )
                        .expect("insert")
                })
            })
            .collect();
        let got: Vec<PendingInsert> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        assert_eq!(
            got.iter()
                .filter(|g| **g == PendingInsert::Inserted)
                .count(),
            4,
            "{got:?}"
        );
        assert_eq!(got.iter().filter(|g| **g == PendingInsert::Full).count(), 2);
        let (pa, pb) = (
            a.as_pending().expect("pending"),
            b.as_pending().expect("pending"),
        );
        let listed = pb.list_pending("ta", Some("pending"), 10).expect("list");
        assert_eq!(listed.len(), 4);
        let first = listed[0].clone();
        assert!(matches!(
            pa.insert_pending(&rec("ta", "other-id", &first.idem_key), 100, &audit("r", "ta"))
                .expect("again"),
            PendingInsert::Exists(e) if e.id == first.id
        ));
        assert!(
            pa.pending_by_key("tb", &first.idem_key)
                .expect("q")
                .is_none()
        );
        assert!(pb.list_pending("tb", None, 10).expect("q").is_empty());
        // Approve on A and deny on B at once: one decision wins.
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [("approved", a.clone()), ("denied", b.clone())]
            .into_iter()
            .map(|(to, s)| {
                let (barrier, id) = (barrier.clone(), first.id.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    s.as_pending()
                        .expect("pending")
                        .decide_pending(
                            "ta",
                            &id,
                            &Decision {
                                to: to.into(),
                                by: format!("op-{to}"),
                                reason: String::new(),
                                now: 20,
                            },
                            &audit("approval.decided", "ta"),
                        )
                        .expect("decide")
                        .expect("exists")
                })
            })
            .collect();
        let after: Vec<PendingRec> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        assert_eq!(after[0].state, after[1].state, "both see the one decision");
        let stored = pa.pending_by_id("ta", &first.id).expect("q").expect("rec");
        assert_eq!(stored.decided_by, format!("op-{}", stored.state));
        let decisions = pg.psql_admin("SELECT count(*) FROM audit WHERE kind = 'approval.decided'");
        assert_eq!(decisions.trim(), "1", "one decision audited");
        let (ok, out, err) = pg.psql_as_app("SELECT count(*) FROM pending_requests");
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "0", "no tenant, no rows");
    }
}

/// Issuing-CA rollover on PostgreSQL (docs/operations.md "Issuing CA rollover"): a staged CA row
/// is activated in one transaction — staged → active + the tenant's issuer, previous → retiring —
/// and two cores activating at the same moment change the tenant once (the second finds nothing
/// staged: NOT_FOUND `ca.rollover_none`). Another tenant cannot activate it (I-4).
#[test]
fn issuing_ca_rollover_on_postgres() {
    use certgate_core::store::CaRec;
    let pg = PgServer::start();
    let (a, b) = two_cores(&pg);
    for t in ["t1", "t2"] {
        a.put_tenant(
            &TenantRec {
                name: t.into(),
                public_base_url: "http://127.0.0.1:8080".into(),
                default_profile: "tls-server".into(),
                active_issuer_id: String::new(),
            },
            &audit("tenant.put", t),
        )
        .expect("tenant");
    }
    let ca = |id: &str, tenant: &str, state: &str| CaRec {
        ca_id: id.into(),
        tenant: tenant.into(),
        kind: "issuing".into(),
        parent_ca_id: "root".into(),
        cert_der: format!("der-{id}").into_bytes(),
        signer_key_id: id.into(),
        key_type: 1,
        state: state.into(),
        not_after_unix: i64::MAX / 2,
        created_unix: 1,
    };
    a.put_ca(&ca("old", "t1", "active"), true, &audit("ca.created", "t1"))
        .expect("old CA");
    b.put_ca(
        &ca("next", "t1", "staged"),
        false,
        &audit("ca.created", "t1"),
    )
    .expect("staged CA");
    assert_eq!(
        b.get_tenant("t1").expect("t").expect("t1").active_issuer_id,
        "old",
        "staging does not change the issuer"
    );
    assert_eq!(b.get_ca("next").expect("ca").expect("next").state, "staged");

    // Another tenant names it: nothing changes.
    assert!(matches!(
        a.activate_staged_ca("t2", "next", "old", &audit("ca.rollover_activated", "t2")),
        Err(CoreError::NotFound {
            rule: "ca.rollover_none",
            ..
        })
    ));

    let barrier = Arc::new(Barrier::new(2));
    let race = |s: Arc<PgStore>, barrier: Arc<Barrier>| {
        std::thread::spawn(move || {
            barrier.wait();
            s.activate_staged_ca("t1", "next", "old", &audit("ca.rollover_activated", "t1"))
        })
    };
    let ra = race(a.clone(), barrier.clone());
    let rb = race(b.clone(), barrier);
    let results = [ra.join().expect("thread"), rb.join().expect("thread")];
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "exactly one activation wins: {results:?}"
    );
    assert!(results.iter().any(|r| matches!(
        r,
        Err(CoreError::NotFound {
            rule: "ca.rollover_none",
            ..
        })
    )));
    assert_eq!(
        a.get_tenant("t1").expect("t").expect("t1").active_issuer_id,
        "next"
    );
    assert_eq!(a.get_ca("next").expect("ca").expect("next").state, "active");
    assert_eq!(b.get_ca("old").expect("ca").expect("old").state, "retiring");
    assert_eq!(
        b.get_tenant("t2").expect("t").expect("t2").active_issuer_id,
        "",
        "the other tenant is untouched"
    );
    let records = b.audit_records().expect("records");
    assert_eq!(
        records
            .iter()
            .filter(|r| r.kind == "ca.rollover_activated")
            .count(),
        1,
        "the losing activation left no audit record"
    );
    assert_eq!(verify_chain(&records, None).error, None);
}
