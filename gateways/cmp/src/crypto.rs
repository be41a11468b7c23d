//! Signature checks with aws-lc-rs: signature-based protection, CRMF proof of possession and the
//! protecting certificate's path to a trust anchor. Only public data is involved, so the edge
//! does all of this itself (cmp.proto's division of labour).

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use const_oid::ObjectIdentifier;
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::Certificate;

use crate::error::{CmpError, FailInfo};

const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
const RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const RSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const RSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Whether `oid` names a signature algorithm this gateway verifies.
pub fn is_signature_alg(oid: &ObjectIdentifier) -> bool {
    [
        ECDSA_SHA256,
        ECDSA_SHA384,
        ECDSA_SHA512,
        RSA_SHA256,
        RSA_SHA384,
        RSA_SHA512,
        ED25519,
    ]
    .contains(oid)
}

fn algorithm(
    sig_alg: &ObjectIdentifier,
    key: &SubjectPublicKeyInfoOwned,
) -> Option<&'static dyn VerificationAlgorithm> {
    let key_alg = key.algorithm.oid;
    let curve = key
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    let alg: &'static dyn VerificationAlgorithm = match (*sig_alg, key_alg, curve) {
        (a, k, Some(c)) if k == EC_PUBLIC_KEY && c == P256 && a == ECDSA_SHA256 => {
            &signature::ECDSA_P256_SHA256_ASN1
        }
        (a, k, Some(c)) if k == EC_PUBLIC_KEY && c == P256 && a == ECDSA_SHA384 => {
            &signature::ECDSA_P256_SHA384_ASN1
        }
        (a, k, Some(c)) if k == EC_PUBLIC_KEY && c == P384 && a == ECDSA_SHA384 => {
            &signature::ECDSA_P384_SHA384_ASN1
        }
        (a, k, Some(c)) if k == EC_PUBLIC_KEY && c == P384 && a == ECDSA_SHA256 => {
            &signature::ECDSA_P384_SHA256_ASN1
        }
        (a, k, _) if k == RSA_ENCRYPTION && a == RSA_SHA256 => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        (a, k, _) if k == RSA_ENCRYPTION && a == RSA_SHA384 => {
            &signature::RSA_PKCS1_2048_8192_SHA384
        }
        (a, k, _) if k == RSA_ENCRYPTION && a == RSA_SHA512 => {
            &signature::RSA_PKCS1_2048_8192_SHA512
        }
        (a, k, _) if k == ED25519 && a == ED25519 => &signature::ED25519,
        _ => return None,
    };
    Some(alg)
}

/// Verifies `sig` over `msg` with `key` under signature algorithm `sig_alg`.
/// `bad` is the failInfo for a signature that does not verify (badPOP, badMessageCheck...).
pub fn verify(
    sig_alg: &ObjectIdentifier,
    key: &SubjectPublicKeyInfoOwned,
    msg: &[u8],
    sig: &[u8],
    bad: FailInfo,
) -> Result<(), CmpError> {
    let alg = algorithm(sig_alg, key).ok_or_else(|| {
        CmpError::new(
            FailInfo::BadAlg,
            format!("unsupported signature algorithm {sig_alg} for this key type"),
        )
    })?;
    let raw = key.subject_public_key.as_bytes().ok_or_else(|| {
        CmpError::new(
            FailInfo::BadDataFormat,
            "public key BIT STRING has unused bits",
        )
    })?;
    UnparsedPublicKey::new(alg, raw)
        .verify(msg, sig)
        .map_err(|_| CmpError::new(bad, "signature does not verify"))
}

/// Verifies that `cert`'s own signature was made by `issuer`.
fn signed_by(cert: &Certificate, issuer: &Certificate) -> bool {
    let Ok(tbs) = cert.tbs_certificate.to_der() else {
        return false;
    };
    let Some(sig) = cert.signature.as_bytes() else {
        return false;
    };
    verify(
        &cert.signature_algorithm.oid,
        &issuer.tbs_certificate.subject_public_key_info,
        &tbs,
        sig,
        FailInfo::SignerNotTrusted,
    )
    .is_ok()
}

fn valid_at(cert: &Certificate, now_unix: u64) -> bool {
    let v = &cert.tbs_certificate.validity;
    let nb = v.not_before.to_unix_duration().as_secs();
    let na = v.not_after.to_unix_duration().as_secs();
    nb <= now_unix && now_unix <= na
}

/// Most certificates between the protecting certificate and its anchor (I-8).
const MAX_DEPTH: usize = 5;

/// Checks that `leaf` chains to one of `anchors` through `intermediates` (the request's
/// extraCerts), each certificate in its validity period and signed by the next. Name chaining
/// plus signature verification; no policy or name constraints processing (documented).
pub fn verify_path(
    leaf: &Certificate,
    intermediates: &[Certificate],
    anchors: &[Certificate],
    now_unix: u64,
) -> Result<(), CmpError> {
    let untrusted = || {
        CmpError::new(
            FailInfo::SignerNotTrusted,
            "the protecting certificate does not chain to a trust anchor of this tenant",
        )
    };
    if !valid_at(leaf, now_unix) {
        return Err(CmpError::new(
            FailInfo::SignerNotTrusted,
            "the protecting certificate is expired or not yet valid",
        ));
    }
    let mut current = leaf.clone();
    for _ in 0..MAX_DEPTH {
        // A pinned anchor itself (e.g. a configured RA certificate).
        if anchors.iter().any(|a| a == &current) {
            return Ok(());
        }
        let issuer = &current.tbs_certificate.issuer;
        if let Some(_a) = anchors
            .iter()
            .find(|a| &a.tbs_certificate.subject == issuer && signed_by(&current, a))
        {
            return if valid_at(_a, now_unix) {
                Ok(())
            } else {
                Err(untrusted())
            };
        }
        let Some(next) = intermediates.iter().find(|c| {
            &c.tbs_certificate.subject == issuer && *c != &current && signed_by(&current, c)
        }) else {
            return Err(untrusted());
        };
        if !valid_at(next, now_unix) {
            return Err(untrusted());
        }
        current = next.clone();
    }
    Err(untrusted())
}

/// The certHash of certConf (RFC 4210 §5.3.18 as updated by RFC 9480 §2.10): the hash algorithm
/// of the certificate's own signature algorithm (SHA-512 for Ed25519).
pub fn cert_hash(cert_der: &[u8]) -> Option<Vec<u8>> {
    let cert = Certificate::from_der(cert_der).ok()?;
    let oid = cert.signature_algorithm.oid;
    let alg = if oid == ECDSA_SHA256 || oid == RSA_SHA256 {
        &aws_lc_rs::digest::SHA256
    } else if oid == ECDSA_SHA384 || oid == RSA_SHA384 {
        &aws_lc_rs::digest::SHA384
    } else if oid == ECDSA_SHA512 || oid == RSA_SHA512 || oid == ED25519 {
        &aws_lc_rs::digest::SHA512
    } else {
        return None;
    };
    Some(aws_lc_rs::digest::digest(alg, cert_der).as_ref().to_vec())
}

/// The signature algorithm a key of this type signs CMP protection with (the header's
/// protectionAlg must be known before the signer signs the ProtectedPart).
pub fn protection_alg_for(key: &SubjectPublicKeyInfoOwned) -> Option<ObjectIdentifier> {
    let curve = key
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    match (key.algorithm.oid, curve) {
        (k, Some(c)) if k == EC_PUBLIC_KEY && c == P256 => Some(ECDSA_SHA256),
        (k, Some(c)) if k == EC_PUBLIC_KEY && c == P384 => Some(ECDSA_SHA384),
        (k, _) if k == RSA_ENCRYPTION => Some(RSA_SHA256),
        (k, _) if k == ED25519 => Some(ED25519),
        _ => None,
    }
}
