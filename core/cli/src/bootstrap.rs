//! `certgate init`: first-run setup of a data directory, idempotent step by step.
//!
//! Files first (KEK through the signer's own `init-kek`, the three configs, the dev custodian
//! key), then — with the signer and core running — the Admin API: the `default` tenant, its
//! profile, a root and an intermediate created by ceremonies approved with the dev custodian key,
//! an issuing CA, the trust files, the edge's TLS certificate (issued through `Core.Issue` like
//! any other, I-2) and the dev credentials. Each step first looks whether its result exists, so a
//! second `init` (or one after an interruption) changes nothing that is already there.

use std::net::SocketAddr;
use std::time::Duration;

use certgate_proto::admin::{
    self, ApproveCeremonyRequest, CeremonyAction, CreateIntermediate, CreateIssuingCaRequest,
    CreateRoot, ExecuteCeremonyRequest, ListCasRequest, ListCeremoniesRequest, ListProfilesRequest,
    ListTenantsRequest, PutProfileRequest, StartCeremonyRequest, Tenant, ceremony_action,
};
use certgate_proto::core::{GetCaChainRequest, IssueRequest, issue_request};
use certgate_proto::signer::KeyType;
use sha2::{Digest, Sha256};

use crate::client::Clients;
use crate::datadir::{DataDir, write_file};
use crate::error::{CliError, Result, io};
use crate::keys;
use crate::pem;
use crate::procs::{Proc, socket_accepts};

/// The tenant `certgate up` serves at the plain paths.
pub const DEFAULT_TENANT: &str = "default";
/// The profile a new tenant issues under.
pub const DEFAULT_PROFILE: &str = "tls-server";
/// The dev custodian's name in the core config.
pub const DEV_CUSTODIAN: &str = "dev";
/// CA ids `init` creates.
pub const ROOT_ID: &str = "dev-root-1";
/// The intermediate under the dev root.
pub const INTERMEDIATE_ID: &str = "dev-intermediate-1";
/// The default tenant's issuing CA.
pub const ISSUING_ID: &str = "default-issuing-1";

const YEAR: u64 = 365 * 24 * 3600;

/// The default profile, written if the core did not create one with the tenant
/// (docs/profiles.md; the same rules as the core's built-in `tls-server`).
const TLS_SERVER_PROFILE: &str = r#"key_algorithms = ["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa"]
min_rsa_bits = 2048
ekus = ["server_auth", "client_auth"]
key_usages = ["digital_signature", "key_encipherment"]
max_validity_seconds = 7776000
default_validity_seconds = 7776000
allowed_dns_suffixes = ["."]
allowed_ip_ranges = ["0.0.0.0/0", "::/0"]
allow_wildcards = true
max_sans = 100
"#;

/// The three listener addresses of the edge.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// HTTPS (ACME, EST).
    pub https: SocketAddr,
    /// Plain HTTP (OCSP, CRL, SCEP, CMP, AIA).
    pub http: SocketAddr,
    /// Admin (health, metrics).
    pub admin: SocketAddr,
}

fn progress(msg: &str) {
    println!("  · {msg}");
}

/// Writes `path` only if it does not exist.
/// The dev `[acme]` section of core.toml: Pebble's convention, so the same client commands work
/// against both (http-01 checked at 127.0.0.1:5002, tls-alpn-01 at 127.0.0.1:5001, for any
/// name). The core refuses it in production mode (docs/acme.md).
const DEV_ACME: &str = r#"
[acme]
dev_validate_on_localhost = true
"#;

/// Adds [`DEV_ACME`] to a dev core.toml written before it existed (a data dir from an older
/// `certgate init`); leaves any file that already has an `[acme]` section, or is not dev, alone.
fn ensure_dev_acme(dd: &DataDir) -> Result<()> {
    let path = dd.core_config();
    let text = std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
    if text.contains("[acme]") || !text.contains("mode = \"dev\"") {
        return Ok(());
    }
    write_file(&path, format!("{text}{DEV_ACME}").as_bytes(), 0o600)?;
    progress("added the dev [acme] section to core/core.toml");
    Ok(())
}

fn write_new(path: &std::path::Path, contents: &str, mode: u32) -> Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    write_file(path, contents.as_bytes(), mode)?;
    Ok(true)
}

/// The files of a data dir: KEK, configs, custodian key. Safe to repeat.
pub fn write_files(dd: &DataDir, ports: Ports) -> Result<()> {
    let uid = certgate_proto::transport::current_uid();
    for dir in [
        dd.run_dir(),
        dd.log_dir(),
        dd.signer_dir(),
        dd.core_dir(),
        dd.edge_dir(),
    ] {
        std::fs::create_dir_all(&dir).map_err(io(dir.display()))?;
    }
    set_mode(&dd.signer_dir(), 0o700)?;
    set_mode(&dd.run_dir(), 0o700)?;

    if !dd.kek().exists() {
        progress("generating the signer's key-encryption key (certgate-signer init-kek)");
        let exe = crate::procs::sibling("certgate-signer")?;
        let out = std::process::Command::new(&exe)
            .arg("init-kek")
            .arg(dd.kek())
            .output()
            .map_err(io(format!("running {}", exe.display())))?;
        if !out.status.success() {
            return Err(CliError::Process(format!(
                "certgate-signer init-kek failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }

    let signer_toml = format!(
        r#"# certgate-signer configuration (docs/signer.md), generated by `certgate init`.
mode = "dev"
socket = "../run/signer.sock"
allow = ["uid:{uid}"]
admin_allow = ["uid:{uid}"]
audit_log = "audit.jsonl"
key_dir = "keys"
kek_file = "kek"
"#
    );
    if write_new(&dd.signer_config(), &signer_toml, 0o600)? {
        progress("wrote signer/signer.toml");
    }

    if !dd.dev_custodian_key().exists() {
        progress("generating the dev ceremony custodian key (custodians/dev.pem)");
        keys::custodian_keygen(&dd.dev_custodian_key(), &dd.dev_custodian_pub())?;
    }

    let core_toml = format!(
        r#"# certgate-core configuration (docs/core.md), generated by `certgate init`.
mode = "dev"
socket = "../run/core.sock"
allow = ["uid:{uid}"]
admin_allow = ["uid:{uid}"]
store = "core.db"
quorum = 1

[signer]
socket = "../run/signer.sock"

[[custodians]]
name = "{DEV_CUSTODIAN}"
public_key = "../custodians/dev.pub.pem"

[audit]
signer_log = "../signer/audit.jsonl"
{DEV_ACME}"#
    );
    if write_new(&dd.core_config(), &core_toml, 0o600)? {
        progress("wrote core/core.toml");
    } else {
        ensure_dev_acme(dd)?;
    }

    write_edge_config(dd, ports, false)?;
    Ok(())
}

/// Writes the edge config; with `replace`, rewrites it (when `up` is given other ports).
pub fn write_edge_config(dd: &DataDir, ports: Ports, replace: bool) -> Result<()> {
    let edge_toml = format!(
        r#"# certgate-edge configuration (docs/operations.md), generated by `certgate init`.
mode = "dev"
core_socket = "../run/core.sock"

[listen]
https = "{}"
http = "{}"
admin = "{}"

[tls]
cert = "tls.pem"
key = "tls.key"
{}"#,
        ports.https,
        ports.http,
        ports.admin,
        edge_acme_section(ports)
    );
    ensure_nonce_key(dd)?;
    if replace {
        write_file(&dd.edge_config(), edge_toml.as_bytes(), 0o600)?;
    } else if write_new(&dd.edge_config(), &edge_toml, 0o600)? {
        progress("wrote edge/edge.toml");
    } else {
        ensure_edge_acme(dd, ports)?;
    }
    Ok(())
}

/// The edge's `[acme]` section: the public base URL every ACME URL is built from (and the JWS
/// `url` check compares against), and the fleet nonce key.
fn edge_acme_section(ports: Ports) -> String {
    format!(
        "\n[acme]\nbase_url = \"https://{}\"\nnonce_key_file = \"nonce.key\"\n",
        ports.https
    )
}

/// Adds the `[acme]` section to an edge.toml written before it existed.
fn ensure_edge_acme(dd: &DataDir, ports: Ports) -> Result<()> {
    let path = dd.edge_config();
    let text = std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
    if text.contains("[acme]") {
        return Ok(());
    }
    write_file(
        &path,
        format!("{text}{}", edge_acme_section(ports)).as_bytes(),
        0o600,
    )?;
    progress("added the [acme] section to edge/edge.toml");
    Ok(())
}

/// DIR/edge/nonce.key: 32 random bytes (mode 0600), the ACME nonce key every edge of this fleet
/// shares, so any edge accepts any edge's nonce. Kept if present.
fn ensure_nonce_key(dd: &DataDir) -> Result<()> {
    let path = dd.edge_dir().join("nonce.key");
    if path.exists() {
        return Ok(());
    }
    let mut key = zeroize::Zeroizing::new(vec![0u8; 32]);
    aws_lc_rs::rand::fill(&mut key).map_err(|_| CliError::Crypto("random source failed".into()))?;
    write_file(&path, &key, 0o600)?;
    progress("wrote edge/nonce.key");
    Ok(())
}

fn set_mode(path: &std::path::Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(path.display()))
}

/// The signer and core of a data dir, running.
pub struct Backends {
    /// certgate-signer.
    pub signer: Proc,
    /// certgate-core.
    pub core: Proc,
    /// Clients for the core.
    pub clients: Clients,
}

impl Backends {
    /// Stops both (core first: it is the signer's only client).
    pub async fn stop(mut self) {
        self.core.stop(Duration::from_secs(10)).await;
        self.signer.stop(Duration::from_secs(10)).await;
    }
}

/// Starts the signer and the core of `dd` and waits until both answer.
pub async fn start_backends(dd: &DataDir) -> Result<Backends> {
    progress("starting certgate-signer");
    let cfg = dd.signer_config();
    let mut signer = Proc::spawn(
        "certgate-signer",
        &["--config".as_ref(), cfg.as_os_str()],
        &dd.log_dir().join("signer.log"),
    )?;
    let sock = dd.signer_socket();
    signer
        .wait_until("socket", Duration::from_secs(30), || socket_accepts(&sock))
        .await?;

    progress("starting certgate-core");
    let cfg = dd.core_config();
    let mut core = Proc::spawn(
        "certgate-core",
        &["--config".as_ref(), cfg.as_os_str()],
        &dd.log_dir().join("core.log"),
    )?;
    let clients = Clients::for_dir(dd);
    let probe = clients.clone();
    if let Err(e) = core
        .wait_until("Admin answers", Duration::from_secs(30), || {
            let probe = probe.clone();
            async move { probe.core_answers().await }
        })
        .await
    {
        signer.stop(Duration::from_secs(5)).await;
        return Err(e);
    }
    Ok(Backends {
        signer,
        core,
        clients,
    })
}

/// Brings the running core of `dd` to the initialised state and writes the trust files, the
/// edge certificate and the dev credentials.
pub async fn bootstrap(dd: &DataDir, clients: &Clients, ports: Ports) -> Result<()> {
    let mut admin = clients.admin.clone();
    let public_base_url = format!("http://{}", ports.http);

    let tenants = admin
        .list_tenants(ListTenantsRequest {})
        .await?
        .into_inner();
    if !tenants.tenants.iter().any(|t| t.name == DEFAULT_TENANT) {
        progress(&format!(
            "creating tenant `{DEFAULT_TENANT}` ({public_base_url})"
        ));
        admin
            .put_tenant(Tenant {
                name: DEFAULT_TENANT.into(),
                public_base_url: public_base_url.clone(),
                default_profile: DEFAULT_PROFILE.into(),
                active_issuer_id: String::new(),
            })
            .await?;
    }
    let profiles = admin
        .list_profiles(ListProfilesRequest {
            tenant: DEFAULT_TENANT.into(),
        })
        .await?
        .into_inner();
    if !profiles.profiles.iter().any(|p| p.name == DEFAULT_PROFILE) {
        progress(&format!("creating profile `{DEFAULT_PROFILE}`"));
        admin
            .put_profile(PutProfileRequest {
                tenant: DEFAULT_TENANT.into(),
                name: DEFAULT_PROFILE.into(),
                body: TLS_SERVER_PROFILE.into(),
                format: "toml".into(),
            })
            .await?;
    }

    ensure_hierarchy(
        clients,
        DEFAULT_TENANT,
        &dd.dev_custodian_key(),
        DEV_CUSTODIAN,
    )
    .await?;
    write_trust_files(dd, clients).await?;
    ensure_edge_cert(dd, clients).await?;
    ensure_dev_credentials(dd)?;
    ensure_edge_est(dd)?;
    Ok(())
}

/// Root (ceremony), intermediate (ceremony) and the tenant's issuing CA, each created only if
/// missing. Returns the issuing CA id.
pub async fn ensure_hierarchy(
    clients: &Clients,
    tenant: &str,
    custodian_key: &std::path::Path,
    custodian: &str,
) -> Result<String> {
    let mut admin = clients.admin.clone();
    let cas = admin
        .list_cas(ListCasRequest {
            tenant: String::new(),
        })
        .await?
        .into_inner()
        .cas;
    let active = |kind: &str| {
        cas.iter()
            .find(|c| c.kind == kind && c.state == "active")
            .map(|c| c.ca_id.clone())
    };
    let root = match active("root") {
        Some(id) => id,
        None => {
            progress("ceremony: creating the dev root CA (approved with the dev custodian key)");
            let action = ceremony_action::Action::CreateRoot(CreateRoot {
                ca_id: ROOT_ID.into(),
                key_type: KeyType::EcP256 as i32,
                common_name: "certgate dev root CA".into(),
                validity_seconds: 10 * YEAR,
            });
            run_ceremony(clients, action, custodian_key, custodian).await?;
            ROOT_ID.to_owned()
        }
    };
    let intermediate = match active("intermediate") {
        Some(id) => id,
        None => {
            progress("ceremony: creating the dev intermediate CA");
            let action = ceremony_action::Action::CreateIntermediate(CreateIntermediate {
                ca_id: INTERMEDIATE_ID.into(),
                parent_ca_id: root,
                key_type: KeyType::EcP256 as i32,
                common_name: "certgate dev intermediate CA".into(),
                validity_seconds: 5 * YEAR,
                path_len: Some(1),
            });
            run_ceremony(clients, action, custodian_key, custodian).await?;
            INTERMEDIATE_ID.to_owned()
        }
    };
    let tenant_cas = admin
        .list_cas(ListCasRequest {
            tenant: tenant.into(),
        })
        .await?
        .into_inner()
        .cas;
    if let Some(issuing) = tenant_cas
        .iter()
        .find(|c| c.kind == "issuing" && c.state == "active" && c.tenant == tenant)
    {
        return Ok(issuing.ca_id.clone());
    }
    let ca_id = if tenant == DEFAULT_TENANT {
        ISSUING_ID.to_owned()
    } else {
        format!("{tenant}-issuing-1")
    };
    progress(&format!(
        "creating the issuing CA `{ca_id}` for tenant `{tenant}`"
    ));
    let info = admin
        .create_issuing_ca(CreateIssuingCaRequest {
            tenant: tenant.into(),
            ca_id,
            parent_ca_id: intermediate,
            key_type: KeyType::EcP256 as i32,
            common_name: format!("certgate dev issuing CA ({tenant})"),
            validity_seconds: YEAR,
            activate: true,
        })
        .await?
        .into_inner();
    Ok(info.ca_id)
}

/// Start → approve with one custodian key → execute.
pub async fn run_ceremony(
    clients: &Clients,
    action: ceremony_action::Action,
    custodian_key: &std::path::Path,
    custodian: &str,
) -> Result<admin::Ceremony> {
    let mut admin = clients.admin.clone();
    let c = admin
        .start_ceremony(StartCeremonyRequest {
            action: Some(CeremonyAction {
                action: Some(action),
            }),
        })
        .await?
        .into_inner();
    approve(clients, &c.id, custodian, custodian_key).await?;
    let done = admin
        .execute_ceremony(ExecuteCeremonyRequest { id: c.id.clone() })
        .await?
        .into_inner();
    Ok(done)
}

/// Approves ceremony `id` by signing its digest with `key_file`.
pub async fn approve(
    clients: &Clients,
    id: &str,
    custodian: &str,
    key_file: &std::path::Path,
) -> Result<admin::Ceremony> {
    let mut admin = clients.admin.clone();
    let list = admin
        .list_ceremonies(ListCeremoniesRequest {})
        .await?
        .into_inner();
    let c = list
        .ceremonies
        .into_iter()
        .find(|c| c.id == id)
        .ok_or_else(|| CliError::Input(format!("no ceremony with id {id}")))?;
    let signature = keys::custodian_sign(key_file, &c.digest)?;
    Ok(admin
        .approve_ceremony(ApproveCeremonyRequest {
            id: id.into(),
            custodian: custodian.into(),
            signature,
        })
        .await?
        .into_inner())
}

/// `ca/root.pem` and `ca/chain.pem` from the default tenant's chain (issuing first, root last).
pub async fn write_trust_files(dd: &DataDir, clients: &Clients) -> Result<()> {
    let mut core = clients.core.clone();
    let chain = core
        .get_ca_chain(GetCaChainRequest {
            tenant: DEFAULT_TENANT.into(),
            issuer_id: String::new(),
        })
        .await?
        .into_inner()
        .chain_der;
    let Some((root, below)) = chain.split_last() else {
        return Err(CliError::Process(
            "the core returned an empty CA chain".into(),
        ));
    };
    let chain_pem: String = below
        .iter()
        .map(|c| pem::encode("CERTIFICATE", c))
        .collect();
    write_file(
        &dd.root_pem(),
        pem::encode("CERTIFICATE", root).as_bytes(),
        0o644,
    )?;
    write_file(&dd.chain_pem(), chain_pem.as_bytes(), 0o644)?;
    progress("wrote ca/root.pem and ca/chain.pem");
    Ok(())
}

/// The edge's TLS certificate for localhost and 127.0.0.1, issued through `Core.Issue`.
pub async fn ensure_edge_cert(dd: &DataDir, clients: &Clients) -> Result<()> {
    if dd.edge_cert().exists() && dd.edge_key().exists() {
        return Ok(());
    }
    progress("issuing the edge's TLS certificate (localhost, 127.0.0.1)");
    let (key_pem, resp) = match issue_tls(clients, &["localhost", "127.0.0.1"]).await {
        Ok(r) => r,
        // A core whose name rules refuse single-label names still gets an edge that clients
        // reach by IP address.
        Err(CliError::Rpc(e)) if e.rule == "request.dns_name" => {
            progress(&format!(
                "the core refused `localhost` ({}); the edge certificate names 127.0.0.1 only",
                e.message
            ));
            issue_tls(clients, &["127.0.0.1"]).await?
        }
        Err(e) => return Err(e),
    };
    let mut chain = pem::encode("CERTIFICATE", &resp.certificate_der);
    for c in &resp.chain_der {
        chain.push_str(&pem::encode("CERTIFICATE", c));
    }
    write_file(&dd.edge_key(), key_pem.as_bytes(), 0o600)?;
    write_file(&dd.edge_cert(), chain.as_bytes(), 0o644)?;
    Ok(())
}

/// Issues a TLS server certificate for `names` to a key made here.
async fn issue_tls(
    clients: &Clients,
    names: &[&str],
) -> Result<(
    zeroize::Zeroizing<String>,
    certgate_proto::core::IssueResponse,
)> {
    let (key_pem, csr) = keys::tls_key_and_csr(names)?;
    let mut core = clients.core.clone();
    let resp = core
        .issue(IssueRequest {
            tenant: DEFAULT_TENANT.into(),
            profile: DEFAULT_PROFILE.into(),
            request: Some(issue_request::Request::CsrDer(csr.clone())),
            validated_identifiers: vec![],
            protocol: "cli".into(),
            client_identity: format!("uid:{}", certgate_proto::transport::current_uid()),
            idempotency_key: format!("edge-tls-{}", hex::encode(Sha256::digest(&csr))),
            validity_seconds: 0,
            issuer_id: String::new(),
            replaces_serial: String::new(),
            await_confirmation: false,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok((key_pem, resp))
}

/// `dev-credentials.toml`: random secrets the protocol gateways accept in dev mode.
pub fn ensure_dev_credentials(dd: &DataDir) -> Result<()> {
    if dd.dev_credentials().exists() {
        return Ok(());
    }
    let text = format!(
        "# Dev credentials for the protocol gateways (generated by `certgate init`; dev mode only).\n\
         est_username = \"est-dev\"\n\
         est_password = \"{}\"\n\
         scep_challenge = \"{}\"\n\
         cmp_reference = \"cmp-dev-{}\"\n\
         cmp_secret = \"{}\"\n",
        keys::random_hex(16)?,
        keys::random_hex(16)?,
        keys::random_hex(4)?,
        keys::random_hex(16)?,
    );
    write_file(&dd.dev_credentials(), text.as_bytes(), 0o600)?;
    progress("wrote dev-credentials.toml");
    Ok(())
}

/// The quoted value of `key = "…"` in the dev credentials file, kept in `Zeroizing`.
fn dev_credential(text: &str, key: &str) -> Option<zeroize::Zeroizing<String>> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        if k.trim() != key {
            return None;
        }
        let v = v.trim().strip_prefix('"')?.strip_suffix('"')?;
        Some(zeroize::Zeroizing::new(v.to_owned()))
    })
}

/// Adds the dev `[est]` section to edge.toml (once): the default label's HTTP Basic user from
/// dev-credentials.toml with its PBKDF2 hash (never the password), and this CA's root as the
/// TLS client-certificate anchor so `simplereenroll` can authenticate with the certificate
/// being renewed (docs/est.md).
pub fn ensure_edge_est(dd: &DataDir) -> Result<()> {
    let path = dd.edge_config();
    let edge = std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
    if edge.contains("[est]") || !edge.contains("mode = \"dev\"") || !dd.dev_credentials().exists()
    {
        return Ok(());
    }
    let creds = zeroize::Zeroizing::new(
        std::fs::read_to_string(dd.dev_credentials())
            .map_err(io(format!("reading {}", dd.dev_credentials().display())))?,
    );
    let (Some(user), Some(password)) = (
        dev_credential(&creds, "est_username"),
        dev_credential(&creds, "est_password"),
    ) else {
        return Err(CliError::Process(
            "dev-credentials.toml has no est_username/est_password".into(),
        ));
    };
    let hash = certgate_est::auth::hash_password(
        password.as_bytes(),
        certgate_est::auth::DEFAULT_ITERATIONS,
    )
    .map_err(|e| CliError::Process(format!("hashing the EST password: {e}")))?;
    let section = format!(
        r#"
[est]
# TLS client certificates chained to this CA's root may re-enroll (simplereenroll).
client_ca_files = ["../ca/root.pem"]

# /.well-known/est/ : tenant `default`, its default profile; HTTP Basic (dev-credentials.toml).
[est.labels.default]
basic_username = "{}"
basic_password_hash = "{hash}"
# csrattrs: derived from the label's profile (docs/est.md); `csr_attrs = [...]` overrides it.
"#,
        user.as_str()
    );
    write_file(&path, format!("{edge}{section}").as_bytes(), 0o600)?;
    progress("added the dev [est] section to edge/edge.toml");
    Ok(())
}

/// `certgate init`: files, then a temporary signer + core to bootstrap through, then stop them.
/// Returns the still-running backends when `keep_running` (used by `up`).
pub async fn init(dd: &DataDir, ports: Ports, keep_running: bool) -> Result<Option<Backends>> {
    if dd.is_initialized() && !keep_running {
        println!(
            "{} is already initialised; nothing to do",
            dd.root().display()
        );
        return Ok(None);
    }
    if !dd.is_initialized() {
        println!("initialising {}", dd.root().display());
    }
    write_files(dd, ports)?;
    let backends = start_backends(dd).await?;
    if !dd.is_initialized() {
        if let Err(e) = bootstrap(dd, &backends.clients, ports).await {
            backends.stop().await;
            return Err(e);
        }
        write_file(
            &dd.initialized_marker(),
            b"certgate init completed\n",
            0o644,
        )?;
        println!("initialised {}", dd.root().display());
    }
    // CMP dev credentials and RA for the default tenant, on every start (idempotent), so data
    // dirs initialised before CMP existed get them too.
    if dd.dev_credentials().exists()
        && let Err(e) = crate::cmp::provision_dev(dd, &backends.clients, DEFAULT_TENANT).await
    {
        backends.stop().await;
        return Err(e);
    }
    // The SCEP dev challenge (`scep_challenge`) as the default tenant's static challenge, on
    // every start (idempotent) like the CMP credentials above.
    if dd.dev_credentials().exists()
        && let Err(e) = crate::scep::provision_dev(dd, &backends.clients, DEFAULT_TENANT).await
    {
        backends.stop().await;
        return Err(e);
    }
    if keep_running {
        Ok(Some(backends))
    } else {
        backends.stop().await;
        Ok(None)
    }
}
