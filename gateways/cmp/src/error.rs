//! CMP failures: a PKIFailureInfo bit and a client-safe text, which become an `error` message.

use crate::der_util;

/// PKIFailureInfo bits (RFC 4210 §5.2.3, RFC 9480). Own table because the `cmpv2` 0.2 flag set
/// gives badTime the value of badRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
#[repr(u8)]
pub enum FailInfo {
    BadAlg = 0,
    BadMessageCheck = 1,
    BadRequest = 2,
    BadTime = 3,
    BadCertId = 4,
    BadDataFormat = 5,
    WrongAuthority = 6,
    IncorrectData = 7,
    BadPop = 9,
    CertConfirmed = 11,
    BadRecipientNonce = 13,
    BadSenderNonce = 18,
    BadCertTemplate = 19,
    SignerNotTrusted = 20,
    TransactionIdInUse = 21,
    UnsupportedVersion = 22,
    NotAuthorized = 23,
    SystemUnavail = 24,
    SystemFailure = 25,
}

impl FailInfo {
    /// The metrics/log label.
    pub fn label(self) -> &'static str {
        match self {
            FailInfo::BadAlg => "badAlg",
            FailInfo::BadMessageCheck => "badMessageCheck",
            FailInfo::BadRequest => "badRequest",
            FailInfo::BadTime => "badTime",
            FailInfo::BadCertId => "badCertId",
            FailInfo::BadDataFormat => "badDataFormat",
            FailInfo::WrongAuthority => "wrongAuthority",
            FailInfo::IncorrectData => "incorrectData",
            FailInfo::BadPop => "badPOP",
            FailInfo::CertConfirmed => "certConfirmed",
            FailInfo::BadRecipientNonce => "badRecipientNonce",
            FailInfo::BadSenderNonce => "badSenderNonce",
            FailInfo::BadCertTemplate => "badCertTemplate",
            FailInfo::SignerNotTrusted => "signerNotTrusted",
            FailInfo::TransactionIdInUse => "transactionIdInUse",
            FailInfo::UnsupportedVersion => "unsupportedVersion",
            FailInfo::NotAuthorized => "notAuthorized",
            FailInfo::SystemUnavail => "systemUnavail",
            FailInfo::SystemFailure => "systemFailure",
        }
    }

    /// The DER BIT STRING of this single named bit (trailing zero bits dropped, X.690 11.2.2).
    pub fn bit_string_der(self) -> Vec<u8> {
        let bit = self as usize;
        let nbytes = bit / 8 + 1;
        let mut v = vec![0u8; nbytes + 1];
        v[0] = (7 - (bit % 8)) as u8;
        v[1 + bit / 8] = 0x80 >> (bit % 8);
        der_util::tlv(0x03, &v)
    }
}

/// Why a CMP request is refused: the failInfo bit the client gets and a text safe to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {text}", fail.label())]
pub struct CmpError {
    /// The PKIFailureInfo bit.
    pub fail: FailInfo,
    /// The statusString (never secret material or internal detail).
    pub text: String,
}

impl CmpError {
    /// A failure with its text.
    pub fn new(fail: FailInfo, text: impl Into<String>) -> Self {
        Self {
            fail,
            text: text.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_bits_encode_minimally() {
        // badAlg (bit 0): one byte, 7 unused bits, 0x80.
        assert_eq!(
            FailInfo::BadAlg.bit_string_der(),
            vec![0x03, 0x02, 0x07, 0x80]
        );
        // badTime (bit 3).
        assert_eq!(
            FailInfo::BadTime.bit_string_der(),
            vec![0x03, 0x02, 0x04, 0x10]
        );
        // badPOP (bit 9): second byte, bit 1.
        assert_eq!(
            FailInfo::BadPop.bit_string_der(),
            vec![0x03, 0x03, 0x06, 0x00, 0x40]
        );
        // transactionIdInUse (bit 21).
        assert_eq!(
            FailInfo::TransactionIdInUse.bit_string_der(),
            vec![0x03, 0x04, 0x02, 0x00, 0x00, 0x04]
        );
    }
}
