//! The core's ACME objects (protobuf) → the protocol crate's state types, so the JSON field
//! names and rules live in one place (`certgate_acme::resource`), and every failure → an ACME
//! problem document (`certgate_acme::problem`).

use std::time::Duration;

use certgate_acme::ari::CertId;
use certgate_acme::directory::AcmeUrls;
use certgate_acme::payload::{Identifier, IdentifierType};
use certgate_acme::problem::{Problem, ProblemType, Subproblem};
use certgate_acme::resource::{self, AccountStatus, OrderView};
use certgate_acme::state::{
    Authorization, AuthzStatus, Challenge, ChallengeStatus, ChallengeType, Order, OrderStatus,
};
use certgate_proto::acme as pb;
use certgate_proto::{ErrorKind, RpcError};
use time::OffsetDateTime;

use crate::error::EdgeError;
use crate::ratelimit::Rule;

/// Why an ACME request failed, before it is rendered as a problem document.
#[derive(Debug, thiserror::Error)]
pub enum Fail {
    /// The protocol crate refused the request.
    #[error(transparent)]
    Acme(#[from] certgate_acme::Error),
    /// The core refused or failed.
    #[error(transparent)]
    Core(#[from] RpcError),
    /// The shared plumbing refused.
    #[error(transparent)]
    Edge(#[from] EdgeError),
    /// A rate limit.
    #[error("rate limit {} exceeded", .0.label())]
    RateLimited(Rule, Duration),
    /// keyChange: the new key belongs to this account URL (409 + Location, RFC 8555 §7.3.5).
    #[error("the new key is already in use by another account")]
    KeyInUse(String),
}

fn problem_type(name: &str) -> Option<ProblemType> {
    ProblemType::ALL.into_iter().find(|t| t.name() == name)
}

/// The HTTP status a stored problem of this type is shown with.
fn status_of(t: ProblemType) -> u16 {
    match t {
        ProblemType::Unauthorized
        | ProblemType::OrderNotReady
        | ProblemType::UserActionRequired => 403,
        ProblemType::RateLimited => 429,
        ProblemType::ServerInternal => 500,
        _ => 400,
    }
}

fn problem(t: ProblemType, status: u16, detail: impl Into<String>) -> Problem {
    Problem {
        problem_type: t,
        detail: detail.into(),
        status,
        subproblems: Vec::new(),
        algorithms: None,
    }
}

/// A core error as an ACME problem: the `rule` names the ACME type when it is one (acme.proto
/// header); otherwise the kind decides. Internal detail is never echoed.
pub fn core_problem(e: &RpcError) -> (Problem, Option<Duration>) {
    use ProblemType as P;
    let status = match e.kind {
        ErrorKind::Malformed => 400,
        ErrorKind::Unauthorized | ErrorKind::PolicyRefused => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::AlreadyExists => 409,
        ErrorKind::RateLimited => 429,
        ErrorKind::Unavailable => 503,
        ErrorKind::Unspecified => 500,
    };
    let retry = match e.kind {
        ErrorKind::RateLimited | ErrorKind::Unavailable => {
            Some(e.retry_after.unwrap_or(Duration::from_secs(1)))
        }
        _ => None,
    };
    if e.kind == ErrorKind::Unspecified {
        return (problem(P::ServerInternal, 500, "internal error"), None);
    }
    if e.kind == ErrorKind::Unavailable {
        return (
            problem(
                P::ServerInternal,
                503,
                "temporarily unavailable, retry later",
            ),
            retry,
        );
    }
    let t = match problem_type(&e.rule) {
        Some(t) => t,
        None => match e.kind {
            ErrorKind::Unauthorized | ErrorKind::PolicyRefused => P::Unauthorized,
            ErrorKind::RateLimited => P::RateLimited,
            _ => P::Malformed,
        },
    };
    let status = match t {
        // RFC 8555 §7.3.1 / Boulder: an unknown account is a 400, not a 404.
        P::AccountDoesNotExist => 400,
        _ => status,
    };
    (problem(t, status, e.message.clone()), retry)
}

/// Any failure as (problem, Retry-After, Location).
pub fn fail_problem(f: &Fail) -> (Problem, Option<Duration>, Option<String>) {
    use ProblemType as P;
    match f {
        Fail::Acme(e) => {
            let retry = matches!(e, certgate_acme::Error::NonceStoreUnavailable)
                .then_some(Duration::from_secs(1));
            (e.to_problem(), retry, None)
        }
        Fail::Core(e) => {
            let (p, r) = core_problem(e);
            (p, r, None)
        }
        Fail::RateLimited(rule, after) => (
            problem(
                P::RateLimited,
                429,
                format!("rate limit {} exceeded", rule.label()),
            ),
            Some(*after),
            None,
        ),
        Fail::KeyInUse(url) => (
            problem(P::Malformed, 409, f.to_string()),
            None,
            Some(url.clone()),
        ),
        Fail::Edge(e) => match e {
            EdgeError::NotFound => (problem(P::Malformed, 404, "no such resource"), None, None),
            EdgeError::MethodNotAllowed => {
                (problem(P::Malformed, 405, "method not allowed"), None, None)
            }
            EdgeError::Malformed(m) => (problem(P::Malformed, 400, m.clone()), None, None),
            EdgeError::BodyTooLarge => (
                problem(P::Malformed, 413, "request body too large"),
                None,
                None,
            ),
            EdgeError::Overloaded | EdgeError::Timeout => (
                problem(P::ServerInternal, 503, "overloaded, retry later"),
                Some(Duration::from_secs(1)),
                None,
            ),
            EdgeError::Core(e) => {
                let (p, r) = core_problem(e);
                (p, r, None)
            }
        },
    }
}

fn internal(what: &str) -> Fail {
    tracing::warn!(what, "the core sent an ACME object the edge cannot render");
    Fail::Acme(certgate_acme::Error::ServerInternal)
}

fn ts(unix: i64) -> Result<OffsetDateTime, Fail> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|_| internal("timestamp"))
}

fn opt_ts(unix: i64) -> Result<Option<OffsetDateTime>, Fail> {
    if unix == 0 {
        Ok(None)
    } else {
        ts(unix).map(Some)
    }
}

/// A protocol identifier → the core's.
pub fn ident_to_pb(i: &Identifier) -> pb::Identifier {
    pb::Identifier {
        r#type: match i.kind {
            IdentifierType::Dns => "dns".into(),
            IdentifierType::Ip => "ip".into(),
        },
        value: i.value.clone(),
    }
}

fn ident(i: Option<&pb::Identifier>) -> Result<Identifier, Fail> {
    let i = i.ok_or_else(|| internal("identifier missing"))?;
    let kind = match i.r#type.as_str() {
        "dns" => IdentifierType::Dns,
        "ip" => IdentifierType::Ip,
        _ => return Err(internal("identifier type")),
    };
    Ok(Identifier {
        kind,
        value: i.value.clone(),
    })
}

/// A stored problem (order or challenge `error`).
pub fn stored_problem(p: &pb::Problem) -> Problem {
    let t = problem_type(&p.r#type).unwrap_or(ProblemType::ServerInternal);
    Problem {
        problem_type: t,
        detail: p.detail.clone(),
        status: status_of(t),
        subproblems: p
            .subproblems
            .iter()
            .filter_map(|s| {
                Some(Subproblem {
                    problem_type: problem_type(&s.r#type).unwrap_or(ProblemType::ServerInternal),
                    detail: s.detail.clone(),
                    identifier: ident(s.identifier.as_ref()).ok()?,
                })
            })
            .collect(),
        algorithms: None,
    }
}

fn order_status(s: &str) -> Result<OrderStatus, Fail> {
    Ok(match s {
        "pending" => OrderStatus::Pending,
        "ready" => OrderStatus::Ready,
        "processing" => OrderStatus::Processing,
        "valid" => OrderStatus::Valid,
        "invalid" => OrderStatus::Invalid,
        _ => return Err(internal("order status")),
    })
}

fn authz_status(s: &str) -> Result<AuthzStatus, Fail> {
    Ok(match s {
        "pending" => AuthzStatus::Pending,
        "valid" => AuthzStatus::Valid,
        "invalid" => AuthzStatus::Invalid,
        "deactivated" => AuthzStatus::Deactivated,
        "expired" => AuthzStatus::Expired,
        "revoked" => AuthzStatus::Revoked,
        _ => return Err(internal("authorization status")),
    })
}

fn challenge(c: &pb::Challenge) -> Result<Challenge, Fail> {
    let kind = match c.r#type.as_str() {
        "http-01" => ChallengeType::Http01,
        "dns-01" => ChallengeType::Dns01,
        "tls-alpn-01" => ChallengeType::TlsAlpn01,
        _ => return Err(internal("challenge type")),
    };
    let status = match c.status.as_str() {
        "pending" => ChallengeStatus::Pending,
        "processing" => ChallengeStatus::Processing,
        "valid" => ChallengeStatus::Valid,
        "invalid" => ChallengeStatus::Invalid,
        _ => return Err(internal("challenge status")),
    };
    Ok(Challenge {
        kind,
        token: c.token.clone(),
        status,
        validated: opt_ts(c.validated_unix)?,
        error: c.error.as_ref().map(stored_problem),
    })
}

/// The account status.
pub fn account_status(s: &str) -> AccountStatus {
    match s {
        "valid" => AccountStatus::Valid,
        "deactivated" => AccountStatus::Deactivated,
        _ => AccountStatus::Revoked,
    }
}

/// The URL of an account's orders list.
pub fn orders_url(urls: &AcmeUrls, account_id: &str) -> String {
    format!("{}/orders", urls.account(account_id))
}

/// The account object.
pub fn account_body(urls: &AcmeUrls, a: &pb::Account) -> Vec<u8> {
    resource::account_json(
        account_status(&a.status),
        &a.contacts,
        &orders_url(urls, &a.account_id),
    )
}

/// A challenge's URL id: `{authz}/{challenge}`, so a POST-as-GET can find its authorization.
pub fn challenge_url(urls: &AcmeUrls, authz_id: &str, challenge_id: &str) -> String {
    urls.challenge(&format!("{authz_id}/{challenge_id}"))
}

/// The order object.
pub fn order_body(urls: &AcmeUrls, o: &pb::Order) -> Result<Vec<u8>, Fail> {
    let state = Order {
        identifiers: o
            .identifiers
            .iter()
            .map(|i| ident(Some(i)))
            .collect::<Result<_, _>>()?,
        status: order_status(&o.status)?,
        expires: ts(o.expires_unix)?,
        error: o.error.as_ref().map(stored_problem),
    };
    let authzs: Vec<String> = o
        .authorization_ids
        .iter()
        .map(|a| urls.authorization(a))
        .collect();
    let finalize = urls.finalize(&o.order_id);
    let cert =
        (!o.certificate_serial_hex.is_empty()).then(|| urls.certificate(&o.certificate_serial_hex));
    let replaces = if o.replaces.is_empty() {
        None
    } else {
        CertId::parse(&o.replaces).ok()
    };
    let view = OrderView {
        order: &state,
        authorizations: &authzs,
        finalize: &finalize,
        certificate: cert.as_deref(),
        not_before: opt_ts(o.not_before_unix)?,
        not_after: opt_ts(o.not_after_unix)?,
        profile: (!o.profile.is_empty()).then_some(o.profile.as_str()),
        replaces: replaces.as_ref(),
    };
    Ok(resource::order_json(&view)?)
}

/// The authorization object.
pub fn authz_body(urls: &AcmeUrls, a: &pb::Authorization) -> Result<Vec<u8>, Fail> {
    let mut id = ident(a.identifier.as_ref())?;
    if a.wildcard && !id.value.starts_with("*.") {
        id.value = format!("*.{}", id.value);
    }
    let state = Authorization {
        identifier: id,
        status: authz_status(&a.status)?,
        expires: ts(a.expires_unix)?,
        challenges: a
            .challenges
            .iter()
            .map(challenge)
            .collect::<Result<_, _>>()?,
    };
    let ch_urls: Vec<String> = a
        .challenges
        .iter()
        .map(|c| challenge_url(urls, &a.authz_id, &c.challenge_id))
        .collect();
    Ok(resource::authorization_json(&state, &ch_urls)?)
}

/// The challenge object.
pub fn challenge_body(urls: &AcmeUrls, authz_id: &str, c: &pb::Challenge) -> Result<Vec<u8>, Fail> {
    let v = resource::challenge_value(
        &challenge(c)?,
        &challenge_url(urls, authz_id, &c.challenge_id),
    )?;
    serde_json::to_vec(&v).map_err(|_| internal("challenge json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_rules_become_acme_types() {
        let (p, r) = core_problem(&RpcError::malformed("badCSR", "extra name"));
        assert_eq!(
            (p.problem_type, p.status, r),
            (ProblemType::BadCsr, 400, None)
        );
        let (p, _) = core_problem(&RpcError::policy("orderNotReady", "pending"));
        assert_eq!(
            (p.problem_type, p.status),
            (ProblemType::OrderNotReady, 403)
        );
        let (p, _) = core_problem(&RpcError::not_found("accountDoesNotExist", "x"));
        assert_eq!(
            (p.problem_type, p.status),
            (ProblemType::AccountDoesNotExist, 400)
        );
        let (p, _) = core_problem(&RpcError::not_found("acme.order", "x"));
        assert_eq!((p.problem_type, p.status), (ProblemType::Malformed, 404));
        let (p, r) = core_problem(&RpcError::unavailable("down", Duration::from_secs(2)));
        assert_eq!(
            (p.problem_type, p.status),
            (ProblemType::ServerInternal, 503)
        );
        assert_eq!(r, Some(Duration::from_secs(2)));
        let (p, _) = core_problem(&RpcError::new(ErrorKind::Unspecified, "x", "db secret"));
        assert!(!p.detail.contains("secret"));
        let (p, r) = core_problem(&RpcError::new(ErrorKind::RateLimited, "x", "slow down"));
        assert_eq!((p.problem_type, p.status), (ProblemType::RateLimited, 429));
        assert!(r.is_some());
    }

    #[test]
    fn wildcard_authorizations_render_without_the_prefix() {
        let urls = AcmeUrls::new("https://h", None).expect("urls");
        let a = pb::Authorization {
            authz_id: "az".into(),
            identifier: Some(pb::Identifier {
                r#type: "dns".into(),
                value: "example.org".into(),
            }),
            status: "pending".into(),
            expires_unix: 1_700_000_000,
            challenges: vec![pb::Challenge {
                challenge_id: "c1".into(),
                r#type: "dns-01".into(),
                status: "pending".into(),
                token: "tok".into(),
                ..Default::default()
            }],
            wildcard: true,
            ..Default::default()
        };
        let v: serde_json::Value =
            serde_json::from_slice(&authz_body(&urls, &a).expect("renders")).expect("json");
        assert_eq!(v["identifier"]["value"], "example.org");
        assert_eq!(v["wildcard"], true);
        assert_eq!(v["challenges"][0]["url"], "https://h/acme/chall/az/c1");
    }

    #[test]
    fn order_subproblems_are_rendered() {
        let urls = AcmeUrls::new("https://h", None).expect("urls");
        let o = pb::Order {
            order_id: "o1".into(),
            status: "invalid".into(),
            expires_unix: 1_700_000_000,
            identifiers: vec![pb::Identifier {
                r#type: "dns".into(),
                value: "a.example".into(),
            }],
            authorization_ids: vec!["az".into()],
            error: Some(pb::Problem {
                r#type: "malformed".into(),
                detail: "some identifiers failed".into(),
                identifier: None,
                subproblems: vec![pb::Problem {
                    r#type: "connection".into(),
                    detail: "refused".into(),
                    identifier: Some(pb::Identifier {
                        r#type: "dns".into(),
                        value: "a.example".into(),
                    }),
                    subproblems: vec![],
                }],
            }),
            ..Default::default()
        };
        let v: serde_json::Value =
            serde_json::from_slice(&order_body(&urls, &o).expect("renders")).expect("json");
        assert_eq!(v["status"], "invalid");
        assert_eq!(v["finalize"], "https://h/acme/finalize/o1");
        assert_eq!(
            v["error"]["subproblems"][0]["type"],
            "urn:ietf:params:acme:error:connection"
        );
        assert_eq!(
            v["error"]["subproblems"][0]["identifier"]["value"],
            "a.example"
        );
    }
}
