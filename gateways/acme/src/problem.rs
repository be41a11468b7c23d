//! Problem documents (RFC 8555 §6.7, RFC 7807) and the ONE table from [`Error`] to the wire.
//!
//! Every error that reaches a client goes through [`Error::wire`], so a status code or problem
//! type is decided in exactly one place and tested per row.

use serde::Serialize;

use crate::error::{Error, ValidationFailure};
use crate::jws::SUPPORTED_ALGORITHMS;
use crate::payload::Identifier;

/// The media type of a problem document.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// The media type every ACME POST must carry (RFC 8555 §6.2).
pub const JOSE_CONTENT_TYPE: &str = "application/jose+json";

/// ACME error types (RFC 8555 §6.7 and the registry it creates), each `urn:ietf:params:acme:error:*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemType {
    /// `badNonce`
    BadNonce,
    /// `malformed`
    Malformed,
    /// `unauthorized`
    Unauthorized,
    /// `accountDoesNotExist`
    AccountDoesNotExist,
    /// `badSignatureAlgorithm`
    BadSignatureAlgorithm,
    /// `badPublicKey`
    BadPublicKey,
    /// `rateLimited`
    RateLimited,
    /// `serverInternal`
    ServerInternal,
    /// `rejectedIdentifier`
    RejectedIdentifier,
    /// `unsupportedIdentifier`
    UnsupportedIdentifier,
    /// `badCSR`
    BadCsr,
    /// `orderNotReady`
    OrderNotReady,
    /// `alreadyRevoked`
    AlreadyRevoked,
    /// `badRevocationReason`
    BadRevocationReason,
    /// `externalAccountRequired`
    ExternalAccountRequired,
    /// `userActionRequired`
    UserActionRequired,
    /// `unsupportedContact`
    UnsupportedContact,
    /// `invalidContact`
    InvalidContact,
    /// `caa`
    Caa,
    /// `dns`
    Dns,
    /// `connection`
    Connection,
    /// `incorrectResponse`
    IncorrectResponse,
    /// `tls`
    Tls,
}

impl ProblemType {
    /// Every type, for exhaustive tests.
    pub const ALL: [ProblemType; 23] = [
        ProblemType::BadNonce,
        ProblemType::Malformed,
        ProblemType::Unauthorized,
        ProblemType::AccountDoesNotExist,
        ProblemType::BadSignatureAlgorithm,
        ProblemType::BadPublicKey,
        ProblemType::RateLimited,
        ProblemType::ServerInternal,
        ProblemType::RejectedIdentifier,
        ProblemType::UnsupportedIdentifier,
        ProblemType::BadCsr,
        ProblemType::OrderNotReady,
        ProblemType::AlreadyRevoked,
        ProblemType::BadRevocationReason,
        ProblemType::ExternalAccountRequired,
        ProblemType::UserActionRequired,
        ProblemType::UnsupportedContact,
        ProblemType::InvalidContact,
        ProblemType::Caa,
        ProblemType::Dns,
        ProblemType::Connection,
        ProblemType::IncorrectResponse,
        ProblemType::Tls,
    ];

    /// The short name after `urn:ietf:params:acme:error:`.
    pub fn name(self) -> &'static str {
        match self {
            ProblemType::BadNonce => "badNonce",
            ProblemType::Malformed => "malformed",
            ProblemType::Unauthorized => "unauthorized",
            ProblemType::AccountDoesNotExist => "accountDoesNotExist",
            ProblemType::BadSignatureAlgorithm => "badSignatureAlgorithm",
            ProblemType::BadPublicKey => "badPublicKey",
            ProblemType::RateLimited => "rateLimited",
            ProblemType::ServerInternal => "serverInternal",
            ProblemType::RejectedIdentifier => "rejectedIdentifier",
            ProblemType::UnsupportedIdentifier => "unsupportedIdentifier",
            ProblemType::BadCsr => "badCSR",
            ProblemType::OrderNotReady => "orderNotReady",
            ProblemType::AlreadyRevoked => "alreadyRevoked",
            ProblemType::BadRevocationReason => "badRevocationReason",
            ProblemType::ExternalAccountRequired => "externalAccountRequired",
            ProblemType::UserActionRequired => "userActionRequired",
            ProblemType::UnsupportedContact => "unsupportedContact",
            ProblemType::InvalidContact => "invalidContact",
            ProblemType::Caa => "caa",
            ProblemType::Dns => "dns",
            ProblemType::Connection => "connection",
            ProblemType::IncorrectResponse => "incorrectResponse",
            ProblemType::Tls => "tls",
        }
    }

    /// The full URN, as it appears in the `type` member.
    pub fn urn(self) -> String {
        format!("urn:ietf:params:acme:error:{}", self.name())
    }
}

impl From<ValidationFailure> for ProblemType {
    fn from(v: ValidationFailure) -> Self {
        match v {
            ValidationFailure::Caa => ProblemType::Caa,
            ValidationFailure::Dns => ProblemType::Dns,
            ValidationFailure::Connection => ProblemType::Connection,
            ValidationFailure::IncorrectResponse => ProblemType::IncorrectResponse,
            ValidationFailure::Tls => ProblemType::Tls,
        }
    }
}

impl Error {
    /// THE table: problem type and HTTP status for every error. Statuses follow RFC 8555 where it
    /// names one (415 for the content type, 403 for `orderNotReady` and `unauthorized` — not 401, which
    /// would require a `WWW-Authenticate` challenge ACME does not have) and
    /// Boulder's choices elsewhere, so clients see what they already handle.
    pub fn wire(&self) -> (ProblemType, u16) {
        use ProblemType as P;
        match self {
            Error::WrongContentType => (P::Malformed, 415),
            Error::MalformedJws(_) => (P::Malformed, 400),
            Error::BadBase64(_) => (P::Malformed, 400),
            Error::Malformed(_) => (P::Malformed, 400),
            Error::InvalidJson(_) => (P::Malformed, 400),
            Error::CriticalHeader => (P::Malformed, 400),
            Error::UnsupportedAlgorithm(_) => (P::BadSignatureAlgorithm, 400),
            Error::WrongKeyReference(_) => (P::Malformed, 400),
            Error::BadPublicKey(_) => (P::BadPublicKey, 400),
            Error::BadSignature => (P::Malformed, 400),
            Error::UrlMismatch => (P::Unauthorized, 403),
            Error::BadNonce(_) => (P::BadNonce, 400),
            Error::NonceStoreFull => (P::BadNonce, 400),
            // Fail closed (issue 8): without the shared store a replay cannot be ruled out, so
            // the nonce is refused as a badNonce; 503 (with Retry-After) says why it is temporary.
            Error::NonceStoreUnavailable => (P::BadNonce, 503),
            Error::WrongPayloadKind(_) => (P::Malformed, 400),
            Error::AccountDoesNotExist => (P::AccountDoesNotExist, 400),
            Error::Unauthorized(_) => (P::Unauthorized, 403),
            Error::UnsupportedContact(_) => (P::UnsupportedContact, 400),
            Error::InvalidContact(_) => (P::InvalidContact, 400),
            Error::TermsNotAgreed => (P::Malformed, 400),
            Error::ExternalAccountRequired => (P::ExternalAccountRequired, 400),
            Error::RejectedIdentifier(_) => (P::RejectedIdentifier, 400),
            Error::UnsupportedIdentifier(_) => (P::UnsupportedIdentifier, 400),
            Error::Identifiers { subproblems, .. } => {
                // RFC 8555 §6.7.1: the top-level type is the common one if all agree.
                let first = subproblems.first().map(|s| s.problem_type);
                match first {
                    Some(t) if subproblems.iter().all(|s| s.problem_type == t) => (t, 400),
                    _ => (P::Malformed, 400),
                }
            }
            Error::BadCsr(_) => (P::BadCsr, 400),
            Error::OrderNotReady(_) => (P::OrderNotReady, 403),
            Error::InvalidTransition { .. } => (P::Malformed, 400),
            Error::AlreadyRevoked => (P::AlreadyRevoked, 400),
            Error::BadRevocationReason(_) => (P::BadRevocationReason, 400),
            Error::UserActionRequired(_) => (P::UserActionRequired, 403),
            Error::RateLimited(_) => (P::RateLimited, 429),
            Error::Validation { kind, .. } => ((*kind).into(), 400),
            Error::ServerInternal => (P::ServerInternal, 500),
        }
    }

    /// The problem document for this error.
    pub fn to_problem(&self) -> Problem {
        let (problem_type, status) = self.wire();
        let algorithms = match self {
            Error::UnsupportedAlgorithm(_) => Some(SUPPORTED_ALGORITHMS.to_vec()),
            _ => None,
        };
        let subproblems = match self {
            Error::Identifiers { subproblems, .. } => subproblems.clone(),
            _ => Vec::new(),
        };
        Problem {
            problem_type,
            detail: self.to_string(),
            status,
            subproblems,
            algorithms,
        }
    }
}

/// A per-identifier problem inside a compound error (RFC 8555 §6.7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subproblem {
    /// The problem type for this identifier.
    pub problem_type: ProblemType,
    /// Human-readable detail.
    pub detail: String,
    /// The identifier it concerns.
    pub identifier: Identifier,
}

/// An RFC 7807 problem document as ACME uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The `type` URN.
    pub problem_type: ProblemType,
    /// Human-readable detail.
    pub detail: String,
    /// The HTTP status the response carries (also echoed in the body).
    pub status: u16,
    /// Per-identifier subproblems.
    pub subproblems: Vec<Subproblem>,
    /// For `badSignatureAlgorithm`: the algorithms the server accepts (RFC 8555 §6.2).
    pub algorithms: Option<Vec<&'static str>>,
}

#[derive(Serialize)]
struct WireSubproblem<'a> {
    #[serde(rename = "type")]
    t: String,
    detail: &'a str,
    identifier: &'a Identifier,
}

#[derive(Serialize)]
struct WireProblem<'a> {
    #[serde(rename = "type")]
    t: String,
    detail: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    subproblems: Vec<WireSubproblem<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    algorithms: Option<&'a [&'static str]>,
}

impl Problem {
    /// The JSON body, served as [`PROBLEM_CONTENT_TYPE`].
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a `Value` cannot fail.
        serde_json::to_vec(&self.to_value()).unwrap_or_default()
    }

    /// The problem as a JSON value, to embed in a challenge's or order's `error` member.
    pub fn to_value(&self) -> serde_json::Value {
        let wire = WireProblem {
            t: self.problem_type.urn(),
            detail: &self.detail,
            status: self.status,
            subproblems: self
                .subproblems
                .iter()
                .map(|s| WireSubproblem {
                    t: s.problem_type.urn(),
                    detail: &s.detail,
                    identifier: &s.identifier,
                })
                .collect(),
            algorithms: self.algorithms.as_deref(),
        };
        // Serializing plain strings and numbers cannot fail; fall back to a fixed body anyway.
        serde_json::to_value(&wire).unwrap_or_else(|_| {
            serde_json::json!({"type": "urn:ietf:params:acme:error:serverInternal", "status": 500})
        })
    }
}

/// Checks the request's `Content-Type` (RFC 8555 §6.2): only `application/jose+json`, with
/// optional parameters, compared case-insensitively. Anything else is a 415 `malformed`.
pub fn check_content_type(content_type: Option<&str>) -> Result<(), Error> {
    let Some(ct) = content_type else {
        return Err(Error::WrongContentType);
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(JOSE_CONTENT_TYPE) {
        Ok(())
    } else {
        Err(Error::WrongContentType)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Identifier;

    macro_rules! row {
        ($name:ident, $err:expr, $urn:literal, $status:literal) => {
            #[test]
            fn $name() {
                let e: Error = $err;
                let p = e.to_problem();
                assert_eq!(
                    p.problem_type.urn(),
                    concat!("urn:ietf:params:acme:error:", $urn)
                );
                assert_eq!(p.status, $status);
                let v: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
                assert_eq!(v["type"], concat!("urn:ietf:params:acme:error:", $urn));
                assert_eq!(v["status"], $status);
            }
        };
    }

    fn ident() -> Identifier {
        Identifier::dns("example.org")
    }

    row!(
        wrong_content_type_is_415_malformed,
        Error::WrongContentType,
        "malformed",
        415
    );
    row!(
        malformed_jws_is_400,
        Error::MalformedJws("x".into()),
        "malformed",
        400
    );
    row!(
        bad_base64_is_400_malformed,
        Error::BadBase64("payload"),
        "malformed",
        400
    );
    row!(
        malformed_request_is_400,
        Error::Malformed("x".into()),
        "malformed",
        400
    );
    row!(
        invalid_json_is_400_malformed,
        Error::InvalidJson("x".into()),
        "malformed",
        400
    );
    row!(
        critical_header_is_400_malformed,
        Error::CriticalHeader,
        "malformed",
        400
    );
    row!(
        unsupported_alg_is_bad_signature_algorithm,
        Error::UnsupportedAlgorithm("none".into()),
        "badSignatureAlgorithm",
        400
    );
    row!(
        wrong_key_reference_is_malformed,
        Error::WrongKeyReference("x"),
        "malformed",
        400
    );
    row!(
        bad_public_key_is_400,
        Error::BadPublicKey("x".into()),
        "badPublicKey",
        400
    );
    row!(
        bad_signature_is_malformed,
        Error::BadSignature,
        "malformed",
        400
    );
    row!(
        url_mismatch_is_unauthorized,
        Error::UrlMismatch,
        "unauthorized",
        403
    );
    row!(bad_nonce_is_400, Error::BadNonce("x"), "badNonce", 400);
    row!(
        full_nonce_store_is_bad_nonce,
        Error::NonceStoreFull,
        "badNonce",
        400
    );
    row!(
        nonce_store_down_is_bad_nonce_503,
        Error::NonceStoreUnavailable,
        "badNonce",
        503
    );
    row!(
        wrong_payload_kind_is_malformed,
        Error::WrongPayloadKind("x"),
        "malformed",
        400
    );
    row!(
        unknown_account_is_400,
        Error::AccountDoesNotExist,
        "accountDoesNotExist",
        400
    );
    row!(
        unauthorized_is_403,
        Error::Unauthorized("x".into()),
        "unauthorized",
        403
    );
    row!(
        unsupported_contact_is_400,
        Error::UnsupportedContact("x".into()),
        "unsupportedContact",
        400
    );
    row!(
        invalid_contact_is_400,
        Error::InvalidContact("x".into()),
        "invalidContact",
        400
    );
    row!(
        terms_not_agreed_is_malformed,
        Error::TermsNotAgreed,
        "malformed",
        400
    );
    row!(
        eab_required_is_400,
        Error::ExternalAccountRequired,
        "externalAccountRequired",
        400
    );
    row!(
        rejected_identifier_is_400,
        Error::RejectedIdentifier("x".into()),
        "rejectedIdentifier",
        400
    );
    row!(
        unsupported_identifier_is_400,
        Error::UnsupportedIdentifier("x".into()),
        "unsupportedIdentifier",
        400
    );
    row!(
        identifiers_with_one_type_take_that_type,
        Error::Identifiers {
            detail: "x".into(),
            subproblems: vec![Subproblem {
                problem_type: ProblemType::RejectedIdentifier,
                detail: "y".into(),
                identifier: ident(),
            }],
        },
        "rejectedIdentifier",
        400
    );
    row!(
        identifiers_with_mixed_types_are_malformed,
        Error::Identifiers {
            detail: "x".into(),
            subproblems: vec![
                Subproblem {
                    problem_type: ProblemType::RejectedIdentifier,
                    detail: "y".into(),
                    identifier: ident(),
                },
                Subproblem {
                    problem_type: ProblemType::UnsupportedIdentifier,
                    detail: "z".into(),
                    identifier: ident(),
                },
            ],
        },
        "malformed",
        400
    );
    row!(bad_csr_is_400, Error::BadCsr("x".into()), "badCSR", 400);
    row!(
        order_not_ready_is_403,
        Error::OrderNotReady("pending"),
        "orderNotReady",
        403
    );
    row!(
        invalid_transition_is_malformed,
        Error::InvalidTransition {
            object: "o",
            state: "s",
            input: "i"
        },
        "malformed",
        400
    );
    row!(
        already_revoked_is_400,
        Error::AlreadyRevoked,
        "alreadyRevoked",
        400
    );
    row!(
        bad_reason_is_400,
        Error::BadRevocationReason(7),
        "badRevocationReason",
        400
    );
    row!(
        user_action_required_is_403,
        Error::UserActionRequired("x".into()),
        "userActionRequired",
        403
    );
    row!(
        rate_limited_is_429,
        Error::RateLimited("x".into()),
        "rateLimited",
        429
    );
    row!(
        caa_failure_is_400,
        Error::Validation {
            kind: ValidationFailure::Caa,
            detail: "x".into()
        },
        "caa",
        400
    );
    row!(
        dns_failure_is_400,
        Error::Validation {
            kind: ValidationFailure::Dns,
            detail: "x".into()
        },
        "dns",
        400
    );
    row!(
        connection_failure_is_400,
        Error::Validation {
            kind: ValidationFailure::Connection,
            detail: "x".into()
        },
        "connection",
        400
    );
    row!(
        incorrect_response_is_400,
        Error::Validation {
            kind: ValidationFailure::IncorrectResponse,
            detail: "x".into()
        },
        "incorrectResponse",
        400
    );
    row!(
        tls_failure_is_400,
        Error::Validation {
            kind: ValidationFailure::Tls,
            detail: "x".into()
        },
        "tls",
        400
    );
    row!(
        server_internal_is_500,
        Error::ServerInternal,
        "serverInternal",
        500
    );

    #[test]
    fn every_problem_type_has_a_distinct_urn() {
        let mut seen = std::collections::HashSet::new();
        for t in ProblemType::ALL {
            assert!(seen.insert(t.urn()), "{t:?}");
        }
        assert_eq!(seen.len(), 23);
    }

    #[test]
    fn bad_signature_algorithm_lists_the_accepted_algorithms() {
        let p = Error::UnsupportedAlgorithm("HS256".into()).to_problem();
        let v: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(
            v["algorithms"],
            serde_json::json!(["ES256", "ES384", "RS256", "EdDSA"])
        );
    }

    #[test]
    fn subproblems_carry_their_identifier() {
        let e = Error::Identifiers {
            detail: "two bad".into(),
            subproblems: vec![Subproblem {
                problem_type: ProblemType::RejectedIdentifier,
                detail: "no".into(),
                identifier: ident(),
            }],
        };
        let v: serde_json::Value = serde_json::from_slice(&e.to_problem().to_json()).unwrap();
        assert_eq!(v["subproblems"][0]["identifier"]["value"], "example.org");
        assert_eq!(v["subproblems"][0]["identifier"]["type"], "dns");
        assert_eq!(
            v["subproblems"][0]["type"],
            "urn:ietf:params:acme:error:rejectedIdentifier"
        );
    }

    #[test]
    fn content_type_must_be_jose_json() {
        assert!(check_content_type(Some("application/jose+json")).is_ok());
        assert!(check_content_type(Some("Application/JOSE+JSON; charset=utf-8")).is_ok());
        assert_eq!(
            check_content_type(Some("application/json")),
            Err(Error::WrongContentType)
        );
        assert_eq!(check_content_type(None), Err(Error::WrongContentType));
    }
}
