//! Constant OCSP error responses (RFC 6960 §4.2.1).
//!
//! ```text
//! OCSPResponse ::= SEQUENCE {
//!    responseStatus         OCSPResponseStatus,
//!    responseBytes      [0] EXPLICIT ResponseBytes OPTIONAL }
//! ```
//!
//! An error response is the SEQUENCE with only the ENUMERATED status: five bytes, the same for
//! every request, so they are `'static` and cost nothing to send. They are unsigned, as RFC 6960
//! §2.3 requires, and carry no caching headers (the glue should send `Cache-Control: no-store`
//! or nothing). The tests check each against x509-ocsp's own encoding.

use bytes::Bytes;

/// The OCSP `responseStatus` values this responder sends on its own (the `successful` ones come
/// precomputed from the core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OcspStatus {
    /// `malformedRequest (1)`: the request did not decode.
    MalformedRequest,
    /// `internalError (2)`: the responder is in an inconsistent state.
    InternalError,
    /// `tryLater (3)`: the answer is not available now (core unreachable, shed).
    TryLater,
    /// `unauthorized (6)`: this responder does not answer for that certificate (RFC 5019 §2.2.3).
    Unauthorized,
}

const MALFORMED_REQUEST: &[u8] = &[0x30, 0x03, 0x0a, 0x01, 0x01];
const INTERNAL_ERROR: &[u8] = &[0x30, 0x03, 0x0a, 0x01, 0x02];
const TRY_LATER: &[u8] = &[0x30, 0x03, 0x0a, 0x01, 0x03];
const UNAUTHORIZED: &[u8] = &[0x30, 0x03, 0x0a, 0x01, 0x06];

impl OcspStatus {
    /// The numeric `OCSPResponseStatus`.
    pub const fn code(self) -> u8 {
        match self {
            OcspStatus::MalformedRequest => 1,
            OcspStatus::InternalError => 2,
            OcspStatus::TryLater => 3,
            OcspStatus::Unauthorized => 6,
        }
    }

    /// The DER `OCSPResponse` carrying only this status.
    pub const fn der(self) -> &'static [u8] {
        match self {
            OcspStatus::MalformedRequest => MALFORMED_REQUEST,
            OcspStatus::InternalError => INTERNAL_ERROR,
            OcspStatus::TryLater => TRY_LATER,
            OcspStatus::Unauthorized => UNAUTHORIZED,
        }
    }

    /// The same bytes as a [`Bytes`] (static, no allocation).
    pub fn bytes(self) -> Bytes {
        Bytes::from_static(self.der())
    }

    /// HTTP status to send with this OCSP response. OCSP errors travel inside a 200 response with
    /// `Content-Type: application/ocsp-response` (RFC 6960 Appendix A.2: the HTTP layer carries
    /// the OCSP answer; clients read `responseStatus`).
    pub const fn http_status(self) -> u16 {
        200
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::{Decode, Encode};
    use x509_ocsp::{OcspResponse, OcspResponseStatus};

    fn check(status: OcspStatus, theirs: OcspResponse, code: OcspResponseStatus) {
        assert_eq!(status.der(), theirs.to_der().unwrap().as_slice());
        let back = OcspResponse::from_der(status.der()).unwrap();
        assert_eq!(back.response_status, code);
        assert!(back.response_bytes.is_none());
        assert_eq!(status.code() as u32, code as u32);
        assert_eq!(&status.bytes()[..], status.der());
    }

    #[test]
    fn malformed_request_matches_x509_ocsp_encoding() {
        check(
            OcspStatus::MalformedRequest,
            OcspResponse::malformed_request(),
            OcspResponseStatus::MalformedRequest,
        );
    }

    #[test]
    fn internal_error_matches_x509_ocsp_encoding() {
        check(
            OcspStatus::InternalError,
            OcspResponse::internal_error(),
            OcspResponseStatus::InternalError,
        );
    }

    #[test]
    fn try_later_matches_x509_ocsp_encoding() {
        check(
            OcspStatus::TryLater,
            OcspResponse::try_later(),
            OcspResponseStatus::TryLater,
        );
    }

    #[test]
    fn unauthorized_matches_x509_ocsp_encoding() {
        check(
            OcspStatus::Unauthorized,
            OcspResponse::unauthorized(),
            OcspResponseStatus::Unauthorized,
        );
    }
}
