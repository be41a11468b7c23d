//! `serverkeygen` (RFC 7030 §4.4): the edge generates the client's key pair (P-256, aws-lc-rs),
//! signs a CSR with it that copies the client's subject and requested extensions, and sends the
//! core that CSR — so the key never reaches the core and the one issuance path is unchanged. The
//! PKCS#8 document stays in `Zeroizing` and is dropped right after the answer is built.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use const_oid::db::rfc5912::{ECDSA_WITH_SHA_256, ID_EC_PUBLIC_KEY, SECP_256_R_1};
use der::asn1::BitString;
use der::{Any, Encode};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::request::{CertReq, CertReqInfo};
use zeroize::Zeroizing;

use crate::EstError;

/// A generated key and the CSR signed with it.
pub struct ServerKey {
    /// The private key, PKCS#8 DER (unencrypted; only ever sent over the authenticated TLS
    /// channel).
    pub pkcs8: Zeroizing<Vec<u8>>,
    /// The CSR (DER) with the client's subject and extension request and the new public key.
    pub csr_der: Vec<u8>,
}

/// Generates a P-256 key and a CSR carrying `client`'s subject and attributes.
pub fn generate(client: &CertReq) -> Result<ServerKey, EstError> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| EstError::KeyGen)?;
    let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
    drop(doc);
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8)
        .map_err(|_| EstError::KeyGen)?;
    let spki = SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: ID_EC_PUBLIC_KEY,
            parameters: Some(Any::encode_from(&SECP_256_R_1).map_err(|_| EstError::Encode)?),
        },
        subject_public_key: BitString::from_bytes(key.public_key().as_ref())
            .map_err(|_| EstError::Encode)?,
    };
    let info = CertReqInfo {
        version: client.info.version,
        subject: client.info.subject.clone(),
        public_key: spki,
        // The client's requested extensions, not its challengePassword (channel binding of the
        // client's TLS connection), decrypt-key identifiers or SMIMECapabilities (answered by
        // the edge): the core gets only what the certificate needs.
        attributes: client
            .info
            .attributes
            .iter()
            .filter(|a| {
                a.oid != crate::binding::CHALLENGE_PASSWORD
                    && a.oid != crate::keyprotect::ID_AA_DECRYPT_KEY_ID
                    && a.oid != crate::keyprotect::ID_AA_ASYMM_DECRYPT_KEY_ID
                    && a.oid != crate::keyprotect::ID_SMIME_CAPABILITIES
            })
            .cloned()
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| EstError::Encode)?,
    };
    let tbs = info.to_der().map_err(|_| EstError::Encode)?;
    let sig = key.sign(&rng, &tbs).map_err(|_| EstError::KeyGen)?;
    let csr = CertReq {
        info,
        algorithm: AlgorithmIdentifierOwned {
            oid: ECDSA_WITH_SHA_256,
            parameters: None,
        },
        signature: BitString::from_bytes(sig.as_ref()).map_err(|_| EstError::Encode)?,
    };
    Ok(ServerKey {
        pkcs8,
        csr_der: csr.to_der().map_err(|_| EstError::Encode)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;

    #[test]
    fn generated_csr_keeps_subject_and_verifies_with_openssl() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec!["skg.example".into()]).expect("p");
        p.distinguished_name.push(rcgen::DnType::CommonName, "skg");
        let der = p.serialize_request(&key).expect("csr").der().to_vec();
        let client = CertReq::from_der(&der).expect("parses");
        let sk = generate(&client).expect("generates");
        let ours = CertReq::from_der(&sk.csr_der).expect("ours parses");
        assert_eq!(ours.info.subject, client.info.subject);
        assert_ne!(ours.info.public_key, client.info.public_key);
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("r.der");
        std::fs::write(&path, &sk.csr_der).expect("write");
        let out = std::process::Command::new("openssl")
            .args(["req", "-inform", "DER", "-verify", "-noout", "-in"])
            .arg(&path)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
