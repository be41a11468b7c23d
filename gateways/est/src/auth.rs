//! HTTP Basic for EST labels (RFC 7030 §3.2.3). The server stores only
//! `pbkdf2-sha256$ITERATIONS$SALT_B64$HASH_B64` (PBKDF2-HMAC-SHA256, aws-lc-rs); a presented
//! password is held in `Zeroizing` and checked with aws-lc-rs's constant-time `pbkdf2::verify`.
//! An unknown user costs the same derivation as a known one (against a fixed dummy hash), so
//! timing does not tell which user names exist.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::{hmac, pbkdf2};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::EstError;

/// Length of the derived hash and of generated salts, bytes.
const HASH_LEN: usize = 32;
/// Iterations used by [`hash_password`] callers that have no opinion (dev). Each Basic-authenticated
/// request pays one derivation, so this trades brute-force cost against enrollment rate.
pub const DEFAULT_ITERATIONS: u32 = 10_000;
/// The most iterations a stored hash may ask for (bounds per-request CPU, I-8).
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// Credentials from an `Authorization: Basic` header. The password never leaves `Zeroizing`.
pub struct BasicCredentials {
    /// The user name (not secret; logged and audited as the client identity).
    pub username: String,
    /// The password bytes.
    pub password: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Parses an `Authorization` header value (`Basic base64(user:password)`).
pub fn parse_basic(header: &[u8]) -> Result<BasicCredentials, EstError> {
    let text = std::str::from_utf8(header).map_err(|_| EstError::BadAuthorization)?;
    let (scheme, rest) = text
        .trim()
        .split_once(' ')
        .ok_or(EstError::BadAuthorization)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(EstError::BadAuthorization);
    }
    let decoded = Zeroizing::new(
        STANDARD
            .decode(rest.trim())
            .map_err(|_| EstError::BadAuthorization)?,
    );
    let colon = decoded
        .iter()
        .position(|b| *b == b':')
        .ok_or(EstError::BadAuthorization)?;
    let username = std::str::from_utf8(&decoded[..colon])
        .map_err(|_| EstError::BadAuthorization)?
        .to_owned();
    let password = Zeroizing::new(decoded[colon + 1..].to_vec());
    Ok(BasicCredentials { username, password })
}

/// A parsed stored hash.
#[derive(Clone)]
pub struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
    /// Recently verified (user name, password) pairs, shared by clones of this hash.
    verified: Arc<VerifiedCache>,
}

/// How long a verified (user name, password) pair is answered from [`VerifiedCache`].
const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Most pairs remembered per stored hash (I-8); beyond, expired entries go, then all.
const VERIFIED_MAX: usize = 1024;

/// Why this exists: one PBKDF2 derivation at 10,000 iterations costs more edge CPU than the rest
/// of an EST enrollment (two thirds of the edge's CPU in the `est` bench), and a device that
/// enrolls over and over presents the same credentials each time. After a full derivation has
/// accepted a pair, its HMAC-SHA256 under a random per-process key (never the password, never a
/// plain digest of it) is remembered for [`VERIFIED_TTL`]; the same pair then verifies by
/// recomputing that tag. Only successes are remembered, so every wrong password, and every right
/// password with a wrong user name, still pays the full derivation (no timing difference for
/// guesses). A new stored hash (config change) starts with an empty cache.
struct VerifiedCache {
    key: hmac::Key,
    seen: Mutex<HashMap<[u8; 32], Instant>>,
}

impl VerifiedCache {
    fn new() -> Result<Self, EstError> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| EstError::KeyGen)?;
        Ok(Self {
            key,
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// HMAC(key, len(user) ‖ user ‖ password).
    fn tag(&self, username: &[u8], password: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&(username.len() as u64).to_be_bytes());
        ctx.update(username);
        ctx.update(password);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn hit(&self, tag: &[u8; 32]) -> bool {
        let Ok(seen) = self.seen.lock() else {
            return false;
        };
        seen.get(tag).is_some_and(|t| t.elapsed() < VERIFIED_TTL)
    }

    fn remember(&self, tag: [u8; 32]) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.len() >= VERIFIED_MAX {
            seen.retain(|_, t| t.elapsed() < VERIFIED_TTL);
            if seen.len() >= VERIFIED_MAX {
                seen.clear();
            }
        }
        seen.insert(tag, Instant::now());
    }
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PasswordHash(pbkdf2-sha256, {} iterations)",
            self.iterations
        )
    }
}

impl PasswordHash {
    /// Parses `pbkdf2-sha256$ITER$SALT_B64$HASH_B64`.
    pub fn parse(s: &str) -> Result<Self, EstError> {
        let mut it = s.split('$');
        if it.next() != Some("pbkdf2-sha256") {
            return Err(EstError::BadHash("must start with pbkdf2-sha256$"));
        }
        let iterations: u32 = it
            .next()
            .and_then(|i| i.parse().ok())
            .ok_or(EstError::BadHash("iterations"))?;
        if iterations > MAX_ITERATIONS {
            return Err(EstError::BadHash("too many iterations"));
        }
        let iterations = NonZeroU32::new(iterations).ok_or(EstError::BadHash("iterations"))?;
        let salt = it
            .next()
            .and_then(|s| STANDARD.decode(s).ok())
            .filter(|s| s.len() >= 8)
            .ok_or(EstError::BadHash("salt"))?;
        let hash = it
            .next()
            .and_then(|s| STANDARD.decode(s).ok())
            .filter(|h| h.len() == HASH_LEN)
            .ok_or(EstError::BadHash("hash"))?;
        if it.next().is_some() {
            return Err(EstError::BadHash("trailing fields"));
        }
        Ok(Self {
            iterations,
            salt,
            hash,
            verified: Arc::new(VerifiedCache::new()?),
        })
    }

    /// Whether `password` matches, in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            password,
            &self.hash,
        )
        .is_ok()
    }
}

/// Hashes `password` with a fresh random 16-byte salt (used by `certgate up` and operators).
pub fn hash_password(password: &[u8], iterations: u32) -> Result<String, EstError> {
    let iters = NonZeroU32::new(iterations).ok_or(EstError::BadHash("iterations"))?;
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| EstError::KeyGen)?;
    let mut out = [0u8; HASH_LEN];
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iters, &salt, password, &mut out);
    Ok(format!(
        "pbkdf2-sha256${iterations}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(out)
    ))
}

/// One configured user: name and stored hash.
#[derive(Debug, Clone)]
pub struct BasicUser {
    /// The user name.
    pub username: String,
    /// The stored hash.
    pub hash: PasswordHash,
}

/// Checks `creds` against `user` without revealing (by timing) whether the name matched: the
/// derivation runs either way. Both name and password must match.
/// A pair that passed this check recently is answered from the hash's verified-pairs cache
/// (see `VerifiedCache`: a keyed tag of exactly that pair, successes only).
pub fn check_basic(user: &BasicUser, creds: &BasicCredentials) -> bool {
    let cache = &user.hash.verified;
    let tag = cache.tag(creds.username.as_bytes(), &creds.password);
    if cache.hit(&tag) {
        return true;
    }
    let password_ok = user.hash.verify(&creds.password);
    let name_ok = aws_lc_rs::constant_time::verify_slices_are_equal(
        user.username.as_bytes(),
        creds.username.as_bytes(),
    )
    .is_ok();
    let ok = password_ok & name_ok;
    if ok {
        cache.remember(tag);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password(b"s3cret", 1000).expect("hash");
        assert!(h.starts_with("pbkdf2-sha256$1000$"));
        let p = PasswordHash::parse(&h).expect("parse");
        assert!(p.verify(b"s3cret"));
        assert!(!p.verify(b"s3cret!"));
        assert!(!p.verify(b""));
        // two hashes of one password differ (salted)
        assert_ne!(h, hash_password(b"s3cret", 1000).expect("hash"));
        assert!(!format!("{p:?}").contains(&h[20..]));
    }

    #[test]
    fn bad_hashes_are_refused() {
        for bad in [
            "",
            "md5$1$AAAAAAAAAAA=$AAAA",
            "pbkdf2-sha256$0$AAAAAAAAAAA=$AAAA",
            "pbkdf2-sha256$99999999999$AAAAAAAAAAA=$AAAA",
            "pbkdf2-sha256$1000$AAAAAAAAAAA=$AAAA",
        ] {
            assert!(PasswordHash::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn basic_header_parsing() {
        let v = format!("Basic {}", STANDARD.encode("est-dev:pa:ss"));
        let c = parse_basic(v.as_bytes()).expect("parses");
        assert_eq!(c.username, "est-dev");
        assert_eq!(&c.password[..], b"pa:ss");
        assert!(!format!("{c:?}").contains("pa:ss"));
        assert!(parse_basic(b"Bearer abc").is_err());
        assert!(parse_basic(b"Basic !!!").is_err());
        assert!(parse_basic(format!("Basic {}", STANDARD.encode("nocolon")).as_bytes()).is_err());
        let user = BasicUser {
            username: "est-dev".into(),
            hash: PasswordHash::parse(&hash_password(b"pa:ss", 1000).expect("h")).expect("p"),
        };
        assert!(check_basic(&user, &c));
        let wrong_user =
            parse_basic(format!("Basic {}", STANDARD.encode("other:pa:ss")).as_bytes())
                .expect("parses");
        assert!(!check_basic(&user, &wrong_user));
    }

    #[test]
    fn verified_pairs_are_remembered_and_nothing_else() {
        let user = BasicUser {
            username: "est-dev".into(),
            hash: PasswordHash::parse(&hash_password(b"right", 1000).expect("h")).expect("p"),
        };
        let creds = |u: &str, p: &str| {
            parse_basic(format!("Basic {}", STANDARD.encode(format!("{u}:{p}"))).as_bytes())
                .expect("parses")
        };
        let cache = &user.hash.verified;
        // Failures are never remembered.
        assert!(!check_basic(&user, &creds("est-dev", "wrong")));
        assert!(!check_basic(&user, &creds("other", "right")));
        assert!(cache.seen.lock().expect("lock").is_empty());
        // A success is, as a keyed tag of the pair (not the password).
        assert!(check_basic(&user, &creds("est-dev", "right")));
        let tag = cache.tag(b"est-dev", b"right");
        assert!(cache.hit(&tag));
        assert_eq!(cache.seen.lock().expect("lock").len(), 1);
        assert!(check_basic(&user, &creds("est-dev", "right")));
        // The remembered pair does not let another user name or password through.
        assert!(!check_basic(&user, &creds("other", "right")));
        assert!(!check_basic(&user, &creds("est-dev", "right ")));
        // Another stored hash (a config change) starts empty.
        let other = PasswordHash::parse(&hash_password(b"right", 1000).expect("h")).expect("p");
        assert!(
            !other
                .verified
                .hit(&other.verified.tag(b"est-dev", b"right"))
        );
        // Bounded.
        for i in 0..(VERIFIED_MAX + 10) {
            cache.remember(cache.tag(b"u", &i.to_be_bytes()));
        }
        assert!(cache.seen.lock().expect("lock").len() <= VERIFIED_MAX);
    }
}
