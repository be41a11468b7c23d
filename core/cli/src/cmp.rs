//! `certgate cmp …`: MAC shared secrets and the tenant's CMP RA (CmpAdmin on the core), and the
//! dev provisioning `certgate init`/`up` do from `DIR/dev-credentials.toml`.

use certgate_proto::cmp::{CreateRaRequest, DeleteSharedSecretRequest, PutSharedSecretRequest};
use zeroize::Zeroizing;

use crate::client::Clients;
use crate::datadir::DataDir;
use crate::error::{CliError, Result, io};
use crate::pem;

/// The most bytes read from `--secret-file`.
const MAX_SECRET_FILE: u64 = 4096;

/// `cmp secret put`: stores the secret read from `secret_file` (trailing newline trimmed), or
/// has the core generate one and prints it this once.
pub async fn secret_put(
    clients: &Clients,
    tenant: &str,
    reference: &str,
    secret_file: Option<&std::path::Path>,
) -> Result<()> {
    let secret = match secret_file {
        Some(path) => {
            let len = std::fs::metadata(path)
                .map_err(io(format!("reading {}", path.display())))?
                .len();
            if len > MAX_SECRET_FILE {
                return Err(CliError::Input(format!(
                    "{} is larger than {MAX_SECRET_FILE} bytes",
                    path.display()
                )));
            }
            let mut raw = Zeroizing::new(
                std::fs::read(path).map_err(io(format!("reading {}", path.display())))?,
            );
            while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                raw.pop();
            }
            if raw.is_empty() {
                return Err(CliError::Input(format!("{} is empty", path.display())));
            }
            raw
        }
        None => Zeroizing::new(Vec::new()),
    };
    let generated = secret.is_empty();
    let resp = clients
        .cmp_admin
        .clone()
        .put_shared_secret(PutSharedSecretRequest {
            tenant: tenant.into(),
            reference: reference.into(),
            secret: secret.to_vec(),
        })
        .await?
        .into_inner();
    let shown = Zeroizing::new(resp.secret);
    println!("tenant     {tenant}");
    println!("reference  {reference}");
    if generated {
        println!("secret     {}", String::from_utf8_lossy(&shown));
        println!("(shown once) e.g. openssl cmp -cmd ir -ref {reference} -secret pass:<secret> …");
    } else {
        println!("secret     (from file, stored)");
    }
    Ok(())
}

/// `cmp secret delete`.
pub async fn secret_delete(clients: &Clients, tenant: &str, reference: &str) -> Result<()> {
    let existed = clients
        .cmp_admin
        .clone()
        .delete_shared_secret(DeleteSharedSecretRequest {
            tenant: tenant.into(),
            reference: reference.into(),
        })
        .await?
        .into_inner()
        .existed;
    if existed {
        println!("deleted {reference} of {tenant}");
    } else {
        println!("{tenant} had no reference {reference}");
    }
    Ok(())
}

/// `cmp ra create`: creates (or with `rotate` replaces) the tenant's RA and prints its chain.
pub async fn ra_create(clients: &Clients, tenant: &str, rotate: bool) -> Result<()> {
    let r = clients
        .cmp_admin
        .clone()
        .create_ra(CreateRaRequest {
            tenant: tenant.into(),
            rotate,
        })
        .await?
        .into_inner();
    eprintln!(
        "{} CMP RA of {tenant} (signer key {}); chain follows",
        if r.created { "created the" } else { "existing" },
        r.signer_key_id
    );
    for der in &r.chain_der {
        print!("{}", pem::encode("CERTIFICATE", der));
    }
    Ok(())
}

/// Dev provisioning (idempotent): the `cmp_reference`/`cmp_secret` of
/// `DIR/dev-credentials.toml` become the default tenant's MAC credentials, and its RA exists.
pub async fn provision_dev(dd: &DataDir, clients: &Clients, tenant: &str) -> Result<()> {
    let path = dd.dev_credentials();
    let text = Zeroizing::new(
        std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?,
    );
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?;
    let (Some(reference), Some(secret)) = (
        table.get("cmp_reference").and_then(|v| v.as_str()),
        table.get("cmp_secret").and_then(|v| v.as_str()),
    ) else {
        return Err(CliError::Input(format!(
            "{} has no cmp_reference/cmp_secret",
            path.display()
        )));
    };
    let secret = Zeroizing::new(secret.as_bytes().to_vec());
    clients
        .cmp_admin
        .clone()
        .put_shared_secret(PutSharedSecretRequest {
            tenant: tenant.into(),
            reference: reference.into(),
            secret: secret.to_vec(),
        })
        .await?;
    clients
        .cmp_admin
        .clone()
        .create_ra(CreateRaRequest {
            tenant: tenant.into(),
            rotate: false,
        })
        .await?;
    Ok(())
}
