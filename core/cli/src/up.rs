//! `certgate up`: init if needed, then run the signer, the core and the edge as three processes
//! until Ctrl-C / SIGTERM, or until one of them dies (then stop the rest and exit non-zero).

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::bootstrap::{self, Ports};
use crate::datadir::{DataDir, write_file};
use crate::error::{CliError, Result, io};
use crate::procs::{Proc, http_status};

/// How long each child gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// Runs the fleet. `ports_given` rewrites the edge config with `ports`.
pub async fn up(dd: &DataDir, ports: Ports, ports_given: bool) -> Result<()> {
    // Without port flags, an existing edge config decides (an earlier `init --http …`).
    let ports = if ports_given {
        ports
    } else {
        edge_ports(dd).unwrap_or(ports)
    };
    // Signal handlers first, so a Ctrl-C during start-up still stops what has started.
    let mut term = signal(SignalKind::terminate()).map_err(io("installing SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io("installing SIGINT handler"))?;

    let start = async {
        let backends = bootstrap::init(dd, ports, true)
            .await?
            .ok_or_else(|| CliError::Process("init did not leave the backends running".into()))?;
        if ports_given {
            bootstrap::write_edge_config(dd, ports, true)?;
        }
        bootstrap::ensure_edge_est(dd)?;
        println!("  · starting certgate-edge");
        let cfg = dd.edge_config();
        let mut edge = match Proc::spawn(
            "certgate-edge",
            &["--config".as_ref(), cfg.as_os_str()],
            &dd.log_dir().join("edge.log"),
        ) {
            Ok(e) => e,
            Err(e) => {
                backends.stop().await;
                return Err(e);
            }
        };
        let ready = edge
            .wait_until("admin /readyz", Duration::from_secs(30), || async move {
                http_status(ports.admin, "/readyz").await == Some(200)
            })
            .await;
        if let Err(e) = ready {
            edge.stop(GRACE).await;
            backends.stop().await;
            return Err(e);
        }
        Ok((backends, edge))
    };
    let (backends, mut edge) = tokio::select! {
        r = start => r?,
        _ = term.recv() => return Err(CliError::Process("interrupted during start-up".into())),
        _ = int.recv() => return Err(CliError::Process("interrupted during start-up".into())),
    };
    let issuer = backends
        .clients
        .core
        .clone()
        .get_ca_chain(certgate_proto::core::GetCaChainRequest {
            tenant: bootstrap::DEFAULT_TENANT.into(),
            issuer_id: String::new(),
        })
        .await
        .map(|r| r.into_inner().issuer_id)
        .unwrap_or_else(|_| bootstrap::ISSUING_ID.to_owned());
    let bootstrap::Backends {
        mut signer,
        mut core,
        ..
    } = backends;

    let pids = format!(
        "signer={}\ncore={}\nedge={}\n",
        signer.pid().unwrap_or(0),
        core.pid().unwrap_or(0),
        edge.pid().unwrap_or(0)
    );
    write_file(&dd.run_dir().join("pids"), pids.as_bytes(), 0o644)?;
    print_banner(dd, ports, &issuer, [&signer, &core, &edge]);

    let died: Option<&'static str> = tokio::select! {
        _ = term.recv() => None,
        _ = int.recv() => None,
        _ = signer.wait() => Some("certgate-signer"),
        _ = core.wait() => Some("certgate-core"),
        _ = edge.wait() => Some("certgate-edge"),
    };
    match died {
        None => println!("stopping…"),
        Some(name) => eprintln!("certgate up: {name} exited unexpectedly; stopping the others"),
    }
    // Front to back: nothing new arrives while the back ends finish what is in flight.
    edge.stop(GRACE).await;
    core.stop(GRACE).await;
    signer.stop(GRACE).await;
    let _ = std::fs::remove_file(dd.run_dir().join("pids"));
    match died {
        None => {
            println!("stopped");
            Ok(())
        }
        Some(name) => {
            let p = [&mut signer, &mut core, &mut edge]
                .into_iter()
                .find(|p| p.name == name);
            Err(match p {
                Some(p) => p.died(),
                None => CliError::Process(format!("{name} exited")),
            })
        }
    }
}

fn print_banner(dd: &DataDir, ports: Ports, issuer: &str, procs: [&Proc; 3]) {
    let https = ports.https;
    let http = ports.http;
    let admin = ports.admin;
    println!();
    println!("certgate is up");
    println!("  ACME directory   https://{https}/acme/directory");
    println!("  EST              https://{https}/.well-known/est/");
    println!("  SCEP             http://{http}/scep");
    println!("  CMP              http://{http}/.well-known/cmp");
    println!("  OCSP             http://{http}/ocsp");
    println!("  CRL              http://{http}/crl/{issuer}/full.crl");
    println!("  CA certificate   http://{http}/ca/{issuer}.der");
    println!("  metrics          http://{admin}/metrics   (health: /healthz, /readyz)");
    println!("  data dir         {}", dd.root().display());
    println!("  root CA          {}", dd.root_pem().display());
    println!("  CA chain         {}", dd.chain_pem().display());
    println!("  dev credentials  {}", dd.dev_credentials().display());
    println!("  issuing CA       {issuer}");
    let pids: Vec<String> = procs
        .iter()
        .map(|p| format!("{}={}", p.name, p.pid().unwrap_or(0)))
        .collect();
    println!("  processes        {}", pids.join(" "));
    println!("Press Ctrl-C to stop.");
}

/// The listener addresses in an existing edge config, if it has all three.
fn edge_ports(dd: &DataDir) -> Option<Ports> {
    let text = std::fs::read_to_string(dd.edge_config()).ok()?;
    let table: toml::Table = text.parse().ok()?;
    let listen = table.get("listen")?.as_table()?;
    let addr = |k: &str| listen.get(k)?.as_str()?.parse().ok();
    Some(Ports {
        https: addr("https")?,
        http: addr("http")?,
        admin: addr("admin")?,
    })
}
