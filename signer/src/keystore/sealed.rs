//! Sealed key files: each private key encrypted with AES-256-GCM under its own random data key
//! (DEK); the DEK is itself encrypted with AES-256-GCM under the key-encryption key (KEK).
//!
//! Both encryptions take the key's canonical metadata ([`KeyMeta::canonical_bytes`]: id, tenant,
//! role, key type, backend, policy, creation time, public key) as associated data, so a file whose
//! tenant, role or policy was edited, or which was renamed to another id, fails to open, exactly
//! like a file opened with the wrong KEK. A file is one JSON document, `<key_id>.key.json`,
//! written 0600 via a temporary file and an atomic rename.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use certgate_proto::signer::{Algorithm, KeyBackend, KeyRole, KeyTransport, KeyType};
use zeroize::Zeroizing;

use super::{Kek, KeyHandle, KeyMeta, KeyStore, NewKey, Policy, StoreError, valid_key_id};
use crate::algo::{RsaDecryptKey, SoftwareKey};

const FORMAT: &str = "certgate-sealed-key/1";
const SUFFIX: &str = ".key.json";

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedFile {
    format: String,
    key_id: String,
    tenant: String,
    role: String,
    key_type: String,
    policy: Policy,
    created_unix: i64,
    /// SubjectPublicKeyInfo DER, base64.
    public_key: String,
    /// nonce ‖ AES-256-GCM(KEK, DEK) ‖ tag, base64.
    wrapped_dek: String,
    /// nonce ‖ AES-256-GCM(DEK, PKCS#8) ‖ tag, base64.
    sealed_key: String,
}

/// A directory of sealed key files.
pub struct SealedStore {
    dir: PathBuf,
    kek: Kek,
    loaded: Mutex<Vec<Arc<dyn KeyHandle>>>,
}

impl std::fmt::Debug for SealedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedStore")
            .field("dir", &self.dir)
            .finish()
    }
}

struct SealedKey {
    meta: KeyMeta,
    key: SoftwareKey,
    /// Present for SCEP_RA keys only: the same RSA key, loaded for key-transport decryption.
    decrypt: Option<RsaDecryptKey>,
}

/// The decryption half of a SCEP_RA key (RSA only); `None` for every other role.
fn decrypt_key(meta: &KeyMeta, pkcs8: &[u8]) -> Result<Option<RsaDecryptKey>, StoreError> {
    if meta.role != KeyRole::ScepRa {
        return Ok(None);
    }
    match meta.key_type {
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            Ok(Some(RsaDecryptKey::from_pkcs8(pkcs8)?))
        }
        _ => Err(StoreError::Unsupported("SCEP_RA keys other than RSA")),
    }
}

impl KeyHandle for SealedKey {
    fn meta(&self) -> &KeyMeta {
        &self.meta
    }

    fn sign(&self, alg: Algorithm, msg: &[u8]) -> Result<Vec<u8>, StoreError> {
        Ok(self.key.sign(alg, msg)?)
    }

    fn is_fast(&self) -> bool {
        !matches!(self.key, SoftwareKey::Rsa(..))
    }

    fn decrypt(
        &self,
        scheme: KeyTransport,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        match &self.decrypt {
            Some(k) => Ok(k.decrypt(scheme, ciphertext)?),
            None => Err(StoreError::Unsupported("decryption with this key")),
        }
    }
}

fn seal(key: &[u8], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| crate::algo::CryptoError::Sign)?,
    );
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| crate::algo::CryptoError::Generate)?;
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| crate::algo::CryptoError::Sign)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

fn open(
    key: &[u8],
    sealed: &[u8],
    aad: &[u8],
    file: &str,
) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    let unauthentic = || StoreError::Unauthentic {
        file: file.to_owned(),
    };
    if sealed.len() < NONCE_LEN + 16 {
        return Err(unauthentic());
    }
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).map_err(|_| unauthentic())?);
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unauthentic())?;
    let mut buf = Zeroizing::new(ct.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| unauthentic())?
        .len();
    buf.truncate(len);
    Ok(buf)
}

impl SealedStore {
    /// Opens (creating if needed, mode 0700) a key directory and unseals every key in it. Any
    /// key that fails to open (wrong KEK, edited metadata, bad format) fails the whole store:
    /// the signer refuses to start rather than run with a key set an attacker may have altered.
    pub fn open(dir: &Path, kek: Kek) -> Result<Self, StoreError> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let mut loaded: Vec<Arc<dyn KeyHandle>> = Vec::new();
        let mut entries: Vec<_> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.to_str().is_some_and(|s| s.ends_with(SUFFIX)))
            .collect();
        entries.sort();
        for path in entries {
            loaded.push(Arc::new(Self::load(&path, &kek)?));
        }
        Ok(Self {
            dir: dir.to_owned(),
            kek,
            loaded: Mutex::new(loaded),
        })
    }

    fn load(path: &Path, kek: &Kek) -> Result<SealedKey, StoreError> {
        let name = path.display().to_string();
        let format = |reason: &str| StoreError::Format {
            file: name.clone(),
            reason: reason.to_owned(),
        };
        let text = fs::read(path)?;
        let file: SealedFile =
            serde_json::from_slice(&text).map_err(|e| format(&format!("not a sealed key: {e}")))?;
        if file.format != FORMAT {
            return Err(format("unknown format"));
        }
        let stem = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SUFFIX))
            .ok_or_else(|| format("bad file name"))?;
        if stem != file.key_id || !valid_key_id(&file.key_id) {
            // renamed files are refused: the id is also bound as associated data
            return Err(StoreError::Unauthentic { file: name });
        }
        let meta = KeyMeta {
            key_id: file.key_id,
            tenant: file.tenant,
            role: KeyRole::from_str_name(&file.role).ok_or_else(|| format("unknown role"))?,
            key_type: KeyType::from_str_name(&file.key_type)
                .ok_or_else(|| format("unknown key type"))?,
            backend: KeyBackend::SealedFile,
            policy: file.policy,
            public_key_der: B64
                .decode(&file.public_key)
                .map_err(|_| format("bad public key"))?,
            created_unix: file.created_unix,
        };
        let aad = meta.canonical_bytes(FORMAT);
        let wrapped = B64
            .decode(&file.wrapped_dek)
            .map_err(|_| format("bad wrapped_dek"))?;
        let sealed = B64
            .decode(&file.sealed_key)
            .map_err(|_| format("bad sealed_key"))?;
        let dek = open(kek.bytes(), &wrapped, &aad, &name)?;
        let pkcs8 = open(&dek, &sealed, &aad, &name)?;
        let key = SoftwareKey::from_pkcs8(meta.key_type, &pkcs8)?;
        if key.public_key_der()? != meta.public_key_der {
            return Err(StoreError::Unauthentic { file: name });
        }
        let decrypt = decrypt_key(&meta, &pkcs8)?;
        Ok(SealedKey { meta, key, decrypt })
    }

    fn write(&self, meta: &KeyMeta, pkcs8: &[u8]) -> Result<(), StoreError> {
        let aad = meta.canonical_bytes(FORMAT);
        let mut dek = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(&mut dek[..]).map_err(|_| crate::algo::CryptoError::Generate)?;
        let file = SealedFile {
            format: FORMAT.into(),
            key_id: meta.key_id.clone(),
            tenant: meta.tenant.clone(),
            role: meta.role.as_str_name().into(),
            key_type: meta.key_type.as_str_name().into(),
            policy: meta.policy,
            created_unix: meta.created_unix,
            public_key: B64.encode(&meta.public_key_der),
            wrapped_dek: B64.encode(seal(self.kek.bytes(), &dek[..], &aad)?),
            sealed_key: B64.encode(seal(&dek[..], pkcs8, &aad)?),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| StoreError::Format {
            file: meta.key_id.clone(),
            reason: e.to_string(),
        })?;
        let path = self.dir.join(format!("{}{SUFFIX}", meta.key_id));
        if path.exists() {
            return Err(StoreError::Exists(meta.key_id.clone()));
        }
        let tmp = self.dir.join(format!(".{}.tmp", meta.key_id));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The file a key is stored in.
    pub fn path_of(&self, key_id: &str) -> PathBuf {
        self.dir.join(format!("{key_id}{SUFFIX}"))
    }
}

impl KeyStore for SealedStore {
    fn backend(&self) -> KeyBackend {
        KeyBackend::SealedFile
    }

    fn loaded(&self) -> Vec<Arc<dyn KeyHandle>> {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn generate(&self, new: &NewKey, created_unix: i64) -> Result<Arc<dyn KeyHandle>, StoreError> {
        let (key, pkcs8) = SoftwareKey::generate(new.key_type)?;
        let meta = KeyMeta {
            key_id: new.key_id.clone(),
            tenant: new.tenant.clone(),
            role: new.role,
            key_type: new.key_type,
            backend: KeyBackend::SealedFile,
            policy: new.policy,
            public_key_der: key.public_key_der()?,
            created_unix,
        };
        let decrypt = decrypt_key(&meta, &pkcs8)?;
        self.write(&meta, &pkcs8)?;
        Ok(Arc::new(SealedKey { meta, key, decrypt }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_key(id: &str) -> NewKey {
        NewKey {
            key_id: id.into(),
            tenant: "acme".into(),
            role: KeyRole::Issuing,
            key_type: KeyType::EcP256,
            policy: Policy::default(),
        }
    }

    fn kek_copy(kek: &Kek) -> Kek {
        Kek::new(Zeroizing::new(*kek.bytes()))
    }

    #[test]
    fn sealed_key_survives_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kek = Kek::generate().expect("kek");
        let store = SealedStore::open(dir.path(), kek_copy(&kek)).expect("open");
        let key = store
            .generate(&new_key("k1"), 1_700_000_000)
            .expect("generate");
        let sig1 = key.sign(Algorithm::EcdsaP256Sha256, b"m").expect("sign");
        assert!(!sig1.is_empty());
        let spki = key.meta().public_key_der.clone();
        drop(store);

        let store = SealedStore::open(dir.path(), kek).expect("reopen");
        let loaded = store.loaded();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].meta().public_key_der, spki);
        assert_eq!(loaded[0].meta().tenant, "acme");
        let sig = loaded[0]
            .sign(Algorithm::EcdsaP256Sha256, b"m")
            .expect("sign");
        let pk = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            spki_point(&spki),
        );
        pk.verify(b"m", &sig).expect("verifies after restart");
    }

    fn spki_point(spki: &[u8]) -> Vec<u8> {
        use der::Decode;
        let spki = spki::SubjectPublicKeyInfoRef::from_der(spki).expect("spki");
        spki.subject_public_key.raw_bytes().to_vec()
    }

    #[test]
    fn wrong_kek_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SealedStore::open(dir.path(), Kek::generate().expect("kek")).expect("open");
        store.generate(&new_key("k1"), 1).expect("generate");
        drop(store);
        let err =
            SealedStore::open(dir.path(), Kek::generate().expect("kek")).expect_err("wrong KEK");
        assert!(matches!(err, StoreError::Unauthentic { .. }), "{err}");
    }

    fn edit(dir: &Path, id: &str, field: &str, value: serde_json::Value) {
        let path = dir.join(format!("{id}{SUFFIX}"));
        let mut v: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
        v[field] = value;
        fs::write(&path, serde_json::to_vec(&v).expect("json")).expect("write");
    }

    #[test]
    fn edited_tenant_or_role_or_policy_is_refused() {
        for (field, value) in [
            ("tenant", serde_json::json!("other-tenant")),
            ("role", serde_json::json!("ROOT")),
            (
                "policy",
                serde_json::json!({"max_validity_seconds": 999_999_999u64, "max_path_len": null}),
            ),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let kek = Kek::generate().expect("kek");
            let store = SealedStore::open(dir.path(), kek_copy(&kek)).expect("open");
            store.generate(&new_key("k1"), 1).expect("generate");
            drop(store);
            // unedited: opens
            SealedStore::open(dir.path(), kek_copy(&kek)).expect("unedited opens");
            edit(dir.path(), "k1", field, value);
            let err = SealedStore::open(dir.path(), kek).expect_err("edited file must be refused");
            assert!(
                matches!(err, StoreError::Unauthentic { .. }),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn renamed_key_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kek = Kek::generate().expect("kek");
        let store = SealedStore::open(dir.path(), kek_copy(&kek)).expect("open");
        store.generate(&new_key("k1"), 1).expect("generate");
        drop(store);
        fs::rename(
            dir.path().join("k1.key.json"),
            dir.path().join("k2.key.json"),
        )
        .expect("mv");
        edit(dir.path(), "k2", "key_id", serde_json::json!("k2"));
        assert!(SealedStore::open(dir.path(), kek).is_err());
    }

    #[test]
    fn key_file_is_private_and_holds_no_plaintext_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SealedStore::open(dir.path(), Kek::generate().expect("kek")).expect("open");
        store.generate(&new_key("k1"), 1).expect("generate");
        let meta = fs::metadata(store.path_of("k1")).expect("meta");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(store.path_of("k1")).expect("read");
        assert!(!text.contains("PRIVATE"));
        assert!(store.generate(&new_key("k1"), 1).is_err(), "ids are unique");
    }
}
