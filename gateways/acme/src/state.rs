//! Order, authorization and challenge states (RFC 8555 §7.1.6) as values with explicit
//! transitions: `handle(self, input, now) -> Result<Next, Error>` (STYLE.md practice 3). An
//! input the current state does not accept is a named error, never a silent no-op, except where
//! RFC 8555 makes a repeat idempotent (responding again to a challenge already being processed).
//!
//! The core stores these values; the protocol crate only decides the transitions.

use std::collections::BTreeSet;
use std::net::IpAddr;

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use const_oid::ObjectIdentifier;
use const_oid::db::{rfc5280, rfc5912};
use der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use der::{Decode, Encode};
use time::OffsetDateTime;
use x509_cert::ext::Extensions;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::request::CertReq;

use crate::error::{Error, ValidationFailure};
use crate::payload::{Identifier, IdentifierType};
use crate::problem::Problem;

/// A challenge type (RFC 8555 §8.3, §8.4, RFC 8737).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChallengeType {
    /// `http-01`
    Http01,
    /// `dns-01`
    Dns01,
    /// `tls-alpn-01`
    TlsAlpn01,
}

impl ChallengeType {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            ChallengeType::Http01 => "http-01",
            ChallengeType::Dns01 => "dns-01",
            ChallengeType::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// The challenges offered for an identifier: wildcards only via dns-01 (RFC 8555 §7.1.3), IP
/// addresses never via dns-01 (RFC 8738 §7).
pub fn challenge_types_for(id: &Identifier) -> &'static [ChallengeType] {
    match id.kind {
        IdentifierType::Ip => &[ChallengeType::Http01, ChallengeType::TlsAlpn01],
        IdentifierType::Dns if id.is_wildcard() => &[ChallengeType::Dns01],
        IdentifierType::Dns => &[
            ChallengeType::Http01,
            ChallengeType::Dns01,
            ChallengeType::TlsAlpn01,
        ],
    }
}

/// Challenge status (RFC 8555 §7.1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeStatus {
    /// Created, waiting for the client.
    Pending,
    /// The client responded; validation runs.
    Processing,
    /// Validation succeeded.
    Valid,
    /// Validation failed.
    Invalid,
}

impl ChallengeStatus {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            ChallengeStatus::Pending => "pending",
            ChallengeStatus::Processing => "processing",
            ChallengeStatus::Valid => "valid",
            ChallengeStatus::Invalid => "invalid",
        }
    }
}

/// What can happen to a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeInput {
    /// The client POSTed `{}` to the challenge URL.
    Respond,
    /// The validator saw the right answer.
    Validated,
    /// The validator failed the way `kind` says.
    Failed {
        /// Which check failed.
        kind: ValidationFailure,
        /// What was observed.
        detail: String,
    },
}

impl ChallengeInput {
    fn name(&self) -> &'static str {
        match self {
            ChallengeInput::Respond => "respond",
            ChallengeInput::Validated => "validated",
            ChallengeInput::Failed { .. } => "failed",
        }
    }
}

/// A challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The type.
    pub kind: ChallengeType,
    /// The token (≥ 128 bits of entropy, base64url; an input from the core).
    pub token: String,
    /// The status.
    pub status: ChallengeStatus,
    /// When it became valid.
    pub validated: Option<OffsetDateTime>,
    /// Why it became invalid.
    pub error: Option<Problem>,
}

impl Challenge {
    /// A pending challenge.
    pub fn new(kind: ChallengeType, token: &str) -> Challenge {
        Challenge {
            kind,
            token: token.to_owned(),
            status: ChallengeStatus::Pending,
            validated: None,
            error: None,
        }
    }

    /// The transition function.
    pub fn handle(
        mut self,
        input: ChallengeInput,
        now: OffsetDateTime,
    ) -> Result<Challenge, Error> {
        use ChallengeStatus as S;
        let refuse = |state: ChallengeStatus, input: &ChallengeInput| Error::InvalidTransition {
            object: "challenge",
            state: state.name(),
            input: input.name(),
        };
        match (self.status, input) {
            (S::Pending, ChallengeInput::Respond) => {
                self.status = S::Processing;
                Ok(self)
            }
            // RFC 8555 §7.5.1: a repeated response to a challenge under way or done is harmless.
            (S::Processing | S::Valid, ChallengeInput::Respond) => Ok(self),
            (S::Processing, ChallengeInput::Validated) => {
                self.status = S::Valid;
                self.validated = Some(now);
                Ok(self)
            }
            (S::Processing, ChallengeInput::Failed { kind, detail }) => {
                self.status = S::Invalid;
                self.error = Some(Error::Validation { kind, detail }.to_problem());
                Ok(self)
            }
            (state, input) => Err(refuse(state, &input)),
        }
    }
}

/// Authorization status (RFC 8555 §7.1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzStatus {
    /// Waiting for a challenge.
    Pending,
    /// A challenge succeeded.
    Valid,
    /// A challenge failed.
    Invalid,
    /// The client deactivated it.
    Deactivated,
    /// Its lifetime ended.
    Expired,
    /// The server revoked it.
    Revoked,
}

impl AuthzStatus {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            AuthzStatus::Pending => "pending",
            AuthzStatus::Valid => "valid",
            AuthzStatus::Invalid => "invalid",
            AuthzStatus::Deactivated => "deactivated",
            AuthzStatus::Expired => "expired",
            AuthzStatus::Revoked => "revoked",
        }
    }
}

/// What can happen to an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthzInput {
    /// An input for the challenge at this index.
    Challenge(usize, ChallengeInput),
    /// The client deactivates it (RFC 8555 §7.5.2).
    Deactivate,
    /// The server revokes it (e.g. the account was deactivated).
    Revoke,
    /// Nothing but the passage of time (a fetch): applies expiry.
    Tick,
}

impl AuthzInput {
    fn name(&self) -> &'static str {
        match self {
            AuthzInput::Challenge(..) => "challenge",
            AuthzInput::Deactivate => "deactivate",
            AuthzInput::Revoke => "revoke",
            AuthzInput::Tick => "tick",
        }
    }
}

/// An authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The identifier (a wildcard keeps its `*.`; the wire object strips it and sets `wildcard`).
    pub identifier: Identifier,
    /// The status.
    pub status: AuthzStatus,
    /// When it expires (pending: soon; valid: the reuse period).
    pub expires: OffsetDateTime,
    /// The challenges offered.
    pub challenges: Vec<Challenge>,
}

impl Authorization {
    /// A pending authorization offering the challenges allowed for the identifier, one token each.
    /// `tokens` must have one entry per type in [`challenge_types_for`].
    pub fn new(
        identifier: Identifier,
        expires: OffsetDateTime,
        tokens: &[String],
    ) -> Result<Authorization, Error> {
        let types = challenge_types_for(&identifier);
        if tokens.len() != types.len() {
            return Err(Error::ServerInternal);
        }
        let challenges = types
            .iter()
            .zip(tokens)
            .map(|(t, tok)| Challenge::new(*t, tok))
            .collect();
        Ok(Authorization {
            identifier,
            status: AuthzStatus::Pending,
            expires,
            challenges,
        })
    }

    /// The transition function. Expiry is applied first, so an input that arrives after
    /// `expires` meets an expired authorization.
    pub fn handle(
        mut self,
        input: AuthzInput,
        now: OffsetDateTime,
    ) -> Result<Authorization, Error> {
        use AuthzStatus as S;
        if matches!(self.status, S::Pending | S::Valid) && now >= self.expires {
            self.status = S::Expired;
        }
        let refuse = |state: AuthzStatus, input: &AuthzInput| Error::InvalidTransition {
            object: "authorization",
            state: state.name(),
            input: input.name(),
        };
        match (self.status, input) {
            (_, AuthzInput::Tick) => Ok(self),
            (S::Pending, AuthzInput::Challenge(i, ci)) => {
                let ch = self
                    .challenges
                    .get(i)
                    .cloned()
                    .ok_or_else(|| Error::Malformed("no such challenge".into()))?;
                let ch = ch.handle(ci, now)?;
                self.status = match ch.status {
                    ChallengeStatus::Valid => S::Valid,
                    ChallengeStatus::Invalid => S::Invalid,
                    _ => S::Pending,
                };
                if let Some(slot) = self.challenges.get_mut(i) {
                    *slot = ch;
                }
                Ok(self)
            }
            // Responding again to the challenge that made the authorization valid is harmless.
            (S::Valid, AuthzInput::Challenge(i, ChallengeInput::Respond))
                if self
                    .challenges
                    .get(i)
                    .is_some_and(|c| c.status == ChallengeStatus::Valid) =>
            {
                Ok(self)
            }
            (S::Pending | S::Valid, AuthzInput::Deactivate) => {
                self.status = S::Deactivated;
                Ok(self)
            }
            (S::Valid, AuthzInput::Revoke) => {
                self.status = S::Revoked;
                Ok(self)
            }
            (state, input) => Err(refuse(state, &input)),
        }
    }
}

/// Order status (RFC 8555 §7.1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Authorizations outstanding.
    Pending,
    /// All authorizations valid; finalize may come.
    Ready,
    /// Finalize accepted; issuance under way.
    Processing,
    /// The certificate is issued.
    Valid,
    /// Abandoned: an authorization failed, the order expired, or issuance failed.
    Invalid,
}

impl OrderStatus {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Ready => "ready",
            OrderStatus::Processing => "processing",
            OrderStatus::Valid => "valid",
            OrderStatus::Invalid => "invalid",
        }
    }
}

/// The pre-finalize order status from its authorizations (RFC 8555 §7.1.6): any authorization
/// that can no longer become valid (invalid, deactivated, expired, revoked) makes the order
/// invalid; all valid makes it ready; otherwise it is pending. No authorizations is invalid
/// (fail closed: an order never becomes ready without proof).
pub fn order_status_from_authorizations(authzs: &[AuthzStatus]) -> OrderStatus {
    if authzs.is_empty() {
        return OrderStatus::Invalid;
    }
    if authzs.iter().any(|s| {
        matches!(
            s,
            AuthzStatus::Invalid
                | AuthzStatus::Deactivated
                | AuthzStatus::Expired
                | AuthzStatus::Revoked
        )
    }) {
        OrderStatus::Invalid
    } else if authzs.iter().all(|s| *s == AuthzStatus::Valid) {
        OrderStatus::Ready
    } else {
        OrderStatus::Pending
    }
}

/// What can happen to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderInput<'a> {
    /// The current statuses of the order's authorizations (after any change or on a fetch).
    Authorizations(&'a [AuthzStatus]),
    /// The client finalizes with this DER CSR.
    Finalize(&'a [u8]),
    /// The core issued the certificate.
    Issued,
    /// The core refused or failed to issue.
    IssuanceFailed(Problem),
}

impl OrderInput<'_> {
    fn name(&self) -> &'static str {
        match self {
            OrderInput::Authorizations(_) => "authorizations",
            OrderInput::Finalize(_) => "finalize",
            OrderInput::Issued => "issued",
            OrderInput::IssuanceFailed(_) => "issuance-failed",
        }
    }
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Normalized identifiers (as validated by [`crate::payload::WireNewOrder::validate`]).
    pub identifiers: Vec<Identifier>,
    /// The status.
    pub status: OrderStatus,
    /// When a not-yet-finalized order expires.
    pub expires: OffsetDateTime,
    /// Why it is invalid.
    pub error: Option<Problem>,
}

impl Order {
    /// A new pending order.
    pub fn new(identifiers: Vec<Identifier>, expires: OffsetDateTime) -> Order {
        Order {
            identifiers,
            status: OrderStatus::Pending,
            expires,
            error: None,
        }
    }

    /// The transition function. An order not finalized by `expires` becomes invalid first.
    /// Finalize before `ready` is `orderNotReady`; a CSR that does not match is `badCSR` and
    /// leaves the order `ready` (the client may retry with a correct CSR).
    pub fn handle(mut self, input: OrderInput<'_>, now: OffsetDateTime) -> Result<Order, Error> {
        use OrderStatus as S;
        if matches!(self.status, S::Pending | S::Ready) && now >= self.expires {
            self.status = S::Invalid;
        }
        match (self.status, input) {
            (S::Pending | S::Ready, OrderInput::Authorizations(a)) => {
                self.status = order_status_from_authorizations(a);
                Ok(self)
            }
            (_, OrderInput::Authorizations(_)) => Ok(self),
            (S::Ready, OrderInput::Finalize(csr)) => {
                check_csr(csr, &self.identifiers)?;
                self.status = S::Processing;
                Ok(self)
            }
            (state, OrderInput::Finalize(_)) => Err(Error::OrderNotReady(state.name())),
            (S::Processing, OrderInput::Issued) => {
                self.status = S::Valid;
                Ok(self)
            }
            (S::Processing, OrderInput::IssuanceFailed(p)) => {
                self.status = S::Invalid;
                self.error = Some(p);
                Ok(self)
            }
            (state, input) => Err(Error::InvalidTransition {
                object: "order",
                state: state.name(),
                input: input.name(),
            }),
        }
    }
}

const OID_EXTENSION_REQUEST: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

fn bad_csr(m: &str) -> Error {
    Error::BadCsr(m.to_owned())
}

/// Verifies the CSR's self-signature (proof of possession) with aws-lc-rs.
fn verify_csr_signature(csr: &CertReq) -> Result<(), Error> {
    let spki = &csr.info.public_key;
    let key_alg = spki.algorithm.oid;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    let sig_alg = csr.algorithm.oid;
    let alg: &'static dyn VerificationAlgorithm = match (key_alg, curve, sig_alg) {
        (rfc5912::ID_EC_PUBLIC_KEY, Some(OID_P256), rfc5912::ECDSA_WITH_SHA_256) => {
            &signature::ECDSA_P256_SHA256_ASN1
        }
        (rfc5912::ID_EC_PUBLIC_KEY, Some(OID_P256), rfc5912::ECDSA_WITH_SHA_384) => {
            &signature::ECDSA_P256_SHA384_ASN1
        }
        (rfc5912::ID_EC_PUBLIC_KEY, Some(OID_P384), rfc5912::ECDSA_WITH_SHA_384) => {
            &signature::ECDSA_P384_SHA384_ASN1
        }
        (rfc5912::ID_EC_PUBLIC_KEY, Some(OID_P384), rfc5912::ECDSA_WITH_SHA_256) => {
            &signature::ECDSA_P384_SHA256_ASN1
        }
        (rfc5912::RSA_ENCRYPTION, _, rfc5912::SHA_256_WITH_RSA_ENCRYPTION) => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        (rfc5912::RSA_ENCRYPTION, _, rfc5912::SHA_384_WITH_RSA_ENCRYPTION) => {
            &signature::RSA_PKCS1_2048_8192_SHA384
        }
        (rfc5912::RSA_ENCRYPTION, _, rfc5912::SHA_512_WITH_RSA_ENCRYPTION) => {
            &signature::RSA_PKCS1_2048_8192_SHA512
        }
        (const_oid::db::rfc8410::ID_ED_25519, _, const_oid::db::rfc8410::ID_ED_25519) => {
            &signature::ED25519
        }
        _ => return Err(bad_csr("unsupported key or signature algorithm")),
    };
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| bad_csr("public key is not a whole number of bytes"))?;
    let sig = csr
        .signature
        .as_bytes()
        .ok_or_else(|| bad_csr("signature is not a whole number of bytes"))?;
    let tbs = csr
        .info
        .to_der()
        .map_err(|_| bad_csr("request info does not re-encode"))?;
    UnparsedPublicKey::new(alg, key)
        .verify(&tbs, sig)
        .map_err(|_| bad_csr("signature does not verify"))
}

fn any_to_string(v: &der::Any) -> Option<String> {
    if let Ok(s) = Utf8StringRef::try_from(v) {
        return Some(s.as_str().to_owned());
    }
    if let Ok(s) = PrintableStringRef::try_from(v) {
        return Some(s.as_str().to_owned());
    }
    Ia5StringRef::try_from(v)
        .ok()
        .map(|s| s.as_str().to_owned())
}

/// The names a CSR asks for: its subjectAltName entries (dNSName, iPAddress) and its CNs.
fn csr_names(csr: &CertReq) -> Result<(BTreeSet<Identifier>, Vec<String>), Error> {
    let mut sans = BTreeSet::new();
    for attr in csr.info.attributes.iter() {
        if attr.oid != OID_EXTENSION_REQUEST {
            continue;
        }
        for value in attr.values.iter() {
            let exts = value
                .decode_as::<Extensions>()
                .map_err(|_| bad_csr("extensionRequest does not parse"))?;
            for ext in exts
                .iter()
                .filter(|e| e.extn_id == rfc5280::ID_CE_SUBJECT_ALT_NAME)
            {
                let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
                    .map_err(|_| bad_csr("subjectAltName does not parse"))?;
                for name in san.0 {
                    let id = match name {
                        GeneralName::DnsName(d) => {
                            Identifier::dns(&d.as_str().to_ascii_lowercase())
                        }
                        GeneralName::IpAddress(o) => {
                            let ip = match o.as_bytes().len() {
                                4 => {
                                    let mut b = [0u8; 4];
                                    b.copy_from_slice(o.as_bytes());
                                    IpAddr::from(b)
                                }
                                16 => {
                                    let mut b = [0u8; 16];
                                    b.copy_from_slice(o.as_bytes());
                                    IpAddr::from(b)
                                }
                                _ => return Err(bad_csr("iPAddress is neither 4 nor 16 bytes")),
                            };
                            Identifier::ip(&ip.to_string())
                        }
                        _ => return Err(bad_csr("subjectAltName of a type ACME cannot validate")),
                    };
                    sans.insert(id);
                }
            }
        }
    }
    let mut cns = Vec::new();
    for rdn in csr.info.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == const_oid::db::rfc4519::CN {
                cns.push(any_to_string(&atv.value).ok_or_else(|| bad_csr("CN is not a string"))?);
            }
        }
    }
    Ok((sans, cns))
}

/// The finalize check (RFC 8555 §7.4): the CSR parses, its signature verifies, its SANs equal
/// the order's identifiers exactly (no more, no fewer), and a CN, if present, is one of them.
/// DNS names compare in lowercase, IP addresses in canonical text.
pub fn check_csr(der: &[u8], identifiers: &[Identifier]) -> Result<(), Error> {
    let csr = CertReq::from_der(der).map_err(|_| bad_csr("CSR does not parse"))?;
    verify_csr_signature(&csr)?;
    let (sans, cns) = csr_names(&csr)?;
    let want: BTreeSet<Identifier> = identifiers.iter().cloned().collect();
    if sans != want {
        let extra: Vec<&str> = sans.difference(&want).map(|i| i.value.as_str()).collect();
        let missing: Vec<&str> = want.difference(&sans).map(|i| i.value.as_str()).collect();
        return Err(Error::BadCsr(format!(
            "CSR names differ from the order (extra: {extra:?}, missing: {missing:?})"
        )));
    }
    for cn in cns {
        let lower = cn.to_ascii_lowercase();
        if !want.iter().any(|i| i.value == lower) {
            return Err(bad_csr("CN is not one of the order's identifiers"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
    use time::Duration;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn tokens(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("token{i}")).collect()
    }

    fn csr(
        dns: &[&str],
        ips: &[&str],
        cn: Option<&str>,
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut p =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        for ip in ips {
            p.subject_alt_names
                .push(SanType::IpAddress(ip.parse().unwrap()));
        }
        p.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.serialize_request(&key).unwrap().der().to_vec()
    }

    fn p256() -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }

    fn ready_order(ids: Vec<Identifier>) -> Order {
        Order::new(ids, now() + Duration::hours(1))
            .handle(OrderInput::Authorizations(&[AuthzStatus::Valid]), now())
            .unwrap()
    }

    #[test]
    fn wildcards_get_only_dns01_and_ips_never_dns01() {
        assert_eq!(
            challenge_types_for(&Identifier::dns("*.example.org")),
            &[ChallengeType::Dns01]
        );
        let ip = challenge_types_for(&Identifier::ip("192.0.2.1"));
        assert!(!ip.contains(&ChallengeType::Dns01));
        assert_eq!(
            challenge_types_for(&Identifier::dns("example.org")).len(),
            3
        );
    }

    /// RFC 8555 §7.1.6: the challenge lifecycle, and validation results out of order are refused.
    #[test]
    fn challenge_goes_pending_processing_valid() {
        let c = Challenge::new(ChallengeType::Http01, "t");
        assert!(matches!(
            c.clone().handle(ChallengeInput::Validated, now()),
            Err(Error::InvalidTransition {
                object: "challenge",
                state: "pending",
                ..
            })
        ));
        let c = c.handle(ChallengeInput::Respond, now()).unwrap();
        assert_eq!(c.status, ChallengeStatus::Processing);
        let c = c.handle(ChallengeInput::Respond, now()).unwrap();
        assert_eq!(
            c.status,
            ChallengeStatus::Processing,
            "a repeated response is idempotent"
        );
        let c = c.handle(ChallengeInput::Validated, now()).unwrap();
        assert_eq!(
            (c.status, c.validated),
            (ChallengeStatus::Valid, Some(now()))
        );
        assert!(c.handle(ChallengeInput::Validated, now()).is_err());
    }

    #[test]
    fn failed_challenge_records_the_problem_type() {
        let c = Challenge::new(ChallengeType::Dns01, "t")
            .handle(ChallengeInput::Respond, now())
            .unwrap()
            .handle(
                ChallengeInput::Failed {
                    kind: ValidationFailure::Dns,
                    detail: "NXDOMAIN".into(),
                },
                now(),
            )
            .unwrap();
        assert_eq!(c.status, ChallengeStatus::Invalid);
        assert_eq!(
            c.error.unwrap().problem_type,
            crate::problem::ProblemType::Dns
        );
        let c = Challenge::new(ChallengeType::Dns01, "t");
        let c = c.handle(ChallengeInput::Respond, now()).unwrap();
        let c = c
            .handle(
                ChallengeInput::Failed {
                    kind: ValidationFailure::IncorrectResponse,
                    detail: "x".into(),
                },
                now(),
            )
            .unwrap();
        assert!(
            c.handle(ChallengeInput::Respond, now()).is_err(),
            "no retry of an invalid challenge"
        );
    }

    #[test]
    fn authorization_follows_its_challenge() {
        let a = Authorization::new(
            Identifier::dns("example.org"),
            now() + Duration::hours(1),
            &tokens(3),
        )
        .unwrap();
        let a = a
            .handle(AuthzInput::Challenge(0, ChallengeInput::Respond), now())
            .unwrap();
        assert_eq!(a.status, AuthzStatus::Pending);
        let a = a
            .handle(AuthzInput::Challenge(0, ChallengeInput::Validated), now())
            .unwrap();
        assert_eq!(a.status, AuthzStatus::Valid);
        let a = a
            .handle(AuthzInput::Challenge(0, ChallengeInput::Respond), now())
            .unwrap();
        assert_eq!(a.status, AuthzStatus::Valid);
        assert!(
            a.clone()
                .handle(AuthzInput::Challenge(1, ChallengeInput::Respond), now())
                .is_err()
        );
        let a = a.handle(AuthzInput::Deactivate, now()).unwrap();
        assert_eq!(a.status, AuthzStatus::Deactivated);
        assert!(a.handle(AuthzInput::Deactivate, now()).is_err());
    }

    #[test]
    fn authorization_fails_with_its_challenge_and_expires() {
        let a = Authorization::new(
            Identifier::dns("example.org"),
            now() + Duration::hours(1),
            &tokens(3),
        )
        .unwrap();
        let failed = a
            .clone()
            .handle(AuthzInput::Challenge(2, ChallengeInput::Respond), now())
            .unwrap()
            .handle(
                AuthzInput::Challenge(
                    2,
                    ChallengeInput::Failed {
                        kind: ValidationFailure::Tls,
                        detail: "x".into(),
                    },
                ),
                now(),
            )
            .unwrap();
        assert_eq!(failed.status, AuthzStatus::Invalid);
        let later = now() + Duration::hours(2);
        let expired = a.clone().handle(AuthzInput::Tick, later).unwrap();
        assert_eq!(expired.status, AuthzStatus::Expired);
        assert!(matches!(
            a.clone()
                .handle(AuthzInput::Challenge(0, ChallengeInput::Respond), later),
            Err(Error::InvalidTransition {
                state: "expired",
                ..
            })
        ));
        assert!(
            a.clone()
                .handle(AuthzInput::Challenge(9, ChallengeInput::Respond), now())
                .is_err()
        );
        assert!(Authorization::new(Identifier::dns("*.example.org"), now(), &tokens(3)).is_err());
    }

    /// RFC 8555 §7.1.6: order status from its authorizations.
    #[test]
    fn order_status_is_computed_from_authorizations() {
        use AuthzStatus as A;
        use OrderStatus as O;
        for (authzs, want) in [
            (vec![A::Pending, A::Valid], O::Pending),
            (vec![A::Valid, A::Valid], O::Ready),
            (vec![A::Valid, A::Invalid], O::Invalid),
            (vec![A::Pending, A::Deactivated], O::Invalid),
            (vec![A::Valid, A::Expired], O::Invalid),
            (vec![A::Valid, A::Revoked], O::Invalid),
            (vec![], O::Invalid),
        ] {
            assert_eq!(
                order_status_from_authorizations(&authzs),
                want,
                "{authzs:?}"
            );
        }
    }

    #[test]
    fn finalize_before_ready_is_order_not_ready() {
        let o = Order::new(
            vec![Identifier::dns("a.example")],
            now() + Duration::hours(1),
        );
        let der = csr(&["a.example"], &[], None, p256());
        let e = o.handle(OrderInput::Finalize(&der), now()).unwrap_err();
        assert_eq!(e, Error::OrderNotReady("pending"));
        assert_eq!(e.wire(), (crate::problem::ProblemType::OrderNotReady, 403));
    }

    #[test]
    fn order_goes_ready_processing_valid() {
        let ids = vec![Identifier::dns("a.example"), Identifier::ip("192.0.2.7")];
        let o = ready_order(ids);
        assert_eq!(o.status, OrderStatus::Ready);
        let der = csr(&["a.example"], &["192.0.2.7"], Some("a.example"), p256());
        let o = o.handle(OrderInput::Finalize(&der), now()).unwrap();
        assert_eq!(o.status, OrderStatus::Processing);
        assert_eq!(
            o.clone()
                .handle(OrderInput::Finalize(&der), now())
                .unwrap_err(),
            Error::OrderNotReady("processing"),
            "a second finalize cannot issue twice"
        );
        let valid = o.clone().handle(OrderInput::Issued, now()).unwrap();
        assert_eq!(valid.status, OrderStatus::Valid);
        assert!(valid.handle(OrderInput::Issued, now()).is_err());
        let failed = o
            .handle(
                OrderInput::IssuanceFailed(Error::ServerInternal.to_problem()),
                now(),
            )
            .unwrap();
        assert_eq!(failed.status, OrderStatus::Invalid);
    }

    #[test]
    fn unfinalized_order_expires() {
        let o = ready_order(vec![Identifier::dns("a.example")]);
        let der = csr(&["a.example"], &[], None, p256());
        let e = o
            .handle(OrderInput::Finalize(&der), now() + Duration::hours(2))
            .unwrap_err();
        assert_eq!(e, Error::OrderNotReady("invalid"));
    }

    #[test]
    fn csr_with_an_extra_name_is_bad_csr() {
        let o = ready_order(vec![Identifier::dns("a.example")]);
        let der = csr(&["a.example", "b.example"], &[], None, p256());
        let e = o
            .clone()
            .handle(OrderInput::Finalize(&der), now())
            .unwrap_err();
        assert!(
            matches!(e, Error::BadCsr(ref m) if m.contains("b.example")),
            "{e:?}"
        );
        // A missing name is refused too, and the order stays ready for a corrected CSR.
        let o2 = ready_order(vec![
            Identifier::dns("a.example"),
            Identifier::dns("b.example"),
        ]);
        assert!(matches!(
            o2.handle(
                OrderInput::Finalize(&csr(&["a.example"], &[], None, p256())),
                now()
            ),
            Err(Error::BadCsr(_))
        ));
        assert_eq!(o.status, OrderStatus::Ready);
    }

    #[test]
    fn csr_cn_must_be_an_order_identifier() {
        let ids = [Identifier::dns("a.example")];
        assert!(check_csr(&csr(&["a.example"], &[], Some("A.example"), p256()), &ids).is_ok());
        assert!(matches!(
            check_csr(&csr(&["a.example"], &[], Some("c.example"), p256()), &ids),
            Err(Error::BadCsr(_))
        ));
    }

    #[test]
    fn csr_signature_is_verified_for_each_key_type() {
        let ids = [Identifier::dns("a.example")];
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
            &rcgen::PKCS_RSA_SHA256,
        ] {
            let mut der = csr(&["a.example"], &[], None, alg);
            check_csr(&der, &ids).unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
            // Flip a bit in the signature (the last byte).
            let last = der.len() - 1;
            der[last] ^= 1;
            assert!(
                matches!(check_csr(&der, &ids), Err(Error::BadCsr(_))),
                "{alg:?}"
            );
        }
        assert!(matches!(
            check_csr(b"\x30\x03\x02\x01\x00", &ids),
            Err(Error::BadCsr(_))
        ));
    }
}
