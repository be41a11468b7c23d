//! HTTP Basic for EST labels (RFC 7030 §3.2.3). The server stores only
//! `pbkdf2-sha256$ITERATIONS$SALT_B64$HASH_B64` (PBKDF2-HMAC-SHA256, aws-lc-rs); a presented
//! password is held in `Zeroizing` and checked with aws-lc-rs's constant-time `pbkdf2::verify`.
//! An unknown user costs the same derivation as a known one (against a fixed dummy hash), so
//! timing does not tell which user names exist.

use std::num::NonZeroU32;

use aws_lc_rs::pbkdf2;
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
pub fn check_basic(user: &BasicUser, creds: &BasicCredentials) -> bool {
    let password_ok = user.hash.verify(&creds.password);
    let name_ok = aws_lc_rs::constant_time::verify_slices_are_equal(
        user.username.as_bytes(),
        creds.username.as_bytes(),
    )
    .is_ok();
    password_ok & name_ok
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
}
