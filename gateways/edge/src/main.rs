//! `certgate-edge --config FILE`: the stateless protocol edge (see the library docs).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// certgate's protocol edge.
#[derive(Parser)]
#[command(name = "certgate-edge", version)]
struct Args {
    /// The edge configuration file (TOML; docs/operations.md).
    #[arg(long)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    // One crypto provider for the whole process (CRATES.md pitfall 1): if anything ever turns on
    // ring too, rustls would otherwise panic when building a config without an explicit provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let cfg = match certgate_edge::config::EdgeConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("certgate-edge: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("certgate-edge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            // Opt-in (CERTGATE_PARENT_PID): a SIGKILLed `certgate up` must not leave us running.
            tokio::select! {
                _ = wait_for_signal() => {},
                _ = certgate_proto::parent::parent_gone() => {},
            }
            let _ = tx.send(true);
        });
        match certgate_edge::run(cfg, rx).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("certgate-edge: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
