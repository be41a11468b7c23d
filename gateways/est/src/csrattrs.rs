//! `csrattrs` derived from the tenant's certificate profile (RFC 7030 §4.5.2, in the
//! attribute form RFC 9908 clarifies): what the server wants in the client's next CSR, so a
//! device builds an acceptable request the first time.
//!
//! The answer is a `CsrAttrs ::= SEQUENCE OF AttrOrOID` with, in this order:
//! - the key type: `Attribute { id-ecPublicKey, { curve, … } }` for the allowed EC curves,
//!   `Attribute { rsaEncryption, { INTEGER bits } }` for RSA with the smallest modulus, and the
//!   bare OID `id-Ed25519` (it has no parameter) — one entry per allowed type, the client picks;
//! - the CSR signature algorithms the core verifies, as bare OIDs;
//! - `Attribute { extensionRequest, { Extensions } }` with the extendedKeyUsage the profile
//!   grants (a concrete value: the client copies it);
//! - the bare OID `id-ce-subjectAltName` when the profile issues names (every profile does: the
//!   client must name itself, with the types the profile allows).
//!
//! The RFC 9908 template form (`id-aa-certificationRequestInfoTemplate`) is not produced.
//! Everything here is pure: the edge maps `Core.DescribeProfile` into a [`ProfileAsk`].

use const_oid::ObjectIdentifier;
use const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME;
use const_oid::db::rfc5912::{ID_EC_PUBLIC_KEY, ID_EXTENSION_REQ, RSA_ENCRYPTION};
use const_oid::db::rfc8410::ID_ED_25519;
use der::asn1::{OctetString, SetOfVec};
use der::{Any, Decode, Encode};
use x509_cert::attr::Attribute;
use x509_cert::ext::Extension;

use crate::EstError;

/// id-ce-extKeyUsage (RFC 5280 §4.2.1.12).
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

/// What a profile asks of a CSR, in OIDs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileAsk {
    /// Subject key types, in the profile's order.
    pub keys: Vec<KeyAsk>,
    /// CSR signature algorithms accepted.
    pub signature_algorithms: Vec<ObjectIdentifier>,
    /// Extended key usages the certificate gets.
    pub ekus: Vec<ObjectIdentifier>,
    /// The profile issues subject alternative names (the CSR must carry at least one).
    pub names: bool,
}

fn enc<T: Encode>(v: &T) -> Result<Any, EstError> {
    let der = v.to_der().map_err(|_| EstError::Encode)?;
    Any::from_der(&der).map_err(|_| EstError::Encode)
}

fn attribute(oid: ObjectIdentifier, values: Vec<Any>) -> Result<Any, EstError> {
    let mut set = SetOfVec::new();
    for v in values {
        set.insert(v).map_err(|_| EstError::Encode)?;
    }
    enc(&Attribute { oid, values: set })
}

/// The entries of the answer; empty when the profile asks for nothing (the edge then answers
/// 204, RFC 7030 §4.5.2).
pub fn entries(p: &ProfileAsk) -> Result<Vec<Any>, EstError> {
    let mut out = Vec::new();
    let curves: Vec<Any> = p
        .keys
        .iter()
        .filter_map(|k| match k {
            KeyAsk::Ec(curve) => Some(enc(curve)),
            _ => None,
        })
        .collect::<Result<_, _>>()?;
    let mut ec_done = false;
    for k in &p.keys {
        match k {
            KeyAsk::Ec(_) if !ec_done => {
                ec_done = true;
                out.push(attribute(ID_EC_PUBLIC_KEY, curves.clone())?);
            }
            KeyAsk::Ec(_) => {}
            KeyAsk::Ed25519 => out.push(enc(&ID_ED_25519)?),
            KeyAsk::Rsa(bits) => {
                out.push(attribute(RSA_ENCRYPTION, vec![enc(&u64::from(*bits))?])?);
            }
        }
    }
    for alg in &p.signature_algorithms {
        out.push(enc(alg)?);
    }
    if !p.ekus.is_empty() {
        let eku = x509_cert::ext::pkix::ExtendedKeyUsage(p.ekus.clone());
        let ext = Extension {
            extn_id: ID_CE_EXT_KEY_USAGE,
            critical: false,
            extn_value: OctetString::new(eku.to_der().map_err(|_| EstError::Encode)?)
                .map_err(|_| EstError::Encode)?,
        };
        out.push(attribute(ID_EXTENSION_REQ, vec![enc(&vec![ext])?])?);
    }
    if p.names {
        out.push(enc(&ID_CE_SUBJECT_ALT_NAME)?);
    }
    Ok(out)
}

/// DER `CsrAttrs` for the profile, or `None` when it asks for nothing.
pub fn from_profile(p: &ProfileAsk) -> Result<Option<Vec<u8>>, EstError> {
    let items = entries(p)?;
    if items.is_empty() {
        return Ok(None);
    }
    items.to_der().map(Some).map_err(|_| EstError::Encode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::asn1::Int;

    const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
    const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
    const SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");

    fn ask() -> ProfileAsk {
        ProfileAsk {
            keys: vec![KeyAsk::Ec(P256), KeyAsk::Rsa(3072), KeyAsk::Ec(P384)],
            signature_algorithms: vec![ECDSA_SHA256],
            ekus: vec![SERVER_AUTH],
            names: true,
        }
    }

    #[test]
    fn profile_becomes_key_signature_eku_and_san_entries() {
        let der = from_profile(&ask()).expect("encodes").expect("not empty");
        let seq: Vec<Any> = Vec::from_der(&der).expect("SEQUENCE OF AttrOrOID");
        assert_eq!(seq.len(), 5, "ec, rsa, sig, extensionRequest, san");

        let ec: Attribute = seq[0].decode_as().expect("ec attribute");
        assert_eq!(ec.oid, ID_EC_PUBLIC_KEY);
        let curves: Vec<ObjectIdentifier> = ec
            .values
            .iter()
            .map(|v| v.decode_as().expect("curve oid"))
            .collect();
        assert_eq!(curves.len(), 2);
        assert!(curves.contains(&P256) && curves.contains(&P384));

        let rsa: Attribute = seq[1].decode_as().expect("rsa attribute");
        assert_eq!(rsa.oid, RSA_ENCRYPTION);
        let bits: Int = rsa
            .values
            .get(0)
            .expect("size")
            .decode_as()
            .expect("INTEGER");
        assert_eq!(bits.as_bytes(), &[0x0c, 0x00], "3072");

        let sig: ObjectIdentifier = seq[2].decode_as().expect("sig oid");
        assert_eq!(sig, ECDSA_SHA256);

        let ext_req: Attribute = seq[3].decode_as().expect("extensionRequest");
        assert_eq!(ext_req.oid, ID_EXTENSION_REQ);
        let exts: Vec<Extension> = ext_req
            .values
            .get(0)
            .expect("value")
            .decode_as()
            .expect("Extensions");
        assert_eq!(exts.len(), 1);
        assert_eq!(exts[0].extn_id, ID_CE_EXT_KEY_USAGE);
        let eku = x509_cert::ext::pkix::ExtendedKeyUsage::from_der(exts[0].extn_value.as_bytes())
            .expect("EKU");
        assert_eq!(eku.0, vec![SERVER_AUTH]);

        let san: ObjectIdentifier = seq[4].decode_as().expect("san oid");
        assert_eq!(san, ID_CE_SUBJECT_ALT_NAME);
    }

    #[test]
    fn ed25519_is_a_bare_oid_and_nothing_asked_is_none() {
        let p = ProfileAsk {
            keys: vec![KeyAsk::Ed25519],
            ..ProfileAsk::default()
        };
        let der = from_profile(&p).expect("encodes").expect("not empty");
        let seq: Vec<Any> = Vec::from_der(&der).expect("sequence");
        assert_eq!(seq.len(), 1);
        let oid: ObjectIdentifier = seq[0].decode_as().expect("oid");
        assert_eq!(oid, ID_ED_25519);
        assert_eq!(from_profile(&ProfileAsk::default()).expect("encodes"), None);
    }

    #[test]
    fn openssl_parses_the_answer() {
        let der = from_profile(&ask()).expect("encodes").expect("not empty");
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("csrattrs.der");
        std::fs::write(&path, &der).expect("write");
        let out = std::process::Command::new("openssl")
            .args(["asn1parse", "-inform", "DER", "-in"])
            .arg(&path)
            .output()
            .expect("openssl runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        for want in [
            "id-ecPublicKey",
            "prime256v1",
            "secp384r1",
            "rsaEncryption",
            "INTEGER           :0C00",
            "ecdsa-with-SHA256",
            "Extension Request",
            "X509v3 Extended Key Usage",
            "X509v3 Subject Alternative Name",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }
}
