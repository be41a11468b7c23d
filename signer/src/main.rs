//! `certgate-signer`: serve the signer, or create a key-encryption key.
#![forbid(unsafe_code)]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The certgate signer: the only process that holds CA private keys (docs/signer.md).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Write a fresh random 32-byte key-encryption key (base64) to FILE, mode 0600. Refuses to
    /// overwrite an existing file.
    InitKek {
        /// Where to write the KEK.
        file: PathBuf,
    },
    /// Check an audit log's hash chain and sequence; exits non-zero on an edit, gap or reorder.
    VerifyAudit {
        /// The audit log (JSON lines).
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::InitKek { file } => init_kek(&file),
        Command::VerifyAudit { file } => {
            let bytes = std::fs::read(&file).with_context(|| file.display().to_string())?;
            let n = certgate_signer::audit::verify(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("{}: {n} records, chain intact", file.display());
            Ok(())
        }
        Command::Serve => {
            let path = cli.config.context("--config FILE is required to serve")?;
            serve(path)
        }
    }
}

fn init_kek(file: &PathBuf) -> anyhow::Result<()> {
    let kek = certgate_signer::keystore::Kek::generate()?;
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("{} (refusing to overwrite an existing KEK)", file.display()))?;
    f.write_all(kek.to_base64().as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    tracing::info!(file = %file.display(), "key-encryption key written");
    Ok(())
}

fn serve(config_path: PathBuf) -> anyhow::Result<()> {
    let config = certgate_signer::config::Config::load(&config_path)?;
    certgate_signer::hardening::harden();
    // mlockall(MCL_FUTURE) locks every thread stack in full: keep the blocking pool (RSA, PKCS#11,
    // batches, key generation) small.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(32)
        .build()?;
    runtime.block_on(async move {
        let running = certgate_signer::server::start(&config).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = running_wait(running) => r,
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; exiting"); Ok(()) }
            _ = term.recv() => { tracing::info!("terminated; exiting"); Ok(()) }
            // Opt-in (CERTGATE_PARENT_PID): a SIGKILLed `certgate up` must not leave us running.
            _ = certgate_proto::parent::parent_gone() => { tracing::info!("parent gone; exiting"); Ok(()) }
        }
    })
}

async fn running_wait(running: certgate_signer::server::Running) -> anyhow::Result<()> {
    running.wait().await
}
