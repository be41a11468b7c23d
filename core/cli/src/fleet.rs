//! `certgate fleet cert`: mTLS identities for edges and cores on other hosts, issued by
//! certgate's own CA through the one issuance path (`Core.Issue`, I-2) under the `fleet-mtls`
//! profile (docs/operations.md, "Edges and cores across hosts").
//!
//! The certificate carries exactly one SPIFFE URI SAN (`spiffe://trust-domain/path`, the X.509-SVID
//! identity the core's listener and the edge's core verifier check), optional DNS SANs, the
//! serverAuth and clientAuth EKUs (one certificate serves a core's listener and an edge's client
//! side) and a P-256 key generated here and written 0600. The `fleet-mtls` profile is created on
//! first use and admits URI SANs only under the trust domains it was asked for; the built-in
//! `tls-server` profile admits none, so ACME/EST/SCEP/CMP clients cannot obtain a SPIFFE ID.

use std::path::PathBuf;

use certgate_proto::admin::{ListProfilesRequest, PutProfileRequest};
use certgate_proto::core::{IssueRequest, issue_request};
use zeroize::Zeroizing;

use crate::client::Clients;
use crate::commands::default_issue_key;
use crate::datadir::write_file;
use crate::error::{CliError, Result};
use crate::pem;

/// The profile fleet identities are issued under.
pub const FLEET_PROFILE: &str = "fleet-mtls";

/// Arguments of `fleet cert`.
pub struct FleetCertArgs {
    /// The SPIFFE ID, `spiffe://trust-domain/path`.
    pub spiffe: String,
    /// Output directory.
    pub out: PathBuf,
    /// File stem (default: the last path segment of the SPIFFE ID).
    pub name: Option<String>,
    /// Extra DNS SANs.
    pub dns: Vec<String>,
    /// Tenant whose issuing CA signs.
    pub tenant: String,
    /// Validity in days (0 = profile default, 30 days).
    pub validity_days: u64,
}

/// The trust domain of a SPIFFE ID, checked the way the core will check it.
fn trust_domain(spiffe: &str) -> Result<&str> {
    let bad = || CliError::Input(format!("{spiffe:?} is not spiffe://trust-domain/path"));
    let rest = spiffe.strip_prefix("spiffe://").ok_or_else(bad)?;
    let (domain, path) = rest.split_once('/').ok_or_else(bad)?;
    if domain.is_empty() || path.is_empty() {
        return Err(bad());
    }
    Ok(domain)
}

/// The `fleet-mtls` profile document admitting URI SANs under `prefixes`.
fn profile_toml(prefixes: &[String]) -> String {
    let list = prefixes
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"# certgate fleet mTLS identities (certgate fleet cert): one SPIFFE ID each
key_algorithms = ["ecdsa-p256", "ecdsa-p384", "ed25519"]
ekus = ["server_auth", "client_auth"]
key_usages = ["digital_signature"]
max_validity_seconds = 7776000      # 90 days
default_validity_seconds = 2592000  # 30 days
allowed_dns_suffixes = ["."]
allowed_ip_ranges = []
allow_wildcards = false
max_sans = 10
allowed_uri_prefixes = [{list}]
"#
    )
}

/// Makes sure the tenant's `fleet-mtls` profile admits `spiffe://domain/`; adds a version if not.
async fn ensure_profile(clients: &Clients, tenant: &str, domain: &str) -> Result<()> {
    let prefix = format!("spiffe://{domain}/");
    let list = clients
        .admin
        .clone()
        .list_profiles(ListProfilesRequest {
            tenant: tenant.into(),
        })
        .await?
        .into_inner();
    let mut prefixes: Vec<String> = list
        .profiles
        .iter()
        .find(|p| p.name == FLEET_PROFILE)
        .and_then(|p| serde_json::from_str::<serde_json::Value>(&p.body_json).ok())
        .and_then(|v| {
            v.get("allowed_uri_prefixes")?.as_array().map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default();
    if prefixes.contains(&prefix) {
        return Ok(());
    }
    prefixes.push(prefix);
    let v = clients
        .admin
        .clone()
        .put_profile(PutProfileRequest {
            tenant: tenant.into(),
            name: FLEET_PROFILE.into(),
            body: profile_toml(&prefixes),
            format: "toml".into(),
        })
        .await?
        .into_inner();
    eprintln!(
        "profile {}/{} version {} admits {}",
        v.tenant,
        v.name,
        v.version,
        prefixes.join(", ")
    );
    Ok(())
}

/// `fleet cert`: writes OUT/NAME.pem (leaf, then its chain up to the root), OUT/NAME.key (0600)
/// and OUT/ca.pem (the issuing CA: the trust anchor for `client_ca` / `[core_tls] ca`).
pub async fn fleet_cert(clients: &Clients, a: FleetCertArgs) -> Result<()> {
    let domain = trust_domain(&a.spiffe)?;
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a
            .spiffe
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("fleet")
            .to_owned(),
    };
    if name.contains('/') || name.starts_with('.') {
        return Err(CliError::Input(format!("bad --name {name:?}")));
    }
    ensure_profile(clients, &a.tenant, domain).await?;

    let key =
        rcgen::KeyPair::generate().map_err(|e| CliError::Crypto(format!("key generation: {e}")))?;
    let mut params = rcgen::CertificateParams::new(a.dns.clone())
        .map_err(|e| CliError::Input(format!("DNS names: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri: rcgen::string::Ia5String = a
        .spiffe
        .as_str()
        .try_into()
        .map_err(|e| CliError::Input(format!("SPIFFE ID: {e}")))?;
    params.subject_alt_names.push(rcgen::SanType::URI(uri));
    let csr = params
        .serialize_request(&key)
        .map_err(|e| CliError::Crypto(format!("CSR: {e}")))?
        .der()
        .to_vec();
    let key_pem = Zeroizing::new(key.serialize_pem());

    let resp = clients
        .core
        .clone()
        .issue(IssueRequest {
            tenant: a.tenant.clone(),
            profile: FLEET_PROFILE.into(),
            idempotency_key: default_issue_key(&a.tenant, FLEET_PROFILE, &csr),
            request: Some(issue_request::Request::CsrDer(csr)),
            validated_identifiers: vec![],
            protocol: "cli".into(),
            client_identity: format!("uid:{}", certgate_proto::transport::current_uid()),
            validity_seconds: a.validity_days * 86_400,
            ..IssueRequest::default()
        })
        .await?
        .into_inner();
    if resp.certificate_der.is_empty() {
        return Err(CliError::Input(format!(
            "the {FLEET_PROFILE} profile holds requests for approval (pending id {}); approve \
             it and run this again",
            resp.pending_id
        )));
    }
    let Some(issuing) = resp.chain_der.first() else {
        return Err(CliError::Input("the core returned no chain".into()));
    };
    std::fs::create_dir_all(&a.out).map_err(crate::error::io(a.out.display()))?;
    let mut chain = pem::encode("CERTIFICATE", &resp.certificate_der);
    for c in &resp.chain_der {
        chain.push_str(&pem::encode("CERTIFICATE", c));
    }
    let cert_path = a.out.join(format!("{name}.pem"));
    let key_path = a.out.join(format!("{name}.key"));
    let ca_path = a.out.join("ca.pem");
    write_file(&key_path, key_pem.as_bytes(), 0o600)?;
    write_file(&cert_path, chain.as_bytes(), 0o644)?;
    write_file(
        &ca_path,
        pem::encode("CERTIFICATE", issuing).as_bytes(),
        0o644,
    )?;
    println!(
        "{}  serial {}  issuer {}  -> {} {} {}",
        a.spiffe,
        resp.serial_hex,
        resp.issuer_id,
        cert_path.display(),
        key_path.display(),
        ca_path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_domains_and_profile() {
        assert_eq!(
            trust_domain("spiffe://certgate.local/edge/1").ok(),
            Some("certgate.local")
        );
        for bad in ["spiffe://certgate.local", "https://x/y", "spiffe:///y"] {
            assert!(trust_domain(bad).is_err(), "{bad}");
        }
        let body = profile_toml(&["spiffe://a.test/".into(), "spiffe://b.test/".into()]);
        let v: toml::Value = toml::from_str(&body).expect("profile is TOML");
        assert_eq!(
            v.get("allowed_uri_prefixes")
                .and_then(|a| a.as_array())
                .map(Vec::len),
            Some(2)
        );
    }
}
