//! The core parses PKCS#10 CSRs from every enrollment protocol (ACME finalize, EST, SCEP, the
//! command line): untrusted DER. `parse_csr` must never panic, whatever the bytes; what it accepts
//! must respect the limits it promises.
#![no_main]

use certgate_core::csr::{MAX_CSR_BYTES, parse_csr};
use certgate_core::profile::KeyAlgorithm;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(requested) = parse_csr(data) {
        // Accepted only within the size bound (I-8), and never an RSA key below 2048 bits.
        assert!(data.len() <= MAX_CSR_BYTES);
        if requested.key.alg == KeyAlgorithm::Rsa {
            assert!(requested.key.rsa_bits.unwrap_or(0) >= 2048);
        }
    }
});
