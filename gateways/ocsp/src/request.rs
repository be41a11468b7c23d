//! OCSP request decoding (RFC 6960 §4.1, Appendix A.1; RFC 5019 §5).
//!
//! Two transports carry the same DER `OCSPRequest`:
//! - POST: the body, `Content-Type: application/ocsp-request` ([`decode_post`]);
//! - GET: `/ocsp/{base64(DER)}` ([`decode_get`]). RFC 6960 Appendix A.1 says base64 (standard
//!   alphabet) then URL-encoded; clients send it percent-encoded, half-encoded or raw (so the
//!   segment may contain `/`), and many send base64url. Explicit leniency: percent-escapes are
//!   decoded first, then `-`/`_` are read as `+`/`/`, padding is optional. Nothing else
//!   (whitespace, `+` as space) is accepted.
//!
//! The signature of a signed request is never checked: RFC 5019 §2.1.2 lets a responder ignore
//! it, and the answer is the same precomputed response either way. [`Limits::refuse_signed`]
//! turns signed requests into `unauthorized` instead.
//!
//! Nonce (RFC 9654, which updates RFC 6960 §4.4.1): noted in [`DecodedRequest::nonce`] and
//! otherwise ignored, because every response is precomputed and carries no nonce. A client that
//! insists on a nonce (`openssl ocsp` warns "no nonce in response" and carries on; a strict
//! client fails) cannot be served by a precomputing responder; RFC 5019 §4 documents this.
//! A nonce extension with an empty value is malformed (RFC 8954 and RFC 9654 both require at
//! least one octet). Explicit leniency: a nonce whose extension value is not the DER
//! `OCTET STRING` RFC 9654 defines (the pre-RFC 8954 raw form some clients send) is taken as raw
//! bytes rather than refused.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use const_oid::db::rfc6960::ID_PKIX_OCSP_NONCE;
use der::Decode;
use x509_ocsp::{CertId, OcspRequest};

use crate::Error;

/// `Content-Type` of an OCSP request (RFC 6960 Appendix A.1).
pub const REQUEST_CONTENT_TYPE: &str = "application/ocsp-request";

/// Bounds applied while decoding (I-8). The glue also bounds the body it reads; these are checked
/// again here so the crate is safe on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest POST body accepted, in bytes. Default 8 KiB (a one-CertID request is ~80 bytes;
    /// a signed one with a certificate a few KiB).
    pub max_body: usize,
    /// Longest GET segment accepted, in characters, before percent-decoding. Default 4 KiB.
    pub max_get: usize,
    /// Most CertIDs in one request. Default 16.
    pub max_cert_ids: usize,
    /// Refuse signed requests with `unauthorized` instead of ignoring the signature.
    pub refuse_signed: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 8 * 1024,
            max_get: 4 * 1024,
            max_cert_ids: 16,
            refuse_signed: false,
        }
    }
}

/// An OCSP request after decoding: what the responder needs from it, nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRequest {
    /// Every CertID of the `requestList`, in request order (RFC 6960 §4.1.1).
    pub cert_ids: Vec<CertId>,
    /// The nonce (RFC 9654), if the request has one. Noted, never echoed: see the module docs.
    pub nonce: Option<Vec<u8>>,
    /// Whether the request carried `optionalSignature` (never verified).
    pub signed: bool,
}

/// Decodes a POST body. `content_type` is the request's `Content-Type` header, if any; its media
/// type must be `application/ocsp-request` (case-insensitive, parameters ignored).
pub fn decode_post(
    content_type: Option<&str>,
    body: &[u8],
    limits: &Limits,
) -> Result<DecodedRequest, Error> {
    if !content_type.is_some_and(is_ocsp_request_type) {
        return Err(Error::WrongContentType);
    }
    if body.len() > limits.max_body {
        return Err(Error::BodyTooLarge {
            len: body.len(),
            max: limits.max_body,
        });
    }
    decode_der(body, limits)
}

/// Decodes the GET segment: everything after `/ocsp/` in the request path (without the query
/// string), possibly containing `/`.
pub fn decode_get(segment: &str, limits: &Limits) -> Result<DecodedRequest, Error> {
    let der = get_segment_to_der(segment, limits)?;
    decode_der(&der, limits)
}

/// Decodes a DER `OCSPRequest` (no transport checks besides the limits).
pub fn decode_der(der: &[u8], limits: &Limits) -> Result<DecodedRequest, Error> {
    if der.is_empty() {
        return Err(Error::EmptyRequest);
    }
    let req = OcspRequest::from_der(der)?;
    let signed = req.optional_signature.is_some();
    if signed && limits.refuse_signed {
        return Err(Error::SignedRequestRefused);
    }
    let tbs = req.tbs_request;
    if tbs.request_list.is_empty() {
        return Err(Error::NoCertIds);
    }
    if tbs.request_list.len() > limits.max_cert_ids {
        return Err(Error::TooManyCertIds {
            count: tbs.request_list.len(),
            max: limits.max_cert_ids,
        });
    }
    let nonce = match tbs
        .request_extensions
        .as_ref()
        .and_then(|exts| exts.iter().find(|e| e.extn_id == ID_PKIX_OCSP_NONCE))
    {
        None => None,
        Some(ext) => {
            let raw = ext.extn_value.as_bytes();
            let value = match der::asn1::OctetString::from_der(raw) {
                Ok(inner) => inner.as_bytes().to_vec(),
                Err(_) => raw.to_vec(),
            };
            if value.is_empty() {
                return Err(Error::EmptyNonce);
            }
            Some(value)
        }
    };
    Ok(DecodedRequest {
        cert_ids: tbs.request_list.into_iter().map(|r| r.req_cert).collect(),
        nonce,
        signed,
    })
}

/// Whether a `Content-Type` value names `application/ocsp-request`.
pub fn is_ocsp_request_type(value: &str) -> bool {
    let media = value.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case(REQUEST_CONTENT_TYPE)
}

/// base64 with either alphabet (after mapping), padding optional.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn get_segment_to_der(segment: &str, limits: &Limits) -> Result<Vec<u8>, Error> {
    if segment.len() > limits.max_get {
        return Err(Error::UriTooLong {
            len: segment.len(),
            max: limits.max_get,
        });
    }
    if segment.is_empty() {
        return Err(Error::EmptyRequest);
    }
    let bytes = segment.as_bytes();
    let mut b64 = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_val);
                let lo = bytes.get(i + 2).copied().and_then(hex_val);
                match (hi, lo) {
                    (Some(h), Some(l)) => {
                        i += 2;
                        (h << 4) | l
                    }
                    _ => return Err(Error::BadPercentEncoding),
                }
            }
            c => c,
        };
        b64.push(match c {
            b'-' => b'+',
            b'_' => b'/',
            c => c,
        });
        i += 1;
    }
    LENIENT.decode(&b64).map_err(|_| Error::BadBase64)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use der::Encode;
    use der::asn1::{Null, OctetString};
    use x509_cert::ext::Extension;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::spki::AlgorithmIdentifierOwned;
    use x509_ocsp::{Request, TbsRequest};

    /// A request whose base64 contains `+`, `/` and `=` (found by search over serials), so the
    /// GET variants exercise every special character.
    fn request(serial: &[u8], nonce: Option<&[u8]>) -> Vec<u8> {
        let cert_id = CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: const_oid::db::rfc5912::ID_SHA_1,
                parameters: Some(Null.into()),
            },
            issuer_name_hash: OctetString::new(vec![0xfb; 20]).unwrap(),
            issuer_key_hash: OctetString::new(vec![0xff; 20]).unwrap(),
            serial_number: SerialNumber::new(serial).unwrap(),
        };
        let request_extensions = nonce.map(|n| {
            vec![Extension {
                extn_id: ID_PKIX_OCSP_NONCE,
                critical: false,
                extn_value: OctetString::new(OctetString::new(n).unwrap().to_der().unwrap())
                    .unwrap(),
            }]
        });
        OcspRequest {
            tbs_request: TbsRequest {
                request_list: vec![Request {
                    req_cert: cert_id,
                    single_request_extensions: None,
                }],
                request_extensions,
                ..Default::default()
            },
            optional_signature: None,
        }
        .to_der()
        .unwrap()
    }

    fn special_request() -> (Vec<u8>, String) {
        for s in 1u16..2000 {
            let der = request(&s.to_be_bytes(), None);
            let b = STANDARD.encode(&der);
            if b.contains('+') && b.contains('/') && b.ends_with('=') {
                return (der, b);
            }
        }
        panic!("no serial gives +, / and = in base64");
    }

    #[test]
    fn get_accepts_raw_standard_base64_with_slashes() {
        let (der, b) = special_request();
        let r = decode_get(&b, &Limits::default()).unwrap();
        assert_eq!(r, decode_der(&der, &Limits::default()).unwrap());
        assert_eq!(r.cert_ids.len(), 1);
    }

    #[test]
    fn get_accepts_percent_encoded_slash_plus_and_equals() {
        let (der, b) = special_request();
        let enc = b
            .replace('/', "%2F")
            .replace('+', "%2b")
            .replace('=', "%3D");
        assert!(enc.contains("%2F") && enc.contains("%2b") && enc.contains("%3D"));
        let r = decode_get(&enc, &Limits::default()).unwrap();
        assert_eq!(r, decode_der(&der, &Limits::default()).unwrap());
    }

    #[test]
    fn get_accepts_base64url_without_padding() {
        let (der, _) = special_request();
        let b = URL_SAFE_NO_PAD.encode(&der);
        assert!(b.contains('-') || b.contains('_'));
        let r = decode_get(&b, &Limits::default()).unwrap();
        assert_eq!(r, decode_der(&der, &Limits::default()).unwrap());
    }

    #[test]
    fn get_rejects_garbage_base64() {
        let l = Limits::default();
        assert_eq!(decode_get("not*base64!", &l), Err(Error::BadBase64));
        assert_eq!(decode_get("MEow%zz", &l), Err(Error::BadPercentEncoding));
        assert_eq!(decode_get("MEow%4", &l), Err(Error::BadPercentEncoding));
        assert_eq!(decode_get("", &l), Err(Error::EmptyRequest));
        // Valid base64 of bytes that are not an OCSPRequest.
        assert!(matches!(
            decode_get(&STANDARD.encode(b"hello world"), &l),
            Err(Error::MalformedDer(_))
        ));
        assert_eq!(
            decode_get("a b", &l),
            Err(Error::BadBase64),
            "whitespace is not tolerated"
        );
    }

    #[test]
    fn get_rejects_overlong_segment() {
        let l = Limits {
            max_get: 8,
            ..Limits::default()
        };
        assert_eq!(
            decode_get("AAAAAAAAAAAA", &l),
            Err(Error::UriTooLong { len: 12, max: 8 })
        );
    }

    #[test]
    fn rejects_truncated_der_at_every_length() {
        let der = request(&[1, 2, 3], Some(&[7; 16]));
        for n in 0..der.len() {
            let e = decode_der(&der[..n], &Limits::default()).unwrap_err();
            assert_eq!(
                e.ocsp_status(),
                crate::OcspStatus::MalformedRequest,
                "prefix {n}"
            );
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(matches!(
            decode_der(&trailing, &Limits::default()),
            Err(Error::MalformedDer(_))
        ));
    }

    #[test]
    fn post_needs_the_ocsp_content_type() {
        let der = request(&[1], None);
        let l = Limits::default();
        assert_eq!(decode_post(None, &der, &l), Err(Error::WrongContentType));
        assert_eq!(
            decode_post(Some("application/octet-stream"), &der, &l),
            Err(Error::WrongContentType)
        );
        assert!(decode_post(Some("Application/OCSP-Request; charset=binary"), &der, &l).is_ok());
    }

    #[test]
    fn post_rejects_huge_body() {
        let l = Limits::default();
        let body = vec![0x30; l.max_body + 1];
        assert_eq!(
            decode_post(Some(REQUEST_CONTENT_TYPE), &body, &l),
            Err(Error::BodyTooLarge {
                len: l.max_body + 1,
                max: l.max_body
            })
        );
    }

    #[test]
    fn nonce_is_noted_and_empty_nonce_is_malformed() {
        let l = Limits::default();
        let r = decode_der(&request(&[1], Some(&[9; 32])), &l).unwrap();
        assert_eq!(r.nonce.as_deref(), Some(&[9u8; 32][..]));
        assert_eq!(
            decode_der(&request(&[1], Some(&[])), &l),
            Err(Error::EmptyNonce)
        );
    }

    #[test]
    fn rejects_more_cert_ids_than_the_limit() {
        let der = request(&[1], None);
        let l = Limits {
            max_cert_ids: 0,
            ..Limits::default()
        };
        assert_eq!(
            decode_der(&der, &l),
            Err(Error::TooManyCertIds { count: 1, max: 0 })
        );
    }
}
