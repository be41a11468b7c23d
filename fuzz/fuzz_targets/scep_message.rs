//! SCEP PKIOperation bytes from a client: ContentInfo/SignedData decode, signed attributes,
//! signer certificate lookup and RSA signature check (`parse_pki_message`); for messages that
//! pass, the EnvelopedData recipient lookup and content decryption/decoding with a fixed key
//! (AES and DES-EDE3 padding errors and content decoding are exercised, not the key unwrap,
//! which is the RA's).
//! Seeds: requests built by gateways/scep/tests/messages.rs (SCEP_WRITE_SEEDS=DIR) in
//! corpus/scep_message/.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = certgate_scep::parse_pki_message(data) {
        let _ = msg.key_transport(&msg.signer_cert_der);
        let _ = msg.decrypt_content(&[0x42; 16]);
        let _ = msg.decrypt_content(&[0x42; 32]);
        let _ = msg.decrypt_content(&[0x42; 24]);
    }
});
