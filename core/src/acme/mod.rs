//! The ACME state service (`certgate.acme.v1.Acme`, proto/acme.proto): accounts, orders,
//! authorizations and challenges live here in the core's store; edges stay stateless.
//!
//! The protocol decisions come from the sans-I/O crate `certgate-acme` (identifier rules,
//! challenge types per identifier, order status from authorizations, the CSR-vs-order check, EAB
//! verification, JWK thumbprints and key authorizations); this module adds the durable state
//! ([`crate::store::acme`]), the validators that really contact the client's server
//! ([`validate`]), and issuance through the one issuance path ([`crate::issue`]).
//!
//! Errors carry the ACME problem type suffix as their `rule` (proto header), so the edge renders
//! `urn:ietf:params:acme:error:{rule}`.

pub mod admin;
pub mod caa;
pub mod service;
pub mod validate;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use crate::error::CoreError;

pub use service::AcmeService;

/// Pebble's convention for local development: every name is validated at 127.0.0.1 with
/// http-01 on this port...
pub const DEV_HTTP_PORT: u16 = 5002;
/// ...and tls-alpn-01 on this one.
pub const DEV_TLS_ALPN_PORT: u16 = 5001;

/// `[acme]` in core.toml (docs/acme.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// Port http-01 connects to (RFC 8555 §8.3: 80).
    pub http_port: u16,
    /// Port tls-alpn-01 connects to (RFC 8737: 443).
    pub tls_alpn_port: u16,
    /// DNS server (UDP) dns-01 asks for TXT records; None = the first `nameserver` of
    /// /etc/resolv.conf.
    pub dns_resolver: Option<SocketAddr>,
    /// Static name → address(es) map consulted before DNS for http-01 and tls-alpn-01 (and
    /// their redirect hops): `name = "192.0.2.1"` or `name = ["192.0.2.1", "2001:db8::1"]`.
    pub hosts: BTreeMap<String, HostAddrs>,
    /// Deadline of one validation attempt, ms.
    pub validation_timeout_ms: u64,
    /// Validations running at once; beyond, RespondChallenge is refused with RATE_LIMITED (I-8).
    pub max_concurrent_validations: usize,
    /// Cap on RespondChallenge's `wait_ms`.
    pub max_wait_ms: u32,
    /// Lifetime of a pending authorization, s.
    pub authz_pending_secs: i64,
    /// How long a valid authorization is reused, s.
    pub authz_valid_secs: i64,
    /// Lifetime of an order until finalized, s.
    pub order_lifetime_secs: i64,
    /// Dev only (Pebble's convention): validate every name at 127.0.0.1, http-01 on 5002 and
    /// tls-alpn-01 on 5001. Refused in production mode (I-5). It also allows the loopback
    /// target it names, whatever `blocked_ranges` says.
    pub dev_validate_on_localhost: bool,
    /// SSRF protection: address ranges validation never connects to (http-01 and each of its
    /// redirect hops, tls-alpn-01), checked on the resolved address before connecting. None =
    /// [`DEFAULT_BLOCKED_RANGES`]; an empty list blocks nothing.
    pub blocked_ranges: Option<Vec<IpRange>>,
    /// Exceptions to `blocked_ranges` (e.g. an internal CA validating hosts on 10.0.0.0/8).
    pub allowed_ranges: Vec<IpRange>,
    /// CAA is checked again at finalize for an authorization whose validation is at least this
    /// old, s (default 8 h: CA/B Forum BR 3.2.2.8 lets a CAA check be relied on for 8 hours,
    /// while valid authorizations are reused for `authz_valid_secs`). 0 = always re-check.
    pub caa_recheck_secs: i64,
    /// RFC 8657 `accounturi`: the base URLs the edges publish under (their `[acme] base_url`,
    /// e.g. `https://acme.example.org`). Empty = any http(s) URL whose path is this account's
    /// (`/acme/acct/{id}` or `/t/{tenant}/acme/acct/{id}`); otherwise a base followed by that path.
    pub account_uri_bases: Vec<String>,
}

/// The address(es) of one `[acme.hosts]` name: one address or a list (at most
/// [`MAX_HOST_ADDRS`]), like a DNS answer with several A/AAAA records.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "HostAddrsRepr")]
pub struct HostAddrs(Vec<IpAddr>);

/// Most addresses one `[acme.hosts]` name may list.
pub const MAX_HOST_ADDRS: usize = 16;

#[derive(Deserialize)]
#[serde(untagged)]
enum HostAddrsRepr {
    One(IpAddr),
    Many(Vec<IpAddr>),
}

impl HostAddrs {
    /// The addresses, in the configured order.
    pub fn addrs(&self) -> &[IpAddr] {
        &self.0
    }
}

impl TryFrom<HostAddrsRepr> for HostAddrs {
    type Error = String;

    fn try_from(r: HostAddrsRepr) -> Result<Self, Self::Error> {
        let list = match r {
            HostAddrsRepr::One(a) => vec![a],
            HostAddrsRepr::Many(l) => l,
        };
        Self::try_from(list)
    }
}

impl TryFrom<Vec<IpAddr>> for HostAddrs {
    type Error = String;

    fn try_from(list: Vec<IpAddr>) -> Result<Self, Self::Error> {
        if list.is_empty() || list.len() > MAX_HOST_ADDRS {
            return Err(format!(
                "[acme.hosts]: between 1 and {MAX_HOST_ADDRS} addresses per name"
            ));
        }
        Ok(Self(list))
    }
}

impl From<IpAddr> for HostAddrs {
    fn from(a: IpAddr) -> Self {
        Self(vec![a])
    }
}

/// `"192.0.2.1"` or a comma-separated list `"192.0.2.1,2001:db8::1"`.
impl std::str::FromStr for HostAddrs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let list = s
            .split(',')
            .map(|a| {
                a.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| format!("{a:?} is not an IP address"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::try_from(list)
    }
}

/// What validation refuses to connect to unless configured otherwise: loopback, RFC 1918,
/// link-local, CGNAT (RFC 6598), unique-local (RFC 4193), multicast, unspecified / "this
/// network", reserved (240/4, incl. broadcast) and the documentation ranges (RFC 5737, RFC 3849,
/// RFC 9637). IPv4-mapped IPv6 addresses are checked as the IPv4 address they carry.
pub const DEFAULT_BLOCKED_RANGES: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "2001:db8::/32",
    "3fff::/20",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// An address range in CIDR notation (`10.0.0.0/8`, `fc00::/7`; a bare address is a /32 or
/// /128), as `[acme] blocked_ranges` / `allowed_ranges` name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IpRange {
    net: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` lies in the range (an IPv4-mapped IPv6 address as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not an address range (CIDR, e.g. 10.0.0.0/8 or fc00::/7)");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        // An IPv4-mapped range (::ffff:a.b.c.d/96 or longer) is kept as the IPv4 range it maps,
        // since addresses are compared in canonical form; a shorter prefix stays IPv6.
        if net.is_ipv6() && net.to_canonical().is_ipv4() && prefix >= 96 {
            return Ok(Self {
                net: net.to_canonical(),
                prefix: prefix - 96,
            });
        }
        Ok(Self { net, prefix })
    }
}

impl TryFrom<String> for IpRange {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            http_port: 80,
            tls_alpn_port: 443,
            dns_resolver: None,
            hosts: BTreeMap::new(),
            validation_timeout_ms: 10_000,
            max_concurrent_validations: 64,
            max_wait_ms: 10_000,
            authz_pending_secs: 7 * 86_400,
            authz_valid_secs: 30 * 86_400,
            order_lifetime_secs: 7 * 86_400,
            dev_validate_on_localhost: false,
            blocked_ranges: None,
            allowed_ranges: Vec::new(),
            caa_recheck_secs: 8 * 3600,
            account_uri_bases: Vec::new(),
        }
    }
}

impl AcmeConfig {
    /// Checks the settings against the mode: the dev validation shortcut must never run in
    /// production (I-5).
    pub fn check(&self, mode: crate::config::Mode) -> Result<(), String> {
        if self.dev_validate_on_localhost && mode == crate::config::Mode::Production {
            return Err(
                "[acme] dev_validate_on_localhost is a dev-only setting; refused in production mode"
                    .into(),
            );
        }
        if self.max_concurrent_validations == 0 {
            return Err("[acme] max_concurrent_validations must be at least 1".into());
        }
        if self.authz_pending_secs <= 0
            || self.authz_valid_secs <= 0
            || self.order_lifetime_secs <= 0
        {
            return Err("[acme] lifetimes must be positive".into());
        }
        if self.caa_recheck_secs < 0 {
            return Err("[acme] caa_recheck_secs must not be negative".into());
        }
        Ok(())
    }
}

/// Maps a protocol-crate error to a core error whose rule is the ACME problem type suffix.
pub fn acme_error(e: &certgate_acme::Error) -> CoreError {
    let rule = e.wire().0.name();
    let message = e.to_string();
    match rule {
        "accountDoesNotExist" => CoreError::not_found(rule, message),
        "serverInternal" => CoreError::Internal(message),
        "unauthorized"
        | "rejectedIdentifier"
        | "externalAccountRequired"
        | "userActionRequired"
        | "caa"
        | "orderNotReady"
        | "alreadyRevoked"
        | "badRevocationReason" => CoreError::policy(rule, message),
        _ => CoreError::malformed(rule, message),
    }
}

/// How far a newOrder `notBefore` may lie in the past (client clock skew), seconds.
pub const MAX_NOT_BEFORE_SKEW_SECS: i64 = 300;

/// newOrder `notBefore` / `notAfter` (RFC 8555 §7.4; Unix seconds, 0 = absent) against the
/// order's profile, checked when the order is created so a refusal is an immediate `malformed`
/// problem with a clear detail rather than an invalid order at finalize. Accepted: notBefore no
/// more than [`MAX_NOT_BEFORE_SKEW_SECS`] in the past, notAfter in the future and after
/// notBefore, and the window inside what the profile allows ([`crate::issue::requested_window`],
/// which Core.Issue applies again at finalize: the profile stays the authority).
pub fn check_requested_window(
    profile: &crate::store::ProfileRec,
    not_before: i64,
    not_after: i64,
    now: i64,
) -> Result<(), CoreError> {
    if not_before == 0 && not_after == 0 {
        return Ok(());
    }
    let bad = |m: String| CoreError::malformed("malformed", m);
    if not_before < 0 || not_after < 0 {
        return Err(bad("notBefore and notAfter must be after 1970".into()));
    }
    if not_before != 0 && not_before < now - MAX_NOT_BEFORE_SKEW_SECS {
        return Err(bad(format!(
            "notBefore lies {} s in the past; at most {MAX_NOT_BEFORE_SKEW_SECS} s of clock skew is accepted",
            now - not_before
        )));
    }
    if not_after != 0 && not_after <= now {
        return Err(bad("notAfter is in the past".into()));
    }
    if not_before != 0 && not_after != 0 && not_after <= not_before {
        return Err(bad("notAfter must be after notBefore".into()));
    }
    let p = crate::profile::Profile::from_json(&profile.body_json)?;
    let req = certgate_proto::core::IssueRequest {
        not_before_unix: not_before,
        not_after_unix: not_after,
        ..Default::default()
    };
    crate::issue::requested_window(&req, &p, now).map_err(|e| {
        let why = match e {
            CoreError::Policy { message, .. } | CoreError::Malformed { message, .. } => message,
            other => other.to_string(),
        };
        bad(format!(
            "notBefore/notAfter outside what profile {:?} allows (at most {} s of validity): {why}",
            profile.name, p.max_validity_seconds
        ))
    })?;
    Ok(())
}

/// A random id or token: `bytes` CSPRNG bytes, base64url.
pub fn random_id(bytes: usize) -> Result<String, CoreError> {
    let mut b = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| CoreError::Internal("CSPRNG".into()))?;
    Ok(certgate_acme::base64url(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    /// I-5: the Pebble-style localhost shortcut cannot be switched on in production.
    #[test]
    fn production_refuses_dev_validation() {
        let c = AcmeConfig {
            dev_validate_on_localhost: true,
            ..AcmeConfig::default()
        };
        assert!(c.check(Mode::Dev).is_ok());
        let err = c.check(Mode::Production).expect_err("must be refused");
        assert!(err.contains("dev_validate_on_localhost"), "{err}");
        assert!(AcmeConfig::default().check(Mode::Production).is_ok());
    }

    /// The same refusal through the core's config loader: the core does not start.
    #[test]
    fn core_config_with_dev_validation_in_production_does_not_load() {
        let text = |mode: &str| {
            format!(
                "mode = \"{mode}\"\nsocket = \"core.sock\"\nstore = \"core.db\"\n[signer]\nsocket = \"s.sock\"\n[acme]\ndev_validate_on_localhost = true\nhttp_port = 8080\n"
            )
        };
        let dev = crate::config::Config::parse(&text("dev"), std::path::Path::new("/"))
            .expect("dev loads");
        assert!(dev.acme.dev_validate_on_localhost);
        assert_eq!(dev.acme.http_port, 8080);
        let err = crate::config::Config::parse(&text("production"), std::path::Path::new("/"))
            .expect_err("production refuses");
        assert!(err.0.contains("dev_validate_on_localhost"), "{err}");
    }

    /// newOrder notBefore/notAfter against the built-in profile (90 days max, 90 days default):
    /// a window inside it is accepted; outside it, in the past beyond the skew, or inverted is
    /// `malformed` with a detail that says why.
    #[test]
    fn requested_windows_are_checked_against_the_profile() {
        let p = crate::profile::Profile::builtin_tls_server();
        let rec = crate::store::ProfileRec {
            tenant: "t".into(),
            name: "tls-server".into(),
            version: 1,
            body_json: p.to_json(),
            created_unix: 0,
        };
        let now = 1_800_000_000;
        let day = 86_400;
        let max = i64::try_from(p.max_validity_seconds).expect("fits");
        let ok = |nb: i64, na: i64| check_requested_window(&rec, nb, na, now);
        ok(0, 0).expect("nothing requested");
        ok(now, now + 7 * day).expect("a week from now");
        ok(now + day, now + 8 * day).expect("starting tomorrow");
        ok(now - 60, now + 7 * day).expect("a minute of skew");
        ok(0, now + max).expect("notAfter at the maximum");
        ok(now, 0).expect("notBefore alone: default validity");
        ok(now, now + max).expect("exactly the maximum");
        let detail = |nb: i64, na: i64| match check_requested_window(&rec, nb, na, now) {
            Err(CoreError::Malformed { rule, message }) => {
                assert_eq!(rule, "malformed");
                message
            }
            other => panic!("({nb}, {na}) must be malformed, got {other:?}"),
        };
        assert!(detail(now - 3600, now + day).contains("in the past"));
        assert!(detail(0, now - 1).contains("notAfter is in the past"));
        assert!(detail(now + 2 * day, now + day).contains("after notBefore"));
        assert!(detail(now, now + max + 1).contains("profile \"tls-server\""));
        assert!(detail(0, now + max + 10).contains("exceeds the profile maximum"));
        assert!(detail(now + max + day, 0).contains("further ahead"));
        assert!(detail(-5, now + day).contains("1970"));
    }

    #[test]
    fn protocol_errors_keep_their_problem_type_as_rule() {
        let e = acme_error(&certgate_acme::Error::BadCsr("x".into()));
        assert!(matches!(e, CoreError::Malformed { rule: "badCSR", .. }));
        let e = acme_error(&certgate_acme::Error::OrderNotReady("pending"));
        assert!(matches!(
            e,
            CoreError::Policy {
                rule: "orderNotReady",
                ..
            }
        ));
    }
}
