//! JWS in the flattened JSON serialization as RFC 8555 §6.2 profiles it (RFC 7515 §7.2.2).
//!
//! The flow the edge glue follows for every POST:
//! 1. [`parse_request`]: content type, JSON shape, protected-header rules, `url` equality;
//! 2. the key: [`Jws::verify_embedded`] when the header carries `jwk` (newAccount, revokeCert by
//!    certificate key), or [`Jws::verify_with`] with the account key the core returned for `kid`;
//! 3. the nonce: [`crate::nonce::NonceVerifier::redeem`] on [`ProtectedHeader::nonce`], after the
//!    signature so unauthenticated bytes cannot burn nonces;
//! 4. the payload: [`Verified::json`] or [`Verified::expect_post_as_get`].
//!
//! No JOSE crate is used: none enforces exactly these rules (no `none`, no MACs outside EAB, no
//! unprotected header, exact `jwk`/`kid` exclusivity), and the verification itself is four
//! aws-lc-rs calls.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::b64;
use crate::error::Error;
use crate::jwk::Jwk;
use crate::problem::check_content_type;

/// Algorithms accepted for account-key signatures, listed in `badSignatureAlgorithm` problems.
pub const SUPPORTED_ALGORITHMS: [&str; 4] = ["ES256", "ES384", "RS256", "EdDSA"];

/// A signature algorithm the server verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256, signature r‖s (RFC 7518 §3.4).
    Es256,
    /// ECDSA P-384 with SHA-384, signature r‖s.
    Es384,
    /// RSASSA-PKCS1-v1_5 with SHA-256, modulus ≥ 2048 bits.
    Rs256,
    /// Ed25519 (RFC 8037).
    EdDsa,
}

impl Algorithm {
    /// Parses an `alg` value; `none`, MACs and anything unknown are `badSignatureAlgorithm`.
    pub fn parse(alg: &str) -> Result<Algorithm, Error> {
        match alg {
            "ES256" => Ok(Algorithm::Es256),
            "ES384" => Ok(Algorithm::Es384),
            "RS256" => Ok(Algorithm::Rs256),
            "EdDSA" => Ok(Algorithm::EdDsa),
            other => Err(Error::UnsupportedAlgorithm(
                other.chars().take(32).collect(),
            )),
        }
    }

    /// The `alg` value.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::Rs256 => "RS256",
            Algorithm::EdDsa => "EdDSA",
        }
    }
}

/// How the request names its key (RFC 8555 §6.2: exactly one of `jwk` and `kid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// The key itself (newAccount, revokeCert signed by the certificate key, keyChange inner).
    Jwk(Jwk),
    /// The account URL (every other request).
    Kid(String),
}

/// The validated protected header of an account-key JWS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedHeader {
    /// The signature algorithm.
    pub alg: Algorithm,
    /// The signing key or the account URL.
    pub key: KeyRef,
    /// The anti-replay nonce; required on outer requests, absent on the keyChange inner JWS.
    pub nonce: Option<String>,
    /// The URL the client meant to send this to.
    pub url: String,
}

/// The top-level JSON object. Unknown members, including an unprotected `header`, are refused
/// (RFC 8555 §6.2: no unprotected header, no multiple signatures, no detached payload).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Flattened {
    protected: String,
    payload: String,
    signature: String,
}

/// A flattened JWS whose encoding is valid but whose header is not yet interpreted.
#[derive(Debug, Clone)]
pub(crate) struct RawJws {
    pub(crate) header: Map<String, Value>,
    pub(crate) signing_input: Vec<u8>,
    pub(crate) payload: Vec<u8>,
    pub(crate) signature: Vec<u8>,
}

impl RawJws {
    pub(crate) fn from_slice(body: &[u8]) -> Result<RawJws, Error> {
        let f: Flattened =
            serde_json::from_slice(body).map_err(|e| Error::MalformedJws(e.to_string()))?;
        Self::from_flattened(f)
    }

    pub(crate) fn from_value(v: &Value) -> Result<RawJws, Error> {
        let f = Flattened::deserialize(v).map_err(|e| Error::MalformedJws(e.to_string()))?;
        Self::from_flattened(f)
    }

    fn from_flattened(f: Flattened) -> Result<RawJws, Error> {
        let header_bytes = b64::decode(&f.protected, "protected")?;
        let payload = b64::decode(&f.payload, "payload")?;
        let signature = b64::decode(&f.signature, "signature")?;
        let header: Map<String, Value> =
            serde_json::from_slice(&header_bytes).map_err(|e| Error::json(&e))?;
        let mut signing_input = Vec::with_capacity(f.protected.len() + 1 + f.payload.len());
        signing_input.extend_from_slice(f.protected.as_bytes());
        signing_input.push(b'.');
        signing_input.extend_from_slice(f.payload.as_bytes());
        if header.contains_key("crit") {
            return Err(Error::CriticalHeader);
        }
        Ok(RawJws {
            header,
            signing_input,
            payload,
            signature,
        })
    }

    pub(crate) fn str_header(&self, name: &'static str) -> Result<Option<&str>, Error> {
        match self.header.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Error::MalformedJws(format!(
                "header {name} is not a string"
            ))),
        }
    }

    /// Interprets the header under the account-key rules (everything but EAB).
    pub(crate) fn account_header(&self) -> Result<ProtectedHeader, Error> {
        let alg = self
            .str_header("alg")?
            .ok_or_else(|| Error::MalformedJws("alg header missing".into()))?;
        let alg = Algorithm::parse(alg)?;
        let key = match (self.header.get("jwk"), self.str_header("kid")?) {
            (Some(_), Some(_)) => {
                return Err(Error::WrongKeyReference("JWS has both jwk and kid headers"));
            }
            (None, None) => return Err(Error::WrongKeyReference("JWS has neither jwk nor kid")),
            (Some(jwk), None) => {
                let jwk = Jwk::from_value(jwk)?;
                if jwk.algorithm() != alg {
                    return Err(Error::BadPublicKey(format!(
                        "key does not fit alg {}",
                        alg.name()
                    )));
                }
                KeyRef::Jwk(jwk)
            }
            (None, Some(kid)) => KeyRef::Kid(kid.to_owned()),
        };
        let nonce = self.str_header("nonce")?.map(str::to_owned);
        let url = self
            .str_header("url")?
            .ok_or_else(|| Error::MalformedJws("url header missing".into()))?
            .to_owned();
        Ok(ProtectedHeader {
            alg,
            key,
            nonce,
            url,
        })
    }
}

/// A parsed, header-checked, not yet verified request JWS.
#[derive(Debug, Clone)]
pub struct Jws {
    raw: RawJws,
    header: ProtectedHeader,
}

/// Parses an ACME POST body: checks `Content-Type`, the flattened JWS encoding, the protected
/// header rules (alg, no `crit`, exactly one of `jwk`/`kid`, `nonce` and `url` present) and that
/// `url` equals `request_url` (RFC 8555 §6.4). The signature is checked by the `verify_*` methods.
///
/// `request_url` must be built with [`crate::directory::AcmeUrls`] from the tenant's configured
/// base URL and the routed path, never from the client's `Host` header, so a client cannot make
/// the comparison succeed against a URL the server does not serve.
pub fn parse_request(
    content_type: Option<&str>,
    body: &[u8],
    request_url: &str,
) -> Result<Jws, Error> {
    check_content_type(content_type)?;
    let raw = RawJws::from_slice(body)?;
    let header = raw.account_header()?;
    if header.nonce.is_none() {
        return Err(Error::BadNonce("JWS has no nonce header"));
    }
    if header.url != request_url {
        return Err(Error::UrlMismatch);
    }
    Ok(Jws { raw, header })
}

impl Jws {
    /// The validated protected header.
    pub fn header(&self) -> &ProtectedHeader {
        &self.header
    }

    /// The `kid` (account URL), if the request names its key that way.
    pub fn kid(&self) -> Option<&str> {
        match &self.header.key {
            KeyRef::Kid(k) => Some(k),
            KeyRef::Jwk(_) => None,
        }
    }

    /// Refuses a `kid` where RFC 8555 requires `jwk` (newAccount, §7.3).
    pub fn require_jwk(&self) -> Result<(), Error> {
        match self.header.key {
            KeyRef::Jwk(_) => Ok(()),
            KeyRef::Kid(_) => Err(Error::WrongKeyReference(
                "this request must carry jwk, not kid",
            )),
        }
    }

    /// Refuses a `jwk` where RFC 8555 requires `kid` (everything but newAccount and revokeCert).
    pub fn require_kid(&self) -> Result<(), Error> {
        match self.header.key {
            KeyRef::Kid(_) => Ok(()),
            KeyRef::Jwk(_) => Err(Error::WrongKeyReference(
                "this request must carry kid, not jwk",
            )),
        }
    }

    /// Verifies with the key in the `jwk` header.
    pub fn verify_embedded(self) -> Result<Verified, Error> {
        let KeyRef::Jwk(key) = self.header.key.clone() else {
            return Err(Error::WrongKeyReference(
                "this request must carry jwk, not kid",
            ));
        };
        self.finish(key)
    }

    /// Verifies with the account key the core holds for `kid`.
    pub fn verify_with(self, account_key: &Jwk) -> Result<Verified, Error> {
        if !matches!(self.header.key, KeyRef::Kid(_)) {
            return Err(Error::WrongKeyReference(
                "this request must carry kid, not jwk",
            ));
        }
        self.finish(account_key.clone())
    }

    fn finish(self, key: Jwk) -> Result<Verified, Error> {
        key.verify(
            self.header.alg,
            &self.raw.signing_input,
            &self.raw.signature,
        )?;
        let payload = if self.raw.payload.is_empty() {
            Payload::PostAsGet
        } else {
            Payload::Json(self.raw.payload)
        };
        Ok(Verified {
            header: self.header,
            key,
            payload,
        })
    }
}

/// What a verified JWS carried (RFC 8555 §6.3: an empty payload is POST-as-GET, `{}` is not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// The payload was the empty string.
    PostAsGet,
    /// The payload bytes (not yet parsed).
    Json(Vec<u8>),
}

/// A request whose signature has been verified.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The protected header.
    pub header: ProtectedHeader,
    /// The key that verified the signature.
    pub key: Jwk,
    /// The payload.
    pub payload: Payload,
}

impl Verified {
    /// Parses the payload as `T`; POST-as-GET is refused.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        match &self.payload {
            Payload::PostAsGet => Err(Error::WrongPayloadKind("this request needs a JSON payload")),
            Payload::Json(b) => serde_json::from_slice(b).map_err(|e| Error::json(&e)),
        }
    }

    /// Requires POST-as-GET (resource fetches, RFC 8555 §6.3); `{}` is refused.
    pub fn expect_post_as_get(&self) -> Result<(), Error> {
        match self.payload {
            Payload::PostAsGet => Ok(()),
            Payload::Json(_) => Err(Error::WrongPayloadKind(
                "POST-as-GET requires an empty payload",
            )),
        }
    }

    /// The nonce (always present after [`parse_request`]).
    pub fn nonce(&self) -> &str {
        self.header.nonce.as_deref().unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::TestKey;
    use serde_json::json;

    const URL: &str = "https://127.0.0.1:8443/acme/new-acct";
    const CT: Option<&str> = Some("application/jose+json");

    fn body(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    fn signed(key: &TestKey, kid: Option<&str>, payload: &[u8]) -> Vec<u8> {
        body(&key.sign_jws(&key.header(kid, Some("n0nce"), URL), payload))
    }

    /// A JWS with an arbitrary protected header, signed by `key`.
    fn with_header(key: &TestKey, header: Value) -> Vec<u8> {
        body(&key.sign_jws(&header, b"{}"))
    }

    /// RFC 7515 Appendix A.3: the ES256 example verifies with its JWK (public part).
    #[test]
    fn rfc7515_a3_es256_example_verifies() {
        let jwk = Jwk::from_value(&json!({"kty":"EC","crv":"P-256",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}))
        .unwrap();
        let input = b"eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        let mut sig = b64::decode(
            "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q",
            "sig",
        )
        .unwrap();
        jwk.verify(Algorithm::Es256, input, &sig).unwrap();
        sig[5] ^= 1;
        assert_eq!(
            jwk.verify(Algorithm::Es256, input, &sig),
            Err(Error::BadSignature)
        );
    }

    /// RFC 7515 A.3's JWK with its private `d` is refused as an account key.
    #[test]
    fn rfc7515_a3_private_jwk_is_refused() {
        let v = json!({"kty":"EC","crv":"P-256",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
            "d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"});
        assert!(matches!(Jwk::from_value(&v), Err(Error::BadPublicKey(_))));
    }

    /// RFC 8555 §7.3: newAccount is a JWS with jwk, nonce and url, verified by the embedded key,
    /// for every accepted algorithm.
    #[test]
    fn accepts_new_account_signed_with_each_algorithm() {
        for key in TestKey::all() {
            let payload =
                br#"{"termsOfServiceAgreed":true,"contact":["mailto:cert-admin@example.org"]}"#;
            let jws = parse_request(CT, &signed(&key, None, payload), URL).unwrap();
            jws.require_jwk().unwrap();
            assert_eq!(jws.header().alg.name(), key.alg());
            assert_eq!(jws.header().nonce.as_deref(), Some("n0nce"));
            let v = jws.verify_embedded().unwrap();
            let na: crate::payload::NewAccount = v.json().unwrap();
            assert!(na.terms_of_service_agreed);
            assert_eq!(v.key, Jwk::from_value(&key.jwk()).unwrap());
        }
    }

    /// RFC 8555 §7.3: the newAccount example's header members and payload, signed with ES256.
    #[test]
    fn rfc8555_7_3_new_account_example_shape() {
        let key = TestKey::es256();
        let url = "https://example.com/acme/new-account";
        let header =
            json!({"alg":"ES256","jwk":key.jwk(),"nonce":"6S8IqOGY7eL2lsGoTZYifg","url":url});
        let payload = json!({"termsOfServiceAgreed": true,
            "contact": ["mailto:cert-admin@example.org", "mailto:admin@example.org"]});
        let b = body(&key.sign_jws(&header, payload.to_string().as_bytes()));
        let jws = parse_request(CT, &b, url).unwrap();
        assert_eq!(
            jws.header().nonce.as_deref(),
            Some("6S8IqOGY7eL2lsGoTZYifg")
        );
        let v = jws.verify_embedded().unwrap();
        let na: crate::payload::NewAccount = v.json().unwrap();
        na.validate(true, false).unwrap();
        assert_eq!(na.contact.len(), 2);
        assert!(!na.only_return_existing);
    }

    #[test]
    fn kid_requests_verify_with_the_account_key_only() {
        let key = TestKey::es256();
        let other = TestKey::es256();
        let body = signed(&key, Some("https://h/acme/acct/1"), b"");
        let account_key = Jwk::from_value(&key.jwk()).unwrap();
        let jws = parse_request(CT, &body, URL).unwrap();
        assert_eq!(jws.kid(), Some("https://h/acme/acct/1"));
        assert!(jws.require_jwk().is_err());
        let v = jws.clone().verify_with(&account_key).unwrap();
        assert_eq!(v.payload, Payload::PostAsGet);
        let wrong = Jwk::from_value(&other.jwk()).unwrap();
        assert_eq!(jws.verify_with(&wrong).unwrap_err(), Error::BadSignature);
    }

    #[test]
    fn post_as_get_is_distinct_from_empty_object() {
        let key = TestKey::eddsa();
        let account_key = Jwk::from_value(&key.jwk()).unwrap();
        let get = parse_request(CT, &signed(&key, Some("k"), b""), URL)
            .unwrap()
            .verify_with(&account_key)
            .unwrap();
        get.expect_post_as_get().unwrap();
        assert!(matches!(
            get.json::<Value>(),
            Err(Error::WrongPayloadKind(_))
        ));
        let obj = parse_request(CT, &signed(&key, Some("k"), b"{}"), URL)
            .unwrap()
            .verify_with(&account_key)
            .unwrap();
        assert!(matches!(
            obj.expect_post_as_get(),
            Err(Error::WrongPayloadKind(_))
        ));
        assert_eq!(obj.json::<Value>().unwrap(), json!({}));
    }

    #[test]
    fn rejects_tampered_payload() {
        let key = TestKey::rs256();
        let mut v = key.sign_jws(&key.header(None, Some("n"), URL), br#"{"contact":[]}"#);
        v["payload"] = json!(b64::encode(br#"{"contact":["mailto:evil@example.org"]}"#));
        let jws = parse_request(CT, &body(&v), URL).unwrap();
        assert_eq!(jws.verify_embedded().unwrap_err(), Error::BadSignature);
    }

    #[test]
    fn rejects_wrong_url() {
        let key = TestKey::es384();
        let b = signed(&key, None, b"{}");
        assert_eq!(
            parse_request(CT, &b, "https://127.0.0.1:8443/acme/new-order").unwrap_err(),
            Error::UrlMismatch
        );
    }

    #[test]
    fn rejects_wrong_content_type() {
        let key = TestKey::es256();
        let b = signed(&key, None, b"{}");
        let e = parse_request(Some("application/json"), &b, URL).unwrap_err();
        assert_eq!(e.wire().1, 415);
    }

    #[test]
    fn rejects_alg_none_and_macs_and_unknown_algs() {
        let key = TestKey::es256();
        for alg in ["none", "HS256", "HS512", "PS256", "ES512", "es256", ""] {
            let mut h = key.header(None, Some("n"), URL);
            h["alg"] = json!(alg);
            let e = parse_request(CT, &with_header(&key, h), URL).unwrap_err();
            assert!(matches!(e, Error::UnsupportedAlgorithm(_)), "{alg}: {e:?}");
        }
        // A `none` JWS has an empty signature and no key at all.
        let none = json!({"protected": b64::encode(br#"{"alg":"none","nonce":"n","url":"u"}"#),
            "payload": b64::encode(b"{}"), "signature": ""});
        assert!(parse_request(CT, &body(&none), "u").is_err());
    }

    #[test]
    fn rejects_alg_that_does_not_fit_the_key() {
        let key = TestKey::es256();
        let mut h = key.header(None, Some("n"), URL);
        h["alg"] = json!("ES384");
        assert!(matches!(
            parse_request(CT, &with_header(&key, h), URL),
            Err(Error::BadPublicKey(_))
        ));
    }

    #[test]
    fn rejects_crit_header() {
        let key = TestKey::es256();
        let mut h = key.header(None, Some("n"), URL);
        h["crit"] = json!(["exp"]);
        h["exp"] = json!(1);
        assert_eq!(
            parse_request(CT, &with_header(&key, h), URL).unwrap_err(),
            Error::CriticalHeader
        );
    }

    #[test]
    fn rejects_both_jwk_and_kid_and_neither() {
        let key = TestKey::es256();
        let mut h = key.header(None, Some("n"), URL);
        h["kid"] = json!("https://h/acme/acct/1");
        assert!(matches!(
            parse_request(CT, &with_header(&key, h), URL),
            Err(Error::WrongKeyReference(_))
        ));
        let h = json!({"alg":"ES256","nonce":"n","url":URL});
        assert!(matches!(
            parse_request(CT, &with_header(&key, h), URL),
            Err(Error::WrongKeyReference(_))
        ));
    }

    #[test]
    fn rejects_missing_nonce_and_url() {
        let key = TestKey::es256();
        let h = key.header(None, None, URL);
        assert!(matches!(
            parse_request(CT, &with_header(&key, h), URL),
            Err(Error::BadNonce(_))
        ));
        let mut h = key.header(None, Some("n"), URL);
        h.as_object_mut().unwrap().remove("url");
        assert!(matches!(
            parse_request(CT, &with_header(&key, h), URL),
            Err(Error::MalformedJws(_))
        ));
    }

    #[test]
    fn rejects_rsa_1024_key() {
        let key = TestKey::rs256();
        let mut h = key.header(None, Some("n"), URL);
        let mut n = vec![0xd5u8; 128];
        n[127] |= 1;
        h["jwk"]["n"] = json!(b64::encode(&n));
        let e = parse_request(CT, &with_header(&key, h), URL).unwrap_err();
        assert!(
            matches!(e, Error::BadPublicKey(ref m) if m.contains("1024")),
            "{e:?}"
        );
    }

    #[test]
    fn rejects_bad_base64_and_bad_shapes() {
        let key = TestKey::es256();
        let good = key.sign_jws(&key.header(None, Some("n"), URL), b"{}");
        for (field, bad) in [
            ("protected", "eyJ+"),
            ("payload", "e30="),
            ("signature", "a b"),
        ] {
            let mut v = good.clone();
            v[field] = json!(bad);
            assert!(
                matches!(parse_request(CT, &body(&v), URL), Err(Error::BadBase64(_))),
                "{field}"
            );
        }
        let mut v = good.clone();
        v["header"] = json!({"kid": "x"});
        assert!(matches!(
            parse_request(CT, &body(&v), URL),
            Err(Error::MalformedJws(_))
        ));
        for b in [
            &b"not json"[..],
            b"[]",
            b"{}",
            b"{\"protected\":1,\"payload\":\"\",\"signature\":\"\"}",
        ] {
            assert!(parse_request(CT, b, URL).is_err());
        }
        // A compact serialization is not accepted.
        assert!(parse_request(CT, b"eyJhbGciOiJFUzI1NiJ9.e30.AAAA", URL).is_err());
        // The protected header must be a JSON object.
        let mut v = good;
        v["protected"] = json!(b64::encode(b"[1,2]"));
        assert!(matches!(
            parse_request(CT, &body(&v), URL),
            Err(Error::InvalidJson(_))
        ));
    }

    /// The fuzz seeds in fuzz/corpus/acme_jws are valid requests (so the fuzzer starts deep).
    #[test]
    fn fuzz_seeds_are_valid_requests() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/acme_jws");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let body = std::fs::read(&path).unwrap();
            let jws = parse_request(CT, &body, "https://127.0.0.1:8443/acme/new-acct")
                .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            if jws.kid().is_none() {
                jws.verify_embedded()
                    .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            }
            n += 1;
        }
        assert!(n >= 5, "seeds missing in {}", dir.display());
    }
}
