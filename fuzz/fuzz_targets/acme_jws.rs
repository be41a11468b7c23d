//! ACME request bytes from a client: flattened JWS parsing, protected-header rules, signature
//! verification with an embedded key, nonce check/redeem, and every payload parser (newAccount,
//! EAB, account update, keyChange inner JWS, newOrder identifiers, finalize CSR, revokeCert,
//! ARI identifiers). Seeds: valid signed requests in corpus/acme_jws/ (generator:
//! `write_fuzz_seeds` in gateways/acme/src/testkeys.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    certgate_acme::fuzzing::acme_jws(data);
});
