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

#[cfg(test)]
mod tests {
    use super::*;

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
