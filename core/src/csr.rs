//! Parsing and verifying what a client asks for: a PKCS#10 CSR (RFC 2986) or a bare public key.
//!
//! The CSR's self-signature is verified with aws-lc-rs before anything else reads it; the subject
//! key is classified (algorithm, RSA size) for the profile.

use std::net::IpAddr;

use aws_lc_rs::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use const_oid::ObjectIdentifier;
use const_oid::db::{rfc5280, rfc5912, rfc8410};
use der::Decode;
use der::asn1::UintRef;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};
use x509_cert::name::Name;
use x509_cert::request::CertReq;

use crate::error::{CoreError, Result};
use crate::profile::{KeyAlgorithm, San};

/// The largest CSR the core reads (I-8).
pub const MAX_CSR_BYTES: usize = 64 * 1024;

/// A subject key, classified.
#[derive(Clone, Debug)]
pub struct SubjectKey {
    /// The SubjectPublicKeyInfo as given.
    pub spki: SubjectPublicKeyInfoOwned,
    /// Its algorithm.
    pub alg: KeyAlgorithm,
    /// RSA modulus size in bits.
    pub rsa_bits: Option<u32>,
}

/// What a verified request asks for.
#[derive(Clone, Debug)]
pub struct Requested {
    /// The subject key.
    pub key: SubjectKey,
    /// The requested subject's common name, if any.
    pub common_name: Option<String>,
    /// SANs from the CSR's extensionRequest (or the KeyRequest).
    pub sans: Vec<San>,
    /// EKUs from the CSR's extensionRequest.
    pub ekus: Vec<ObjectIdentifier>,
}

#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

/// Classifies a SubjectPublicKeyInfo.
pub fn classify_key(spki: &SubjectPublicKeyInfoOwned) -> Result<SubjectKey> {
    let unsupported = || {
        CoreError::policy(
            "profile.key_algorithms",
            "unsupported subject key algorithm (P-256, P-384, RSA or Ed25519)",
        )
    };
    let oid = spki.algorithm.oid;
    let (alg, rsa_bits) = if oid == rfc5912::ID_EC_PUBLIC_KEY {
        let curve: ObjectIdentifier = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as().ok())
            .ok_or_else(unsupported)?;
        if curve == rfc5912::SECP_256_R_1 {
            (KeyAlgorithm::EcdsaP256, None)
        } else if curve == rfc5912::SECP_384_R_1 {
            (KeyAlgorithm::EcdsaP384, None)
        } else {
            return Err(unsupported());
        }
    } else if oid == rfc5912::RSA_ENCRYPTION {
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| CoreError::malformed("request.public_key", "bad RSA key"))?;
        let key = RsaPublicKey::from_der(bits)
            .map_err(|_| CoreError::malformed("request.public_key", "bad RSA key"))?;
        let _ = key.public_exponent;
        let n = key.modulus.as_bytes();
        let bits = match n.first() {
            Some(first) => (n.len() as u32) * 8 - first.leading_zeros(),
            None => 0,
        };
        (KeyAlgorithm::Rsa, Some(bits))
    } else if oid == rfc8410::ID_ED_25519 {
        (KeyAlgorithm::Ed25519, None)
    } else {
        return Err(unsupported());
    };
    Ok(SubjectKey {
        spki: spki.clone(),
        alg,
        rsa_bits,
    })
}

fn verification_alg(
    key: &SubjectKey,
    sig_oid: ObjectIdentifier,
) -> Option<&'static dyn VerificationAlgorithm> {
    use rfc5912 as o;
    Some(match key.alg {
        KeyAlgorithm::EcdsaP256 if sig_oid == o::ECDSA_WITH_SHA_256 => &sig::ECDSA_P256_SHA256_ASN1,
        KeyAlgorithm::EcdsaP256 if sig_oid == o::ECDSA_WITH_SHA_384 => &sig::ECDSA_P256_SHA384_ASN1,
        KeyAlgorithm::EcdsaP384 if sig_oid == o::ECDSA_WITH_SHA_384 => &sig::ECDSA_P384_SHA384_ASN1,
        KeyAlgorithm::EcdsaP384 if sig_oid == o::ECDSA_WITH_SHA_256 => &sig::ECDSA_P384_SHA256_ASN1,
        KeyAlgorithm::Rsa if sig_oid == o::SHA_256_WITH_RSA_ENCRYPTION => {
            &sig::RSA_PKCS1_2048_8192_SHA256
        }
        KeyAlgorithm::Rsa if sig_oid == o::SHA_384_WITH_RSA_ENCRYPTION => {
            &sig::RSA_PKCS1_2048_8192_SHA384
        }
        KeyAlgorithm::Rsa if sig_oid == o::SHA_512_WITH_RSA_ENCRYPTION => {
            &sig::RSA_PKCS1_2048_8192_SHA512
        }
        KeyAlgorithm::Ed25519 if sig_oid == rfc8410::ID_ED_25519 => &sig::ED25519,
        _ => return None,
    })
}

/// Parses a CSR, verifies its signature and extracts what it asks for.
pub fn parse_csr(der_bytes: &[u8]) -> Result<Requested> {
    if der_bytes.len() > MAX_CSR_BYTES {
        return Err(CoreError::malformed(
            "csr.too_large",
            format!("CSR larger than {MAX_CSR_BYTES} bytes"),
        ));
    }
    let csr = CertReq::from_der(der_bytes)
        .map_err(|e| CoreError::malformed("csr.syntax", format!("CSR is not valid DER: {e}")))?;
    let key = classify_key(&csr.info.public_key)?;
    // RSA below 2048 cannot even be verified by aws-lc-rs; name the profile rule instead.
    if key.alg == KeyAlgorithm::Rsa && key.rsa_bits.unwrap_or(0) < 2048 {
        return Err(CoreError::policy(
            "profile.min_rsa_bits",
            format!(
                "RSA key of {} bits is below the minimum of 2048",
                key.rsa_bits.unwrap_or(0)
            ),
        ));
    }
    let alg = verification_alg(&key, csr.algorithm.oid).ok_or_else(|| {
        CoreError::malformed(
            "csr.signature_algorithm",
            "CSR signature algorithm does not match its key or is not supported",
        )
    })?;
    // The exact CertificationRequestInfo bytes as sent: re-encoding would re-sort an attribute
    // SET that is not in DER order (strongSwan puts extensionRequest before challengePassword),
    // and the signature covers what the client sent.
    let info = {
        use der::Reader as _;
        let mut r = der::SliceReader::new(der_bytes)?;
        der::Header::decode(&mut r)?;
        r.tlv_bytes()?.to_vec()
    };
    let signature = csr
        .signature
        .as_bytes()
        .ok_or_else(|| CoreError::malformed("csr.signature", "CSR signature is not whole bytes"))?;
    let raw_key = key
        .spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| CoreError::malformed("request.public_key", "bad public key"))?;
    UnparsedPublicKey::new(alg, raw_key)
        .verify(&info, signature)
        .map_err(|_| CoreError::malformed("csr.signature", "CSR signature does not verify"))?;

    let mut sans = Vec::new();
    let mut ekus = Vec::new();
    for attr in csr.info.attributes.iter() {
        if attr.oid != const_oid::db::rfc5912::ID_EXTENSION_REQ {
            continue;
        }
        for value in attr.values.iter() {
            let exts: Vec<x509_cert::ext::Extension> = value.decode_as().map_err(|_| {
                CoreError::malformed("csr.extensions", "CSR extensionRequest does not parse")
            })?;
            for ext in exts {
                if ext.extn_id == rfc5280::ID_CE_SUBJECT_ALT_NAME {
                    let san =
                        SubjectAltName::from_der(ext.extn_value.as_bytes()).map_err(|_| {
                            CoreError::malformed("csr.san", "CSR subjectAltName does not parse")
                        })?;
                    for name in san.0 {
                        sans.push(san_from_general_name(&name)?);
                    }
                } else if ext.extn_id == rfc5280::ID_CE_EXT_KEY_USAGE {
                    let eku =
                        ExtendedKeyUsage::from_der(ext.extn_value.as_bytes()).map_err(|_| {
                            CoreError::malformed("csr.eku", "CSR extendedKeyUsage does not parse")
                        })?;
                    ekus.extend(eku.0);
                }
            }
        }
    }
    Ok(Requested {
        key,
        common_name: common_name(&csr.info.subject),
        sans,
        ekus,
    })
}

/// Reads what a KeyRequest asks for (the edge checked proof of possession).
pub fn parse_key_request(
    public_key_der: &[u8],
    subject_der: &[u8],
    sans: Vec<San>,
) -> Result<Requested> {
    let spki = SubjectPublicKeyInfoOwned::from_der(public_key_der).map_err(|_| {
        CoreError::malformed(
            "request.public_key",
            "public key is not a DER SubjectPublicKeyInfo",
        )
    })?;
    let key = classify_key(&spki)?;
    let common_name = if subject_der.is_empty() {
        None
    } else {
        let name = Name::from_der(subject_der)
            .map_err(|_| CoreError::malformed("request.subject", "subject is not a DER Name"))?;
        common_name(&name)
    };
    Ok(Requested {
        key,
        common_name,
        sans,
        ekus: Vec::new(),
    })
}

fn san_from_general_name(name: &GeneralName) -> Result<San> {
    match name {
        GeneralName::DnsName(dns) => San::dns(dns.as_str()),
        GeneralName::IpAddress(ip) => ip_from_bytes(ip.as_bytes()),
        GeneralName::UniformResourceIdentifier(uri) => San::spiffe(uri.as_str()),
        _ => Err(CoreError::policy(
            "profile.san_types",
            "only DNS, IP and SPIFFE URI subject alternative names are issued",
        )),
    }
}

/// An IP SAN from its 4 or 16 octets.
pub fn ip_from_bytes(b: &[u8]) -> Result<San> {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        Ok(San::Ip(IpAddr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(b) {
        Ok(San::Ip(IpAddr::from(v6)))
    } else {
        Err(CoreError::malformed(
            "request.ip",
            "IP address is neither 4 nor 16 bytes",
        ))
    }
}

/// The (last) common name of a Name, if it decodes as a string.
pub fn common_name(name: &Name) -> Option<String> {
    let mut cn = None;
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == const_oid::db::rfc4519::CN {
                cn = der::asn1::Utf8StringRef::try_from(&atv.value)
                    .map(|s| s.as_str().to_owned())
                    .or_else(|_| {
                        der::asn1::PrintableStringRef::try_from(&atv.value)
                            .map(|s| s.as_str().to_owned())
                    })
                    .ok();
            }
        }
    }
    cn
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn csr(alg: &'static rcgen::SignatureAlgorithm, names: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    #[test]
    fn published_signature_algorithms_are_exactly_the_verified_ones() {
        use crate::profile::KeyAlgorithm as K;
        let spki = parse_csr(&csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["a.example.com"]))
            .unwrap()
            .key
            .spki;
        let candidates = [
            rfc5912::ECDSA_WITH_SHA_224,
            rfc5912::ECDSA_WITH_SHA_256,
            rfc5912::ECDSA_WITH_SHA_384,
            rfc5912::ECDSA_WITH_SHA_512,
            rfc5912::SHA_1_WITH_RSA_ENCRYPTION,
            rfc5912::SHA_224_WITH_RSA_ENCRYPTION,
            rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
            rfc5912::SHA_384_WITH_RSA_ENCRYPTION,
            rfc5912::SHA_512_WITH_RSA_ENCRYPTION,
            rfc5912::ID_RSASSA_PSS,
            rfc8410::ID_ED_25519,
            rfc8410::ID_ED_448,
        ];
        for alg in [K::EcdsaP256, K::EcdsaP384, K::Rsa, K::Ed25519] {
            let k = SubjectKey {
                spki: spki.clone(),
                alg,
                rsa_bits: Some(2048),
            };
            for oid in candidates {
                assert_eq!(
                    verification_alg(&k, oid).is_some(),
                    alg.signature_algorithms().contains(&oid),
                    "{alg:?} {oid}"
                );
            }
        }
    }

    #[test]
    fn verifies_and_classifies_p256_p384_and_ed25519_csrs() {
        for (alg, expect) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, KeyAlgorithm::EcdsaP256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, KeyAlgorithm::EcdsaP384),
            (&rcgen::PKCS_ED25519, KeyAlgorithm::Ed25519),
        ] {
            let r = parse_csr(&csr(alg, &["a.example.com", "10.0.0.1"])).unwrap();
            assert_eq!(r.key.alg, expect);
            assert_eq!(
                r.sans,
                vec![
                    San::Dns("a.example.com".into()),
                    San::Ip("10.0.0.1".parse().unwrap())
                ]
            );
        }
    }

    #[test]
    fn every_single_byte_mutation_of_a_csr_is_refused_or_parsed_without_panic() {
        let good = csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["m.example.com"]);
        let mut accepted = 0;
        for i in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                if parse_csr(&bad).is_ok() {
                    accepted += 1;
                }
            }
            assert!(parse_csr(&good[..i]).is_err(), "truncated at {i}");
        }
        // The signature covers every byte of the request info; only mutations that keep the
        // structure and the signature valid could pass, and a flipped bit never does.
        assert_eq!(accepted, 0);
    }
}
