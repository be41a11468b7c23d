//! The crate's one error type. Each variant names what the peer (or the data the core pushed)
//! did; the mapping to an OCSP `responseStatus` lives in one table, [`Error::ocsp_status`], next
//! to the constant DER answers in [`crate::status`].

use crate::status::OcspStatus;

/// Everything that can go wrong while decoding an OCSP request, resolving it against the
/// tenant's issuers, or taking in a response or CRL from the core.
///
/// Display strings never carry request bytes or another tenant's data: they are safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The POST body is larger than the configured limit.
    #[error("request body of {len} bytes exceeds the {max}-byte limit")]
    BodyTooLarge {
        /// Bytes received.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The GET request segment is longer than the configured limit.
    #[error("GET request segment of {len} characters exceeds the {max}-character limit")]
    UriTooLong {
        /// Characters received.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A POST without `Content-Type: application/ocsp-request` (RFC 6960 Appendix A.1).
    #[error("POST Content-Type must be application/ocsp-request")]
    WrongContentType,
    /// The body or GET segment is empty.
    #[error("empty OCSP request")]
    EmptyRequest,
    /// A `%` in the GET segment is not followed by two hex digits.
    #[error("bad percent-encoding in the GET request segment")]
    BadPercentEncoding,
    /// The GET segment is not base64 (standard or URL-safe alphabet).
    #[error("the GET request segment is not base64")]
    BadBase64,
    /// The bytes are not a DER `OCSPRequest` (truncated, trailing data, wrong structure).
    #[error("not a DER OCSPRequest: {0}")]
    MalformedDer(der::Error),
    /// The `requestList` is empty (RFC 6960 §4.1.1 needs at least one CertID to answer).
    #[error("the request names no certificate")]
    NoCertIds,
    /// More CertIDs than the configured limit (I-8: every request is bounded).
    #[error("the request names {count} certificates, more than the limit of {max}")]
    TooManyCertIds {
        /// CertIDs in the request.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// A nonce extension whose value is empty (RFC 8954 / RFC 9654: at least one octet).
    #[error("empty nonce")]
    EmptyNonce,
    /// The request is signed and this deployment is configured to refuse signed requests.
    #[error("signed requests are refused by configuration")]
    SignedRequestRefused,
    /// The CertID's hash algorithm is neither SHA-1 nor SHA-256.
    #[error("CertID hash algorithm is not SHA-1 or SHA-256")]
    UnsupportedHashAlgorithm,
    /// The CertID's issuer hashes match no issuer of this tenant.
    #[error("CertID names an issuer this responder does not serve")]
    UnknownIssuer,
    /// The serial number cannot belong to a certificate this CA issued (over 20 octets).
    #[error("serial number longer than 20 octets")]
    SerialTooLong,
    /// An issuer id outside `[A-Za-z0-9._-]{1,128}`.
    #[error("invalid issuer id")]
    BadIssuerId,
    /// An issuer certificate handed to the index does not parse or encode.
    #[error("bad issuer certificate: {0}")]
    BadIssuerCertificate(der::Error),
    /// An OCSP response handed in for caching is not a usable RFC 5019 response.
    #[error("unusable OCSP response: {0}")]
    BadResponse(&'static str),
    /// A CRL handed in for caching is not a usable RFC 5280 CRL.
    #[error("unusable CRL: {0}")]
    BadCrl(&'static str),
}

impl Error {
    /// The one table from an error to the OCSP `responseStatus` sent to the client
    /// (RFC 6960 §4.2.1). Errors that only arise when taking in the core's data (bad issuer
    /// certificate, response or CRL) are `internalError`: the client did nothing wrong.
    pub fn ocsp_status(&self) -> OcspStatus {
        match self {
            Error::BodyTooLarge { .. }
            | Error::UriTooLong { .. }
            | Error::WrongContentType
            | Error::EmptyRequest
            | Error::BadPercentEncoding
            | Error::BadBase64
            | Error::MalformedDer(_)
            | Error::NoCertIds
            | Error::TooManyCertIds { .. }
            | Error::EmptyNonce => OcspStatus::MalformedRequest,
            Error::SignedRequestRefused
            | Error::UnsupportedHashAlgorithm
            | Error::UnknownIssuer
            | Error::SerialTooLong => OcspStatus::Unauthorized,
            Error::BadIssuerId
            | Error::BadIssuerCertificate(_)
            | Error::BadResponse(_)
            | Error::BadCrl(_) => OcspStatus::InternalError,
        }
    }
}

impl From<der::Error> for Error {
    fn from(e: der::Error) -> Self {
        Error::MalformedDer(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: Error) -> OcspStatus {
        e.ocsp_status()
    }

    #[test]
    fn oversized_body_is_malformed_request() {
        assert_eq!(
            status(Error::BodyTooLarge { len: 2, max: 1 }),
            OcspStatus::MalformedRequest
        );
    }

    #[test]
    fn overlong_get_segment_is_malformed_request() {
        assert_eq!(
            status(Error::UriTooLong { len: 2, max: 1 }),
            OcspStatus::MalformedRequest
        );
    }

    #[test]
    fn decoding_failures_are_malformed_request() {
        for e in [
            Error::WrongContentType,
            Error::EmptyRequest,
            Error::BadPercentEncoding,
            Error::BadBase64,
            Error::MalformedDer(
                der::ErrorKind::Incomplete {
                    expected_len: der::Length::ONE,
                    actual_len: der::Length::ZERO,
                }
                .into(),
            ),
            Error::NoCertIds,
            Error::TooManyCertIds { count: 3, max: 2 },
            Error::EmptyNonce,
        ] {
            assert_eq!(status(e), OcspStatus::MalformedRequest);
        }
    }

    #[test]
    fn refused_signed_request_is_unauthorized() {
        assert_eq!(
            status(Error::SignedRequestRefused),
            OcspStatus::Unauthorized
        );
    }

    #[test]
    fn unknown_issuer_is_unauthorized() {
        assert_eq!(status(Error::UnknownIssuer), OcspStatus::Unauthorized);
    }

    #[test]
    fn unsupported_hash_is_unauthorized() {
        assert_eq!(
            status(Error::UnsupportedHashAlgorithm),
            OcspStatus::Unauthorized
        );
    }

    #[test]
    fn overlong_serial_is_unauthorized() {
        assert_eq!(status(Error::SerialTooLong), OcspStatus::Unauthorized);
    }

    #[test]
    fn bad_core_data_is_internal_error() {
        for e in [
            Error::BadIssuerId,
            Error::BadResponse("x"),
            Error::BadCrl("x"),
        ] {
            assert_eq!(status(e), OcspStatus::InternalError);
        }
    }
}
