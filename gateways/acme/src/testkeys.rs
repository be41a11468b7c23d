//! Test helpers: account keys generated with aws-lc-rs and JWSs signed with them, so the parser is
//! tested against signatures it did not produce itself.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair, RsaKeyPair,
};
use serde_json::{Value, json};

use crate::b64;

pub(crate) enum TestKey {
    Es256(EcdsaKeyPair),
    Es384(EcdsaKeyPair),
    Rs256(RsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl TestKey {
    pub(crate) fn es256() -> TestKey {
        TestKey::Es256(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }
    pub(crate) fn es384() -> TestKey {
        TestKey::Es384(EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap())
    }
    pub(crate) fn rs256() -> TestKey {
        TestKey::Rs256(RsaKeyPair::generate(KeySize::Rsa2048).unwrap())
    }
    pub(crate) fn eddsa() -> TestKey {
        TestKey::EdDsa(Ed25519KeyPair::generate().unwrap())
    }
    pub(crate) fn all() -> Vec<TestKey> {
        vec![Self::es256(), Self::es384(), Self::rs256(), Self::eddsa()]
    }

    pub(crate) fn alg(&self) -> &'static str {
        match self {
            TestKey::Es256(_) => "ES256",
            TestKey::Es384(_) => "ES384",
            TestKey::Rs256(_) => "RS256",
            TestKey::EdDsa(_) => "EdDSA",
        }
    }

    pub(crate) fn jwk(&self) -> Value {
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

    pub(crate) fn sign(&self, msg: &[u8]) -> Vec<u8> {
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
    pub(crate) fn header(&self, kid: Option<&str>, nonce: Option<&str>, url: &str) -> Value {
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
    pub(crate) fn sign_jws(&self, header: &Value, payload: &[u8]) -> Value {
        let protected = b64::encode(header.to_string().as_bytes());
        let payload = b64::encode(payload);
        let sig = self.sign(format!("{protected}.{payload}").as_bytes());
        json!({"protected": protected, "payload": payload, "signature": b64::encode(&sig)})
    }
}
