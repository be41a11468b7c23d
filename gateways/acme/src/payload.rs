//! Typed request payloads (RFC 8555 §7.3–§7.6, RFC 8738, RFC 9773 §5) and their validation:
//! identifiers, contacts, External Account Binding and the keyChange inner JWS.

use std::net::IpAddr;

use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use crate::ari::CertId;
use crate::b64;
use crate::error::Error;
use crate::jwk::Jwk;
use crate::jws::{KeyRef, RawJws, Verified};
use crate::problem::{ProblemType, Subproblem};

/// Most contacts an account may list; more is a client bug or abuse.
pub const MAX_CONTACTS: usize = 10;
/// Most identifiers one order may carry (Boulder allows 100).
pub const MAX_IDENTIFIERS: usize = 100;

/// An identifier type (RFC 8555 §9.7.7, RFC 8738).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentifierType {
    /// A DNS name, possibly a wildcard.
    Dns,
    /// An IPv4 or IPv6 address in canonical text form.
    Ip,
}

/// An identifier as it appears in orders and authorizations.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Identifier {
    /// `dns` or `ip`.
    #[serde(rename = "type")]
    pub kind: IdentifierType,
    /// The name or address.
    pub value: String,
}

impl Identifier {
    /// A DNS identifier.
    pub fn dns(value: &str) -> Identifier {
        Identifier {
            kind: IdentifierType::Dns,
            value: value.to_owned(),
        }
    }
    /// An IP identifier.
    pub fn ip(value: &str) -> Identifier {
        Identifier {
            kind: IdentifierType::Ip,
            value: value.to_owned(),
        }
    }
    /// Whether this is a wildcard DNS name (`*.example.org`), which only dns-01 may prove.
    pub fn is_wildcard(&self) -> bool {
        self.kind == IdentifierType::Dns && self.value.starts_with("*.")
    }
}

/// The identifier as sent: the type stays a string so an unknown one is `unsupportedIdentifier`
/// rather than a JSON error.
#[derive(Debug, Clone, Deserialize)]
pub struct WireIdentifier {
    /// The type as sent.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value as sent.
    pub value: String,
}

/// Checks a DNS name's syntax (RFC 1035 preferred name syntax, A-labels only). Returns it in
/// lowercase, the form orders and CSR checks compare.
pub fn validate_dns_name(name: &str) -> Result<String, Error> {
    let lower = name.to_ascii_lowercase();
    let (wild, base) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let bad = |why: &str| Error::RejectedIdentifier(format!("{why}: {}", truncate(name)));
    if base.is_empty() || base.len() > 253 - if wild { 2 } else { 0 } {
        return Err(bad("DNS name has a bad length"));
    }
    let labels: Vec<&str> = base.split('.').collect();
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("DNS label is empty or longer than 63"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad(
                "DNS name has a character outside letters, digits and '-'",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("DNS label starts or ends with '-'"));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad(
            "DNS name looks like an IP address; use an ip identifier",
        ));
    }
    if wild && labels.len() < 2 {
        return Err(bad("wildcard must cover a name with at least two labels"));
    }
    Ok(lower)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Checks an IP identifier: it must parse and be in canonical form (RFC 8738 §3: dotted-quad for
/// IPv4, RFC 5952 for IPv6), so the CSR comparison is on one spelling.
pub fn validate_ip(value: &str) -> Result<IpAddr, Error> {
    let ip: IpAddr = value
        .parse()
        .map_err(|_| Error::Malformed(format!("not an IP address: {}", truncate(value))))?;
    if ip.to_string() != value {
        return Err(Error::Malformed(format!(
            "IP address not in canonical form: {}",
            truncate(value)
        )));
    }
    Ok(ip)
}

/// Validates one identifier from the wire and returns its normalized form.
pub fn validate_identifier(id: &WireIdentifier) -> Result<Identifier, Error> {
    match id.kind.as_str() {
        "dns" => Ok(Identifier::dns(&validate_dns_name(&id.value)?)),
        "ip" => {
            validate_ip(&id.value)?;
            Ok(Identifier::ip(&id.value))
        }
        other => Err(Error::UnsupportedIdentifier(format!(
            "identifier type {} is not supported",
            truncate(other)
        ))),
    }
}

fn identifier_problem(e: &Error) -> ProblemType {
    e.wire().0
}

/// Validates a list of identifiers: non-empty, bounded, each valid, duplicates removed. Several
/// failures are reported as one problem with a subproblem per identifier (RFC 8555 §6.7.1).
pub fn validate_identifiers(ids: &[WireIdentifier]) -> Result<Vec<Identifier>, Error> {
    if ids.is_empty() {
        return Err(Error::Malformed("order has no identifiers".into()));
    }
    if ids.len() > MAX_IDENTIFIERS {
        return Err(Error::RejectedIdentifier(format!(
            "order has more than {MAX_IDENTIFIERS} identifiers"
        )));
    }
    let mut ok = Vec::with_capacity(ids.len());
    let mut failed = Vec::new();
    for id in ids {
        match validate_identifier(id) {
            Ok(v) => ok.push(v),
            Err(e) => failed.push((id, e)),
        }
    }
    match failed.len() {
        0 => {
            ok.sort();
            ok.dedup();
            Ok(ok)
        }
        1 => Err(failed.swap_remove(0).1),
        n => Err(Error::Identifiers {
            detail: format!("{n} identifiers were refused"),
            subproblems: failed
                .into_iter()
                .map(|(id, e)| Subproblem {
                    problem_type: identifier_problem(&e),
                    detail: e.to_string(),
                    identifier: Identifier {
                        kind: if id.kind == "ip" {
                            IdentifierType::Ip
                        } else {
                            IdentifierType::Dns
                        },
                        value: truncate(&id.value),
                    },
                })
                .collect(),
        }),
    }
}

/// Validates account contacts (RFC 8555 §7.3): `mailto:` only, one plain address each, no
/// header fields. Other schemes are `unsupportedContact`, bad addresses `invalidContact`.
pub fn validate_contacts(contacts: &[String]) -> Result<(), Error> {
    if contacts.len() > MAX_CONTACTS {
        return Err(Error::InvalidContact(format!(
            "more than {MAX_CONTACTS} contacts"
        )));
    }
    for c in contacts {
        let Some(scheme_end) = c.find(':') else {
            return Err(Error::UnsupportedContact(truncate(c)));
        };
        if !c[..scheme_end].eq_ignore_ascii_case("mailto") {
            return Err(Error::UnsupportedContact(format!(
                "only mailto: contacts are supported, not {}:",
                truncate(&c[..scheme_end])
            )));
        }
        let addr = &c[scheme_end + 1..];
        let invalid = || Error::InvalidContact(truncate(c));
        if addr.contains(['?', ',', '%']) {
            return Err(invalid());
        }
        let Some((local, domain)) = addr.rsplit_once('@') else {
            return Err(invalid());
        };
        if local.is_empty()
            || local.len() > 64
            || !local
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"@<>()[]\\;:\"".contains(&b))
        {
            return Err(invalid());
        }
        let domain_ok =
            validate_dns_name(domain).is_ok_and(|d| !d.starts_with("*.") && d.contains('.'));
        if !domain_ok {
            return Err(invalid());
        }
    }
    Ok(())
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// newAccount payload (RFC 8555 §7.3).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewAccount {
    /// Contact URLs; absent and `null` both mean none (clients differ).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub contact: Vec<String>,
    /// Whether the client agrees to the terms of service.
    #[serde(default)]
    pub terms_of_service_agreed: bool,
    /// Look up an existing account only, never create one.
    #[serde(default)]
    pub only_return_existing: bool,
    /// The External Account Binding JWS, if any.
    pub external_account_binding: Option<Value>,
}

impl NewAccount {
    /// Checks contacts, terms agreement (when the tenant has terms) and EAB presence (when the
    /// tenant requires it). `onlyReturnExisting` skips all of these: it creates nothing.
    pub fn validate(&self, terms_required: bool, eab_required: bool) -> Result<(), Error> {
        if self.only_return_existing {
            return Ok(());
        }
        validate_contacts(&self.contact)?;
        if terms_required && !self.terms_of_service_agreed {
            return Err(Error::TermsNotAgreed);
        }
        if eab_required && self.external_account_binding.is_none() {
            return Err(Error::ExternalAccountRequired);
        }
        Ok(())
    }
}

/// An account update (RFC 8555 §7.3.2, §7.3.6) as the wire carries it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireAccountUpdate {
    /// New contact list.
    pub contact: Option<Vec<String>>,
    /// Only `deactivated` may be requested.
    pub status: Option<String>,
}

/// What an account update asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountUpdate {
    /// Replace the contacts (validated).
    Contact(Vec<String>),
    /// Deactivate the account (RFC 8555 §7.3.6).
    Deactivate,
    /// Nothing to change (e.g. `{}`): return the account.
    NoChange,
}

impl WireAccountUpdate {
    /// Validates and classifies the update.
    pub fn validate(self) -> Result<AccountUpdate, Error> {
        match (self.status.as_deref(), self.contact) {
            (Some("deactivated"), None) => Ok(AccountUpdate::Deactivate),
            (Some("deactivated"), Some(_)) => Err(Error::Malformed(
                "deactivate and contact update in one request".into(),
            )),
            (Some(other), _) => Err(Error::Malformed(format!(
                "account status {} cannot be requested",
                truncate(other)
            ))),
            (None, Some(c)) => {
                validate_contacts(&c)?;
                Ok(AccountUpdate::Contact(c))
            }
            (None, None) => Ok(AccountUpdate::NoChange),
        }
    }
}

/// newOrder payload (RFC 8555 §7.4, RFC 9773 §5, draft-ietf-acme-profiles).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireNewOrder {
    /// Requested identifiers.
    pub identifiers: Vec<WireIdentifier>,
    /// Requested notBefore (RFC 3339).
    pub not_before: Option<String>,
    /// Requested notAfter (RFC 3339).
    pub not_after: Option<String>,
    /// Profile name.
    pub profile: Option<String>,
    /// ARI certificate identifier of the certificate this order replaces.
    pub replaces: Option<String>,
}

/// A validated newOrder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// Normalized, sorted, without duplicates.
    pub identifiers: Vec<Identifier>,
    /// Requested notBefore.
    pub not_before: Option<OffsetDateTime>,
    /// Requested notAfter.
    pub not_after: Option<OffsetDateTime>,
    /// Profile name; the core decides whether the tenant has it.
    pub profile: Option<String>,
    /// The certificate being replaced (ARI); the core checks it belongs to the account.
    pub replaces: Option<CertId>,
}

fn parse_time(s: &str, field: &str) -> Result<OffsetDateTime, Error> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|_| Error::Malformed(format!("{field} is not an RFC 3339 timestamp")))?;
    // The core's wire form is Unix seconds with 0 meaning "absent": earlier is refused here
    // rather than silently dropped (the core refuses any time in the past anyway).
    if t.unix_timestamp() <= 0 {
        return Err(Error::Malformed(format!("{field} lies before 1970")));
    }
    Ok(t)
}

impl WireNewOrder {
    /// Validates identifiers, times, profile name syntax and `replaces`.
    pub fn validate(self) -> Result<NewOrder, Error> {
        let identifiers = validate_identifiers(&self.identifiers)?;
        let not_before = self
            .not_before
            .as_deref()
            .map(|s| parse_time(s, "notBefore"))
            .transpose()?;
        let not_after = self
            .not_after
            .as_deref()
            .map(|s| parse_time(s, "notAfter"))
            .transpose()?;
        if let (Some(nb), Some(na)) = (not_before, not_after)
            && nb >= na
        {
            return Err(Error::Malformed("notBefore is not before notAfter".into()));
        }
        if let Some(p) = &self.profile
            && (p.is_empty() || p.len() > 64 || !p.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Error::Malformed("invalid profile name".into()));
        }
        let replaces = self.replaces.as_deref().map(CertId::parse).transpose()?;
        Ok(NewOrder {
            identifiers,
            not_before,
            not_after,
            profile: self.profile,
            replaces,
        })
    }
}

/// finalize payload (RFC 8555 §7.4).
#[derive(Debug, Clone, Deserialize)]
pub struct Finalize {
    /// base64url DER PKCS#10.
    pub csr: String,
}

impl Finalize {
    /// The CSR's DER bytes.
    pub fn csr_der(&self) -> Result<Vec<u8>, Error> {
        b64::decode(&self.csr, "csr").map_err(|_| Error::BadCsr("csr is not base64url".into()))
    }
}

/// revokeCert payload (RFC 8555 §7.6).
#[derive(Debug, Clone, Deserialize)]
pub struct WireRevokeCert {
    /// base64url DER certificate.
    pub certificate: String,
    /// RFC 5280 CRLReason code.
    pub reason: Option<u8>,
}

/// Revocation reasons a subscriber may give (RFC 5280 §5.3.1): unspecified, keyCompromise,
/// affiliationChanged, superseded, cessationOfOperation. CA-side reasons and certificateHold
/// (ACME cannot un-revoke) are refused.
pub const ALLOWED_REVOCATION_REASONS: [u8; 5] = [0, 1, 3, 4, 5];

/// A validated revocation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeCert {
    /// The certificate's DER.
    pub certificate: Vec<u8>,
    /// The reason code (0 when absent).
    pub reason: u8,
}

impl WireRevokeCert {
    /// Decodes the certificate and checks the reason.
    pub fn validate(self) -> Result<RevokeCert, Error> {
        let certificate = b64::decode(&self.certificate, "certificate")?;
        let reason = self.reason.unwrap_or(0);
        if !ALLOWED_REVOCATION_REASONS.contains(&reason) {
            return Err(Error::BadRevocationReason(reason));
        }
        Ok(RevokeCert {
            certificate,
            reason,
        })
    }
}

impl RevokeCert {
    /// For revokeCert signed with `jwk` (RFC 8555 §7.6, the second way): the signing key must be
    /// the certificate's own public key. The glue still asks the core whether this CA issued it.
    pub fn check_signed_by_certificate_key(&self, key: &Jwk) -> Result<(), Error> {
        use der::Decode;
        let cert = x509_cert::Certificate::from_der(&self.certificate)
            .map_err(|_| Error::Malformed("certificate does not parse".into()))?;
        let spki = &cert.tbs_certificate.subject_public_key_info;
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| Error::Malformed("certificate key is not whole bytes".into()))?;
        if spki_matches(&spki.algorithm, bits, key) {
            Ok(())
        } else {
            Err(Error::Unauthorized(
                "request is not signed by the certificate's key".into(),
            ))
        }
    }
}

/// PKCS#1 RSAPublicKey (RFC 8017 §A.1.1), to compare a certificate's RSA key with a JWK.
///
/// ```text
/// RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
/// ```
#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    modulus: der::asn1::UintRef<'a>,
    public_exponent: der::asn1::UintRef<'a>,
}

fn spki_matches(alg: &x509_cert::spki::AlgorithmIdentifierOwned, bits: &[u8], key: &Jwk) -> bool {
    use crate::jwk::Curve;
    use const_oid::db::{rfc5912, rfc8410};
    use der::Decode;
    let p256 = const_oid::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    let p384 = const_oid::ObjectIdentifier::new_unwrap("1.3.132.0.34");
    let curve = alg
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<const_oid::ObjectIdentifier>().ok());
    match key {
        Jwk::Ec { crv, x, y } => {
            let want = match crv {
                Curve::P256 => p256,
                Curve::P384 => p384,
            };
            alg.oid == rfc5912::ID_EC_PUBLIC_KEY
                && curve == Some(want)
                && bits.len() == 1 + x.len() + y.len()
                && bits[0] == 0x04
                && bits[1..1 + x.len()] == x[..]
                && bits[1 + x.len()..] == y[..]
        }
        Jwk::Rsa { n, e } => {
            alg.oid == rfc5912::RSA_ENCRYPTION
                && RsaPublicKey::from_der(bits).is_ok_and(|k| {
                    k.modulus.as_bytes() == &n[..] && k.public_exponent.as_bytes() == &e[..]
                })
        }
        Jwk::Ed25519 { x } => alg.oid == rfc8410::ID_ED_25519 && bits == &x[..],
    }
}

/// A parsed External Account Binding (RFC 8555 §7.3.4), checked except for its MAC.
#[derive(Debug, Clone)]
pub struct ExternalAccountBinding {
    raw: RawJws,
    key_id: String,
    alg: hmac::Algorithm,
}

impl ExternalAccountBinding {
    /// Parses the `externalAccountBinding` member: a flattened JWS with a MAC `alg`, `kid` = the
    /// EAB key id, `url` = the newAccount URL, no `nonce`, payload = the account JWK.
    pub fn parse(v: &Value, new_account_url: &str) -> Result<ExternalAccountBinding, Error> {
        let raw = RawJws::from_value(v)?;
        let eab_err = |m: &str| Error::Malformed(format!("externalAccountBinding: {m}"));
        let alg = match raw.str_header("alg")? {
            Some("HS256") => hmac::HMAC_SHA256,
            Some("HS384") => hmac::HMAC_SHA384,
            Some("HS512") => hmac::HMAC_SHA512,
            Some(other) => return Err(Error::UnsupportedAlgorithm(truncate(other))),
            None => return Err(eab_err("alg missing")),
        };
        if raw.header.contains_key("nonce") {
            return Err(eab_err("must not carry a nonce"));
        }
        if raw.header.contains_key("jwk") {
            return Err(eab_err("must not carry jwk"));
        }
        let key_id = raw
            .str_header("kid")?
            .ok_or_else(|| eab_err("kid missing"))?
            .to_owned();
        if raw.str_header("url")? != Some(new_account_url) {
            return Err(eab_err("url must equal the outer url"));
        }
        Ok(ExternalAccountBinding { raw, key_id, alg })
    }

    /// The EAB key id the glue looks the MAC key up by.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Verifies the MAC (constant time) under `mac_key` and that the payload is `account_key`.
    pub fn verify(&self, mac_key: &Zeroizing<Vec<u8>>, account_key: &Jwk) -> Result<(), Error> {
        let key = hmac::Key::new(self.alg, mac_key);
        hmac::verify(&key, &self.raw.signing_input, &self.raw.signature).map_err(|_| {
            Error::Unauthorized("external account binding MAC does not verify".into())
        })?;
        let v: Value = serde_json::from_slice(&self.raw.payload).map_err(|e| Error::json(&e))?;
        if Jwk::from_value(&v)? != *account_key {
            return Err(Error::Unauthorized(
                "external account binding is for another account key".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeyChangePayload {
    account: String,
    old_key: Value,
}

/// Checks a keyChange request (RFC 8555 §7.3.5) whose outer JWS was verified with the account's
/// current key (`outer.key`, `kid` = `account_url`). The inner JWS must carry the new key as
/// `jwk`, no nonce, the same `url`, be signed by the new key, and name this account and its old
/// key. Returns the new key; the core still checks no other account uses it (409).
pub fn check_key_change(outer: &Verified, account_url: &str) -> Result<Jwk, Error> {
    let inner_value: Value = outer.json()?;
    let raw = RawJws::from_value(&inner_value)?;
    let header = raw.account_header()?;
    let KeyRef::Jwk(new_key) = header.key else {
        return Err(Error::WrongKeyReference(
            "keyChange inner JWS must carry jwk",
        ));
    };
    if header.nonce.is_some() {
        return Err(Error::Malformed(
            "keyChange inner JWS must not carry a nonce".into(),
        ));
    }
    if header.url != outer.header.url {
        return Err(Error::Malformed(
            "keyChange inner url differs from the outer url".into(),
        ));
    }
    new_key.verify(header.alg, &raw.signing_input, &raw.signature)?;
    let p: KeyChangePayload = serde_json::from_slice(&raw.payload).map_err(|e| Error::json(&e))?;
    if p.account != account_url {
        return Err(Error::Unauthorized(
            "keyChange names another account".into(),
        ));
    }
    if Jwk::from_value(&p.old_key)? != outer.key {
        return Err(Error::Unauthorized(
            "keyChange oldKey is not the account key".into(),
        ));
    }
    if new_key == outer.key {
        return Err(Error::Malformed(
            "keyChange new key equals the old key".into(),
        ));
    }
    Ok(new_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(kind: &str, value: &str) -> WireIdentifier {
        WireIdentifier {
            kind: kind.into(),
            value: value.into(),
        }
    }

    #[test]
    fn dns_names_are_checked_and_lowercased() {
        assert_eq!(
            validate_dns_name("WWW.Example.org").unwrap(),
            "www.example.org"
        );
        assert_eq!(validate_dns_name("*.example.org").unwrap(), "*.example.org");
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.c",
            "exa mple.org",
            "*.org",
            "a.*.b",
            "**.a.b",
            "example.org.",
            "1.2.3.4",
            "ex\u{e4}mple.org",
        ] {
            assert!(validate_dns_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_dns_name(&format!("{}.org", "a".repeat(64))).is_err());
    }

    #[test]
    fn ip_identifiers_must_be_canonical() {
        assert!(validate_ip("192.0.2.1").is_ok());
        assert!(validate_ip("2001:db8::1").is_ok());
        for bad in [
            "192.000.2.1",
            "2001:DB8::1",
            "2001:db8:0:0:0:0:0:1",
            "::ffff:192.0.2.300",
            "x",
        ] {
            assert!(validate_ip(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_identifier_type_is_unsupported() {
        let e = validate_identifier(&wire("email", "a@b.c")).unwrap_err();
        assert!(matches!(e, Error::UnsupportedIdentifier(_)));
    }

    #[test]
    fn several_bad_identifiers_give_subproblems() {
        let e = validate_identifiers(&[
            wire("dns", "ok.example"),
            wire("dns", "a..b"),
            wire("uri", "x"),
        ])
        .unwrap_err();
        let Error::Identifiers { subproblems, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(subproblems.len(), 2);
        assert_eq!(subproblems[0].identifier.value, "a..b");
        assert_eq!(subproblems[0].problem_type, ProblemType::RejectedIdentifier);
        assert_eq!(
            subproblems[1].problem_type,
            ProblemType::UnsupportedIdentifier
        );
    }

    #[test]
    fn identifiers_are_deduplicated_after_normalization() {
        let ids =
            validate_identifiers(&[wire("dns", "A.example"), wire("dns", "a.example")]).unwrap();
        assert_eq!(ids, vec![Identifier::dns("a.example")]);
        assert!(validate_identifiers(&[]).is_err());
    }

    #[test]
    fn contacts_must_be_plain_mailto() {
        assert!(validate_contacts(&["mailto:admin@example.org".into()]).is_ok());
        assert!(matches!(
            validate_contacts(&["tel:+12025551212".into()]),
            Err(Error::UnsupportedContact(_))
        ));
        for bad in [
            "mailto:",
            "mailto:admin",
            "mailto:a@b.c?subject=x",
            "mailto:a@example.org,b@example.org",
            "mailto:@example.org",
            "mailto:a@localhost",
            "mailto:a b@example.org",
        ] {
            assert!(
                matches!(
                    validate_contacts(&[bad.into()]),
                    Err(Error::InvalidContact(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn new_account_requires_terms_and_eab_when_configured() {
        let na: NewAccount =
            serde_json::from_str(r#"{"contact":["mailto:a@example.org"]}"#).unwrap();
        assert!(na.validate(false, false).is_ok());
        assert_eq!(na.validate(true, false), Err(Error::TermsNotAgreed));
        let na: NewAccount = serde_json::from_str(r#"{"termsOfServiceAgreed":true}"#).unwrap();
        assert_eq!(na.validate(true, true), Err(Error::ExternalAccountRequired));
        let na: NewAccount = serde_json::from_str(r#"{"contact":null}"#).unwrap();
        assert!(na.contact.is_empty());
        let na: NewAccount = serde_json::from_str(r#"{"onlyReturnExisting":true}"#).unwrap();
        assert!(na.validate(true, true).is_ok());
    }

    #[test]
    fn account_update_classifies_requests() {
        let u: WireAccountUpdate = serde_json::from_str(r#"{"status":"deactivated"}"#).unwrap();
        assert_eq!(u.validate(), Ok(AccountUpdate::Deactivate));
        let u: WireAccountUpdate = serde_json::from_str(r#"{"status":"valid"}"#).unwrap();
        assert!(u.validate().is_err());
        let u: WireAccountUpdate = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(u.validate(), Ok(AccountUpdate::NoChange));
        let u: WireAccountUpdate =
            serde_json::from_str(r#"{"contact":["mailto:x@example.org"]}"#).unwrap();
        assert_eq!(
            u.validate(),
            Ok(AccountUpdate::Contact(vec!["mailto:x@example.org".into()]))
        );
    }

    #[test]
    fn new_order_checks_times_and_replaces() {
        let o: WireNewOrder = serde_json::from_str(
            r#"{"identifiers":[{"type":"dns","value":"www.example.org"},{"type":"ip","value":"192.0.2.1"}],
                "notBefore":"2026-01-01T00:00:00Z","notAfter":"2026-01-08T00:00:00Z","profile":"tlsserver"}"#,
        )
        .unwrap();
        let o = o.validate().unwrap();
        assert_eq!(o.identifiers.len(), 2);
        assert_eq!(o.profile.as_deref(), Some("tlsserver"));
        assert_eq!(
            o.not_before.map(|t| t.unix_timestamp()),
            Some(1_767_225_600)
        );
        assert_eq!(o.not_after.map(|t| t.unix_timestamp()), Some(1_767_830_400));
        for bad in [
            r#""notBefore":"1970-01-01T00:00:00Z""#,
            r#""notBefore":"1969-12-31T00:00:00Z""#,
            r#""notAfter":"yesterday""#,
            r#""notAfter":"2026-01-08""#,
        ] {
            let o: WireNewOrder = serde_json::from_str(&format!(
                r#"{{"identifiers":[{{"type":"dns","value":"a.example"}}],{bad}}}"#
            ))
            .unwrap();
            assert!(
                matches!(o.validate(), Err(Error::Malformed(_))),
                "{bad} must be malformed"
            );
        }
        let o: WireNewOrder = serde_json::from_str(
            r#"{"identifiers":[{"type":"dns","value":"a.example"}],
                "notBefore":"2026-01-08T00:00:00Z","notAfter":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert!(o.validate().is_err());
        let o: WireNewOrder = serde_json::from_str(
            r#"{"identifiers":[{"type":"dns","value":"a.example"}],"replaces":"not-an-ari-id"}"#,
        )
        .unwrap();
        assert!(o.validate().is_err());
    }

    #[test]
    fn revocation_reasons_are_limited() {
        let r = WireRevokeCert {
            certificate: "MAA".into(),
            reason: Some(1),
        };
        assert_eq!(r.validate().unwrap().reason, 1);
        for bad in [2u8, 6, 7, 8, 9, 10, 11] {
            let r = WireRevokeCert {
                certificate: "MAA".into(),
                reason: Some(bad),
            };
            assert_eq!(r.validate(), Err(Error::BadRevocationReason(bad)));
        }
    }
}

#[cfg(test)]
mod signed_tests {
    use super::*;
    use crate::jws::parse_request;
    use crate::testkeys::TestKey;
    use serde_json::json;

    const CT: Option<&str> = Some("application/jose+json");
    const NEW_ACCT: &str = "https://h/acme/new-acct";
    const KEY_CHANGE: &str = "https://h/acme/key-change";
    const ACCT: &str = "https://h/acme/acct/1";

    fn eab(mac_key: &[u8], kid: &str, url: &str, account: &TestKey, alg: &str) -> Value {
        let protected = b64::encode(
            json!({"alg":alg,"kid":kid,"url":url})
                .to_string()
                .as_bytes(),
        );
        let payload = b64::encode(account.jwk().to_string().as_bytes());
        let key = hmac::Key::new(hmac::HMAC_SHA256, mac_key);
        let tag = hmac::sign(&key, format!("{protected}.{payload}").as_bytes());
        json!({"protected":protected,"payload":payload,"signature":b64::encode(tag.as_ref())})
    }

    /// RFC 8555 §7.3.4: the EAB JWS is an HMAC over the account key under the EAB key id.
    #[test]
    fn external_account_binding_verifies() {
        let account = TestKey::es256();
        let mac = Zeroizing::new(vec![0x42u8; 32]);
        let v = eab(&mac, "kid-1", NEW_ACCT, &account, "HS256");
        let b = ExternalAccountBinding::parse(&v, NEW_ACCT).unwrap();
        assert_eq!(b.key_id(), "kid-1");
        let jwk = Jwk::from_value(&account.jwk()).unwrap();
        b.verify(&mac, &jwk).unwrap();
        // Wrong MAC key.
        assert!(matches!(
            b.verify(&Zeroizing::new(vec![0x43u8; 32]), &jwk),
            Err(Error::Unauthorized(_))
        ));
        // Bound to another account key.
        let other = Jwk::from_value(&TestKey::es256().jwk()).unwrap();
        assert!(matches!(
            b.verify(&mac, &other),
            Err(Error::Unauthorized(_))
        ));
    }

    #[test]
    fn external_account_binding_rules() {
        let account = TestKey::eddsa();
        let mac = [1u8; 32];
        assert!(
            ExternalAccountBinding::parse(
                &eab(&mac, "k", "https://other", &account, "HS256"),
                NEW_ACCT
            )
            .is_err()
        );
        assert!(matches!(
            ExternalAccountBinding::parse(&eab(&mac, "k", NEW_ACCT, &account, "none"), NEW_ACCT),
            Err(Error::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            ExternalAccountBinding::parse(&eab(&mac, "k", NEW_ACCT, &account, "ES256"), NEW_ACCT),
            Err(Error::UnsupportedAlgorithm(_))
        ));
        let protected = b64::encode(
            json!({"alg":"HS256","kid":"k","url":NEW_ACCT,"nonce":"n"})
                .to_string()
                .as_bytes(),
        );
        let v = json!({"protected":protected,"payload":"e30","signature":"AAAA"});
        assert!(matches!(
            ExternalAccountBinding::parse(&v, NEW_ACCT),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn revocation_by_certificate_key_needs_that_key() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
            &rcgen::PKCS_RSA_SHA256,
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
            let cert = params.self_signed(&key).unwrap();
            let req = WireRevokeCert {
                certificate: b64::encode(cert.der()),
                reason: Some(1),
            }
            .validate()
            .unwrap();
            let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::try_from(
                rcgen::PublicKeyData::subject_public_key_info(&key).as_slice(),
            )
            .unwrap();
            let jwk = jwk_from_spki(&spki);
            req.check_signed_by_certificate_key(&jwk)
                .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
            let other = Jwk::from_value(&TestKey::es256().jwk()).unwrap();
            assert!(matches!(
                req.check_signed_by_certificate_key(&other),
                Err(Error::Unauthorized(_))
            ));
        }
    }

    /// The JWK a client would send for this SPKI (test helper, independent of `spki_matches`).
    fn jwk_from_spki(spki: &x509_cert::spki::SubjectPublicKeyInfoOwned) -> Jwk {
        use der::Decode;
        let bits = spki.subject_public_key.raw_bytes();
        let v = match spki.algorithm.oid.to_string().as_str() {
            "1.2.840.10045.2.1" => {
                let n = (bits.len() - 1) / 2;
                let crv = if n == 32 { "P-256" } else { "P-384" };
                json!({"kty":"EC","crv":crv,"x":b64::encode(&bits[1..1 + n]),"y":b64::encode(&bits[1 + n..])})
            }
            "1.3.101.112" => json!({"kty":"OKP","crv":"Ed25519","x":b64::encode(bits)}),
            _ => {
                let k = RsaPublicKey::from_der(bits).unwrap();
                json!({"kty":"RSA","n":b64::encode(k.modulus.as_bytes()),"e":b64::encode(k.public_exponent.as_bytes())})
            }
        };
        Jwk::from_value(&v).unwrap()
    }

    fn key_change_request(
        old: &TestKey,
        new: &TestKey,
        inner_header: Value,
        account: &str,
    ) -> Vec<u8> {
        let payload = json!({"account": account, "oldKey": old.jwk()});
        let inner = new.sign_jws(&inner_header, payload.to_string().as_bytes());
        let outer = old.sign_jws(
            &old.header(Some(ACCT), Some("n"), KEY_CHANGE),
            inner.to_string().as_bytes(),
        );
        serde_json::to_vec(&outer).unwrap()
    }

    fn outer_verified(old: &TestKey, body: &[u8]) -> Verified {
        let old_jwk = Jwk::from_value(&old.jwk()).unwrap();
        parse_request(CT, body, KEY_CHANGE)
            .unwrap()
            .verify_with(&old_jwk)
            .unwrap()
    }

    /// RFC 8555 §7.3.5: inner JWS signed by the new key with jwk, same url, payload {account, oldKey}.
    #[test]
    fn key_change_returns_the_new_key() {
        let old = TestKey::es256();
        let new = TestKey::rs256();
        let body = key_change_request(&old, &new, new.header(None, None, KEY_CHANGE), ACCT);
        let got = check_key_change(&outer_verified(&old, &body), ACCT).unwrap();
        assert_eq!(got, Jwk::from_value(&new.jwk()).unwrap());
    }

    #[test]
    fn key_change_inner_rules() {
        let old = TestKey::es256();
        let new = TestKey::eddsa();
        // Inner carries a nonce.
        let b = key_change_request(&old, &new, new.header(None, Some("n"), KEY_CHANGE), ACCT);
        assert!(check_key_change(&outer_verified(&old, &b), ACCT).is_err());
        // Inner url differs.
        let b = key_change_request(&old, &new, new.header(None, None, NEW_ACCT), ACCT);
        assert!(check_key_change(&outer_verified(&old, &b), ACCT).is_err());
        // Inner uses kid.
        let b = key_change_request(&old, &new, new.header(Some(ACCT), None, KEY_CHANGE), ACCT);
        assert!(matches!(
            check_key_change(&outer_verified(&old, &b), ACCT),
            Err(Error::WrongKeyReference(_))
        ));
        // Names another account.
        let b = key_change_request(
            &old,
            &new,
            new.header(None, None, KEY_CHANGE),
            "https://h/acme/acct/2",
        );
        assert!(matches!(
            check_key_change(&outer_verified(&old, &b), ACCT),
            Err(Error::Unauthorized(_))
        ));
        // Inner signed by a key other than its jwk.
        let mut h = new.header(None, None, KEY_CHANGE);
        h["jwk"] = TestKey::eddsa().jwk();
        let b = key_change_request(&old, &new, h, ACCT);
        assert_eq!(
            check_key_change(&outer_verified(&old, &b), ACCT),
            Err(Error::BadSignature)
        );
        // oldKey is not the account key.
        let stranger = TestKey::es256();
        let payload = json!({"account": ACCT, "oldKey": stranger.jwk()});
        let inner = new.sign_jws(
            &new.header(None, None, KEY_CHANGE),
            payload.to_string().as_bytes(),
        );
        let outer = old.sign_jws(
            &old.header(Some(ACCT), Some("n"), KEY_CHANGE),
            inner.to_string().as_bytes(),
        );
        let b = serde_json::to_vec(&outer).unwrap();
        assert!(matches!(
            check_key_change(&outer_verified(&old, &b), ACCT),
            Err(Error::Unauthorized(_))
        ));
    }
}
