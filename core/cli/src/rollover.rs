//! `certgate ca rollover stage|activate`: the issuing-CA rollover of a tenant
//! (docs/operations.md, "Issuing CA rollover"). The core generates the new key in the signer and
//! certifies it; the CLI only asks and reports.

use std::path::Path;

use certgate_proto::admin::{ActivateRolloverRequest, CaInfo, StageRolloverRequest};

use crate::bootstrap;
use crate::client::Clients;
use crate::datadir::{DataDir, write_file};
use crate::error::Result;
use crate::pem;

/// What `stage` asks for beyond the tenant (empty / 0 = the core's default).
pub struct StageArgs {
    /// The new CA's id.
    pub ca_id: String,
    /// The parent that signs it.
    pub parent: String,
    /// The subject CN.
    pub common_name: String,
    /// Validity in days.
    pub validity_days: u64,
}

fn report(what: &str, c: &CaInfo) {
    println!(
        "{what} {}\tstate={}\ttenant={}\tparent={}\tnot_after={}",
        c.ca_id, c.state, c.tenant, c.parent_ca_id, c.not_after_unix
    );
}

fn chain_pem(c: &CaInfo) -> String {
    c.chain_der
        .iter()
        .map(|d| pem::encode("CERTIFICATE", d))
        .collect()
}

/// `certgate ca rollover stage`: prints the staged CA; `out` receives its chain (new CA first,
/// root last) as PEM.
pub async fn stage(
    clients: &Clients,
    tenant: &str,
    args: StageArgs,
    out: Option<&Path>,
) -> Result<()> {
    let c = clients
        .admin
        .clone()
        .stage_rollover(StageRolloverRequest {
            tenant: tenant.to_owned(),
            ca_id: args.ca_id,
            parent_ca_id: args.parent,
            common_name: args.common_name,
            validity_seconds: args.validity_days.saturating_mul(86_400),
        })
        .await?
        .into_inner();
    report("staged", &c);
    if let Some(out) = out {
        write_file(out, chain_pem(&c).as_bytes(), 0o644)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// `certgate ca rollover activate`: for the default tenant, `ca/chain.pem` and `ca/root.pem`
/// are rewritten from the new active chain (same files, same meaning).
pub async fn activate(dd: &DataDir, clients: &Clients, tenant: &str) -> Result<()> {
    let c = clients
        .admin
        .clone()
        .activate_rollover(ActivateRolloverRequest {
            tenant: tenant.to_owned(),
        })
        .await?
        .into_inner();
    report("activated", &c);
    if tenant == bootstrap::DEFAULT_TENANT {
        bootstrap::write_trust_files(dd, clients).await?;
    }
    Ok(())
}
