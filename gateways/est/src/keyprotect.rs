//! Encrypted server-side key delivery (RFC 7030 §4.4.1.1, §4.4.1.2, §4.4.2).
//!
//! A `serverkeygen` CSR may ask for the private key to be encrypted on top of TLS:
//! - `DecryptKeyIdentifier` (id-aa-decryptKeyID, RFC 4108 §2.2.5): a symmetric key both sides
//!   know (here: a per-label pre-shared key) → `KEKRecipientInfo` with AES key wrap (RFC 3394);
//! - `AsymmetricDecryptKeyIdentifier` (id-aa-asymmDecryptKeyID, §4.4.1.2): a key whose
//!   certificate the server knows (here: the client's own TLS client certificate) →
//!   `KeyTransRecipientInfo` (RSA, PKCS#1 v1.5) or `KeyAgreeRecipientInfo` (ECDH P-256,
//!   dhSinglePass-stdDH-sha256kdf-scheme with AES-256 key wrap, RFC 5753).
//!
//! As §4.4.2 says, the key is first placed in a CMS SignedData "signed by the party that
//! generated the private key" — the edge, which signs with its TLS server key (not a CA key:
//! the edge has none, DESIGN.md I-1) — and that SignedData is then enveloped (RFC 5958 §4:
//! eContentType id-ct-KP-aKeyPackage, eContent an AsymmetricKeyPackage holding the one key).
//!
//! Algorithms (§4.4.2: "the server SHOULD use the client's SMIMECapabilities"): when the CSR
//! carries an SMIMECapabilities attribute (RFC 8551 §2.5.2, the client's algorithms in its
//! order of preference), the content encryption is the first listed one of AES-128/192/256-CBC
//! and the key wrap (KEK and ECDH recipients) the first listed one of id-aes128-wrap /
//! id-aes256-wrap that fits (a pre-shared KEK fixes its wrap to its own size); a list that names
//! algorithms of a kind but none of these is refused (400) rather than answered with an
//! algorithm the client said nothing about. Without the attribute, or when it names nothing of a
//! kind: AES-256-CBC, and the wrap matching the KEK (AES-256 wrap for ECDH). AES-GCM needs CMS
//! AuthEnvelopedData (RFC 5083/5084), which the `cms` crate does not model: GCM entries are
//! skipped like any unsupported algorithm. Every buffer that holds the plaintext key or the
//! content-encryption key is `Zeroizing`.

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey};
use aws_lc_rs::cipher::{
    AES_128, AES_192, AES_256, DecryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey,
};
use aws_lc_rs::digest;
use aws_lc_rs::key_wrap::{self, KeyEncryptionKey, KeyWrap};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{Pkcs1PublicEncryptingKey, PublicEncryptingKey};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{
    EncryptedContentInfo, EnvelopedData, KekIdentifier, KekRecipientInfo,
    KeyAgreeRecipientIdentifier, KeyAgreeRecipientInfo, KeyTransRecipientInfo,
    OriginatorIdentifierOrKey, OriginatorPublicKey, RecipientEncryptedKey, RecipientIdentifier,
    RecipientInfo, RecipientInfos,
};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use const_oid::ObjectIdentifier;
use const_oid::db::rfc5911::{ID_ENVELOPED_DATA, ID_SIGNED_DATA};
use const_oid::db::rfc5912::{
    ECDSA_WITH_SHA_256, ID_EC_PUBLIC_KEY, ID_SHA_256, RSA_ENCRYPTION, SECP_256_R_1,
};
use der::asn1::{BitString, ContextSpecific, OctetString, OctetStringRef, SetOfVec};
use der::{Any, Decode, Encode, EncodeValue, Length, TagMode, TagNumber};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_cert::attr::Attribute;
use x509_cert::request::CertReq;
use zeroize::Zeroizing;

use crate::EstError;

/// id-aa-decryptKeyID (RFC 4108 §2.2.5), the symmetric-key request of RFC 7030 §4.4.1.1.
pub const ID_AA_DECRYPT_KEY_ID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.37");
/// id-aa-asymmDecryptKeyID (RFC 7030 §4.4.1.2).
pub const ID_AA_ASYMM_DECRYPT_KEY_ID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.54");
/// id-ct-KP-aKeyPackage (RFC 5958 §3): the eContentType of the signed key package.
pub const ID_CT_KP_AKEY_PACKAGE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.2.1.2.78.5");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
/// smimeCapabilities (RFC 8551 §2.5.2), a CSR attribute here.
pub const ID_SMIME_CAPABILITIES: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.15");
const ID_AES128_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.2");
const ID_AES192_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.22");
const ID_AES256_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");
const ID_AES128_WRAP: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.5");
const ID_AES256_WRAP: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.45");

/// Content-encryption algorithms a client may list that this server does not use (so a list of
/// only these is refused, not ignored): AES-GCM and AES-CCM (AuthEnvelopedData), ChaCha20-
/// Poly1305, DES-EDE3-CBC, RC2-CBC, DES-CBC, Camellia-CBC.
const OTHER_CONTENT_ALGS: [&str; 13] = [
    "2.16.840.1.101.3.4.1.6",
    "2.16.840.1.101.3.4.1.26",
    "2.16.840.1.101.3.4.1.46",
    "2.16.840.1.101.3.4.1.7",
    "2.16.840.1.101.3.4.1.27",
    "2.16.840.1.101.3.4.1.47",
    "1.2.840.113549.1.9.16.3.18",
    "1.2.840.113549.3.7",
    "1.2.840.113549.3.2",
    "1.3.14.3.2.7",
    "1.2.392.200011.61.1.1.1.2",
    "1.2.392.200011.61.1.1.1.3",
    "1.2.392.200011.61.1.1.1.4",
];

/// Key-wrap algorithms a client may list that this server does not use: AES-192 wrap, AES
/// wrap with padding (RFC 5649), 3DES and RC2 wrap, Camellia wrap.
const OTHER_WRAP_ALGS: [&str; 9] = [
    "2.16.840.1.101.3.4.1.25",
    "2.16.840.1.101.3.4.1.8",
    "2.16.840.1.101.3.4.1.28",
    "2.16.840.1.101.3.4.1.48",
    "1.2.840.113549.1.9.16.3.6",
    "1.2.840.113549.1.9.16.3.7",
    "1.2.392.200011.61.1.1.3.2",
    "1.2.392.200011.61.1.1.3.3",
    "1.2.392.200011.61.1.1.3.4",
];
/// dhSinglePass-stdDH-sha256kdf-scheme (RFC 5753 §7.1.4).
const DH_STD_SHA256KDF: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.1.11.1");

/// Content type of the encrypted key part (RFC 7030 §4.4.2).
pub const SERVER_GENERATED_KEY_CONTENT_TYPE: &str =
    "application/pkcs7-mime; smime-type=server-generated-key";

/// What protection a `serverkeygen` CSR asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// Neither attribute: unprotected PKCS#8 over TLS.
    None,
    /// `DecryptKeyIdentifier`: encrypt to the pre-shared symmetric key with this identifier.
    Symmetric(Vec<u8>),
    /// `AsymmetricDecryptKeyIdentifier`: encrypt to the key with this identifier.
    Asymmetric(Vec<u8>),
}

fn single_octets(attr: &Attribute) -> Result<Vec<u8>, EstError> {
    let bad = || EstError::KeyProtection("decrypt key identifier attribute is malformed");
    let mut values = attr.values.iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return Err(bad());
    };
    let os: OctetString = v.decode_as().map_err(|_| bad())?;
    if os.as_bytes().is_empty() {
        return Err(bad());
    }
    Ok(os.as_bytes().to_vec())
}

/// Reads the decrypt-key attributes of a `serverkeygen` CSR. Both at once, or one that does not
/// decode, is refused.
pub fn requested(csr: &CertReq) -> Result<Requested, EstError> {
    let mut out = Requested::None;
    for attr in csr.info.attributes.iter() {
        let next = if attr.oid == ID_AA_DECRYPT_KEY_ID {
            Requested::Symmetric(single_octets(attr)?)
        } else if attr.oid == ID_AA_ASYMM_DECRYPT_KEY_ID {
            Requested::Asymmetric(single_octets(attr)?)
        } else {
            continue;
        };
        if out != Requested::None {
            return Err(EstError::KeyProtection(
                "the CSR names more than one decrypt key",
            ));
        }
        out = next;
    }
    Ok(out)
}

/// Whether `key_id` (an `AsymmetricDecryptKeyIdentifier`) names `cert_der`'s key: its
/// subjectKeyIdentifier extension or, without one, the SHA-1 of its subjectPublicKey (RFC 5280
/// §4.2.1.2 method 1).
pub fn names_certificate(key_id: &[u8], cert_der: &[u8]) -> bool {
    let Ok(cert) = Certificate::from_der(cert_der) else {
        return false;
    };
    let ski = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER)
        .and_then(|e| OctetString::from_der(e.extn_value.as_bytes()).ok())
        .map(|o| o.as_bytes().to_vec());
    let ski = ski.unwrap_or_else(|| {
        let raw = cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes();
        digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, raw)
            .as_ref()
            .to_vec()
    });
    aws_lc_rs::constant_time::verify_slices_are_equal(&ski, key_id).is_ok()
}

/// The key that signs the SignedData around a server-generated key: the edge's TLS server key
/// (ECDSA P-256) and certificate.
pub struct KeySigner {
    cert_der: Vec<u8>,
    /// Intermediates sent along in the SignedData so clients can build the path.
    chain: Vec<Certificate>,
    key: EcdsaKeyPair,
}

impl std::fmt::Debug for KeySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySigner(..)")
    }
}

impl KeySigner {
    /// From the DER certificate and its private key (PKCS#8 or SEC1 DER). Only ECDSA P-256 keys
    /// are supported (what `certgate up` gives the edge); others are an error.
    pub fn new(cert_der: Vec<u8>, key_der: &[u8]) -> Result<Self, EstError> {
        let key = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, key_der)
            .map_err(|_| EstError::Unsupported("the edge TLS key is not an ECDSA P-256 key"))?;
        let cert = Certificate::from_der(&cert_der).map_err(|_| EstError::BadCertificate)?;
        let spki = &cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key;
        if spki.raw_bytes() != key.public_key().as_ref() {
            return Err(EstError::Unsupported(
                "the edge TLS key does not match its certificate",
            ));
        }
        Ok(Self {
            cert_der,
            chain: Vec::new(),
            key,
        })
    }

    /// Adds the certificates (DER) above the signer's, to be sent in the SignedData.
    pub fn with_chain(mut self, chain: &[Vec<u8>]) -> Result<Self, EstError> {
        self.chain = chain
            .iter()
            .map(|c| Certificate::from_der(c).map_err(|_| EstError::BadCertificate))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }
}

/// Checks before anything is issued that `cert_der`'s key is one [`protect`] can encrypt to
/// (RSA, or EC P-256), so a request it cannot answer is refused without minting a certificate.
pub fn supported_recipient(cert_der: &[u8]) -> Result<(), EstError> {
    let cert = Certificate::from_der(cert_der).map_err(|_| EstError::BadCertificate)?;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid == RSA_ENCRYPTION
        || (spki.algorithm.oid == ID_EC_PUBLIC_KEY && curve == Some(SECP_256_R_1))
    {
        Ok(())
    } else {
        Err(EstError::Unsupported(
            "encryption to this key type is not supported (RSA or EC P-256 only)",
        ))
    }
}

/// A content-encryption algorithm this server uses (CMS EnvelopedData, RFC 3565).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentAlg {
    /// AES-128-CBC (id-aes128-CBC).
    Aes128Cbc,
    /// AES-192-CBC (id-aes192-CBC).
    Aes192Cbc,
    /// AES-256-CBC (id-aes256-CBC): the default.
    Aes256Cbc,
}

impl ContentAlg {
    const ALL: [ContentAlg; 3] = [Self::Aes128Cbc, Self::Aes192Cbc, Self::Aes256Cbc];

    /// The algorithm's OID.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Self::Aes128Cbc => ID_AES128_CBC,
            Self::Aes192Cbc => ID_AES192_CBC,
            Self::Aes256Cbc => ID_AES256_CBC,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Self::Aes128Cbc => 16,
            Self::Aes192Cbc => 24,
            Self::Aes256Cbc => 32,
        }
    }
}

/// An AES key-wrap algorithm (RFC 3394, RFC 3565 §2.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrapAlg {
    /// id-aes128-wrap.
    Aes128,
    /// id-aes256-wrap.
    Aes256,
}

impl WrapAlg {
    /// The algorithm's OID.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Self::Aes128 => ID_AES128_WRAP,
            Self::Aes256 => ID_AES256_WRAP,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Self::Aes128 => 16,
            Self::Aes256 => 32,
        }
    }
}

/// The algorithms one encrypted key is delivered with (see the module docs for the choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Algorithms {
    /// Content encryption.
    pub content: ContentAlg,
    /// Key wrap for KEK and ECDH recipients; `None` for RSA key transport.
    pub wrap: Option<WrapAlg>,
}

/// SMIMECapability ::= SEQUENCE { capabilityID OBJECT IDENTIFIER, parameters ANY OPTIONAL }.
#[derive(der::Sequence)]
struct SmimeCapability {
    capability_id: ObjectIdentifier,
    parameters: Option<Any>,
}

/// The CSR's SMIMECapabilities (RFC 8551 §2.5.2): the listed algorithm OIDs in the client's
/// order of preference; `None` without the attribute. More than one attribute or value, or one
/// that does not decode, is refused.
pub fn capabilities(csr: &CertReq) -> Result<Option<Vec<ObjectIdentifier>>, EstError> {
    let bad = || EstError::KeyProtection("the SMIMECapabilities attribute is malformed");
    let mut out = None;
    for attr in csr.info.attributes.iter() {
        if attr.oid != ID_SMIME_CAPABILITIES {
            continue;
        }
        let mut values = attr.values.iter();
        let (Some(v), None, None) = (values.next(), values.next(), &out) else {
            return Err(bad());
        };
        let caps: Vec<SmimeCapability> = v.decode_as().map_err(|_| bad())?;
        out = Some(caps.into_iter().map(|c| c.capability_id).collect());
    }
    Ok(out)
}

fn listed_in(oid: &ObjectIdentifier, table: &[&str]) -> bool {
    table
        .iter()
        .any(|t| ObjectIdentifier::new(t).is_ok_and(|t| t == *oid))
}

/// Chooses the algorithms for encrypting to `to` from the client's SMIMECapabilities `caps`
/// (module docs): per kind (content encryption, key wrap), the first listed one this server can
/// use for this recipient; listed ones of a kind but none usable → 400 (the key is not sent);
/// none of a kind listed, or no attribute → the default.
pub fn choose(
    caps: Option<&[ObjectIdentifier]>,
    to: &Recipient<'_>,
) -> Result<Algorithms, EstError> {
    let caps = caps.unwrap_or_default();
    let content = match caps
        .iter()
        .find_map(|oid| ContentAlg::ALL.into_iter().find(|a| a.oid() == *oid))
    {
        Some(a) => a,
        None if caps.iter().any(|o| listed_in(o, &OTHER_CONTENT_ALGS)) => {
            return Err(EstError::KeyProtection(
                "none of the content-encryption algorithms in the CSR's SMIMECapabilities is supported (AES-128-CBC, AES-192-CBC, AES-256-CBC are)",
            ));
        }
        None => ContentAlg::Aes256Cbc,
    };
    // What the recipient allows, in this server's default order.
    let usable: &[WrapAlg] = match to {
        Recipient::Certificate(der) => {
            let cert = Certificate::from_der(der).map_err(|_| EstError::BadCertificate)?;
            if cert.tbs_certificate.subject_public_key_info.algorithm.oid == RSA_ENCRYPTION {
                return Ok(Algorithms {
                    content,
                    wrap: None,
                });
            }
            &[WrapAlg::Aes256, WrapAlg::Aes128]
        }
        Recipient::Kek { key, .. } => match key.len() {
            16 => &[WrapAlg::Aes128],
            32 => &[WrapAlg::Aes256],
            _ => {
                return Err(EstError::Unsupported(
                    "key-encryption keys must be 16 or 32 bytes",
                ));
            }
        },
    };
    let all_wraps = [WrapAlg::Aes128, WrapAlg::Aes256];
    let listed = caps
        .iter()
        .filter(|o| all_wraps.iter().any(|w| w.oid() == **o) || listed_in(o, &OTHER_WRAP_ALGS));
    let mut any_listed = false;
    for oid in listed {
        any_listed = true;
        if let Some(w) = usable.iter().find(|w| w.oid() == *oid) {
            return Ok(Algorithms {
                content,
                wrap: Some(*w),
            });
        }
    }
    if any_listed {
        return Err(EstError::KeyProtection(match to {
            Recipient::Kek { .. } => {
                "the CSR's SMIMECapabilities do not list the key wrap of this DecryptKeyIdentifier's key (id-aes128-wrap for a 16-byte, id-aes256-wrap for a 32-byte key)"
            }
            Recipient::Certificate(_) => {
                "none of the key-wrap algorithms in the CSR's SMIMECapabilities is supported (id-aes128-wrap, id-aes256-wrap are)"
            }
        }));
    }
    Ok(Algorithms {
        content,
        wrap: usable.first().copied(),
    })
}

/// Whom the key is encrypted to.
pub enum Recipient<'a> {
    /// A certificate (DER) with an RSA or EC P-256 key: the client's TLS client certificate.
    Certificate(&'a [u8]),
    /// A pre-shared AES key (16 or 32 bytes) and its identifier.
    Kek {
        /// The `DecryptKeyIdentifier` value.
        id: &'a [u8],
        /// The key-encryption key.
        key: &'a [u8],
    },
}

fn enc<T>(r: Result<T, der::Error>) -> Result<T, EstError> {
    r.map_err(|_| EstError::Encode)
}

fn crypto<T, E>(r: Result<T, E>) -> Result<T, EstError> {
    r.map_err(|_| EstError::KeyGen)
}

fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute, EstError> {
    Ok(Attribute {
        oid,
        values: enc(SetOfVec::try_from(vec![value]))?,
    })
}

fn alg(oid: ObjectIdentifier) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid,
        parameters: None,
    }
}

/// SignedData (DER, the SEQUENCE itself) over an AsymmetricKeyPackage holding `pkcs8`, signed by
/// `signer`. The key bytes are only ever written into the returned `Zeroizing` buffer: the
/// SignedData is encoded with a zero placeholder of the same length, which is then overwritten.
fn signed_key_package(pkcs8: &[u8], signer: &KeySigner) -> Result<Zeroizing<Vec<u8>>, EstError> {
    // AsymmetricKeyPackage ::= SEQUENCE SIZE (1..MAX) OF OneAsymmetricKey (RFC 5958 §2); a
    // PKCS#8 PrivateKeyInfo is a version-0 OneAsymmetricKey.
    let len = enc(Length::try_from(pkcs8.len()))?;
    let mut pkg = Zeroizing::new(Vec::with_capacity(pkcs8.len() + 8));
    pkg.push(0x30);
    enc(len.encode_to_vec(&mut pkg))?;
    pkg.extend_from_slice(pkcs8);

    let md = digest::digest(&digest::SHA256, &pkg);
    let attrs = enc(SetOfVec::try_from(vec![
        attribute(
            ID_CONTENT_TYPE,
            enc(Any::encode_from(&ID_CT_KP_AKEY_PACKAGE))?,
        )?,
        attribute(
            ID_MESSAGE_DIGEST,
            enc(Any::encode_from(&enc(OctetStringRef::new(md.as_ref()))?))?,
        )?,
    ]))?;
    let tbs = enc(attrs.to_der())?;
    let sig = crypto(signer.key.sign(&SystemRandom::new(), &tbs))?;
    let cert = Certificate::from_der(&signer.cert_der).map_err(|_| EstError::BadCertificate)?;
    let si = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: cert.tbs_certificate.issuer.clone(),
            serial_number: cert.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: alg(ID_SHA_256),
        signed_attrs: Some(attrs),
        signature_algorithm: alg(ECDSA_WITH_SHA_256),
        signature: enc(OctetString::new(sig.as_ref()))?,
        unsigned_attrs: None,
    };
    let placeholder = vec![0u8; pkg.len()];
    let encap = EncapsulatedContentInfo {
        econtent_type: ID_CT_KP_AKEY_PACKAGE,
        econtent: Some(enc(Any::encode_from(&enc(OctetString::new(placeholder))?))?),
    };
    let sd = SignedData {
        // v3: eContentType is not id-data (RFC 5652 §5.1).
        version: CmsVersion::V3,
        digest_algorithms: enc(SetOfVec::try_from(vec![alg(ID_SHA_256)]))?,
        encap_content_info: encap,
        certificates: Some(enc(CertificateSet::try_from(
            std::iter::once(cert)
                .chain(signer.chain.iter().cloned())
                .map(CertificateChoices::Certificate)
                .collect::<Vec<_>>(),
        ))?),
        crls: None,
        signer_infos: SignerInfos(enc(SetOfVec::try_from(vec![si]))?),
    };
    // Room for the CBC padding too, so encrypting in place never reallocates (a reallocation
    // would leave a plaintext copy behind in freed memory).
    let total = usize::try_from(enc(sd.encoded_len())?).map_err(|_| EstError::Encode)?;
    let mut out = Zeroizing::new(Vec::with_capacity(total + 16));
    enc(sd.encode_to_vec(&mut out))?;
    // Where the placeholder sits: after the SEQUENCE header, version and digestAlgorithms, at
    // the end of encapContentInfo.
    let value_len = usize::try_from(enc(sd.value_len())?).map_err(|_| EstError::Encode)?;
    let header = out.len() - value_len;
    let before = usize::try_from(enc(sd.version.encoded_len())?).map_err(|_| EstError::Encode)?
        + usize::try_from(enc(sd.digest_algorithms.encoded_len())?)
            .map_err(|_| EstError::Encode)?;
    let encap_len =
        usize::try_from(enc(sd.encap_content_info.encoded_len())?).map_err(|_| EstError::Encode)?;
    let end = header + before + encap_len;
    let start = end.checked_sub(pkg.len()).ok_or(EstError::Encode)?;
    let slot = out.get_mut(start..end).ok_or(EstError::Encode)?;
    if slot.iter().any(|b| *b != 0) {
        return Err(EstError::Encode);
    }
    slot.copy_from_slice(&pkg);
    Ok(out)
}

/// ANSI X9.63 KDF with SHA-256 for 32 bytes (one block), as RFC 5753 §7.2 uses it.
fn x963_sha256(z: &[u8], shared_info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(z);
    ctx.update(&1u32.to_be_bytes());
    ctx.update(shared_info);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// ECC-CMS-SharedInfo (RFC 5753 §7.2) for the `wrap` key wrap, without ukm.
fn ecc_cms_shared_info(wrap: WrapAlg) -> Result<Vec<u8>, EstError> {
    #[derive(der::Sequence)]
    struct EccCmsSharedInfo {
        key_info: AlgorithmIdentifierOwned,
        supp_pub_info: ContextSpecific<OctetString>,
    }
    enc(EccCmsSharedInfo {
        key_info: alg(wrap.oid()),
        supp_pub_info: ContextSpecific {
            tag_number: TagNumber::N2,
            tag_mode: TagMode::Explicit,
            value: enc(OctetString::new(
                u32::try_from(wrap.key_len() * 8)
                    .map_err(|_| EstError::Encode)?
                    .to_be_bytes()
                    .to_vec(),
            ))?,
        },
    }
    .to_der())
}

fn wrap_cek(kek: &[u8], cek: &[u8]) -> Result<Vec<u8>, EstError> {
    let mut out = vec![0u8; cek.len() + 8];
    let n = match kek.len() {
        16 => crypto(KeyEncryptionKey::new(&key_wrap::AES_128, kek))?,
        32 => crypto(KeyEncryptionKey::new(&key_wrap::AES_256, kek))?,
        _ => {
            return Err(EstError::Unsupported(
                "key-encryption keys must be 16 or 32 bytes",
            ));
        }
    }
    .wrap(cek, &mut out)
    .map_err(|_| EstError::KeyGen)?
    .len();
    out.truncate(n);
    Ok(out)
}

fn recipient_info(
    to: &Recipient<'_>,
    cek: &[u8],
    wrap: Option<WrapAlg>,
) -> Result<RecipientInfo, EstError> {
    match to {
        Recipient::Kek { id, key } => {
            let wrap_alg = match wrap {
                Some(w) if w.key_len() == key.len() => w.oid(),
                None if key.len() == 16 => ID_AES128_WRAP,
                None if key.len() == 32 => ID_AES256_WRAP,
                _ => {
                    return Err(EstError::Unsupported(
                        "key-encryption keys must be 16 or 32 bytes and match the key wrap",
                    ));
                }
            };
            Ok(RecipientInfo::Kekri(KekRecipientInfo {
                version: CmsVersion::V4,
                kek_id: KekIdentifier {
                    kek_identifier: enc(OctetString::new(id.to_vec()))?,
                    date: None,
                    other: None,
                },
                key_enc_alg: alg(wrap_alg),
                encrypted_key: enc(OctetString::new(wrap_cek(key, cek)?))?,
            }))
        }
        Recipient::Certificate(der) => {
            let cert = Certificate::from_der(der).map_err(|_| EstError::BadCertificate)?;
            let tbs = &cert.tbs_certificate;
            let ias = IssuerAndSerialNumber {
                issuer: tbs.issuer.clone(),
                serial_number: tbs.serial_number.clone(),
            };
            let spki = &tbs.subject_public_key_info;
            if spki.algorithm.oid == RSA_ENCRYPTION {
                let spki_der = enc(spki.to_der())?;
                let rsa = PublicEncryptingKey::from_der(&spki_der)
                    .map_err(|_| EstError::Unsupported("the RSA recipient key is not usable"))?;
                let rsa = crypto(Pkcs1PublicEncryptingKey::new(rsa))?;
                let mut out = vec![0u8; rsa.ciphertext_size()];
                let ek = crypto(rsa.encrypt(cek, &mut out))?.to_vec();
                return Ok(RecipientInfo::Ktri(KeyTransRecipientInfo {
                    version: CmsVersion::V0,
                    rid: RecipientIdentifier::IssuerAndSerialNumber(ias),
                    key_enc_alg: AlgorithmIdentifierOwned {
                        oid: RSA_ENCRYPTION,
                        parameters: Some(Any::null()),
                    },
                    enc_key: enc(OctetString::new(ek))?,
                }));
            }
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            if spki.algorithm.oid != ID_EC_PUBLIC_KEY || curve != Some(SECP_256_R_1) {
                return Err(EstError::Unsupported(
                    "encryption to this key type is not supported (RSA or EC P-256 only)",
                ));
            }
            let rng = SystemRandom::new();
            let eph = crypto(EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng))?;
            let eph_pub = crypto(eph.compute_public_key())?;
            let wrap = wrap.unwrap_or(WrapAlg::Aes256);
            let shared_info = ecc_cms_shared_info(wrap)?;
            let peer =
                UnparsedPublicKey::new(&agreement::ECDH_P256, spki.subject_public_key.raw_bytes());
            let kek = agreement::agree_ephemeral(eph, peer, EstError::KeyGen, |z| {
                Ok(x963_sha256(z, &shared_info))
            })?;
            let kek = kek.get(..wrap.key_len()).ok_or(EstError::KeyGen)?;
            let ek = wrap_cek(kek, cek)?;
            Ok(RecipientInfo::Kari(KeyAgreeRecipientInfo {
                version: CmsVersion::V3,
                originator: OriginatorIdentifierOrKey::OriginatorKey(OriginatorPublicKey {
                    algorithm: alg(ID_EC_PUBLIC_KEY),
                    public_key: enc(BitString::from_bytes(eph_pub.as_ref()))?,
                }),
                ukm: None,
                key_enc_alg: AlgorithmIdentifierOwned {
                    oid: DH_STD_SHA256KDF,
                    parameters: Some(enc(Any::encode_from(&alg(wrap.oid())))?),
                },
                recipient_enc_keys: vec![RecipientEncryptedKey {
                    rid: KeyAgreeRecipientIdentifier::IssuerAndSerialNumber(ias),
                    enc_key: enc(OctetString::new(ek))?,
                }],
            }))
        }
    }
}

/// The `server-generated-key` part (RFC 7030 §4.4.2): `pkcs8` in a SignedData signed by
/// `signer`, enveloped for `to` with `algs` (from [`choose`]). Returns the EnvelopedData
/// ContentInfo, DER. The plaintext and the content-encryption key are zeroized before returning.
pub fn protect(
    pkcs8: &[u8],
    signer: &KeySigner,
    to: &Recipient<'_>,
    algs: Algorithms,
) -> Result<Vec<u8>, EstError> {
    let mut buf = signed_key_package(pkcs8, signer)?;
    let mut cek_buf = Zeroizing::new([0u8; 32]);
    let cek = cek_buf
        .get_mut(..algs.content.key_len())
        .ok_or(EstError::KeyGen)?;
    crypto(SystemRandom::new().fill(cek))?;
    let cek: &[u8] = cek;
    let ri = recipient_info(to, cek, algs.wrap)?;
    let cipher = match algs.content {
        ContentAlg::Aes128Cbc => &AES_128,
        ContentAlg::Aes192Cbc => &AES_192,
        ContentAlg::Aes256Cbc => &AES_256,
    };
    let key = crypto(UnboundCipherKey::new(cipher, cek))?;
    let aes = crypto(PaddedBlockEncryptingKey::cbc_pkcs7(key))?;
    // Encrypted in place: afterwards `buf` holds only ciphertext (and is zeroized anyway).
    let ctx = crypto(aes.encrypt(&mut *buf))?;
    let DecryptionContext::Iv128(iv) = ctx else {
        return Err(EstError::KeyGen);
    };
    let iv: [u8; 16] = iv.try_into().map_err(|_| EstError::KeyGen)?;
    let version = match ri {
        RecipientInfo::Ktri(_) => CmsVersion::V0,
        _ => CmsVersion::V2,
    };
    let ed = EnvelopedData {
        version,
        originator_info: None,
        recip_infos: RecipientInfos(enc(SetOfVec::try_from(vec![ri]))?),
        encrypted_content: EncryptedContentInfo {
            content_type: ID_SIGNED_DATA,
            content_enc_alg: AlgorithmIdentifierOwned {
                oid: algs.content.oid(),
                parameters: Some(enc(Any::encode_from(&enc(OctetString::new(iv.to_vec()))?))?),
            },
            encrypted_content: Some(enc(OctetString::new(buf.to_vec()))?),
        },
        unprotected_attrs: None,
    };
    enc(ContentInfo {
        content_type: ID_ENVELOPED_DATA,
        content: enc(Any::encode_from(&ed))?,
    }
    .to_der())
}

/// The `serverkeygen` answer body with the encrypted key part (RFC 7030 §4.4.2): the
/// EnvelopedData as `application/pkcs7-mime; smime-type=server-generated-key`, then the
/// certificate as certs-only CMS, both base64 on one line. Holds no plaintext key.
pub fn encrypted_multipart(boundary: &str, enveloped: &[u8], cert_cms: &[u8]) -> Vec<u8> {
    format!(
        "--{boundary}\r\nContent-Type: {SERVER_GENERATED_KEY_CONTENT_TYPE}\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--{boundary}\r\n\
         Content-Type: application/pkcs7-mime; smime-type=certs-only\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--{boundary}--\r\n",
        STANDARD.encode(enveloped),
        STANDARD.encode(cert_cms)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn openssl(args: &[&str], dir: &Path) -> std::process::Output {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs")
    }

    fn ok(out: std::process::Output) {
        assert!(
            out.status.success(),
            "openssl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        STANDARD.decode(b64).expect("pem base64")
    }

    /// An edge signer (P-256, rcgen) and a fresh server-generated key (PKCS#8).
    fn signer_and_key() -> (KeySigner, Zeroizing<Vec<u8>>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["edge.test".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let signer = KeySigner::new(cert.der().to_vec(), &key.serialize_der()).expect("signer");
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
                .expect("generates");
        (signer, Zeroizing::new(doc.as_ref().to_vec()))
    }

    /// Decrypts `env` with `decrypt_args` (real OpenSSL), checks the SignedData signature with
    /// `openssl cms -verify` and returns the one key of the AsymmetricKeyPackage.
    fn open(env: &[u8], dir: &Path, decrypt_args: &[&str]) -> Result<Vec<u8>, String> {
        std::fs::write(dir.join("env.der"), env).expect("write");
        let mut args = vec!["cms", "-decrypt", "-inform", "DER", "-in", "env.der"];
        args.extend_from_slice(decrypt_args);
        args.extend_from_slice(&["-out", "sd.der"]);
        let out = openssl(&args, dir);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let sd = std::fs::read(dir.join("sd.der")).expect("sd");
        let ci = ContentInfo {
            content_type: ID_SIGNED_DATA,
            content: Any::from_der(&sd).expect("SignedData DER"),
        };
        std::fs::write(dir.join("ci.der"), ci.to_der().expect("der")).expect("write");
        ok(openssl(
            &[
                "cms",
                "-verify",
                "-inform",
                "DER",
                "-in",
                "ci.der",
                "-noverify",
                "-out",
                "pkg.der",
            ],
            dir,
        ));
        let parsed = SignedData::from_der(&sd).expect("SignedData parses");
        assert_eq!(
            parsed.encap_content_info.econtent_type,
            ID_CT_KP_AKEY_PACKAGE
        );
        let pkg = std::fs::read(dir.join("pkg.der")).expect("pkg");
        let keys: Vec<Any> = Vec::from_der(&pkg).expect("AsymmetricKeyPackage");
        assert_eq!(keys.len(), 1);
        Ok(keys[0].to_der().expect("der"))
    }

    fn client_cert(dir: &Path, newkey: &[&str]) {
        let mut args = vec![
            "req",
            "-x509",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=client",
        ];
        args.extend_from_slice(newkey);
        args.extend_from_slice(&["-keyout", "k.pem", "-out", "c.pem"]);
        ok(openssl(&args, dir));
    }

    #[test]
    fn rsa_recipient_key_transport_opens_with_openssl() {
        let dir = tempfile::tempdir().expect("tmp");
        client_cert(dir.path(), &["-newkey", "rsa:2048"]);
        let cert = pem_der(&std::fs::read_to_string(dir.path().join("c.pem")).expect("c"));
        let (signer, pkcs8) = signer_and_key();
        let to = Recipient::Certificate(&cert);
        let env = protect(&pkcs8, &signer, &to, default_algs(&to)).expect("protects");
        let key = open(&env, dir.path(), &["-recip", "c.pem", "-inkey", "k.pem"]).expect("opens");
        assert_eq!(key, *pkcs8);
        // Another RSA key cannot open it.
        let other = tempfile::tempdir().expect("tmp");
        client_cert(other.path(), &["-newkey", "rsa:2048"]);
        std::fs::copy(dir.path().join("c.pem"), other.path().join("c.pem")).expect("copy");
        assert!(open(&env, other.path(), &["-recip", "c.pem", "-inkey", "k.pem"]).is_err());
    }

    #[test]
    fn ec_recipient_key_agreement_opens_with_openssl() {
        let dir = tempfile::tempdir().expect("tmp");
        client_cert(
            dir.path(),
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        let cert = pem_der(&std::fs::read_to_string(dir.path().join("c.pem")).expect("c"));
        let (signer, pkcs8) = signer_and_key();
        let to = Recipient::Certificate(&cert);
        let env = protect(&pkcs8, &signer, &to, default_algs(&to)).expect("protects");
        let key = open(&env, dir.path(), &["-recip", "c.pem", "-inkey", "k.pem"]).expect("opens");
        assert_eq!(key, *pkcs8);
    }

    #[test]
    fn kek_recipient_opens_with_openssl_secret_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let (signer, pkcs8) = signer_and_key();
        for kek in [[7u8; 16].to_vec(), [9u8; 32].to_vec()] {
            let id = b"device-kek-1";
            let to = Recipient::Kek { id, key: &kek };
            let env = protect(&pkcs8, &signer, &to, default_algs(&to)).expect("protects");
            let key_hex = hex(&kek);
            let id_hex = hex(id);
            let key = open(
                &env,
                dir.path(),
                &["-secretkey", &key_hex, "-secretkeyid", &id_hex],
            )
            .expect("opens");
            assert_eq!(key, *pkcs8);
            let wrong = hex(&vec![1u8; kek.len()]);
            assert!(
                open(
                    &env,
                    dir.path(),
                    &["-secretkey", &wrong, "-secretkeyid", &id_hex]
                )
                .is_err()
            );
        }
        let odd = Recipient::Kek {
            id: b"x",
            key: &[1; 24],
        };
        assert!(matches!(choose(None, &odd), Err(EstError::Unsupported(_))));
        let bad = protect(
            &pkcs8,
            &signer,
            &odd,
            Algorithms {
                content: ContentAlg::Aes256Cbc,
                wrap: None,
            },
        );
        assert!(matches!(bad, Err(EstError::Unsupported(_))));
    }

    fn default_algs(to: &Recipient<'_>) -> Algorithms {
        choose(None, to).expect("defaults")
    }

    fn oids(list: &[&str]) -> Vec<ObjectIdentifier> {
        list.iter()
            .map(|o| ObjectIdentifier::new(o).expect("oid"))
            .collect()
    }

    const AES128_CBC: &str = "2.16.840.1.101.3.4.1.2";
    const AES192_CBC: &str = "2.16.840.1.101.3.4.1.22";
    const AES256_CBC: &str = "2.16.840.1.101.3.4.1.42";
    const AES128_GCM: &str = "2.16.840.1.101.3.4.1.6";
    const AES256_GCM: &str = "2.16.840.1.101.3.4.1.46";
    const DES_EDE3_CBC: &str = "1.2.840.113549.3.7";
    const AES128_WRAP: &str = "2.16.840.1.101.3.4.1.5";
    const AES192_WRAP: &str = "2.16.840.1.101.3.4.1.25";
    const AES256_WRAP: &str = "2.16.840.1.101.3.4.1.45";
    const SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";

    /// The content-encryption and key-wrap OIDs an EnvelopedData was really made with.
    fn used_algorithms(env: &[u8]) -> (ObjectIdentifier, Option<ObjectIdentifier>) {
        let ci = ContentInfo::from_der(env).expect("ContentInfo");
        let ed: EnvelopedData = ci.content.decode_as().expect("EnvelopedData");
        let content = ed.encrypted_content.content_enc_alg.oid;
        let ri = ed.recip_infos.0.iter().next().expect("one recipient");
        let wrap = match ri {
            RecipientInfo::Kekri(k) => Some(k.key_enc_alg.oid),
            RecipientInfo::Kari(k) => Some(
                k.key_enc_alg
                    .parameters
                    .as_ref()
                    .expect("wrap parameter")
                    .decode_as::<AlgorithmIdentifierOwned>()
                    .expect("wrap alg")
                    .oid,
            ),
            _ => None,
        };
        (content, wrap)
    }

    #[test]
    fn the_first_supported_algorithm_of_the_clients_list_is_chosen() {
        let kek16 = Recipient::Kek {
            id: b"k",
            key: &[1; 16],
        };
        let kek32 = Recipient::Kek {
            id: b"k",
            key: &[1; 32],
        };
        // Absent, or naming nothing of a kind: the defaults.
        let d = choose(None, &kek32).expect("default");
        assert_eq!(
            (d.content, d.wrap),
            (ContentAlg::Aes256Cbc, Some(WrapAlg::Aes256))
        );
        let d = choose(Some(&oids(&[SHA256_WITH_RSA])), &kek16).expect("default");
        assert_eq!(
            (d.content, d.wrap),
            (ContentAlg::Aes256Cbc, Some(WrapAlg::Aes128))
        );
        // The client's order, unsupported entries skipped.
        let list = oids(&[AES256_GCM, DES_EDE3_CBC, AES128_CBC, AES256_CBC]);
        assert_eq!(
            choose(Some(&list), &kek16).expect("ok").content,
            ContentAlg::Aes128Cbc
        );
        let list = oids(&[AES192_CBC, AES128_CBC]);
        assert_eq!(
            choose(Some(&list), &kek16).expect("ok").content,
            ContentAlg::Aes192Cbc
        );
        // A KEK's wrap is its own size; it must be among the listed wraps, if any are listed.
        let list = oids(&[AES192_WRAP, AES256_WRAP, AES128_WRAP]);
        assert_eq!(
            choose(Some(&list), &kek16).expect("ok").wrap,
            Some(WrapAlg::Aes128)
        );
        assert_eq!(
            choose(Some(&list), &kek32).expect("ok").wrap,
            Some(WrapAlg::Aes256)
        );
        assert!(matches!(
            choose(Some(&oids(&[AES256_WRAP])), &kek16),
            Err(EstError::KeyProtection(_))
        ));
        // Only unsupported algorithms of a kind: refused, never a silent default.
        for list in [
            oids(&[AES128_GCM, AES256_GCM]),
            oids(&[DES_EDE3_CBC]),
            oids(&[AES256_CBC, AES192_WRAP]),
        ] {
            assert!(
                matches!(choose(Some(&list), &kek32), Err(EstError::KeyProtection(_))),
                "{list:?}"
            );
        }
    }

    fn csr_with_capabilities(list: &[&str]) -> CertReq {
        let mut csr = csr_with(&[]);
        let caps: Vec<SmimeCapability> = oids(list)
            .into_iter()
            .map(|capability_id| SmimeCapability {
                capability_id,
                parameters: None,
            })
            .collect();
        let a =
            attribute(ID_SMIME_CAPABILITIES, Any::encode_from(&caps).expect("any")).expect("attr");
        csr.info.attributes.insert(a).expect("insert");
        csr
    }

    #[test]
    fn capabilities_are_read_from_the_csr_in_order() {
        assert_eq!(capabilities(&csr_with(&[])), Ok(None));
        let csr = csr_with_capabilities(&[AES128_CBC, AES256_WRAP, AES256_CBC]);
        // Through DER and back, as the edge receives it.
        let csr = CertReq::from_der(&csr.to_der().expect("der")).expect("parses");
        assert_eq!(
            capabilities(&csr),
            Ok(Some(oids(&[AES128_CBC, AES256_WRAP, AES256_CBC])))
        );
        // Not a SEQUENCE OF SMIMECapability: malformed.
        let mut bad = csr_with(&[]);
        bad.info
            .attributes
            .insert(
                attribute(
                    ID_SMIME_CAPABILITIES,
                    Any::encode_from(&OctetStringRef::new(b"x").expect("os")).expect("any"),
                )
                .expect("attr"),
            )
            .expect("insert");
        assert!(matches!(
            capabilities(&bad),
            Err(EstError::KeyProtection(_))
        ));
    }

    /// Every content-encryption and wrap choice, for every recipient kind, opens with OpenSSL,
    /// and the EnvelopedData names what the client's list chose.
    #[test]
    fn every_chosen_variant_opens_with_openssl() {
        let (signer, pkcs8) = signer_and_key();
        let rsa = tempfile::tempdir().expect("tmp");
        client_cert(rsa.path(), &["-newkey", "rsa:2048"]);
        let ec = tempfile::tempdir().expect("tmp");
        client_cert(
            ec.path(),
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        let rsa_cert = pem_der(&std::fs::read_to_string(rsa.path().join("c.pem")).expect("c"));
        let ec_cert = pem_der(&std::fs::read_to_string(ec.path().join("c.pem")).expect("c"));
        let kek_dir = tempfile::tempdir().expect("tmp");
        let (k16, k32) = ([5u8; 16], [6u8; 32]);
        let id = b"kek-id";
        let id_hex = hex(id);
        let (k16_hex, k32_hex) = (hex(&k16), hex(&k32));
        let recip = ["-recip", "c.pem", "-inkey", "k.pem"];
        for content in [AES128_CBC, AES192_CBC, AES256_CBC] {
            for wrap in [AES128_WRAP, AES256_WRAP] {
                // The client prefers GCM (skipped), then `content`; then `wrap`.
                let list = oids(&[AES256_GCM, content, AES192_WRAP, wrap, AES256_CBC]);
                let cases: Vec<(Recipient<'_>, &Path, Vec<&str>, Option<&str>)> = vec![
                    (
                        Recipient::Certificate(&rsa_cert),
                        rsa.path(),
                        recip.to_vec(),
                        None,
                    ),
                    (
                        Recipient::Certificate(&ec_cert),
                        ec.path(),
                        recip.to_vec(),
                        Some(wrap),
                    ),
                    (
                        Recipient::Kek { id, key: &k16 },
                        kek_dir.path(),
                        vec!["-secretkey", &k16_hex, "-secretkeyid", &id_hex],
                        Some(AES128_WRAP),
                    ),
                    (
                        Recipient::Kek { id, key: &k32 },
                        kek_dir.path(),
                        vec!["-secretkey", &k32_hex, "-secretkeyid", &id_hex],
                        Some(AES256_WRAP),
                    ),
                ];
                for (to, dir, args, want_wrap) in cases {
                    // A KEK of the other size than `wrap`: the listed wrap does not fit it, so
                    // the list is refused (the KEK's own wrap is not listed).
                    let algs = match choose(Some(&list), &to) {
                        Ok(a) => a,
                        Err(EstError::KeyProtection(_)) => {
                            assert_ne!(want_wrap, Some(wrap), "{content} {wrap}");
                            continue;
                        }
                        Err(e) => panic!("{content} {wrap}: {e}"),
                    };
                    let env = protect(&pkcs8, &signer, &to, algs).expect("protects");
                    let (c, w) = used_algorithms(&env);
                    assert_eq!(c.to_string(), content);
                    assert_eq!(w.map(|w| w.to_string()).as_deref(), want_wrap);
                    let key = open(&env, dir, &args)
                        .unwrap_or_else(|e| panic!("{content} {wrap} {want_wrap:?}: {e}"));
                    assert_eq!(key, *pkcs8, "{content} {wrap}");
                }
            }
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn csr_with(attrs: &[(ObjectIdentifier, &[u8])]) -> CertReq {
        let key = rcgen::KeyPair::generate().expect("key");
        let der = rcgen::CertificateParams::new(vec!["d.example".into()])
            .expect("p")
            .serialize_request(&key)
            .expect("csr")
            .der()
            .to_vec();
        let mut csr = CertReq::from_der(&der).expect("parses");
        for (oid, v) in attrs {
            let a = attribute(
                *oid,
                Any::encode_from(&OctetStringRef::new(v).expect("os")).expect("any"),
            )
            .expect("attr");
            csr.info.attributes.insert(a).expect("insert");
        }
        csr
    }

    #[test]
    fn requested_protection_is_read_from_the_csr() {
        assert_eq!(requested(&csr_with(&[])), Ok(Requested::None));
        assert_eq!(
            requested(&csr_with(&[(ID_AA_DECRYPT_KEY_ID, b"kid")])),
            Ok(Requested::Symmetric(b"kid".to_vec()))
        );
        assert_eq!(
            requested(&csr_with(&[(ID_AA_ASYMM_DECRYPT_KEY_ID, b"ski")])),
            Ok(Requested::Asymmetric(b"ski".to_vec()))
        );
        assert!(matches!(
            requested(&csr_with(&[
                (ID_AA_DECRYPT_KEY_ID, b"kid"),
                (ID_AA_ASYMM_DECRYPT_KEY_ID, b"ski")
            ])),
            Err(EstError::KeyProtection(_))
        ));
        assert!(matches!(
            requested(&csr_with(&[(ID_AA_DECRYPT_KEY_ID, b"")])),
            Err(EstError::KeyProtection(_))
        ));
    }

    #[test]
    fn asymmetric_key_id_must_name_the_certificate() {
        // With a subjectKeyIdentifier extension: its value.
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec!["c.example".into()]).expect("p");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(vec![1, 2, 3, 4]);
        let cert = p.self_signed(&key).expect("cert");
        assert!(names_certificate(&[1, 2, 3, 4], cert.der()));
        assert!(!names_certificate(&[1, 2, 3, 5], cert.der()));
        assert!(!names_certificate(&[1, 2, 3, 4], b"garbage"));
        // Without one: SHA-1 of the subjectPublicKey.
        let plain = rcgen::CertificateParams::new(vec!["c.example".into()])
            .expect("p")
            .self_signed(&key)
            .expect("cert");
        let parsed = Certificate::from_der(plain.der()).expect("parses");
        assert!(
            parsed
                .tbs_certificate
                .extensions
                .iter()
                .flatten()
                .all(|e| e.extn_id != const_oid::db::rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER)
        );
        let sha1 = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, key.public_key_raw());
        assert!(names_certificate(sha1.as_ref(), plain.der()));
        assert!(!names_certificate(&[1, 2, 3, 4], plain.der()));
    }
}
