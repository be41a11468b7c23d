//! Entry point for the cargo-fuzz target `ocsp_request` (feature `fuzzing` only). It drives the
//! POST and GET decoders, the front function and the response/CRL parsers; the only property
//! checked is "no panic, no hang".

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use der::{DecodePem, Encode};

use crate::{
    Cache, CacheKey, CachedResponse, HttpRequestParts, IssuerIndex, Limits, REQUEST_CONTENT_TYPE,
    decide, decode_get, decode_post, parse_crl_path,
};

/// The issuer certificate of the seed requests (gateways/ocsp/tests/vectors/ca.pem).
const SEED_ISSUER: &[u8] = include_bytes!("../tests/vectors/ca.pem");

/// Arbitrary bytes as an OCSP request (POST body and GET segment), a CRL path, and as core data.
pub fn ocsp_request(data: &[u8]) {
    let limits = Limits::default();
    let _ = decode_post(Some(REQUEST_CONTENT_TYPE), data, &limits);
    let text = String::from_utf8_lossy(data);
    let _ = decode_get(&text, &limits);
    let _ = parse_crl_path(&text);
    let responses: HashMap<CacheKey, CachedResponse> = HashMap::new();
    // The issuer of the seed requests, so seeds reach the CertID lookup and the cache probe.
    let mut index = IssuerIndex::new();
    if let Ok(ca) = x509_cert::Certificate::from_pem(SEED_ISSUER)
        && let Ok(der) = ca.to_der()
    {
        let _ = index.insert("default", "vector-ca", &der);
    }
    let cache = Cache {
        issuers: &index,
        responses: &responses,
        limits: &limits,
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let post = HttpRequestParts {
        tenant: "default",
        method: "POST",
        path: "/ocsp",
        content_type: Some(REQUEST_CONTENT_TYPE),
        if_none_match: Some(&text),
        body: data,
    };
    let _ = decide(&post, now, &cache);
    let path = format!("/ocsp/{text}");
    let get = HttpRequestParts {
        method: "GET",
        path: &path,
        content_type: None,
        body: &[],
        ..post
    };
    let _ = decide(&get, now, &cache);
    let crl = format!("/crl/{text}");
    let _ = decide(&HttpRequestParts { path: &crl, ..get }, now, &cache);
    let _ = CachedResponse::ocsp_with_cert_ids(Bytes::copy_from_slice(data));
    let _ = CachedResponse::crl(Bytes::copy_from_slice(data));
}
