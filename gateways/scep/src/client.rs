//! The client side of SCEP, for tests, the bench and fuzz seeds: builds PKIOperation requests
//! and reads CertRep replies. Not used by the edge.

use crate::message::DigestAlg;
use crate::reply::{AttrSet, assemble, envelope, signed_attributes};
use crate::{FailInfo, PkiStatus, ScepError, oids};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{Pkcs1PrivateDecryptingKey, PrivateDecryptingKey};
use aws_lc_rs::signature::{self, RsaKeyPair, UnparsedPublicKey};
use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::enveloped_data::{EnvelopedData, RecipientInfo};
use cms::signed_data::SignedData;
use der::asn1::{OctetString, PrintableString};
use der::{Decode, Encode};
use x509_cert::Certificate;
use zeroize::Zeroizing;

/// What a client puts in a PKIOperation request.
pub struct Request<'a> {
    /// "19" PKCSReq, "17" RenewalReq, "20" CertPoll, "21" GetCert, "22" GetCRL.
    pub message_type: &'static str,
    /// transactionID.
    pub transaction_id: &'a str,
    /// senderNonce (16 bytes).
    pub sender_nonce: [u8; 16],
    /// The plaintext content (PKCS#10, IssuerAndSubject or IssuerAndSerialNumber), DER.
    pub content_der: &'a [u8],
    /// The signer certificate (self-signed for PKCSReq), DER.
    pub signer_cert_der: &'a [u8],
    /// The signer's RSA private key, PKCS#8 DER.
    pub signer_key_pkcs8: &'a [u8],
    /// The RA certificate to encrypt to, DER.
    pub ra_cert_der: &'a [u8],
}

fn err(why: &str) -> ScepError {
    ScepError::new(FailInfo::BadRequest, why)
}

/// Builds a PKIOperation message (DER), signed with SHA-256 and sha256WithRSAEncryption.
pub fn build_request(r: &Request<'_>) -> Result<Vec<u8>, ScepError> {
    build_request_with(r, &RequestOptions::default())
}

/// What [`build_request_with`] does differently from [`build_request`] (edge-case tests).
#[derive(Debug, Default, Clone)]
pub struct RequestOptions {
    /// Add a signingTime signed attribute (RFC 5652 §11.3) with this time: UTCTime before
    /// 2050, GeneralizedTime from then on, as RFC 5652 requires (whole seconds).
    pub signing_time: Option<std::time::SystemTime>,
    /// Encode signingTime as GeneralizedTime even before 2050 (some clients do).
    pub signing_time_generalized: bool,
    /// Use this pkcsPKIEnvelope (an EnvelopedData ContentInfo, DER or BER, e.g. made by
    /// `openssl cms -encrypt -stream`) instead of encrypting `content_der` here.
    pub envelope: Option<Vec<u8>>,
}

/// [`build_request`] with [`RequestOptions`].
pub fn build_request_with(r: &Request<'_>, o: &RequestOptions) -> Result<Vec<u8>, ScepError> {
    let env = match &o.envelope {
        Some(e) => e.clone(),
        None => envelope(r.content_der, r.ra_cert_der)?,
    };
    let set = AttrSet {
        message_type: r.message_type,
        transaction_id: r.transaction_id.to_owned(),
        sender_nonce: r.sender_nonce.to_vec(),
        recipient_nonce: None,
        status: None,
        fail_info: None,
    };
    let mut attrs = signed_attributes(&set, DigestAlg::Sha256, Some(&env))?;
    if let Some(t) = o.signing_time {
        use x509_cert::time::Time;
        let generalized = || {
            der::asn1::GeneralizedTime::from_system_time(t)
                .map(Time::GeneralTime)
                .map_err(|_| err("signingTime"))
        };
        let time = if o.signing_time_generalized {
            generalized()?
        } else {
            match der::asn1::UtcTime::from_system_time(t) {
                Ok(u) => Time::UtcTime(u),
                Err(_) => generalized()?, // 2050 and later
            }
        };
        let value = der::Any::encode_from(&time).map_err(|_| err("encoding"))?;
        attrs
            .insert(x509_cert::attr::Attribute {
                oid: oids::SIGNING_TIME,
                values: der::asn1::SetOfVec::try_from(vec![value]).map_err(|_| err("encoding"))?,
            })
            .map_err(|_| err("encoding"))?;
    }
    let tbs = attrs.to_der().map_err(|_| err("encoding"))?;
    let kp = RsaKeyPair::from_pkcs8(r.signer_key_pkcs8).map_err(|_| err("signer key"))?;
    let mut sig = vec![0u8; kp.public_modulus_len()];
    kp.sign(
        &signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        &tbs,
        &mut sig,
    )
    .map_err(|_| err("sign"))?;
    assemble(
        attrs,
        DigestAlg::Sha256,
        oids::SHA256_WITH_RSA,
        &sig,
        r.signer_cert_der,
        Some(&env),
    )
}

/// A CertRep as the client sees it.
#[derive(Debug)]
pub struct Reply {
    /// pkiStatus.
    pub status: PkiStatus,
    /// failInfo, when FAILURE.
    pub fail_info: Option<FailInfo>,
    /// transactionID.
    pub transaction_id: String,
    /// recipientNonce.
    pub recipient_nonce: Vec<u8>,
    /// The certificates of the decrypted degenerate SignedData (SUCCESS), DER.
    pub certs: Vec<Vec<u8>>,
    /// The CRLs of the decrypted degenerate SignedData (GetCRL), DER.
    pub crls: Vec<Vec<u8>>,
    /// The RA certificate that signed it, DER.
    pub ra_cert_der: Vec<u8>,
}

/// Reads a CertRep: checks the RA signature (rsaEncryption, SHA-256 or SHA-512) with the RA
/// certificate inside, and decrypts the content with the client key.
pub fn read_reply(der_bytes: &[u8], client_key_pkcs8: &[u8]) -> Result<Reply, ScepError> {
    let ci = ContentInfo::from_der(der_bytes).map_err(|_| err("not ContentInfo"))?;
    let sd: SignedData = ci.content.decode_as().map_err(|_| err("not SignedData"))?;
    let si = sd
        .signer_infos
        .0
        .iter()
        .next()
        .ok_or_else(|| err("no signer"))?;
    let attrs = si.signed_attrs.as_ref().ok_or_else(|| err("no attrs"))?;
    let ra = sd
        .certificates
        .as_ref()
        .and_then(|s| {
            s.0.iter().find_map(|c| match c {
                CertificateChoices::Certificate(c) => Some(c.clone()),
                _ => None,
            })
        })
        .ok_or_else(|| err("no RA cert"))?;
    let alg = match si.digest_alg.oid {
        oids::SHA256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        oids::SHA512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        _ => return Err(err("digest")),
    };
    if si.signature_algorithm.oid != oids::RSA_ENCRYPTION {
        return Err(err("signature algorithm is not rsaEncryption"));
    }
    UnparsedPublicKey::new(
        alg,
        ra.tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes(),
    )
    .verify(
        &attrs.to_der().map_err(|_| err("encoding"))?,
        si.signature.as_bytes(),
    )
    .map_err(|_| err("RA signature does not verify"))?;
    let head = reply_fields(attrs)?;
    let mut certs = Vec::new();
    let mut crls = Vec::new();
    if let Some(ec) = &sd.encap_content_info.econtent {
        let env_der = ec
            .decode_as::<OctetString>()
            .map_err(|_| err("econtent"))?
            .as_bytes()
            .to_vec();
        let plain = decrypt_enveloped(&env_der, client_key_pkcs8)?;
        let ci = ContentInfo::from_der(&plain).map_err(|_| err("inner ContentInfo"))?;
        let inner: SignedData = ci
            .content
            .decode_as()
            .map_err(|_| err("inner SignedData"))?;
        if let Some(set) = inner.certificates {
            for c in set.0.iter() {
                if let CertificateChoices::Certificate(c) = c {
                    certs.push(c.to_der().map_err(|_| err("encoding"))?);
                }
            }
        }
        if let Some(set) = inner.crls {
            for c in set.0.iter() {
                if let cms::revocation::RevocationInfoChoice::Crl(c) = c {
                    crls.push(c.to_der().map_err(|_| err("encoding"))?);
                }
            }
        }
    }
    Ok(Reply {
        status: head.status,
        fail_info: head.fail_info,
        transaction_id: head.transaction_id,
        recipient_nonce: head.recipient_nonce,
        certs,
        crls,
        ra_cert_der: ra.to_der().map_err(|_| err("encoding"))?,
    })
}

/// The signed attributes a client correlates a CertRep by, read without any cryptography.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHead {
    /// pkiStatus.
    pub status: PkiStatus,
    /// failInfo, when FAILURE.
    pub fail_info: Option<FailInfo>,
    /// transactionID.
    pub transaction_id: String,
    /// recipientNonce.
    pub recipient_nonce: Vec<u8>,
}

fn reply_fields(attrs: &cms::signed_data::SignedAttributes) -> Result<ReplyHead, ScepError> {
    let mut status = None;
    let mut fail_info = None;
    let mut tid = String::new();
    let mut rnonce = Vec::new();
    for a in attrs.iter() {
        let Some(v) = a.values.iter().next() else {
            continue;
        };
        let text = || {
            v.decode_as::<PrintableString>()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default()
        };
        match a.oid {
            oids::PKI_STATUS => {
                status = match text().as_str() {
                    "0" => Some(PkiStatus::Success),
                    "2" => Some(PkiStatus::Failure),
                    "3" => Some(PkiStatus::Pending),
                    _ => None,
                }
            }
            oids::FAIL_INFO => {
                fail_info = match text().as_str() {
                    "0" => Some(FailInfo::BadAlg),
                    "1" => Some(FailInfo::BadMessageCheck),
                    "2" => Some(FailInfo::BadRequest),
                    "3" => Some(FailInfo::BadTime),
                    "4" => Some(FailInfo::BadCertId),
                    _ => None,
                }
            }
            oids::TRANSACTION_ID => tid = text(),
            oids::RECIPIENT_NONCE => {
                rnonce = v
                    .decode_as::<OctetString>()
                    .map(|o| o.as_bytes().to_vec())
                    .unwrap_or_default()
            }
            _ => {}
        }
    }
    Ok(ReplyHead {
        status: status.ok_or_else(|| err("no pkiStatus"))?,
        fail_info,
        transaction_id: tid,
        recipient_nonce: rnonce,
    })
}

/// Reads a CertRep's pkiStatus, failInfo, transactionID and recipientNonce **without** checking
/// the RA signature or decrypting anything: for a load generator that correlates replies cheaply
/// while it measures and checks them fully with [`read_reply`] afterwards. Never trust it alone.
pub fn peek_reply(der_bytes: &[u8]) -> Result<ReplyHead, ScepError> {
    let ci = ContentInfo::from_der(der_bytes).map_err(|_| err("not ContentInfo"))?;
    let sd: SignedData = ci.content.decode_as().map_err(|_| err("not SignedData"))?;
    let si = sd
        .signer_infos
        .0
        .iter()
        .next()
        .ok_or_else(|| err("no signer"))?;
    reply_fields(si.signed_attrs.as_ref().ok_or_else(|| err("no attrs"))?)
}

/// Decrypts an EnvelopedData (first KeyTransRecipientInfo, RSA PKCS#1 v1.5, AES-CBC) with an
/// RSA key — the client's side, and the local stand-in for the RA in tests.
pub fn decrypt_enveloped(env_der: &[u8], key_pkcs8: &[u8]) -> Result<Vec<u8>, ScepError> {
    let ci = ContentInfo::from_der(env_der).map_err(|_| err("not ContentInfo"))?;
    let ed: EnvelopedData = ci
        .content
        .decode_as()
        .map_err(|_| err("not EnvelopedData"))?;
    let ktri = ed
        .recip_infos
        .0
        .iter()
        .find_map(|r| match r {
            RecipientInfo::Ktri(k) => Some(k),
            _ => None,
        })
        .ok_or_else(|| err("no ktri"))?;
    let cek = rsa_decrypt_key(key_pkcs8, ktri.enc_key.as_bytes())?;
    // Reuse the server-side content decryption through a throwaway PkiMessage-free path.
    let eci = &ed.encrypted_content;
    let alg = match eci.content_enc_alg.oid {
        oids::AES128_CBC => &aws_lc_rs::cipher::AES_128,
        oids::AES256_CBC => &aws_lc_rs::cipher::AES_256,
        _ => return Err(err("content alg")),
    };
    let iv: [u8; 16] = eci
        .content_enc_alg
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<OctetString>().ok())
        .and_then(|o| o.as_bytes().try_into().ok())
        .ok_or_else(|| err("iv"))?;
    let mut buf = eci
        .encrypted_content
        .as_ref()
        .ok_or_else(|| err("no content"))?
        .as_bytes()
        .to_vec();
    let key = aws_lc_rs::cipher::UnboundCipherKey::new(alg, &cek).map_err(|_| err("cek"))?;
    let dec =
        aws_lc_rs::cipher::PaddedBlockDecryptingKey::cbc_pkcs7(key).map_err(|_| err("aes"))?;
    Ok(dec
        .decrypt(
            &mut buf,
            aws_lc_rs::cipher::DecryptionContext::Iv128(iv.into()),
        )
        .map_err(|_| err("decrypt"))?
        .to_vec())
}

/// RSA PKCS#1 v1.5 key unwrap with a PKCS#8 key: what the RA does in the signer; here for
/// tests and as the local stand-in for the RA.
pub fn rsa_decrypt_key(
    key_pkcs8: &[u8],
    encrypted_key: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ScepError> {
    let key = PrivateDecryptingKey::from_pkcs8(key_pkcs8).map_err(|_| err("rsa key"))?;
    let key = Pkcs1PrivateDecryptingKey::new(key).map_err(|_| err("rsa key"))?;
    let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
    let n = key
        .decrypt(encrypted_key, &mut out)
        .map_err(|_| ScepError::new(FailInfo::BadMessageCheck, "key unwrap failed"))?
        .len();
    out.truncate(n);
    Ok(out)
}

/// Signs `data` with an RSA PKCS#8 key (PKCS#1 v1.5, given digest): the RA's signing step, for
/// tests.
pub fn rsa_sign(key_pkcs8: &[u8], digest: DigestAlg, data: &[u8]) -> Result<Vec<u8>, ScepError> {
    let kp = RsaKeyPair::from_pkcs8(key_pkcs8).map_err(|_| err("rsa key"))?;
    let alg: &'static dyn signature::RsaEncoding = match digest {
        DigestAlg::Sha256 => &signature::RSA_PKCS1_SHA256,
        DigestAlg::Sha384 => &signature::RSA_PKCS1_SHA384,
        DigestAlg::Sha512 => &signature::RSA_PKCS1_SHA512,
        DigestAlg::Sha1 => return Err(err("sha1 signing not offered")),
    };
    let mut sig = vec![0u8; kp.public_modulus_len()];
    kp.sign(alg, &SystemRandom::new(), data, &mut sig)
        .map_err(|_| err("sign"))?;
    Ok(sig)
}

/// The IssuerAndSerialNumber (DER) naming `cert_der`: the content of GetCert and GetCRL.
pub fn issuer_and_serial(cert_der: &[u8]) -> Result<Vec<u8>, ScepError> {
    let c = Certificate::from_der(cert_der).map_err(|_| err("certificate"))?;
    cms::cert::IssuerAndSerialNumber {
        issuer: c.tbs_certificate.issuer,
        serial_number: c.tbs_certificate.serial_number,
    }
    .to_der()
    .map_err(|_| err("encoding"))
}

/// The IssuerAndSubject (DER) of `cert_der`: the content of CertPoll (GetCertInitial).
pub fn issuer_and_subject(cert_der: &[u8]) -> Result<Vec<u8>, ScepError> {
    let c = Certificate::from_der(cert_der).map_err(|_| err("certificate"))?;
    let mut body = c
        .tbs_certificate
        .issuer
        .to_der()
        .map_err(|_| err("encoding"))?;
    body.extend(
        c.tbs_certificate
            .subject
            .to_der()
            .map_err(|_| err("encoding"))?,
    );
    der::asn1::AnyRef::new(der::Tag::Sequence, &body)
        .and_then(|a| a.to_der())
        .map_err(|_| err("encoding"))
}

/// The serial number bytes of a certificate, for callers that only hold DER.
pub fn cert_serial(cert_der: &[u8]) -> Result<Vec<u8>, ScepError> {
    Ok(Certificate::from_der(cert_der)
        .map_err(|_| err("certificate"))?
        .tbs_certificate
        .serial_number
        .as_bytes()
        .to_vec())
}

/// One DER element at the start of `input`: (identifier octet, content, bytes after it).
/// Single-octet tags and definite lengths only (what [`build_request`] produces).
fn der_tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), ScepError> {
    let (&tag, rest) = input.split_first().ok_or_else(|| err("truncated"))?;
    let (&l0, rest) = rest.split_first().ok_or_else(|| err("truncated"))?;
    let (len, rest) = if l0 < 0x80 {
        (usize::from(l0), rest)
    } else {
        let k = usize::from(l0 & 0x7f);
        if k == 0 || k > 4 || rest.len() < k {
            return Err(err("not DER"));
        }
        let len = rest[..k]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[k..])
    };
    if rest.len() < len {
        return Err(err("truncated"));
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// Re-encodes a DER SignedData ContentInfo (a PKIOperation request) the way OpenSSL's
/// `cms -sign -stream` and other streaming encoders send it: indefinite lengths on ContentInfo,
/// its `[0]`, SignedData, EncapsulatedContentInfo and eContent's `[0]`, and the eContent as a
/// constructed OCTET STRING of `chunk`-byte pieces. The signature stays valid (it covers the
/// signed attributes' DER and the content octets, neither changed). For BER tests.
pub fn to_streaming_ber(der_bytes: &[u8], chunk: usize) -> Result<Vec<u8>, ScepError> {
    const EOC: [u8; 2] = [0, 0];
    let chunk = chunk.max(1);
    let (_, ci, _) = der_tlv(der_bytes)?;
    let (_, _, after_oid) = der_tlv(ci)?;
    let oid_part = &ci[..ci.len() - after_oid.len()];
    let (_, explicit, _) = der_tlv(after_oid)?;
    let (_, sd, _) = der_tlv(explicit)?;
    // version, digestAlgorithms, encapContentInfo, then the rest verbatim.
    let (_, _, r1) = der_tlv(sd)?;
    let (_, _, r2) = der_tlv(r1)?;
    let head = &sd[..sd.len() - r2.len()];
    let (_, eci, tail) = der_tlv(r2)?;
    let (_, _, eci_rest) = der_tlv(eci)?;
    let econtent_type = &eci[..eci.len() - eci_rest.len()];
    let (_, econtent_explicit, _) = der_tlv(eci_rest)?;
    let (_, octets, _) = der_tlv(econtent_explicit)?;

    let mut out = vec![0x30, 0x80];
    out.extend_from_slice(oid_part);
    out.extend_from_slice(&[0xa0, 0x80, 0x30, 0x80]);
    out.extend_from_slice(head);
    out.extend_from_slice(&[0x30, 0x80]);
    out.extend_from_slice(econtent_type);
    out.extend_from_slice(&[0xa0, 0x80, 0x24, 0x80]);
    for piece in octets.chunks(chunk) {
        out.extend_from_slice(
            &OctetString::new(piece)
                .and_then(|o| o.to_der())
                .map_err(|_| err("encoding"))?,
        );
    }
    out.extend_from_slice(&EOC); // constructed OCTET STRING
    out.extend_from_slice(&EOC); // [0] eContent
    out.extend_from_slice(&EOC); // EncapsulatedContentInfo
    out.extend_from_slice(tail);
    out.extend_from_slice(&EOC); // SignedData
    out.extend_from_slice(&EOC); // [0]
    out.extend_from_slice(&EOC); // ContentInfo
    Ok(out)
}
