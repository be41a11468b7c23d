//! Requests, responses and CRLs made by the OpenSSL command line, decoded and served by the
//! crate: CertIDs must match what the issuer index computes from the issuer certificate and the
//! leaf's serial; caching headers must match the times OpenSSL prints.

// Test helpers unwrap: a failing unwrap is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use certgate_ocsp::{
    Cache, CacheKey, CachedResponse, CrlShard, Decision, HashAlg, HttpRequestParts, IssuerIndex,
    Limits, OcspStatus, REQUEST_CONTENT_TYPE, Serial, cached::imf_fixdate, decide, decode_der,
    decode_get, decode_post,
};
use common::{Pki, field, openssl, openssl_time, serial_of};
use sha1::Sha1;
use sha2::Sha256;
use x509_ocsp::CertId;

/// Serial with the high bit set: DER content `00 80 …`, normalized `80 …`.
const SERIAL_A: &str = "0x80a1b2c3d4e5f60718293a4b5c6d7e8f";
const SERIAL_B: &str = "0x0102030405060708";

fn pki() -> Pki {
    let pki = Pki::new("Test Issuing CA");
    pki.leaf("a", SERIAL_A);
    pki.leaf("b", SERIAL_B);
    pki
}

fn index_for(pki: &Pki, tenant: &str) -> IssuerIndex {
    let mut idx = IssuerIndex::new();
    idx.insert(tenant, "issuing-1", &pki.cert_der("ca"))
        .unwrap();
    idx
}

fn post<'a>(tenant: &'a str, body: &'a [u8]) -> HttpRequestParts<'a> {
    HttpRequestParts {
        tenant,
        method: "POST",
        path: "/ocsp",
        content_type: Some(REQUEST_CONTENT_TYPE),
        if_none_match: None,
        body,
    }
}

#[test]
fn openssl_sha1_request_matches_the_issuer_index() {
    let pki = pki();
    let der = pki.request("req.der", &["-cert", "a.pem", "-no_nonce"]);
    let req = decode_post(Some(REQUEST_CONTENT_TYPE), &der, &Limits::default()).unwrap();
    assert_eq!(req.cert_ids.len(), 1);
    assert_eq!(req.nonce, None);
    assert!(!req.signed);
    // Independent computation of the CertID (x509-ocsp's builder) agrees with OpenSSL's.
    let expected = CertId::from_cert::<Sha1>(&pki.cert("ca"), &pki.cert("a")).unwrap();
    assert_eq!(req.cert_ids[0].issuer_name_hash, expected.issuer_name_hash);
    assert_eq!(req.cert_ids[0].issuer_key_hash, expected.issuer_key_hash);
    assert_eq!(req.cert_ids[0].serial_number, expected.serial_number);

    let key = index_for(&pki, "default")
        .key_for("default", &req.cert_ids)
        .unwrap();
    let serial = serial_of(&pki.cert_der("a"));
    assert_eq!(serial[0], 0x00, "DER serial has a leading zero");
    let CacheKey::Ocsp { tenant, cert } = key else {
        panic!("single CertID gives a single key: {key:?}")
    };
    assert_eq!(&*tenant, "default");
    assert_eq!(&*cert.issuer, "issuing-1");
    assert_eq!(cert.alg, HashAlg::Sha1);
    assert_eq!(cert.serial.as_bytes(), &serial[1..], "leading zero removed");
    assert_eq!(cert.serial.as_bytes()[0], 0x80);
}

#[test]
fn openssl_sha256_request_matches_the_issuer_index() {
    let pki = pki();
    let der = pki.request("req256.der", &["-sha256", "-cert", "b.pem", "-no_nonce"]);
    let req = decode_der(&der, &Limits::default()).unwrap();
    let expected = CertId::from_cert::<Sha256>(&pki.cert("ca"), &pki.cert("b")).unwrap();
    assert_eq!(
        req.cert_ids[0].hash_algorithm.oid,
        expected.hash_algorithm.oid
    );
    assert_eq!(req.cert_ids[0].issuer_name_hash, expected.issuer_name_hash);
    assert_eq!(req.cert_ids[0].issuer_key_hash, expected.issuer_key_hash);
    let key = index_for(&pki, "default")
        .key_for("default", &req.cert_ids)
        .unwrap();
    let CacheKey::Ocsp { cert, .. } = key else {
        panic!("{key:?}")
    };
    assert_eq!(cert.alg, HashAlg::Sha256);
    assert_eq!(
        cert.serial,
        Serial::from_bytes(&serial_of(&pki.cert_der("b"))).unwrap()
    );
}

#[test]
fn openssl_nonce_is_noted() {
    let pki = pki();
    let der = pki.request("nonce.der", &["-cert", "a.pem"]);
    let req = decode_der(&der, &Limits::default()).unwrap();
    let nonce = req.nonce.expect("openssl adds a nonce by default");
    assert_eq!(nonce.len(), 16, "OpenSSL's default nonce is 16 octets");
    // The nonce does not change which response is served.
    let idx = index_for(&pki, "default");
    let no_nonce = decode_der(
        &pki.request("plain.der", &["-cert", "a.pem", "-no_nonce"]),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(
        idx.key_for("default", &req.cert_ids).unwrap(),
        idx.key_for("default", &no_nonce.cert_ids).unwrap()
    );
}

#[test]
fn openssl_two_certs_make_one_set_key() {
    let pki = pki();
    let der = pki.request(
        "two.der",
        &["-cert", "a.pem", "-cert", "b.pem", "-no_nonce"],
    );
    let req = decode_der(&der, &Limits::default()).unwrap();
    assert_eq!(req.cert_ids.len(), 2);
    let idx = index_for(&pki, "default");
    let key = idx.key_for("default", &req.cert_ids).unwrap();
    let CacheKey::OcspSet { certs, .. } = &key else {
        panic!("{key:?}")
    };
    assert_eq!(certs.len(), 2);
    // Order in the request does not matter.
    let rev = pki.request(
        "two-rev.der",
        &["-cert", "b.pem", "-cert", "a.pem", "-no_nonce"],
    );
    let rev = decode_der(&rev, &Limits::default()).unwrap();
    assert_eq!(idx.key_for("default", &rev.cert_ids).unwrap(), key);
    // The same certificate twice is one certificate.
    let dup = pki.request(
        "dup.der",
        &["-cert", "a.pem", "-cert", "a.pem", "-no_nonce"],
    );
    let dup = decode_der(&dup, &Limits::default()).unwrap();
    assert!(matches!(
        idx.key_for("default", &dup.cert_ids).unwrap(),
        CacheKey::Ocsp { .. }
    ));
}

#[test]
fn signed_request_is_accepted_unless_refused_by_configuration() {
    let pki = pki();
    let der = pki.request(
        "signed.der",
        &[
            "-cert",
            "a.pem",
            "-no_nonce",
            "-signer",
            "b.pem",
            "-signkey",
            "b.key",
        ],
    );
    let req = decode_der(&der, &Limits::default()).unwrap();
    assert!(req.signed);
    let refuse = Limits {
        refuse_signed: true,
        ..Limits::default()
    };
    let idx = index_for(&pki, "default");
    let responses: HashMap<CacheKey, CachedResponse> = HashMap::new();
    let cache = Cache {
        issuers: &idx,
        responses: &responses,
        limits: &refuse,
    };
    let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    assert_eq!(
        decide(&post("default", &der), now, &cache),
        Decision::ocsp_error(OcspStatus::Unauthorized)
    );
    let lenient = Limits::default();
    let cache = Cache {
        limits: &lenient,
        ..cache
    };
    assert!(matches!(
        decide(&post("default", &der), now, &cache),
        Decision::Miss(CacheKey::Ocsp { .. })
    ));
}

#[test]
fn another_tenants_issuer_is_unauthorized() {
    let pki = pki();
    let other = Pki::new("Other Tenant CA");
    let mut idx = IssuerIndex::new();
    idx.insert("tenant-a", "issuing-1", &pki.cert_der("ca"))
        .unwrap();
    idx.insert("tenant-b", "issuing-1", &other.cert_der("ca"))
        .unwrap();
    let der = pki.request("req.der", &["-cert", "a.pem", "-no_nonce"]);
    let responses: HashMap<CacheKey, CachedResponse> = HashMap::new();
    let limits = Limits::default();
    let cache = Cache {
        issuers: &idx,
        responses: &responses,
        limits: &limits,
    };
    let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    assert!(matches!(
        decide(&post("tenant-a", &der), now, &cache),
        Decision::Miss(_)
    ));
    for tenant in ["tenant-b", "default", "nobody"] {
        assert_eq!(
            decide(&post(tenant, &der), now, &cache),
            Decision::ocsp_error(OcspStatus::Unauthorized),
            "{tenant}"
        );
    }
    // Two CertIDs, one of them another tenant's: the whole request is unauthorized.
    other.leaf("x", "0x05");
    let mixed = {
        let a = decode_der(&der, &limits).unwrap();
        let x = decode_der(
            &other.request("x.der", &["-cert", "x.pem", "-no_nonce"]),
            &limits,
        )
        .unwrap();
        [a.cert_ids[0].clone(), x.cert_ids[0].clone()]
    };
    assert_eq!(
        idx.key_for("tenant-a", &mixed),
        Err(certgate_ocsp::Error::UnknownIssuer)
    );
}

#[test]
fn openssl_response_is_served_byte_for_byte_over_post_and_get() {
    let pki = pki();
    let req = pki.request("req.der", &["-cert", "a.pem", "-no_nonce"]);
    let serial_hex = SERIAL_A.trim_start_matches("0x").to_uppercase();
    let resp = pki.respond("req.der", "resp.der", &[(&serial_hex, 'V')]);
    let (cached, ids) = CachedResponse::ocsp_with_cert_ids(Bytes::from(resp.clone())).unwrap();
    let idx = index_for(&pki, "default");
    let key = idx.key_for("default", &ids).unwrap();
    let mut responses = HashMap::new();
    responses.insert(key.clone(), cached.clone());
    let limits = Limits::default();
    let cache = Cache {
        issuers: &idx,
        responses: &responses,
        limits: &limits,
    };
    let now = cached.this_update + Duration::from_secs(60);

    let Decision::Serve(hit) = decide(&post("default", &req), now, &cache) else {
        panic!("POST is a hit")
    };
    assert_eq!(&hit.der[..], &resp[..]);
    assert_eq!(
        hit.der.as_ptr(),
        cached.der.as_ptr(),
        "a hit shares the cached bytes"
    );

    for segment in [
        STANDARD.encode(&req),
        URL_SAFE_NO_PAD.encode(&req),
        STANDARD
            .encode(&req)
            .replace('/', "%2F")
            .replace('+', "%2B")
            .replace('=', "%3D"),
    ] {
        let path = format!("/ocsp/{segment}");
        for method in ["GET", "HEAD"] {
            let get = HttpRequestParts {
                tenant: "default",
                method,
                path: &path,
                content_type: None,
                if_none_match: None,
                body: &[],
            };
            assert_eq!(
                decide(&get, now, &cache),
                Decision::Serve(cached.clone()),
                "{method} {path}"
            );
        }
    }

    // Expired: never served, asked again.
    assert_eq!(
        decide(&post("default", &req), cached.next_update, &cache),
        Decision::Miss(key.clone())
    );
    // The same issuer, a serial not cached: a miss for exactly that serial.
    let other = pki.request("reqb.der", &["-cert", "b.pem", "-no_nonce"]);
    let Decision::Miss(CacheKey::Ocsp { cert, .. }) = decide(&post("default", &other), now, &cache)
    else {
        panic!("unknown serial of a known issuer is a miss")
    };
    assert_eq!(cert.serial.as_bytes(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    // A SHA-256 CertID needs a SHA-256 response: not served from the SHA-1 one.
    let req256 = pki.request("r256.der", &["-sha256", "-cert", "a.pem", "-no_nonce"]);
    assert!(matches!(
        decide(&post("default", &req256), now, &cache),
        Decision::Miss(CacheKey::Ocsp { cert, .. }) if cert.alg == HashAlg::Sha256
    ));
}

#[test]
fn openssl_responder_times_give_the_caching_headers() {
    let pki = pki();
    pki.request("req.der", &["-cert", "a.pem", "-no_nonce"]);
    let serial_hex = SERIAL_A.trim_start_matches("0x").to_uppercase();
    let resp = pki.respond("req.der", "resp.der", &[(&serial_hex, 'R')]);
    let text = openssl(
        pki.dir.path(),
        &["ocsp", "-respin", "resp.der", "-resp_text", "-noverify"],
    );
    let this_update = openssl_time(field(&text, "This Update:"));
    let next_update = openssl_time(field(&text, "Next Update:"));
    assert_eq!(
        next_update.duration_since(this_update).unwrap(),
        Duration::from_secs(4 * 86_400),
        "-ndays 4"
    );
    let c = CachedResponse::ocsp(Bytes::from(resp.clone())).unwrap();
    assert_eq!(c.this_update, this_update);
    assert_eq!(c.next_update, next_update);
    assert_eq!(c.content_type, "application/ocsp-response");
    assert_eq!(
        &c.last_modified_header[..],
        imf_fixdate(this_update).as_bytes()
    );
    assert_eq!(&c.expires_header[..], imf_fixdate(next_update).as_bytes());
    let now = this_update + Duration::from_secs(3_600);
    assert_eq!(
        c.cache_control(now).as_str(),
        "max-age=342000, public, no-transform, must-revalidate"
    );
    let sha = openssl(pki.dir.path(), &["dgst", "-sha256", "-r", "resp.der"]);
    let hex = sha.split_whitespace().next().unwrap();
    assert_eq!(&c.etag[..], format!("\"{hex}\"").as_bytes());
}

#[test]
fn openssl_crl_gives_the_caching_headers_and_is_served_by_path() {
    let pki = pki();
    let der = pki.crl();
    let last = openssl(
        pki.dir.path(),
        &[
            "crl",
            "-in",
            "crl.der",
            "-inform",
            "DER",
            "-noout",
            "-lastupdate",
            "-nextupdate",
        ],
    );
    let this_update = openssl_time(field(&last, "lastUpdate="));
    let next_update = openssl_time(field(&last, "nextUpdate="));
    let c = CachedResponse::crl(Bytes::from(der.clone())).unwrap();
    assert_eq!((c.this_update, c.next_update), (this_update, next_update));
    assert_eq!(c.content_type, "application/pkix-crl");
    assert_eq!(&c.expires_header[..], imf_fixdate(next_update).as_bytes());

    let idx = index_for(&pki, "default");
    let (tenant, issuer) = idx.issuer("default", "issuing-1").unwrap();
    let mut responses = HashMap::new();
    responses.insert(
        CacheKey::Crl {
            tenant: tenant.clone(),
            issuer: issuer.clone(),
            shard: CrlShard::Full,
        },
        c.clone(),
    );
    let limits = Limits::default();
    let cache = Cache {
        issuers: &idx,
        responses: &responses,
        limits: &limits,
    };
    let now = this_update + Duration::from_secs(1);
    let get = |tenant, path| HttpRequestParts {
        tenant,
        method: "GET",
        path,
        content_type: None,
        if_none_match: None,
        body: &[],
    };
    assert_eq!(
        decide(&get("default", "/crl/issuing-1/full.crl"), now, &cache),
        Decision::Serve(c)
    );
    assert_eq!(
        decide(&get("default", "/crl/issuing-1/7.crl"), now, &cache),
        Decision::Miss(CacheKey::Crl {
            tenant,
            issuer,
            shard: CrlShard::Shard(7)
        })
    );
    for path in [
        "/crl/issuing-2/full.crl",
        "/crl/issuing-1/07.crl",
        "/crl/issuing-1/x.crl",
        "/crl/../full.crl",
        "/crl/issuing-1",
    ] {
        assert_eq!(
            decide(&get("default", path), now, &cache),
            Decision::NotFound,
            "{path}"
        );
    }
    assert_eq!(
        decide(&get("other", "/crl/issuing-1/full.crl"), now, &cache),
        Decision::NotFound,
        "another tenant's issuer is not found"
    );
}

#[test]
fn get_decoding_of_an_openssl_request_tolerates_the_usual_encodings() {
    let pki = pki();
    let der = pki.request("req.der", &["-cert", "a.pem", "-no_nonce"]);
    let l = Limits::default();
    let want = decode_der(&der, &l).unwrap();
    let std = STANDARD.encode(&der);
    assert_eq!(decode_get(&std, &l).unwrap(), want);
    assert_eq!(decode_get(std.trim_end_matches('='), &l).unwrap(), want);
    assert_eq!(decode_get(&URL_SAFE_NO_PAD.encode(&der), &l).unwrap(), want);
}
