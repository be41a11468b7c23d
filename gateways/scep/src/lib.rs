//! certgate's SCEP (RFC 8894) gateway logic, free of I/O.
//!
//! The edge owns the HTTP glue; this crate parses a PKIOperation message (CMS SignedData wrapping
//! EnvelopedData), verifies the client's signature, hands the RA the encrypted content-encryption
//! key (the RA key lives in the signer, reached through the core — never here), decrypts the
//! content with the key it gets back and builds the CertRep whose signed attributes the RA signs.
//! Both RA operations are split into "here is what to send" / "here is what came back" steps so
//! the crate stays sans-I/O and the edge can make them async RPCs.

mod lenient;
mod message;
mod reply;

pub mod ber;
pub mod client;

pub use message::{
    DEFAULT_SIGNING_TIME_SKEW, DigestAlg, IssuerAndSerial, KeyTransport, MAX_MESSAGE_LEN,
    MessageType, PkiMessage, RequestContent, parse_pki_message, parse_pki_message_at,
};
pub use reply::{
    CertRep, NEXT_CA_CERT_CONTENT_TYPE, NextCaCert, ca_caps, ca_caps_with_next_ca, ca_cert_response,
};

/// The failInfo values of RFC 8894 §3.2.1.4; every rejected request maps to one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailInfo {
    /// Unrecognized or unsupported algorithm.
    BadAlg = 0,
    /// Integrity check (signature or decryption) failed.
    BadMessageCheck = 1,
    /// Transaction not permitted or supported (includes a wrong challenge).
    BadRequest = 2,
    /// The signingTime attribute was not close enough to the server's time.
    BadTime = 3,
    /// No certificate could be identified matching the provided criteria.
    BadCertId = 4,
}

impl FailInfo {
    /// The decimal string carried in the failInfo attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadAlg => "0",
            Self::BadMessageCheck => "1",
            Self::BadRequest => "2",
            Self::BadTime => "3",
            Self::BadCertId => "4",
        }
    }

    /// The RFC 8894 name ("badAlg", …), as `Scep.Enroll` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Self::BadAlg => "badAlg",
            Self::BadMessageCheck => "badMessageCheck",
            Self::BadRequest => "badRequest",
            Self::BadTime => "badTime",
            Self::BadCertId => "badCertId",
        }
    }
}

/// The pkiStatus of a CertRep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PkiStatus {
    /// Request granted.
    Success,
    /// Request rejected (with a failInfo).
    Failure,
    /// Request pending manual approval.
    Pending,
}

impl PkiStatus {
    /// The decimal string carried in the pkiStatus attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "0",
            Self::Failure => "2",
            Self::Pending => "3",
        }
    }

    /// The RFC 8894 name ("SUCCESS", "FAILURE", "PENDING"), as `Scep.Enroll` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::Failure => "FAILURE",
            Self::Pending => "PENDING",
        }
    }
}

/// Why a message was rejected. `fail_info` tells the edge which CertRep to send. A message
/// refused by [`parse_pki_message`] carries `reply_to` when its SignedData could be read far
/// enough to address a CertRep FAILURE (transactionID and senderNonce, RFC 8894 §3.3.2.2); only a
/// message without them is answered with HTTP 400.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct ScepError {
    /// The failInfo to report to the client.
    pub fail_info: FailInfo,
    /// A short description for logs (never contains secrets).
    pub reason: String,
    /// Where a CertRep FAILURE for a message that did not parse or verify goes, if anywhere.
    pub reply_to: Option<Box<ReplyTo>>,
}

/// The fields of a refused request that a CertRep FAILURE needs: they are taken from the signed
/// attributes *without* trusting them (the signature may be the very thing that failed), which
/// is all a FAILURE carries back — no certificate, no encrypted content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// transactionID, echoed.
    pub transaction_id: String,
    /// senderNonce, echoed as recipientNonce.
    pub sender_nonce: Vec<u8>,
    /// The request's digest algorithm if supported (SHA-256 otherwise).
    pub digest: DigestAlg,
}

impl ScepError {
    pub(crate) fn new(fail_info: FailInfo, reason: impl Into<String>) -> Self {
        Self {
            fail_info,
            reason: reason.into(),
            reply_to: None,
        }
    }
}

/// OIDs of the SCEP signed attributes and the algorithms used here.
pub mod oids {
    use const_oid::ObjectIdentifier as Oid;
    /// id-messageType.
    pub const MESSAGE_TYPE: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.2");
    /// id-pkiStatus.
    pub const PKI_STATUS: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.3");
    /// id-failInfo.
    pub const FAIL_INFO: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.4");
    /// id-senderNonce.
    pub const SENDER_NONCE: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.5");
    /// id-recipientNonce.
    pub const RECIPIENT_NONCE: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.6");
    /// id-transactionID.
    pub const TRANSACTION_ID: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.7");
    /// PKCS#9 contentType.
    pub const CONTENT_TYPE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.3");
    /// PKCS#9 messageDigest.
    pub const MESSAGE_DIGEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.4");
    /// PKCS#9 signingTime (RFC 5652 §11.3).
    pub const SIGNING_TIME: Oid = Oid::new_unwrap("1.2.840.113549.1.9.5");
    /// PKCS#9 challengePassword.
    pub const CHALLENGE_PASSWORD: Oid = Oid::new_unwrap("1.2.840.113549.1.9.7");
    /// id-data.
    pub const DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.1");
    /// id-signedData.
    pub const SIGNED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.2");
    /// id-envelopedData.
    pub const ENVELOPED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.3");
    /// rsaEncryption (also the only signerInfo signature algorithm strongSwan accepts).
    pub const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
    /// sha1WithRSAEncryption.
    pub const SHA1_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.5");
    /// sha256WithRSAEncryption.
    pub const SHA256_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
    /// sha384WithRSAEncryption.
    pub const SHA384_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
    /// sha512WithRSAEncryption.
    pub const SHA512_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
    /// SHA-1.
    pub const SHA1: Oid = Oid::new_unwrap("1.3.14.3.2.26");
    /// SHA-256.
    pub const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
    /// SHA-384.
    pub const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
    /// SHA-512.
    pub const SHA512: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.3");
    /// AES-128-CBC.
    pub const AES128_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.2");
    /// AES-192-CBC.
    pub const AES192_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.22");
    /// AES-256-CBC.
    pub const AES256_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.42");
    /// DES-EDE3-CBC.
    pub const DES_EDE3_CBC: Oid = Oid::new_unwrap("1.2.840.113549.3.7");
}
