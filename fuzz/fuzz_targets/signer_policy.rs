//! The signer's policy check parses whatever the core asks it to sign (TBSCertificate,
//! TBSCertList, OCSP ResponseData, audit records). A compromised core controls those bytes, so the
//! parser must never panic and must never answer "allowed" for a role that may not sign them.
#![no_main]

use certgate_proto::signer::{Algorithm, KeyBackend, KeyRole, KeyType};
use certgate_signer::keystore::{KeyMeta, Policy};
use certgate_signer::policy::{Signed, check};
use libfuzzer_sys::fuzz_target;

const ROLES: [KeyRole; 7] = [
    KeyRole::Root,
    KeyRole::Intermediate,
    KeyRole::Issuing,
    KeyRole::Ocsp,
    KeyRole::Crl,
    KeyRole::Audit,
    KeyRole::Ra,
];

fuzz_target!(|data: &[u8]| {
    for role in ROLES {
        let meta = KeyMeta {
            key_id: "fuzz".into(),
            tenant: "fuzz".into(),
            role,
            key_type: KeyType::EcP256,
            backend: KeyBackend::SealedFile,
            policy: Policy::default(),
            public_key_der: Vec::new(),
            created_unix: 0,
        };
        if let Ok(signed) = check(&meta, Algorithm::EcdsaP256Sha256, data) {
            // Whatever parsed, the role must be one that may sign it.
            let allowed = match role {
                KeyRole::Ocsp => signed == Signed::OcspResponse,
                KeyRole::Crl => signed == Signed::CertList,
                KeyRole::Audit => signed == Signed::AuditRecord,
                KeyRole::Ra => signed == Signed::Protection,
                KeyRole::Issuing => matches!(
                    signed,
                    Signed::Certificate | Signed::CertList | Signed::OcspResponse
                ),
                _ => !matches!(signed, Signed::AuditRecord | Signed::Protection),
            };
            assert!(allowed, "{role:?} allowed to sign {signed:?}");
        }
    }
});
