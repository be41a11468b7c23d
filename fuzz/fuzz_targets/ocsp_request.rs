//! OCSP request bytes from a relying party: the POST decoder (DER `OCSPRequest`), the GET decoder
//! (percent-decoding, base64/base64url, DER), the front function `decide` for POST, GET and CRL
//! paths, and the parsers of the core's OCSP responses and CRLs. Seeds: OpenSSL-made requests in
//! corpus/ocsp_request/ (copies of gateways/ocsp/tests/vectors/, commands in its README).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    certgate_ocsp::fuzzing::ocsp_request(data);
});
