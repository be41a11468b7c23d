//! Anti-replay nonces across stateless edges (RFC 8555 §6.5, DESIGN.md "Nonces across stateless
//! front ends").
//!
//! A nonce is minted by any edge without shared state and checked by any other:
//!
//! ```text
//! base64url( version(1) ‖ key id(1) ‖ expiry(8, unix seconds, BE) ‖ random(16) ‖ HMAC-SHA256(first 26 bytes)[..16] )
//! ```
//!
//! The MAC is under the fleet nonce key (an input, held in `Zeroizing`), so an edge restart does
//! not invalidate outstanding nonces and a forged nonce never reaches the store. Redeem-once needs
//! shared state; it sits behind [`NonceStore`] (in-process here, Redis later). Only nonces that
//! passed the MAC and expiry check are stored, and entries leave the store only once expired — by
//! then [`NonceVerifier::check`] refuses them on expiry alone, so eviction never re-opens a replay.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{constant_time, hmac};
use zeroize::Zeroizing;

use crate::b64;
use crate::error::Error;

const VERSION: u8 = 1;
const BODY_LEN: usize = 1 + 1 + 8 + 16;
const MAC_LEN: usize = 16;
const NONCE_LEN: usize = BODY_LEN + MAC_LEN;

/// The response header carrying a fresh nonce, on every ACME response (RFC 8555 §6.5.1).
pub const REPLAY_NONCE_HEADER: &str = "Replay-Nonce";

/// Shortest fleet nonce key accepted, in bytes (the HMAC-SHA256 block of security).
pub const MIN_NONCE_KEY_LEN: usize = 32;

/// Default nonce lifetime: long enough for a slow client between two requests, short enough that
/// the redemption store stays small.
pub const DEFAULT_NONCE_TTL: Duration = Duration::from_secs(300);

/// The identity of a checked nonce, as the redemption store keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NonceId {
    /// The random part: unique per nonce.
    pub random: [u8; 16],
    /// Expiry, unix seconds; the store may forget the nonce from then on.
    pub expiry: u64,
}

/// Why a [`NonceStore`] could not answer. Distinct from [`Error`] because stores are implemented
/// outside this crate (Redis); [`NonceVerifier::redeem`] maps it to the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The store is at capacity with unexpired entries: refusing is the fail-closed answer.
    Full,
    /// The store cannot be reached or is broken.
    Unavailable(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Full => write!(f, "nonce store full"),
            StoreError::Unavailable(why) => write!(f, "nonce store unavailable: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// What [`NonceStore::redeem`] returns: a future, because a shared store (Redis) answers over the
/// network; the in-process store answers at once (`std::future::ready`). Boxed so the trait
/// stays usable as `dyn NonceStore`.
pub type RedeemFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, StoreError>> + Send + 'a>>;

/// Redeem-once storage shared by the edges.
pub trait NonceStore: Send + Sync {
    /// Records `nonce` as used. `Ok(true)` the first time, `Ok(false)` on every later call.
    /// `now` (unix seconds) lets a bounded store drop entries that have expired; a store with its
    /// own TTL (Redis `SET NX EXAT expiry`) may ignore it.
    fn redeem<'a>(&'a self, nonce: &'a NonceId, now: u64) -> RedeemFuture<'a>;
}

/// A bounded in-process [`NonceStore`] for a single edge (the embedded default).
#[derive(Debug)]
pub struct MemoryNonceStore {
    capacity: usize,
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    used: HashSet<[u8; 16]>,
    by_expiry: BTreeSet<(u64, [u8; 16])>,
}

impl MemoryNonceStore {
    /// A store holding at most `capacity` unexpired redeemed nonces.
    pub fn new(capacity: usize) -> Self {
        MemoryNonceStore {
            capacity,
            inner: Mutex::new(MemoryInner::default()),
        }
    }

    /// How many redeemed nonces are held.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.used.len()).unwrap_or(0)
    }

    /// Whether no nonce is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl NonceStore for MemoryNonceStore {
    fn redeem<'a>(&'a self, nonce: &'a NonceId, now: u64) -> RedeemFuture<'a> {
        Box::pin(std::future::ready(MemoryNonceStore::redeem(
            self, nonce, now,
        )))
    }
}

impl MemoryNonceStore {
    /// [`NonceStore::redeem`] without the future: the in-process store never waits.
    pub fn redeem(&self, nonce: &NonceId, now: u64) -> Result<bool, StoreError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| StoreError::Unavailable("lock poisoned".into()))?;
        if inner.used.contains(&nonce.random) {
            return Ok(false);
        }
        // Evict only what has expired: an expired nonce is refused by `check` anyway.
        while let Some(&(exp, id)) = inner.by_expiry.first() {
            if exp > now {
                break;
            }
            inner.by_expiry.pop_first();
            inner.used.remove(&id);
        }
        if inner.used.len() >= self.capacity {
            return Err(StoreError::Full);
        }
        inner.used.insert(nonce.random);
        inner.by_expiry.insert((nonce.expiry, nonce.random));
        Ok(true)
    }
}

/// Mints and checks nonces under the fleet key (plus, during a rotation, the previous key).
pub struct NonceVerifier {
    current: (u8, hmac::Key),
    previous: Option<(u8, hmac::Key)>,
    ttl: Duration,
}

impl std::fmt::Debug for NonceVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceVerifier")
            .field("key_id", &self.current.0)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl NonceVerifier {
    /// A verifier minting under `key` (identified by `key_id` inside every nonce). A key shorter
    /// than [`MIN_NONCE_KEY_LEN`] is refused: a guessable fleet key lets anyone mint nonces (I-5).
    pub fn new(key_id: u8, key: &Zeroizing<Vec<u8>>, ttl: Duration) -> Result<Self, Error> {
        Ok(NonceVerifier {
            current: (key_id, Self::hmac_key(key)?),
            previous: None,
            ttl,
        })
    }

    /// Also accepts nonces minted under the previous fleet key, for a rotation without badNonce.
    pub fn with_previous(mut self, key_id: u8, key: &Zeroizing<Vec<u8>>) -> Result<Self, Error> {
        self.previous = Some((key_id, Self::hmac_key(key)?));
        Ok(self)
    }

    fn hmac_key(key: &Zeroizing<Vec<u8>>) -> Result<hmac::Key, Error> {
        if key.len() < MIN_NONCE_KEY_LEN {
            return Err(Error::ServerInternal);
        }
        Ok(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    /// Mints a nonce valid from `now` for the TTL. `random` must come from a CSPRNG; it is an input
    /// so tests are deterministic.
    pub fn mint(&self, now: SystemTime, random: [u8; 16]) -> String {
        let expiry = unix(now).saturating_add(self.ttl.as_secs());
        let mut buf = Vec::with_capacity(NONCE_LEN);
        buf.push(VERSION);
        buf.push(self.current.0);
        buf.extend_from_slice(&expiry.to_be_bytes());
        buf.extend_from_slice(&random);
        let tag = hmac::sign(&self.current.1, &buf);
        buf.extend_from_slice(&tag.as_ref()[..MAC_LEN]);
        b64::encode(&buf)
    }

    /// Checks the nonce's MAC and expiry; does not redeem it.
    pub fn check(&self, nonce: &str, now: SystemTime) -> Result<NonceId, Error> {
        let bytes = b64::decode(nonce, "nonce").map_err(|_| Error::BadNonce("not a nonce"))?;
        if bytes.len() != NONCE_LEN || bytes[0] != VERSION {
            return Err(Error::BadNonce("not a nonce of this server"));
        }
        let key = if bytes[1] == self.current.0 {
            &self.current.1
        } else {
            match &self.previous {
                Some((id, k)) if *id == bytes[1] => k,
                _ => return Err(Error::BadNonce("nonce key unknown")),
            }
        };
        let (body, mac) = bytes.split_at(BODY_LEN);
        let tag = hmac::sign(key, body);
        constant_time::verify_slices_are_equal(&tag.as_ref()[..MAC_LEN], mac)
            .map_err(|_| Error::BadNonce("nonce not minted by this server"))?;
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&body[2..10]);
        let expiry = u64::from_be_bytes(exp);
        if unix(now) >= expiry {
            return Err(Error::BadNonce("nonce expired"));
        }
        let mut random = [0u8; 16];
        random.copy_from_slice(&body[10..26]);
        Ok(NonceId { random, expiry })
    }

    /// Checks and redeems: the only way a request's nonce should be accepted.
    pub async fn redeem(
        &self,
        nonce: &str,
        now: SystemTime,
        store: &dyn NonceStore,
    ) -> Result<(), Error> {
        let id = self.check(nonce, now)?;
        Self::redemption(store.redeem(&id, unix(now)).await)
    }

    /// The wire meaning of a store's answer (sans-I/O half of [`NonceVerifier::redeem`]): only a
    /// first redemption is accepted; a store that is full or unreachable refuses (fail closed).
    pub fn redemption(outcome: Result<bool, StoreError>) -> Result<(), Error> {
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::BadNonce("nonce already used")),
            Err(StoreError::Full) => Err(Error::NonceStoreFull),
            Err(StoreError::Unavailable(_)) => Err(Error::NonceStoreUnavailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(vec![b; 32])
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Runs a future that completes without waiting (the in-process store's).
    fn now<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the in-process store never waits"),
        }
    }

    fn verifier() -> NonceVerifier {
        NonceVerifier::new(1, &key(7), Duration::from_secs(60)).unwrap()
    }

    #[test]
    fn minted_nonce_checks_on_another_edge_with_the_same_key() {
        let n = verifier().mint(t(1000), [9; 16]);
        let other = NonceVerifier::new(1, &key(7), Duration::from_secs(60)).unwrap();
        let id = other.check(&n, t(1030)).unwrap();
        assert_eq!(id.expiry, 1060);
        assert_eq!(id.random, [9; 16]);
    }

    #[test]
    fn rejects_expired_nonce() {
        let v = verifier();
        let n = v.mint(t(1000), [1; 16]);
        assert_eq!(v.check(&n, t(1060)), Err(Error::BadNonce("nonce expired")));
    }

    #[test]
    fn rejects_forged_nonce() {
        let v = verifier();
        let n = v.mint(t(1000), [1; 16]);
        let mut bytes = b64::decode(&n, "n").unwrap();
        bytes[12] ^= 1;
        let forged = b64::encode(&bytes);
        assert!(matches!(v.check(&forged, t(1001)), Err(Error::BadNonce(_))));
        // Minted under another key.
        let other = NonceVerifier::new(1, &key(8), Duration::from_secs(60))
            .unwrap()
            .mint(t(1000), [1; 16]);
        assert!(matches!(v.check(&other, t(1001)), Err(Error::BadNonce(_))));
        assert!(matches!(
            v.check("garbage!", t(1001)),
            Err(Error::BadNonce(_))
        ));
        assert!(matches!(v.check("", t(1001)), Err(Error::BadNonce(_))));
    }

    #[test]
    fn extended_expiry_breaks_the_mac() {
        let v = verifier();
        let n = v.mint(t(1000), [1; 16]);
        let mut bytes = b64::decode(&n, "n").unwrap();
        bytes[9] = bytes[9].wrapping_add(100);
        assert_eq!(
            v.check(&b64::encode(&bytes), t(1070)),
            Err(Error::BadNonce("nonce not minted by this server"))
        );
    }

    #[test]
    fn rejects_replayed_nonce() {
        let v = verifier();
        let store = MemoryNonceStore::new(10);
        let n = v.mint(t(1000), [1; 16]);
        now(v.redeem(&n, t(1001), &store)).unwrap();
        assert_eq!(
            now(v.redeem(&n, t(1002), &store)),
            Err(Error::BadNonce("nonce already used"))
        );
    }

    #[test]
    fn full_store_fails_closed_and_frees_space_only_on_expiry() {
        let v = verifier();
        let store = MemoryNonceStore::new(2);
        now(v.redeem(&v.mint(t(1000), [1; 16]), t(1000), &store)).unwrap();
        now(v.redeem(&v.mint(t(1000), [2; 16]), t(1000), &store)).unwrap();
        let third = v.mint(t(1010), [3; 16]);
        assert_eq!(
            now(v.redeem(&third, t(1010), &store)),
            Err(Error::NonceStoreFull)
        );
        // The refused nonce was not recorded: it works once the old ones have expired.
        now(v.redeem(&third, t(1060), &store)).unwrap();
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn previous_key_is_accepted_during_rotation() {
        let old = NonceVerifier::new(1, &key(7), Duration::from_secs(60)).unwrap();
        let n = old.mint(t(1000), [4; 16]);
        let new = NonceVerifier::new(2, &key(8), Duration::from_secs(60))
            .unwrap()
            .with_previous(1, &key(7))
            .unwrap();
        assert!(new.check(&n, t(1001)).is_ok());
        let only_new = NonceVerifier::new(2, &key(8), Duration::from_secs(60)).unwrap();
        assert!(only_new.check(&n, t(1001)).is_err());
    }

    #[test]
    fn short_fleet_key_is_refused() {
        let short = Zeroizing::new(vec![1u8; 16]);
        assert!(NonceVerifier::new(1, &short, DEFAULT_NONCE_TTL).is_err());
    }

    struct DownStore;
    impl NonceStore for DownStore {
        fn redeem<'a>(&'a self, _: &'a NonceId, _: u64) -> RedeemFuture<'a> {
            Box::pin(std::future::ready(Err(StoreError::Unavailable(
                "down".into(),
            ))))
        }
    }

    #[test]
    fn unreachable_store_is_an_error_not_an_acceptance() {
        let v = verifier();
        let n = v.mint(t(1000), [1; 16]);
        assert_eq!(
            now(v.redeem(&n, t(1001), &DownStore)),
            Err(Error::NonceStoreUnavailable)
        );
    }
}
