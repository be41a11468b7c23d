//! EST request decoding (`certgate_est`): the base64 PKCS#10 body of simpleenroll /
//! simplereenroll / serverkeygen (RFC 8951 whitespace, padding, PEM armour), the extensionRequest
//! SAN lookup, the §4.2.2 re-enroll comparison, the decrypt-key and channel-binding attributes, and the Basic header and stored-hash parsers.
#![no_main]

use certgate_est::request::{DEFAULT_MAX_BODY, decode_csr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A small limit must be enforced before any decoding.
    if data.len() > 64 {
        assert_eq!(
            decode_csr(data, 64).err(),
            Some(certgate_est::EstError::TooLarge)
        );
    }
    if let Ok(csr) = decode_csr(data, DEFAULT_MAX_BODY) {
        // base64 never expands
        assert!(csr.der.len() <= data.len());
        let _ = certgate_est::reenroll::csr_san(&csr.req);
        // the request compared against a certificate-shaped input must never panic
        let _ = certgate_est::reenroll::check_reenroll(&csr.req, &csr.der);
        // RFC 7030 §4.4.1 decrypt-key attributes and §3.5 channel binding (challengePassword)
        let _ = certgate_est::keyprotect::requested(&csr.req);
        let _ = certgate_est::keyprotect::names_certificate(&csr.der, &csr.der);
        assert!(certgate_est::binding::check(&csr.req, None).is_err());
        let _ = certgate_est::binding::check(&csr.req, Some(&[0u8; 32]));
    }
    let _ = certgate_est::auth::parse_basic(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = certgate_est::auth::PasswordHash::parse(s);
        let _ = certgate_est::response::CsrAttr::parse(s);
    }
});
