//! Faults in a fleet (issue 8, "Overload and faults"), all real processes on loopback: one
//! signer, two cores sharing a real PostgreSQL (Debian's `postgres`), edges sharing a real
//! `redis-server`.
//!
//! - `kill -9` of an edge during ACME finalize: both edges sit behind one public base URL (a
//!   TLS-terminating loopback proxy in this test, standing in for the load balancer). The proxy
//!   holds edge A's finalize response, A is killed, the instant-acme client's connection drops, it
//!   retries on edge B and downloads the certificate: exactly one certificate is stored for the
//!   order. A second round kills A as soon as the finalize request reached it (before it answers).
//! - PostgreSQL stopped (fast shutdown) and restarted on the same port under EST load: the calls
//!   in flight fail with HTTP errors within their deadline, issuance works again afterwards
//!   without restarting any core, every enrollment ends with exactly one stored certificate (the
//!   one the client got), and the audit chain verifies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certgate_devservers::pg::PgServer;
use certgate_e2e::redis::RedisServer;
use certgate_e2e::{
    ChildGuard, Fleet, READY_TIMEOUT, bin, free_port, http_get, run, wait_for_unix_socket,
};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The inline `store = {…}` line of a core on `pg` (inline, so the keys after it stay top-level).
fn store_line(pg: &PgServer, migrate: bool, app: &str) -> String {
    let mut line = format!(
        "store = {{ backend = \"postgres\", url = \"{}\", password_file = \"{}\", application_name = \"{app}\", pool_size = 8, timeout_ms = 3000",
        pg.url,
        pg.password_file.display()
    );
    if migrate {
        line.push_str(&format!(
            ", migrate_url = \"{}\", migrate_password_file = \"{}\"",
            pg.owner_url,
            pg.owner_password_file.display()
        ));
    }
    line.push_str(" }");
    line
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .expect("create config");
    std::io::Write::write_all(&mut f, text.as_bytes()).expect("write config");
}

/// One edge process of the cluster.
struct EdgeProc {
    name: String,
    config: PathBuf,
    https: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    guard: Option<ChildGuard>,
}

impl EdgeProc {
    fn start(&mut self) {
        let mut cmd = Command::new(bin("certgate-edge"));
        cmd.arg("--config").arg(&self.config);
        let mut g = ChildGuard::spawn(&self.name, cmd, &self.log);
        let deadline = Instant::now() + READY_TIMEOUT;
        while http_get(self.admin, "/readyz").map(|r| r.0) != Some(200) {
            assert!(
                Instant::now() < deadline && g.is_running(),
                "{} not ready:\n{}",
                self.name,
                g.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.guard = Some(g);
    }

    fn kill9(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.kill();
        }
    }
}

/// Signer + two cores on one PostgreSQL + `edges` edges on one Redis, initialised by the real
/// `certgate init` with the PostgreSQL store configured from the start.
struct Cluster {
    // Dropped in order: edges, core 2, fleet (edge/core/signer), then the servers.
    edges: Vec<EdgeProc>,
    core2: Option<ChildGuard>,
    fleet: Fleet,
    pg: PgServer,
    _redis: RedisServer,
}

impl Cluster {
    /// `base_url`: the ACME base URL every edge advertises (the public name of the fleet).
    fn start(edges: usize, base_url: Option<&str>) -> Self {
        let pg = PgServer::start().unwrap_or_else(|e| panic!("postgres: {e}"));
        let redis = RedisServer::start();
        let mut fleet = Fleet::uninitialised();
        let uid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
        let core_dir = fleet.data_dir().join("core");
        std::fs::create_dir_all(&core_dir).expect("core dir");
        // `certgate init` keeps an existing core.toml: this one is its own template with the
        // PostgreSQL store, so the bootstrap ceremony already writes to PostgreSQL.
        write_private(
            &fleet.core_config(),
            &format!(
                "mode = \"dev\"\nsocket = \"../run/core.sock\"\nallow = [\"uid:{uid}\"]\nadmin_allow = [\"uid:{uid}\"]\n{}\nquorum = 1\n\n[signer]\nsocket = \"../run/signer.sock\"\n\n[[custodians]]\nname = \"dev\"\npublic_key = \"../custodians/dev.pub.pem\"\n\n[audit]\nsigner_log = \"../signer/audit.jsonl\"\n\n[acme]\ndev_validate_on_localhost = true\n",
                store_line(&pg, true, "core-1")
            ),
        );
        let (ok, out, err) = fleet.cli(&["init"]);
        assert!(ok, "certgate init on PostgreSQL: {out}{err}\n{}", pg.log());
        let core_text = std::fs::read_to_string(fleet.core_config()).expect("core.toml");
        assert!(core_text.contains("backend = \"postgres\""), "{core_text}");
        fleet.start_signer();
        fleet.start_core();

        // Core 2: the same configuration on its own socket and database sessions.
        let core2_cfg = core_dir.join("core-2.toml");
        let core2_text: Vec<String> = core_text
            .lines()
            .map(|l| {
                if l.starts_with("store =") {
                    store_line(&pg, false, "core-2")
                } else if l.starts_with("socket = \"../run/core.sock\"") {
                    "socket = \"../run/core-2.sock\"".to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect();
        write_private(&core2_cfg, &(core2_text.join("\n") + "\n"));
        let mut cmd = Command::new(bin("certgate-core"));
        cmd.arg("--config").arg(&core2_cfg);
        let g = ChildGuard::spawn("certgate-core-2", cmd, &fleet.scratch().join("core-2.log"));
        assert!(
            wait_for_unix_socket(&fleet.data_dir().join("run/core-2.sock"), READY_TIMEOUT),
            "core 2 not ready:\n{}",
            g.log()
        );

        // Edges: both cores in the pool, shared state in Redis, one public base URL.
        let mut edge_text = std::fs::read_to_string(fleet.edge_config()).expect("edge.toml");
        edge_text = edge_text.replace(
            "core_socket = \"../run/core.sock\"",
            "cores = [\"unix:../run/core.sock\", \"unix:../run/core-2.sock\"]",
        );
        if let Some(url) = base_url {
            edge_text = edge_text.replace(
                &format!("base_url = \"https://{}\"", fleet.https),
                &format!("base_url = \"{url}\""),
            );
            assert!(edge_text.contains(url), "{edge_text}");
        }
        edge_text.push_str(&format!("\n[redis]\nurl = \"{}\"\n", redis.url()));
        let mut list = Vec::new();
        for i in 0..edges {
            let (https, http, admin) = if i == 0 {
                (fleet.https, fleet.http, fleet.admin)
            } else {
                let p = || SocketAddr::from(([127, 0, 0, 1], free_port()));
                (p(), p(), p())
            };
            let text = edge_text
                .replace(&format!("\"{}\"", fleet.https), &format!("\"{https}\""))
                .replace(&format!("\"{}\"", fleet.http), &format!("\"{http}\""))
                .replace(&format!("\"{}\"", fleet.admin), &format!("\"{admin}\""));
            let config = fleet.edge_config().with_file_name(format!("edge-{i}.toml"));
            write_private(&config, &text);
            let mut e = EdgeProc {
                name: format!("certgate-edge-{i}"),
                config,
                https,
                admin,
                log: fleet.scratch().join(format!("edge-{i}.log")),
                guard: None,
            };
            e.start();
            list.push(e);
        }
        Self {
            edges: list,
            core2: Some(g),
            fleet,
            pg,
            _redis: redis,
        }
    }

    /// Superuser SQL in the certgate database.
    fn sql(&self, q: &str) -> String {
        self.pg
            .psql("certgate", q)
            .unwrap_or_else(|e| panic!("psql {q}: {e}"))
            .trim()
            .to_owned()
    }

    /// Serials (lower-case hex) of the stored certificates whose DER contains `name`.
    fn serials_naming(&self, name: &str) -> Vec<String> {
        let out = self.sql(&format!(
            "SELECT lower(serial_hex) FROM certificates WHERE position(convert_to('{name}', 'UTF8') in cert_der) > 0 ORDER BY 1"
        ));
        out.lines().map(str::to_owned).collect()
    }

    fn logs(&self) -> String {
        let mut all = self.fleet.logs();
        for e in &self.edges {
            all.push_str(&format!(
                "--- {} ---\n{}\n",
                e.name,
                std::fs::read_to_string(&e.log).unwrap_or_default()
            ));
        }
        all.push_str(&format!(
            "--- core 2 ---\n{}\n",
            std::fs::read_to_string(self.fleet.scratch().join("core-2.log")).unwrap_or_default()
        ));
        all
    }

    /// `certgate audit verify` (the signed, hash-linked chain the cores share in PostgreSQL)
    /// and `certgate-core audit-verify` on core 2's configuration.
    fn assert_audit_verifies(&self) {
        let (ok, out, err) = self.fleet.cli(&["audit", "verify"]);
        assert!(
            ok && out.contains("audit chain OK"),
            "certgate audit verify: {out}{err}"
        );
        let (ok, out, err) = run(Command::new(bin("certgate-core"))
            .arg("audit-verify")
            .arg("--config")
            .arg(self.fleet.data_dir().join("core/core-2.toml")));
        assert!(ok && out.starts_with("OK"), "audit-verify: {out}{err}");
    }
}

/// Lower-case hex serial (no leading zeros) of the first certificate in `pem`, by OpenSSL.
fn serial_of_pem(pem: &str, dir: &Path) -> String {
    let f = dir.join(format!("leaf-{}.pem", free_port()));
    std::fs::write(&f, pem).expect("write pem");
    let (ok, out, err) =
        run(Command::new("openssl").args(["x509", "-noout", "-serial", "-in", &s(&f)]));
    assert!(ok, "openssl x509: {err}");
    normal_serial(out.trim().trim_start_matches("serial="))
}

fn normal_serial(hex: &str) -> String {
    let t = hex.trim().to_ascii_lowercase();
    let t = t.trim_start_matches('0');
    if t.is_empty() {
        "0".into()
    } else {
        t.to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// The load balancer: a TLS-terminating loopback proxy that can hold a finalize.

/// What the proxy does to the next finalize request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Trap {
    /// Forward everything.
    Off,
    /// Forward the finalize request, swallow its response, report it, close the client's
    /// connection.
    HoldResponse,
    /// Report as soon as the finalize request was forwarded; swallow anything after it.
    OnRequest,
}

/// Shared proxy state.
struct ProxyState {
    target: Mutex<SocketAddr>,
    trap: Mutex<Trap>,
    /// Set when the trap sprang; the held response's first bytes (HoldResponse).
    sprung: Mutex<Option<Vec<u8>>>,
    finalizes: AtomicUsize,
}

struct Proxy {
    state: Arc<ProxyState>,
}

impl Proxy {
    /// Listens on a free port with the edge's own certificate (the public name the clients
    /// trust), forwarding plaintext HTTP/1.1 to the current target over TLS.
    async fn start(bind: SocketAddr, edge_dir: &Path, root: &Path, target: SocketAddr) -> Self {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(edge_dir.join("tls.pem"))
                .expect("edge tls.pem")
                .collect::<Result<_, _>>()
                .expect("edge certs");
        let key = PrivateKeyDer::from_pem_file(edge_dir.join("tls.key")).expect("edge tls.key");
        // No ALPN: clients speak HTTP/1.1, which the proxy can read.
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(root).expect("root pem") {
            roots.add(c.expect("root cert")).expect("add root");
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .expect("bind the proxy on the advertised port");
        let state = Arc::new(ProxyState {
            target: Mutex::new(target),
            trap: Mutex::new(Trap::Off),
            sprung: Mutex::new(None),
            finalizes: AtomicUsize::new(0),
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, connector, st) = (acceptor.clone(), connector.clone(), st.clone());
                tokio::spawn(async move {
                    let _ = relay(tcp, acceptor, connector, st).await;
                });
            }
        });
        Self { state }
    }

    fn set_target(&self, t: SocketAddr) {
        *self.state.target.lock().expect("lock") = t;
    }

    fn arm(&self, trap: Trap) {
        *self.state.sprung.lock().expect("lock") = None;
        *self.state.trap.lock().expect("lock") = trap;
    }
}

/// One client connection: TLS in, TLS out to the target, plaintext pumped both ways; a request
/// whose first line names a finalize URL springs an armed trap.
async fn relay(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
    st: Arc<ProxyState>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let client = acceptor.accept(tcp).await?;
    let target = *st.target.lock().expect("lock");
    let up = tokio::net::TcpStream::connect(target).await?;
    let name = rustls_pki_types::ServerName::IpAddress(target.ip().into());
    let upstream = connector.connect(name, up).await?;
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    // Set once this connection carried an armed finalize: its trap.
    let trapped: Arc<Mutex<Trap>> = Arc::new(Mutex::new(Trap::Off));
    let t2 = trapped.clone();
    let st2 = st.clone();
    let c2s = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                let _ = uw.shutdown().await;
                return std::io::Result::Ok(());
            }
            let chunk = &buf[..n];
            let is_finalize = chunk.starts_with(b"POST ")
                && chunk
                    .split(|b| *b == b'\n')
                    .next()
                    .is_some_and(|l| l.windows(9).any(|w| w == b"/finalize"));
            if is_finalize {
                st2.finalizes.fetch_add(1, Ordering::SeqCst);
                let trap = std::mem::replace(&mut *st2.trap.lock().expect("lock"), Trap::Off);
                *t2.lock().expect("lock") = trap;
                uw.write_all(chunk).await?;
                uw.flush().await?;
                if trap == Trap::OnRequest {
                    // Give the edge the request, then report; nothing more goes through.
                    *st2.sprung.lock().expect("lock") = Some(Vec::new());
                    return Ok(());
                }
                continue;
            }
            if *t2.lock().expect("lock") == Trap::OnRequest {
                return Ok(());
            }
            uw.write_all(chunk).await?;
        }
    };
    let s2c = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = ur.read(&mut buf).await?;
            if n == 0 {
                let _ = cw.shutdown().await;
                return std::io::Result::Ok(());
            }
            match *trapped.lock().expect("lock") {
                Trap::Off => {}
                Trap::HoldResponse => {
                    // Swallow the response; the client sees its connection drop.
                    *st.sprung.lock().expect("lock") = Some(buf[..n].to_vec());
                    return Ok(());
                }
                Trap::OnRequest => return Ok(()),
            }
            cw.write_all(&buf[..n]).await?;
        }
    };
    // Whichever side ends (or springs a trap) ends the connection.
    tokio::select! {
        r = c2s => r,
        r = s2c => r,
    }
}

// ---------------------------------------------------------------------------------------------
// ACME client side.

/// Serialises the users of the fixed dev validation port 5002 (the same lock file as the other
/// ACME tests).
fn dev_port_lock() -> std::fs::File {
    let path = std::env::temp_dir().join("certgate-acme-dev-ports-5001-5002.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .expect("open the dev port lock file");
    file.lock().expect("lock the dev port lock file");
    file
}

type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// http-01 answers on 127.0.0.1:5002 from `tokens`.
async fn http01_responder(tokens: Tokens) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:5002")
        .await
        .expect("bind 127.0.0.1:5002 for http-01");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let tokens = tokens.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split(' ').nth(1).unwrap_or("");
                let answer = path
                    .strip_prefix("/.well-known/acme-challenge/")
                    .and_then(|token| tokens.lock().ok()?.get(token).cloned());
                let response = match answer {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_owned()
                    }
                };
                let _ = s.write_all(response.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    })
}

/// An order for `name` up to `ready`.
async fn ready_order(
    account: &instant_acme::Account,
    name: &str,
    tokens: &Tokens,
) -> instant_acme::Order {
    use instant_acme::{AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus};
    let ids = [Identifier::Dns(name.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .expect("newOrder");
    {
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.expect("authorization");
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let mut ch = authz
                .challenge(ChallengeType::Http01)
                .expect("http-01 offered");
            tokens
                .lock()
                .expect("tokens")
                .insert(ch.token.clone(), ch.key_authorization().as_str().to_owned());
            ch.set_ready().await.expect("challenge ready");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = order.refresh().await.expect("refresh order").status;
        match st {
            OrderStatus::Ready => return order,
            OrderStatus::Pending | OrderStatus::Processing => {}
            other => panic!("order for {name} became {other:?}: {:?}", order.state()),
        }
        assert!(Instant::now() < deadline, "order for {name} never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Finalize as a careful client does: when the finalize call itself fails (connection lost),
/// look at the order again — finalize once more only if it is still `ready`, otherwise wait for
/// the certificate. Returns (the leaf+chain PEM, finalize attempts).
async fn finalize_with_retry(order: &mut instant_acme::Order, csr: &[u8]) -> (String, usize) {
    use instant_acme::OrderStatus;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 1;
    let mut last = order.finalize_csr(csr).await.map_err(|e| e.to_string());
    loop {
        if last.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate within 60 s: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        match order.refresh().await {
            Ok(st) if st.status == OrderStatus::Ready => {
                attempts += 1;
                last = order.finalize_csr(csr).await.map_err(|e| e.to_string());
            }
            Ok(st) if matches!(st.status, OrderStatus::Processing | OrderStatus::Valid) => {
                last = Ok(());
            }
            Ok(st) => panic!("order became {:?}: {:?}", st.status, st.error),
            Err(e) => last = Err(format!("refresh: {e}")),
        }
    }
    loop {
        match order.certificate().await {
            Ok(Some(pem)) => return (pem, attempts),
            Ok(None) => {}
            Err(e) => eprintln!("certificate download (retrying): {e}"),
        }
        assert!(Instant::now() < deadline, "no certificate within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn csr_der(name: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.serialize_request(&key).expect("csr").der().to_vec()
}

/// Kill -9 of the edge serving an ACME finalize: once after it answered (the answer never reaches
/// the client), once right after the request reached it. Each time the client continues on the
/// other edge behind the same base URL and ends with one certificate, the only one stored for
/// its name.
#[test]
fn kill_9_of_an_edge_during_finalize_gives_one_certificate_via_the_other_edge() {
    let _ports = dev_port_lock();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The proxy's port is the fleet's public address, in the edges' base URL; the proxy itself
    // starts after `certgate init` wrote the edge certificate it presents.
    let placeholder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let public = placeholder.local_addr().expect("addr");
    drop(placeholder);
    let base = format!("https://{public}");
    let mut c = Cluster::start(2, Some(&base));
    let edge_dir = c.fleet.data_dir().join("edge");
    let root = c.fleet.root_pem();
    let scratch = c.fleet.scratch();
    let proxy = rt.block_on(Proxy::start(public, &edge_dir, &root, c.edges[0].https));
    let tokens: Tokens = Arc::new(Mutex::new(HashMap::new()));
    let _responder = rt.block_on(http01_responder(tokens.clone()));
    let account = rt.block_on(async {
        let (account, _) = instant_acme::Account::builder_with_root(&root)
            .expect("client")
            .create(
                &instant_acme::NewAccount {
                    contact: &[],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                format!("{base}/acme/directory"),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("newAccount through the proxy: {e}"));
        account
    });

    let run_id = std::process::id();
    for (round, trap) in [Trap::HoldResponse, Trap::OnRequest]
        .into_iter()
        .enumerate()
    {
        let (a, b) = if round == 0 { (0, 1) } else { (1, 0) };
        proxy.set_target(c.edges[a].https);
        let name = format!("finalize-{round}-{run_id}.fault.test");
        let csr = csr_der(&name);
        let mut order = rt.block_on(ready_order(&account, &name, &tokens));
        let finalizes_before = proxy.state.finalizes.load(Ordering::SeqCst);
        proxy.arm(trap);
        let sprung = Arc::new(AtomicBool::new(false));
        // The killer: waits for the trap, kills edge A, points the proxy at edge B.
        let killer = {
            let st = proxy.state.clone();
            let sprung = sprung.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while st.sprung.lock().expect("lock").is_none() {
                    if Instant::now() > deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                sprung.store(true, Ordering::SeqCst);
                st.sprung.lock().expect("lock").clone()
            })
        };
        let (pem, attempts) = rt.block_on(async {
            let fin = tokio::spawn({
                let csr = csr.clone();
                async move {
                    let r = finalize_with_retry(&mut order, &csr).await;
                    (r, order)
                }
            });
            // Kill A as soon as the trap sprang, before the client can act on anything.
            while !sprung.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if fin.is_finished() {
                    break;
                }
            }
            c.edges[a].kill9();
            proxy.set_target(c.edges[b].https);
            let ((pem, attempts), _order) = fin.await.expect("finalize task");
            (pem, attempts)
        });
        let held = killer.join().expect("killer").unwrap_or_else(|| {
            panic!(
                "the proxy never saw the finalize (trap {trap:?})\n{}",
                c.logs()
            )
        });
        if trap == Trap::HoldResponse {
            // Edge A did answer finalize (successfully) — the client just never saw it.
            let head = String::from_utf8_lossy(&held[..held.len().min(64)]).into_owned();
            assert!(
                head.starts_with("HTTP/1.1 200"),
                "A's finalize answer: {head}"
            );
            // So the order had left `ready`: the client must not have finalized it again.
            assert_eq!(
                attempts, 1,
                "finalize sent again for an order A had finalized"
            );
        }
        assert!(
            proxy.state.finalizes.load(Ordering::SeqCst) > finalizes_before,
            "finalize passed the proxy"
        );
        // One certificate, the one stored, for this order's name.
        let got = serial_of_pem(&pem, &scratch);
        eprintln!(
            "round {round} ({trap:?}): edge {a} killed, {attempts} finalize call(s) by the client, certificate {got}"
        );
        let stored = c.serials_naming(&name);
        assert_eq!(
            stored.iter().map(|x| normal_serial(x)).collect::<Vec<_>>(),
            vec![got.clone()],
            "round {round} ({trap:?}, {attempts} finalize calls): stored certificates for {name}\n{}",
            c.logs()
        );
        // Edge A comes back for the next round (same config, same shared state).
        c.edges[a].start();
    }
    c.assert_audit_verifies();
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL restart under load.

/// One EST simpleenroll through `edge` with curl: (HTTP status, 0 when no answer; seconds).
fn enroll(c: &Cluster, edge: SocketAddr, body: &Path, out: &Path) -> (u16, f64) {
    let creds = c.fleet.credentials();
    let userpass = format!(
        "{}:{}",
        creds.get("est_username").map(String::as_str).unwrap_or(""),
        creds.get("est_password").map(String::as_str).unwrap_or("")
    );
    let t = Instant::now();
    let (_, code, _) = run(Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(c.fleet.root_pem())
        .args(["-u", &userpass, "-o"])
        .arg(out)
        .args([
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/pkcs10",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!("https://{edge}/.well-known/est/simpleenroll")));
    (code.trim().parse().unwrap_or(0), t.elapsed().as_secs_f64())
}

/// The serial of the certificate in an EST answer (base64 certs-only PKCS#7), by OpenSSL.
fn serial_of_p7(p7: &Path) -> String {
    let (ok, out, err) = run(Command::new("sh").arg("-c").arg(format!(
        "base64 -d '{}' | openssl pkcs7 -inform DER -print_certs | openssl x509 -noout -serial",
        p7.display()
    )));
    assert!(ok, "decoding {}: {err}", p7.display());
    normal_serial(out.trim().trim_start_matches("serial="))
}

/// One call's record: when it started and ended (seconds since the load began), its status.
#[derive(Clone, Debug)]
struct Call {
    start: f64,
    end: f64,
    status: u16,
}

#[test]
fn postgres_restart_under_load_fails_calls_cleanly_and_loses_or_duplicates_nothing() {
    use base64::Engine;
    let mut c = Cluster::start(1, None);
    let scratch = c.fleet.scratch();
    let edge = c.edges[0].https;
    let run_id = std::process::id();
    let workers = 4;
    let per_worker = 10;
    let names: Vec<Vec<String>> = (0..workers)
        .map(|w| {
            (0..per_worker)
                .map(|i| format!("pg{w}x{i}-{run_id}.fault.test"))
                .collect()
        })
        .collect();
    for n in names.iter().flatten() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(csr_der(n));
        std::fs::write(scratch.join(format!("{n}.b64")), b64).expect("csr body");
    }
    let calls: Arc<Mutex<Vec<Call>>> = Arc::new(Mutex::new(Vec::new()));
    let ok_count = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let deadline = Duration::from_secs(180);
    // Each worker enrolls its names one after the other; a name that fails is sent again (the
    // same CSR: the edge's idempotency key makes the retry collect the same certificate).
    let handles: Vec<_> = names
        .iter()
        .cloned()
        .map(|list| {
            let calls = calls.clone();
            let ok_count = ok_count.clone();
            let creds = c.fleet.credentials();
            let root = c.fleet.root_pem();
            let scratch = scratch.clone();
            std::thread::spawn(move || {
                for n in list {
                    loop {
                        let body = scratch.join(format!("{n}.b64"));
                        let out = scratch.join(format!("{n}.p7"));
                        let start = t0.elapsed().as_secs_f64();
                        let userpass = format!(
                            "{}:{}",
                            creds.get("est_username").map(String::as_str).unwrap_or(""),
                            creds.get("est_password").map(String::as_str).unwrap_or("")
                        );
                        let (_, code, _) = run(Command::new("curl")
                            .args(["-sS", "--max-time", "20", "--cacert"])
                            .arg(&root)
                            .args(["-u", &userpass, "-o"])
                            .arg(&out)
                            .args([
                                "-w",
                                "%{http_code}",
                                "-H",
                                "Content-Type: application/pkcs10",
                            ])
                            .arg("--data-binary")
                            .arg(format!("@{}", body.display()))
                            .arg(format!("https://{edge}/.well-known/est/simpleenroll")));
                        let status = code.trim().parse().unwrap_or(0);
                        let end = t0.elapsed().as_secs_f64();
                        calls
                            .lock()
                            .expect("calls")
                            .push(Call { start, end, status });
                        if status == 200 {
                            ok_count.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if t0.elapsed() > deadline {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
        })
        .collect();
    // Let some enrollments through, then stop PostgreSQL (fast shutdown) mid-load.
    while ok_count.load(Ordering::SeqCst) < 6 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no enrollments before the restart:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped_at = t0.elapsed().as_secs_f64();
    c.pg.stop();
    std::thread::sleep(Duration::from_secs(4));
    let resumed_at = t0.elapsed().as_secs_f64();
    c.pg.resume()
        .unwrap_or_else(|e| panic!("restarting postgres: {e}"));
    for h in handles {
        h.join().expect("worker");
    }
    let calls = calls.lock().expect("calls").clone();
    let total = workers * per_worker;
    assert_eq!(
        ok_count.load(Ordering::SeqCst),
        total,
        "every enrollment succeeds after the restart (no core restarted)\n{calls:?}\n{}",
        c.logs()
    );
    // The cores were never restarted.
    assert!(
        c.core2.as_mut().is_some_and(|g| g.is_running()),
        "core 2 died"
    );
    assert!(
        c.fleet.core().is_some_and(|g| g.is_running()),
        "core 1 died"
    );
    // Calls were in flight across the outage, and each that failed failed with an HTTP error
    // (no dropped connection, no hang past its deadline).
    let overlapping = calls
        .iter()
        .filter(|k| k.start < resumed_at && k.end > stopped_at)
        .count();
    assert!(overlapping >= 1, "no call overlapped the outage: {calls:?}");
    for k in &calls {
        assert!(
            k.status == 200 || (400..600).contains(&k.status),
            "a call ended without an HTTP answer: {k:?}\n{}",
            c.logs()
        );
        assert!(k.end - k.start < 15.0, "a call hung: {k:?}");
    }
    let failed = calls.iter().filter(|k| k.status != 200).count();
    eprintln!(
        "{} calls, {failed} failed during the outage ({stopped_at:.1}..{resumed_at:.1} s), {overlapping} overlapped it",
        calls.len()
    );
    // Nothing lost, nothing duplicated: one stored certificate per name, the client's.
    let mut stored_total = 0;
    for n in names.iter().flatten() {
        let got = serial_of_p7(&scratch.join(format!("{n}.p7")));
        let stored: Vec<String> = c
            .serials_naming(n)
            .iter()
            .map(|x| normal_serial(x))
            .collect();
        assert_eq!(stored, vec![got], "stored certificates for {n}");
        stored_total += stored.len();
    }
    let all = c.sql(&format!(
        "SELECT count(*) FROM certificates WHERE position(convert_to('-{run_id}.fault.test', 'UTF8') in cert_der) > 0"
    ));
    assert_eq!(all, stored_total.to_string());
    // An issuance right now works too, and the audit chain (both cores, across the restart)
    // verifies.
    let n = format!("after-{run_id}.fault.test");
    let body = scratch.join("after.b64");
    std::fs::write(
        &body,
        base64::engine::general_purpose::STANDARD.encode(csr_der(&n)),
    )
    .expect("body");
    let (code, _) = enroll(&c, edge, &body, &scratch.join("after.p7"));
    assert_eq!(code, 200, "{}", c.logs());
    c.assert_audit_verifies();
}
