//! An exact-request-bytes memo: the raw GET path segment or POST body of a request answered
//! before → what answered it, so a repeated request skips base64/percent decoding, DER decoding
//! and the CacheKey construction.
//!
//! Relying parties ask the same question over and over (one request per certificate, sent again
//! until the answer expires), so the bytes of a request repeat exactly. [`RequestMemo`] maps
//! (transport, tenant, raw bytes) to a value the glue chose — the edge stores the cache entry
//! that answered, and checks on every memo hit that the entry was not replaced (a revocation
//! push) or expired, falling back to the full path otherwise. Only successful answers are
//! memoized: a malformed request is decoded (and counted) every time.
//!
//! Bounds (I-8): at most [`RequestMemo::capacity`] entries, keys of at most [`MAX_KEY`] bytes
//! (longer requests always take the full path; a one-CertID request is ~80 bytes as DER and
//! ~120 as a GET segment), so the memo holds at most `capacity × (MAX_KEY + value)` bytes. The
//! map is split into shards, each behind its own `RwLock`; a full shard drops one arbitrary
//! entry per insert (no recency bookkeeping on the hit path). Keys are hashed with std's
//! randomly keyed SipHash, so request bytes chosen by a client cannot aim at one bucket.

use std::collections::HashMap;
use std::sync::RwLock;

/// Longest memo key in bytes (transport tag, tenant length, tenant, raw request).
pub const MAX_KEY: usize = 512;
const SHARDS: usize = 16;

/// Which transport carried the raw bytes (the same bytes mean different things as a GET
/// segment and as a POST body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The segment after `/ocsp` in a GET path (still percent-/base64-encoded).
    Get,
    /// A POST body (DER).
    Post,
}

/// A bounded map from exact request bytes to `V`. See the module docs.
pub struct RequestMemo<V> {
    shards: Vec<RwLock<HashMap<Box<[u8]>, V>>>,
    per_shard: usize,
}

impl<V: Clone> RequestMemo<V> {
    /// A memo of at most `capacity` entries (0 disables it: every lookup misses, nothing is
    /// stored).
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    /// Most entries held.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map_or(0, |m| m.len()))
            .sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value memoized for these exact bytes, if any.
    pub fn get(&self, transport: Transport, tenant: &str, raw: &[u8]) -> Option<V> {
        if self.per_shard == 0 {
            return None;
        }
        let mut buf = [0u8; MAX_KEY];
        let key = key(&mut buf, transport, tenant, raw)?;
        let shard = self.shards.get(shard_of(key))?;
        let map = shard.read().unwrap_or_else(|p| p.into_inner());
        map.get(key).cloned()
    }

    /// Memoizes `value` for these bytes (ignored when the key is longer than [`MAX_KEY`]).
    pub fn insert(&self, transport: Transport, tenant: &str, raw: &[u8], value: V) {
        if self.per_shard == 0 {
            return;
        }
        let mut buf = [0u8; MAX_KEY];
        let Some(key) = key(&mut buf, transport, tenant, raw) else {
            return;
        };
        let Some(shard) = self.shards.get(shard_of(key)) else {
            return;
        };
        let mut map = shard.write().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = map.get_mut(key) {
            *v = value;
            return;
        }
        if map.len() >= self.per_shard {
            // Drop one arbitrary entry (the hash map's first): bounded, and no bookkeeping on
            // the hit path. A request whose entry goes simply takes the full path once more.
            if let Some(victim) = map.keys().next().cloned() {
                map.remove(&victim);
            }
        }
        map.insert(key.into(), value);
    }

    /// Forgets everything (the issuer index changed, or the cache was swept).
    pub fn clear(&self) {
        for s in &self.shards {
            s.write().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

impl<V> std::fmt::Debug for RequestMemo<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMemo")
            .field("per_shard", &self.per_shard)
            .finish_non_exhaustive()
    }
}

/// `[transport, tenant length, tenant…, raw…]` in `buf`; `None` if it does not fit.
fn key<'b>(
    buf: &'b mut [u8; MAX_KEY],
    transport: Transport,
    tenant: &str,
    raw: &[u8],
) -> Option<&'b [u8]> {
    let t = tenant.as_bytes();
    let tlen = u8::try_from(t.len()).ok()?;
    let len = 2 + t.len() + raw.len();
    if len > MAX_KEY {
        return None;
    }
    buf[0] = match transport {
        Transport::Get => b'G',
        Transport::Post => b'P',
    };
    buf[1] = tlen;
    buf[2..2 + t.len()].copy_from_slice(t);
    buf[2 + t.len()..len].copy_from_slice(raw);
    Some(&buf[..len])
}

/// The shard: FNV-1a over the last 16 bytes (where a serial number sits in an OCSP request, so
/// requests spread; a client aiming at one shard only shrinks its own share of the memo).
fn shard_of(key: &[u8]) -> usize {
    let tail = &key[key.len().saturating_sub(16)..];
    let mut h: u32 = 0x811c_9dc5;
    for &b in tail {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h as usize) % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_hit_other_transport_or_tenant_miss() {
        let m = RequestMemo::new(64);
        m.insert(Transport::Get, "default", b"/MEow", 1u32);
        assert_eq!(m.get(Transport::Get, "default", b"/MEow"), Some(1));
        assert_eq!(m.get(Transport::Post, "default", b"/MEow"), None);
        assert_eq!(m.get(Transport::Get, "acme-co", b"/MEow"), None);
        assert_eq!(m.get(Transport::Get, "default", b"/MEox"), None);
        // The tenant/raw boundary is part of the key: ("ab", "c") is not ("a", "bc").
        m.insert(Transport::Post, "ab", b"c", 2);
        assert_eq!(m.get(Transport::Post, "a", b"bc"), None);
        m.insert(Transport::Get, "default", b"/MEow", 3);
        assert_eq!(m.get(Transport::Get, "default", b"/MEow"), Some(3));
        assert_eq!(m.len(), 2);
        m.clear();
        assert!(m.is_empty());
        assert_eq!(m.get(Transport::Get, "default", b"/MEow"), None);
    }

    #[test]
    fn stays_bounded_under_many_distinct_requests() {
        let m = RequestMemo::new(100);
        for i in 0u32..10_000 {
            m.insert(Transport::Post, "default", &i.to_be_bytes(), i);
            assert!(m.len() <= m.capacity(), "{} > {}", m.len(), m.capacity());
        }
        assert!(m.capacity() >= 100 && m.capacity() < 100 + SHARDS);
        // The most recent insert is always there.
        assert_eq!(
            m.get(Transport::Post, "default", &9_999u32.to_be_bytes()),
            Some(9_999)
        );
    }

    #[test]
    fn oversized_keys_and_zero_capacity_are_never_stored() {
        let m = RequestMemo::new(10);
        let big = vec![7u8; MAX_KEY];
        m.insert(Transport::Post, "default", &big, 1u8);
        assert_eq!(m.get(Transport::Post, "default", &big), None);
        assert!(m.is_empty());
        let off = RequestMemo::new(0);
        off.insert(Transport::Get, "default", b"x", 1u8);
        assert_eq!(off.get(Transport::Get, "default", b"x"), None);
        assert!(off.is_empty());
    }
}
