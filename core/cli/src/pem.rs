//! Minimal PEM (RFC 7468) encoding and decoding for certificates, CSRs and keys.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::error::{CliError, Result};

/// Encodes DER as PEM with 64-character lines.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// All blocks with `label` in `text`, decoded.
pub fn decode_all(text: &str, label: &str) -> Result<Vec<Vec<u8>>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let stop = after
            .find(&end)
            .ok_or_else(|| CliError::Input(format!("PEM block {label} is not terminated")))?;
        let body: String = after[..stop].split_whitespace().collect();
        out.push(
            STANDARD
                .decode(body.as_bytes())
                .map_err(|e| CliError::Input(format!("PEM block {label}: {e}")))?,
        );
        rest = &after[stop + end.len()..];
    }
    Ok(out)
}

/// Reads a CSR from PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`) or raw DER.
pub fn csr_der(bytes: &[u8]) -> Result<Vec<u8>> {
    if let Ok(text) = std::str::from_utf8(bytes)
        && text.contains("-----BEGIN")
    {
        for label in ["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"] {
            if let Some(der) = decode_all(text, label)?.into_iter().next() {
                return Ok(der);
            }
        }
        return Err(CliError::Input("no CERTIFICATE REQUEST PEM block".into()));
    }
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let der: Vec<u8> = (0..=255u8).collect();
        let text = encode("CERTIFICATE", &der);
        assert!(text.lines().all(|l| l.len() <= 64));
        assert_eq!(
            decode_all(&text, "CERTIFICATE").expect("decodes"),
            vec![der]
        );
    }

    #[test]
    fn der_csr_passes_through() {
        assert_eq!(csr_der(&[0x30, 0x00]).expect("der"), vec![0x30, 0x00]);
    }
}
