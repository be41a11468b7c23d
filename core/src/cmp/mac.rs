//! MAC-based protection of CMP messages (RFC 4210 §5.1.3.1 PasswordBasedMac, RFC 9481 §6.1.1,
//! and PBMAC1 from RFC 8018 §7.1 as profiled by RFC 9481 §6.1.2), sans-I/O.
//!
//! The shared secret never leaves the core: the edge sends the protectionAlg and the exact
//! ProtectedPart DER, the core derives the key and returns the MAC. Every parameter a client
//! controls is bounded (I-8): iteration counts, salt and key lengths; a request beyond a bound
//! is refused with rule `cmp.bad_mac_params` (→ PKIFailureInfo badAlg at the edge) rather than
//! burning CPU on an attacker-chosen work factor.
//!
//! Derived keys live in [`Zeroizing`] buffers and are wiped when dropped.

use std::num::NonZeroU32;

use aws_lc_rs::{digest, hmac, pbkdf2};
use const_oid::ObjectIdentifier;
use const_oid::db::{rfc5911, rfc5912, rfc6268};
use der::asn1::OctetString;
use der::{Decode, Sequence};
use spki::AlgorithmIdentifierOwned;
use zeroize::Zeroizing;

/// id-PBMAC1 (RFC 8018 §A.5).
pub const ID_PBMAC1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.14");
/// id-sha256.
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// id-sha1.
const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
/// hmacWithSHA1 as RFC 8018 names it (1.2.840.113549.2.7), which some clients send for PBM.
const ID_HMAC_WITH_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.2.7");

/// The most PasswordBasedMac OWF iterations accepted (OpenSSL's own bound,
/// `OSSL_CRMF_PBM_MAX_ITERATION_COUNT`, is 100 000).
pub const MAX_PBM_ITERATIONS: u64 = 100_000;
/// The most PBKDF2 iterations accepted for PBMAC1 (about 30 ms of HMAC-SHA256 here).
pub const MAX_PBKDF2_ITERATIONS: u64 = 100_000;
/// The fewest iterations accepted for either scheme (RFC 9481 §6.1: "SHOULD be at least 1000"
/// is for the client's choice; below 100 we refuse, as OpenSSL does for PBM).
pub const MIN_ITERATIONS: u64 = 100;
/// The longest salt accepted.
pub const MAX_SALT: usize = 128;
/// The shortest salt accepted (RFC 9481 §6.1.1: at least 64 bits).
pub const MIN_SALT: usize = 8;
/// PBKDF2 keyLength bounds for PBMAC1 (bytes).
pub const PBMAC1_KEY_LEN: std::ops::RangeInclusive<u64> = 16..=64;

/// Why a MAC could not be computed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    /// The protectionAlg is not a MAC this core supports, or its parameters are malformed or
    /// outside the bounds above. Safe for the client.
    #[error("unsupported or out-of-bounds MAC parameters: {0}")]
    BadParams(&'static str),
}

/// PBKDF2-params (RFC 8018 §A.2), salt restricted to `specified` (RFC 9481 §6.1.2 requires it).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct Pbkdf2Params {
    salt: OctetString,
    iteration_count: u64,
    #[asn1(optional = "true")]
    key_length: Option<u64>,
    #[asn1(optional = "true")]
    prf: Option<AlgorithmIdentifierOwned>,
}

/// PBMAC1-params (RFC 8018 §A.5).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct Pbmac1Params {
    key_derivation_func: AlgorithmIdentifierOwned,
    message_auth_scheme: AlgorithmIdentifierOwned,
}

/// The HMAC a MAC AlgorithmIdentifier names.
fn hmac_alg(oid: &ObjectIdentifier) -> Result<hmac::Algorithm, MacError> {
    if *oid == rfc6268::ID_HMAC_WITH_SHA_256 {
        Ok(hmac::HMAC_SHA256)
    } else if *oid == rfc6268::ID_HMAC_WITH_SHA_384 {
        Ok(hmac::HMAC_SHA384)
    } else if *oid == rfc6268::ID_HMAC_WITH_SHA_512 {
        Ok(hmac::HMAC_SHA512)
    } else if *oid == rfc5911::HMAC_SHA_1 || *oid == ID_HMAC_WITH_SHA1 {
        Ok(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY)
    } else {
        Err(MacError::BadParams("unsupported MAC algorithm"))
    }
}

/// Parameters of an AlgorithmIdentifier as DER (the whole TLV), or an error when absent.
fn params_der(alg: &AlgorithmIdentifierOwned) -> Result<Vec<u8>, MacError> {
    let p = alg
        .parameters
        .as_ref()
        .ok_or(MacError::BadParams("missing parameters"))?;
    der::Encode::to_der(p).map_err(|_| MacError::BadParams("parameters do not encode"))
}

fn check_salt(salt: &[u8]) -> Result<(), MacError> {
    if !(MIN_SALT..=MAX_SALT).contains(&salt.len()) {
        return Err(MacError::BadParams("salt length out of bounds"));
    }
    Ok(())
}

fn iterations(n: u64, max: u64) -> Result<NonZeroU32, MacError> {
    if !(MIN_ITERATIONS..=max).contains(&n) {
        return Err(MacError::BadParams("iteration count out of bounds"));
    }
    u32::try_from(n)
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or(MacError::BadParams("iteration count out of bounds"))
}

/// The MAC of `data` under `secret` as the protectionAlg (DER AlgorithmIdentifier) says.
pub fn compute_mac(
    protection_alg_der: &[u8],
    secret: &[u8],
    data: &[u8],
) -> Result<Vec<u8>, MacError> {
    let alg = AlgorithmIdentifierOwned::from_der(protection_alg_der)
        .map_err(|_| MacError::BadParams("protectionAlg is not an AlgorithmIdentifier"))?;
    if alg.oid == rfc5912::ID_PASSWORD_BASED_MAC {
        password_based_mac(&params_der(&alg)?, secret, data)
    } else if alg.oid == ID_PBMAC1 {
        pbmac1(&params_der(&alg)?, secret, data)
    } else {
        Err(MacError::BadParams("protectionAlg is not a supported MAC"))
    }
}

/// PasswordBasedMac (RFC 4210 §5.1.3.1): BASEKEY = OWF^iterationCount(secret || salt), then the
/// MAC keyed with BASEKEY.
fn password_based_mac(params: &[u8], secret: &[u8], data: &[u8]) -> Result<Vec<u8>, MacError> {
    let p = cmpv2::parameter::PbmParameter::from_der(params)
        .map_err(|_| MacError::BadParams("malformed PBMParameter"))?;
    let salt = p.salt.as_bytes();
    check_salt(salt)?;
    let n = iterations(p.iteration_count, MAX_PBM_ITERATIONS)?.get();
    let owf = if p.owf.oid == ID_SHA256 {
        &digest::SHA256
    } else if p.owf.oid == ID_SHA1 {
        &digest::SHA1_FOR_LEGACY_USE_ONLY
    } else {
        return Err(MacError::BadParams("unsupported OWF"));
    };
    let mac = hmac_alg(&p.mac.oid)?;
    let mut ctx = digest::Context::new(owf);
    ctx.update(secret);
    ctx.update(salt);
    let mut key = Zeroizing::new(ctx.finish().as_ref().to_vec());
    for _ in 1..n {
        let next = digest::digest(owf, key.as_slice());
        key.copy_from_slice(next.as_ref());
    }
    let k = hmac::Key::new(mac, key.as_slice());
    Ok(hmac::sign(&k, data).as_ref().to_vec())
}

/// PBMAC1 (RFC 8018 §7.1) with PBKDF2 (RFC 9481 §6.1.2): key = PBKDF2(prf, secret, salt,
/// iterationCount, keyLength), then the messageAuthScheme HMAC keyed with it.
fn pbmac1(params: &[u8], secret: &[u8], data: &[u8]) -> Result<Vec<u8>, MacError> {
    let p = Pbmac1Params::from_der(params)
        .map_err(|_| MacError::BadParams("malformed PBMAC1-params"))?;
    if p.key_derivation_func.oid != rfc5911::ID_PBKDF_2 {
        return Err(MacError::BadParams("PBMAC1 key derivation is not PBKDF2"));
    }
    let kdf = Pbkdf2Params::from_der(&params_der(&p.key_derivation_func)?)
        .map_err(|_| MacError::BadParams("malformed PBKDF2-params"))?;
    let salt = kdf.salt.as_bytes();
    check_salt(salt)?;
    let n = iterations(kdf.iteration_count, MAX_PBKDF2_ITERATIONS)?;
    // RFC 9481 §6.1.2: keyLength MUST be present.
    let key_len = kdf
        .key_length
        .ok_or(MacError::BadParams("PBKDF2 keyLength missing"))?;
    if !PBMAC1_KEY_LEN.contains(&key_len) {
        return Err(MacError::BadParams("PBKDF2 keyLength out of bounds"));
    }
    // The prf DEFAULT is hmacWithSHA1 (RFC 8018 §A.2).
    let prf = match &kdf.prf {
        None => pbkdf2::PBKDF2_HMAC_SHA1,
        Some(a) if a.oid == rfc6268::ID_HMAC_WITH_SHA_256 => pbkdf2::PBKDF2_HMAC_SHA256,
        Some(a) if a.oid == rfc6268::ID_HMAC_WITH_SHA_384 => pbkdf2::PBKDF2_HMAC_SHA384,
        Some(a) if a.oid == rfc6268::ID_HMAC_WITH_SHA_512 => pbkdf2::PBKDF2_HMAC_SHA512,
        Some(a) if a.oid == ID_HMAC_WITH_SHA1 || a.oid == rfc5911::HMAC_SHA_1 => {
            pbkdf2::PBKDF2_HMAC_SHA1
        }
        Some(_) => return Err(MacError::BadParams("unsupported PBKDF2 PRF")),
    };
    let mac = hmac_alg(&p.message_auth_scheme.oid)?;
    let mut key = Zeroizing::new(vec![0u8; key_len as usize]);
    pbkdf2::derive(prf, n, salt, secret, key.as_mut_slice());
    let k = hmac::Key::new(mac, key.as_slice());
    Ok(hmac::sign(&k, data).as_ref().to_vec())
}

/// Compares two MACs in constant time (for callers in the core that verify rather than
/// compute; the edge does its own comparison).
pub fn macs_equal(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;
    use der::asn1::Any;

    fn alg(oid: ObjectIdentifier, params: Option<Vec<u8>>) -> Vec<u8> {
        AlgorithmIdentifierOwned {
            oid,
            parameters: params.map(|p| Any::from_der(&p).expect("params DER")),
        }
        .to_der()
        .expect("encode")
    }

    fn pbm(iter: u64, salt: &[u8]) -> Vec<u8> {
        let p = cmpv2::parameter::PbmParameter {
            salt: OctetString::new(salt.to_vec()).expect("salt"),
            owf: AlgorithmIdentifierOwned {
                oid: ID_SHA256,
                parameters: None,
            },
            iteration_count: iter,
            mac: AlgorithmIdentifierOwned {
                oid: rfc6268::ID_HMAC_WITH_SHA_256,
                parameters: None,
            },
        };
        alg(
            rfc5912::ID_PASSWORD_BASED_MAC,
            Some(p.to_der().expect("pbm")),
        )
    }

    #[test]
    fn pbm_iterations_are_bounded() {
        let salt = [7u8; 16];
        assert!(compute_mac(&pbm(500, &salt), b"s", b"d").is_ok());
        assert_eq!(
            compute_mac(&pbm(MAX_PBM_ITERATIONS + 1, &salt), b"s", b"d"),
            Err(MacError::BadParams("iteration count out of bounds"))
        );
        assert!(compute_mac(&pbm(1, &salt), b"s", b"d").is_err());
        assert!(compute_mac(&pbm(500, &[1u8; 4]), b"s", b"d").is_err());
    }

    #[test]
    fn pbm_depends_on_secret_and_data() {
        let a = pbm(500, &[9u8; 16]);
        let m1 = compute_mac(&a, b"secret", b"data").expect("mac");
        assert_ne!(m1, compute_mac(&a, b"secreT", b"data").expect("mac"));
        assert_ne!(m1, compute_mac(&a, b"secret", b"datA").expect("mac"));
        assert!(macs_equal(
            &m1,
            &compute_mac(&a, b"secret", b"data").expect("mac")
        ));
    }

    #[test]
    fn unknown_algorithms_are_refused() {
        let a = alg(ID_SHA256, None);
        assert!(compute_mac(&a, b"s", b"d").is_err());
        assert!(compute_mac(b"\x30\x00garbage", b"s", b"d").is_err());
        assert!(compute_mac(&alg(ID_PBMAC1, None), b"s", b"d").is_err());
    }
}
