//! GetCACaps, GetCACert and CertRep building.

use crate::message::{DigestAlg, PkiMessage};
use crate::{FailInfo, PkiStatus, ScepError, oids};
use aws_lc_rs::cipher::{AES_128, DecryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{Pkcs1PublicEncryptingKey, PublicEncryptingKey};
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::EncryptedContentInfo;
use cms::revocation::{RevocationInfoChoice, RevocationInfoChoices};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedAttributes, SignedData, SignerIdentifier,
    SignerInfo, SignerInfos,
};
use const_oid::ObjectIdentifier;
use der::asn1::{Any, OctetString, PrintableString, SetOfVec};
use der::{Decode, Encode};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_cert::attr::Attribute;
use x509_cert::crl::CertificateList;
use zeroize::Zeroizing;

/// The GetCACaps answer. The list (and its order) meets strongSwan 5.9's parser, which accepts
/// SHA-256 only next to DES3 or SHA-384 and AES only next to SHA-384 (see PEERS.md).
pub fn ca_caps() -> &'static str {
    "AES\nDES3\nSHA-256\nSHA-384\nSHA-512\nPOSTPKIOperation\nRenewal\nSCEPStandard\n"
}

/// The GetCACaps answer while a CA rollover is staged: [`ca_caps`] plus `GetNextCACert`
/// (RFC 8894 §3.5.2), offered only when there is a next CA certificate to hand out. Appended
/// last, so the order strongSwan 5.9's parser depends on stays as in [`ca_caps`].
pub fn ca_caps_with_next_ca() -> &'static str {
    "AES\nDES3\nSHA-256\nSHA-384\nSHA-512\nPOSTPKIOperation\nRenewal\nSCEPStandard\nGetNextCACert\n"
}

fn enc_err(e: der::Error) -> ScepError {
    ScepError::new(FailInfo::BadRequest, format!("encoding: {e}"))
}

fn certificate_set(certs: &[Vec<u8>]) -> Result<CertificateSet, ScepError> {
    let mut v = Vec::with_capacity(certs.len());
    for c in certs {
        v.push(CertificateChoices::Certificate(
            Certificate::from_der(c).map_err(enc_err)?,
        ));
    }
    Ok(CertificateSet(SetOfVec::try_from(v).map_err(enc_err)?))
}

/// A degenerate (certs-only) SignedData ContentInfo holding `certs` and `crls`, DER.
fn degenerate(certs: &[Vec<u8>], crls: &[Vec<u8>]) -> Result<Vec<u8>, ScepError> {
    let crls = if crls.is_empty() {
        None
    } else {
        let mut v = Vec::new();
        for c in crls {
            v.push(RevocationInfoChoice::Crl(
                CertificateList::from_der(c).map_err(enc_err)?,
            ));
        }
        Some(RevocationInfoChoices(
            SetOfVec::try_from(v).map_err(enc_err)?,
        ))
    };
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: oids::DATA,
            econtent: None,
        },
        certificates: if certs.is_empty() {
            None
        } else {
            Some(certificate_set(certs)?)
        },
        crls,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    ContentInfo {
        content_type: oids::SIGNED_DATA,
        content: Any::encode_from(&sd).map_err(enc_err)?,
    }
    .to_der()
    .map_err(enc_err)
}

/// The GetCACert answer when an RA is used: a certs-only SignedData with the RA certificate and
/// the CA chain (content type `application/x-x509-ca-ra-cert`).
pub fn ca_cert_response(certs: &[Vec<u8>]) -> Result<Vec<u8>, ScepError> {
    degenerate(certs, &[])
}

/// Encrypts `plain` for `recipient` (AES-128-CBC, RSA PKCS#1 v1.5 key transport) and returns
/// the EnvelopedData ContentInfo, DER.
pub(crate) fn envelope(plain: &[u8], recipient_der: &[u8]) -> Result<Vec<u8>, ScepError> {
    let internal = |why: &str| ScepError::new(FailInfo::BadRequest, why);
    // The recipient is the request's signer certificate, whose serial may be longer than the
    // `cms` types accept (certmonger: 32 octets), hence the lenient mirrors.
    let recipient = crate::lenient::Cert::from_der_lenient(recipient_der).map_err(enc_err)?;
    let spki_der = recipient
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(enc_err)?;
    let rsa = PublicEncryptingKey::from_der(&spki_der)
        .map_err(|_| ScepError::new(FailInfo::BadAlg, "recipient key is not RSA"))?;
    let rsa = Pkcs1PublicEncryptingKey::new(rsa).map_err(|_| internal("rsa"))?;
    let mut cek = Zeroizing::new([0u8; 16]);
    SystemRandom::new()
        .fill(cek.as_mut())
        .map_err(|_| internal("rng"))?;
    let mut enc_key = vec![0u8; rsa.ciphertext_size()];
    let enc_key = rsa
        .encrypt(cek.as_ref(), &mut enc_key)
        .map_err(|_| internal("key transport"))?
        .to_vec();
    let key = UnboundCipherKey::new(&AES_128, cek.as_ref()).map_err(|_| internal("aes"))?;
    let aes = PaddedBlockEncryptingKey::cbc_pkcs7(key).map_err(|_| internal("aes"))?;
    let mut buf = plain.to_vec();
    let ctx = aes.encrypt(&mut buf).map_err(|_| internal("aes"))?;
    let iv: [u8; 16] = match ctx {
        DecryptionContext::Iv128(iv) => iv.try_into().map_err(|_| internal("iv"))?,
        _ => return Err(internal("iv")),
    };
    let ktri = crate::lenient::KeyTransRecipientInfo {
        version: CmsVersion::V0,
        rid: recipient.issuer_serial(),
        key_enc_alg: AlgorithmIdentifierOwned {
            oid: oids::RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
        enc_key: OctetString::new(enc_key).map_err(enc_err)?,
    };
    let ed = crate::lenient::EnvelopedData::one_recipient(
        &ktri,
        EncryptedContentInfo {
            content_type: oids::DATA,
            content_enc_alg: AlgorithmIdentifierOwned {
                oid: oids::AES128_CBC,
                parameters: Some(
                    Any::encode_from(&OctetString::new(iv.to_vec()).map_err(enc_err)?)
                        .map_err(enc_err)?,
                ),
            },
            encrypted_content: Some(OctetString::new(buf).map_err(enc_err)?),
        },
    )
    .map_err(enc_err)?;
    ContentInfo {
        content_type: oids::ENVELOPED_DATA,
        content: Any::encode_from(&ed).map_err(enc_err)?,
    }
    .to_der()
    .map_err(enc_err)
}

fn attr(oid: ObjectIdentifier, value: Any) -> Result<Attribute, ScepError> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value]).map_err(enc_err)?,
    })
}

fn printable_any(s: &str) -> Result<Any, ScepError> {
    Any::encode_from(&PrintableString::new(s).map_err(enc_err)?).map_err(enc_err)
}

fn octets_any(b: &[u8]) -> Result<Any, ScepError> {
    Any::encode_from(&OctetString::new(b).map_err(enc_err)?).map_err(enc_err)
}

/// Builds signed attributes for a SCEP message (shared with the client builder).
pub(crate) struct AttrSet {
    pub(crate) message_type: &'static str,
    pub(crate) transaction_id: String,
    pub(crate) sender_nonce: Vec<u8>,
    pub(crate) recipient_nonce: Option<Vec<u8>>,
    pub(crate) status: Option<PkiStatus>,
    pub(crate) fail_info: Option<FailInfo>,
}

pub(crate) fn signed_attributes(
    set: &AttrSet,
    digest: DigestAlg,
    econtent: Option<&[u8]>,
) -> Result<SignedAttributes, ScepError> {
    let mut v = vec![
        attr(
            oids::CONTENT_TYPE,
            Any::encode_from(&oids::DATA).map_err(enc_err)?,
        )?,
        attr(
            oids::MESSAGE_DIGEST,
            octets_any(&digest.digest(econtent.unwrap_or_default()))?,
        )?,
        attr(oids::MESSAGE_TYPE, printable_any(set.message_type)?)?,
        attr(oids::TRANSACTION_ID, printable_any(&set.transaction_id)?)?,
        attr(oids::SENDER_NONCE, octets_any(&set.sender_nonce)?)?,
    ];
    if let Some(n) = &set.recipient_nonce {
        v.push(attr(oids::RECIPIENT_NONCE, octets_any(n)?)?);
    }
    if let Some(s) = set.status {
        v.push(attr(oids::PKI_STATUS, printable_any(s.as_str())?)?);
    }
    if let Some(f) = set.fail_info {
        v.push(attr(oids::FAIL_INFO, printable_any(f.as_str())?)?);
    }
    SetOfVec::try_from(v).map_err(enc_err)
}

/// Wraps signed attributes, signature and content into a SignedData ContentInfo, DER.
pub(crate) fn assemble(
    attrs: SignedAttributes,
    digest: DigestAlg,
    signature_alg: ObjectIdentifier,
    signature: &[u8],
    signer_cert_der: &[u8],
    econtent: Option<&[u8]>,
) -> Result<Vec<u8>, ScepError> {
    assemble_with_certs(
        attrs,
        digest,
        signature_alg,
        signature,
        signer_cert_der,
        &[signer_cert_der.to_vec()],
        econtent,
    )
}

/// [`assemble`] with the SignedData's `certificates` given (`certs`, which need not include
/// the signer's certificate).
fn assemble_with_certs(
    attrs: SignedAttributes,
    digest: DigestAlg,
    signature_alg: ObjectIdentifier,
    signature: &[u8],
    signer_cert_der: &[u8],
    certs: &[Vec<u8>],
    econtent: Option<&[u8]>,
) -> Result<Vec<u8>, ScepError> {
    let signer = Certificate::from_der(signer_cert_der).map_err(enc_err)?;
    let digest_alg = AlgorithmIdentifierOwned {
        oid: digest.oid(),
        parameters: None,
    };
    let si = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: signer.tbs_certificate.issuer.clone(),
            serial_number: signer.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: digest_alg.clone(),
        signed_attrs: Some(attrs),
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: signature_alg,
            parameters: Some(Any::null()),
        },
        signature: OctetString::new(signature).map_err(enc_err)?,
        unsigned_attrs: None,
    };
    let econtent = match econtent {
        Some(c) => Some(octets_any(c)?),
        None => None,
    };
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![digest_alg]).map_err(enc_err)?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: oids::DATA,
            econtent,
        },
        certificates: Some(certificate_set(certs)?),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![si]).map_err(enc_err)?),
    };
    ContentInfo {
        content_type: oids::SIGNED_DATA,
        content: Any::encode_from(&sd).map_err(enc_err)?,
    }
    .to_der()
    .map_err(enc_err)
}

/// A CertRep under construction: first hand [`CertRep::signed_attributes_der`] to the RA
/// (`Scep.SignAttributes`, RSA PKCS#1 v1.5 with [`CertRep::digest`]), then
/// [`CertRep::finish`] with the signature.
#[derive(Debug)]
pub struct CertRep {
    attrs: SignedAttributes,
    attrs_der: Vec<u8>,
    econtent: Option<Vec<u8>>,
    digest: DigestAlg,
    /// The status this reply carries.
    pub status: PkiStatus,
}

impl CertRep {
    fn build(
        req_tid: &str,
        req_nonce: &[u8],
        digest: DigestAlg,
        status: PkiStatus,
        fail_info: Option<FailInfo>,
        econtent: Option<Vec<u8>>,
    ) -> Result<Self, ScepError> {
        // The RA signs with SHA-256 or SHA-512 only (no SHA-1 in the signer): answer SHA-512
        // requests in kind and everything else with SHA-256.
        let digest = match digest {
            DigestAlg::Sha512 => DigestAlg::Sha512,
            _ => DigestAlg::Sha256,
        };
        let mut nonce = vec![0u8; 16];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| ScepError::new(FailInfo::BadRequest, "rng"))?;
        let set = AttrSet {
            message_type: "3",
            transaction_id: req_tid.to_owned(),
            sender_nonce: nonce,
            recipient_nonce: Some(req_nonce.to_vec()),
            status: Some(status),
            fail_info,
        };
        let attrs = signed_attributes(&set, digest, econtent.as_deref())?;
        let attrs_der = attrs.to_der().map_err(enc_err)?;
        Ok(Self {
            attrs,
            attrs_der,
            econtent,
            digest,
            status,
        })
    }

    /// SUCCESS carrying `certs` (issued certificate first) and `crls`, encrypted to the
    /// request's signer certificate.
    pub fn success(
        req: &PkiMessage,
        certs: &[Vec<u8>],
        crls: &[Vec<u8>],
    ) -> Result<Self, ScepError> {
        let inner = degenerate(certs, crls)?;
        let env = envelope(&inner, &req.signer_cert_der)?;
        Self::build(
            &req.transaction_id,
            &req.sender_nonce,
            req.digest,
            PkiStatus::Success,
            None,
            Some(env),
        )
    }

    /// FAILURE with `fail_info`.
    pub fn failure(req: &PkiMessage, fail_info: FailInfo) -> Result<Self, ScepError> {
        Self::build(
            &req.transaction_id,
            &req.sender_nonce,
            req.digest,
            PkiStatus::Failure,
            Some(fail_info),
            None,
        )
    }

    /// FAILURE with `fail_info` for a request that did not parse or verify, addressed with the
    /// fields [`crate::parse_pki_message`] could still read ([`crate::ReplyTo`]).
    pub fn failure_to(to: &crate::ReplyTo, fail_info: FailInfo) -> Result<Self, ScepError> {
        Self::build(
            &to.transaction_id,
            &to.sender_nonce,
            to.digest,
            PkiStatus::Failure,
            Some(fail_info),
            None,
        )
    }

    /// PENDING (manual approval; the client polls with CertPoll).
    pub fn pending(req: &PkiMessage) -> Result<Self, ScepError> {
        Self::build(
            &req.transaction_id,
            &req.sender_nonce,
            req.digest,
            PkiStatus::Pending,
            None,
            None,
        )
    }

    /// The DER of the signed attributes (a SET OF, as the CMS signature covers it).
    pub fn signed_attributes_der(&self) -> &[u8] {
        &self.attrs_der
    }

    /// The digest the RA must sign with (SHA-512 for SHA-512 requests, otherwise SHA-256).
    pub fn digest(&self) -> DigestAlg {
        self.digest
    }

    /// The complete CertRep message (DER) given the RA's signature over the signed attributes
    /// and the RA certificate. The signerInfo names `rsaEncryption` as the signature algorithm
    /// (the only one strongSwan accepts).
    pub fn finish(self, signature: &[u8], ra_cert_der: &[u8]) -> Result<Vec<u8>, ScepError> {
        assemble(
            self.attrs,
            self.digest,
            oids::RSA_ENCRYPTION,
            signature,
            ra_cert_der,
            self.econtent.as_deref(),
        )
    }
}

/// The GetNextCACert answer (RFC 8894 §3.5.2, §4.7.1) under construction: a certificates-only
/// SignedData (no encapsulated content) holding the next CA certificate and its chain, signed by
/// the current RA so a client can tell it from a forgery with the RA certificate it already has
/// from GetCACert. As with [`CertRep`], hand [`NextCaCert::signed_attributes_der`] to the RA
/// (`Scep.SignAttributes`, RSA PKCS#1 v1.5 SHA-256), then [`NextCaCert::finish`].
///
/// The signed attributes are contentType id-data, signingTime and messageDigest over the empty
/// (absent) content, which is what a detached verifier computes (`openssl cms -verify -content
/// /dev/null`, BouncyCastle's `CMSAbsentContent`). The current RA certificate is not put into
/// the certificate set: everything there is the *next* hierarchy.
#[derive(Debug)]
pub struct NextCaCert {
    attrs: SignedAttributes,
    attrs_der: Vec<u8>,
    certs: Vec<Vec<u8>>,
}

/// Content type of the GetNextCACert answer.
pub const NEXT_CA_CERT_CONTENT_TYPE: &str = "application/x-x509-next-ca-cert";

impl NextCaCert {
    /// `next_chain`: the next CA certificate first, then its issuers (all DER); `now_unix`:
    /// the signingTime.
    pub fn new(next_chain: &[Vec<u8>], now_unix: u64) -> Result<Self, ScepError> {
        if next_chain.is_empty() {
            return Err(ScepError::new(
                FailInfo::BadRequest,
                "no next CA certificate",
            ));
        }
        // Reject what is not a certificate before asking anyone to sign it.
        certificate_set(next_chain)?;
        let time = x509_cert::time::Time::UtcTime(
            der::asn1::UtcTime::from_unix_duration(std::time::Duration::from_secs(now_unix))
                .map_err(enc_err)?,
        );
        let attrs: SignedAttributes = SetOfVec::try_from(vec![
            attr(
                oids::CONTENT_TYPE,
                Any::encode_from(&oids::DATA).map_err(enc_err)?,
            )?,
            attr(SIGNING_TIME, Any::encode_from(&time).map_err(enc_err)?)?,
            attr(
                oids::MESSAGE_DIGEST,
                octets_any(&DigestAlg::Sha256.digest(&[]))?,
            )?,
        ])
        .map_err(enc_err)?;
        let attrs_der = attrs.to_der().map_err(enc_err)?;
        Ok(Self {
            attrs,
            attrs_der,
            certs: next_chain.to_vec(),
        })
    }

    /// The DER of the signed attributes (a SET OF, as the CMS signature covers it).
    pub fn signed_attributes_der(&self) -> &[u8] {
        &self.attrs_der
    }

    /// The digest the RA signs with.
    pub fn digest(&self) -> DigestAlg {
        DigestAlg::Sha256
    }

    /// The complete SignedData ContentInfo (DER) given the RA's signature over the signed
    /// attributes and the RA certificate (which names the signer; not included).
    pub fn finish(self, signature: &[u8], ra_cert_der: &[u8]) -> Result<Vec<u8>, ScepError> {
        assemble_with_certs(
            self.attrs,
            DigestAlg::Sha256,
            oids::RSA_ENCRYPTION,
            signature,
            ra_cert_der,
            &self.certs,
            None,
        )
    }
}

/// PKCS#9 signingTime.
const SIGNING_TIME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");
