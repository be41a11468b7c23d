//! RFC 7030 §4.2.2: a `simplereenroll` CSR must carry the same Subject and subjectAltName as the
//! certificate being renewed (the one the client authenticated the TLS session with). SANs are
//! compared as sets of DER GeneralNames (order does not matter, content does).

use const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME;
use const_oid::db::rfc5912::ID_EXTENSION_REQ;
use der::{Decode, Encode};
use x509_cert::Certificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::request::CertReq;

use crate::EstError;

/// The subjectAltName extension value (DER) of a CSR's extensionRequest, if any.
pub fn csr_san(req: &CertReq) -> Result<Option<Vec<u8>>, EstError> {
    for attr in req.info.attributes.iter() {
        if attr.oid != ID_EXTENSION_REQ {
            continue;
        }
        for v in attr.values.iter() {
            let exts: Vec<Extension> = v.decode_as().map_err(|_| EstError::NotPkcs10)?;
            if let Some(e) = exts.iter().find(|e| e.extn_id == ID_CE_SUBJECT_ALT_NAME) {
                return Ok(Some(e.extn_value.as_bytes().to_vec()));
            }
        }
    }
    Ok(None)
}

fn san_set(value: Option<&[u8]>, err: EstError) -> Result<Vec<Vec<u8>>, EstError> {
    let Some(v) = value else {
        return Ok(Vec::new());
    };
    let san = SubjectAltName::from_der(v).map_err(|_| err)?;
    let mut out = san
        .0
        .iter()
        .map(|g| g.to_der().map_err(|_| EstError::Encode))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// Checks the §4.2.2 rule for `req` against the DER certificate being renewed.
pub fn check_reenroll(req: &CertReq, current_der: &[u8]) -> Result<(), EstError> {
    let cert = Certificate::from_der(current_der).map_err(|_| EstError::BadCertificate)?;
    let tbs = &cert.tbs_certificate;
    let cert_subject = tbs.subject.to_der().map_err(|_| EstError::Encode)?;
    let csr_subject = req.info.subject.to_der().map_err(|_| EstError::Encode)?;
    if cert_subject != csr_subject {
        return Err(EstError::ReenrollMismatch(
            "the CSR subject differs from the certificate being renewed",
        ));
    }
    let cert_san = tbs
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == ID_CE_SUBJECT_ALT_NAME)
        .map(|e| e.extn_value.as_bytes().to_vec());
    let csr_san = csr_san(req)?;
    let a = san_set(cert_san.as_deref(), EstError::BadCertificate)?;
    let b = san_set(csr_san.as_deref(), EstError::NotPkcs10)?;
    if a != b {
        return Err(EstError::ReenrollMismatch(
            "the CSR subjectAltName differs from the certificate being renewed",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(cn: &str, sans: &[&str]) -> rcgen::CertificateParams {
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p
    }

    fn csr(cn: &str, sans: &[&str]) -> CertReq {
        let key = rcgen::KeyPair::generate().expect("key");
        let der = params(cn, sans)
            .serialize_request(&key)
            .expect("csr")
            .der()
            .to_vec();
        CertReq::from_der(&der).expect("parses")
    }

    fn cert(cn: &str, sans: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        params(cn, sans)
            .self_signed(&key)
            .expect("cert")
            .der()
            .to_vec()
    }

    #[test]
    fn same_subject_and_sans_in_any_order_pass() {
        let c = cert("dev", &["a.example", "b.example"]);
        check_reenroll(&csr("dev", &["b.example", "a.example"]), &c).expect("same names");
    }

    #[test]
    fn other_subject_or_sans_are_refused() {
        let c = cert("dev", &["a.example"]);
        assert!(matches!(
            check_reenroll(&csr("someone-else", &["a.example"]), &c),
            Err(EstError::ReenrollMismatch(_))
        ));
        assert!(matches!(
            check_reenroll(&csr("dev", &["a.example", "evil.example"]), &c),
            Err(EstError::ReenrollMismatch(_))
        ));
        assert!(matches!(
            check_reenroll(&csr("dev", &[]), &c),
            Err(EstError::ReenrollMismatch(_))
        ));
        assert_eq!(
            check_reenroll(&csr("dev", &["a.example"]), b"junk"),
            Err(EstError::BadCertificate)
        );
    }
}
