//! `certgate acme …`: External Account Binding keys and a tenant's ACME settings (Admin
//! `CreateEabKey` / `SetAcmeSettings` on the core).

use certgate_proto::admin::{AcmeSettings, CreateEabKeyRequest};
use zeroize::Zeroizing;

use crate::client::Clients;
use crate::error::Result;

/// `acme eab create`: prints the key id and the HMAC key. The key is shown this once; the core
/// keeps it and never returns it again.
pub async fn eab_create(clients: &Clients, tenant: &str) -> Result<()> {
    let created = clients
        .admin
        .clone()
        .create_eab_key(CreateEabKeyRequest {
            tenant: tenant.into(),
        })
        .await?
        .into_inner();
    let key = Zeroizing::new(created.hmac_key_b64url);
    println!("tenant    {}", created.tenant);
    println!("key id    {}", created.key_id);
    println!("hmac key  {}", key.as_str());
    println!(
        "(shown once; binds one account) e.g. certbot --eab-kid {} --eab-hmac-key <hmac key>",
        created.key_id
    );
    Ok(())
}

/// The settings `acme settings` writes (all of them: the call replaces the tenant's settings).
pub struct SettingsArgs {
    /// Tenant.
    pub tenant: String,
    /// newAccount needs an EAB.
    pub eab_required: bool,
    /// Terms of service URL.
    pub tos: Option<String>,
    /// Website URL.
    pub website: Option<String>,
    /// CAA identities.
    pub caa: Vec<String>,
}

/// `acme settings`.
pub async fn settings(clients: &Clients, a: SettingsArgs) -> Result<()> {
    let s = clients
        .admin
        .clone()
        .set_acme_settings(AcmeSettings {
            tenant: a.tenant,
            terms_of_service: a.tos.unwrap_or_default(),
            website: a.website.unwrap_or_default(),
            caa_identities: a.caa,
            external_account_required: a.eab_required,
        })
        .await?
        .into_inner();
    println!(
        "{}: termsOfService {:?}, website {:?}, caaIdentities {:?}, externalAccountRequired {}",
        s.tenant, s.terms_of_service, s.website, s.caa_identities, s.external_account_required
    );
    Ok(())
}
