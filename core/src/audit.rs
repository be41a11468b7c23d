//! The core's audit chain (I-7): every state change, granted or denied, appends one record.
//!
//! Each record's hash is SHA-256 over a canonical, length-prefixed encoding of its fields
//! (including the previous record's hash), so editing a record changes its hash, deleting one
//! leaves a gap in `seq` and a broken `prev`, and reordering breaks both. Records are signed by the
//! signer's AUDIT key over `b"CERTGATE-AUDIT-V1\0" || record_hash` (the prefix the signer's AUDIT
//! role requires); signatures are added in batches by a background task, so an unsigned tail is
//! normal and reported, never a failure.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self as sig, UnparsedPublicKey};
use der::Decode;
use spki::SubjectPublicKeyInfoOwned;

/// The message prefix the signer's AUDIT role requires.
pub const AUDIT_PREFIX: &[u8] = b"CERTGATE-AUDIT-V1\0";

/// One audit record as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// 1, 2, 3, ...
    pub seq: u64,
    /// RFC 3339 UTC.
    pub time: String,
    /// Hash of the previous record (32 zero bytes for the first).
    pub prev: [u8; 32],
    /// What happened, e.g. `issue.stored`, `auth.denied`, `ceremony.approved`.
    pub kind: String,
    /// The tenant concerned ("" for global records).
    pub tenant: String,
    /// Who asked (`uid:N`, a SPIFFE ID, `anonymous`, `core`).
    pub actor: String,
    /// Details, JSON.
    pub details: String,
    /// This record's hash.
    pub hash: [u8; 32],
    /// The AUDIT key's signature over `AUDIT_PREFIX || hash`, once signed.
    pub signature: Option<Vec<u8>>,
}

/// A record to append (the store assigns seq, time, prev and hash inside its transaction).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Record kind.
    pub kind: String,
    /// Tenant.
    pub tenant: String,
    /// Actor.
    pub actor: String,
    /// Details JSON.
    pub details: String,
}

impl AuditEntry {
    /// A new entry; `details` is a JSON value.
    pub fn new(kind: &str, tenant: &str, actor: impl ToString, details: serde_json::Value) -> Self {
        Self {
            kind: kind.to_owned(),
            tenant: tenant.to_owned(),
            actor: actor.to_string(),
            details: details.to_string(),
        }
    }
}

fn put(buf: &mut Vec<u8>, field: &[u8]) {
    buf.extend_from_slice(&(field.len() as u64).to_be_bytes());
    buf.extend_from_slice(field);
}

/// The record hash: SHA-256 over the domain-separated, length-prefixed fields.
pub fn record_hash(
    seq: u64,
    time: &str,
    prev: &[u8; 32],
    kind: &str,
    tenant: &str,
    actor: &str,
    details: &str,
) -> [u8; 32] {
    let mut buf = Vec::with_capacity(128 + details.len());
    buf.extend_from_slice(b"certgate-core-audit-record-v1\0");
    buf.extend_from_slice(&seq.to_be_bytes());
    put(&mut buf, time.as_bytes());
    buf.extend_from_slice(prev);
    put(&mut buf, kind.as_bytes());
    put(&mut buf, tenant.as_bytes());
    put(&mut buf, actor.as_bytes());
    put(&mut buf, details.as_bytes());
    let d = digest::digest(&digest::SHA256, &buf);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The bytes the AUDIT key signs for a record.
pub fn signed_message(hash: &[u8; 32]) -> Vec<u8> {
    let mut m = AUDIT_PREFIX.to_vec();
    m.extend_from_slice(hash);
    m
}

impl AuditRecord {
    /// Recomputes this record's hash from its fields.
    pub fn computed_hash(&self) -> [u8; 32] {
        record_hash(
            self.seq,
            &self.time,
            &self.prev,
            &self.kind,
            &self.tenant,
            &self.actor,
            &self.details,
        )
    }
}

/// The outcome of verifying a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// Records checked.
    pub records: u64,
    /// Records with a verified signature.
    pub signed: u64,
    /// The first bad record's seq and what is wrong with it, if any.
    pub error: Option<(u64, String)>,
}

/// Verifies a chain in storage order: seq 1, 2, 3...; every `prev` is the previous record's hash;
/// every hash recomputes; every signature present verifies under `audit_spki_der` (an Ed25519 or
/// ECDSA P-256 SubjectPublicKeyInfo); unsigned records may only form the tail.
pub fn verify_chain(records: &[AuditRecord], audit_spki_der: Option<&[u8]>) -> Verification {
    let key = audit_spki_der.and_then(|der| SubjectPublicKeyInfoOwned::from_der(der).ok());
    let mut prev = [0u8; 32];
    let mut signed = 0;
    let mut unsigned_from: Option<u64> = None;
    for (i, r) in records.iter().enumerate() {
        let expected_seq = i as u64 + 1;
        let fail = |why: String| Verification {
            records: i as u64,
            signed,
            error: Some((r.seq, why)),
        };
        if r.seq != expected_seq {
            return fail(format!(
                "record {} found where {expected_seq} was expected (deleted or reordered record)",
                r.seq
            ));
        }
        if r.prev != prev {
            return fail(format!(
                "record {} does not link to the record before it (deleted, inserted or reordered)",
                r.seq
            ));
        }
        if r.computed_hash() != r.hash {
            return fail(format!("record {} was edited (hash mismatch)", r.seq));
        }
        match (&r.signature, &key) {
            (Some(signature), Some(key)) => {
                if let Some(from) = unsigned_from {
                    return fail(format!(
                        "record {} is signed but record {from} before it is not",
                        r.seq
                    ));
                }
                if !verify_audit_signature(key, &r.hash, signature) {
                    return fail(format!("record {} has a bad signature", r.seq));
                }
                signed += 1;
            }
            (Some(_), None) => {
                return fail("signed records but no audit public key is known".into());
            }
            (None, _) => {
                unsigned_from.get_or_insert(r.seq);
            }
        }
        prev = r.hash;
    }
    Verification {
        records: records.len() as u64,
        signed,
        error: None,
    }
}

fn verify_audit_signature(
    key: &SubjectPublicKeyInfoOwned,
    hash: &[u8; 32],
    signature: &[u8],
) -> bool {
    let Some(raw) = key.subject_public_key.as_bytes() else {
        return false;
    };
    let alg: &dyn sig::VerificationAlgorithm =
        if key.algorithm.oid == const_oid::db::rfc8410::ID_ED_25519 {
            &sig::ED25519
        } else {
            &sig::ECDSA_P256_SHA256_ASN1
        };
    UnparsedPublicKey::new(alg, raw)
        .verify(&signed_message(hash), signature)
        .is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = [0u8; 32];
        (1..=n)
            .map(|seq| {
                let time = format!("2026-11-25T08:00:{seq:02}Z");
                let details = format!("{{\"n\":{seq}}}");
                let hash = record_hash(seq, &time, &prev, "test", "t1", "uid:1", &details);
                let r = AuditRecord {
                    seq,
                    time,
                    prev,
                    kind: "test".into(),
                    tenant: "t1".into(),
                    actor: "uid:1".into(),
                    details,
                    hash,
                    signature: None,
                };
                prev = hash;
                r
            })
            .collect()
    }

    fn key() -> (Ed25519KeyPair, Vec<u8>) {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        // SPKI for Ed25519: fixed 12-byte header + 32-byte key (RFC 8410).
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(kp.public_key().as_ref());
        (kp, spki)
    }

    fn signed_chain(n: u64) -> (Vec<AuditRecord>, Vec<u8>) {
        let (kp, spki) = key();
        let mut c = chain(n);
        for r in &mut c {
            r.signature = Some(kp.sign(&signed_message(&r.hash)).as_ref().to_vec());
        }
        (c, spki)
    }

    #[test]
    fn intact_chain_verifies() {
        let (c, spki) = signed_chain(5);
        let v = verify_chain(&c, Some(&spki));
        assert_eq!(v.error, None);
        assert_eq!((v.records, v.signed), (5, 5));
    }

    #[test]
    fn detects_an_edited_record() {
        let (mut c, spki) = signed_chain(5);
        c[2].details = "{\"n\":99}".into();
        let v = verify_chain(&c, Some(&spki));
        assert_eq!(v.error.expect("detected").0, 3);
    }

    #[test]
    fn detects_an_edited_record_with_recomputed_hash_by_its_signature_or_link() {
        let (mut c, spki) = signed_chain(5);
        c[2].details = "{\"n\":99}".into();
        c[2].hash = c[2].computed_hash();
        let v = verify_chain(&c, Some(&spki));
        assert_eq!(
            v.error.expect("detected").0,
            3,
            "bad signature on the edited record"
        );
    }

    #[test]
    fn detects_a_deleted_record() {
        let (mut c, spki) = signed_chain(5);
        c.remove(1);
        let v = verify_chain(&c, Some(&spki));
        assert_eq!(v.error.expect("detected").0, 3);
    }

    #[test]
    fn detects_reordered_records() {
        let (mut c, spki) = signed_chain(5);
        c.swap(1, 2);
        let v = verify_chain(&c, Some(&spki));
        assert!(v.error.is_some());
    }

    #[test]
    fn unsigned_tail_is_fine_but_unsigned_middle_is_not() {
        let (mut c, spki) = signed_chain(5);
        c[4].signature = None;
        assert_eq!(verify_chain(&c, Some(&spki)).error, None);
        c[4].signature = c[3].signature.take();
        c[4].signature = None;
        c[3].signature = None;
        assert_eq!(verify_chain(&c, Some(&spki)).error, None);
        let (mut c, spki) = signed_chain(5);
        c[1].signature = None;
        assert_eq!(verify_chain(&c, Some(&spki)).error.expect("detected").0, 3);
    }
}
