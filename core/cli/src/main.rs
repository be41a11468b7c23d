//! `certgate`: the command line of the certgate fleet.
//!
//! `init` prepares a data directory, `up` runs the signer, core and edge as separate processes
//! (found next to this executable), and the other subcommands administer a running core over its
//! Unix socket. This binary links none of the signer's key code (I-1, checked from cargo
//! metadata): CA keys are only ever created inside `certgate-signer`.

mod acme;
mod bootstrap;
mod client;
mod cmp;
mod commands;
mod datadir;
mod error;
mod fleet;
mod fleet_up;
mod keys;
mod pem;
mod procs;
mod request;
mod rollover;
mod scep;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::bootstrap::Ports;
use crate::client::Clients;
use crate::commands::StartWhat;
use crate::datadir::DataDir;
use crate::error::Result;

#[derive(Parser)]
#[command(
    name = "certgate",
    version,
    about = "certgate: a PKI protocol gateway fleet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct DirArg {
    /// The data directory.
    #[arg(
        long,
        default_value = ".certgate",
        env = "CERTGATE_DATA_DIR",
        global = true
    )]
    data_dir: PathBuf,
}

#[derive(Args, Clone, Copy)]
struct PortArgs {
    /// Edge HTTPS listener (ACME, EST).
    #[arg(long)]
    https: Option<SocketAddr>,
    /// Edge plain HTTP listener (OCSP, CRL, SCEP, CMP, AIA).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Admin listener (health, metrics).
    #[arg(long)]
    admin: Option<SocketAddr>,
}

impl PortArgs {
    fn given(&self) -> bool {
        self.https.is_some() || self.http.is_some() || self.admin.is_some()
    }
    fn ports(&self) -> Ports {
        Ports {
            https: self
                .https
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8443))),
            http: self
                .http
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
            admin: self
                .admin
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9090))),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Prepare a data directory (KEK, configs, dev CA hierarchy, edge certificate, dev
    /// credentials). Safe to run again.
    Init {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        ports: PortArgs,
    },
    /// Run the fleet (signer, core, edge) until Ctrl-C; initialises the data dir first if needed.
    Up {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        ports: PortArgs,
        /// Run the scale-out shape instead: N edges, two cores on PostgreSQL, Redis, one signer,
        /// with postgres and redis-server from the Debian packages on free loopback ports, in a
        /// throwaway DATA_DIR/fleet (wiped at every start). Edge 1 uses the port flags; the
        /// others get free ports (printed).
        #[arg(long, value_name = "N")]
        fleet: Option<usize>,
    },
    /// CA hierarchy: list, init, rotate, ceremonies.
    Ca {
        #[command(flatten)]
        dir: DirArg,
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Ceremony custodian keys.
    Custodian {
        /// Accepted for uniformity with the other subcommands; keys are written where `--out`
        /// says.
        #[command(flatten)]
        _dir: DirArg,
        #[command(subcommand)]
        command: CustodianCommand,
    },
    /// Certificate profiles.
    Profile {
        #[command(flatten)]
        dir: DirArg,
        #[command(subcommand)]
        command: ProfileCommand,
    },
    /// Certificates.
    Cert {
        #[command(flatten)]
        dir: DirArg,
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Revoke a certificate by serial.
    Revoke {
        #[command(flatten)]
        dir: DirArg,
        /// Serial number, hex.
        #[arg(long)]
        serial: String,
        /// RFC 5280 CRLReason code (0 unspecified, 1 keyCompromise, 4 superseded, 5
        /// cessationOfOperation…).
        #[arg(long, default_value_t = 0)]
        reason: u32,
        /// Tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// The audit chain.
    Audit {
        #[command(flatten)]
        dir: DirArg,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// ACME: External Account Binding keys and tenant settings.
    Acme {
        #[command(flatten)]
        dir: DirArg,
        #[command(subcommand)]
        command: AcmeCommand,
    },
    /// CMP: MAC shared secrets and the tenant's RA (docs/cmp.md).
    Cmp {
        #[command(flatten)]
        dir: DirArg,
        #[command(subcommand)]
        command: CmpCommand,
    },
    /// SCEP: challenge passwords (docs/scep.md).
    Scep {
        #[command(flatten)]
        dir: DirArg,
        #[command(subcommand)]
        command: ScepCommand,
    },
    /// Fleet mTLS identities for edges and cores on other hosts (docs/operations.md).
    Fleet {
        #[command(flatten)]
        dir: DirArg,
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Certificate requests held for manual approval (profiles with `approval = "manual"`).
    Request {
        #[command(flatten)]
        dir: DirArg,
        #[command(subcommand)]
        command: RequestCommand,
    },
}

#[derive(Subcommand)]
enum RequestCommand {
    /// The tenant's requests, oldest first.
    List {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Only requests in this state: pending, approved, denied, expired.
        #[arg(long, default_value = "")]
        state: String,
    },
    /// Approve a pending request: it is issued now, once; the client's next poll gets it.
    Approve {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// The request id (from `request list`).
        id: String,
        /// Why (audited).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deny a pending request: the client's polls are refused from now on.
    Deny {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// The request id (from `request list`).
        id: String,
        /// Why (audited).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Issue a certificate with one SPIFFE ID (TLS client + server auth) from the tenant's
    /// issuing CA: writes OUT/NAME.pem (leaf + chain), OUT/NAME.key (0600), OUT/ca.pem.
    Cert {
        /// The SPIFFE ID, e.g. spiffe://certgate.local/edge/1.
        #[arg(long)]
        spiffe: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// File name stem (default: the SPIFFE ID's last path segment).
        #[arg(long)]
        name: Option<String>,
        /// Extra DNS SAN (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Validity in days (0 = the profile default, 30 days).
        #[arg(long, default_value_t = 0)]
        days: u64,
    },
}

#[derive(Subcommand)]
enum ScepCommand {
    /// Challenge passwords (PKCS#10 challengePassword), per tenant and optionally profile.
    Challenge {
        #[command(subcommand)]
        command: ScepChallengeCommand,
    },
}

#[derive(Subcommand)]
enum ScepChallengeCommand {
    /// Set the static challenge (--secret-file), or add a one-time challenge (--one-time;
    /// generated and printed once unless --secret-file is given).
    Put {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Restrict the challenge to this profile (empty = every profile of the tenant).
        #[arg(long, default_value = "")]
        profile: String,
        /// A one-time challenge, consumed by the first enrollment that uses it.
        #[arg(long)]
        one_time: bool,
        /// Read the challenge from this file (trailing newline ignored).
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CmpCommand {
    /// MAC shared secrets (PasswordBasedMac / PBMAC1), one per (tenant, reference).
    Secret {
        #[command(subcommand)]
        command: CmpSecretCommand,
    },
    /// The tenant's RA key and certificate that sign CMP responses.
    Ra {
        #[command(subcommand)]
        command: CmpRaCommand,
    },
}

#[derive(Subcommand)]
enum CmpSecretCommand {
    /// Create or replace a secret: generated and printed once, or read from --secret-file.
    Put {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// The reference (senderKID) clients send, e.g. `openssl cmp -ref`.
        #[arg(long)]
        reference: String,
        /// Read the secret from this file (trailing newline ignored) instead of generating one.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Delete a reference; its later MAC-protected requests are refused.
    Delete {
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        reference: String,
    },
}

#[derive(Subcommand)]
enum CmpRaCommand {
    /// Create the RA (no-op when it exists, unless --rotate); prints its chain as PEM.
    Create {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Replace the existing RA key and certificate.
        #[arg(long)]
        rotate: bool,
    },
}

#[derive(Subcommand)]
enum AcmeCommand {
    /// External Account Binding keys (RFC 8555 §7.3.4).
    Eab {
        #[command(subcommand)]
        command: EabCommand,
    },
    /// Set (replace) a tenant's ACME settings: directory meta and the EAB requirement.
    Settings {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// newAccount requires an External Account Binding.
        #[arg(long)]
        eab_required: bool,
        /// Terms of service URL (then newAccount needs termsOfServiceAgreed).
        #[arg(long)]
        tos: Option<String>,
        /// Website URL.
        #[arg(long)]
        website: Option<String>,
        /// A CAA identity (repeatable).
        #[arg(long)]
        caa: Vec<String>,
    },
}

#[derive(Subcommand)]
enum EabCommand {
    /// Create a key: prints its id and HMAC key (shown once; binds one account).
    Create {
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// List CAs.
    List {
        /// Only this tenant's issuing CAs (and shared ones); empty = all.
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Create what is missing of root → intermediate → issuing CA for a tenant, approving the
    /// ceremonies with one custodian key (dev: quorum 1).
    Init {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Custodian name (as in the core config).
        #[arg(long, default_value = "dev")]
        custodian: String,
        /// Custodian key; default DIR/custodians/dev.pem.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Start a rotation ceremony for a root or intermediate.
    Rotate {
        /// The CA to replace.
        #[arg(long)]
        ca_id: String,
        /// The new CA's id.
        #[arg(long)]
        new_id: String,
        #[arg(long, default_value = "p256")]
        key_type: String,
        #[arg(long, default_value_t = 1825)]
        validity_days: u64,
    },
    /// m-of-n ceremonies for roots and intermediates.
    Ceremony {
        #[command(subcommand)]
        command: CeremonyCommand,
    },
    /// Issuing-CA rollover of a tenant: stage a next CA (published, e.g. SCEP GetNextCACert),
    /// then activate it.
    Rollover {
        #[command(subcommand)]
        command: RolloverCommand,
    },
}

#[derive(Subcommand)]
enum RolloverCommand {
    /// Generate the next issuing CA (new signer key, certificate from the current issuer's
    /// parent) and stage it; it issues nothing until activated.
    Stage {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// The new CA's id (default: the current issuer's id + "-r" + the time).
        #[arg(long, default_value = "")]
        ca_id: String,
        /// The parent that signs it (default: the current issuer's parent).
        #[arg(long, default_value = "")]
        parent: String,
        /// Subject CN (default: the current issuer's).
        #[arg(long, default_value = "")]
        common_name: String,
        /// Validity in days (default 5 years, cut to the parent's).
        #[arg(long, default_value_t = 0)]
        validity_days: u64,
        /// Write the staged CA's chain (new CA first, root last) here as PEM.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make the staged CA the tenant's issuer; the previous one retires (keeps OCSP and CRLs).
    Activate {
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum CeremonyCommand {
    /// Start a ceremony creating a root (no --parent) or an intermediate (--parent).
    Start {
        /// New CA id.
        #[arg(long)]
        ca_id: String,
        /// Parent CA id (makes it an intermediate).
        #[arg(long)]
        parent: Option<String>,
        /// Subject common name.
        #[arg(long)]
        common_name: String,
        #[arg(long, default_value = "p256")]
        key_type: String,
        #[arg(long, default_value_t = 3650)]
        validity_days: u64,
        /// pathLenConstraint (intermediates).
        #[arg(long)]
        path_len: Option<u32>,
    },
    /// Approve: sign the ceremony digest with a custodian key.
    Approve {
        #[arg(long)]
        id: String,
        #[arg(long)]
        custodian: String,
        #[arg(long)]
        key: PathBuf,
    },
    /// Execute once the quorum is reached.
    Execute {
        #[arg(long)]
        id: String,
    },
    /// List ceremonies.
    List,
}

#[derive(Subcommand)]
enum CustodianCommand {
    /// Generate an Ed25519 custodian key: FILE (private, 0600) and FILE.pub.pem (public, for the
    /// core config's [[custodians]]).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// Create a profile, or a new version of it, from a TOML or JSON file.
    Create {
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        file: PathBuf,
        /// toml or json (default: from the file extension).
        #[arg(long)]
        format: Option<String>,
    },
    /// Latest version of every profile of a tenant.
    List {
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Every version of one profile.
    Versions {
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Issue a certificate for a CSR through Core.Issue; writes the leaf PEM.
    Issue {
        /// CSR, PEM or DER.
        #[arg(long)]
        csr: PathBuf,
        /// Where to write the certificate (PEM).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Profile; empty = the tenant's default.
        #[arg(long, default_value = "")]
        profile: String,
        /// Idempotency key; default SHA-256(tenant, profile, CSR), so a rerun returns the same
        /// certificate.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Validity in days; 0 = the profile's default.
        #[arg(long, default_value_t = 0)]
        validity_days: u64,
        /// Append the chain (issuing CA, intermediates) after the leaf.
        #[arg(long)]
        with_chain: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash-linked, signed audit chain.
    Verify,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("certgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("certgate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Init { dir, ports } => {
            let dd = DataDir::open(&dir.data_dir)?;
            bootstrap::init(&dd, ports.ports(), false).await?;
            Ok(())
        }
        Command::Up { dir, ports, fleet } => {
            let dd = DataDir::open(&dir.data_dir)?;
            match fleet {
                Some(n) => fleet_up::up_fleet(&dd, ports.ports(), n).await,
                None => up::up(&dd, ports.ports(), ports.given()).await,
            }
        }
        Command::Custodian {
            command: CustodianCommand::Keygen { out },
            ..
        } => {
            let mut public = out.clone().into_os_string();
            public.push(".pub.pem");
            let public = PathBuf::from(public);
            keys::custodian_keygen(&out, &public)?;
            println!(
                "wrote {} (keep it secret) and {}\nadd to the core config:\n[[custodians]]\nname = \"NAME\"\npublic_key = \"{}\"",
                out.display(),
                public.display(),
                public.display()
            );
            Ok(())
        }
        Command::Ca { dir, command } => {
            let dd = DataDir::existing(&dir.data_dir)?;
            let clients = Clients::for_dir(&dd);
            match command {
                CaCommand::List { tenant } => commands::ca_list(&clients, &tenant).await,
                CaCommand::Init {
                    tenant,
                    custodian,
                    key,
                } => {
                    let key = key.unwrap_or_else(|| dd.dev_custodian_key());
                    commands::ca_init(&clients, &tenant, &key, &custodian).await
                }
                CaCommand::Rotate {
                    ca_id,
                    new_id,
                    key_type,
                    validity_days,
                } => {
                    commands::ceremony_start(
                        &clients,
                        StartWhat::Rotate {
                            old: ca_id,
                            new: new_id,
                            key_type: commands::key_type(&key_type)?,
                            validity_days,
                        },
                    )
                    .await
                }
                CaCommand::Ceremony { command } => match command {
                    CeremonyCommand::Start {
                        ca_id,
                        parent,
                        common_name,
                        key_type,
                        validity_days,
                        path_len,
                    } => {
                        let key_type = commands::key_type(&key_type)?;
                        let what = match parent {
                            None => StartWhat::Root {
                                ca_id,
                                common_name,
                                key_type,
                                validity_days,
                            },
                            Some(parent) => StartWhat::Intermediate {
                                ca_id,
                                parent,
                                common_name,
                                key_type,
                                validity_days,
                                path_len,
                            },
                        };
                        commands::ceremony_start(&clients, what).await
                    }
                    CeremonyCommand::Approve { id, custodian, key } => {
                        commands::ceremony_approve(&clients, &id, &custodian, &key).await
                    }
                    CeremonyCommand::Execute { id } => {
                        commands::ceremony_execute(&clients, &id).await
                    }
                    CeremonyCommand::List => commands::ceremony_list(&clients).await,
                },
                CaCommand::Rollover { command } => match command {
                    RolloverCommand::Stage {
                        tenant,
                        ca_id,
                        parent,
                        common_name,
                        validity_days,
                        out,
                    } => {
                        let args = rollover::StageArgs {
                            ca_id,
                            parent,
                            common_name,
                            validity_days,
                        };
                        rollover::stage(&clients, &tenant, args, out.as_deref()).await
                    }
                    RolloverCommand::Activate { tenant } => {
                        rollover::activate(&dd, &clients, &tenant).await
                    }
                },
            }
        }
        Command::Profile { dir, command } => {
            let dd = DataDir::existing(&dir.data_dir)?;
            let clients = Clients::for_dir(&dd);
            match command {
                ProfileCommand::Create {
                    tenant,
                    name,
                    file,
                    format,
                } => {
                    commands::profile_create(&clients, &tenant, &name, &file, format.as_deref())
                        .await
                }
                ProfileCommand::List { tenant } => commands::profile_list(&clients, &tenant).await,
                ProfileCommand::Versions { tenant, name } => {
                    commands::profile_versions(&clients, &tenant, &name).await
                }
            }
        }
        Command::Cert { dir, command } => {
            let dd = DataDir::existing(&dir.data_dir)?;
            let clients = Clients::for_dir(&dd);
            match command {
                CertCommand::Issue {
                    csr,
                    out,
                    tenant,
                    profile,
                    idempotency_key,
                    validity_days,
                    with_chain,
                } => {
                    commands::cert_issue(
                        &clients,
                        commands::IssueArgs {
                            csr,
                            out,
                            tenant,
                            profile,
                            idempotency_key,
                            validity_days,
                            with_chain,
                        },
                    )
                    .await
                }
            }
        }
        Command::Revoke {
            dir,
            serial,
            reason,
            tenant,
        } => {
            let dd = DataDir::existing(&dir.data_dir)?;
            commands::revoke(&Clients::for_dir(&dd), &tenant, &serial, reason).await
        }
        Command::Audit {
            dir,
            command: AuditCommand::Verify,
        } => {
            let dd = DataDir::existing(&dir.data_dir)?;
            commands::audit_verify(&dd, &Clients::for_dir(&dd)).await
        }
        Command::Acme { dir, command } => {
            let dd = DataDir::existing(&dir.data_dir)?;
            let clients = Clients::for_dir(&dd);
            match command {
                AcmeCommand::Eab {
                    command: EabCommand::Create { tenant },
                } => acme::eab_create(&clients, &tenant).await,
                AcmeCommand::Settings {
                    tenant,
                    eab_required,
                    tos,
                    website,
                    caa,
                } => {
                    acme::settings(
                        &clients,
                        acme::SettingsArgs {
                            tenant,
                            eab_required,
                            tos,
                            website,
                            caa,
                        },
                    )
                    .await
                }
            }
        }
        Command::Cmp { dir, command } => {
            let dd = DataDir::existing(&dir.data_dir)?;
            let clients = Clients::for_dir(&dd);
            match command {
                CmpCommand::Secret {
                    command:
                        CmpSecretCommand::Put {
                            tenant,
                            reference,
                            secret_file,
                        },
                } => cmp::secret_put(&clients, &tenant, &reference, secret_file.as_deref()).await,
                CmpCommand::Secret {
                    command: CmpSecretCommand::Delete { tenant, reference },
                } => cmp::secret_delete(&clients, &tenant, &reference).await,
                CmpCommand::Ra {
                    command: CmpRaCommand::Create { tenant, rotate },
                } => cmp::ra_create(&clients, &tenant, rotate).await,
            }
        }
        Command::Fleet { dir, command } => {
            let dd = DataDir::existing(&dir.data_dir)?;
            let clients = Clients::for_dir(&dd);
            match command {
                FleetCommand::Cert {
                    spiffe,
                    out,
                    name,
                    dns,
                    tenant,
                    days,
                } => {
                    fleet::fleet_cert(
                        &clients,
                        fleet::FleetCertArgs {
                            spiffe,
                            out,
                            name,
                            dns,
                            tenant,
                            validity_days: days,
                        },
                    )
                    .await
                }
            }
        }
        Command::Scep { dir, command } => {
            let dd = DataDir::existing(&dir.data_dir)?;
            let clients = Clients::for_dir(&dd);
            match command {
                ScepCommand::Challenge {
                    command:
                        ScepChallengeCommand::Put {
                            tenant,
                            profile,
                            one_time,
                            secret_file,
                        },
                } => {
                    scep::challenge_put(
                        &clients,
                        &tenant,
                        &profile,
                        one_time,
                        secret_file.as_deref(),
                    )
                    .await
                }
            }
        }
        Command::Request { dir, command } => {
            let dd = DataDir::existing(&dir.data_dir)?;
            let clients = Clients::for_dir(&dd);
            match command {
                RequestCommand::List { tenant, state } => {
                    request::list(&clients, &tenant, &state).await
                }
                RequestCommand::Approve { tenant, id, reason } => {
                    request::approve(&clients, &tenant, &id, &reason).await
                }
                RequestCommand::Deny { tenant, id, reason } => {
                    request::deny(&clients, &tenant, &id, &reason).await
                }
            }
        }
    }
}
