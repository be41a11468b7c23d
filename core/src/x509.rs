//! Building TBSCertificates (RFC 5280 §4.1) for leaves and CAs, and assembling the signed
//! certificate from the signer's answer.
//!
//! The core builds every byte the signer signs; the signer only checks its key policy on them.

use std::time::Duration;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use certgate_proto::signer::{Algorithm, KeyType};
use const_oid::ObjectIdentifier;
use const_oid::db::{rfc5280, rfc5912, rfc8410};
use der::asn1::{BitString, GeneralizedTime, Ia5String, OctetString, SetOfVec, UtcTime};
use der::{Any, Decode, Encode, Tag};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AccessDescription, AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints,
    CrlDistributionPoints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use crate::error::{CoreError, Result};
use crate::profile::{Eku, KeyAlgorithm, Ku, San};

/// How far notBefore is backdated for clients with slow clocks.
pub const BACKDATE: Duration = Duration::from_secs(120);

/// Number of CRL shards per issuer; a certificate's shard is fixed from its serial.
pub const CRL_SHARDS: u32 = 16;

/// The signature algorithm a CA key signs with, as the signer names it and as X.509 names it.
pub fn signing_algorithm(key_type: KeyType) -> Result<(Algorithm, AlgorithmIdentifierOwned)> {
    let absent = |oid| AlgorithmIdentifierOwned {
        oid,
        parameters: None,
    };
    Ok(match key_type {
        KeyType::EcP256 => (
            Algorithm::EcdsaP256Sha256,
            absent(rfc5912::ECDSA_WITH_SHA_256),
        ),
        KeyType::EcP384 => (
            Algorithm::EcdsaP384Sha384,
            absent(rfc5912::ECDSA_WITH_SHA_384),
        ),
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => (
            Algorithm::RsaPkcs1Sha256,
            AlgorithmIdentifierOwned {
                oid: rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
                parameters: Some(Any::null()),
            },
        ),
        KeyType::Ed25519Key => (Algorithm::Ed25519, absent(rfc8410::ID_ED_25519)),
        KeyType::Unspecified => {
            return Err(CoreError::malformed(
                "ca.key_type",
                "key type is unspecified",
            ));
        }
    })
}

fn verifier(alg: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    Some(match alg {
        Algorithm::EcdsaP256Sha256 => &sig::ECDSA_P256_SHA256_ASN1,
        Algorithm::EcdsaP384Sha384 => &sig::ECDSA_P384_SHA384_ASN1,
        Algorithm::RsaPkcs1Sha256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RsaPkcs1Sha384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RsaPkcs1Sha512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::Ed25519 => &sig::ED25519,
        _ => return None,
    })
}

/// Checks a signature the signer returned against the CA's SubjectPublicKeyInfo (DER), so a
/// faulty signer can never make the core store a certificate that does not verify.
pub fn verify_signature(
    spki_der: &[u8],
    alg: Algorithm,
    message: &[u8],
    signature: &[u8],
) -> Result<()> {
    let spki = SubjectPublicKeyInfoOwned::from_der(spki_der)
        .map_err(|_| CoreError::Internal("CA public key does not parse".into()))?;
    let raw = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| CoreError::Internal("CA public key bits".into()))?;
    let v = verifier(alg).ok_or_else(|| CoreError::Internal("unsupported CA algorithm".into()))?;
    UnparsedPublicKey::new(v, raw)
        .verify(message, signature)
        .map_err(|_| CoreError::BadSignature)
}

/// A fresh random positive serial: 128 bits of CSPRNG output with the top bit cleared (so the DER
/// INTEGER needs no sign byte) and never zero.
pub fn random_serial() -> Result<Vec<u8>> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CoreError::Internal("CSPRNG failed".into()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40; // keep the length fixed at 16 bytes and the value positive and non-zero
    Ok(bytes.to_vec())
}

/// Lower-case hex of a serial's magnitude, no leading zero bytes (the wire form).
pub fn serial_hex(serial: &[u8]) -> String {
    let trimmed: &[u8] = match serial.iter().position(|b| *b != 0) {
        Some(i) => &serial[i..],
        None => &serial[serial.len().saturating_sub(1)..],
    };
    hex::encode(trimmed)
}

/// The CRL shard of a serial: its last byte modulo [`CRL_SHARDS`].
pub fn crl_shard(serial: &[u8]) -> u32 {
    u32::from(serial.last().copied().unwrap_or(0)) % CRL_SHARDS
}

/// Key identifier (RFC 7093 §2 method 1): the leftmost 160 bits of the SHA-256 of the
/// subjectPublicKey BIT STRING's bytes.
pub fn key_identifier(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    let d = digest::digest(&digest::SHA256, spki.subject_public_key.raw_bytes());
    d.as_ref()[..20].to_vec()
}

/// An X.509 Time: UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5).
pub fn x509_time(unix: i64) -> Result<Time> {
    let d = Duration::from_secs(
        u64::try_from(unix)
            .map_err(|_| CoreError::malformed("request.validity", "time before 1970"))?,
    );
    const Y2050: u64 = 2_524_608_000;
    if d.as_secs() < Y2050 {
        Ok(Time::UtcTime(UtcTime::from_unix_duration(d)?))
    } else {
        Ok(Time::GeneralTime(GeneralizedTime::from_unix_duration(d)?))
    }
}

/// A Name with optional O and one CN (UTF8String).
pub fn simple_name(organization: Option<&str>, cn: Option<&str>) -> Result<Name> {
    let mut rdns = Vec::new();
    let mut push = |oid: ObjectIdentifier, value: &str| -> Result<()> {
        let value = Any::new(Tag::Utf8String, value.as_bytes())?;
        let set = SetOfVec::try_from(vec![AttributeTypeAndValue { oid, value }])?;
        rdns.push(RelativeDistinguishedName(set));
        Ok(())
    };
    if let Some(o) = organization {
        push(const_oid::db::rfc4519::O, o)?;
    }
    if let Some(cn) = cn {
        push(const_oid::db::rfc4519::CN, cn)?;
    }
    Ok(RdnSequence(rdns))
}

fn ext<T: Encode>(oid: ObjectIdentifier, critical: bool, value: &T) -> Result<Extension> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

fn uri(s: &str) -> Result<GeneralName> {
    Ok(GeneralName::UniformResourceIdentifier(
        Ia5String::new(s)
            .map_err(|_| CoreError::malformed("tenant.public_base_url", "URL is not ASCII"))?,
    ))
}

/// The issuer a leaf or CA is built under.
#[derive(Clone, Debug)]
pub struct IssuerInfo {
    /// The issuer's CA id (used in URLs).
    pub ca_id: String,
    /// The issuer's subject Name.
    pub name: Name,
    /// The issuer's subject key identifier.
    pub key_id: Vec<u8>,
    /// The issuer's key type (decides the signature algorithm).
    pub key_type: KeyType,
}

impl IssuerInfo {
    /// Reads the issuer facts from its certificate.
    pub fn from_cert(ca_id: &str, cert_der: &[u8], key_type: KeyType) -> Result<Self> {
        let cert = Certificate::from_der(cert_der)
            .map_err(|e| CoreError::Store(format!("stored CA certificate: {e}")))?;
        let tbs = cert.tbs_certificate;
        let key_id = match tbs
            .get::<SubjectKeyIdentifier>()
            .map_err(|e| CoreError::Store(format!("stored CA SKI: {e}")))?
        {
            Some((_, ski)) => ski.0.as_bytes().to_vec(),
            None => key_identifier(&tbs.subject_public_key_info),
        };
        Ok(Self {
            ca_id: ca_id.to_owned(),
            name: tbs.subject,
            key_id,
            key_type,
        })
    }
}

/// Everything a leaf TBSCertificate is built from (already policy-checked).
#[derive(Clone, Debug)]
pub struct LeafSpec<'a> {
    /// The issuer.
    pub issuer: &'a IssuerInfo,
    /// Serial bytes (positive).
    pub serial: &'a [u8],
    /// The subject key.
    pub spki: &'a SubjectPublicKeyInfoOwned,
    /// The subject key's algorithm (decides which key usages apply).
    pub key_alg: KeyAlgorithm,
    /// Subject CN (None = empty subject, SAN critical).
    pub common_name: Option<&'a str>,
    /// SANs.
    pub sans: &'a [San],
    /// EKUs.
    pub ekus: &'a [Eku],
    /// Key usages from the profile.
    pub key_usages: &'a [Ku],
    /// Issuance time.
    pub now_unix: i64,
    /// Validity from `now_unix`.
    pub validity_seconds: u64,
    /// The tenant's public base URL (no trailing slash).
    pub base_url: &'a str,
}

/// Builds a leaf TBSCertificate valid from `now_unix` (backdated by [`BACKDATE`]) for
/// `validity_seconds`.
pub fn build_leaf_tbs(spec: &LeafSpec<'_>) -> Result<TbsCertificate> {
    let not_before = spec.now_unix - BACKDATE.as_secs() as i64;
    let not_after = spec
        .now_unix
        .checked_add(i64::try_from(spec.validity_seconds).unwrap_or(i64::MAX))
        .ok_or_else(|| CoreError::malformed("request.validity", "validity overflows"))?;
    build_leaf_tbs_between(spec, not_before, not_after)
}

/// Builds a leaf TBSCertificate with exactly these notBefore / notAfter (Unix seconds): a
/// requested window (ACME newOrder notBefore/notAfter, RFC 8555 §7.4) is honoured to the second,
/// not backdated. `spec.now_unix` and `spec.validity_seconds` are not used; the caller has checked
/// the window against the profile.
pub fn build_leaf_tbs_between(
    spec: &LeafSpec<'_>,
    not_before: i64,
    not_after: i64,
) -> Result<TbsCertificate> {
    if not_after <= not_before {
        return Err(CoreError::malformed(
            "request.validity",
            "notAfter is not after notBefore",
        ));
    }
    let (_, sig_alg) = signing_algorithm(spec.issuer.key_type)?;
    let subject = match spec.common_name {
        Some(cn) => simple_name(None, Some(cn))?,
        None => RdnSequence(Vec::new()),
    };

    let mut exts = Vec::new();
    exts.push(ext(
        rfc5280::ID_CE_BASIC_CONSTRAINTS,
        true,
        &BasicConstraints {
            ca: false,
            path_len_constraint: None,
        },
    )?);
    let mut ku = KeyUsage(KeyUsages::DigitalSignature.into());
    let mut any_ku = false;
    for k in spec.key_usages {
        match k {
            Ku::DigitalSignature => {
                any_ku = true;
            }
            Ku::KeyEncipherment if spec.key_alg == KeyAlgorithm::Rsa => {
                ku.0 |= KeyUsages::KeyEncipherment;
                any_ku = true;
            }
            Ku::KeyAgreement
                if matches!(
                    spec.key_alg,
                    KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384
                ) =>
            {
                ku.0 |= KeyUsages::KeyAgreement;
                any_ku = true;
            }
            _ => {}
        }
    }
    let _ = any_ku; // digitalSignature is always present: every supported key can sign.
    exts.push(ext(rfc5280::ID_CE_KEY_USAGE, true, &ku)?);
    if !spec.ekus.is_empty() {
        exts.push(ext(
            rfc5280::ID_CE_EXT_KEY_USAGE,
            false,
            &ExtendedKeyUsage(spec.ekus.iter().map(|e| e.oid()).collect()),
        )?);
    }
    if !spec.sans.is_empty() {
        let mut names = Vec::new();
        for san in spec.sans {
            names.push(match san {
                San::Dns(d) => GeneralName::DnsName(
                    Ia5String::new(d)
                        .map_err(|_| CoreError::malformed("request.dns_name", "not ASCII"))?,
                ),
                San::Ip(std::net::IpAddr::V4(v4)) => {
                    GeneralName::IpAddress(OctetString::new(v4.octets().to_vec())?)
                }
                San::Ip(std::net::IpAddr::V6(v6)) => {
                    GeneralName::IpAddress(OctetString::new(v6.octets().to_vec())?)
                }
                San::Uri(u) => GeneralName::UniformResourceIdentifier(
                    Ia5String::new(u)
                        .map_err(|_| CoreError::malformed("request.uri", "not ASCII"))?,
                ),
            });
        }
        // RFC 5280 §4.2.1.6: critical when the subject is empty.
        exts.push(ext(
            rfc5280::ID_CE_SUBJECT_ALT_NAME,
            spec.common_name.is_none(),
            &SubjectAltName(names),
        )?);
    } else if spec.common_name.is_none() {
        return Err(CoreError::malformed(
            "request.names",
            "the request names no subject and no subject alternative name",
        ));
    }
    exts.push(ext(
        rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER,
        false,
        &SubjectKeyIdentifier(OctetString::new(key_identifier(spec.spki))?),
    )?);
    exts.push(aki(&spec.issuer.key_id)?);
    let shard = crl_shard(spec.serial);
    exts.push(ext(
        rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS,
        false,
        &CrlDistributionPoints(vec![DistributionPoint {
            distribution_point: Some(DistributionPointName::FullName(vec![uri(&format!(
                "{}/crl/{}/{}.crl",
                spec.base_url, spec.issuer.ca_id, shard
            ))?])),
            reasons: None,
            crl_issuer: None,
        }]),
    )?);
    exts.push(ext(
        rfc5280::ID_PE_AUTHORITY_INFO_ACCESS,
        false,
        &AuthorityInfoAccessSyntax(vec![
            AccessDescription {
                access_method: rfc5280::ID_AD_OCSP,
                access_location: uri(&format!("{}/ocsp", spec.base_url))?,
            },
            AccessDescription {
                access_method: rfc5280::ID_AD_CA_ISSUERS,
                access_location: uri(&format!("{}/ca/{}.der", spec.base_url, spec.issuer.ca_id))?,
            },
        ]),
    )?);

    Ok(TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(spec.serial)?,
        signature: sig_alg,
        issuer: spec.issuer.name.clone(),
        validity: Validity {
            not_before: x509_time(not_before)?,
            not_after: x509_time(not_after)?,
        },
        subject,
        subject_public_key_info: spec.spki.clone(),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(exts),
    })
}

fn aki(key_id: &[u8]) -> Result<Extension> {
    ext(
        rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
        false,
        &AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(key_id.to_vec())?),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        },
    )
}

/// Everything a CA TBSCertificate is built from.
#[derive(Clone, Debug)]
pub struct CaSpec<'a> {
    /// The issuer; None = self-signed root (issuer = subject, key type = `self_key_type`).
    pub issuer: Option<&'a IssuerInfo>,
    /// The new CA's common name.
    pub common_name: &'a str,
    /// The new CA's key.
    pub spki: &'a SubjectPublicKeyInfoOwned,
    /// The new CA's key type (for a root, the signing key type too).
    pub self_key_type: KeyType,
    /// pathLenConstraint.
    pub path_len: Option<u8>,
    /// Serial.
    pub serial: &'a [u8],
    /// Issuance time.
    pub now_unix: i64,
    /// Validity.
    pub validity_seconds: u64,
}

/// The organization every certgate CA name carries.
pub const CA_ORGANIZATION: &str = "certgate";

/// Builds a CA TBSCertificate (root, intermediate or issuing CA).
pub fn build_ca_tbs(spec: &CaSpec<'_>) -> Result<TbsCertificate> {
    let subject = simple_name(Some(CA_ORGANIZATION), Some(spec.common_name))?;
    let (issuer_name, signer_type) = match spec.issuer {
        Some(i) => (i.name.clone(), i.key_type),
        None => (subject.clone(), spec.self_key_type),
    };
    let (_, sig_alg) = signing_algorithm(signer_type)?;
    let not_after = spec
        .now_unix
        .checked_add(i64::try_from(spec.validity_seconds).unwrap_or(i64::MAX))
        .ok_or_else(|| CoreError::malformed("ca.validity", "validity overflows"))?;
    let mut exts = vec![
        ext(
            rfc5280::ID_CE_BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: true,
                path_len_constraint: spec.path_len,
            },
        )?,
        ext(
            rfc5280::ID_CE_KEY_USAGE,
            true,
            &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign | KeyUsages::DigitalSignature),
        )?,
        ext(
            rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER,
            false,
            &SubjectKeyIdentifier(OctetString::new(key_identifier(spec.spki))?),
        )?,
    ];
    if let Some(issuer) = spec.issuer {
        exts.push(aki(&issuer.key_id)?);
    }
    Ok(TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(spec.serial)?,
        signature: sig_alg,
        issuer: issuer_name,
        validity: Validity {
            not_before: x509_time(spec.now_unix - BACKDATE.as_secs() as i64)?,
            not_after: x509_time(not_after)?,
        },
        subject,
        subject_public_key_info: spec.spki.clone(),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(exts),
    })
}

/// Assembles a certificate from its TBS DER and the signature, returning the DER.
pub fn assemble(tbs_der: &[u8], signature: &[u8]) -> Result<Vec<u8>> {
    let tbs = TbsCertificate::from_der(tbs_der)?;
    let cert = Certificate {
        signature_algorithm: tbs.signature.clone(),
        tbs_certificate: tbs,
        signature: BitString::from_bytes(signature)?,
    };
    Ok(cert.to_der()?)
}

/// notBefore / notAfter of a certificate, as Unix seconds.
pub fn validity_of(cert_der: &[u8]) -> Result<(i64, i64)> {
    let cert = Certificate::from_der(cert_der)?;
    let v = cert.tbs_certificate.validity;
    Ok((
        v.not_before.to_unix_duration().as_secs() as i64,
        v.not_after.to_unix_duration().as_secs() as i64,
    ))
}

/// The serial (magnitude bytes) of a certificate.
pub fn serial_of(cert_der: &[u8]) -> Result<Vec<u8>> {
    let cert = Certificate::from_der(cert_der)
        .map_err(|_| CoreError::malformed("request.certificate", "certificate does not parse"))?;
    Ok(cert.tbs_certificate.serial_number.as_bytes().to_vec())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::profile::Eku;

    fn spki(alg: &'static rcgen::SignatureAlgorithm) -> SubjectPublicKeyInfoOwned {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        SubjectPublicKeyInfoOwned::from_der(&rcgen::PublicKeyData::subject_public_key_info(&key))
            .unwrap()
    }

    fn issuer() -> IssuerInfo {
        IssuerInfo {
            ca_id: "iss-1".into(),
            name: simple_name(Some(CA_ORGANIZATION), Some("issuing")).unwrap(),
            key_id: vec![7; 20],
            key_type: KeyType::EcP256,
        }
    }

    fn leaf(cn: Option<&str>, key_alg: KeyAlgorithm, serial: &[u8]) -> TbsCertificate {
        let issuer = issuer();
        let spki = spki(&rcgen::PKCS_ECDSA_P256_SHA256);
        build_leaf_tbs(&LeafSpec {
            issuer: &issuer,
            serial,
            spki: &spki,
            key_alg,
            common_name: cn,
            sans: &[San::Dns("a.example.com".into())],
            ekus: &[Eku::ServerAuth],
            key_usages: &[Ku::DigitalSignature, Ku::KeyEncipherment],
            now_unix: 1_800_000_000,
            validity_seconds: 86_400,
            base_url: "http://127.0.0.1:8080",
        })
        .unwrap()
    }

    fn ext_of(tbs: &TbsCertificate, oid: ObjectIdentifier) -> Extension {
        tbs.extensions
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.extn_id == oid)
            .cloned()
            .unwrap()
    }

    #[test]
    fn serials_are_random_positive_and_16_bytes() {
        let a = random_serial().unwrap();
        let b = random_serial().unwrap();
        assert_ne!(a, b);
        for s in [&a, &b] {
            assert_eq!(s.len(), 16);
            assert!(s[0] & 0x80 == 0 && s[0] & 0x40 != 0);
        }
        assert_eq!(serial_hex(&[0, 0, 0x0a, 0xbc]), "0abc");
        assert_eq!(crl_shard(&[1, 2, 0x13]), 3);
    }

    #[test]
    fn leaf_tbs_carries_the_profile_and_the_urls() {
        let serial = random_serial().unwrap();
        let tbs = leaf(Some("a.example.com"), KeyAlgorithm::EcdsaP256, &serial);
        assert_eq!(tbs.serial_number.as_bytes(), serial.as_slice());
        let nb = tbs.validity.not_before.to_unix_duration().as_secs();
        let na = tbs.validity.not_after.to_unix_duration().as_secs();
        assert_eq!(nb, 1_800_000_000 - BACKDATE.as_secs());
        assert_eq!(na, 1_800_000_000 + 86_400);
        let bc = ext_of(&tbs, rfc5280::ID_CE_BASIC_CONSTRAINTS);
        assert!(bc.critical);
        assert!(
            !BasicConstraints::from_der(bc.extn_value.as_bytes())
                .unwrap()
                .ca
        );
        let ku = ext_of(&tbs, rfc5280::ID_CE_KEY_USAGE);
        let ku = KeyUsage::from_der(ku.extn_value.as_bytes()).unwrap();
        assert!(
            ku.digital_signature() && !ku.key_encipherment(),
            "no keyEncipherment for EC"
        );
        let aki = ext_of(&tbs, rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER);
        let aki = AuthorityKeyIdentifier::from_der(aki.extn_value.as_bytes()).unwrap();
        assert_eq!(aki.key_identifier.unwrap().as_bytes(), &[7; 20]);
        let dp = ext_of(&tbs, rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS);
        let text = String::from_utf8_lossy(dp.extn_value.as_bytes()).to_string();
        assert!(
            text.contains(&format!(
                "http://127.0.0.1:8080/crl/iss-1/{}.crl",
                crl_shard(&serial)
            )),
            "{text}"
        );
        let aia = ext_of(&tbs, rfc5280::ID_PE_AUTHORITY_INFO_ACCESS);
        let text = String::from_utf8_lossy(aia.extn_value.as_bytes()).to_string();
        assert!(text.contains("http://127.0.0.1:8080/ocsp"));
        assert!(text.contains("http://127.0.0.1:8080/ca/iss-1.der"));
        assert_eq!(tbs.signature.oid, rfc5912::ECDSA_WITH_SHA_256);
        let san = ext_of(&tbs, rfc5280::ID_CE_SUBJECT_ALT_NAME);
        assert!(!san.critical, "subject present: SAN not critical");
    }

    #[test]
    fn empty_subject_makes_the_san_critical_and_rsa_gets_key_encipherment() {
        let tbs = leaf(None, KeyAlgorithm::Rsa, &[0x42; 16]);
        assert!(tbs.subject.0.is_empty());
        assert!(ext_of(&tbs, rfc5280::ID_CE_SUBJECT_ALT_NAME).critical);
        let ku = ext_of(&tbs, rfc5280::ID_CE_KEY_USAGE);
        assert!(
            KeyUsage::from_der(ku.extn_value.as_bytes())
                .unwrap()
                .key_encipherment()
        );
    }

    #[test]
    fn ca_tbs_is_a_ca_with_path_len_and_root_is_self_issued() {
        let spki = spki(&rcgen::PKCS_ECDSA_P384_SHA384);
        let root = build_ca_tbs(&CaSpec {
            issuer: None,
            common_name: "root",
            spki: &spki,
            self_key_type: KeyType::EcP384,
            path_len: None,
            serial: &[0x41; 16],
            now_unix: 1_800_000_000,
            validity_seconds: 86_400,
        })
        .unwrap();
        assert_eq!(root.issuer, root.subject);
        assert_eq!(root.signature.oid, rfc5912::ECDSA_WITH_SHA_384);
        let issuer = issuer();
        let sub = build_ca_tbs(&CaSpec {
            issuer: Some(&issuer),
            common_name: "sub",
            spki: &spki,
            self_key_type: KeyType::EcP384,
            path_len: Some(0),
            serial: &[0x41; 16],
            now_unix: 1_800_000_000,
            validity_seconds: 86_400,
        })
        .unwrap();
        let bc = ext_of(&sub, rfc5280::ID_CE_BASIC_CONSTRAINTS);
        let bc = BasicConstraints::from_der(bc.extn_value.as_bytes()).unwrap();
        assert!(bc.ca && bc.path_len_constraint == Some(0));
        assert_eq!(sub.issuer, issuer.name);
        assert_eq!(
            sub.signature.oid,
            rfc5912::ECDSA_WITH_SHA_256,
            "parent's algorithm"
        );
        let ku = ext_of(&sub, rfc5280::ID_CE_KEY_USAGE);
        assert!(
            KeyUsage::from_der(ku.extn_value.as_bytes())
                .unwrap()
                .key_cert_sign()
        );
    }

    #[test]
    fn times_switch_to_generalized_time_in_2050() {
        assert!(matches!(
            x509_time(2_524_607_999).unwrap(),
            Time::UtcTime(_)
        ));
        assert!(matches!(
            x509_time(2_524_608_000).unwrap(),
            Time::GeneralTime(_)
        ));
    }
}
