//! PKCS#11 key store (via `cryptoki`): the private key is generated on the token, marked
//! sensitive and non-extractable, and never leaves it.
//!
//! The token only knows a key by its label and id (both the key id). Certgate's metadata (tenant,
//! role, policy, creation time, public key) lives in a sidecar file `<key_id>.p11.json` in the key
//! directory, authenticated with HMAC-SHA256 under a key derived from the KEK
//! (`HMAC-SHA256(KEK, "certgate-signer/pkcs11-sidecar")`), so editing the tenant or role in the
//! sidecar is detected exactly like editing a sealed key file.
//!
//! SoftHSM 2.6.1 quirks (PEERS.md): it has no `CKM_ECDSA_SHA256`, so ECDSA hashes here and signs
//! the digest with raw `CKM_ECDSA`, then converts the raw r‖s into a DER ECDSA-Sig-Value. RSA uses
//! the token's `CKM_SHA*_RSA_PKCS` and `CKM_SHA*_RSA_PKCS_PSS` (salt = hash length). Ed25519 keys
//! are not offered on PKCS#11 (SoftHSM's EdDSA support depends on its build).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use certgate_proto::signer::{Algorithm, KeyBackend, KeyRole, KeyType};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::MechanismType;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::{AuthPin, Ulong};
use der::asn1::{AnyRef, BitString, ObjectIdentifier, OctetString, UintRef};
use der::{Decode, Encode, Sequence};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use super::{Kek, KeyHandle, KeyMeta, KeyStore, NewKey, Policy, StoreError, valid_key_id};
use crate::algo::key_type_allows;
use crate::config::Pkcs11Config;

const FORMAT: &str = "certgate-pkcs11-key/1";
const SUFFIX: &str = ".p11.json";

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    format: String,
    key_id: String,
    tenant: String,
    role: String,
    key_type: String,
    policy: Policy,
    created_unix: i64,
    public_key: String,
    /// Hex HMAC-SHA256 over the canonical metadata.
    mac: String,
}

/// ECDSA-Sig-Value (RFC 3279 §2.2.3).
#[derive(Sequence)]
struct EcdsaSig<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// RSAPublicKey (RFC 8017 §A.1.1).
#[derive(Sequence)]
struct RsaPublicKey<'a> {
    n: UintRef<'a>,
    e: UintRef<'a>,
}

fn p11(e: impl std::fmt::Display) -> StoreError {
    StoreError::Pkcs11(e.to_string())
}

/// Keys on a PKCS#11 token.
pub struct Pkcs11Store {
    session: Arc<Mutex<Session>>,
    key_dir: PathBuf,
    mac_key: aws_lc_rs::hmac::Key,
    loaded: Mutex<Vec<Arc<dyn KeyHandle>>>,
    _ctx: Pkcs11,
}

struct TokenKey {
    meta: KeyMeta,
    handle: ObjectHandle,
    session: Arc<Mutex<Session>>,
}

impl KeyHandle for TokenKey {
    fn meta(&self) -> &KeyMeta {
        &self.meta
    }

    fn sign(&self, alg: Algorithm, msg: &[u8]) -> Result<Vec<u8>, StoreError> {
        if !key_type_allows(self.meta.key_type, alg) {
            return Err(crate::algo::CryptoError::AlgorithmMismatch {
                alg: alg.as_str_name(),
                key_type: self.meta.key_type.as_str_name(),
            }
            .into());
        }
        let session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        match alg {
            Algorithm::EcdsaP256Sha256 | Algorithm::EcdsaP384Sha384 => {
                let (digest_alg, half) = if alg == Algorithm::EcdsaP256Sha256 {
                    (&aws_lc_rs::digest::SHA256, 32)
                } else {
                    (&aws_lc_rs::digest::SHA384, 48)
                };
                let digest = aws_lc_rs::digest::digest(digest_alg, msg);
                let raw = session
                    .sign(&Mechanism::Ecdsa, self.handle, digest.as_ref())
                    .map_err(p11)?;
                if raw.len() != 2 * half {
                    return Err(p11("unexpected ECDSA signature length"));
                }
                let (r, s) = raw.split_at(half);
                EcdsaSig {
                    r: UintRef::new(r).map_err(p11)?,
                    s: UintRef::new(s).map_err(p11)?,
                }
                .to_der()
                .map_err(p11)
            }
            _ => {
                let pss = |hash: MechanismType, mgf: PkcsMgfType, len: u64| PkcsPssParams {
                    hash_alg: hash,
                    mgf,
                    s_len: Ulong::from(len),
                };
                let mech = match alg {
                    Algorithm::RsaPkcs1Sha256 => Mechanism::Sha256RsaPkcs,
                    Algorithm::RsaPkcs1Sha384 => Mechanism::Sha384RsaPkcs,
                    Algorithm::RsaPkcs1Sha512 => Mechanism::Sha512RsaPkcs,
                    Algorithm::RsaPssSha256 => Mechanism::Sha256RsaPkcsPss(pss(
                        MechanismType::SHA256,
                        PkcsMgfType::MGF1_SHA256,
                        32,
                    )),
                    Algorithm::RsaPssSha384 => Mechanism::Sha384RsaPkcsPss(pss(
                        MechanismType::SHA384,
                        PkcsMgfType::MGF1_SHA384,
                        48,
                    )),
                    Algorithm::RsaPssSha512 => Mechanism::Sha512RsaPkcsPss(pss(
                        MechanismType::SHA512,
                        PkcsMgfType::MGF1_SHA512,
                        64,
                    )),
                    _ => return Err(p11("unsupported algorithm")),
                };
                session.sign(&mech, self.handle, msg).map_err(p11)
            }
        }
    }
}

impl Pkcs11Store {
    /// Loads the module, logs in to the token labelled `config.token_label`, and loads every key
    /// that has a sidecar in `key_dir`. A sidecar that fails authentication, or whose key is not
    /// on the token, fails the whole store.
    pub fn open(
        config: &Pkcs11Config,
        pin: &str,
        key_dir: &Path,
        kek: Kek,
    ) -> Result<Self, StoreError> {
        if !config.module.exists() {
            return Err(p11(format!(
                "PKCS#11 module {} not found (Debian: apt-get install softhsm2)",
                config.module.display()
            )));
        }
        let ctx = Pkcs11::new(&config.module).map_err(p11)?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(p11)?;
        let mut slot = None;
        for s in ctx.get_slots_with_token().map_err(p11)? {
            let info = ctx.get_token_info(s).map_err(p11)?;
            if info.label().trim_end() == config.token_label {
                slot = Some(s);
                break;
            }
        }
        let slot =
            slot.ok_or_else(|| p11(format!("no token labelled {:?}", config.token_label)))?;
        let session = ctx.open_rw_session(slot).map_err(p11)?;
        let auth = AuthPin::from(pin.to_owned());
        session.login(UserType::User, Some(&auth)).map_err(p11)?;
        fs::create_dir_all(key_dir)?;
        let mac_key =
            aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &kek.derive("pkcs11-sidecar"));
        let store = Self {
            session: Arc::new(Mutex::new(session)),
            key_dir: key_dir.to_owned(),
            mac_key,
            loaded: Mutex::new(Vec::new()),
            _ctx: ctx,
        };
        let mut entries: Vec<_> = fs::read_dir(key_dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.to_str().is_some_and(|s| s.ends_with(SUFFIX)))
            .collect();
        entries.sort();
        let mut loaded: Vec<Arc<dyn KeyHandle>> = Vec::new();
        for path in entries {
            loaded.push(Arc::new(store.load(&path)?));
        }
        *store.loaded.lock().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(store)
    }

    fn mac(&self, meta: &KeyMeta) -> String {
        hex::encode(aws_lc_rs::hmac::sign(
            &self.mac_key,
            &meta.canonical_bytes(FORMAT),
        ))
    }

    fn load(&self, path: &Path) -> Result<TokenKey, StoreError> {
        let name = path.display().to_string();
        let format = |reason: &str| StoreError::Format {
            file: name.clone(),
            reason: reason.to_owned(),
        };
        let s: Sidecar = serde_json::from_slice(&fs::read(path)?)
            .map_err(|e| format(&format!("not a PKCS#11 sidecar: {e}")))?;
        if s.format != FORMAT {
            return Err(format("unknown format"));
        }
        let stem = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SUFFIX));
        if stem != Some(s.key_id.as_str()) || !valid_key_id(&s.key_id) {
            return Err(StoreError::Unauthentic { file: name });
        }
        let meta = KeyMeta {
            key_id: s.key_id,
            tenant: s.tenant,
            role: KeyRole::from_str_name(&s.role).ok_or_else(|| format("unknown role"))?,
            key_type: KeyType::from_str_name(&s.key_type)
                .ok_or_else(|| format("unknown key type"))?,
            backend: KeyBackend::Pkcs11,
            policy: s.policy,
            public_key_der: B64
                .decode(&s.public_key)
                .map_err(|_| format("bad public key"))?,
            created_unix: s.created_unix,
        };
        let expected = hex::decode(&s.mac).map_err(|_| format("bad mac"))?;
        aws_lc_rs::hmac::verify(&self.mac_key, &meta.canonical_bytes(FORMAT), &expected)
            .map_err(|_| StoreError::Unauthentic { file: name.clone() })?;
        let session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(meta.key_id.as_bytes().to_vec()),
                Attribute::Id(meta.key_id.as_bytes().to_vec()),
            ])
            .map_err(p11)?;
        let [handle] = found[..] else {
            return Err(p11(format!(
                "{} private key(s) labelled {:?} on the token (expected 1)",
                found.len(),
                meta.key_id
            )));
        };
        drop(session);
        Ok(TokenKey {
            meta,
            handle,
            session: self.session.clone(),
        })
    }

    fn write_sidecar(&self, meta: &KeyMeta) -> Result<(), StoreError> {
        let sidecar = Sidecar {
            format: FORMAT.into(),
            key_id: meta.key_id.clone(),
            tenant: meta.tenant.clone(),
            role: meta.role.as_str_name().into(),
            key_type: meta.key_type.as_str_name().into(),
            policy: meta.policy,
            created_unix: meta.created_unix,
            public_key: B64.encode(&meta.public_key_der),
            mac: self.mac(meta),
        };
        let json = serde_json::to_vec_pretty(&sidecar).map_err(|e| StoreError::Format {
            file: meta.key_id.clone(),
            reason: e.to_string(),
        })?;
        let path = self.key_dir.join(format!("{}{SUFFIX}", meta.key_id));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    StoreError::Exists(meta.key_id.clone())
                } else {
                    e.into()
                }
            })?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        Ok(())
    }
}

fn spki_der(algorithm: AlgorithmIdentifierOwned, key: &[u8]) -> Result<Vec<u8>, StoreError> {
    SubjectPublicKeyInfoOwned {
        algorithm,
        subject_public_key: BitString::from_bytes(key).map_err(p11)?,
    }
    .to_der()
    .map_err(p11)
}

impl KeyStore for Pkcs11Store {
    fn backend(&self) -> KeyBackend {
        KeyBackend::Pkcs11
    }

    fn loaded(&self) -> Vec<Arc<dyn KeyHandle>> {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn generate(&self, new: &NewKey, created_unix: i64) -> Result<Arc<dyn KeyHandle>, StoreError> {
        let label = Attribute::Label(new.key_id.as_bytes().to_vec());
        let id = Attribute::Id(new.key_id.as_bytes().to_vec());
        let private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            label.clone(),
            id.clone(),
        ];
        let session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        // refuse an id that already exists on the token (left over from another installation)
        let existing = session
            .find_objects(&[Attribute::Label(new.key_id.as_bytes().to_vec())])
            .map_err(p11)?;
        if !existing.is_empty() {
            return Err(StoreError::Exists(new.key_id.clone()));
        }
        let (public_key_der, handle) = match new.key_type {
            KeyType::EcP256 | KeyType::EcP384 => {
                let curve = if new.key_type == KeyType::EcP256 {
                    SECP256R1
                } else {
                    SECP384R1
                };
                let public = vec![
                    Attribute::Token(true),
                    Attribute::Private(false),
                    Attribute::Verify(true),
                    Attribute::KeyType(CkKeyType::EC),
                    Attribute::EcParams(curve.to_der().map_err(p11)?),
                    label,
                    id,
                ];
                let (pub_h, priv_h) = session
                    .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                    .map_err(p11)?;
                let attrs = session
                    .get_attributes(pub_h, &[AttributeType::EcPoint])
                    .map_err(p11)?;
                let point = attrs
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::EcPoint(p) => Some(p),
                        _ => None,
                    })
                    .ok_or_else(|| p11("token returned no CKA_EC_POINT"))?;
                // CKA_EC_POINT is a DER OCTET STRING around the uncompressed point
                let point = OctetString::from_der(&point)
                    .map(|o| o.into_bytes())
                    .unwrap_or(point);
                let alg = AlgorithmIdentifierOwned {
                    oid: ID_EC_PUBLIC_KEY,
                    parameters: Some(der::Any::encode_from(&curve).map_err(p11)?),
                };
                (spki_der(alg, &point)?, priv_h)
            }
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                let bits: u64 = match new.key_type {
                    KeyType::Rsa2048 => 2048,
                    KeyType::Rsa3072 => 3072,
                    _ => 4096,
                };
                let public = vec![
                    Attribute::Token(true),
                    Attribute::Private(false),
                    Attribute::Verify(true),
                    Attribute::KeyType(CkKeyType::RSA),
                    Attribute::ModulusBits(Ulong::from(bits)),
                    Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                    label,
                    id,
                ];
                let (pub_h, priv_h) = session
                    .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
                    .map_err(p11)?;
                let attrs = session
                    .get_attributes(
                        pub_h,
                        &[AttributeType::Modulus, AttributeType::PublicExponent],
                    )
                    .map_err(p11)?;
                let mut n = None;
                let mut e = None;
                for a in attrs {
                    match a {
                        Attribute::Modulus(v) => n = Some(v),
                        Attribute::PublicExponent(v) => e = Some(v),
                        _ => {}
                    }
                }
                let (n, e) = n
                    .zip(e)
                    .ok_or_else(|| p11("token returned no RSA public key"))?;
                let rsa = RsaPublicKey {
                    n: UintRef::new(&n).map_err(p11)?,
                    e: UintRef::new(&e).map_err(p11)?,
                }
                .to_der()
                .map_err(p11)?;
                let alg = AlgorithmIdentifierOwned {
                    oid: RSA_ENCRYPTION,
                    parameters: Some(AnyRef::NULL.into()),
                };
                (spki_der(alg, &rsa)?, priv_h)
            }
            other => return Err(StoreError::Unsupported(other.as_str_name())),
        };
        drop(session);
        let meta = KeyMeta {
            key_id: new.key_id.clone(),
            tenant: new.tenant.clone(),
            role: new.role,
            key_type: new.key_type,
            backend: KeyBackend::Pkcs11,
            policy: new.policy,
            public_key_der,
            created_unix,
        };
        self.write_sidecar(&meta)?;
        Ok(Arc::new(TokenKey {
            meta,
            handle,
            session: self.session.clone(),
        }))
    }
}
