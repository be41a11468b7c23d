//! The genp value for `id-it-certReqTemplate` (RFC 9483 §4.3.3, RFC 9480 §2.16 = RFC 4210
//! §5.3.19.16), derived from the tenant's certificate profile:
//!
//! ```text
//! CertReqTemplateContent ::= SEQUENCE {
//!     certTemplate  CertTemplate,
//!     keySpec       Controls OPTIONAL }
//! ```
//!
//! - `certTemplate` has no publicKey (the key is the EE's; its type is in `keySpec`). Its
//!   `subject` is a CN with an empty value and its `subjectAltName` extension has one empty
//!   GeneralName per SAN type the profile allows (dNSName, iPAddress, uniformResourceIdentifier):
//!   RFC 9483 §4.3.3 reads an empty value as "fill this in". Its `extKeyUsage` extension carries
//!   the profile's EKUs as they will be granted (a concrete value, to be copied).
//! - `keySpec` lists one control per allowed key type, the EE picks one: `id-regCtrl-algId`
//!   with `id-ecPublicKey` and the curve, or `id-Ed25519`; `id-regCtrl-rsaKeyLen` with the
//!   smallest RSA modulus.
//!
//! Pure: the edge maps `Core.DescribeProfile` into a [`TemplateAsk`].

use const_oid::ObjectIdentifier;

use crate::der_util::{int, octets, seq, tlv, utf8};
use crate::error::{CmpError, FailInfo};

/// id-regCtrl-algId (RFC 9480 §2.16).
pub const ID_REG_CTRL_ALG_ID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.5.1.11");
/// id-regCtrl-rsaKeyLen (RFC 9480 §2.16).
pub const ID_REG_CTRL_RSA_KEY_LEN: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.5.1.12");
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const ID_AT_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const ID_CE_SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const ID_CE_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");

/// One subject key type a profile accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAsk {
    /// An EC key on this named curve (RFC 5480 OID).
    Ec(ObjectIdentifier),
    /// An Ed25519 key.
    Ed25519,
    /// An RSA key of at least this many bits.
    Rsa(u32),
}

/// What a profile asks of a certificate request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateAsk {
    /// Subject key types, in the profile's order.
    pub keys: Vec<KeyAsk>,
    /// Extended key usages the certificate gets.
    pub ekus: Vec<ObjectIdentifier>,
    /// SAN types allowed.
    pub dns: bool,
    /// IP address SANs allowed.
    pub ip: bool,
    /// URI SANs allowed.
    pub uri: bool,
    /// The certificate may carry a subject CN.
    pub common_name: bool,
}

fn oid(o: &ObjectIdentifier) -> Result<Vec<u8>, CmpError> {
    der::Encode::to_der(o).map_err(|_| CmpError::new(FailInfo::SystemFailure, "oid"))
}

fn extension(id: &ObjectIdentifier, value: &[u8]) -> Result<Vec<u8>, CmpError> {
    Ok(seq(&[&oid(id)?, &octets(value)]))
}

/// The `CertReqTemplateContent` DER, or `None` when the profile gives nothing to put in a
/// template (the genp then carries an absent infoValue, RFC 9483 §4.3.3).
pub fn cert_req_template_value(p: &TemplateAsk) -> Result<Option<Vec<u8>>, CmpError> {
    let mut template = Vec::new();
    if p.common_name {
        // subject [5] EXPLICIT Name: one RDN, CN = "" (to be filled in).
        let rdn = tlv(0x31, &seq(&[&oid(&ID_AT_CN)?, &utf8("")]));
        template.extend(tlv(0xa5, &seq(&[&rdn])));
    }
    let mut exts = Vec::new();
    if p.dns || p.ip || p.uri {
        let mut names = Vec::new();
        if p.dns {
            names.extend([0x82, 0x00]); // dNSName [2] IA5String ""
        }
        if p.ip {
            names.extend([0x87, 0x00]); // iPAddress [7] OCTET STRING ''
        }
        if p.uri {
            names.extend([0x86, 0x00]); // uniformResourceIdentifier [6] IA5String ""
        }
        exts.push(extension(&ID_CE_SUBJECT_ALT_NAME, &tlv(0x30, &names))?);
    }
    if !p.ekus.is_empty() {
        let mut list = Vec::new();
        for e in &p.ekus {
            list.extend(oid(e)?);
        }
        exts.push(extension(&ID_CE_EXT_KEY_USAGE, &tlv(0x30, &list))?);
    }
    if !exts.is_empty() {
        // extensions [9] IMPLICIT Extensions.
        template.extend(tlv(0xa9, &exts.concat()));
    }
    let mut controls = Vec::new();
    for k in &p.keys {
        controls.push(match k {
            KeyAsk::Ec(curve) => seq(&[
                &oid(&ID_REG_CTRL_ALG_ID)?,
                &seq(&[&oid(&ID_EC_PUBLIC_KEY)?, &oid(curve)?]),
            ]),
            KeyAsk::Ed25519 => seq(&[&oid(&ID_REG_CTRL_ALG_ID)?, &seq(&[&oid(&ID_ED25519)?])]),
            KeyAsk::Rsa(bits) => seq(&[&oid(&ID_REG_CTRL_RSA_KEY_LEN)?, &int(u64::from(*bits))]),
        });
    }
    if template.is_empty() && controls.is_empty() {
        return Ok(None);
    }
    let mut content = tlv(0x30, &template);
    if !controls.is_empty() {
        content.extend(tlv(0x30, &controls.concat()));
    }
    Ok(Some(tlv(0x30, &content)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::{Decode, Encode};
    use x509_cert::attr::AttributeTypeAndValue;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};

    const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    const SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
    const CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

    #[derive(der::Sequence)]
    struct Content {
        cert_template: crmf::request::CertTemplate,
        key_spec: Option<Vec<AttributeTypeAndValue>>,
    }

    fn ask() -> TemplateAsk {
        TemplateAsk {
            keys: vec![KeyAsk::Ec(P256), KeyAsk::Rsa(3072), KeyAsk::Ed25519],
            ekus: vec![SERVER_AUTH, CLIENT_AUTH],
            dns: true,
            ip: true,
            uri: false,
            common_name: true,
        }
    }

    #[test]
    fn template_decodes_as_crmf_and_round_trips() {
        let der = cert_req_template_value(&ask())
            .expect("encodes")
            .expect("some");
        let c = Content::from_der(&der).expect("CertReqTemplateContent");
        assert_eq!(c.to_der().expect("re-encodes"), der, "DER round trip");
        let t = &c.cert_template;
        assert!(t.subject_public_key_info.is_none(), "the key is the EE's");
        let subject = t.subject.as_ref().expect("subject template");
        assert_eq!(subject.to_string(), "CN=");
        let exts = t.extensions.as_ref().expect("extensions");
        assert_eq!(exts.len(), 2);
        let san = SubjectAltName::from_der(exts[0].extn_value.as_bytes()).expect("SAN");
        assert_eq!(san.0.len(), 2);
        assert!(matches!(&san.0[0], GeneralName::DnsName(n) if n.as_str().is_empty()));
        assert!(matches!(&san.0[1], GeneralName::IpAddress(a) if a.as_bytes().is_empty()));
        let eku = ExtendedKeyUsage::from_der(exts[1].extn_value.as_bytes()).expect("EKU");
        assert_eq!(eku.0, vec![SERVER_AUTH, CLIENT_AUTH]);
        let spec = c.key_spec.expect("keySpec");
        assert_eq!(spec.len(), 3);
        assert_eq!(spec[0].oid, ID_REG_CTRL_ALG_ID);
        let alg: spki::AlgorithmIdentifierOwned = spec[0].value.decode_as().expect("algId");
        assert_eq!(alg.oid, ID_EC_PUBLIC_KEY);
        let curve: ObjectIdentifier = alg.parameters.expect("curve").decode_as().expect("oid");
        assert_eq!(curve, P256);
        assert_eq!(spec[1].oid, ID_REG_CTRL_RSA_KEY_LEN);
        let bits: u32 = spec[1].value.decode_as().expect("INTEGER");
        assert_eq!(bits, 3072);
        let ed: spki::AlgorithmIdentifierOwned = spec[2].value.decode_as().expect("algId");
        assert_eq!((ed.oid, ed.parameters), (ID_ED25519, None));
    }

    #[test]
    fn nothing_to_template_is_none_and_rsa_only_has_no_algid() {
        assert_eq!(
            cert_req_template_value(&TemplateAsk::default()).expect("encodes"),
            None
        );
        let der = cert_req_template_value(&TemplateAsk {
            keys: vec![KeyAsk::Rsa(2048)],
            ..TemplateAsk::default()
        })
        .expect("encodes")
        .expect("some");
        let c = Content::from_der(&der).expect("decodes");
        assert_eq!(c.cert_template.to_der().expect("der"), vec![0x30, 0x00]);
        let spec = c.key_spec.expect("keySpec");
        assert_eq!(spec.len(), 1);
        assert_eq!(spec[0].oid, ID_REG_CTRL_RSA_KEY_LEN);
    }

    #[test]
    fn openssl_parses_the_template() {
        let der = cert_req_template_value(&ask())
            .expect("encodes")
            .expect("some");
        let dir = std::env::temp_dir().join(format!("cmp-template-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.der");
        std::fs::write(&path, &der).expect("write");
        let out = std::process::Command::new("openssl")
            .args(["asn1parse", "-inform", "DER", "-in"])
            .arg(&path)
            .output()
            .expect("openssl runs");
        let _ = std::fs::remove_dir_all(&dir);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        for want in [
            "commonName",
            "X509v3 Subject Alternative Name",
            "X509v3 Extended Key Usage",
            "id-ecPublicKey",
            "prime256v1",
            "ED25519",
            "INTEGER           :0C00",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }
}
