//! Test helpers: account keys generated with aws-lc-rs and JWSs signed with them, so the parser is
//! tested against signatures it did not produce itself. Test-only code (feature `testkeys`):
//! a failing key generation or signature is a broken test environment, so it panics.
#![allow(clippy::unwrap_used, missing_docs)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair, RsaKeyPair,
};
use serde_json::{Value, json};

use crate::b64;

pub enum TestKey {
    Es256(EcdsaKeyPair),
    Es384(EcdsaKeyPair),
    Rs256(RsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl TestKey {
    pub fn es256() -> TestKey {
        TestKey::Es256(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }
    pub fn es384() -> TestKey {
        TestKey::Es384(EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap())
    }
    pub fn rs256() -> TestKey {
        TestKey::Rs256(RsaKeyPair::generate(KeySize::Rsa2048).unwrap())
    }
    pub fn eddsa() -> TestKey {
        TestKey::EdDsa(Ed25519KeyPair::generate().unwrap())
    }
    pub fn all() -> Vec<TestKey> {
        vec![Self::es256(), Self::es384(), Self::rs256(), Self::eddsa()]
    }

    pub fn alg(&self) -> &'static str {
        match self {
            TestKey::Es256(_) => "ES256",
            TestKey::Es384(_) => "ES384",
            TestKey::Rs256(_) => "RS256",
            TestKey::EdDsa(_) => "EdDSA",
        }
    }

    pub fn jwk(&self) -> Value {
        match self {
            TestKey::Es256(k) | TestKey::Es384(k) => {
                let p = k.public_key().as_ref();
                let n = (p.len() - 1) / 2;
                let crv = if n == 32 { "P-256" } else { "P-384" };
                json!({"kty":"EC","crv":crv,"x":b64::encode(&p[1..1 + n]),"y":b64::encode(&p[1 + n..])})
            }
            TestKey::Rs256(k) => {
                let pk = k.public_key();
                json!({"kty":"RSA",
                    "n":b64::encode(pk.modulus().big_endian_without_leading_zero()),
                    "e":b64::encode(pk.exponent().big_endian_without_leading_zero())})
            }
            TestKey::EdDsa(k) => {
                json!({"kty":"OKP","crv":"Ed25519","x":b64::encode(k.public_key().as_ref())})
            }
        }
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            TestKey::Es256(k) | TestKey::Es384(k) => k.sign(&rng, msg).unwrap().as_ref().to_vec(),
            TestKey::Rs256(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                    .unwrap();
                sig
            }
            TestKey::EdDsa(k) => k.sign(msg).as_ref().to_vec(),
        }
    }

    /// The protected header of a request: `jwk` when `kid` is None.
    pub fn header(&self, kid: Option<&str>, nonce: Option<&str>, url: &str) -> Value {
        let mut h = json!({"alg": self.alg(), "url": url});
        match kid {
            Some(k) => h["kid"] = json!(k),
            None => h["jwk"] = self.jwk(),
        }
        if let Some(n) = nonce {
            h["nonce"] = json!(n);
        }
        h
    }

    /// A flattened JWS over `header` and `payload`.
    pub fn sign_jws(&self, header: &Value, payload: &[u8]) -> Value {
        let protected = b64::encode(header.to_string().as_bytes());
        let payload = b64::encode(payload);
        let sig = self.sign(format!("{protected}.{payload}").as_bytes());
        json!({"protected": protected, "payload": payload, "signature": b64::encode(&sig)})
    }
}

/// Writes the fuzz seeds (valid requests) into `$ACME_FUZZ_SEEDS`:
/// `ACME_FUZZ_SEEDS=$PWD/fuzz/corpus/acme_jws cargo nextest run -p certgate-acme --run-ignored only write_fuzz_seeds`.
/// URLs and keys match `crate::fuzzing` (SEED_URL, nonce key 7×32, EAB key 1×32).
#[test]
#[ignore = "generator for fuzz/corpus/acme_jws, run by hand"]
fn write_fuzz_seeds() {
    use crate::nonce::NonceVerifier;
    use aws_lc_rs::hmac;
    use std::time::{Duration, UNIX_EPOCH};
    use zeroize::Zeroizing;

    let Some(dir) = std::env::var_os("ACME_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    const URL: &str = "https://127.0.0.1:8443/acme/new-acct";
    const ACCT: &str = "https://127.0.0.1:8443/acme/acct/1";
    let verifier =
        NonceVerifier::new(1, &Zeroizing::new(vec![7; 32]), Duration::from_secs(3600)).unwrap();
    let nonce = |i: u8| {
        verifier.mint(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000 - 60),
            [i; 16],
        )
    };
    let write = |name: &str, v: &Value| {
        std::fs::write(dir.join(name), serde_json::to_vec(v).unwrap()).unwrap()
    };

    let es256 = TestKey::es256();
    let payload = json!({"termsOfServiceAgreed":true,"contact":["mailto:cert-admin@example.org"]});
    write(
        "new_account_es256.json",
        &es256.sign_jws(
            &es256.header(None, Some(&nonce(1)), URL),
            payload.to_string().as_bytes(),
        ),
    );

    let ed = TestKey::eddsa();
    let protected = b64::encode(
        json!({"alg":"HS256","kid":"eab-1","url":URL})
            .to_string()
            .as_bytes(),
    );
    let eab_payload = b64::encode(ed.jwk().to_string().as_bytes());
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &[1; 32]),
        format!("{protected}.{eab_payload}").as_bytes(),
    );
    let payload = json!({"termsOfServiceAgreed":true,"externalAccountBinding":
        {"protected":protected,"payload":eab_payload,"signature":b64::encode(tag.as_ref())}});
    write(
        "new_account_eab_eddsa.json",
        &ed.sign_jws(
            &ed.header(None, Some(&nonce(2)), URL),
            payload.to_string().as_bytes(),
        ),
    );

    let rsa = TestKey::rs256();
    let payload = json!({"identifiers":[{"type":"dns","value":"www.example.org"},{"type":"dns","value":"*.example.org"},
        {"type":"ip","value":"2001:db8::1"}],"notBefore":"2027-01-01T00:00:00Z","notAfter":"2027-01-08T00:00:00Z",
        "profile":"tlsserver","replaces":"aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"});
    write(
        "new_order_rs256.json",
        &rsa.sign_jws(
            &rsa.header(None, Some(&nonce(3)), URL),
            payload.to_string().as_bytes(),
        ),
    );

    let p384 = TestKey::es384();
    write(
        "post_as_get_es384_kid.json",
        &p384.sign_jws(&p384.header(Some(ACCT), Some(&nonce(4)), URL), b""),
    );

    let new = TestKey::eddsa();
    let inner = new.sign_jws(
        &new.header(None, None, URL),
        json!({"account":ACCT,"oldKey":es256.jwk()})
            .to_string()
            .as_bytes(),
    );
    write(
        "key_change_es256.json",
        &es256.sign_jws(
            &es256.header(None, Some(&nonce(5)), URL),
            inner.to_string().as_bytes(),
        ),
    );

    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["www.example.org".to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).unwrap();
    let payload = json!({"csr": b64::encode(csr.der()),
        "identifiers":[{"type":"dns","value":"www.example.org"}]});
    write(
        "finalize_es256.json",
        &es256.sign_jws(
            &es256.header(None, Some(&nonce(6)), URL),
            payload.to_string().as_bytes(),
        ),
    );

    let cert = params.self_signed(&key).unwrap();
    let payload = json!({"certificate": b64::encode(cert.der()), "reason": 4});
    write(
        "revoke_cert_es256.json",
        &es256.sign_jws(
            &es256.header(None, Some(&nonce(7)), URL),
            payload.to_string().as_bytes(),
        ),
    );
}
