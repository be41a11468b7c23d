//! Key stores: where private keys live and how they sign.
//!
//! Two backends sit behind [`KeyStore`]: [`sealed::SealedStore`] (AES-256-GCM envelope files under
//! a key-encryption key) and [`pkcs11::Pkcs11Store`] (a PKCS#11 token). The [`Keyring`] indexes
//! every loaded key by id across backends. Nothing here ever formats key material.

pub mod pkcs11;
pub mod sealed;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use certgate_proto::signer::{
    Algorithm, KeyBackend, KeyInfo, KeyPolicy, KeyRole, KeyTransport, KeyType,
};
use zeroize::Zeroizing;

use crate::algo::CryptoError;

/// A key's limits (see `KeyPolicy` in signer.proto).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// Longest validity of a certificate this key may sign, seconds; 0 = role default.
    pub max_validity_seconds: u64,
    /// Largest pathLenConstraint of a CA certificate this key may sign; `None` = no limit.
    pub max_path_len: Option<u32>,
}

impl From<Option<&KeyPolicy>> for Policy {
    fn from(p: Option<&KeyPolicy>) -> Self {
        p.map(|p| Policy {
            max_validity_seconds: p.max_validity_seconds,
            max_path_len: p.max_path_len,
        })
        .unwrap_or_default()
    }
}

/// Everything about a key except the private part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMeta {
    /// Caller-chosen id, `[A-Za-z0-9._-]{1,128}`.
    pub key_id: String,
    /// The tenant the key belongs to.
    pub tenant: String,
    /// What the key may sign.
    pub role: KeyRole,
    /// Algorithm family and size.
    pub key_type: KeyType,
    /// Where it lives.
    pub backend: KeyBackend,
    /// Limits.
    pub policy: Policy,
    /// SubjectPublicKeyInfo, DER.
    pub public_key_der: Vec<u8>,
    /// Creation time, Unix seconds.
    pub created_unix: i64,
}

impl KeyMeta {
    /// The wire form.
    pub fn to_info(&self) -> KeyInfo {
        KeyInfo {
            key_id: self.key_id.clone(),
            tenant: self.tenant.clone(),
            role: self.role as i32,
            key_type: self.key_type as i32,
            backend: self.backend as i32,
            public_key_der: self.public_key_der.clone(),
            policy: Some(KeyPolicy {
                max_validity_seconds: self.policy.max_validity_seconds,
                max_path_len: self.policy.max_path_len,
            }),
            created_unix: self.created_unix,
        }
    }

    /// A canonical byte encoding of every metadata field (length-prefixed), used as AES-GCM
    /// associated data for sealed keys and as the HMAC input for PKCS#11 sidecars: editing any
    /// field (tenant, role, policy, …) makes authentication fail.
    pub fn canonical_bytes(&self, domain: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.public_key_der.len());
        let mut field = |b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        };
        field(domain.as_bytes());
        field(self.key_id.as_bytes());
        field(self.tenant.as_bytes());
        field(self.role.as_str_name().as_bytes());
        field(self.key_type.as_str_name().as_bytes());
        field(self.backend.as_str_name().as_bytes());
        field(&self.policy.max_validity_seconds.to_be_bytes());
        match self.policy.max_path_len {
            Some(n) => field(&[&[1u8][..], &n.to_be_bytes()].concat()),
            None => field(&[0u8]),
        }
        field(&self.created_unix.to_be_bytes());
        field(&self.public_key_der);
        out
    }
}

/// What a caller asks for when generating a key.
#[derive(Clone, Debug)]
pub struct NewKey {
    /// Id (validated by [`valid_key_id`]).
    pub key_id: String,
    /// Tenant.
    pub tenant: String,
    /// Role.
    pub role: KeyRole,
    /// Type.
    pub key_type: KeyType,
    /// Limits.
    pub policy: Policy,
}

/// Key ids: `[A-Za-z0-9._-]{1,128}`, not starting with a dot (they become file names).
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Tenants: same alphabet as key ids, may be empty (the default tenant).
pub fn valid_tenant(t: &str) -> bool {
    t.is_empty() || valid_key_id(t)
}

/// Key store failures. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The id is taken.
    #[error("key {0:?} already exists")]
    Exists(String),
    /// The key type is not supported by this backend.
    #[error("key type {0} is not supported by this backend")]
    Unsupported(&'static str),
    /// A key file failed authentication (wrong KEK, or its metadata was edited).
    #[error("key file {file}: authentication failed (wrong KEK or edited metadata)")]
    Unauthentic {
        /// Which file.
        file: String,
    },
    /// A key file is not in the expected format.
    #[error("key file {file}: {reason}")]
    Format {
        /// Which file.
        file: String,
        /// Why.
        reason: String,
    },
    /// A crypto operation failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The PKCS#11 module failed.
    #[error("pkcs11: {0}")]
    Pkcs11(String),
    /// File system.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A loaded key that can sign.
pub trait KeyHandle: Send + Sync {
    /// Its metadata.
    fn meta(&self) -> &KeyMeta;
    /// Signs `msg` with `alg`; the caller has checked policy and algorithm already.
    fn sign(&self, alg: Algorithm, msg: &[u8]) -> Result<Vec<u8>, StoreError>;
    /// Whether a signature is cheap enough to compute on an async worker thread (software
    /// ECDSA/Ed25519) instead of the blocking pool (RSA, HSM round trips).
    fn is_fast(&self) -> bool {
        false
    }
    /// Key-transport decryption (SCEP_RA keys only; the caller has checked the role). Backends
    /// that cannot decrypt answer `Unsupported`.
    fn decrypt(
        &self,
        _scheme: KeyTransport,
        _ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        Err(StoreError::Unsupported("decryption"))
    }
}

/// A backend holding keys.
pub trait KeyStore: Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> KeyBackend;
    /// Every key loaded when the store was opened.
    fn loaded(&self) -> Vec<Arc<dyn KeyHandle>>;
    /// Generates and persists a new key.
    fn generate(&self, new: &NewKey, created_unix: i64) -> Result<Arc<dyn KeyHandle>, StoreError>;
}

/// The 32-byte key-encryption key. Zeroized on drop; `Debug` prints nothing secret.
pub struct Kek(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(…)")
    }
}

impl Kek {
    /// Wraps 32 bytes.
    pub fn new(bytes: Zeroizing<[u8; 32]>) -> Self {
        Self(bytes)
    }

    /// A fresh random KEK.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut k = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(&mut k[..]).map_err(|_| CryptoError::Generate)?;
        Ok(Self(k))
    }

    /// Reads a KEK from file or environment contents: exactly 32 raw bytes, or base64 (standard
    /// alphabet, surrounding whitespace ignored) of 32 bytes.
    pub fn parse(contents: &[u8]) -> Result<Self, String> {
        use base64::Engine;
        let mut k = Zeroizing::new([0u8; 32]);
        let decoded = std::str::from_utf8(contents).ok().and_then(|text| {
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .ok()
                .map(Zeroizing::new)
        });
        match decoded {
            // base64 of 32 bytes is 44 characters, so it cannot be confused with 32 raw bytes
            Some(d) if d.len() == 32 => k.copy_from_slice(&d),
            _ if contents.len() == 32 => k.copy_from_slice(contents),
            _ => return Err("KEK must be 32 raw bytes or base64 of 32 bytes".into()),
        }
        Ok(Self(k))
    }

    /// The base64 form written by `init-kek`.
    pub fn to_base64(&self) -> Zeroizing<String> {
        use base64::Engine;
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&self.0[..]))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A subkey for `purpose`: HMAC-SHA256(KEK, "certgate-signer/" ‖ purpose).
    pub(crate) fn derive(&self, purpose: &str) -> Zeroizing<Vec<u8>> {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.0[..]);
        let tag = aws_lc_rs::hmac::sign(&key, format!("certgate-signer/{purpose}").as_bytes());
        Zeroizing::new(tag.as_ref().to_vec())
    }
}

/// Every loaded key, by id, across backends.
pub struct Keyring {
    stores: Vec<Box<dyn KeyStore>>,
    keys: RwLock<BTreeMap<String, Arc<dyn KeyHandle>>>,
    generate_lock: Mutex<()>,
}

impl Keyring {
    /// Indexes the keys of every store; two keys with the same id are an error.
    pub fn new(stores: Vec<Box<dyn KeyStore>>) -> Result<Self, StoreError> {
        let mut keys = BTreeMap::new();
        for store in &stores {
            for key in store.loaded() {
                let id = key.meta().key_id.clone();
                if keys.insert(id.clone(), key).is_some() {
                    return Err(StoreError::Exists(id));
                }
            }
        }
        Ok(Self {
            stores,
            keys: RwLock::new(keys),
            generate_lock: Mutex::new(()),
        })
    }

    /// A key by id.
    pub fn get(&self, key_id: &str) -> Option<Arc<dyn KeyHandle>> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key_id)
            .cloned()
    }

    /// Metadata of every key, sorted by id, optionally for one tenant.
    pub fn list(&self, tenant: Option<&str>) -> Vec<KeyMeta> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|k| k.meta().clone())
            .filter(|m| tenant.is_none_or(|t| m.tenant == t))
            .collect()
    }

    /// Whether a backend is configured.
    pub fn has_backend(&self, backend: KeyBackend) -> bool {
        self.stores.iter().any(|s| s.backend() == backend)
    }

    /// Generates a key in `backend`. Ids are unique across backends.
    pub fn generate(
        &self,
        backend: KeyBackend,
        new: &NewKey,
        created_unix: i64,
    ) -> Result<KeyMeta, StoreError> {
        let _guard = self.generate_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.get(&new.key_id).is_some() {
            return Err(StoreError::Exists(new.key_id.clone()));
        }
        let store = self
            .stores
            .iter()
            .find(|s| s.backend() == backend)
            .ok_or(StoreError::Unsupported(backend.as_str_name()))?;
        let key = store.generate(new, created_unix)?;
        let meta = key.meta().clone();
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(meta.key_id.clone(), key);
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_file_name_safe() {
        assert!(valid_key_id("acme-issuing.2026_01"));
        assert!(!valid_key_id(""));
        assert!(!valid_key_id("../etc/passwd"));
        assert!(!valid_key_id(".hidden"));
        assert!(!valid_key_id("a/b"));
        assert!(!valid_key_id(&"a".repeat(129)));
    }

    #[test]
    fn kek_parses_base64_and_raw_and_hides_itself() {
        let kek = Kek::generate().expect("kek");
        let b64 = kek.to_base64();
        let again = Kek::parse(format!("{}\n", b64.as_str()).as_bytes()).expect("b64");
        assert_eq!(again.bytes(), kek.bytes());
        let raw = [0xffu8; 32];
        assert_eq!(Kek::parse(&raw).expect("raw").bytes(), &raw);
        assert!(Kek::parse(b"too short").is_err());
        assert_eq!(format!("{kek:?}"), "Kek(…)");
    }
}
