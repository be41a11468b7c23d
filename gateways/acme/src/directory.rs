//! The directory document (RFC 8555 §7.1.1, RFC 9773 §3, draft-ietf-acme-profiles) and the URL
//! layout of one tenant's ACME server.
//!
//! URLs are built here and nowhere else, because the JWS `url` header must equal the request URL
//! byte for byte (RFC 8555 §6.4): the glue and the directory must agree on every path.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::Error;

/// The URL layout under one tenant: `{base}/acme` for the default tenant, `{base}/t/{tenant}/acme`
/// for the others (DESIGN.md "Stable interfaces").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeUrls {
    root: String,
}

/// Tenant names are path segments: lowercase letters, digits and `-`, at most 63 characters.
fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 63
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !t.starts_with('-')
}

impl AcmeUrls {
    /// `base_url` is scheme and authority (e.g. `https://127.0.0.1:8443`), without a trailing
    /// slash; `tenant` is `None` for the default tenant.
    pub fn new(base_url: &str, tenant: Option<&str>) -> Result<AcmeUrls, Error> {
        let base = base_url.trim_end_matches('/');
        let root = match tenant {
            None => format!("{base}/acme"),
            Some(t) if valid_tenant(t) => format!("{base}/t/{t}/acme"),
            // A bad tenant name is a configuration error; the router never passes client input here.
            Some(_) => return Err(Error::ServerInternal),
        };
        Ok(AcmeUrls { root })
    }

    /// The path prefix every URL of this tenant starts with.
    pub fn root(&self) -> &str {
        &self.root
    }

    fn join(&self, path: &str) -> String {
        format!("{}/{path}", self.root)
    }

    /// `GET` the directory.
    pub fn directory(&self) -> String {
        self.join("directory")
    }
    /// `HEAD`/`GET` a fresh nonce.
    pub fn new_nonce(&self) -> String {
        self.join("new-nonce")
    }
    /// `POST` newAccount.
    pub fn new_account(&self) -> String {
        self.join("new-acct")
    }
    /// `POST` newOrder.
    pub fn new_order(&self) -> String {
        self.join("new-order")
    }
    /// `POST` revokeCert.
    pub fn revoke_cert(&self) -> String {
        self.join("revoke-cert")
    }
    /// `POST` keyChange.
    pub fn key_change(&self) -> String {
        self.join("key-change")
    }
    /// `GET` renewalInfo (RFC 9773), followed by `/{certificate id}`.
    pub fn renewal_info(&self) -> String {
        self.join("renewal-info")
    }
    /// An account URL (the `kid`).
    pub fn account(&self, id: &str) -> String {
        self.join(&format!("acct/{id}"))
    }
    /// An order URL.
    pub fn order(&self, id: &str) -> String {
        self.join(&format!("order/{id}"))
    }
    /// An order's finalize URL.
    pub fn finalize(&self, id: &str) -> String {
        self.join(&format!("finalize/{id}"))
    }
    /// An authorization URL.
    pub fn authorization(&self, id: &str) -> String {
        self.join(&format!("authz/{id}"))
    }
    /// A challenge URL.
    pub fn challenge(&self, id: &str) -> String {
        self.join(&format!("chall/{id}"))
    }
    /// A certificate download URL.
    pub fn certificate(&self, id: &str) -> String {
        self.join(&format!("cert/{id}"))
    }

    /// The account id from a `kid`, if the `kid` is one of this tenant's account URLs. A `kid`
    /// of another tenant does not match (invariant I-4): the request is `accountDoesNotExist`.
    pub fn account_id_from_kid<'a>(&self, kid: &'a str) -> Result<&'a str, Error> {
        let prefix = self.join("acct/");
        match kid.strip_prefix(prefix.as_str()) {
            Some(id) if !id.is_empty() && !id.contains('/') => Ok(id),
            _ => Err(Error::AccountDoesNotExist),
        }
    }
}

/// The `Link` header value pointing at the directory, which RFC 8555 §7.1 asks for on every
/// response of the ACME server.
pub fn index_link(urls: &AcmeUrls) -> String {
    format!("<{}>;rel=\"index\"", urls.directory())
}

/// The directory's `meta` object, from tenant configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryMeta {
    /// Terms of service URL.
    pub terms_of_service: Option<String>,
    /// Website URL.
    pub website: Option<String>,
    /// CAA issuer domain names.
    pub caa_identities: Vec<String>,
    /// Whether newAccount requires External Account Binding.
    pub external_account_required: bool,
    /// Profile name → human-readable description (draft-ietf-acme-profiles).
    pub profiles: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    terms_of_service: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    website: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    caa_identities: &'a [String],
    external_account_required: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    profiles: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireDirectory<'a> {
    new_nonce: String,
    new_account: String,
    new_order: String,
    revoke_cert: String,
    key_change: String,
    renewal_info: String,
    meta: WireMeta<'a>,
}

/// The directory JSON for `urls` and `meta`, served as `application/json`.
pub fn directory_json(urls: &AcmeUrls, meta: &DirectoryMeta) -> Vec<u8> {
    let d = WireDirectory {
        new_nonce: urls.new_nonce(),
        new_account: urls.new_account(),
        new_order: urls.new_order(),
        revoke_cert: urls.revoke_cert(),
        key_change: urls.key_change(),
        renewal_info: urls.renewal_info(),
        meta: WireMeta {
            terms_of_service: meta.terms_of_service.as_deref(),
            website: meta.website.as_deref(),
            caa_identities: &meta.caa_identities,
            external_account_required: meta.external_account_required,
            profiles: &meta.profiles,
        },
    };
    // Only strings, bools and maps of strings: serialization cannot fail.
    serde_json::to_vec(&d).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn meta() -> DirectoryMeta {
        DirectoryMeta {
            terms_of_service: Some("https://example.com/acme/terms/2017-5-30".into()),
            website: Some("https://www.example.com/".into()),
            caa_identities: vec!["example.com".into()],
            external_account_required: false,
            profiles: BTreeMap::from([("tlsserver".into(), "TLS server, 90 days".into())]),
        }
    }

    /// RFC 8555 §7.1.1: the example directory's members and meta fields.
    #[test]
    fn directory_has_the_rfc8555_shape() {
        let urls = AcmeUrls::new("https://127.0.0.1:8443", None).unwrap();
        let v: Value = serde_json::from_slice(&directory_json(&urls, &meta())).unwrap();
        for (k, path) in [
            ("newNonce", "new-nonce"),
            ("newAccount", "new-acct"),
            ("newOrder", "new-order"),
            ("revokeCert", "revoke-cert"),
            ("keyChange", "key-change"),
            ("renewalInfo", "renewal-info"),
        ] {
            assert_eq!(v[k], format!("https://127.0.0.1:8443/acme/{path}"), "{k}");
        }
        assert_eq!(
            v["meta"]["termsOfService"],
            "https://example.com/acme/terms/2017-5-30"
        );
        assert_eq!(v["meta"]["website"], "https://www.example.com/");
        assert_eq!(v["meta"]["caaIdentities"][0], "example.com");
        assert_eq!(v["meta"]["externalAccountRequired"], false);
        assert_eq!(v["meta"]["profiles"]["tlsserver"], "TLS server, 90 days");
        assert!(
            v.get("newAuthz").is_none(),
            "pre-authorization is not offered"
        );
    }

    #[test]
    fn other_tenants_live_under_t_tenant_acme() {
        let urls = AcmeUrls::new("https://h:8443/", Some("blue")).unwrap();
        assert_eq!(urls.directory(), "https://h:8443/t/blue/acme/directory");
        assert_eq!(urls.account("42"), "https://h:8443/t/blue/acme/acct/42");
        assert_eq!(
            index_link(&urls),
            "<https://h:8443/t/blue/acme/directory>;rel=\"index\""
        );
        assert!(AcmeUrls::new("https://h", Some("../x")).is_err());
        assert!(AcmeUrls::new("https://h", Some("")).is_err());
    }

    #[test]
    fn kid_of_another_tenant_is_not_an_account_here() {
        let blue = AcmeUrls::new("https://h", Some("blue")).unwrap();
        let default = AcmeUrls::new("https://h", None).unwrap();
        assert_eq!(blue.account_id_from_kid(&blue.account("7")), Ok("7"));
        assert_eq!(
            default.account_id_from_kid(&blue.account("7")),
            Err(Error::AccountDoesNotExist)
        );
        assert_eq!(
            blue.account_id_from_kid("https://h/t/blue/acme/acct/"),
            Err(Error::AccountDoesNotExist)
        );
    }
}
