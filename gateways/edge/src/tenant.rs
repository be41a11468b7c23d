//! Tenant routing: `/t/{tenant}/…` names a tenant, any other path is the `default` tenant
//! (stable interfaces table). Every cache key and core call carries the tenant (I-4).

/// The tenant served at the plain paths.
pub const DEFAULT_TENANT: &str = "default";

/// Whether `name` is a syntactically valid tenant name (`[a-z0-9-]{1,63}`), as the core defines it.
pub fn valid_tenant(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Splits a request path into (tenant, remaining path). `None` when the `/t/` prefix names an
/// invalid tenant.
pub fn split_tenant(path: &str) -> Option<(&str, &str)> {
    match path.strip_prefix("/t/") {
        Some(rest) => {
            let (tenant, tail) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            valid_tenant(tenant).then_some((tenant, tail))
        }
        None => Some((DEFAULT_TENANT, path)),
    }
}

/// `[tenants]` in edge.toml: Host routing and the tenant-existence cache.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Host name (without port, lower case) → tenant, for requests at the plain paths. A path
    /// with `/t/{tenant}/` always wins.
    pub hosts: std::collections::BTreeMap<String, String>,
    /// How long the core's answer on a tenant (exists with this ACME meta / does not exist) is
    /// reused, seconds.
    pub cache_ttl_seconds: u64,
    /// Most tenants remembered.
    pub cache_max_entries: u64,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            hosts: std::collections::BTreeMap::new(),
            cache_ttl_seconds: 10,
            cache_max_entries: 4096,
        }
    }
}

impl TenantConfig {
    /// Every mapped tenant name must be valid; the cache must be bounded.
    pub fn validate(&self) -> Result<(), String> {
        if let Some((h, t)) = self.hosts.iter().find(|(_, t)| !valid_tenant(t)) {
            return Err(format!("[tenants.hosts] {h}: invalid tenant name {t:?}"));
        }
        if self.cache_ttl_seconds == 0 || self.cache_max_entries == 0 {
            return Err("[tenants] cache bounds must be positive".into());
        }
        Ok(())
    }

    /// The tenant configured for the request's `Host` (or HTTP/2 `:authority`), if any.
    pub fn tenant_for_host(&self, host: Option<&str>) -> Option<&str> {
        if self.hosts.is_empty() {
            return None;
        }
        let host = host?;
        // Strip a port; IPv6 literals keep their brackets.
        let name = match host.rfind(':') {
            Some(i) if !host[i..].contains(']') => &host[..i],
            _ => host,
        };
        self.hosts
            .get(name.to_ascii_lowercase().trim_end_matches('.'))
            .map(String::as_str)
    }
}

/// What the core said about a tenant.
pub type TenantMeta = std::sync::Arc<certgate_proto::acme::TenantMeta>;

/// Which tenants exist, asked of the core (`Acme.GetTenantMeta`) and remembered briefly, so an
/// unknown tenant is a 404 that says nothing about the others, and a flood of made-up tenant
/// names costs one bounded cache (I-8), not one core call each after the first.
#[derive(Clone)]
pub struct TenantDirectory {
    core: crate::core_client::CoreClient,
    cache: moka::future::Cache<String, Option<TenantMeta>>,
}

impl TenantDirectory {
    /// A directory asking `core`.
    pub fn new(core: crate::core_client::CoreClient, cfg: &TenantConfig) -> Self {
        Self {
            core,
            cache: moka::future::Cache::builder()
                .max_capacity(cfg.cache_max_entries)
                .time_to_live(std::time::Duration::from_secs(cfg.cache_ttl_seconds))
                .build(),
        }
    }

    /// The core client it asks.
    pub fn core(&self) -> &crate::core_client::CoreClient {
        &self.core
    }

    /// `Ok(Some(meta))` for a tenant the core knows, `Ok(None)` for one it does not (NOT_FOUND),
    /// `Err` when the core could not say (not cached: asked again next time).
    pub async fn lookup(
        &self,
        tenant: &str,
    ) -> Result<Option<TenantMeta>, certgate_proto::RpcError> {
        if let Some(v) = self.cache.get(tenant).await {
            return Ok(v);
        }
        // Single flight: a burst of requests for a tenant not yet cached makes one core call.
        let core = self.core.clone();
        let name = tenant.to_owned();
        self.cache
            .try_get_with(tenant.to_owned(), async move {
                match core.tenant_meta(&name).await {
                    Ok(m) => Ok(Some(std::sync::Arc::new(m))),
                    Err(e) if e.kind == certgate_proto::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|e| (*e).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_map_strips_port_and_case() {
        let cfg = TenantConfig {
            hosts: std::collections::BTreeMap::from([(
                "acme.corp.example".to_owned(),
                "corp".to_owned(),
            )]),
            ..TenantConfig::default()
        };
        assert_eq!(
            cfg.tenant_for_host(Some("ACME.corp.example:8443")),
            Some("corp")
        );
        assert_eq!(cfg.tenant_for_host(Some("acme.corp.example")), Some("corp"));
        assert_eq!(cfg.tenant_for_host(Some("other.example")), None);
        assert_eq!(cfg.tenant_for_host(None), None);
        let bad = TenantConfig {
            hosts: std::collections::BTreeMap::from([("h".to_owned(), "Bad".to_owned())]),
            ..TenantConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn plain_paths_belong_to_the_default_tenant() {
        assert_eq!(
            split_tenant("/acme/directory"),
            Some(("default", "/acme/directory"))
        );
    }

    #[test]
    fn tenant_prefix_is_split_off() {
        assert_eq!(
            split_tenant("/t/acme-corp/ca/x.der"),
            Some(("acme-corp", "/ca/x.der"))
        );
        assert_eq!(split_tenant("/t/a"), Some(("a", "/")));
    }

    #[test]
    fn invalid_tenant_names_are_refused() {
        assert_eq!(split_tenant("/t/UPPER/x"), None);
        assert_eq!(split_tenant("/t//x"), None);
        assert_eq!(split_tenant(&format!("/t/{}/x", "a".repeat(64))), None);
    }
}
