//! `certgate up --fleet N`: the scale-out shape on one machine — one signer, two cores sharing a
//! PostgreSQL store, N edges sharing Redis — with real `postgres` and `redis-server` processes
//! from the Debian packages on free loopback ports.
//!
//! The fleet lives in `DATA_DIR/fleet/`, a throwaway data dir of its own (own dev CA, own
//! database): it is wiped and rebuilt at every start, so a fleet run never touches the embedded
//! data dir `certgate up` uses, and PostgreSQL/Redis never outlive their CA. The directory is
//! kept after the stop so logs can be read.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use certgate_devservers::{pg::PgServer, redis::RedisServer};
use tokio::signal::unix::{SignalKind, signal};

use crate::bootstrap::{self, Ports};
use crate::datadir::{DataDir, write_file};
use crate::error::{CliError, Result, io};
use crate::procs::{Proc, http_status, socket_accepts};

/// How long each child gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);
/// Cores of a fleet: two, so that every edge has somewhere to fail over to.
const CORES: usize = 2;
/// Marks a directory as ours to wipe.
const MARKER: &str = ".certgate-fleet";

/// One edge of the fleet: its listeners and process.
struct Edge {
    ports: Ports,
    proc: Proc,
}

/// Runs the fleet until Ctrl-C / SIGTERM, or until one process dies.
pub async fn up_fleet(dd: &DataDir, ports: Ports, edges: usize) -> Result<()> {
    if !(1..=16).contains(&edges) {
        return Err(CliError::Process(format!(
            "--fleet takes 1 to 16 edges, not {edges}"
        )));
    }
    let mut term = signal(SignalKind::terminate()).map_err(io("installing SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io("installing SIGINT handler"))?;

    let root = dd.root().join("fleet");
    wipe(&root)?;
    let fdd = DataDir::open(&root)?;
    write_file(
        &root.join(MARKER),
        b"certgate up --fleet: wiped at every start\n",
        0o644,
    )?;

    println!("starting a fleet in {}", root.display());
    println!("  · starting postgres (Debian postgresql) and redis-server on free loopback ports");
    let (pg_dir, redis_dir) = (root.join("postgres"), root.join("redis"));
    let servers = tokio::task::spawn_blocking(move || {
        let pg = PgServer::start_in(Some(&pg_dir))?;
        let redis = RedisServer::start_in(Some(&redis_dir))?;
        Ok::<_, certgate_devservers::Error>((pg, redis))
    })
    .await
    .map_err(|e| CliError::Process(format!("starting postgres and redis: {e}")))?
    .map_err(|e| CliError::Process(e.to_string()))?;
    let (pg, redis) = servers;

    let mut procs: Vec<Proc> = Vec::new();
    let mut edge_list: Vec<Edge> = Vec::new();
    let started = tokio::select! {
        r = start(&fdd, ports, edges, &pg, &redis, &mut procs, &mut edge_list) => r,
        _ = term.recv() => Err(CliError::Process("interrupted during start-up".into())),
        _ = int.recv() => Err(CliError::Process("interrupted during start-up".into())),
    };
    let issuer = match started {
        Ok(issuer) => issuer,
        Err(e) => {
            stop_all(&mut edge_list, &mut procs).await;
            stop_servers(pg, redis).await;
            return Err(e);
        }
    };

    let mut pids = String::new();
    for p in procs.iter().chain(edge_list.iter().map(|e| &e.proc)) {
        pids.push_str(&format!("{}={}\n", p.name, p.pid().unwrap_or(0)));
    }
    pids.push_str(&format!(
        "postgres={}\nredis-server={}\n",
        pg.pid(),
        redis.pid()
    ));
    write_file(&fdd.run_dir().join("pids"), pids.as_bytes(), 0o644)?;
    print_banner(&fdd, &issuer, &edge_list, &procs, &pg, &redis);

    // Poll rather than select over N children: a death is noticed within 200 ms either way.
    let died = loop {
        tokio::select! {
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(p) = procs.iter_mut().chain(edge_list.iter_mut().map(|e| &mut e.proc))
                    .find_map(|p| p.exited().is_some().then_some(p))
                {
                    break Some(p.died());
                }
            }
        }
    };
    match &died {
        None => println!("stopping…"),
        Some(e) => {
            eprintln!("certgate up --fleet: a process exited unexpectedly; stopping the rest\n{e}")
        }
    }
    stop_all(&mut edge_list, &mut procs).await;
    stop_servers(pg, redis).await;
    let _ = std::fs::remove_file(fdd.run_dir().join("pids"));
    match died {
        None => {
            println!("stopped");
            Ok(())
        }
        Some(e) => Err(e),
    }
}

/// Removes a previous fleet directory, but only one this command made.
fn wipe(root: &Path) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    if !root.join(MARKER).exists() {
        return Err(CliError::Process(format!(
            "{} exists but was not made by `certgate up --fleet`; move it away",
            root.display()
        )));
    }
    // The PostgreSQL files belong to the `postgres` user when we run as root; root may remove them.
    std::fs::remove_dir_all(root).map_err(io(format!("removing {}", root.display())))
}

/// Configures and starts signer, cores and edges; returns the issuing CA id.
async fn start(
    fdd: &DataDir,
    ports: Ports,
    edges: usize,
    pg: &PgServer,
    redis: &RedisServer,
    procs: &mut Vec<Proc>,
    edge_list: &mut Vec<Edge>,
) -> Result<String> {
    bootstrap::write_files(fdd, ports)?;
    let core_toml = read(&fdd.core_config())?;
    write_file(
        &fdd.core_config(),
        with_pg_store(&core_toml, pg, true, "certgate-core-1").as_bytes(),
        0o600,
    )?;

    let backends = bootstrap::init(fdd, ports, true)
        .await?
        .ok_or_else(|| CliError::Process("init did not leave the backends running".into()))?;
    let bootstrap::Backends {
        signer,
        core,
        clients,
    } = backends;
    procs.push(signer);
    procs.push(core);

    // Core 2: the same configuration on another socket; core 1 applied the migrations.
    for n in 2..=CORES {
        let cfg = fdd.core_dir().join(format!("core-{n}.toml"));
        let text = with_pg_store(&core_toml, pg, false, &format!("certgate-core-{n}")).replace(
            "socket = \"../run/core.sock\"",
            &format!("socket = \"../run/core-{n}.sock\""),
        );
        write_file(&cfg, text.as_bytes(), 0o600)?;
        println!("  · starting certgate-core #{n}");
        let mut core = Proc::spawn(
            "certgate-core",
            &["--config".as_ref(), cfg.as_os_str()],
            &fdd.log_dir().join(format!("core-{n}.log")),
        )?;
        let sock = fdd.run_dir().join(format!("core-{n}.sock"));
        let ready = core
            .wait_until("socket", Duration::from_secs(30), || socket_accepts(&sock))
            .await;
        procs.push(core);
        ready?;
    }

    bootstrap::ensure_edge_est(fdd)?;
    let edge_toml = fleet_edge_toml(&read(&fdd.edge_config())?, &redis.url());
    for i in 1..=edges {
        let p = if i == 1 { ports } else { free_ports()? };
        let cfg = if i == 1 {
            fdd.edge_config()
        } else {
            fdd.edge_dir().join(format!("edge-{i}.toml"))
        };
        write_file(&cfg, with_ports(&edge_toml, ports, p).as_bytes(), 0o600)?;
        println!("  · starting certgate-edge #{i} (https {})", p.https);
        let mut proc = Proc::spawn(
            "certgate-edge",
            &["--config".as_ref(), cfg.as_os_str()],
            &fdd.log_dir().join(format!("edge-{i}.log")),
        )?;
        let ready = proc
            .wait_until("admin /readyz", Duration::from_secs(30), || async move {
                http_status(p.admin, "/readyz").await == Some(200)
            })
            .await;
        edge_list.push(Edge { ports: p, proc });
        ready?;
    }

    let issuer = clients
        .core
        .clone()
        .get_ca_chain(certgate_proto::core::GetCaChainRequest {
            tenant: bootstrap::DEFAULT_TENANT.into(),
            issuer_id: String::new(),
        })
        .await
        .map(|r| r.into_inner().issuer_id)
        .unwrap_or_else(|_| bootstrap::ISSUING_ID.to_owned());
    Ok(issuer)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))
}

/// The core config with its SQLite `store = "core.db"` line replaced by an inline PostgreSQL
/// `[store]` table (inline, so the keys after it stay top-level).
fn with_pg_store(core_toml: &str, pg: &PgServer, migrate: bool, app: &str) -> String {
    let mut store = format!(
        "store = {{ backend = \"postgres\", url = \"{}\", password_file = \"{}\", application_name = \"{app}\", pool_size = 8",
        pg.url,
        pg.password_file.display()
    );
    if migrate {
        store.push_str(&format!(
            ", migrate_url = \"{}\", migrate_password_file = \"{}\"",
            pg.owner_url,
            pg.owner_password_file.display()
        ));
    }
    store.push_str(" }");
    core_toml.replace("store = \"core.db\"", &store)
}

/// The edge config of a fleet edge: every core in the pool, fleet state in Redis.
fn fleet_edge_toml(edge_toml: &str, redis_url: &str) -> String {
    let cores: Vec<String> = (1..=CORES)
        .map(|n| match n {
            1 => "\"unix:../run/core.sock\"".to_owned(),
            n => format!("\"unix:../run/core-{n}.sock\""),
        })
        .collect();
    let mut text = edge_toml.replace(
        "core_socket = \"../run/core.sock\"",
        &format!("cores = [{}]", cores.join(", ")),
    );
    text.push_str(&format!(
        "\n# Fleet state shared by every edge (docs/operations.md, Redis).\n[redis]\nurl = \"{redis_url}\"\n"
    ));
    text
}

/// `edge_toml` (written for `from`) with its listeners moved to `to`.
fn with_ports(edge_toml: &str, from: Ports, to: Ports) -> String {
    edge_toml
        .replace(&format!("\"{}\"", from.https), &format!("\"{}\"", to.https))
        .replace(&format!("\"{}\"", from.http), &format!("\"{}\"", to.http))
        .replace(&format!("\"{}\"", from.admin), &format!("\"{}\"", to.admin))
        .replace(
            &format!("https://{}\"", from.https),
            &format!("https://{}\"", to.https),
        )
}

/// Three loopback ports that were free a moment ago (HTTPS also claims the UDP port for HTTP/3).
fn free_ports() -> Result<Ports> {
    let port = || -> Result<SocketAddr> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?;
        l.local_addr().map_err(io("reading a free port"))
    };
    // Hold all three at once so they differ.
    let (a, b, c) = (port()?, port()?, port()?);
    Ok(Ports {
        https: a,
        http: b,
        admin: c,
    })
}

/// Front to back: edges first (nothing new arrives), then cores, then the signer.
async fn stop_all(edges: &mut [Edge], procs: &mut [Proc]) {
    for e in edges.iter_mut() {
        e.proc.stop(GRACE).await;
    }
    for p in procs.iter_mut().rev() {
        p.stop(GRACE).await;
    }
}

async fn stop_servers(mut pg: PgServer, mut redis: RedisServer) {
    let _ = tokio::task::spawn_blocking(move || {
        redis.stop();
        pg.stop();
    })
    .await;
}

fn print_banner(
    fdd: &DataDir,
    issuer: &str,
    edges: &[Edge],
    procs: &[Proc],
    pg: &PgServer,
    redis: &RedisServer,
) {
    println!();
    println!(
        "certgate fleet is up: {} edge(s), {CORES} cores, 1 signer",
        edges.len()
    );
    for (i, e) in edges.iter().enumerate() {
        let (https, http, admin) = (e.ports.https, e.ports.http, e.ports.admin);
        println!("  edge #{}  pid {}", i + 1, e.proc.pid().unwrap_or(0));
        println!("    ACME directory   https://{https}/acme/directory");
        println!("    EST              https://{https}/.well-known/est/");
        println!("    SCEP             http://{http}/scep");
        println!("    CMP              http://{http}/.well-known/cmp");
        println!("    OCSP             http://{http}/ocsp");
        println!("    CRL              http://{http}/crl/{issuer}/full.crl");
        println!("    metrics          http://{admin}/metrics");
    }
    let pids: Vec<String> = procs
        .iter()
        .map(|p| format!("{}={}", p.name, p.pid().unwrap_or(0)))
        .collect();
    println!("  processes        {}", pids.join(" "));
    println!("  postgres         {} (pid {})", pg.url, pg.pid());
    println!("  redis            {} (pid {})", redis.url(), redis.pid());
    println!("  data dir         {}", fdd.root().display());
    println!("  root CA          {}", fdd.root_pem().display());
    println!("  dev credentials  {}", fdd.dev_credentials().display());
    println!("  issuing CA       {issuer}");
    println!("Press Ctrl-C to stop.");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(base: u16) -> Ports {
        Ports {
            https: SocketAddr::from(([127, 0, 0, 1], base)),
            http: SocketAddr::from(([127, 0, 0, 1], base + 1)),
            admin: SocketAddr::from(([127, 0, 0, 1], base + 2)),
        }
    }

    #[test]
    fn edge_config_moves_every_listener_and_the_acme_base_url() {
        let text = "core_socket = \"../run/core.sock\"\n[listen]\nhttps = \"127.0.0.1:8443\"\nhttp = \"127.0.0.1:8444\"\nadmin = \"127.0.0.1:8445\"\n[acme]\nbase_url = \"https://127.0.0.1:8443\"\n";
        let fleet = fleet_edge_toml(text, "redis://127.0.0.1:1/0");
        let moved = with_ports(&fleet, ports(8443), ports(20000));
        let table: toml::Table = moved.parse().expect("valid toml");
        assert_eq!(table["listen"]["https"].as_str(), Some("127.0.0.1:20000"));
        assert_eq!(table["listen"]["http"].as_str(), Some("127.0.0.1:20001"));
        assert_eq!(table["listen"]["admin"].as_str(), Some("127.0.0.1:20002"));
        assert_eq!(
            table["acme"]["base_url"].as_str(),
            Some("https://127.0.0.1:20000")
        );
        assert_eq!(
            table["redis"]["url"].as_str(),
            Some("redis://127.0.0.1:1/0")
        );
        let cores = table["cores"].as_array().expect("cores list");
        assert_eq!(cores.len(), CORES);
        assert!(!table.contains_key("core_socket"));
    }
}
