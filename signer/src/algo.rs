//! Algorithms, key types and in-process (software) signing with aws-lc-rs.
//!
//! aws-lc-rs is the only crypto used for private-key operations (CRATES.md pitfall 2: never the
//! `rsa` crate). Private keys leave this module only as PKCS#8 bytes in [`Zeroizing`] buffers,
//! and only to be sealed.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, KeyPair};
use certgate_proto::signer::{Algorithm, KeyTransport, KeyType};
use zeroize::Zeroizing;

/// A signing failure inside a key store; never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The algorithm cannot be used with this key type.
    #[error("algorithm {alg} does not match key type {key_type}")]
    AlgorithmMismatch {
        /// Requested algorithm.
        alg: &'static str,
        /// The key's type.
        key_type: &'static str,
    },
    /// Key generation failed.
    #[error("key generation failed")]
    Generate,
    /// A stored key could not be parsed.
    #[error("stored private key is invalid")]
    BadKey,
    /// The crypto library refused to sign.
    #[error("signing failed")]
    Sign,
    /// Key-transport decryption failed (wrong key, bad padding, wrong length). Deliberately
    /// uninformative: a padding oracle must not learn which check failed.
    #[error("decryption failed")]
    Decrypt,
}

/// Whether `alg` may be used with a key of type `key_type`.
pub fn key_type_allows(key_type: KeyType, alg: Algorithm) -> bool {
    use Algorithm as A;
    match key_type {
        KeyType::EcP256 => alg == A::EcdsaP256Sha256,
        KeyType::EcP384 => alg == A::EcdsaP384Sha384,
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => matches!(
            alg,
            A::RsaPkcs1Sha256
                | A::RsaPkcs1Sha384
                | A::RsaPkcs1Sha512
                | A::RsaPssSha256
                | A::RsaPssSha384
                | A::RsaPssSha512
        ),
        KeyType::Ed25519Key => alg == A::Ed25519,
        KeyType::Unspecified => false,
    }
}

/// The algorithms a key type supports, in a stable order.
pub fn algorithms_for(key_type: KeyType) -> Vec<Algorithm> {
    ALL_ALGORITHMS
        .iter()
        .copied()
        .filter(|a| key_type_allows(key_type, *a))
        .collect()
}

/// Every signature algorithm the signer implements.
pub const ALL_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::EcdsaP256Sha256,
    Algorithm::EcdsaP384Sha384,
    Algorithm::RsaPkcs1Sha256,
    Algorithm::RsaPkcs1Sha384,
    Algorithm::RsaPkcs1Sha512,
    Algorithm::RsaPssSha256,
    Algorithm::RsaPssSha384,
    Algorithm::RsaPssSha512,
    Algorithm::Ed25519,
];

/// Every key type the signer can generate.
pub const ALL_KEY_TYPES: [KeyType; 6] = [
    KeyType::EcP256,
    KeyType::EcP384,
    KeyType::Rsa2048,
    KeyType::Rsa3072,
    KeyType::Rsa4096,
    KeyType::Ed25519Key,
];

fn rsa_encoding(alg: Algorithm) -> Option<&'static dyn sig::RsaEncoding> {
    Some(match alg {
        Algorithm::RsaPkcs1Sha256 => &sig::RSA_PKCS1_SHA256,
        Algorithm::RsaPkcs1Sha384 => &sig::RSA_PKCS1_SHA384,
        Algorithm::RsaPkcs1Sha512 => &sig::RSA_PKCS1_SHA512,
        Algorithm::RsaPssSha256 => &sig::RSA_PSS_SHA256,
        Algorithm::RsaPssSha384 => &sig::RSA_PSS_SHA384,
        Algorithm::RsaPssSha512 => &sig::RSA_PSS_SHA512,
        _ => return None,
    })
}

/// An in-memory private key, held by aws-lc (which wipes it when freed). Its `Debug` names only
/// the key type.
pub enum SoftwareKey {
    /// ECDSA P-256 or P-384.
    Ecdsa(KeyType, sig::EcdsaKeyPair),
    /// RSA 2048/3072/4096.
    Rsa(KeyType, sig::RsaKeyPair),
    /// Ed25519.
    Ed25519(sig::Ed25519KeyPair),
}

impl std::fmt::Debug for SoftwareKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SoftwareKey({})", self.key_type().as_str_name())
    }
}

fn ec_alg(key_type: KeyType) -> Option<&'static sig::EcdsaSigningAlgorithm> {
    match key_type {
        KeyType::EcP256 => Some(&sig::ECDSA_P256_SHA256_ASN1_SIGNING),
        KeyType::EcP384 => Some(&sig::ECDSA_P384_SHA384_ASN1_SIGNING),
        _ => None,
    }
}

impl SoftwareKey {
    /// Generates a key; returns it with its PKCS#8 encoding (to be sealed).
    pub fn generate(key_type: KeyType) -> Result<(Self, Zeroizing<Vec<u8>>), CryptoError> {
        let pkcs8: Zeroizing<Vec<u8>> = match key_type {
            KeyType::EcP256 | KeyType::EcP384 => {
                let alg = ec_alg(key_type).ok_or(CryptoError::Generate)?;
                let key = sig::EcdsaKeyPair::generate(alg).map_err(|_| CryptoError::Generate)?;
                let doc = key.to_pkcs8v1().map_err(|_| CryptoError::Generate)?;
                Zeroizing::new(doc.as_ref().to_vec())
            }
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                let size = match key_type {
                    KeyType::Rsa2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
                    KeyType::Rsa3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
                    _ => aws_lc_rs::rsa::KeySize::Rsa4096,
                };
                let key = sig::RsaKeyPair::generate(size).map_err(|_| CryptoError::Generate)?;
                let der: Pkcs8V1Der<'static> = key.as_der().map_err(|_| CryptoError::Generate)?;
                Zeroizing::new(der.as_ref().to_vec())
            }
            KeyType::Ed25519Key => {
                let key = sig::Ed25519KeyPair::generate().map_err(|_| CryptoError::Generate)?;
                let doc = key.to_pkcs8().map_err(|_| CryptoError::Generate)?;
                Zeroizing::new(doc.as_ref().to_vec())
            }
            KeyType::Unspecified => return Err(CryptoError::Generate),
        };
        let key = Self::from_pkcs8(key_type, &pkcs8).map_err(|_| CryptoError::Generate)?;
        Ok((key, pkcs8))
    }

    /// Parses a PKCS#8 private key of the given type.
    pub fn from_pkcs8(key_type: KeyType, pkcs8: &[u8]) -> Result<Self, CryptoError> {
        Ok(match key_type {
            KeyType::EcP256 | KeyType::EcP384 => {
                let alg = ec_alg(key_type).ok_or(CryptoError::BadKey)?;
                let key =
                    sig::EcdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(|_| CryptoError::BadKey)?;
                Self::Ecdsa(key_type, key)
            }
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                let key = sig::RsaKeyPair::from_pkcs8(pkcs8).map_err(|_| CryptoError::BadKey)?;
                let bits = key.public_modulus_len() * 8;
                let expected = match key_type {
                    KeyType::Rsa2048 => 2048,
                    KeyType::Rsa3072 => 3072,
                    _ => 4096,
                };
                if bits != expected {
                    return Err(CryptoError::BadKey);
                }
                Self::Rsa(key_type, key)
            }
            KeyType::Ed25519Key => Self::Ed25519(
                sig::Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| CryptoError::BadKey)?,
            ),
            KeyType::Unspecified => return Err(CryptoError::BadKey),
        })
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        match self {
            Self::Ecdsa(t, _) | Self::Rsa(t, _) => *t,
            Self::Ed25519(_) => KeyType::Ed25519Key,
        }
    }

    /// The SubjectPublicKeyInfo, DER.
    pub fn public_key_der(&self) -> Result<Vec<u8>, CryptoError> {
        let der = match self {
            Self::Ecdsa(_, k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            Self::Rsa(_, k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            Self::Ed25519(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
        };
        der.map_err(|_| CryptoError::BadKey)
    }

    /// Signs `msg` with `alg` (the message is hashed by the algorithm; for ECDSA the signature is
    /// a DER ECDSA-Sig-Value, for RSA and Ed25519 the raw signature bytes).
    pub fn sign(&self, alg: Algorithm, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if !key_type_allows(self.key_type(), alg) {
            return Err(CryptoError::AlgorithmMismatch {
                alg: alg.as_str_name(),
                key_type: self.key_type().as_str_name(),
            });
        }
        match self {
            Self::Ecdsa(_, k) => k
                .sign(&SystemRandom::new(), msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| CryptoError::Sign),
            Self::Rsa(_, k) => {
                let enc = rsa_encoding(alg).ok_or(CryptoError::Sign)?;
                let mut out = vec![0u8; k.public_modulus_len()];
                k.sign(enc, &SystemRandom::new(), msg, &mut out)
                    .map_err(|_| CryptoError::Sign)?;
                Ok(out)
            }
            Self::Ed25519(k) => Ok(k.sign(msg).as_ref().to_vec()),
        }
    }
}

/// An RSA private key for key-transport decryption (SCEP_RA keys only), held by aws-lc.
pub struct RsaDecryptKey(aws_lc_rs::rsa::PrivateDecryptingKey);

impl std::fmt::Debug for RsaDecryptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaDecryptKey({} bits)", self.0.key_size_bits())
    }
}

impl RsaDecryptKey {
    /// Parses an RSA PKCS#8 private key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, CryptoError> {
        aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(pkcs8)
            .map(Self)
            .map_err(|_| CryptoError::BadKey)
    }

    /// The modulus length in bytes (the only valid ciphertext length).
    pub fn modulus_len(&self) -> usize {
        self.0.key_size_bytes()
    }

    /// Unwraps `ciphertext` with `scheme`. The plaintext is returned in a zeroizing buffer.
    pub fn decrypt(
        &self,
        scheme: KeyTransport,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        use aws_lc_rs::rsa::{
            OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey,
            Pkcs1PrivateDecryptingKey,
        };
        if ciphertext.len() != self.modulus_len() {
            return Err(CryptoError::Decrypt);
        }
        let mut out = Zeroizing::new(vec![0u8; self.modulus_len()]);
        let n = match scheme {
            KeyTransport::RsaPkcs1V15 => Pkcs1PrivateDecryptingKey::new(self.0.clone())
                .and_then(|k| k.decrypt(ciphertext, &mut out[..]).map(|p| p.len())),
            KeyTransport::RsaOaepSha1 | KeyTransport::RsaOaepSha256 => {
                let alg = if scheme == KeyTransport::RsaOaepSha1 {
                    &OAEP_SHA1_MGF1SHA1
                } else {
                    &OAEP_SHA256_MGF1SHA256
                };
                OaepPrivateDecryptingKey::new(self.0.clone()).and_then(|k| {
                    k.decrypt(alg, ciphertext, &mut out[..], None)
                        .map(|p| p.len())
                })
            }
            KeyTransport::Unspecified => return Err(CryptoError::Decrypt),
        }
        .map_err(|_| CryptoError::Decrypt)?;
        out.truncate(n);
        Ok(out)
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_type_signs_with_its_algorithms_and_refuses_others() {
        for kt in [
            KeyType::EcP256,
            KeyType::EcP384,
            KeyType::Ed25519Key,
            KeyType::Rsa2048,
        ] {
            let (key, pkcs8) = SoftwareKey::generate(kt).expect("generate");
            let again = SoftwareKey::from_pkcs8(kt, &pkcs8).expect("reparse");
            assert_eq!(
                key.public_key_der().expect("spki"),
                again.public_key_der().expect("spki")
            );
            for alg in ALL_ALGORITHMS {
                let r = key.sign(alg, b"message");
                assert_eq!(r.is_ok(), key_type_allows(kt, alg), "{kt:?} {alg:?}");
            }
        }
    }

    #[test]
    fn debug_names_only_the_key_type() {
        let (key, _) = SoftwareKey::generate(KeyType::EcP256).expect("generate");
        assert_eq!(format!("{key:?}"), "SoftwareKey(EC_P256)");
    }
}
