//! JSON Web Keys (RFC 7517/7518) for account keys, RFC 7638 thumbprints and key authorizations.
//!
//! Only public keys of the kinds the server verifies are accepted: EC P-256/P-384, RSA 2048–8192
//! bits, and Ed25519. A JWK carrying any private member is refused outright, because a client that
//! sends its private key has leaked it and must not have it accepted as an account key.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

use crate::b64;
use crate::error::Error;
use crate::jws::Algorithm;

/// Smallest RSA modulus accepted, in bits (issue 4: RS256 with ≥ 2048).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits (aws-lc-rs' PKCS#1 verifier limit).
pub const MAX_RSA_BITS: usize = 8192;

/// Members that only private JWKs carry (RFC 7518 §6.2.2, §6.3.2, RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// An elliptic curve for ECDSA keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256, used with ES256.
    P256,
    /// NIST P-384, used with ES384.
    P384,
}

impl Curve {
    fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
        }
    }
    fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

/// A public key as the client sent it in a `jwk` header (decoded, validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jwk {
    /// `kty: EC`.
    Ec {
        /// The curve.
        crv: Curve,
        /// The x coordinate, exactly the curve's length.
        x: Vec<u8>,
        /// The y coordinate, exactly the curve's length.
        y: Vec<u8>,
    },
    /// `kty: RSA`.
    Rsa {
        /// Modulus, big-endian without leading zeros.
        n: Vec<u8>,
        /// Public exponent, big-endian without leading zeros.
        e: Vec<u8>,
    },
    /// `kty: OKP`, `crv: Ed25519` (RFC 8037).
    Ed25519 {
        /// The 32-byte public key.
        x: Vec<u8>,
    },
}

fn str_member<'a>(obj: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, Error> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Error::BadPublicKey(format!(
            "jwk member {name} is not a string"
        ))),
        None => Err(Error::BadPublicKey(format!("jwk member {name} is missing"))),
    }
}

fn b64_member(obj: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, Error> {
    b64::decode(str_member(obj, name)?, "jwk")
}

fn bit_len(be: &[u8]) -> usize {
    match be.iter().position(|b| *b != 0) {
        None => 0,
        Some(i) => {
            let top = be[i];
            (be.len() - i - 1) * 8 + (8 - top.leading_zeros() as usize)
        }
    }
}

impl Jwk {
    /// Parses and validates a JWK from a JSON value (the `jwk` header member or an EAB payload).
    pub fn from_value(v: &Value) -> Result<Jwk, Error> {
        let Value::Object(obj) = v else {
            return Err(Error::BadPublicKey("jwk is not an object".into()));
        };
        if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| obj.contains_key(**m)) {
            return Err(Error::BadPublicKey(format!(
                "jwk carries private member {m}"
            )));
        }
        let jwk = match str_member(obj, "kty")? {
            "EC" => {
                let crv = match str_member(obj, "crv")? {
                    "P-256" => Curve::P256,
                    "P-384" => Curve::P384,
                    other => return Err(Error::BadPublicKey(format!("unsupported curve {other}"))),
                };
                let x = b64_member(obj, "x")?;
                let y = b64_member(obj, "y")?;
                if x.len() != crv.coordinate_len() || y.len() != crv.coordinate_len() {
                    return Err(Error::BadPublicKey(
                        "EC coordinate has the wrong length".into(),
                    ));
                }
                Jwk::Ec { crv, x, y }
            }
            "RSA" => {
                let n = b64_member(obj, "n")?;
                let e = b64_member(obj, "e")?;
                if n.first() == Some(&0) || e.first() == Some(&0) || e.is_empty() {
                    return Err(Error::BadPublicKey(
                        "RSA component has leading zeros".into(),
                    ));
                }
                let bits = bit_len(&n);
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                    return Err(Error::BadPublicKey(format!(
                        "RSA modulus of {bits} bits (need {MIN_RSA_BITS}..={MAX_RSA_BITS})"
                    )));
                }
                // An even or 1-bit exponent is not a working RSA key; > 32 bits is refused by
                // aws-lc-rs anyway and only slows verification.
                if e.len() > 4 || bit_len(&e) < 2 || e.last().is_some_and(|b| b & 1 == 0) {
                    return Err(Error::BadPublicKey("unusual RSA public exponent".into()));
                }
                Jwk::Rsa { n, e }
            }
            "OKP" => {
                match str_member(obj, "crv")? {
                    "Ed25519" => {}
                    other => return Err(Error::BadPublicKey(format!("unsupported curve {other}"))),
                }
                let x = b64_member(obj, "x")?;
                if x.len() != 32 {
                    return Err(Error::BadPublicKey("Ed25519 key is not 32 bytes".into()));
                }
                Jwk::Ed25519 { x }
            }
            other => return Err(Error::BadPublicKey(format!("unsupported key type {other}"))),
        };
        jwk.check_on_curve()?;
        Ok(jwk)
    }

    /// Rejects EC points not on their curve and Ed25519 encodings that are not points, at parse
    /// time rather than at the first verification.
    fn check_on_curve(&self) -> Result<(), Error> {
        let ok = match self {
            Jwk::Ec { crv, .. } => {
                let alg: &'static dyn signature::VerificationAlgorithm = match crv {
                    Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED,
                    Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED,
                };
                UnparsedPublicKey::new(alg, self.ec_point()).parse().is_ok()
            }
            Jwk::Ed25519 { x } => UnparsedPublicKey::new(&signature::ED25519, x)
                .parse()
                .is_ok(),
            Jwk::Rsa { .. } => true,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::BadPublicKey("not a valid point on the curve".into()))
        }
    }

    fn ec_point(&self) -> Vec<u8> {
        match self {
            Jwk::Ec { x, y, .. } => {
                let mut p = Vec::with_capacity(1 + x.len() + y.len());
                p.push(0x04);
                p.extend_from_slice(x);
                p.extend_from_slice(y);
                p
            }
            _ => Vec::new(),
        }
    }

    /// The JWS algorithm this key is used with; `alg` must equal it.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Jwk::Ec {
                crv: Curve::P256, ..
            } => Algorithm::Es256,
            Jwk::Ec {
                crv: Curve::P384, ..
            } => Algorithm::Es384,
            Jwk::Rsa { .. } => Algorithm::Rs256,
            Jwk::Ed25519 { .. } => Algorithm::EdDsa,
        }
    }

    /// Verifies `sig` over `msg` with this key under `alg`. A key that does not fit `alg` is a
    /// `badPublicKey`, a signature that does not verify is `malformed` (RFC 8555 §6.2).
    pub fn verify(&self, alg: Algorithm, msg: &[u8], sig: &[u8]) -> Result<(), Error> {
        if self.algorithm() != alg {
            return Err(Error::BadPublicKey(format!(
                "key does not fit alg {}",
                alg.name()
            )));
        }
        let res = match self {
            Jwk::Ec {
                crv: Curve::P256, ..
            } => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, self.ec_point())
                .verify(msg, sig),
            Jwk::Ec {
                crv: Curve::P384, ..
            } => UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, self.ec_point())
                .verify(msg, sig),
            Jwk::Rsa { n, e } => RsaPublicKeyComponents { n, e }.verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                msg,
                sig,
            ),
            Jwk::Ed25519 { x } => UnparsedPublicKey::new(&signature::ED25519, x).verify(msg, sig),
        };
        res.map_err(|_| Error::BadSignature)
    }

    /// The RFC 7638 canonical JSON: required members only, in lexicographic order, no spaces.
    pub fn canonical_json(&self) -> String {
        match self {
            Jwk::Ec { crv, x, y } => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                crv.name(),
                b64::encode(x),
                b64::encode(y)
            ),
            Jwk::Rsa { n, e } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                b64::encode(e),
                b64::encode(n)
            ),
            Jwk::Ed25519 { x } => {
                format!(
                    r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                    b64::encode(x)
                )
            }
        }
    }

    /// The JWK as a JSON value (public members only), e.g. to store with the account.
    pub fn to_value(&self) -> Value {
        // The canonical JSON is built from fixed keys and base64url strings: it always parses.
        serde_json::from_str(&self.canonical_json()).unwrap_or(Value::Null)
    }

    /// RFC 7638 thumbprint with SHA-256, base64url-encoded.
    pub fn thumbprint(&self) -> String {
        let d = digest::digest(&digest::SHA256, self.canonical_json().as_bytes());
        b64::encode(d.as_ref())
    }

    /// The key authorization for a challenge token (RFC 8555 §8.1): `token "." thumbprint`.
    pub fn key_authorization(&self, token: &str) -> String {
        format!("{token}.{}", self.thumbprint())
    }

    /// The dns-01 TXT record value (RFC 8555 §8.4): base64url(SHA-256(key authorization)).
    pub fn dns01_txt_value(&self, token: &str) -> String {
        let d = digest::digest(&digest::SHA256, self.key_authorization(token).as_bytes());
        b64::encode(d.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 7638 §3.1: the RSA key and its SHA-256 thumbprint.
    #[test]
    fn rfc7638_thumbprint_example() {
        let v = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let jwk = Jwk::from_value(&v).unwrap();
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn key_authorization_is_token_dot_thumbprint() {
        let v =
            json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let jwk = Jwk::from_value(&v).unwrap();
        let ka = jwk.key_authorization("tok");
        assert_eq!(ka, format!("tok.{}", jwk.thumbprint()));
        assert_eq!(jwk.dns01_txt_value("tok").len(), 43);
    }

    #[test]
    fn rejects_private_members() {
        let v = json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            "d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"});
        assert!(matches!(Jwk::from_value(&v), Err(Error::BadPublicKey(_))));
    }

    #[test]
    fn rejects_symmetric_and_unknown_keys() {
        let v = json!({"kty":"oct","k":"AAAA"});
        assert!(matches!(Jwk::from_value(&v), Err(Error::BadPublicKey(_))));
        let v = json!({"kty":"EC","crv":"P-521","x":"AA","y":"AA"});
        assert!(matches!(Jwk::from_value(&v), Err(Error::BadPublicKey(_))));
    }

    #[test]
    fn rejects_ec_point_off_the_curve() {
        let v =
            json!({"kty":"EC","crv":"P-256","x":b64::encode(&[1u8;32]),"y":b64::encode(&[2u8;32])});
        assert!(matches!(Jwk::from_value(&v), Err(Error::BadPublicKey(_))));
    }

    #[test]
    fn rejects_rsa_1024_modulus() {
        let mut n = vec![0xc1u8; 128];
        n[127] = 0x01;
        let v = json!({"kty":"RSA","n":b64::encode(&n),"e":"AQAB"});
        let err = Jwk::from_value(&v).unwrap_err();
        assert!(
            matches!(err, Error::BadPublicKey(ref m) if m.contains("1024")),
            "{err:?}"
        );
    }
}
