//! SCEP PKIOperation bytes from a client: ContentInfo/SignedData decode, signed attributes,
//! signer certificate lookup and RSA signature check (`parse_pki_message`); for messages that
//! pass, the EnvelopedData recipient lookup and content decryption/decoding with a fixed key
//! (AES and DES-EDE3 padding errors and content decoding are exercised, not the key unwrap,
//! which is the RA's); for messages refused with a reply address, the CertRep FAILURE built from
//! the unverified transactionID/senderNonce. The BER → DER normaliser (`certgate_scep::ber`) on
//! its own: what it accepts comes out accepted again and unchanged (DER, idempotent), within
//! the message bound.
//! Seeds: requests built by gateways/scep/tests/messages.rs and ber_and_time.rs
//! (SCEP_WRITE_SEEDS=DIR) in corpus/scep_message/, incl. a streamed BER PKCSReq
//! (`pkcsreq_ber.der`) whose envelope came from `openssl cms -encrypt -stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = certgate_scep::ber::normalise(data) {
        if out.len() <= certgate_scep::MAX_MESSAGE_LEN {
            let again = certgate_scep::ber::normalise(&out);
            assert!(
                matches!(again, Ok(std::borrow::Cow::Borrowed(_))),
                "normalised output is DER as far as the normaliser is concerned"
            );
        }
    }
    if let Ok(out) = certgate_scep::ber::normalise_enveloped(data) {
        if out.len() <= certgate_scep::MAX_MESSAGE_LEN {
            assert!(certgate_scep::ber::normalise_enveloped(&out).is_ok());
        }
    }
    match certgate_scep::parse_pki_message(data) {
        Ok(msg) => {
            let _ = msg.key_transport(&msg.signer_cert_der);
            let _ = msg.decrypt_content(&[0x42; 16]);
            let _ = msg.decrypt_content(&[0x42; 32]);
            let _ = msg.decrypt_content(&[0x42; 24]);
        }
        // A refused message that still names a transactionID and senderNonce is answered with
        // a CertRep FAILURE built from those unverified fields: building it must never panic.
        Err(e) => {
            if let Some(to) = e.reply_to.as_deref() {
                assert!(!to.transaction_id.is_empty() && to.transaction_id.len() <= 128);
                assert_eq!(to.sender_nonce.len(), 16);
                let _ = certgate_scep::CertRep::failure_to(to, e.fail_info);
            }
        }
    }
});
