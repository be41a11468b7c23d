//! The body of `simpleenroll`, `simplereenroll` and `serverkeygen`: a base64-encoded DER PKCS#10
//! CertificationRequest (RFC 7030 §4.2.1, RFC 8951 §3.2). Line breaks and other whitespace may
//! appear anywhere and padding may be missing; a `Content-Transfer-Encoding` header is ignored
//! (RFC 8951: base64 is always used). PEM armour is tolerated because some clients send it.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use der::Decode;
use x509_cert::request::CertReq;

use crate::EstError;

/// Default largest body accepted (a PKCS#10 with an RSA-4096 key and many SANs fits well within).
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// Standard alphabet; padding optional (RFC 8951 does not require clients to pad).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A decoded request: the exact DER bytes (what the core verifies and hashes) and the parsed
/// structure (what the edge inspects).
#[derive(Debug, Clone)]
pub struct Pkcs10 {
    /// The DER CertificationRequest as sent.
    pub der: Vec<u8>,
    /// The parsed request.
    pub req: CertReq,
}

/// Decodes base64 (whitespace-tolerant, optional padding, optional PEM armour) of at most `max`
/// body bytes.
pub fn decode_base64_body(body: &[u8], max: usize) -> Result<Vec<u8>, EstError> {
    if body.len() > max {
        return Err(EstError::TooLarge);
    }
    let mut text: Vec<u8> = Vec::with_capacity(body.len());
    for line in body.split(|b| *b == b'\n') {
        let trimmed = line.trim_ascii();
        if trimmed.starts_with(b"-----") {
            continue; // PEM armour lines
        }
        text.extend(trimmed.iter().filter(|b| !b.is_ascii_whitespace()));
    }
    if text.is_empty() {
        return Err(EstError::Base64);
    }
    LENIENT.decode(&text).map_err(|_| EstError::Base64)
}

/// Decodes an EST enrollment body into a PKCS#10 request. The DER must be exactly one
/// CertificationRequest (no trailing bytes). The signature is not checked here: the core does
/// that on the one issuance path.
pub fn decode_csr(body: &[u8], max: usize) -> Result<Pkcs10, EstError> {
    let der = decode_base64_body(body, max)?;
    let req = CertReq::from_der(&der).map_err(|_| EstError::NotPkcs10)?;
    Ok(Pkcs10 { der, req })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_der() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["dev.example".into()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dev.example");
        params.serialize_request(&key).expect("csr").der().to_vec()
    }

    fn b64(d: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(d)
    }

    #[test]
    fn unwrapped_base64_decodes() {
        let der = csr_der();
        let got = decode_csr(b64(&der).as_bytes(), DEFAULT_MAX_BODY).expect("decodes");
        assert_eq!(got.der, der);
    }

    #[test]
    fn line_wrapped_crlf_and_cte_style_bodies_decode() {
        let der = csr_der();
        let s = b64(&der);
        let wrapped: String = s
            .as_bytes()
            .chunks(64)
            .map(|c| format!("{}\r\n", String::from_utf8_lossy(c)))
            .collect();
        assert_eq!(
            decode_csr(wrapped.as_bytes(), DEFAULT_MAX_BODY)
                .expect("wrapped")
                .der,
            der
        );
        let lf76: String = s
            .as_bytes()
            .chunks(76)
            .map(|c| format!("  {}\n", String::from_utf8_lossy(c)))
            .collect();
        assert_eq!(
            decode_csr(lf76.as_bytes(), DEFAULT_MAX_BODY)
                .expect("lf")
                .der,
            der
        );
        let unpadded = s.trim_end_matches('=');
        assert_eq!(
            decode_csr(unpadded.as_bytes(), DEFAULT_MAX_BODY)
                .expect("unpadded")
                .der,
            der
        );
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{wrapped}-----END CERTIFICATE REQUEST-----\n"
        );
        assert_eq!(
            decode_csr(pem.as_bytes(), DEFAULT_MAX_BODY)
                .expect("pem")
                .der,
            der
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert_eq!(
            decode_csr(b"", DEFAULT_MAX_BODY).err(),
            Some(EstError::Base64)
        );
        assert_eq!(
            decode_csr(b"!!!not base64***", DEFAULT_MAX_BODY).err(),
            Some(EstError::Base64)
        );
        // valid base64 of something that is not a CSR
        assert_eq!(
            decode_csr(b64(b"hello world").as_bytes(), DEFAULT_MAX_BODY).err(),
            Some(EstError::NotPkcs10)
        );
        // a CSR with trailing garbage
        let mut der = csr_der();
        der.extend_from_slice(&[0, 0]);
        assert_eq!(
            decode_csr(b64(&der).as_bytes(), DEFAULT_MAX_BODY).err(),
            Some(EstError::NotPkcs10)
        );
        // truncated
        let der = csr_der();
        assert_eq!(
            decode_csr(b64(&der[..der.len() / 2]).as_bytes(), DEFAULT_MAX_BODY).err(),
            Some(EstError::NotPkcs10)
        );
        // too large
        let big = vec![b'A'; 100];
        assert_eq!(decode_csr(&big, 99).err(), Some(EstError::TooLarge));
    }
}
