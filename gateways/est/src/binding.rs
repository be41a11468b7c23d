//! RFC 7030 §3.5 channel binding: the client puts the TLS channel-binding value, base64, into
//! the CSR's challengePassword, proving the CSR was made for this very TLS connection (so a
//! CSR cannot be replayed from another session or relayed by a man in the middle).
//!
//! RFC 7030 names `tls-unique`, which TLS 1.3 does not define (and rustls does not offer for
//! TLS 1.2). RFC 9266 defines `tls-exporter` as its TLS 1.3 replacement: 32 bytes exported
//! with the label `EXPORTER-Channel-Binding` and an empty context. The edge computes it per
//! connection; this module only compares (constant time). A connection without one (TLS 1.2,
//! HTTP/3) cannot satisfy a label that requires binding: refused, never skipped.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use const_oid::ObjectIdentifier;
use der::{Tag, Tagged};
use x509_cert::request::CertReq;
use zeroize::Zeroizing;

use crate::EstError;

/// challengePassword (PKCS #9, RFC 2985 §5.4.1).
pub const CHALLENGE_PASSWORD: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.7");

/// The challengePassword's text (PrintableString, UTF8String or IA5String), if the CSR has
/// exactly one.
fn challenge_password(csr: &CertReq) -> Option<Zeroizing<Vec<u8>>> {
    let mut found = None;
    for attr in csr.info.attributes.iter() {
        if attr.oid != CHALLENGE_PASSWORD {
            continue;
        }
        let mut values = attr.values.iter();
        let (Some(v), None, None) = (values.next(), values.next(), found.as_ref()) else {
            return None;
        };
        if !matches!(
            v.tag(),
            Tag::PrintableString | Tag::Utf8String | Tag::Ia5String
        ) {
            return None;
        }
        found = Some(Zeroizing::new(v.value().to_vec()));
    }
    found
}

/// Checks that `csr`'s challengePassword is base64 of `exporter`, the TLS connection's
/// `tls-exporter` value (`None`: the connection has none, e.g. TLS 1.2).
pub fn check(csr: &CertReq, exporter: Option<&[u8; 32]>) -> Result<(), EstError> {
    let Some(exporter) = exporter else {
        return Err(EstError::ChannelBinding(
            "channel binding is required: use TLS 1.3 (tls-exporter, RFC 9266); TLS 1.2 tls-unique is not supported",
        ));
    };
    let Some(pw) = challenge_password(csr) else {
        return Err(EstError::ChannelBinding(
            "channel binding is required: the CSR must carry one challengePassword with the base64 tls-exporter value",
        ));
    };
    let text = pw.trim_ascii();
    let decoded = Zeroizing::new(STANDARD.decode(text).unwrap_or_default());
    // Same length always compared (a wrong-length value compares against zeros, then fails).
    let mut candidate = [0u8; 32];
    if decoded.len() == 32 {
        candidate.copy_from_slice(&decoded);
    }
    let equal = aws_lc_rs::constant_time::verify_slices_are_equal(&candidate, exporter).is_ok();
    if equal && decoded.len() == 32 {
        Ok(())
    } else {
        Err(EstError::ChannelBinding(
            "the challengePassword does not match this TLS connection's channel binding",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::asn1::{PrintableStringRef, SetOfVec};
    use der::{Any, Decode};
    use x509_cert::attr::Attribute;

    fn csr(passwords: &[&str]) -> CertReq {
        let key = rcgen::KeyPair::generate().expect("key");
        let der = rcgen::CertificateParams::new(vec!["b.example".into()])
            .expect("p")
            .serialize_request(&key)
            .expect("csr")
            .der()
            .to_vec();
        let mut csr = CertReq::from_der(&der).expect("parses");
        if !passwords.is_empty() {
            let values: Vec<Any> = passwords
                .iter()
                .map(|p| Any::encode_from(&PrintableStringRef::new(p).expect("ps")).expect("any"))
                .collect();
            csr.info
                .attributes
                .insert(Attribute {
                    oid: CHALLENGE_PASSWORD,
                    values: SetOfVec::try_from(values).expect("set"),
                })
                .expect("insert");
        }
        csr
    }

    #[test]
    fn binding_must_match_this_connection() {
        let v = [0x5au8; 32];
        let good = STANDARD.encode(v);
        assert_eq!(check(&csr(&[&good]), Some(&v)), Ok(()));
        // Another connection's value, no value, a TLS 1.2 connection, garbage, two values.
        assert!(check(&csr(&[&STANDARD.encode([1u8; 32])]), Some(&v)).is_err());
        assert!(check(&csr(&[]), Some(&v)).is_err());
        assert!(check(&csr(&[&good]), None).is_err());
        assert!(check(&csr(&["not base64 at all"]), Some(&v)).is_err());
        assert!(check(&csr(&[&STANDARD.encode([0x5au8; 31])]), Some(&v)).is_err());
        assert!(check(&csr(&[&good, "other"]), Some(&v)).is_err());
    }
}
