//! Invariant I-1 (the signer boundary), checked from `cargo metadata` and the signer's source.
//!
//! What is checked, and why it is sound enough:
//!
//! 1. **The core, edge and CLI binaries never link key-store or PKCS#11 code.** Walking the
//!    resolved graph along normal and build edges (dev-dependencies do not end up in a binary),
//!    `certgate-core`, `certgate-edge` and `certgate-cli` must not reach `certgate-signer`,
//!    `cryptoki` or `cryptoki-sys`. Packages that do not exist yet are reported, not failed.
//! 2. **The signer links no SQL driver or data-store client** (rusqlite, libsqlite3-sys, postgres,
//!    tokio-postgres, sqlx*, mysql*, diesel, sea-orm, redis), along the same edges.
//! 3. **The signer links no general-purpose HTTP server framework** (axum, warp, actix-web,
//!    rocket, poem, salvo, tide, gotham, rouille, tiny_http, …) — with one documented exception:
//!    tonic's `router` feature implements gRPC service routing on top of axum, so axum is allowed
//!    only when every package that depends on it is tonic. hyper (tonic's HTTP/2 engine — the
//!    server half of it is what gRPC runs on) and hyper-util may likewise only be depended on by
//!    tonic, hyper-util, hyper-timeout and certgate-proto (the authenticated gRPC transports), never
//!    by the signer itself. Features in `cargo metadata` are unified across the whole workspace,
//!    so "hyper with its `server` feature" cannot be attributed to one package: the check is on
//!    who depends on hyper, not on its features.
//! 4. **The binary routes nothing but its gRPC service.** Because (3) lets axum in through tonic,
//!    the source is checked too: the signer's code never names axum, `Routes`, `add_routes`,
//!    `into_axum_router` or `accept_http1`, and every `add_service(` registers the
//!    `SignerServer`. At run time, an HTTP/1.1 request on the socket gets no HTTP/1 answer.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::Command;

use serde_json::Value;

struct Graph {
    names: BTreeMap<String, String>,
    deps: BTreeMap<String, Vec<String>>,
}

impl Graph {
    fn load() -> Self {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        let out = Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--format-version",
                "1",
                "--manifest-path",
                manifest,
            ])
            .output()
            .expect("cargo metadata");
        assert!(
            out.status.success(),
            "cargo metadata: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m: Value = serde_json::from_slice(&out.stdout).expect("metadata json");
        let mut names = BTreeMap::new();
        for p in m["packages"].as_array().expect("packages") {
            names.insert(
                p["id"].as_str().expect("id").to_owned(),
                p["name"].as_str().expect("name").to_owned(),
            );
        }
        let mut deps = BTreeMap::new();
        for n in m["resolve"]["nodes"].as_array().expect("resolve graph") {
            let edges = n["deps"]
                .as_array()
                .expect("deps")
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .expect("dep_kinds")
                        .iter()
                        .any(|k| k["kind"].is_null() || k["kind"] == "build")
                })
                .map(|d| d["pkg"].as_str().expect("pkg").to_owned())
                .collect();
            deps.insert(n["id"].as_str().expect("id").to_owned(), edges);
        }
        Self { names, deps }
    }

    fn id(&self, name: &str) -> Option<String> {
        self.names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(id, _)| id.clone())
    }

    /// Package ids reachable from `root` along normal and build edges (root included).
    fn reach(&self, root: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![root.to_owned()];
        while let Some(id) = stack.pop() {
            if seen.insert(id.clone()) {
                stack.extend(self.deps.get(&id).into_iter().flatten().cloned());
            }
        }
        seen
    }

    fn names_of(&self, ids: &BTreeSet<String>) -> BTreeSet<String> {
        ids.iter().map(|id| self.names[id].clone()).collect()
    }

    /// Names of the packages in `within` that depend directly on `target`.
    fn dependents(&self, within: &BTreeSet<String>, target: &str) -> BTreeSet<String> {
        within
            .iter()
            .filter(|id| self.deps[*id].iter().any(|d| self.names[d] == target))
            .map(|id| self.names[id].clone())
            .collect()
    }
}

const SQL_AND_STORES: &[&str] = &[
    "rusqlite",
    "libsqlite3-sys",
    "sqlite",
    "postgres",
    "tokio-postgres",
    "postgres-types",
    "sqlx",
    "sqlx-core",
    "sqlx-postgres",
    "sqlx-mysql",
    "sqlx-sqlite",
    "mysql",
    "mysql_async",
    "mysql_common",
    "diesel",
    "sea-orm",
    "redis",
    "redb",
];

const HTTP_FRAMEWORKS: &[&str] = &[
    "warp",
    "actix-web",
    "actix-http",
    "actix-server",
    "rocket",
    "rocket_http",
    "poem",
    "salvo",
    "tide",
    "gotham",
    "rouille",
    "tiny_http",
    "iron",
    "nickel",
    "tower-http",
    "hyper-staticfile",
];

#[test]
fn i1_signer_links_no_sql_driver_and_no_http_framework() {
    let g = Graph::load();
    let signer = g
        .id("certgate-signer")
        .expect("certgate-signer in the workspace");
    let reach = g.reach(&signer);
    let names = g.names_of(&reach);
    // positive control: the walk does see the signer's real dependencies
    for expected in ["cryptoki", "aws-lc-rs", "tonic", "certgate-proto"] {
        assert!(
            names.contains(expected),
            "graph walk is broken: {expected} not reached"
        );
    }
    let sql: Vec<_> = SQL_AND_STORES
        .iter()
        .filter(|n| names.contains(**n))
        .collect();
    assert!(
        sql.is_empty(),
        "the signer must not link a SQL driver or data store: {sql:?}"
    );
    let http: Vec<_> = HTTP_FRAMEWORKS
        .iter()
        .filter(|n| names.contains(**n))
        .collect();
    assert!(
        http.is_empty(),
        "the signer must not link an HTTP framework: {http:?}"
    );

    let allowed_axum: BTreeSet<String> = ["tonic"].iter().map(|s| s.to_string()).collect();
    let axum_users = g.dependents(&reach, "axum");
    assert!(
        axum_users.is_subset(&allowed_axum),
        "axum may only be tonic's gRPC router, but is used by {axum_users:?}"
    );
    let allowed_hyper: BTreeSet<String> =
        ["tonic", "hyper-util", "hyper-timeout", "certgate-proto"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    for engine in ["hyper", "hyper-util", "h2"] {
        let users = g.dependents(&reach, engine);
        let extra: Vec<_> = users
            .difference(&allowed_hyper)
            .filter(|u| u.as_str() != "hyper")
            .collect();
        assert!(
            extra.is_empty(),
            "{engine} reached outside the gRPC stack via {extra:?}"
        );
    }
    let direct: BTreeSet<String> = g.deps[&signer].iter().map(|d| g.names[d].clone()).collect();
    for banned in ["hyper", "hyper-util", "axum", "h2", "http-body-util"] {
        assert!(
            !direct.contains(banned),
            "certgate-signer must not depend on {banned} directly"
        );
    }
}

#[test]
fn i1_core_edge_and_cli_never_reach_key_store_code() {
    let g = Graph::load();
    let mut checked = 0;
    for binary in ["certgate-core", "certgate-edge", "certgate-cli"] {
        let Some(id) = g.id(binary) else {
            eprintln!("{binary} is not in the workspace yet; nothing to check");
            continue;
        };
        checked += 1;
        let names = g.names_of(&g.reach(&id));
        for banned in ["certgate-signer", "cryptoki", "cryptoki-sys"] {
            assert!(
                !names.contains(banned),
                "{binary} must not depend on {banned} (I-1)"
            );
        }
    }
    assert!(
        checked > 0,
        "no core/edge/cli package found: the check would be vacuous"
    );
}

#[test]
fn i1_signer_source_routes_only_its_grpc_service() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut files = vec![];
    let mut dirs = vec![std::path::PathBuf::from(src)];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut services = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        for banned in [
            "axum",
            "add_routes",
            "into_axum_router",
            "Routes::",
            "accept_http1",
            "hyper::",
        ] {
            assert!(
                !text.contains(banned),
                "{}: must not use {banned}",
                f.display()
            );
        }
        for (i, _) in text.match_indices(".add_service(") {
            services += 1;
            let arg = &text[i..(i + 40).min(text.len())];
            // the signer's two gRPC services: Signer (svc) and Decrypter (dec, SCEP_RA only)
            assert!(
                arg.starts_with(".add_service(svc)") || arg.starts_with(".add_service(dec)"),
                "{}: unexpected service {arg}",
                f.display()
            );
        }
        for (i, _) in text.match_indices("let svc = ") {
            let arg = &text[i..(i + 20).min(text.len())];
            assert!(
                arg.starts_with("let svc = grpc()"),
                "{}: svc must be the SignerServer",
                f.display()
            );
        }
        if text.contains("let grpc = ") {
            assert!(text.contains("SignerServer::new(service.clone())"));
        }
        for (i, _) in text.match_indices("let dec = ") {
            let arg = &text[i..(i + 25).min(text.len())];
            assert!(
                arg.starts_with("let dec = decrypter()"),
                "{}: dec must be the DecrypterServer",
                f.display()
            );
        }
        if text.contains("let decrypter = ") {
            assert!(text.contains("DecrypterServer::new(service.clone())"));
        }
    }
    assert!(services >= 1, "the server registers its service somewhere");
}

#[tokio::test]
async fn i1_signer_socket_answers_no_http1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let me = vec![format!("uid:{}", certgate_proto::transport::current_uid())];
    std::fs::write(
        dir.path().join("kek"),
        certgate_signer::keystore::Kek::generate()
            .expect("kek")
            .to_base64()
            .as_bytes(),
    )
    .expect("kek");
    let text = format!(
        "mode = \"dev\"\nsocket = \"s.sock\"\nallow = {me:?}\nadmin_allow = []\naudit_log = \"a.jsonl\"\nkey_dir = \"keys\"\nkek_file = \"kek\"\n"
    );
    let config = certgate_signer::config::Config::parse(&text, dir.path()).expect("config");
    let running = certgate_signer::server::start(&config)
        .await
        .expect("start");
    let socket = running.socket.clone();
    let reply = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(b"GET / HTTP/1.1\r\nHost: signer\r\n\r\n")
            .expect("write");
        let mut buf = vec![];
        let _ = s.read_to_end(&mut buf);
        buf
    })
    .await
    .expect("probe");
    assert!(
        !reply.starts_with(b"HTTP/1"),
        "the signer must not speak HTTP/1: {:?}",
        String::from_utf8_lossy(&reply)
    );
    running.shutdown().await.expect("shutdown");
}
