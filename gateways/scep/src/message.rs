//! PKIOperation request parsing: SignedData → signed attributes → signature check →
//! EnvelopedData → (CEK from the RA) → content.

use crate::{FailInfo, ReplyTo, ScepError, lenient, oids};
use aws_lc_rs::cipher::{
    AES_128, AES_192, AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey,
};
use aws_lc_rs::signature::{self, UnparsedPublicKey};
use cms::content_info::ContentInfo;
use cms::enveloped_data::{EnvelopedData, RecipientInfo};
use const_oid::ObjectIdentifier;
use der::asn1::{OctetString, PrintableString};
use der::{Decode, Encode, Tagged};
use sha2::Digest as _;
use x509_cert::Certificate;
use x509_cert::name::Name;
use x509_cert::request::CertReq;
use zeroize::Zeroizing;

/// Upper bound on a PKIOperation message (DER); larger input is refused before parsing.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// How far a request's signingTime may be from the gateway's clock before it is refused with
/// badTime (RFC 8894 §3.2.1.4.5) by [`parse_pki_message_at`]: generous enough for devices
/// whose clocks drift, tight enough that a captured request cannot be replayed days later.
pub const DEFAULT_SIGNING_TIME_SKEW: std::time::Duration = std::time::Duration::from_secs(600);

/// The SCEP messageType values (RFC 8894 §3.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// CertRep (3).
    CertRep,
    /// RenewalReq (17).
    RenewalReq,
    /// PKCSReq (19).
    PkcsReq,
    /// CertPoll / GetCertInitial (20).
    CertPoll,
    /// GetCert (21).
    GetCert,
    /// GetCRL (22).
    GetCrl,
}

impl MessageType {
    /// The messageType attribute value ("19" for PKCSReq, …).
    pub fn code(self) -> &'static str {
        match self {
            Self::CertRep => "3",
            Self::RenewalReq => "17",
            Self::PkcsReq => "19",
            Self::CertPoll => "20",
            Self::GetCert => "21",
            Self::GetCrl => "22",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "3" => Self::CertRep,
            "17" => Self::RenewalReq,
            "19" => Self::PkcsReq,
            "20" => Self::CertPoll,
            "21" => Self::GetCert,
            "22" => Self::GetCrl,
            _ => return None,
        })
    }
}

/// The digest the client used; the CertRep answers with the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlg {
    /// SHA-1 (legacy clients only).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl DigestAlg {
    fn from_oid(oid: &ObjectIdentifier) -> Option<Self> {
        Some(match *oid {
            oids::SHA1 => Self::Sha1,
            oids::SHA256 => Self::Sha256,
            oids::SHA384 => Self::Sha384,
            oids::SHA512 => Self::Sha512,
            _ => return None,
        })
    }
    /// The algorithm's OID.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Self::Sha1 => oids::SHA1,
            Self::Sha256 => oids::SHA256,
            Self::Sha384 => oids::SHA384,
            Self::Sha512 => oids::SHA512,
        }
    }
    /// The name used in `Scep.SignAttributes` ("sha256", …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }
    /// The algorithm [`DigestAlg::name`] names.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "sha1" => Self::Sha1,
            "sha256" => Self::Sha256,
            "sha384" => Self::Sha384,
            "sha512" => Self::Sha512,
            _ => return None,
        })
    }
    /// Hashes `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Self::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Self::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Self::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
    fn rsa_verify_alg(self) -> &'static signature::RsaParameters {
        match self {
            Self::Sha1 => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Self::Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Self::Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        }
    }
}

/// The encrypted content-encryption key addressed to the RA: what the edge sends to
/// `Scep.DecryptKey`.
#[derive(Debug, Clone)]
pub struct KeyTransport {
    /// KeyTransRecipientInfo.encryptedKey.
    pub encrypted_key: Vec<u8>,
    /// KeyTransRecipientInfo.keyEncryptionAlgorithm, DER.
    pub key_encryption_alg_der: Vec<u8>,
}

/// An issuer and serial number (GetCert, GetCRL, and the signer identifier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerAndSerial {
    /// Issuer name, DER.
    pub issuer_der: Vec<u8>,
    /// Serial number, big-endian bytes as encoded.
    pub serial: Vec<u8>,
}

/// The decrypted content of a request, by message type.
#[derive(Debug)]
pub enum RequestContent {
    /// PKCSReq / RenewalReq: the PKCS#10 request.
    CertRequest {
        /// The CSR, DER.
        csr_der: Vec<u8>,
        /// The challengePassword attribute, if any (a secret: zeroized on drop).
        challenge: Option<Zeroizing<Vec<u8>>>,
    },
    /// CertPoll: IssuerAndSubject.
    Poll {
        /// Issuer name, DER.
        issuer_der: Vec<u8>,
        /// Subject name, DER.
        subject_der: Vec<u8>,
    },
    /// GetCert / GetCRL: IssuerAndSerialNumber.
    IssuerSerial(IssuerAndSerial),
}

/// A parsed, signature-checked PKIOperation request whose content is still encrypted.
#[derive(Debug, Clone)]
pub struct PkiMessage {
    /// messageType.
    pub message_type: MessageType,
    /// transactionID (PrintableString).
    pub transaction_id: String,
    /// senderNonce (echoed as the CertRep's recipientNonce).
    pub sender_nonce: Vec<u8>,
    /// The certificate that signed the message (self-signed for PKCSReq), DER.
    pub signer_cert_der: Vec<u8>,
    /// The signer's SubjectPublicKeyInfo, DER (input of the idempotency key).
    pub signer_spki_der: Vec<u8>,
    /// The signer's issuer and serial number.
    pub signer_id: IssuerAndSerial,
    /// The client's digest algorithm.
    pub digest: DigestAlg,
    enveloped: Vec<u8>,
}

fn bad(fail: FailInfo, why: impl Into<String>) -> ScepError {
    ScepError::new(fail, why)
}

fn printable(v: &der::Any) -> Option<String> {
    if let Ok(p) = v.decode_as::<PrintableString>() {
        return Some(p.as_str().to_owned());
    }
    // Some clients use UTF8String or IA5String.
    std::str::from_utf8(v.value()).ok().map(str::to_owned)
}

fn octets(v: &der::Any) -> Option<Vec<u8>> {
    v.decode_as::<OctetString>()
        .ok()
        .map(|o| o.as_bytes().to_vec())
}

/// Parses a PKIOperation message and verifies the client's signature with the signer
/// certificate inside it. Errors carry the failInfo to answer with and, when the message's
/// transactionID and senderNonce could be read, [`ScepError::reply_to`] so that the answer can
/// be a CertRep FAILURE rather than an HTTP error (RFC 8894 §3.3.2.2).
pub fn parse_pki_message(der_bytes: &[u8]) -> Result<PkiMessage, ScepError> {
    parse_verified(der_bytes).map(|(m, _)| m).map_err(|mut e| {
        if der_bytes.len() <= MAX_MESSAGE_LEN {
            e.reply_to = reply_to(der_bytes).map(Box::new);
        }
        e
    })
}

/// [`parse_pki_message`], and then the signingTime signed attribute (RFC 5652 §11.3, UTCTime or
/// GeneralizedTime), when the client sent one, must lie within `max_skew` of `now`: otherwise
/// the message is refused with badTime (RFC 8894 §3.2.1.4.5), addressed for a CertRep FAILURE.
/// The time is judged only after the signature verified, so a forged time cannot make a valid
/// request fail. Without signingTime the message is accepted (RFC 8894 does not require it).
pub fn parse_pki_message_at(
    der_bytes: &[u8],
    now: std::time::SystemTime,
    max_skew: std::time::Duration,
) -> Result<PkiMessage, ScepError> {
    let with_reply = |mut e: ScepError| {
        if der_bytes.len() <= MAX_MESSAGE_LEN {
            e.reply_to = reply_to(der_bytes).map(Box::new);
        }
        e
    };
    let (msg, signing_time) = parse_verified(der_bytes).map_err(with_reply)?;
    if let Some(t) = signing_time {
        let skew = t
            .duration_since(now)
            .or_else(|_| now.duration_since(t))
            .unwrap_or(std::time::Duration::MAX);
        if skew > max_skew {
            return Err(with_reply(bad(
                FailInfo::BadTime,
                format!(
                    "signingTime is {}s from the gateway's clock (at most {}s)",
                    skew.as_secs(),
                    max_skew.as_secs()
                ),
            )));
        }
    }
    Ok(msg)
}

/// The addressing fields of a message that failed [`parse_verified`]: a SignedData with exactly
/// one SignerInfo whose signed attributes hold one transactionID (1..=128 characters) and one
/// 16-byte senderNonce. Nothing here is trusted; a FAILURE only echoes them.
fn reply_to(der_bytes: &[u8]) -> Option<ReplyTo> {
    let ci = ContentInfo::from_der(&crate::ber::normalise(der_bytes).ok()?).ok()?;
    if ci.content_type != oids::SIGNED_DATA {
        return None;
    }
    let sd: lenient::SignedData = ci.content.decode_as().ok()?;
    let mut infos = sd.signer_infos.iter();
    let (Some(si), None) = (infos.next(), infos.next()) else {
        return None;
    };
    let mut tid = None;
    let mut nonce = None;
    for a in si.signed_attrs.as_ref()?.iter() {
        let mut vals = a.values.iter();
        let (Some(v), None) = (vals.next(), vals.next()) else {
            continue;
        };
        match a.oid {
            oids::TRANSACTION_ID => tid = printable(v),
            oids::SENDER_NONCE => nonce = octets(v),
            _ => {}
        }
    }
    let transaction_id = tid.filter(|t| !t.is_empty() && t.len() <= 128)?;
    let sender_nonce = nonce.filter(|n| n.len() == 16)?;
    Some(ReplyTo {
        transaction_id,
        sender_nonce,
        digest: DigestAlg::from_oid(&si.digest_alg.oid).unwrap_or(DigestAlg::Sha256),
    })
}

/// The verified message and its signingTime, if it has one.
fn parse_verified(
    der_bytes: &[u8],
) -> Result<(PkiMessage, Option<std::time::SystemTime>), ScepError> {
    if der_bytes.len() > MAX_MESSAGE_LEN {
        return Err(bad(FailInfo::BadRequest, "message too large"));
    }
    // BER (indefinite lengths, chunked content) from streaming clients → DER; DER is borrowed.
    let der_bytes =
        &*crate::ber::normalise(der_bytes).map_err(|e| bad(FailInfo::BadRequest, e.to_string()))?;
    let ci = ContentInfo::from_der(der_bytes)
        .map_err(|_| bad(FailInfo::BadRequest, "not a CMS ContentInfo"))?;
    if ci.content_type != oids::SIGNED_DATA {
        return Err(bad(FailInfo::BadRequest, "ContentInfo is not SignedData"));
    }
    // Lenient mirrors of the `cms` types: a throw-away signer certificate may have a serial
    // longer than RFC 5280 allows (certmonger's has 32 octets).
    let sd: lenient::SignedData = ci
        .content
        .decode_as()
        .map_err(|_| bad(FailInfo::BadRequest, "malformed SignedData"))?;
    let mut infos = sd.signer_infos.iter();
    let si: &lenient::SignerInfo = match (infos.next(), infos.next()) {
        (Some(si), None) => si,
        _ => return Err(bad(FailInfo::BadRequest, "need exactly one SignerInfo")),
    };
    let digest = DigestAlg::from_oid(&si.digest_alg.oid)
        .ok_or_else(|| bad(FailInfo::BadAlg, "unsupported digest algorithm"))?;
    let sig_digest = match si.signature_algorithm.oid {
        oids::RSA_ENCRYPTION => digest,
        oids::SHA1_WITH_RSA => DigestAlg::Sha1,
        oids::SHA256_WITH_RSA => DigestAlg::Sha256,
        oids::SHA384_WITH_RSA => DigestAlg::Sha384,
        oids::SHA512_WITH_RSA => DigestAlg::Sha512,
        _ => return Err(bad(FailInfo::BadAlg, "unsupported signature algorithm")),
    };
    if sig_digest != digest {
        return Err(bad(
            FailInfo::BadAlg,
            "signature and digest algorithms disagree",
        ));
    }
    let attrs = si
        .signed_attrs
        .as_ref()
        .ok_or_else(|| bad(FailInfo::BadRequest, "no signed attributes"))?;

    let mut message_type = None;
    let mut transaction_id = None;
    let mut sender_nonce = None;
    let mut message_digest = None;
    let mut content_type = None;
    let mut signing_time = None;
    for a in attrs.iter() {
        let mut vals = a.values.iter();
        let (Some(v), None) = (vals.next(), vals.next()) else {
            return Err(bad(FailInfo::BadRequest, "attribute must have one value"));
        };
        match a.oid {
            oids::MESSAGE_TYPE => message_type = printable(v),
            oids::TRANSACTION_ID => transaction_id = printable(v),
            oids::SENDER_NONCE => sender_nonce = octets(v),
            oids::MESSAGE_DIGEST => message_digest = octets(v),
            oids::CONTENT_TYPE => content_type = v.decode_as::<ObjectIdentifier>().ok(),
            oids::SIGNING_TIME => {
                let t = v
                    .to_der()
                    .and_then(|d| x509_cert::time::Time::from_der(&d))
                    .map_err(|_| bad(FailInfo::BadRequest, "malformed signingTime"))?;
                signing_time = Some(t.to_system_time());
            }
            _ => {}
        }
    }
    let transaction_id =
        transaction_id.ok_or_else(|| bad(FailInfo::BadRequest, "no transactionID"))?;
    if transaction_id.is_empty() || transaction_id.len() > 128 {
        return Err(bad(FailInfo::BadRequest, "bad transactionID length"));
    }
    let sender_nonce = sender_nonce.ok_or_else(|| bad(FailInfo::BadRequest, "no senderNonce"))?;
    if sender_nonce.len() != 16 {
        return Err(bad(FailInfo::BadRequest, "senderNonce must be 16 bytes"));
    }
    let message_type = message_type
        .as_deref()
        .and_then(MessageType::parse)
        .filter(|t| *t != MessageType::CertRep)
        .ok_or_else(|| bad(FailInfo::BadRequest, "unknown messageType"))?;
    let message_digest =
        message_digest.ok_or_else(|| bad(FailInfo::BadMessageCheck, "no messageDigest"))?;
    if content_type.is_some_and(|ct| ct != sd.encap_content_info.econtent_type) {
        return Err(bad(
            FailInfo::BadMessageCheck,
            "contentType attribute mismatch",
        ));
    }

    // The signer certificate: the one in `certificates` that the SignerIdentifier names.
    let Some(sid) = si.issuer_serial() else {
        return Err(bad(
            FailInfo::BadRequest,
            "signer must be named by issuer and serial",
        ));
    };
    let (signer_any, signer) = sd
        .certificates
        .as_ref()
        .and_then(|set| {
            set.iter().find_map(|any| {
                if any.tag() != der::Tag::Sequence {
                    return None; // not a plain Certificate (attribute/other certificate)
                }
                let der_bytes = any.to_der().ok()?;
                let c = lenient::Cert::from_der_lenient(&der_bytes).ok()?;
                (c.issuer_serial() == sid).then_some((der_bytes, c))
            })
        })
        .ok_or_else(|| bad(FailInfo::BadCertId, "signer certificate not in message"))?;
    let spki = &signer.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid != oids::RSA_ENCRYPTION {
        return Err(bad(FailInfo::BadAlg, "signer key is not RSA"));
    }

    // The encapsulated content: an OCTET STRING holding the EnvelopedData.
    let econtent = sd
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or_else(|| bad(FailInfo::BadRequest, "no encapsulated content"))?;
    let enveloped = econtent
        .decode_as::<OctetString>()
        .map_err(|_| {
            bad(
                FailInfo::BadRequest,
                "encapsulated content is not an OCTET STRING",
            )
        })?
        .as_bytes()
        .to_vec();
    if digest.digest(&enveloped) != message_digest {
        return Err(bad(FailInfo::BadMessageCheck, "messageDigest mismatch"));
    }
    let signed_attrs_der = attrs
        .to_der()
        .map_err(|_| bad(FailInfo::BadRequest, "cannot encode signed attributes"))?;
    UnparsedPublicKey::new(digest.rsa_verify_alg(), spki.subject_public_key.raw_bytes())
        .verify(&signed_attrs_der, si.signature.as_bytes())
        .map_err(|_| bad(FailInfo::BadMessageCheck, "signature does not verify"))?;

    let enc = |e: der::Error| bad(FailInfo::BadRequest, format!("encoding: {e}"));
    let msg = PkiMessage {
        message_type,
        transaction_id,
        sender_nonce,
        signer_cert_der: signer_any,
        signer_spki_der: spki.to_der().map_err(enc)?,
        signer_id: IssuerAndSerial {
            issuer_der: sid.issuer.to_der().map_err(enc)?,
            serial: sid.serial_number.as_bytes().to_vec(),
        },
        digest,
        enveloped,
    };
    Ok((msg, signing_time))
}

impl PkiMessage {
    /// The pkcsPKIEnvelope (EnvelopedData ContentInfo, DER) whose digest the client signed.
    pub fn enveloped_der(&self) -> &[u8] {
        &self.enveloped
    }

    /// A message rebuilt from the parts of one that [`parse_pki_message`] accepted (the core's
    /// `Scep.Enroll`: the edge parsed the request and verified its signature, the core holds
    /// the RA key). The signature is not checked again; the fields are checked as the parser
    /// checks them, and the signer certificate must hold an RSA key.
    pub fn from_verified_parts(
        message_type: &str,
        transaction_id: &str,
        sender_nonce: &[u8],
        signer_cert_der: &[u8],
        digest: &str,
        enveloped_der: &[u8],
    ) -> Result<Self, ScepError> {
        let message_type = MessageType::parse(message_type)
            .filter(|t| *t != MessageType::CertRep)
            .ok_or_else(|| bad(FailInfo::BadRequest, "unknown messageType"))?;
        if transaction_id.is_empty() || transaction_id.len() > 128 {
            return Err(bad(FailInfo::BadRequest, "bad transactionID length"));
        }
        if sender_nonce.len() != 16 {
            return Err(bad(FailInfo::BadRequest, "senderNonce must be 16 bytes"));
        }
        let digest = DigestAlg::from_name(digest)
            .ok_or_else(|| bad(FailInfo::BadAlg, "unsupported digest algorithm"))?;
        if enveloped_der.is_empty() || enveloped_der.len() > MAX_MESSAGE_LEN {
            return Err(bad(FailInfo::BadRequest, "bad pkcsPKIEnvelope length"));
        }
        let signer = lenient::Cert::from_der_lenient(signer_cert_der)
            .map_err(|_| bad(FailInfo::BadCertId, "malformed signer certificate"))?;
        let spki = &signer.tbs_certificate.subject_public_key_info;
        if spki.algorithm.oid != oids::RSA_ENCRYPTION {
            return Err(bad(FailInfo::BadAlg, "signer key is not RSA"));
        }
        let sid = signer.issuer_serial();
        let enc = |e: der::Error| bad(FailInfo::BadRequest, format!("encoding: {e}"));
        Ok(Self {
            message_type,
            transaction_id: transaction_id.to_owned(),
            sender_nonce: sender_nonce.to_vec(),
            signer_cert_der: signer_cert_der.to_vec(),
            signer_spki_der: spki.to_der().map_err(enc)?,
            signer_id: IssuerAndSerial {
                issuer_der: sid.issuer.to_der().map_err(enc)?,
                serial: sid.serial_number.as_bytes().to_vec(),
            },
            digest,
            enveloped: enveloped_der.to_vec(),
        })
    }

    fn enveloped_data(&self) -> Result<EnvelopedData, ScepError> {
        // A streaming client's EnvelopedData is BER (indefinite lengths, chunked content).
        let der_bytes = crate::ber::normalise_enveloped(&self.enveloped)
            .map_err(|e| bad(FailInfo::BadRequest, e.to_string()))?;
        let ci = ContentInfo::from_der(&der_bytes)
            .map_err(|_| bad(FailInfo::BadRequest, "content is not a ContentInfo"))?;
        if ci.content_type != oids::ENVELOPED_DATA {
            return Err(bad(FailInfo::BadRequest, "content is not EnvelopedData"));
        }
        ci.content
            .decode_as()
            .map_err(|_| bad(FailInfo::BadRequest, "malformed EnvelopedData"))
    }

    /// The key-transport recipient info addressed to the RA, to be unwrapped by the RA
    /// (`Scep.DecryptKey`). `ra_cert_der` selects the recipient when there are several.
    pub fn key_transport(&self, ra_cert_der: &[u8]) -> Result<KeyTransport, ScepError> {
        let ra = Certificate::from_der(ra_cert_der)
            .map_err(|_| bad(FailInfo::BadRequest, "bad RA certificate"))?;
        let env = self.enveloped_data()?;
        let mut ktris = env.recip_infos.0.iter().filter_map(|r| match r {
            RecipientInfo::Ktri(k) => Some(k),
            _ => None,
        });
        let n = env.recip_infos.0.len();
        let pick = ktris
            .find(|k| match &k.rid {
                cms::enveloped_data::RecipientIdentifier::IssuerAndSerialNumber(ias) => {
                    ias.issuer == ra.tbs_certificate.issuer
                        && ias.serial_number == ra.tbs_certificate.serial_number
                }
                cms::enveloped_data::RecipientIdentifier::SubjectKeyIdentifier(_) => n == 1,
            })
            .ok_or_else(|| bad(FailInfo::BadMessageCheck, "not encrypted to this RA"))?;
        Ok(KeyTransport {
            encrypted_key: pick.enc_key.as_bytes().to_vec(),
            key_encryption_alg_der: pick
                .key_enc_alg
                .to_der()
                .map_err(|_| bad(FailInfo::BadRequest, "bad keyEncryptionAlgorithm"))?,
        })
    }

    /// Decrypts the content with the content-encryption key the RA returned and decodes it
    /// according to the message type.
    pub fn decrypt_content(&self, cek: &[u8]) -> Result<RequestContent, ScepError> {
        let env = self.enveloped_data()?;
        let eci = &env.encrypted_content;
        if eci.content_enc_alg.oid == oids::DES_EDE3_CBC {
            let plain = decrypt_des3(eci, cek)?;
            return self.decode_content(&plain);
        }
        let alg = match eci.content_enc_alg.oid {
            oids::AES128_CBC => &AES_128,
            oids::AES192_CBC => &AES_192,
            oids::AES256_CBC => &AES_256,
            _ => return Err(bad(FailInfo::BadAlg, "unsupported content encryption")),
        };
        let iv: [u8; 16] = eci
            .content_enc_alg
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<OctetString>().ok())
            .and_then(|o| o.as_bytes().try_into().ok())
            .ok_or_else(|| bad(FailInfo::BadRequest, "bad CBC IV"))?;
        let mut buf = Zeroizing::new(
            eci.encrypted_content
                .as_ref()
                .ok_or_else(|| bad(FailInfo::BadRequest, "no encrypted content"))?
                .as_bytes()
                .to_vec(),
        );
        let key = UnboundCipherKey::new(alg, cek).map_err(|_| {
            bad(
                FailInfo::BadMessageCheck,
                "content key has the wrong length",
            )
        })?;
        let dec = PaddedBlockDecryptingKey::cbc_pkcs7(key)
            .map_err(|_| bad(FailInfo::BadAlg, "cipher unavailable"))?;
        let plain = dec
            .decrypt(&mut buf, DecryptionContext::Iv128(iv.into()))
            .map_err(|_| bad(FailInfo::BadMessageCheck, "decryption failed"))?
            .to_vec();
        let plain = Zeroizing::new(plain);
        self.decode_content(&plain)
    }

    fn decode_content(&self, plain: &[u8]) -> Result<RequestContent, ScepError> {
        match self.message_type {
            MessageType::PkcsReq | MessageType::RenewalReq => self.cert_request(plain),
            MessageType::CertPoll => {
                let ias = IssuerAndSubject::from_der(plain)
                    .map_err(|_| bad(FailInfo::BadRequest, "malformed IssuerAndSubject"))?;
                let enc = |_| bad(FailInfo::BadRequest, "encoding");
                Ok(RequestContent::Poll {
                    issuer_der: ias.issuer.to_der().map_err(enc)?,
                    subject_der: ias.subject.to_der().map_err(enc)?,
                })
            }
            MessageType::GetCert | MessageType::GetCrl => {
                let ias = cms::cert::IssuerAndSerialNumber::from_der(plain)
                    .map_err(|_| bad(FailInfo::BadRequest, "malformed IssuerAndSerialNumber"))?;
                Ok(RequestContent::IssuerSerial(IssuerAndSerial {
                    issuer_der: ias
                        .issuer
                        .to_der()
                        .map_err(|_| bad(FailInfo::BadRequest, "encoding"))?,
                    serial: ias.serial_number.as_bytes().to_vec(),
                }))
            }
            MessageType::CertRep => Err(bad(FailInfo::BadRequest, "CertRep is not a request")),
        }
    }

    fn cert_request(&self, plain: &[u8]) -> Result<RequestContent, ScepError> {
        let csr = CertReq::from_der(plain)
            .map_err(|_| bad(FailInfo::BadRequest, "content is not a PKCS#10 request"))?;
        let csr_spki = csr
            .info
            .public_key
            .to_der()
            .map_err(|_| bad(FailInfo::BadRequest, "encoding"))?;
        // PKCSReq: the self-signed signer certificate carries the requested key (proof that
        // the sender holds it); RenewalReq is signed by the old certificate instead.
        if self.message_type == MessageType::PkcsReq && csr_spki != self.signer_spki_der {
            return Err(bad(
                FailInfo::BadMessageCheck,
                "PKCSReq signer key differs from the request key",
            ));
        }
        let mut challenge = None;
        for a in csr.info.attributes.iter() {
            if a.oid == oids::CHALLENGE_PASSWORD {
                let v = a
                    .values
                    .iter()
                    .next()
                    .ok_or_else(|| bad(FailInfo::BadRequest, "empty challengePassword"))?;
                challenge = Some(Zeroizing::new(v.value().to_vec()));
            }
        }
        Ok(RequestContent::CertRequest {
            csr_der: plain.to_vec(),
            challenge,
        })
    }
}

/// DES-EDE3-CBC (8-byte IV, PKCS#7 padding): only for old clients that offer nothing better.
fn decrypt_des3(
    eci: &cms::enveloped_data::EncryptedContentInfo,
    cek: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ScepError> {
    use cbc::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
    let iv: [u8; 8] = eci
        .content_enc_alg
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<OctetString>().ok())
        .and_then(|o| o.as_bytes().try_into().ok())
        .ok_or_else(|| bad(FailInfo::BadRequest, "bad CBC IV"))?;
    let mut buf = Zeroizing::new(
        eci.encrypted_content
            .as_ref()
            .ok_or_else(|| bad(FailInfo::BadRequest, "no encrypted content"))?
            .as_bytes()
            .to_vec(),
    );
    let dec = cbc::Decryptor::<des::TdesEde3>::new_from_slices(cek, &iv).map_err(|_| {
        bad(
            FailInfo::BadMessageCheck,
            "content key has the wrong length",
        )
    })?;
    let plain = dec
        .decrypt_padded_mut::<Pkcs7>(&mut buf)
        .map_err(|_| bad(FailInfo::BadMessageCheck, "decryption failed"))?;
    Ok(Zeroizing::new(plain.to_vec()))
}

/// IssuerAndSubject (RFC 8894 §3.3.3).
#[derive(Debug, der::Sequence)]
struct IssuerAndSubject {
    issuer: Name,
    subject: Name,
}
