//! The issuer index and the cache keys (RFC 6960 §4.1.1 CertID matching; invariant I-4).
//!
//! A CertID names its issuer only by two hashes: `issuerNameHash` = H(DER of the issuer's
//! subject `Name`) and `issuerKeyHash` = H(the issuer's `subjectPublicKey` BIT STRING value,
//! without tag, length and unused-bits octet). [`IssuerIndex::insert`] computes both for SHA-1
//! and SHA-256 once per issuer certificate; a lookup is then one hash-map probe per CertID,
//! inside the requesting tenant's map only. A CertID matching no issuer *of that tenant* is
//! [`Error::UnknownIssuer`] (→ `unauthorized`), whether or not another tenant has that issuer,
//! so a response never reveals another tenant's issuers.
//!
//! Cache keys carry the tenant, the issuer id, the CertID hash algorithm (a SHA-1 and a SHA-256
//! CertID for one certificate need different responses: clients match the response's CertID,
//! algorithm included) and the serial normalized to its magnitude without leading zero octets.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use const_oid::ObjectIdentifier;
use const_oid::db::rfc5912::{ID_SHA_1, ID_SHA_256};
use der::{Decode, Encode};
use sha1::{Digest, Sha1};
use sha2::Sha256;
use x509_cert::Certificate;
use x509_ocsp::CertId;

use crate::Error;

/// The CertID hash algorithms this responder answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlg {
    /// SHA-1 (RFC 5019 §2.1.1: what lightweight clients send).
    Sha1,
    /// SHA-256.
    Sha256,
}

impl HashAlg {
    /// The algorithm named by an `AlgorithmIdentifier` OID, if supported.
    pub fn from_oid(oid: &ObjectIdentifier) -> Option<Self> {
        if *oid == ID_SHA_1 {
            Some(HashAlg::Sha1)
        } else if *oid == ID_SHA_256 {
            Some(HashAlg::Sha256)
        } else {
            None
        }
    }

    /// Digest length in octets.
    pub const fn output_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
        }
    }

    fn digest(self, data: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        match self {
            HashAlg::Sha1 => out[..20].copy_from_slice(&Sha1::digest(data)),
            HashAlg::Sha256 => out.copy_from_slice(&Sha256::digest(data)),
        }
        out
    }
}

/// A certificate serial number as a cache key: the two's-complement content octets with leading
/// zero octets removed, at most 20 octets (RFC 5280 §4.1.2.2). `Copy`, no heap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial {
    len: u8,
    bytes: [u8; 20],
}

impl Serial {
    /// From the INTEGER content octets (as in `SerialNumber::as_bytes`). `None` when longer than
    /// 20 octets after removing leading zeros.
    pub fn from_bytes(content: &[u8]) -> Option<Self> {
        let start = content
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(content.len());
        let m = &content[start..];
        if m.len() > 20 {
            return None;
        }
        let mut bytes = [0u8; 20];
        bytes[..m.len()].copy_from_slice(m);
        Some(Serial {
            len: m.len() as u8,
            bytes,
        })
    }

    /// The normalized octets (empty for serial 0).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Serial({})", hex::encode(self.as_bytes()))
    }
}

/// One certificate as the cache knows it, within a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertKey {
    /// The issuer id (as in `/crl/{issuer-id}/…` and the core's CA records).
    pub issuer: Arc<str>,
    /// The CertID hash algorithm the response must carry.
    pub alg: HashAlg,
    /// The serial, normalized.
    pub serial: Serial,
}

/// Which CRL of an issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrlShard {
    /// `full.crl`.
    Full,
    /// `{n}.crl`.
    Shard(u32),
}

/// The key of everything the edge caches for serving. Every variant carries the tenant (I-4).
/// Building a key clones two `Arc<str>` and never allocates for single-certificate requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// A precomputed single-CertID OCSP response.
    Ocsp {
        /// Tenant.
        tenant: Arc<str>,
        /// The certificate.
        cert: CertKey,
    },
    /// A response covering exactly this set of certificates (sorted, deduplicated, ≥ 2).
    OcspSet {
        /// Tenant.
        tenant: Arc<str>,
        /// The certificates, sorted and deduplicated.
        certs: Box<[CertKey]>,
    },
    /// A CRL.
    Crl {
        /// Tenant.
        tenant: Arc<str>,
        /// Issuer id.
        issuer: Arc<str>,
        /// Which CRL.
        shard: CrlShard,
    },
}

impl CacheKey {
    /// The tenant of this key.
    pub fn tenant(&self) -> &Arc<str> {
        match self {
            CacheKey::Ocsp { tenant, .. }
            | CacheKey::OcspSet { tenant, .. }
            | CacheKey::Crl { tenant, .. } => tenant,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HashKey {
    alg: HashAlg,
    name: [u8; 32],
    key: [u8; 32],
}

#[derive(Debug, Default, Clone)]
struct TenantIssuers {
    by_hash: HashMap<HashKey, Arc<str>>,
    ids: HashSet<Arc<str>>,
}

/// Issuers per tenant, indexed by their CertID hashes. Built from the tenant's issuer
/// certificates (pushed by the core); read on every request.
#[derive(Debug, Default, Clone)]
pub struct IssuerIndex {
    tenants: HashMap<Arc<str>, TenantIssuers>,
}

/// Whether `id` is a valid issuer id: `[A-Za-z0-9._-]{1,128}`.
pub fn valid_issuer_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl IssuerIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) issuer `issuer_id` of `tenant` from its DER certificate, precomputing
    /// the SHA-1 and SHA-256 name and key hashes.
    pub fn insert(&mut self, tenant: &str, issuer_id: &str, cert_der: &[u8]) -> Result<(), Error> {
        if !valid_issuer_id(issuer_id) {
            return Err(Error::BadIssuerId);
        }
        let cert = Certificate::from_der(cert_der).map_err(Error::BadIssuerCertificate)?;
        let name = cert
            .tbs_certificate
            .subject
            .to_der()
            .map_err(Error::BadIssuerCertificate)?;
        let key = cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes();
        self.remove(tenant, issuer_id);
        let t = match self.tenants.get_key_value(tenant) {
            Some((k, _)) => k.clone(),
            None => Arc::from(tenant),
        };
        let entry = self.tenants.entry(t).or_default();
        let id: Arc<str> = Arc::from(issuer_id);
        for alg in [HashAlg::Sha1, HashAlg::Sha256] {
            entry.by_hash.insert(
                HashKey {
                    alg,
                    name: alg.digest(&name),
                    key: alg.digest(key),
                },
                id.clone(),
            );
        }
        entry.ids.insert(id);
        Ok(())
    }

    /// Removes issuer `issuer_id` of `tenant` (no-op when absent).
    pub fn remove(&mut self, tenant: &str, issuer_id: &str) {
        if let Some(t) = self.tenants.get_mut(tenant) {
            t.by_hash.retain(|_, id| &**id != issuer_id);
            t.ids.remove(issuer_id);
            if t.ids.is_empty() {
                self.tenants.remove(tenant);
            }
        }
    }

    /// The tenant's shared name and the issuer's shared id, if `tenant` has that issuer.
    pub fn issuer(&self, tenant: &str, issuer_id: &str) -> Option<(Arc<str>, Arc<str>)> {
        let (t, issuers) = self.tenants.get_key_value(tenant)?;
        let id = issuers.ids.get(issuer_id)?;
        Some((t.clone(), id.clone()))
    }

    /// Resolves one CertID within `tenant`.
    pub fn resolve(&self, tenant: &str, cert_id: &CertId) -> Result<(Arc<str>, CertKey), Error> {
        let alg = HashAlg::from_oid(&cert_id.hash_algorithm.oid)
            .ok_or(Error::UnsupportedHashAlgorithm)?;
        let (t, issuers) = self
            .tenants
            .get_key_value(tenant)
            .ok_or(Error::UnknownIssuer)?;
        let name = cert_id.issuer_name_hash.as_bytes();
        let key = cert_id.issuer_key_hash.as_bytes();
        if name.len() != alg.output_len() || key.len() != alg.output_len() {
            return Err(Error::UnknownIssuer);
        }
        let mut hk = HashKey {
            alg,
            name: [0; 32],
            key: [0; 32],
        };
        hk.name[..name.len()].copy_from_slice(name);
        hk.key[..key.len()].copy_from_slice(key);
        let issuer = issuers.by_hash.get(&hk).ok_or(Error::UnknownIssuer)?;
        let serial =
            Serial::from_bytes(cert_id.serial_number.as_bytes()).ok_or(Error::SerialTooLong)?;
        Ok((
            t.clone(),
            CertKey {
                issuer: issuer.clone(),
                alg,
                serial,
            },
        ))
    }

    /// The cache key for a request (or a response) naming `cert_ids`, within `tenant`: every
    /// CertID must resolve; one distinct certificate gives [`CacheKey::Ocsp`], several give
    /// [`CacheKey::OcspSet`].
    pub fn key_for(&self, tenant: &str, cert_ids: &[CertId]) -> Result<CacheKey, Error> {
        match cert_ids {
            [] => Err(Error::NoCertIds),
            [one] => {
                let (tenant, cert) = self.resolve(tenant, one)?;
                Ok(CacheKey::Ocsp { tenant, cert })
            }
            many => {
                let mut t = None;
                let mut certs = Vec::with_capacity(many.len());
                for id in many {
                    let (tenant, cert) = self.resolve(tenant, id)?;
                    t = Some(tenant);
                    certs.push(cert);
                }
                certs.sort();
                certs.dedup();
                let tenant = t.ok_or(Error::NoCertIds)?;
                if certs.len() == 1 {
                    let cert = certs.pop().ok_or(Error::NoCertIds)?;
                    return Ok(CacheKey::Ocsp { tenant, cert });
                }
                Ok(CacheKey::OcspSet {
                    tenant,
                    certs: certs.into_boxed_slice(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_is_normalized_to_its_magnitude() {
        let a = Serial::from_bytes(&[0x00, 0x80, 0x01]).unwrap();
        let b = Serial::from_bytes(&[0x80, 0x01]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_bytes(), &[0x80, 0x01]);
        assert_eq!(Serial::from_bytes(&[0]).unwrap().as_bytes(), &[] as &[u8]);
        assert!(Serial::from_bytes(&[1; 21]).is_none());
        let mut twenty_one = vec![0u8];
        twenty_one.extend([0xff; 20]);
        assert_eq!(
            Serial::from_bytes(&twenty_one).unwrap().as_bytes(),
            &[0xff; 20]
        );
    }

    #[test]
    fn issuer_ids_are_checked() {
        assert!(valid_issuer_id("root-2026.a_b"));
        assert!(!valid_issuer_id(""));
        assert!(!valid_issuer_id("a/b"));
        assert!(!valid_issuer_id(".."[..1].repeat(129).as_str()));
        assert!(!valid_issuer_id("é"));
        let mut idx = IssuerIndex::new();
        assert_eq!(idx.insert("t", "a/b", &[]), Err(Error::BadIssuerId));
        assert!(matches!(
            idx.insert("t", "ok", &[0x30, 0x00]),
            Err(Error::BadIssuerCertificate(_))
        ));
    }
}
