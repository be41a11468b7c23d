//! The front function end to end on responses built with x509-ocsp's types (known times, so the
//! exact header values can be written down), and every HTTP-level refusal.

// Test helpers unwrap: a failing unwrap is the test failing.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use certgate_ocsp::{
    Cache, CacheKey, CachedResponse, Decision, IssuerIndex, Limits, OcspStatus,
    REQUEST_CONTENT_TYPE, decide,
};
use der::asn1::{BitString, GeneralizedTime, OctetString};
use der::{DecodePem, Encode};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspResponse, ResponderId,
    ResponseData, SingleResponse, Version,
};

/// 2026-11-25T00:00:00Z, a Wednesday.
const THIS_UPDATE: u64 = 1_795_564_800;
/// 2026-11-29T00:00:00Z, a Sunday (thisUpdate + 4 days).
const NEXT_UPDATE: u64 = 1_795_910_400;

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors")
            .join(name),
    )
    .unwrap()
}

fn cert(name: &str) -> Certificate {
    Certificate::from_pem(vector(name)).unwrap()
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn gt(secs: u64) -> OcspGeneralizedTime {
    OcspGeneralizedTime(GeneralizedTime::from_unix_duration(Duration::from_secs(secs)).unwrap())
}

/// An `OCSPResponse` (unsigned: a dummy signature; the edge never verifies the core's bytes)
/// with one SingleResponse per `(CertID, thisUpdate, nextUpdate)`.
fn response(singles: &[(CertId, u64, u64)]) -> Vec<u8> {
    let responses = singles
        .iter()
        .map(|(id, tu, nu)| SingleResponse {
            cert_id: id.clone(),
            cert_status: CertStatus::good(),
            this_update: gt(*tu),
            next_update: Some(gt(*nu)),
            single_extensions: None,
        })
        .collect();
    let basic = BasicOcspResponse {
        tbs_response_data: ResponseData {
            version: Version::V1,
            responder_id: ResponderId::ByKey(OctetString::new([7u8; 20]).unwrap()),
            produced_at: gt(THIS_UPDATE),
            responses,
            response_extensions: None,
        },
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::ECDSA_WITH_SHA_256,
            parameters: None,
        },
        signature: BitString::from_bytes(&[0u8; 64]).unwrap(),
        certs: None,
    };
    OcspResponse::successful(basic).unwrap().to_der().unwrap()
}

fn id_a() -> CertId {
    CertId::from_cert::<Sha1>(&cert("ca.pem"), &cert("a.pem")).unwrap()
}

fn id_b() -> CertId {
    CertId::from_cert::<Sha1>(&cert("ca.pem"), &cert("b.pem")).unwrap()
}

struct World {
    idx: IssuerIndex,
    responses: HashMap<CacheKey, CachedResponse>,
    limits: Limits,
}

impl World {
    fn new() -> Self {
        let mut idx = IssuerIndex::new();
        idx.insert("default", "vector-ca", &cert("ca.pem").to_der().unwrap())
            .unwrap();
        World {
            idx,
            responses: HashMap::new(),
            limits: Limits::default(),
        }
    }

    fn add(&mut self, der: Vec<u8>) -> CachedResponse {
        let (c, ids) = CachedResponse::ocsp_with_cert_ids(Bytes::from(der)).unwrap();
        let key = self.idx.key_for("default", &ids).unwrap();
        self.responses.insert(key, c.clone());
        c
    }

    fn decide(
        &self,
        method: &str,
        path: &str,
        ct: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Decision {
        let cache = Cache {
            issuers: &self.idx,
            responses: &self.responses,
            limits: &self.limits,
        };
        decide(
            &certgate_ocsp::HttpRequestParts {
                tenant: "default",
                method,
                path,
                content_type: ct,
                if_none_match: None,
                body,
            },
            at(now),
            &cache,
        )
    }

    fn post(&self, body: &[u8], now: u64) -> Decision {
        self.decide("POST", "/ocsp", Some(REQUEST_CONTENT_TYPE), body, now)
    }
}

#[test]
fn caching_headers_of_an_x509_ocsp_response() {
    let der = response(&[(id_a(), THIS_UPDATE, NEXT_UPDATE)]);
    let c = CachedResponse::ocsp(Bytes::from(der.clone())).unwrap();
    assert_eq!(c.this_update, at(THIS_UPDATE));
    assert_eq!(c.next_update, at(NEXT_UPDATE));
    assert_eq!(
        &c.last_modified_header[..],
        b"Wed, 25 Nov 2026 00:00:00 GMT"
    );
    assert_eq!(&c.expires_header[..], b"Sun, 29 Nov 2026 00:00:00 GMT");
    assert_eq!(
        &c.etag[..],
        format!("\"{}\"", hex::encode(Sha256::digest(&der))).as_bytes()
    );
    assert_eq!(
        c.cache_control(at(THIS_UPDATE + 3_600)).as_str(),
        "max-age=342000, public, no-transform, must-revalidate"
    );
    assert_eq!(
        c.cache_control(at(NEXT_UPDATE - 1)).as_str(),
        "max-age=1, public, no-transform, must-revalidate"
    );
    assert_eq!(c.max_age(at(NEXT_UPDATE + 10)), 0);
    assert!(c.is_fresh(at(NEXT_UPDATE - 1)));
    assert!(!c.is_fresh(at(NEXT_UPDATE)));
}

#[test]
fn response_without_next_update_or_backwards_is_refused() {
    let der = response(&[(id_a(), NEXT_UPDATE, THIS_UPDATE)]);
    assert!(CachedResponse::ocsp(Bytes::from(der)).is_err());
    let mut basic = OcspResponse::successful(BasicOcspResponse {
        tbs_response_data: ResponseData {
            version: Version::V1,
            responder_id: ResponderId::ByKey(OctetString::new([7u8; 20]).unwrap()),
            produced_at: gt(THIS_UPDATE),
            responses: vec![SingleResponse {
                cert_id: id_a(),
                cert_status: CertStatus::good(),
                this_update: gt(THIS_UPDATE),
                next_update: None,
                single_extensions: None,
            }],
            response_extensions: None,
        },
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::ECDSA_WITH_SHA_256,
            parameters: None,
        },
        signature: BitString::from_bytes(&[0u8; 64]).unwrap(),
        certs: None,
    })
    .unwrap();
    let der = basic.to_der().unwrap();
    assert_eq!(
        CachedResponse::ocsp(Bytes::from(der)),
        Err(certgate_ocsp::Error::BadResponse(
            "SingleResponse without nextUpdate"
        ))
    );
    basic.response_bytes = None;
    assert!(CachedResponse::ocsp(Bytes::from(basic.to_der().unwrap())).is_err());
}

#[test]
fn single_request_is_served_from_cache() {
    let mut w = World::new();
    let c = w.add(response(&[(id_a(), THIS_UPDATE, NEXT_UPDATE)]));
    assert_eq!(
        w.post(&vector("req-sha1.der"), THIS_UPDATE + 1),
        Decision::Serve(c.clone())
    );
    // The nonce does not change the answer (precomputed responses carry none).
    assert_eq!(
        w.post(&vector("req-nonce.der"), THIS_UPDATE + 1),
        Decision::Serve(c)
    );
}

#[test]
fn multi_cert_request_is_served_only_from_a_response_for_exactly_that_set() {
    let mut w = World::new();
    w.add(response(&[(id_a(), THIS_UPDATE, NEXT_UPDATE)]));
    w.add(response(&[(id_b(), THIS_UPDATE, NEXT_UPDATE)]));
    let two = vector("req-two.der");
    // Both singles are cached, but no response covers the pair: ask the core for the set.
    let Decision::Miss(CacheKey::OcspSet { certs, .. }) = w.post(&two, THIS_UPDATE + 1) else {
        panic!("a set is never stitched from singles")
    };
    assert_eq!(certs.len(), 2);
    // A combined response (its times: latest thisUpdate, earliest nextUpdate).
    let c = w.add(response(&[
        (id_b(), THIS_UPDATE + 60, NEXT_UPDATE),
        (id_a(), THIS_UPDATE, NEXT_UPDATE - 60),
    ]));
    assert_eq!(c.this_update, at(THIS_UPDATE + 60));
    assert_eq!(c.next_update, at(NEXT_UPDATE - 60));
    assert_eq!(w.post(&two, THIS_UPDATE + 61), Decision::Serve(c));
    assert!(matches!(
        w.post(&two, NEXT_UPDATE - 60),
        Decision::Miss(CacheKey::OcspSet { .. })
    ));
}

#[test]
fn wrong_content_type_is_415() {
    let w = World::new();
    let req = vector("req-sha1.der");
    for ct in [None, Some("application/octet-stream"), Some("text/plain")] {
        assert_eq!(
            w.decide("POST", "/ocsp", ct, &req, THIS_UPDATE),
            Decision::UnsupportedMediaType
        );
    }
}

#[test]
fn huge_body_is_413() {
    let w = World::new();
    let body = vec![0u8; w.limits.max_body + 1];
    assert_eq!(w.post(&body, THIS_UPDATE), Decision::PayloadTooLarge);
}

#[test]
fn overlong_get_is_414() {
    let w = World::new();
    let path = format!("/ocsp/{}", "A".repeat(w.limits.max_get + 1));
    assert_eq!(
        w.decide("GET", &path, None, &[], THIS_UPDATE),
        Decision::UriTooLong
    );
}

#[test]
fn truncated_der_is_malformed_request() {
    let w = World::new();
    let req = vector("req-sha1.der");
    for n in [0, 1, 2, req.len() / 2, req.len() - 1] {
        assert_eq!(
            w.post(&req[..n], THIS_UPDATE),
            Decision::ocsp_error(OcspStatus::MalformedRequest),
            "{n} bytes"
        );
    }
    let path = format!("/ocsp/{}", STANDARD.encode(&req[..req.len() - 3]));
    assert_eq!(
        w.decide("GET", &path, None, &[], THIS_UPDATE),
        Decision::ocsp_error(OcspStatus::MalformedRequest)
    );
}

#[test]
fn garbage_get_is_malformed_request() {
    let w = World::new();
    for path in [
        "/ocsp/!!!!",
        "/ocsp/%ZZ",
        "/ocsp/aGVsbG8gd29ybGQ=",
        "/ocsp/MEow SDBG",
        "/ocsp",
        "/ocsp/",
    ] {
        let d = w.decide("GET", path, None, &[], THIS_UPDATE);
        assert_eq!(
            d,
            Decision::ocsp_error(OcspStatus::MalformedRequest),
            "{path}"
        );
        let Decision::Error {
            body, http_status, ..
        } = d
        else {
            unreachable!()
        };
        assert_eq!(&body[..], &[0x30, 0x03, 0x0a, 0x01, 0x01]);
        assert_eq!(http_status, 200);
    }
}

#[test]
fn unknown_issuer_is_unauthorized() {
    let mut w = World::new();
    w.idx.remove("default", "vector-ca");
    assert_eq!(
        w.post(&vector("req-sha1.der"), THIS_UPDATE),
        Decision::ocsp_error(OcspStatus::Unauthorized)
    );
}

#[test]
fn wrong_method_is_405_and_unknown_path_404() {
    let w = World::new();
    let req = vector("req-sha1.der");
    assert_eq!(
        w.decide(
            "PUT",
            "/ocsp",
            Some(REQUEST_CONTENT_TYPE),
            &req,
            THIS_UPDATE
        ),
        Decision::MethodNotAllowed {
            allow: "GET, HEAD, POST"
        }
    );
    assert_eq!(
        w.decide(
            "POST",
            "/ocsp/MEow",
            Some(REQUEST_CONTENT_TYPE),
            &req,
            THIS_UPDATE
        ),
        Decision::MethodNotAllowed { allow: "GET, HEAD" }
    );
    assert_eq!(
        w.decide("DELETE", "/crl/vector-ca/full.crl", None, &[], THIS_UPDATE),
        Decision::MethodNotAllowed { allow: "GET, HEAD" }
    );
    for path in ["/", "/ocspx", "/OCSP", "/crl", "/crl/", "/status/ocsp"] {
        assert_eq!(
            w.decide("GET", path, None, &[], THIS_UPDATE),
            Decision::NotFound,
            "{path}"
        );
    }
}

#[test]
fn matching_if_none_match_on_get_is_not_modified() {
    let mut w = World::new();
    let c = w.add(response(&[(id_a(), THIS_UPDATE, NEXT_UPDATE)]));
    let etag = std::str::from_utf8(&c.etag).unwrap().to_owned();
    let path = format!("/ocsp/{}", STANDARD.encode(vector("req-sha1.der")));
    let cache = Cache {
        issuers: &w.idx,
        responses: &w.responses,
        limits: &w.limits,
    };
    let run = |method: &str, inm: Option<&str>| -> Decision {
        decide(
            &certgate_ocsp::HttpRequestParts {
                tenant: "default",
                method,
                path: &path,
                content_type: None,
                if_none_match: inm,
                body: &[],
            },
            at(THIS_UPDATE + 1),
            &cache,
        )
    };
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".to_owned(),
    ] {
        assert_eq!(
            run("GET", Some(&inm)),
            Decision::NotModified(c.clone()),
            "{inm}"
        );
        assert_eq!(
            run("HEAD", Some(&inm)),
            Decision::NotModified(c.clone()),
            "{inm}"
        );
    }
    assert_eq!(run("GET", Some("\"other\"")), Decision::Serve(c.clone()));
    assert_eq!(run("GET", None), Decision::Serve(c.clone()));
    // Not for POST (not a cacheable request).
    let post = decide(
        &certgate_ocsp::HttpRequestParts {
            tenant: "default",
            method: "POST",
            path: "/ocsp",
            content_type: Some(REQUEST_CONTENT_TYPE),
            if_none_match: Some(&etag),
            body: &vector("req-sha1.der"),
        },
        at(THIS_UPDATE + 1),
        &cache,
    );
    assert_eq!(post, Decision::Serve(c));
}
