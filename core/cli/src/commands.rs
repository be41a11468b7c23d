//! The administrative subcommands: CA ceremonies, custodians, profiles, issuance, revocation,
//! audit. Each talks to the core of a data dir over its Unix socket.

use std::path::{Path, PathBuf};

use certgate_proto::admin::{
    CeremonyAction, CreateIntermediate, CreateRoot, ExecuteCeremonyRequest,
    GetProfileVersionsRequest, ListCasRequest, ListCeremoniesRequest, ListProfilesRequest,
    PutProfileRequest, RotateCa, StartCeremonyRequest, VerifyAuditRequest, ceremony_action,
};
use certgate_proto::core::{IssueRequest, RevokeRequest, issue_request, revoke_request};
use certgate_proto::signer::KeyType;
use sha2::{Digest, Sha256};

use crate::bootstrap;
use crate::client::Clients;
use crate::datadir::{DataDir, write_file};
use crate::error::{CliError, Result, io};
use crate::pem;

/// Parses a key type name as the CLI accepts it.
pub fn key_type(name: &str) -> Result<KeyType> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "p256" | "ec-p256" | "ecdsa-p256" => KeyType::EcP256,
        "p384" | "ec-p384" | "ecdsa-p384" => KeyType::EcP384,
        "rsa2048" | "rsa-2048" => KeyType::Rsa2048,
        "rsa3072" | "rsa-3072" => KeyType::Rsa3072,
        "rsa4096" | "rsa-4096" => KeyType::Rsa4096,
        "ed25519" => KeyType::Ed25519Key,
        other => {
            return Err(CliError::Input(format!(
                "unknown key type {other:?} (p256, p384, rsa2048, rsa3072, rsa4096, ed25519)"
            )));
        }
    })
}

fn ceremony_line(c: &certgate_proto::admin::Ceremony) -> String {
    let state = certgate_proto::admin::ceremony::State::try_from(c.state)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| c.state.to_string());
    let what = match c.action.as_ref().and_then(|a| a.action.as_ref()) {
        Some(ceremony_action::Action::CreateRoot(r)) => format!("create root {}", r.ca_id),
        Some(ceremony_action::Action::CreateIntermediate(i)) => {
            format!("create intermediate {} under {}", i.ca_id, i.parent_ca_id)
        }
        Some(ceremony_action::Action::Rotate(r)) => {
            format!("rotate {} -> {}", r.old_ca_id, r.new_ca_id)
        }
        None => "?".into(),
    };
    format!(
        "{}  {state}  {what}  approvals {}/{} [{}]  digest {}{}",
        c.id,
        c.approved_by.len(),
        c.required,
        c.approved_by.join(","),
        hex::encode(&c.digest),
        if c.result_ca_ids.is_empty() {
            String::new()
        } else {
            format!("  created {}", c.result_ca_ids.join(","))
        }
    )
}

/// `certgate ca list`.
pub async fn ca_list(clients: &Clients, tenant: &str) -> Result<()> {
    let cas = clients
        .admin
        .clone()
        .list_cas(ListCasRequest {
            tenant: tenant.into(),
        })
        .await?
        .into_inner()
        .cas;
    for c in cas {
        println!(
            "{}\t{}\t{}\ttenant={}\tparent={}\tkey={}\tnot_after={}",
            c.ca_id, c.kind, c.state, c.tenant, c.parent_ca_id, c.signer_key_id, c.not_after_unix
        );
    }
    Ok(())
}

/// `certgate ca init`: the hierarchy for a tenant (ceremonies approved with one custodian key).
pub async fn ca_init(clients: &Clients, tenant: &str, key: &Path, custodian: &str) -> Result<()> {
    let id = bootstrap::ensure_hierarchy(clients, tenant, key, custodian).await?;
    println!("issuing CA for tenant {tenant}: {id}");
    Ok(())
}

/// What `ca ceremony start` / `ca rotate` can start.
pub enum StartWhat {
    /// A root.
    Root {
        /// New CA id.
        ca_id: String,
        /// Subject CN.
        common_name: String,
        /// Key type.
        key_type: KeyType,
        /// Validity.
        validity_days: u64,
    },
    /// An intermediate.
    Intermediate {
        /// New CA id.
        ca_id: String,
        /// Parent CA id.
        parent: String,
        /// Subject CN.
        common_name: String,
        /// Key type.
        key_type: KeyType,
        /// Validity.
        validity_days: u64,
        /// pathLenConstraint.
        path_len: Option<u32>,
    },
    /// A rotation.
    Rotate {
        /// CA being replaced.
        old: String,
        /// Its replacement.
        new: String,
        /// Key type.
        key_type: KeyType,
        /// Validity.
        validity_days: u64,
    },
}

/// Starts a ceremony and prints its id and digest.
pub async fn ceremony_start(clients: &Clients, what: StartWhat) -> Result<()> {
    let day = 86_400;
    let action = match what {
        StartWhat::Root {
            ca_id,
            common_name,
            key_type,
            validity_days,
        } => ceremony_action::Action::CreateRoot(CreateRoot {
            ca_id,
            key_type: key_type as i32,
            common_name,
            validity_seconds: validity_days * day,
        }),
        StartWhat::Intermediate {
            ca_id,
            parent,
            common_name,
            key_type,
            validity_days,
            path_len,
        } => ceremony_action::Action::CreateIntermediate(CreateIntermediate {
            ca_id,
            parent_ca_id: parent,
            key_type: key_type as i32,
            common_name,
            validity_seconds: validity_days * day,
            path_len,
        }),
        StartWhat::Rotate {
            old,
            new,
            key_type,
            validity_days,
        } => ceremony_action::Action::Rotate(RotateCa {
            old_ca_id: old,
            new_ca_id: new,
            key_type: key_type as i32,
            validity_seconds: validity_days * day,
        }),
    };
    let c = clients
        .admin
        .clone()
        .start_ceremony(StartCeremonyRequest {
            action: Some(CeremonyAction {
                action: Some(action),
            }),
        })
        .await?
        .into_inner();
    println!("{}", ceremony_line(&c));
    println!(
        "next: certgate ca ceremony approve --id {} --custodian NAME --key FILE  ({} approval(s) needed), then execute --id {}",
        c.id, c.required, c.id
    );
    Ok(())
}

/// `ca ceremony approve`.
pub async fn ceremony_approve(
    clients: &Clients,
    id: &str,
    custodian: &str,
    key: &Path,
) -> Result<()> {
    let c = bootstrap::approve(clients, id, custodian, key).await?;
    println!("{}", ceremony_line(&c));
    Ok(())
}

/// `ca ceremony execute`.
pub async fn ceremony_execute(clients: &Clients, id: &str) -> Result<()> {
    let c = clients
        .admin
        .clone()
        .execute_ceremony(ExecuteCeremonyRequest { id: id.into() })
        .await?
        .into_inner();
    println!("{}", ceremony_line(&c));
    Ok(())
}

/// `ca ceremony list`.
pub async fn ceremony_list(clients: &Clients) -> Result<()> {
    let list = clients
        .admin
        .clone()
        .list_ceremonies(ListCeremoniesRequest {})
        .await?
        .into_inner();
    for c in &list.ceremonies {
        println!("{}", ceremony_line(c));
    }
    Ok(())
}

/// `profile create`: the format comes from `--format` or the file extension.
pub async fn profile_create(
    clients: &Clients,
    tenant: &str,
    name: &str,
    file: &Path,
    format: Option<&str>,
) -> Result<()> {
    let body = std::fs::read_to_string(file).map_err(io(file.display()))?;
    let format = match format {
        Some(f) => f.to_owned(),
        None => match file.extension().and_then(|e| e.to_str()) {
            Some("json") => "json".to_owned(),
            Some("toml") => "toml".to_owned(),
            _ => {
                return Err(CliError::Input(
                    "cannot tell the profile format from the file name; pass --format toml|json"
                        .into(),
                ));
            }
        },
    };
    let v = clients
        .admin
        .clone()
        .put_profile(PutProfileRequest {
            tenant: tenant.into(),
            name: name.into(),
            body,
            format,
        })
        .await?
        .into_inner();
    println!("{}/{} version {}", v.tenant, v.name, v.version);
    Ok(())
}

/// `profile list`.
pub async fn profile_list(clients: &Clients, tenant: &str) -> Result<()> {
    let list = clients
        .admin
        .clone()
        .list_profiles(ListProfilesRequest {
            tenant: tenant.into(),
        })
        .await?
        .into_inner();
    for p in list.profiles {
        println!("{}\tversion {}\t{}", p.name, p.version, p.body_json);
    }
    Ok(())
}

/// `profile versions`.
pub async fn profile_versions(clients: &Clients, tenant: &str, name: &str) -> Result<()> {
    let list = clients
        .admin
        .clone()
        .get_profile_versions(GetProfileVersionsRequest {
            tenant: tenant.into(),
            name: name.into(),
        })
        .await?
        .into_inner();
    for p in list.profiles {
        println!(
            "{}\tversion {}\tcreated {}\t{}",
            p.name, p.version, p.created_unix, p.body_json
        );
    }
    Ok(())
}

/// The default idempotency key of `cert issue`: SHA-256 over tenant, profile and CSR, so running
/// the same command again returns the same certificate (I-3).
pub fn default_issue_key(tenant: &str, profile: &str, csr_der: &[u8]) -> String {
    let mut h = Sha256::new();
    for part in [tenant.as_bytes(), profile.as_bytes(), csr_der] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    format!("cli-{}", hex::encode(h.finalize()))
}

/// Arguments of `cert issue`.
pub struct IssueArgs {
    /// CSR file (PEM or DER).
    pub csr: PathBuf,
    /// Output (leaf PEM).
    pub out: PathBuf,
    /// Tenant.
    pub tenant: String,
    /// Profile ("" = tenant default).
    pub profile: String,
    /// Idempotency key (default derived).
    pub idempotency_key: Option<String>,
    /// Validity in days (0 = profile default).
    pub validity_days: u64,
    /// Also write the chain after the leaf.
    pub with_chain: bool,
}

/// `cert issue`.
pub async fn cert_issue(clients: &Clients, a: IssueArgs) -> Result<()> {
    let raw = std::fs::read(&a.csr).map_err(io(a.csr.display()))?;
    let csr = pem::csr_der(&raw)?;
    let key = a
        .idempotency_key
        .clone()
        .unwrap_or_else(|| default_issue_key(&a.tenant, &a.profile, &csr));
    let resp = clients
        .core
        .clone()
        .issue(IssueRequest {
            tenant: a.tenant.clone(),
            profile: a.profile.clone(),
            request: Some(issue_request::Request::CsrDer(csr)),
            validated_identifiers: vec![],
            protocol: "cli".into(),
            client_identity: format!("uid:{}", certgate_proto::transport::current_uid()),
            idempotency_key: key,
            validity_seconds: a.validity_days * 86_400,
            issuer_id: String::new(),
            replaces_serial: String::new(),
            await_confirmation: false,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out = pem::encode("CERTIFICATE", &resp.certificate_der);
    if a.with_chain {
        for c in &resp.chain_der {
            out.push_str(&pem::encode("CERTIFICATE", c));
        }
    }
    write_file(&a.out, out.as_bytes(), 0o644)?;
    println!(
        "serial {}  issuer {}  profile {} v{}  -> {}",
        resp.serial_hex,
        resp.issuer_id,
        resp.profile,
        resp.profile_version,
        a.out.display()
    );
    Ok(())
}

/// `revoke`.
pub async fn revoke(clients: &Clients, tenant: &str, serial: &str, reason: u32) -> Result<()> {
    let serial = serial.trim_start_matches("0x").to_ascii_lowercase();
    if serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CliError::Input(format!("--serial {serial:?} is not hex")));
    }
    let resp = clients
        .core
        .clone()
        .revoke(RevokeRequest {
            tenant: tenant.into(),
            target: Some(revoke_request::Target::SerialHex(serial.clone())),
            reason,
            idempotency_key: format!("cli-revoke-{tenant}-{serial}-{reason}"),
            protocol: "cli".into(),
            client_identity: format!("uid:{}", certgate_proto::transport::current_uid()),
        })
        .await?
        .into_inner();
    println!(
        "revoked {} at {} (reason {}){}",
        resp.serial_hex,
        resp.revoked_at_unix,
        resp.reason,
        if resp.already_revoked {
            " — it was already revoked"
        } else {
            ""
        }
    );
    Ok(())
}

/// `audit verify`: through the running core (Admin.VerifyAudit), or, when the core is not
/// running, with `certgate-core audit-verify --config …` on the store directly.
pub async fn audit_verify(dd: &DataDir, clients: &Clients) -> Result<()> {
    if clients.core_answers().await {
        let r = clients
            .admin
            .clone()
            .verify_audit(VerifyAuditRequest {})
            .await?
            .into_inner();
        if r.ok {
            println!("audit chain OK: {} records", r.records);
            return Ok(());
        }
        return Err(CliError::Input(format!(
            "audit chain BROKEN at record {}: {} ({} records checked)",
            r.first_bad_seq, r.error, r.records
        )));
    }
    let exe = crate::procs::sibling("certgate-core")?;
    let status = std::process::Command::new(&exe)
        .arg("audit-verify")
        .arg("--config")
        .arg(dd.core_config())
        .status()
        .map_err(io(format!("running {}", exe.display())))?;
    if status.success() {
        Ok(())
    } else {
        Err(CliError::Input("audit verification failed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_issue_key_is_stable_and_separates_its_inputs() {
        let k = default_issue_key("default", "", b"csr");
        assert_eq!(k, default_issue_key("default", "", b"csr"));
        assert_ne!(k, default_issue_key("other", "", b"csr"));
        assert_ne!(k, default_issue_key("default", "tls-server", b"csr"));
        assert_ne!(k, default_issue_key("default", "", b"csr2"));
        // Length prefixes: moving a byte between fields changes the key.
        assert_ne!(
            default_issue_key("ab", "c", b"x"),
            default_issue_key("a", "bc", b"x")
        );
    }

    #[test]
    fn key_type_names_parse() {
        assert_eq!(key_type("p256").ok(), Some(KeyType::EcP256));
        assert_eq!(key_type("ED25519").ok(), Some(KeyType::Ed25519Key));
        assert!(key_type("dsa").is_err());
    }
}
