//! Response bodies: certs-only CMS (RFC 7030 §4.1.3, §4.2.3), `csrattrs` (§4.5.2) and the
//! `serverkeygen` multipart (§4.4.2), all base64 as RFC 8951 §3.2 requires. The base64 is one
//! unbroken line: strongSwan's `pki --est` fails to parse line-wrapped PKCS#7 (PEERS.md).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerInfos};
use const_oid::ObjectIdentifier;
use const_oid::db::rfc5911::{ID_DATA, ID_SIGNED_DATA};
use der::asn1::SetOfVec;
use der::{Any, Decode, Encode};
use x509_cert::Certificate;
use x509_cert::attr::Attribute;
use zeroize::Zeroizing;

use crate::EstError;

/// Content type of `cacerts` answers.
pub const CACERTS_CONTENT_TYPE: &str = "application/pkcs7-mime";
/// Content type of enrollment answers (RFC 7030 §4.2.3).
pub const CERTS_ONLY_CONTENT_TYPE: &str = "application/pkcs7-mime; smime-type=certs-only";
/// Content type of `csrattrs` answers.
pub const CSRATTRS_CONTENT_TYPE: &str = "application/csrattrs";
/// Content type of a private key part of `serverkeygen`.
pub const PKCS8_CONTENT_TYPE: &str = "application/pkcs8";

/// A degenerate ("certs-only") SignedData holding `certs_der` (RFC 5652 §5.1 with no signers),
/// as a DER ContentInfo.
pub fn certs_only(certs_der: &[Vec<u8>]) -> Result<Vec<u8>, EstError> {
    let mut choices = Vec::with_capacity(certs_der.len());
    for der in certs_der {
        let cert = Certificate::from_der(der).map_err(|_| EstError::BadCertificate)?;
        choices.push(CertificateChoices::Certificate(cert));
    }
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet::try_from(choices).map_err(|_| EstError::Encode)?),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    let ci = ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&sd).map_err(|_| EstError::Encode)?,
    };
    ci.to_der().map_err(|_| EstError::Encode)
}

/// The certificates of a certs-only CMS (for tests and clients in tests).
pub fn parse_certs_only(der: &[u8]) -> Result<Vec<Vec<u8>>, EstError> {
    let ci = ContentInfo::from_der(der).map_err(|_| EstError::BadCertificate)?;
    if ci.content_type != ID_SIGNED_DATA {
        return Err(EstError::BadCertificate);
    }
    let sd: SignedData = ci
        .content
        .decode_as()
        .map_err(|_| EstError::BadCertificate)?;
    let mut out = Vec::new();
    for c in sd.certificates.map(|s| s.0.into_vec()).unwrap_or_default() {
        if let CertificateChoices::Certificate(cert) = c {
            out.push(cert.to_der().map_err(|_| EstError::Encode)?);
        }
    }
    Ok(out)
}

/// Base64 of `der`, standard alphabet, padded, no line breaks.
pub fn base64_unwrapped(der: &[u8]) -> String {
    STANDARD.encode(der)
}

/// One entry of a `csrattrs` answer (RFC 7030 §4.5.2 `AttrOrOID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrAttr {
    /// A bare OID: e.g. `challengePassword` (the client should include it) or a signature
    /// algorithm such as ecdsa-with-SHA256.
    Oid(ObjectIdentifier),
    /// An attribute with OID values: e.g. id-ecPublicKey with the curve the key must use.
    Attribute(ObjectIdentifier, Vec<ObjectIdentifier>),
}

/// Dotted-decimal OID text → OID. Arcs longer than 9 digits are refused before const-oid sees
/// them: const-oid 0.9's parser overflows (panics in debug builds) on longer arcs (found by the
/// `est_request` fuzz target).
fn parse_oid(s: &str) -> Option<ObjectIdentifier> {
    let s = s.trim();
    if s.is_empty()
        || s.len() > 200
        || !s
            .split('.')
            .all(|arc| !arc.is_empty() && arc.len() <= 9 && arc.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    ObjectIdentifier::new(s).ok()
}

impl CsrAttr {
    /// Parses the edge.toml form: `"OID"` or `"OID=VALUE-OID[,VALUE-OID…]"`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.split_once('=') {
            None => parse_oid(s).map(CsrAttr::Oid),
            Some((oid, values)) => {
                let oid = parse_oid(oid)?;
                let values = values
                    .split(',')
                    .map(parse_oid)
                    .collect::<Option<Vec<_>>>()?;
                if values.is_empty() {
                    return None;
                }
                Some(CsrAttr::Attribute(oid, values))
            }
        }
    }
}

/// DER of `CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID`.
pub fn csrattrs(attrs: &[CsrAttr]) -> Result<Vec<u8>, EstError> {
    let mut items: Vec<Any> = Vec::with_capacity(attrs.len());
    for a in attrs {
        let any = match a {
            CsrAttr::Oid(oid) => Any::encode_from(oid),
            CsrAttr::Attribute(oid, values) => {
                let mut set = SetOfVec::new();
                for v in values {
                    set.insert(Any::encode_from(v).map_err(|_| EstError::Encode)?)
                        .map_err(|_| EstError::Encode)?;
                }
                Any::encode_from(&Attribute {
                    oid: *oid,
                    values: set,
                })
            }
        }
        .map_err(|_| EstError::Encode)?;
        items.push(any);
    }
    items.to_der().map_err(|_| EstError::Encode)
}

/// The `serverkeygen` answer body (RFC 7030 §4.4.2): a multipart/mixed of the unprotected
/// PKCS#8 private key and the certificate as certs-only CMS, both base64. The result holds the
/// private key, so it is `Zeroizing`; the caller sends it and drops it.
pub fn serverkeygen_multipart(boundary: &str, pkcs8: &[u8], cert_cms: &[u8]) -> Zeroizing<Vec<u8>> {
    let key_b64 = Zeroizing::new(STANDARD.encode(pkcs8));
    let cert_b64 = STANDARD.encode(cert_cms);
    let mut out = Zeroizing::new(Vec::with_capacity(key_b64.len() + cert_b64.len() + 512));
    let parts: [&[u8]; 13] = [
        b"--",
        boundary.as_bytes(),
        b"\r\nContent-Type: application/pkcs8\r\nContent-Transfer-Encoding: base64\r\n\r\n",
        key_b64.as_bytes(),
        b"\r\n--",
        boundary.as_bytes(),
        b"\r\nContent-Type: application/pkcs7-mime; smime-type=certs-only\r\n",
        b"Content-Transfer-Encoding: base64\r\n\r\n",
        cert_b64.as_bytes(),
        b"\r\n--",
        boundary.as_bytes(),
        b"--",
        b"\r\n",
    ];
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// The Content-Type header of a `serverkeygen` answer with `boundary`.
pub fn serverkeygen_content_type(boundary: &str) -> String {
    format!("multipart/mixed; boundary={boundary}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec![format!("{cn}.example")]).expect("p");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn certs_only_round_trips_and_is_unwrapped() {
        let (a, b) = (cert("a"), cert("b"));
        let der = certs_only(&[a.clone(), b.clone()]).expect("builds");
        let mut got = parse_certs_only(&der).expect("parses");
        got.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(got, want);
        let text = base64_unwrapped(&der);
        assert!(!text.contains('\n') && !text.contains('\r'));
        assert!(certs_only(&[b"junk".to_vec()]).is_err());
    }

    /// The certs-only CMS is what OpenSSL reads: `openssl pkcs7 -print_certs` lists both
    /// subjects.
    #[test]
    fn openssl_prints_the_certs_only_cms() {
        let der = certs_only(&[cert("alpha"), cert("beta")]).expect("builds");
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.p7");
        std::fs::write(&path, &der).expect("write");
        let out = std::process::Command::new("openssl")
            .args(["pkcs7", "-inform", "DER", "-print_certs", "-noout", "-in"])
            .arg(&path)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("CN = alpha") || text.contains("CN=alpha"),
            "{text}"
        );
        assert!(
            text.contains("CN = beta") || text.contains("CN=beta"),
            "{text}"
        );
    }

    #[test]
    fn csrattrs_encodes_oids_and_attributes() {
        let attrs = vec![
            CsrAttr::parse("1.2.840.113549.1.9.7").expect("oid"),
            CsrAttr::parse("1.2.840.10045.2.1=1.2.840.10045.3.1.7").expect("attr"),
        ];
        let der = csrattrs(&attrs).expect("encodes");
        // SEQUENCE { OID challengePassword, SEQUENCE { OID ecPublicKey, SET { OID P-256 } } }
        let seq: Vec<Any> = Vec::from_der(&der).expect("sequence of");
        assert_eq!(seq.len(), 2);
        let oid: ObjectIdentifier = seq[0].decode_as().expect("oid");
        assert_eq!(oid.to_string(), "1.2.840.113549.1.9.7");
        let attr: Attribute = seq[1].decode_as().expect("attribute");
        assert_eq!(attr.oid.to_string(), "1.2.840.10045.2.1");
        assert_eq!(attr.values.len(), 1);
        assert!(CsrAttr::parse("not-an-oid").is_none());
        assert!(CsrAttr::parse("1.2.3=").is_none());
        // fuzz regression: const-oid overflows on long arcs
        assert!(CsrAttr::parse("888888888888888888888888884 at all!!").is_none());
        assert!(CsrAttr::parse("1.2.99999999999999999999").is_none());
        assert_eq!(csrattrs(&[]).expect("empty"), vec![0x30, 0x00]);
    }

    #[test]
    fn multipart_has_both_parts() {
        let body = serverkeygen_multipart("b0und", b"KEY", b"CERT");
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with("--b0und\r\nContent-Type: application/pkcs8"));
        assert!(text.contains(&STANDARD.encode(b"KEY")));
        assert!(text.contains(&STANDARD.encode(b"CERT")));
        assert!(text.ends_with("--b0und--\r\n"));
    }
}
