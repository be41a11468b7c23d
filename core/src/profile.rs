//! Certificate profiles: the tenant's policy, enforced before anything is signed (I-9).
//!
//! A profile is a small document (TOML or JSON, schema in docs/profiles.md). Every refusal names
//! the rule that refused, as `profile.<field>`, so edges can tell clients exactly what to change.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// Key algorithms a subject key may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// RSA of at least `min_rsa_bits`.
    Rsa,
    /// Ed25519.
    Ed25519,
}

/// Extended key usages a profile may grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Eku {
    /// id-kp-serverAuth.
    ServerAuth,
    /// id-kp-clientAuth.
    ClientAuth,
    /// id-kp-codeSigning.
    CodeSigning,
    /// id-kp-emailProtection.
    EmailProtection,
}

impl Eku {
    /// The OID (RFC 5280 §4.2.1.12).
    pub fn oid(self) -> const_oid::ObjectIdentifier {
        use const_oid::db::rfc5280 as o;
        match self {
            Eku::ServerAuth => o::ID_KP_SERVER_AUTH,
            Eku::ClientAuth => o::ID_KP_CLIENT_AUTH,
            Eku::CodeSigning => o::ID_KP_CODE_SIGNING,
            Eku::EmailProtection => o::ID_KP_EMAIL_PROTECTION,
        }
    }

    /// The EKU for an OID, if a profile can name it.
    pub fn from_oid(oid: &const_oid::ObjectIdentifier) -> Option<Self> {
        [
            Eku::ServerAuth,
            Eku::ClientAuth,
            Eku::CodeSigning,
            Eku::EmailProtection,
        ]
        .into_iter()
        .find(|e| e.oid() == *oid)
    }
}

/// Key usages a profile may grant (RFC 5280 §4.2.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ku {
    /// digitalSignature.
    DigitalSignature,
    /// keyEncipherment (RSA subject keys only; dropped for other keys).
    KeyEncipherment,
    /// keyAgreement (EC subject keys only; dropped for other keys).
    KeyAgreement,
}

/// A profile document (docs/profiles.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Subject key algorithms allowed.
    pub key_algorithms: Vec<KeyAlgorithm>,
    /// Smallest RSA modulus allowed, in bits (never below 2048).
    #[serde(default = "default_min_rsa")]
    pub min_rsa_bits: u32,
    /// EKUs allowed; a certificate gets the ones the CSR asks for, or all of them.
    pub ekus: Vec<Eku>,
    /// Key usages of issued certificates.
    pub key_usages: Vec<Ku>,
    /// Longest validity a request may ask for.
    pub max_validity_seconds: u64,
    /// Validity when the request names none (at most `max_validity_seconds`).
    pub default_validity_seconds: u64,
    /// DNS names must equal or end in `.` + one of these; `"."` allows every name; empty allows
    /// no DNS name.
    #[serde(default)]
    pub allowed_dns_suffixes: Vec<String>,
    /// IP SANs must fall in one of these CIDR ranges; empty allows no IP SAN.
    #[serde(default)]
    pub allowed_ip_ranges: Vec<String>,
    /// Whether `*.example.com` may be requested.
    #[serde(default)]
    pub allow_wildcards: bool,
    /// Most SANs in one certificate.
    pub max_sans: u32,
    /// SPIFFE URI SANs (`spiffe://trust-domain/path`) must start with one of these prefixes, each
    /// a `spiffe://` URI ending in `/`; empty (the default) allows no URI SAN. Fleet mTLS
    /// identities (docs/operations.md) are the only certificates that carry one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_uri_prefixes: Vec<String>,
    /// Whether a request that passes the profile is issued at once (`auto`, the default) or
    /// held as a pending request until an operator approves it (`manual`, docs/profiles.md).
    #[serde(default, skip_serializing_if = "Approval::is_auto")]
    pub approval: Approval,
}

/// How a request that passes the profile gets issued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// Issued at once.
    #[default]
    Auto,
    /// Held as a pending request until an operator approves it with `certgate request approve`
    /// (EST 202 + Retry-After, SCEP PENDING, CMP waiting/pollRep meanwhile).
    Manual,
}

impl Approval {
    /// True for the default (kept out of the stored JSON so older documents stay unchanged).
    pub fn is_auto(&self) -> bool {
        *self == Approval::Auto
    }
}

fn default_min_rsa() -> u32 {
    2048
}

/// The built-in profile a new tenant gets as `tls-server` version 1 (docs/profiles.md).
pub const BUILTIN_TLS_SERVER_TOML: &str = r#"# certgate built-in profile "tls-server"
key_algorithms = ["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa"]
min_rsa_bits = 2048
ekus = ["server_auth", "client_auth"]
key_usages = ["digital_signature", "key_encipherment"]
max_validity_seconds = 7776000      # 90 days
default_validity_seconds = 7776000
allowed_dns_suffixes = ["."]        # any name (dev); list your zones in production
allowed_ip_ranges = ["0.0.0.0/0", "::/0"]
allow_wildcards = true
max_sans = 100
"#;

/// The name of the built-in profile.
pub const BUILTIN_PROFILE_NAME: &str = "tls-server";

impl Profile {
    /// The built-in `tls-server` profile.
    pub fn builtin_tls_server() -> Self {
        // The constant is checked by a unit test; a failure here is a build defect.
        Self::parse(BUILTIN_TLS_SERVER_TOML, "toml").unwrap_or_else(|_| Self {
            key_algorithms: vec![KeyAlgorithm::EcdsaP256],
            min_rsa_bits: 2048,
            ekus: vec![Eku::ServerAuth],
            key_usages: vec![Ku::DigitalSignature],
            max_validity_seconds: 7_776_000,
            default_validity_seconds: 7_776_000,
            allowed_dns_suffixes: vec![],
            allowed_ip_ranges: vec![],
            allow_wildcards: false,
            max_sans: 100,
            allowed_uri_prefixes: vec![],
            approval: Approval::Auto,
        })
    }

    /// Parses and validates a document in `format` ("toml" or "json"; empty = toml).
    pub fn parse(body: &str, format: &str) -> Result<Self> {
        let profile: Profile = match format {
            "" | "toml" => toml::from_str(body)
                .map_err(|e| CoreError::malformed("profile.syntax", e.message().to_owned()))?,
            "json" => serde_json::from_str(body)
                .map_err(|e| CoreError::malformed("profile.syntax", e.to_string()))?,
            other => {
                return Err(CoreError::malformed(
                    "profile.format",
                    format!("unknown profile format {other:?} (toml or json)"),
                ));
            }
        };
        profile.validate()?;
        Ok(profile)
    }

    /// Normalised JSON (what is stored and shown).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a stored (already validated) profile.
    pub fn from_json(body: &str) -> Result<Self> {
        serde_json::from_str(body).map_err(|e| CoreError::Store(format!("stored profile: {e}")))
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(CoreError::malformed("profile.invalid", m.to_owned()));
        if self.key_algorithms.is_empty() {
            return bad("key_algorithms is empty");
        }
        if self.min_rsa_bits < 2048 {
            return bad("min_rsa_bits below 2048");
        }
        if self.ekus.is_empty() {
            return bad("ekus is empty");
        }
        if self.key_usages.is_empty() {
            return bad("key_usages is empty");
        }
        if self.max_validity_seconds == 0 || self.default_validity_seconds == 0 {
            return bad("validity must be positive");
        }
        if self.default_validity_seconds > self.max_validity_seconds {
            return bad("default_validity_seconds exceeds max_validity_seconds");
        }
        if self.max_sans == 0 {
            return bad("max_sans must be at least 1");
        }
        for range in &self.allowed_ip_ranges {
            parse_cidr(range)?;
        }
        for prefix in &self.allowed_uri_prefixes {
            let valid = prefix.ends_with('/')
                && San::spiffe(&format!("{prefix}x")).is_ok()
                && prefix.len() > "spiffe://".len() + 1;
            if !valid {
                return bad(&format!(
                    "allowed_uri_prefixes entry {prefix:?} is not a spiffe://trust-domain/ prefix"
                ));
            }
        }
        for suffix in &self.allowed_dns_suffixes {
            if suffix != "." && check_dns_name(suffix, false).is_err() {
                return bad(&format!(
                    "allowed_dns_suffixes entry {suffix:?} is not a DNS name"
                ));
            }
        }
        Ok(())
    }

    /// Checks the subject key.
    pub fn check_key(&self, alg: KeyAlgorithm, rsa_bits: Option<u32>) -> Result<()> {
        if !self.key_algorithms.contains(&alg) {
            return Err(CoreError::policy(
                "profile.key_algorithms",
                format!("key algorithm {alg:?} is not allowed by the profile"),
            ));
        }
        if alg == KeyAlgorithm::Rsa {
            let bits = rsa_bits.unwrap_or(0);
            if bits < self.min_rsa_bits {
                return Err(CoreError::policy(
                    "profile.min_rsa_bits",
                    format!(
                        "RSA key of {bits} bits is below the profile minimum of {}",
                        self.min_rsa_bits
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The validity to issue for: the request's (capped, never silently shortened) or the default.
    pub fn validity(&self, requested_seconds: u64) -> Result<u64> {
        if requested_seconds == 0 {
            return Ok(self.default_validity_seconds);
        }
        if requested_seconds > self.max_validity_seconds {
            return Err(CoreError::policy(
                "profile.max_validity",
                format!(
                    "requested validity of {requested_seconds} s exceeds the profile maximum of {} s",
                    self.max_validity_seconds
                ),
            ));
        }
        Ok(requested_seconds)
    }

    /// The EKUs to grant: the requested ones (each must be allowed) or all allowed ones.
    pub fn ekus_for(&self, requested: &[const_oid::ObjectIdentifier]) -> Result<Vec<Eku>> {
        if requested.is_empty() {
            return Ok(self.ekus.clone());
        }
        let mut out = Vec::new();
        for oid in requested {
            match Eku::from_oid(oid).filter(|e| self.ekus.contains(e)) {
                Some(e) if !out.contains(&e) => out.push(e),
                Some(_) => {}
                None => {
                    return Err(CoreError::policy(
                        "profile.ekus",
                        format!("extended key usage {oid} is not allowed by the profile"),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Checks the SANs the certificate would carry.
    pub fn check_sans(&self, sans: &[San]) -> Result<()> {
        if sans.len() > self.max_sans as usize {
            return Err(CoreError::policy(
                "profile.max_sans",
                format!(
                    "{} names requested, the profile allows at most {}",
                    sans.len(),
                    self.max_sans
                ),
            ));
        }
        for san in sans {
            match san {
                San::Dns(name) => self.check_dns(name)?,
                San::Ip(ip) => self.check_ip(*ip)?,
                San::Uri(uri) => self.check_uri(uri)?,
            }
        }
        Ok(())
    }

    fn check_dns(&self, name: &str) -> Result<()> {
        let wildcard = name.starts_with("*.");
        if wildcard && !self.allow_wildcards {
            return Err(CoreError::policy(
                "profile.allow_wildcards",
                format!("wildcard name {name:?} is not allowed by the profile"),
            ));
        }
        let base = name.strip_prefix("*.").unwrap_or(name);
        let allowed = self.allowed_dns_suffixes.iter().any(|suffix| {
            suffix == "."
                || base == suffix
                || (base.len() > suffix.len()
                    && base.ends_with(suffix.as_str())
                    && base.as_bytes()[base.len() - suffix.len() - 1] == b'.')
        });
        if !allowed {
            return Err(CoreError::policy(
                "profile.allowed_suffixes",
                format!("name {name:?} is not under a suffix the profile allows"),
            ));
        }
        Ok(())
    }

    fn check_uri(&self, uri: &str) -> Result<()> {
        if self
            .allowed_uri_prefixes
            .iter()
            .any(|p| uri.starts_with(p.as_str()))
        {
            return Ok(());
        }
        Err(CoreError::policy(
            "profile.allowed_uri_prefixes",
            format!("URI {uri:?} is not under a prefix the profile allows"),
        ))
    }

    fn check_ip(&self, ip: IpAddr) -> Result<()> {
        for range in &self.allowed_ip_ranges {
            let (net, prefix) = parse_cidr(range)?;
            if cidr_contains(net, prefix, ip) {
                return Ok(());
            }
        }
        Err(CoreError::policy(
            "profile.allowed_ip_ranges",
            format!("IP address {ip} is not in a range the profile allows"),
        ))
    }
}

impl KeyAlgorithm {
    /// The name used in profile documents and `ProfileDescription.key_algorithms`.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa => "rsa",
            KeyAlgorithm::Ed25519 => "ed25519",
        }
    }

    /// The CSR signature algorithms the core verifies for a key of this type (the table of
    /// `csr::parse_csr`; a unit test there keeps the two in step).
    pub fn signature_algorithms(self) -> &'static [const_oid::ObjectIdentifier] {
        use const_oid::db::rfc5912 as o;
        match self {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
                &[o::ECDSA_WITH_SHA_256, o::ECDSA_WITH_SHA_384]
            }
            KeyAlgorithm::Rsa => &[
                o::SHA_256_WITH_RSA_ENCRYPTION,
                o::SHA_384_WITH_RSA_ENCRYPTION,
                o::SHA_512_WITH_RSA_ENCRYPTION,
            ],
            KeyAlgorithm::Ed25519 => &[const_oid::db::rfc8410::ID_ED_25519],
        }
    }
}

impl Ku {
    /// The name used in profile documents and `ProfileDescription.key_usages`.
    pub fn name(self) -> &'static str {
        match self {
            Ku::DigitalSignature => "digital_signature",
            Ku::KeyEncipherment => "key_encipherment",
            Ku::KeyAgreement => "key_agreement",
        }
    }
}

impl Profile {
    /// The profile as `Core.DescribeProfile` publishes it to edges (EST csrattrs, CMP
    /// certReqTemplate): what a request may use and what the certificate gets. Derived from the
    /// same fields the checks above enforce, so what edges advertise is what the core accepts.
    pub fn describe(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> certgate_proto::core::ProfileDescription {
        let mut signature_algorithms: Vec<String> = Vec::new();
        for alg in &self.key_algorithms {
            for oid in alg.signature_algorithms() {
                let oid = oid.to_string();
                if !signature_algorithms.contains(&oid) {
                    signature_algorithms.push(oid);
                }
            }
        }
        let mut san_types = Vec::new();
        if !self.allowed_dns_suffixes.is_empty() {
            san_types.push("dns".to_owned());
        }
        if !self.allowed_ip_ranges.is_empty() {
            san_types.push("ip".to_owned());
        }
        if !self.allowed_uri_prefixes.is_empty() {
            san_types.push("uri".to_owned());
        }
        certgate_proto::core::ProfileDescription {
            tenant: tenant.to_owned(),
            profile: name.to_owned(),
            version,
            key_algorithms: self
                .key_algorithms
                .iter()
                .map(|a| a.name().to_owned())
                .collect(),
            min_rsa_bits: self.min_rsa_bits,
            signature_algorithms,
            subject_attributes: vec![const_oid::db::rfc4519::CN.to_string()],
            san_types,
            max_sans: self.max_sans,
            allow_wildcards: self.allow_wildcards,
            ekus: self.ekus.iter().map(|e| e.oid().to_string()).collect(),
            key_usages: self
                .key_usages
                .iter()
                .map(|k| k.name().to_owned())
                .collect(),
            max_validity_seconds: self.max_validity_seconds,
            default_validity_seconds: self.default_validity_seconds,
            approval: match self.approval {
                Approval::Auto => "auto",
                Approval::Manual => "manual",
            }
            .to_owned(),
        }
    }
}

/// A subject alternative name the core issues.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum San {
    /// A DNS name, lower case, no trailing dot (`*.` prefix for a wildcard).
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
    /// A SPIFFE ID (`spiffe://trust-domain/path`), the only URI form issued.
    Uri(String),
}

impl San {
    /// Parses and normalises a DNS identifier.
    pub fn dns(name: &str) -> Result<Self> {
        let lower = name.to_ascii_lowercase();
        check_dns_name(&lower, true)?;
        Ok(San::Dns(lower))
    }

    /// Parses a SPIFFE ID as the SPIFFE ID spec defines it: `spiffe://`, a lower-case trust
    /// domain of `[a-z0-9.-_]`, a non-empty path of segments of `[A-Za-z0-9.-_]` (no empty, `.`
    /// or `..` segment), no query, fragment, port or user info, at most 2048 bytes.
    pub fn spiffe(uri: &str) -> Result<Self> {
        let bad = |why: &str| {
            Err(CoreError::malformed(
                "request.uri",
                format!("{uri:?} is not a valid SPIFFE ID: {why}"),
            ))
        };
        if uri.len() > 2048 {
            return bad("length");
        }
        let Some(rest) = uri.strip_prefix("spiffe://") else {
            return bad("only spiffe:// URIs are issued");
        };
        let Some((domain, path)) = rest.split_once('/') else {
            return bad("no path");
        };
        if domain.is_empty()
            || !domain.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            })
        {
            return bad("trust domain");
        }
        for segment in path.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return bad("path segment");
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return bad("path characters");
            }
        }
        Ok(San::Uri(uri.to_owned()))
    }
}

/// Checks a DNS name: ASCII (A-labels), labels `[a-z0-9-]{1,63}` not starting or ending with `-`,
/// at most 253 bytes; `*` only as the whole leftmost label when `wildcard`, with a name under it.
pub fn check_dns_name(name: &str, wildcard: bool) -> Result<()> {
    let bad = |why: &str| {
        Err(CoreError::malformed(
            "request.dns_name",
            format!("{name:?} is not a valid DNS name: {why}"),
        ))
    };
    if name.is_empty() || name.len() > 253 {
        return bad("length");
    }
    let labels: Vec<&str> = name.split('.').collect();
    // Single-label names (`localhost`, intranet hosts) are allowed here; whether a profile
    // issues them is its suffix rule's business ("." admits them, a zone list does not). A
    // wildcard needs a name under it.
    if labels.first() == Some(&"*") && labels.len() < 2 {
        return bad("a wildcard needs a name under it");
    }
    for (i, label) in labels.iter().enumerate() {
        if i == 0 && wildcard && *label == "*" {
            continue;
        }
        if label.is_empty() || label.len() > 63 {
            return bad("label length");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("hyphen at label edge");
        }
    }
    Ok(())
}

fn parse_cidr(s: &str) -> Result<(IpAddr, u8)> {
    let bad = || CoreError::malformed("profile.invalid", format!("{s:?} is not a CIDR range"));
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok((addr, prefix))
}

fn cidr_contains(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            (u32::from(n) & mask) == (u32::from(i) & mask)
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            (u128::from(n) & mask) == (u128::from(i) & mask)
        }
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(e: CoreError) -> &'static str {
        match e {
            CoreError::Policy { rule, .. } | CoreError::Malformed { rule, .. } => rule,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn strict() -> Profile {
        Profile {
            key_algorithms: vec![KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa],
            min_rsa_bits: 3072,
            ekus: vec![Eku::ServerAuth],
            key_usages: vec![Ku::DigitalSignature],
            max_validity_seconds: 86_400,
            default_validity_seconds: 3600,
            allowed_dns_suffixes: vec!["example.com".into()],
            allowed_ip_ranges: vec!["10.0.0.0/8".into()],
            allow_wildcards: false,
            max_sans: 2,
            allowed_uri_prefixes: vec![],
            approval: Approval::Auto,
        }
    }

    #[test]
    fn spiffe_uris_are_issued_only_under_an_allowed_prefix() {
        assert!(San::spiffe("spiffe://certgate.local/edge/1").is_ok());
        for bad in [
            "https://certgate.local/edge",
            "spiffe://certgate.local",
            "spiffe://certgate.local/",
            "spiffe://Certgate.local/edge",
            "spiffe://certgate.local/a//b",
            "spiffe://certgate.local/a/../b",
            "spiffe://certgate.local/a?b",
            "spiffe://user@certgate.local/a",
        ] {
            assert!(San::spiffe(bad).is_err(), "{bad}");
        }
        let uri = San::spiffe("spiffe://certgate.local/edge/1").unwrap();
        // The built-in profile allows no URI SAN at all.
        assert_eq!(
            rule(
                Profile::builtin_tls_server()
                    .check_sans(std::slice::from_ref(&uri))
                    .unwrap_err()
            ),
            "profile.allowed_uri_prefixes"
        );
        let body = BUILTIN_TLS_SERVER_TOML.to_owned()
            + "\nallowed_uri_prefixes = [\"spiffe://certgate.local/\"]\n";
        let p = Profile::parse(&body, "toml").expect("prefix parses");
        p.check_sans(&[uri]).expect("allowed");
        let other = San::spiffe("spiffe://certgate.localevil/edge").unwrap();
        assert!(p.check_sans(&[other]).is_err());
        for bad in ["spiffe://certgate.local", "https://x/", "spiffe:///"] {
            let body = BUILTIN_TLS_SERVER_TOML.to_owned()
                + &format!("\nallowed_uri_prefixes = [{bad:?}]\n");
            assert!(Profile::parse(&body, "toml").is_err(), "{bad}");
        }
        assert!(!Profile::builtin_tls_server().to_json().contains("uri"));
    }

    #[test]
    fn builtin_profile_parses() {
        let p = Profile::parse(BUILTIN_TLS_SERVER_TOML, "toml").expect("builtin parses");
        assert_eq!(p, Profile::builtin_tls_server());
        assert_eq!(p.max_validity_seconds, 90 * 86_400);
        let json = p.to_json();
        assert_eq!(Profile::parse(&json, "json").expect("json round trip"), p);
    }

    #[test]
    fn refuses_disallowed_key_algorithm() {
        let e = strict().check_key(KeyAlgorithm::Ed25519, None).unwrap_err();
        assert_eq!(rule(e), "profile.key_algorithms");
        strict()
            .check_key(KeyAlgorithm::EcdsaP256, None)
            .expect("allowed");
    }

    #[test]
    fn refuses_small_rsa_key() {
        let e = strict()
            .check_key(KeyAlgorithm::Rsa, Some(2048))
            .unwrap_err();
        assert_eq!(rule(e), "profile.min_rsa_bits");
        strict()
            .check_key(KeyAlgorithm::Rsa, Some(3072))
            .expect("large enough");
    }

    #[test]
    fn refuses_too_long_validity_and_defaults_otherwise() {
        let e = strict().validity(86_401).unwrap_err();
        assert_eq!(rule(e), "profile.max_validity");
        assert_eq!(strict().validity(0).expect("default"), 3600);
        assert_eq!(strict().validity(86_400).expect("max"), 86_400);
    }

    #[test]
    fn refuses_names_outside_allowed_suffixes() {
        let p = strict();
        p.check_sans(&[San::dns("www.example.com").expect("dns")])
            .expect("under suffix");
        p.check_sans(&[San::dns("example.com").expect("dns")])
            .expect("suffix itself");
        for name in ["www.example.org", "badexample.com"] {
            let e = p.check_sans(&[San::dns(name).expect("dns")]).unwrap_err();
            assert_eq!(rule(e), "profile.allowed_suffixes", "{name}");
        }
    }

    #[test]
    fn single_label_names_follow_the_suffix_rule() {
        let localhost = San::dns("localhost").expect("single label is a DNS name");
        Profile::builtin_tls_server()
            .check_sans(std::slice::from_ref(&localhost))
            .expect("\".\" admits localhost");
        let e = strict().check_sans(&[localhost]).unwrap_err();
        assert_eq!(rule(e), "profile.allowed_suffixes");
    }

    #[test]
    fn refuses_wildcards_when_forbidden() {
        let e = strict()
            .check_sans(&[San::dns("*.example.com").expect("dns")])
            .unwrap_err();
        assert_eq!(rule(e), "profile.allow_wildcards");
        let mut p = strict();
        p.allow_wildcards = true;
        p.check_sans(&[San::dns("*.example.com").expect("dns")])
            .expect("allowed now");
    }

    #[test]
    fn refuses_ips_outside_ranges() {
        let p = strict();
        p.check_sans(&[San::Ip("10.1.2.3".parse().expect("ip"))])
            .expect("in range");
        let e = p
            .check_sans(&[San::Ip("192.168.1.1".parse().expect("ip"))])
            .unwrap_err();
        assert_eq!(rule(e), "profile.allowed_ip_ranges");
        let e = p
            .check_sans(&[San::Ip("::1".parse().expect("ip"))])
            .unwrap_err();
        assert_eq!(rule(e), "profile.allowed_ip_ranges");
    }

    #[test]
    fn refuses_too_many_sans() {
        let sans: Vec<San> = ["a.example.com", "b.example.com", "c.example.com"]
            .iter()
            .map(|n| San::dns(n).expect("dns"))
            .collect();
        assert_eq!(
            rule(strict().check_sans(&sans).unwrap_err()),
            "profile.max_sans"
        );
    }

    #[test]
    fn refuses_ekus_the_profile_does_not_allow() {
        let e = strict().ekus_for(&[Eku::ClientAuth.oid()]).unwrap_err();
        assert_eq!(rule(e), "profile.ekus");
        assert_eq!(strict().ekus_for(&[]).expect("all"), vec![Eku::ServerAuth]);
    }

    #[test]
    fn rejects_bad_dns_names_and_bad_documents() {
        for name in [
            "", "*", "a.com.", "a..b", "-a.com", "a_b.com", "a.*.com", "é.com",
        ] {
            assert!(San::dns(name).is_err(), "{name}");
        }
        assert_eq!(
            rule(Profile::parse("key_algorithms = []", "toml").unwrap_err()),
            "profile.syntax"
        );
        let mut body =
            BUILTIN_TLS_SERVER_TOML.replace("min_rsa_bits = 2048", "min_rsa_bits = 1024");
        assert_eq!(
            rule(Profile::parse(&body, "toml").unwrap_err()),
            "profile.invalid"
        );
        body = BUILTIN_TLS_SERVER_TOML.to_owned() + "\nunknown = 1\n";
        assert!(Profile::parse(&body, "toml").is_err());
    }

    #[test]
    fn describe_publishes_what_the_checks_enforce() {
        let d = strict().describe("t1", "router", 3);
        assert_eq!(
            (d.tenant.as_str(), d.profile.as_str(), d.version),
            ("t1", "router", 3)
        );
        assert_eq!(d.key_algorithms, vec!["ecdsa-p256", "rsa"]);
        assert_eq!(d.min_rsa_bits, 3072);
        assert_eq!(
            d.signature_algorithms,
            vec![
                "1.2.840.10045.4.3.2",
                "1.2.840.10045.4.3.3",
                "1.2.840.113549.1.1.11",
                "1.2.840.113549.1.1.12",
                "1.2.840.113549.1.1.13"
            ]
        );
        assert_eq!(d.san_types, vec!["dns", "ip"]);
        assert_eq!(d.ekus, vec!["1.3.6.1.5.5.7.3.1"]);
        assert_eq!(d.key_usages, vec!["digital_signature"]);
        assert_eq!(d.subject_attributes, vec!["2.5.4.3"]);
        assert_eq!(
            (d.max_validity_seconds, d.default_validity_seconds),
            (86_400, 3600)
        );
        assert_eq!((d.max_sans, d.allow_wildcards), (2, false));
        assert_eq!(d.approval, "auto");
        let mut p = strict();
        p.allowed_ip_ranges.clear();
        p.allowed_uri_prefixes = vec!["spiffe://x.test/".into()];
        p.approval = Approval::Manual;
        let d = p.describe("t1", "router", 1);
        assert_eq!(d.san_types, vec!["dns", "uri"]);
        assert_eq!(d.approval, "manual");
        // Every name published parses back as the document's own spelling.
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa,
            KeyAlgorithm::Ed25519,
        ] {
            let back: KeyAlgorithm =
                serde_json::from_str(&format!("{:?}", alg.name())).expect("name parses");
            assert_eq!(back, alg);
        }
    }

    #[test]
    fn approval_defaults_to_auto_and_parses_manual() {
        assert_eq!(Profile::builtin_tls_server().approval, Approval::Auto);
        assert!(!Profile::builtin_tls_server().to_json().contains("approval"));
        let body = BUILTIN_TLS_SERVER_TOML.to_owned() + "\napproval = \"manual\"\n";
        let p = Profile::parse(&body, "toml").expect("manual parses");
        assert_eq!(p.approval, Approval::Manual);
        assert_eq!(Profile::from_json(&p.to_json()).expect("round trip"), p);
        let bad = BUILTIN_TLS_SERVER_TOML.to_owned() + "\napproval = \"maybe\"\n";
        assert!(Profile::parse(&bad, "toml").is_err());
    }
}
