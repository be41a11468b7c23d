//! Key policy (invariant I-9): before signing, the signer parses what it is asked to sign and
//! refuses what the key's role and limits do not allow, so a compromised core cannot mint a rogue
//! intermediate with an issuing key, or a certificate with an OCSP key.
//!
//! Pure: bytes + key metadata + algorithm in, a decision out. Parsing is strict DER (the `der`
//! crate); anything that does not parse as the structure a role needs is refused.
//!
//! | role | may sign |
//! |---|---|
//! | ROOT, INTERMEDIATE | CA TBSCertificates (pathLen ≤ `max_path_len` when set), delegated OCSP responder certificates, TBSCertLists, OCSP ResponseData |
//! | ISSUING | non-CA v3 TBSCertificates (no cA=TRUE, no keyCertSign) with validity ≤ max, TBSCertLists, OCSP ResponseData |
//! | OCSP | OCSP ResponseData only |
//! | CRL | TBSCertLists only |
//! | AUDIT | messages starting with `CERTGATE-AUDIT-V1\0` only |
//! | RA | protocol-message protection: bytes that parse as none of TBSCertificate, TBSCertList, ResponseData |
//! | SCEP_RA | DER CMS SignedAttributes (SET OF Attribute) with RSA PKCS#1 v1.5 only; the only role allowed to decrypt ([`check_decrypt`]) |

use certgate_proto::signer::{Algorithm, KeyRole, KeyType};
use const_oid::ObjectIdentifier;
use const_oid::db::rfc5280::ID_KP_OCSP_SIGNING;
use der::{Decode, Sequence, Tagged};
use spki::AlgorithmIdentifierOwned;
use x509_cert::TbsCertificate;
use x509_cert::attr::Attributes;
use x509_cert::crl::TbsCertList;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use x509_ocsp::ResponseData;

use crate::keystore::KeyMeta;

/// The prefix every audit record signed by an AUDIT key starts with.
pub const AUDIT_PREFIX: &[u8] = b"CERTGATE-AUDIT-V1\0";

/// Default longest validity of a certificate an ISSUING key signs (398 days, the CA/B limit).
pub const DEFAULT_ISSUING_MAX_VALIDITY: u64 = 398 * 86_400;
/// Default longest validity of a certificate an INTERMEDIATE key signs (10 years).
pub const DEFAULT_INTERMEDIATE_MAX_VALIDITY: u64 = 3_653 * 86_400;
/// Default longest validity of a certificate a ROOT key signs, its own included (25 years).
pub const DEFAULT_ROOT_MAX_VALIDITY: u64 = 9_132 * 86_400;

/// What the message turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signed {
    /// A TBSCertificate.
    Certificate,
    /// A TBSCertList.
    CertList,
    /// OCSP ResponseData.
    OcspResponse,
    /// An audit record.
    AuditRecord,
    /// Protocol-message protection (RA).
    Protection,
}

/// A refusal: the rule that refused and a message safe to show the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Machine-readable rule, e.g. `policy.issuing.ca_certificate`.
    pub rule: String,
    /// Human-readable reason (no secrets; it describes the caller's own bytes).
    pub message: String,
}

fn refuse(role: KeyRole, what: &str, message: impl Into<String>) -> Refusal {
    Refusal {
        rule: format!("policy.{}.{what}", role_name(role)),
        message: message.into(),
    }
}

/// The lowercase role name used in rule names.
pub fn role_name(role: KeyRole) -> &'static str {
    match role {
        KeyRole::Root => "root",
        KeyRole::Intermediate => "intermediate",
        KeyRole::Issuing => "issuing",
        KeyRole::Ocsp => "ocsp",
        KeyRole::Crl => "crl",
        KeyRole::Audit => "audit",
        KeyRole::Ra => "ra",
        KeyRole::ScepRa => "scep_ra",
        KeyRole::RoleUnspecified => "unspecified",
    }
}

/// The effective longest validity for certificates signed by a key of this role.
pub fn max_validity(meta: &KeyMeta) -> u64 {
    if meta.policy.max_validity_seconds > 0 {
        return meta.policy.max_validity_seconds;
    }
    match meta.role {
        KeyRole::Root => DEFAULT_ROOT_MAX_VALIDITY,
        KeyRole::Intermediate => DEFAULT_INTERMEDIATE_MAX_VALIDITY,
        _ => DEFAULT_ISSUING_MAX_VALIDITY,
    }
}

/// Checks that a key with `meta` may sign `msg` with `alg`. The caller has already checked that
/// `alg` suits the key type.
pub fn check(meta: &KeyMeta, alg: Algorithm, msg: &[u8]) -> Result<Signed, Refusal> {
    let role = meta.role;
    match role {
        KeyRole::Audit => {
            if msg.starts_with(AUDIT_PREFIX) {
                Ok(Signed::AuditRecord)
            } else {
                Err(refuse(
                    role,
                    "prefix_missing",
                    "an audit key signs only messages starting with CERTGATE-AUDIT-V1\\0",
                ))
            }
        }
        KeyRole::Ocsp => match ResponseData::from_der(msg) {
            Ok(_) => Ok(Signed::OcspResponse),
            Err(_) => Err(refuse(
                role,
                "not_response_data",
                "an OCSP key signs only DER OCSP ResponseData",
            )),
        },
        KeyRole::Crl => match TbsCertList::from_der(msg) {
            Ok(crl) => {
                check_alg_id(role, alg, &crl.signature)?;
                Ok(Signed::CertList)
            }
            Err(_) => Err(refuse(
                role,
                "not_tbs_cert_list",
                "a CRL key signs only DER TBSCertList",
            )),
        },
        KeyRole::Ra => {
            if TbsCertificate::from_der(msg).is_ok()
                || TbsCertList::from_der(msg).is_ok()
                || ResponseData::from_der(msg).is_ok()
            {
                Err(refuse(
                    role,
                    "pki_object",
                    "an RA key signs protocol messages, never certificates, CRLs or OCSP responses",
                ))
            } else {
                Ok(Signed::Protection)
            }
        }
        KeyRole::ScepRa => {
            if !matches!(
                alg,
                Algorithm::RsaPkcs1Sha256 | Algorithm::RsaPkcs1Sha384 | Algorithm::RsaPkcs1Sha512
            ) {
                return Err(refuse(
                    role,
                    "algorithm_not_allowed",
                    "a SCEP RA key signs with RSA PKCS#1 v1.5 only",
                ));
            }
            if TbsCertificate::from_der(msg).is_ok()
                || TbsCertList::from_der(msg).is_ok()
                || ResponseData::from_der(msg).is_ok()
            {
                return Err(refuse(
                    role,
                    "pki_object",
                    "a SCEP RA key never signs certificates, CRLs or OCSP responses",
                ));
            }
            match Attributes::from_der(msg) {
                Ok(attrs) if !attrs.is_empty() => Ok(Signed::Protection),
                _ => Err(refuse(
                    role,
                    "not_signed_attributes",
                    "a SCEP RA key signs only DER CMS SignedAttributes (a non-empty SET OF Attribute)",
                )),
            }
        }
        KeyRole::Issuing | KeyRole::Root | KeyRole::Intermediate => {
            if let Ok(tbs) = TbsCertificate::from_der(msg) {
                check_alg_id(role, alg, &tbs.signature)?;
                check_certificate(meta, &tbs)?;
                Ok(Signed::Certificate)
            } else if let Ok(crl) = TbsCertList::from_der(msg) {
                check_alg_id(role, alg, &crl.signature)?;
                Ok(Signed::CertList)
            } else if ResponseData::from_der(msg).is_ok() {
                Ok(Signed::OcspResponse)
            } else {
                Err(refuse(
                    role,
                    "unknown_structure",
                    "a CA key signs only DER TBSCertificate, TBSCertList or OCSP ResponseData",
                ))
            }
        }
        KeyRole::RoleUnspecified => Err(refuse(role, "no_role", "the key has no role")),
    }
}

/// Checks that a key with `meta` may decrypt (key transport): SCEP_RA keys only, RSA only.
pub fn check_decrypt(meta: &KeyMeta) -> Result<(), Refusal> {
    let role = meta.role;
    if role != KeyRole::ScepRa {
        return Err(refuse(
            role,
            "decrypt_not_allowed",
            "only SCEP_RA keys may decrypt",
        ));
    }
    if !matches!(
        meta.key_type,
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096
    ) {
        return Err(refuse(role, "not_rsa", "SCEP_RA keys are RSA keys"));
    }
    Ok(())
}

fn check_certificate(meta: &KeyMeta, tbs: &TbsCertificate) -> Result<(), Refusal> {
    let role = meta.role;
    // validity
    let nb = tbs.validity.not_before.to_unix_duration().as_secs();
    let na = tbs.validity.not_after.to_unix_duration().as_secs();
    if na < nb {
        return Err(refuse(
            role,
            "validity_inverted",
            "notAfter is before notBefore",
        ));
    }
    let max = max_validity(meta);
    if na - nb > max {
        return Err(refuse(
            role,
            "validity_too_long",
            format!(
                "validity of {} s exceeds the key's maximum of {max} s",
                na - nb
            ),
        ));
    }
    if tbs.version != x509_cert::Version::V3 {
        return Err(refuse(
            role,
            "not_v3",
            "only v3 certificates are signed (v1/v2 certificates may be taken for CAs)",
        ));
    }
    let mut basic: Option<BasicConstraints> = None;
    let mut key_cert_sign = false;
    let mut ocsp_signing = false;
    for ext in tbs.extensions.iter().flatten() {
        let bad = |what: &str| {
            refuse(
                role,
                "bad_extension",
                format!("undecodable {what} extension"),
            )
        };
        match ext.extn_id {
            const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS => {
                basic = Some(
                    BasicConstraints::from_der(ext.extn_value.as_bytes())
                        .map_err(|_| bad("basicConstraints"))?,
                );
            }
            const_oid::db::rfc5280::ID_CE_KEY_USAGE => {
                let ku =
                    KeyUsage::from_der(ext.extn_value.as_bytes()).map_err(|_| bad("keyUsage"))?;
                key_cert_sign = ku.key_cert_sign();
            }
            const_oid::db::rfc5280::ID_CE_EXT_KEY_USAGE => {
                let eku = ExtendedKeyUsage::from_der(ext.extn_value.as_bytes())
                    .map_err(|_| bad("extKeyUsage"))?;
                ocsp_signing = eku.0.contains(&ID_KP_OCSP_SIGNING);
            }
            _ => {}
        }
    }
    let is_ca = basic.as_ref().is_some_and(|b| b.ca);
    match role {
        KeyRole::Issuing => {
            if is_ca {
                return Err(refuse(
                    role,
                    "ca_certificate",
                    "an issuing key never signs a CA certificate (basicConstraints cA=TRUE)",
                ));
            }
            if key_cert_sign {
                return Err(refuse(
                    role,
                    "key_cert_sign",
                    "an issuing key never signs a certificate with keyUsage keyCertSign",
                ));
            }
            Ok(())
        }
        _ => {
            // ROOT / INTERMEDIATE
            if !is_ca {
                if ocsp_signing && !key_cert_sign {
                    // a delegated OCSP responder certificate (RFC 6960 §4.2.2.2)
                    return Ok(());
                }
                return Err(refuse(
                    role,
                    "end_entity_certificate",
                    "a root or intermediate key signs CA certificates and OCSP responder certificates only",
                ));
            }
            if let Some(max) = meta.policy.max_path_len {
                match basic.and_then(|b| b.path_len_constraint) {
                    None => {
                        return Err(refuse(
                            role,
                            "path_len_missing",
                            format!("the CA certificate must carry pathLenConstraint ≤ {max}"),
                        ));
                    }
                    Some(n) if u32::from(n) > max => {
                        return Err(refuse(
                            role,
                            "path_len_exceeded",
                            format!("pathLenConstraint {n} exceeds the key's maximum {max}"),
                        ));
                    }
                    Some(_) => {}
                }
            }
            Ok(())
        }
    }
}

// OIDs (RFC 5758, RFC 4055, RFC 8410)
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const ID_MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// RSASSA-PSS-params (RFC 4055 §3.1).
///
/// ```text
/// RSASSA-PSS-params  ::=  SEQUENCE  {
///     hashAlgorithm      [0] HashAlgorithm DEFAULT sha1Identifier,
///     maskGenAlgorithm   [1] MaskGenAlgorithm DEFAULT mgf1SHA1Identifier,
///     saltLength         [2] INTEGER DEFAULT 20,
///     trailerField       [3] INTEGER DEFAULT 1  }
/// ```
#[derive(Clone, Debug, Sequence)]
struct PssParams {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    hash: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    mask_gen: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", optional = "true")]
    salt_len: Option<u32>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    trailer: Option<u32>,
}

fn null_or_absent(id: &AlgorithmIdentifierOwned) -> bool {
    id.parameters
        .as_ref()
        .is_none_or(|p| p.tag() == der::Tag::Null && p.value().is_empty())
}

/// Whether the AlgorithmIdentifier inside a TBS structure names exactly `alg` (for PSS: the
/// hash, MGF1 with the same hash, and a salt as long as the hash, which is what aws-lc-rs
/// produces).
pub fn alg_id_matches(alg: Algorithm, id: &AlgorithmIdentifierOwned) -> bool {
    let absent = id.parameters.is_none();
    match alg {
        Algorithm::EcdsaP256Sha256 => id.oid == ECDSA_WITH_SHA256 && absent,
        Algorithm::EcdsaP384Sha384 => id.oid == ECDSA_WITH_SHA384 && absent,
        Algorithm::Ed25519 => id.oid == ED25519 && absent,
        Algorithm::RsaPkcs1Sha256 => id.oid == SHA256_WITH_RSA && null_or_absent(id),
        Algorithm::RsaPkcs1Sha384 => id.oid == SHA384_WITH_RSA && null_or_absent(id),
        Algorithm::RsaPkcs1Sha512 => id.oid == SHA512_WITH_RSA && null_or_absent(id),
        Algorithm::RsaPssSha256 | Algorithm::RsaPssSha384 | Algorithm::RsaPssSha512 => {
            let (hash, len) = match alg {
                Algorithm::RsaPssSha256 => (SHA256, 32),
                Algorithm::RsaPssSha384 => (SHA384, 48),
                _ => (SHA512, 64),
            };
            if id.oid != RSASSA_PSS {
                return false;
            }
            let Some(params) = id.parameters.as_ref() else {
                return false;
            };
            let Ok(p) = params.decode_as::<PssParams>() else {
                return false;
            };
            let hash_ok = p
                .hash
                .as_ref()
                .is_some_and(|h| h.oid == hash && null_or_absent(h));
            let mgf_ok = p.mask_gen.as_ref().is_some_and(|m| {
                m.oid == ID_MGF1
                    && m.parameters
                        .as_ref()
                        .and_then(|mp| mp.decode_as::<AlgorithmIdentifierOwned>().ok())
                        .is_some_and(|h| h.oid == hash && null_or_absent(&h))
            });
            hash_ok && mgf_ok && p.salt_len == Some(len) && p.trailer.is_none_or(|t| t == 1)
        }
        Algorithm::Unspecified => false,
    }
}

fn check_alg_id(
    role: KeyRole,
    alg: Algorithm,
    id: &AlgorithmIdentifierOwned,
) -> Result<(), Refusal> {
    if alg_id_matches(alg, id) {
        Ok(())
    } else {
        Err(refuse(
            role,
            "algorithm_mismatch",
            format!(
                "the signature AlgorithmIdentifier in the message ({}) does not match the requested algorithm {}",
                id.oid,
                alg.as_str_name()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::{KeyMeta, Policy};
    use certgate_proto::signer::{KeyBackend, KeyType};
    use der::Encode;
    use std::time::Duration;

    fn meta(role: KeyRole, policy: Policy) -> KeyMeta {
        KeyMeta {
            key_id: "k".into(),
            tenant: "t".into(),
            role,
            key_type: KeyType::EcP256,
            backend: KeyBackend::SealedFile,
            policy,
            public_key_der: vec![],
            created_unix: 0,
        }
    }

    fn tbs(ca: Option<Option<u8>>, days: i64, key_cert_sign: bool, ocsp_eku: bool) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(vec!["x.example".to_owned()]).expect("params");
        params.is_ca = match ca {
            None => rcgen::IsCa::NoCa,
            Some(None) => rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
            Some(Some(n)) => rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(n)),
        };
        params.not_before = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("t");
        params.not_after = params.not_before + time::Duration::days(days);
        if key_cert_sign {
            params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        }
        if ocsp_eku {
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::OcspSigning];
        }
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let cert = x509_cert::Certificate::from_der(cert.der()).expect("parse");
        cert.tbs_certificate.to_der().expect("der")
    }

    fn tbs_cert_list() -> Vec<u8> {
        use std::str::FromStr;
        TbsCertList {
            version: x509_cert::Version::V2,
            signature: AlgorithmIdentifierOwned {
                oid: ECDSA_WITH_SHA256,
                parameters: None,
            },
            issuer: x509_cert::name::Name::from_str("CN=Test CA").expect("name"),
            this_update: x509_cert::time::Time::UtcTime(
                der::asn1::UtcTime::from_unix_duration(Duration::from_secs(1_700_000_000))
                    .expect("time"),
            ),
            next_update: None,
            revoked_certificates: None,
            crl_extensions: None,
        }
        .to_der()
        .expect("der")
    }

    fn response_data() -> Vec<u8> {
        use std::str::FromStr;
        ResponseData {
            version: x509_ocsp::Version::V1,
            responder_id: x509_ocsp::ResponderId::ByName(
                x509_cert::name::Name::from_str("CN=Test OCSP").expect("name"),
            ),
            produced_at: x509_ocsp::OcspGeneralizedTime(
                der::asn1::GeneralizedTime::from_unix_duration(Duration::from_secs(1_700_000_000))
                    .expect("time"),
            ),
            responses: vec![],
            response_extensions: None,
        }
        .to_der()
        .expect("der")
    }

    const P256: Algorithm = Algorithm::EcdsaP256Sha256;

    fn rule(r: Result<Signed, Refusal>) -> String {
        r.expect_err("must be refused").rule
    }

    #[test]
    fn issuing_key_signs_end_entity_certificates_crls_and_ocsp() {
        let m = meta(KeyRole::Issuing, Policy::default());
        assert_eq!(
            check(&m, P256, &tbs(None, 90, false, false)),
            Ok(Signed::Certificate)
        );
        assert_eq!(check(&m, P256, &tbs_cert_list()), Ok(Signed::CertList));
        assert_eq!(check(&m, P256, &response_data()), Ok(Signed::OcspResponse));
    }

    #[test]
    fn issuing_key_refuses_ca_certificate() {
        let m = meta(KeyRole::Issuing, Policy::default());
        assert_eq!(
            rule(check(&m, P256, &tbs(Some(None), 90, false, false))),
            "policy.issuing.ca_certificate"
        );
        assert_eq!(
            rule(check(&m, P256, &tbs(None, 90, true, false))),
            "policy.issuing.key_cert_sign"
        );
    }

    #[test]
    fn issuing_key_refuses_overlong_validity() {
        let m = meta(
            KeyRole::Issuing,
            Policy {
                max_validity_seconds: 90 * 86_400,
                max_path_len: None,
            },
        );
        assert!(check(&m, P256, &tbs(None, 90, false, false)).is_ok());
        assert_eq!(
            rule(check(&m, P256, &tbs(None, 91, false, false))),
            "policy.issuing.validity_too_long"
        );
        let default = meta(KeyRole::Issuing, Policy::default());
        assert_eq!(
            rule(check(&default, P256, &tbs(None, 399, false, false))),
            "policy.issuing.validity_too_long"
        );
    }

    #[test]
    fn algorithm_identifier_inside_tbs_must_match_request() {
        let m = meta(KeyRole::Issuing, Policy::default());
        assert_eq!(
            rule(check(
                &m,
                Algorithm::EcdsaP384Sha384,
                &tbs(None, 90, false, false)
            )),
            "policy.issuing.algorithm_mismatch"
        );
        let crl = meta(KeyRole::Crl, Policy::default());
        assert_eq!(
            rule(check(&crl, Algorithm::Ed25519, &tbs_cert_list())),
            "policy.crl.algorithm_mismatch"
        );
    }

    #[test]
    fn ocsp_key_signs_only_response_data() {
        let m = meta(KeyRole::Ocsp, Policy::default());
        assert!(check(&m, P256, &response_data()).is_ok());
        assert_eq!(
            rule(check(&m, P256, &tbs(None, 90, false, false))),
            "policy.ocsp.not_response_data"
        );
        assert_eq!(
            rule(check(&m, P256, &tbs_cert_list())),
            "policy.ocsp.not_response_data"
        );
        assert_eq!(
            rule(check(&m, P256, b"garbage")),
            "policy.ocsp.not_response_data"
        );
    }

    #[test]
    fn crl_key_signs_only_tbs_cert_list() {
        let m = meta(KeyRole::Crl, Policy::default());
        assert!(check(&m, P256, &tbs_cert_list()).is_ok());
        assert_eq!(
            rule(check(&m, P256, &response_data())),
            "policy.crl.not_tbs_cert_list"
        );
        assert_eq!(
            rule(check(&m, P256, &tbs(None, 90, false, false))),
            "policy.crl.not_tbs_cert_list"
        );
    }

    #[test]
    fn audit_key_signs_only_prefixed_records() {
        let m = meta(KeyRole::Audit, Policy::default());
        assert!(check(&m, P256, b"CERTGATE-AUDIT-V1\0{\"seq\":1}").is_ok());
        assert_eq!(
            rule(check(&m, P256, b"CERTGATE-AUDIT-V1 no nul")),
            "policy.audit.prefix_missing"
        );
        assert_eq!(
            rule(check(&m, P256, &response_data())),
            "policy.audit.prefix_missing"
        );
    }

    #[test]
    fn ra_key_never_signs_pki_objects() {
        let m = meta(KeyRole::Ra, Policy::default());
        assert_eq!(
            check(&m, P256, b"cmp protected part"),
            Ok(Signed::Protection)
        );
        for msg in [
            tbs(None, 90, false, false),
            tbs_cert_list(),
            response_data(),
        ] {
            assert_eq!(rule(check(&m, P256, &msg)), "policy.ra.pki_object");
        }
    }

    #[test]
    fn scep_ra_key_signs_only_signed_attributes_and_alone_may_decrypt() {
        let mut m = meta(KeyRole::ScepRa, Policy::default());
        m.key_type = KeyType::Rsa2048;
        let rsa = Algorithm::RsaPkcs1Sha256;
        // SET OF { Attribute { contentType, SET { id-data } } }
        let attrs = hex::decode(
            "311a30180609 2a864886f70d010903 310b 06092a864886f70d010701".replace(' ', ""),
        )
        .expect("hex");
        assert_eq!(check(&m, rsa, &attrs), Ok(Signed::Protection));
        assert_eq!(
            rule(check(&m, Algorithm::RsaPssSha256, &attrs)),
            "policy.scep_ra.algorithm_not_allowed"
        );
        assert_eq!(
            rule(check(&m, rsa, b"cmp protected part")),
            "policy.scep_ra.not_signed_attributes"
        );
        for msg in [tbs_cert_list(), response_data()] {
            assert_eq!(rule(check(&m, rsa, &msg)), "policy.scep_ra.pki_object");
        }
        assert_eq!(check_decrypt(&m), Ok(()));
        m.key_type = KeyType::EcP256;
        assert_eq!(
            check_decrypt(&m).expect_err("EC").rule,
            "policy.scep_ra.not_rsa"
        );
        for role in [KeyRole::Ra, KeyRole::Issuing, KeyRole::Audit] {
            let mut other = meta(role, Policy::default());
            other.key_type = KeyType::Rsa2048;
            assert!(check_decrypt(&other).is_err());
        }
    }

    #[test]
    fn ca_keys_sign_ca_certificates_within_path_len() {
        let root = meta(
            KeyRole::Root,
            Policy {
                max_validity_seconds: 0,
                max_path_len: Some(1),
            },
        );
        assert!(check(&root, P256, &tbs(Some(Some(0)), 3650, true, false)).is_ok());
        assert!(check(&root, P256, &tbs(Some(Some(1)), 3650, true, false)).is_ok());
        assert_eq!(
            rule(check(&root, P256, &tbs(Some(Some(2)), 3650, true, false))),
            "policy.root.path_len_exceeded"
        );
        assert_eq!(
            rule(check(&root, P256, &tbs(Some(None), 3650, true, false))),
            "policy.root.path_len_missing"
        );
        assert_eq!(
            rule(check(&root, P256, &tbs(None, 90, false, false))),
            "policy.root.end_entity_certificate"
        );
        // delegated OCSP responder certificate
        assert!(check(&root, P256, &tbs(None, 90, false, true)).is_ok());
        let unlimited = meta(KeyRole::Intermediate, Policy::default());
        assert!(check(&unlimited, P256, &tbs(Some(None), 3650, true, false)).is_ok());
        assert_eq!(
            rule(check(&unlimited, P256, &tbs(Some(None), 3660, true, false))),
            "policy.intermediate.validity_too_long"
        );
    }

    #[test]
    fn mutated_der_never_panics_and_never_lets_an_issuing_key_sign_a_ca() {
        // a cheap in-tree stand-in for a fuzz target: every single-byte mutation of real inputs
        let inputs = [
            tbs(Some(None), 30, true, false),
            tbs(None, 30, false, false),
            tbs_cert_list(),
            response_data(),
        ];
        let roles = [
            KeyRole::Root,
            KeyRole::Intermediate,
            KeyRole::Issuing,
            KeyRole::Ocsp,
            KeyRole::Crl,
            KeyRole::Audit,
            KeyRole::Ra,
            KeyRole::ScepRa,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for input in &inputs {
            for i in 0..input.len() {
                for _ in 0..4 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let mut m = input.clone();
                    m[i] = (state & 0xff) as u8;
                    for role in roles {
                        let r = check(&meta(role, Policy::default()), P256, &m);
                        if role == KeyRole::Issuing && r == Ok(Signed::Certificate) {
                            let t = TbsCertificate::from_der(&m).expect("it parsed");
                            let ca = t.extensions.iter().flatten().any(|e| {
                                e.extn_id == const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS
                                    && BasicConstraints::from_der(e.extn_value.as_bytes())
                                        .is_ok_and(|b| b.ca)
                            });
                            assert!(!ca, "an issuing key accepted a CA certificate");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn pss_identifier_must_name_hash_mgf_and_salt() {
        // sha256 PSS AlgorithmIdentifier as OpenSSL writes it (hash, MGF1-SHA256, salt 32)
        let der = hex::decode(
            "304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d06096086480165030402010500a203020120",
        )
        .expect("hex");
        let id = AlgorithmIdentifierOwned::from_der(&der).expect("alg id");
        assert!(alg_id_matches(Algorithm::RsaPssSha256, &id));
        assert!(!alg_id_matches(Algorithm::RsaPssSha384, &id));
        assert!(!alg_id_matches(Algorithm::RsaPkcs1Sha256, &id));
    }
}
