//! Keys the command line itself makes: ceremony custodian keys (Ed25519) and the edge's TLS key.
//! Neither is a CA key — those exist only in the signer (I-1).

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use zeroize::Zeroizing;

use crate::datadir::write_file;
use crate::error::{CliError, Result, io};
use crate::pem;

/// SubjectPublicKeyInfo DER prefix for an Ed25519 key (RFC 8410 §4): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (32 bytes) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Writes a new custodian key: PKCS#8 PEM at `out` (0600) and the public key as SPKI PEM at
/// `out` + `.pub.pem`-style sibling `pub_out`. Refuses to overwrite an existing key.
pub fn custodian_keygen(out: &Path, pub_out: &Path) -> Result<()> {
    if out.exists() {
        return Err(CliError::Input(format!(
            "{} exists; refusing to overwrite a custodian key",
            out.display()
        )));
    }
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|e| CliError::Crypto(format!("Ed25519 key generation: {e}")))?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|e| CliError::Crypto(format!("Ed25519 key: {e}")))?;
    let private = Zeroizing::new(pem::encode("PRIVATE KEY", doc.as_ref()));
    write_file(out, private.as_bytes(), 0o600)?;
    write_file(
        pub_out,
        spki_pem(pair.public_key().as_ref()).as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// SPKI PEM of a raw Ed25519 public key.
pub fn spki_pem(raw: &[u8]) -> String {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(raw);
    pem::encode("PUBLIC KEY", &der)
}

/// Signs `message` (a ceremony digest) with the custodian key in `key_file`.
pub fn custodian_sign(key_file: &Path, message: &[u8]) -> Result<Vec<u8>> {
    let text = Zeroizing::new(std::fs::read_to_string(key_file).map_err(io(key_file.display()))?);
    let der = Zeroizing::new(
        pem::decode_all(&text, "PRIVATE KEY")?
            .into_iter()
            .next()
            .ok_or_else(|| {
                CliError::Input(format!("{}: no PRIVATE KEY block", key_file.display()))
            })?,
    );
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|e| CliError::Input(format!("{}: not an Ed25519 key: {e}", key_file.display())))?;
    Ok(pair.sign(message).as_ref().to_vec())
}

/// A new P-256 TLS key and a CSR for `names` (DNS names or IP addresses).
pub fn tls_key_and_csr(names: &[&str]) -> Result<(Zeroizing<String>, Vec<u8>)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CliError::Crypto(format!("TLS key generation: {e}")))?;
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .map_err(|e| CliError::Crypto(format!("CSR parameters: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, *first);
    }
    let csr = params
        .serialize_request(&key)
        .map_err(|e| CliError::Crypto(format!("CSR: {e}")))?;
    Ok((Zeroizing::new(key.serialize_pem()), csr.der().to_vec()))
}

/// `n` random bytes as lower-case hex.
pub fn random_hex(n: usize) -> Result<String> {
    let mut buf = Zeroizing::new(vec![0u8; n]);
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| CliError::Crypto("random source failed".into()))?;
    Ok(hex::encode(&*buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custodian_key_signs_verifiably_and_is_not_overwritten() {
        let dir = std::env::temp_dir().join(format!("certgate-cli-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key = dir.join("k.pem");
        let public = dir.join("k.pub.pem");
        custodian_keygen(&key, &public).expect("keygen");
        let sig = custodian_sign(&key, b"digest").expect("sign");
        let spki = pem::decode_all(
            &std::fs::read_to_string(&public).expect("pub"),
            "PUBLIC KEY",
        )
        .expect("pem")
        .remove(0);
        let raw = &spki[ED25519_SPKI_PREFIX.len()..];
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, raw)
            .verify(b"digest", &sig)
            .expect("verifies");
        assert!(custodian_keygen(&key, &public).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_csr_is_der() {
        let (key, csr) = tls_key_and_csr(&["localhost", "127.0.0.1"]).expect("csr");
        assert!(key.contains("PRIVATE KEY"));
        assert_eq!(csr.first(), Some(&0x30));
    }
}
