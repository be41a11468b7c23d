//! The few CMS/X.509 structures of a request whose serial numbers the `cms`/`x509-cert` types
//! refuse.
//!
//! `x509-cert` (RFC 5280 profile) rejects serial numbers longer than 21 octets, and the `cms`
//! types carry that profile in every IssuerAndSerialNumber and Certificate. Real SCEP clients
//! sign PKCSReq with self-signed certificates whose serial is longer: certmonger's is 32 octets
//! (a SHA-256 value). RFC 8894 §3.3.1 makes that certificate throw-away, so its serial only has
//! to be echoed, never judged. These mirrors decode (and, for the reply's recipient, encode)
//! the serial as a plain INTEGER; everything else is the same DER as the `cms` types.

use cms::content_info::CmsVersion;
use cms::enveloped_data::EncryptedContentInfo;
use cms::signed_data::{EncapsulatedContentInfo, SignedAttributes, UnsignedAttributes};
use der::asn1::{BitString, Int, OctetString, SetOfVec};
use der::{Any, Decode, Encode, Sequence, Tag, Tagged};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::name::Name;

/// IssuerAndSerialNumber with an unbounded serial (RFC 5652 §10.2.4).
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub(crate) struct IssuerSerial {
    /// The issuer's name.
    pub issuer: Name,
    /// The serial number as encoded (two's complement, minimal).
    pub serial_number: Int,
}

/// SignedData (RFC 5652 §5.1) with certificates and SignerInfos left for [`Cert`] and
/// [`SignerInfo`].
#[derive(Clone, Debug, Sequence)]
pub(crate) struct SignedData {
    pub version: Any,
    pub digest_algorithms: Any,
    pub encap_content_info: EncapsulatedContentInfo,
    #[asn1(
        context_specific = "0",
        tag_mode = "IMPLICIT",
        constructed = "true",
        optional = "true"
    )]
    pub certificates: Option<SetOfVec<Any>>,
    #[asn1(
        context_specific = "1",
        tag_mode = "IMPLICIT",
        constructed = "true",
        optional = "true"
    )]
    pub crls: Option<SetOfVec<Any>>,
    pub signer_infos: SetOfVec<SignerInfo>,
}

/// SignerInfo (RFC 5652 §5.3); `sid` is decoded on demand by [`SignerInfo::issuer_serial`].
#[derive(Clone, Debug, PartialEq, Eq, Sequence, der::ValueOrd)]
pub(crate) struct SignerInfo {
    pub version: Any,
    pub sid: Any,
    pub digest_alg: AlgorithmIdentifierOwned,
    #[asn1(
        context_specific = "0",
        tag_mode = "IMPLICIT",
        constructed = "true",
        optional = "true"
    )]
    pub signed_attrs: Option<SignedAttributes>,
    pub signature_algorithm: AlgorithmIdentifierOwned,
    pub signature: OctetString,
    #[asn1(
        context_specific = "1",
        tag_mode = "IMPLICIT",
        constructed = "true",
        optional = "true"
    )]
    pub unsigned_attrs: Option<UnsignedAttributes>,
}

impl SignerInfo {
    /// The signer named by issuer and serial; `None` for a subjectKeyIdentifier.
    pub fn issuer_serial(&self) -> Option<IssuerSerial> {
        if self.sid.tag() != Tag::Sequence {
            return None;
        }
        self.sid.decode_as().ok()
    }
}

/// The TBSCertificate fields the gateway reads (RFC 5280 §4.1), serial unbounded.
#[derive(Clone, Debug, Sequence)]
pub(crate) struct Tbs {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub version: Option<Any>,
    pub serial_number: Int,
    pub signature: Any,
    pub issuer: Name,
    pub validity: Any,
    pub subject: Any,
    pub subject_public_key_info: SubjectPublicKeyInfoOwned,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    pub issuer_unique_id: Option<BitString>,
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
    pub subject_unique_id: Option<BitString>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    pub extensions: Option<Any>,
}

/// A Certificate whose TBS is [`Tbs`].
#[derive(Clone, Debug, Sequence)]
pub(crate) struct Cert {
    pub tbs_certificate: Tbs,
    pub signature_algorithm: Any,
    pub signature: Any,
}

impl Cert {
    /// Decodes a certificate, DER.
    pub fn from_der_lenient(der_bytes: &[u8]) -> der::Result<Self> {
        Self::from_der(der_bytes)
    }

    /// Its issuer and serial number.
    pub fn issuer_serial(&self) -> IssuerSerial {
        IssuerSerial {
            issuer: self.tbs_certificate.issuer.clone(),
            serial_number: self.tbs_certificate.serial_number.clone(),
        }
    }
}

/// KeyTransRecipientInfo (RFC 5652 §6.2.1) naming the recipient by issuer and serial.
#[derive(Clone, Debug, Sequence)]
pub(crate) struct KeyTransRecipientInfo {
    pub version: CmsVersion,
    pub rid: IssuerSerial,
    pub key_enc_alg: AlgorithmIdentifierOwned,
    pub enc_key: OctetString,
}

/// EnvelopedData (RFC 5652 §6.1) with one KeyTransRecipientInfo and no originator info or
/// unprotected attributes: what a CertRep carries.
#[derive(Clone, Debug, Sequence)]
pub(crate) struct EnvelopedData {
    pub version: CmsVersion,
    /// The SET OF RecipientInfo, DER (one element).
    pub recip_infos: Any,
    pub encrypted_content: EncryptedContentInfo,
}

impl EnvelopedData {
    /// An EnvelopedData for one key-transport recipient.
    pub fn one_recipient(
        ktri: &KeyTransRecipientInfo,
        encrypted_content: EncryptedContentInfo,
    ) -> der::Result<Self> {
        Ok(Self {
            version: CmsVersion::V0,
            recip_infos: Any::new(Tag::Set, ktri.to_der()?)?,
            encrypted_content,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_32_octet_serial_round_trips() {
        let serial = [0x2bu8; 32];
        let is = IssuerSerial {
            issuer: Name::default(),
            serial_number: Int::new(&serial).expect("an INTEGER"),
        };
        let der_bytes = is.to_der().expect("encodes");
        let back = IssuerSerial::from_der(&der_bytes).expect("decodes");
        assert_eq!(back.serial_number.as_bytes(), &serial[..]);
        // What the `cms` types refuse.
        assert!(cms::cert::IssuerAndSerialNumber::from_der(&der_bytes).is_err());
    }
}
