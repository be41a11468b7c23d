//! CMP PKIMessage bytes from a client: the raw TLV split (exact ProtectedPart), header decode
//! (pvno 2/3), body decode (ir/cr/kur with signature POP verification, p10cr, rr, certConf,
//! genm), the RFC 9483 header checks and signature-protection path verification
//! (`certgate_cmp::fuzz_one`). Seeds: requests captured with `openssl cmp … -reqout` in
//! corpus/cmp_message/ (copies of gateways/cmp/tests/data/*.der).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    certgate_cmp::fuzz_one(data);
});
