//! Entry points for the cargo-fuzz targets (feature `fuzzing` only). They drive every parser of
//! client bytes in this crate; the only property checked is "no panic, no hang".

use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;
use zeroize::Zeroizing;

use crate::ari::CertId;
use crate::jws::{RawJws, parse_request};
use crate::nonce::{MemoryNonceStore, NonceVerifier};
use crate::payload::{
    ExternalAccountBinding, Finalize, NewAccount, WireAccountUpdate, WireNewOrder, WireRevokeCert,
    check_key_change, validate_contacts, validate_dns_name, validate_ip,
};
use crate::problem::JOSE_CONTENT_TYPE;
use crate::state::check_csr;

/// The request URL the seeds in `fuzz/corpus/acme_jws/` are signed for.
pub const SEED_URL: &str = "https://127.0.0.1:8443/acme/new-acct";
/// The account URL the keyChange seed names.
pub const SEED_ACCOUNT: &str = "https://127.0.0.1:8443/acme/acct/1";

/// JWS parsing, header validation, signature verification with an embedded key, and every
/// payload parser, on arbitrary bytes.
pub fn acme_jws(data: &[u8]) {
    if let Ok(jws) = parse_request(Some(JOSE_CONTENT_TYPE), data, SEED_URL) {
        let _ = jws.kid();
        if let Ok(v) = jws.verify_embedded() {
            let _ = v.expect_post_as_get();
            let _ = v.json::<NewAccount>();
            let _ = check_key_change(&v, SEED_ACCOUNT);
            let key = Zeroizing::new(vec![7; 32]);
            if let Ok(verifier) = NonceVerifier::new(1, &key, Duration::from_secs(60)) {
                let store = MemoryNonceStore::new(4);
                let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
                if let Ok(id) = verifier.check(v.nonce(), now) {
                    let _ = NonceVerifier::redemption(store.redeem(&id, 1_800_000_000));
                }
            }
            if let Ok(Value::Object(obj)) = v.json::<Value>()
                && let Some(eab) = obj.get("externalAccountBinding")
                && let Ok(b) = ExternalAccountBinding::parse(eab, SEED_URL)
            {
                let _ = b.key_id();
                let _ = b.verify(&Zeroizing::new(vec![1; 32]), &v.key);
            }
        }
    }
    if let Ok(raw) = RawJws::from_slice(data) {
        let _ = raw.account_header();
        payloads(&raw.payload);
        if let Ok(inner) = serde_json::from_slice::<Value>(&raw.payload)
            && let Ok(inner) = RawJws::from_value(&inner)
        {
            let _ = inner.account_header();
        }
    }
    payloads(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = CertId::parse(s);
        let _ = validate_dns_name(s);
        let _ = validate_ip(s);
        let _ = validate_contacts(&[s.to_owned()]);
    }
}

fn payloads(b: &[u8]) {
    if let Ok(p) = serde_json::from_slice::<NewAccount>(b) {
        let _ = p.validate(true, true);
    }
    if let Ok(p) = serde_json::from_slice::<WireAccountUpdate>(b) {
        let _ = p.validate();
    }
    if let Ok(p) = serde_json::from_slice::<WireNewOrder>(b)
        && let Ok(order) = p.validate()
        && let Ok(f) = serde_json::from_slice::<Finalize>(b)
        && let Ok(csr) = f.csr_der()
    {
        let _ = check_csr(&csr, &order.identifiers);
    }
    if let Ok(f) = serde_json::from_slice::<Finalize>(b)
        && let Ok(csr) = f.csr_der()
    {
        let _ = check_csr(&csr, &[]);
    }
    if let Ok(p) = serde_json::from_slice::<WireRevokeCert>(b) {
        let _ = p.validate();
    }
}
