//! The JSON objects the server returns for accounts, orders, authorizations and challenges
//! (RFC 8555 §7.1.2–§7.1.5), rendered from the state types and the URLs the glue assigns.
//! Rendering lives here so the field names and the wildcard rule (§7.1.4: the identifier is
//! shown without `*.` and `wildcard: true`) are decided once, next to the states.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ari::CertId;
use crate::error::Error;
use crate::state::{Authorization, Challenge, Order};

fn rfc3339(t: OffsetDateTime) -> Result<String, Error> {
    t.format(&Rfc3339).map_err(|_| Error::ServerInternal)
}

/// Account status (RFC 8555 §7.1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    /// Usable.
    Valid,
    /// Deactivated by the client; final.
    Deactivated,
    /// Revoked by the server; final.
    Revoked,
}

impl AccountStatus {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            AccountStatus::Valid => "valid",
            AccountStatus::Deactivated => "deactivated",
            AccountStatus::Revoked => "revoked",
        }
    }
}

/// An account object (RFC 8555 §7.1.2).
pub fn account_json(status: AccountStatus, contact: &[String], orders_url: &str) -> Vec<u8> {
    let v = json!({"status": status.name(), "contact": contact, "orders": orders_url});
    serde_json::to_vec(&v).unwrap_or_default()
}

/// A challenge object (RFC 8555 §7.1.5, §8).
pub fn challenge_value(ch: &Challenge, url: &str) -> Result<Value, Error> {
    let mut m = Map::new();
    m.insert("type".into(), json!(ch.kind.name()));
    m.insert("url".into(), json!(url));
    m.insert("status".into(), json!(ch.status.name()));
    m.insert("token".into(), json!(ch.token));
    if let Some(t) = ch.validated {
        m.insert("validated".into(), json!(rfc3339(t)?));
    }
    if let Some(p) = &ch.error {
        m.insert("error".into(), p.to_value());
    }
    Ok(Value::Object(m))
}

/// An authorization object (RFC 8555 §7.1.4); `challenge_urls[i]` is the URL of challenge `i`.
pub fn authorization_json(a: &Authorization, challenge_urls: &[String]) -> Result<Vec<u8>, Error> {
    if challenge_urls.len() != a.challenges.len() {
        return Err(Error::ServerInternal);
    }
    let wildcard = a.identifier.is_wildcard();
    let value = a
        .identifier
        .value
        .strip_prefix("*.")
        .unwrap_or(&a.identifier.value);
    let challenges = a
        .challenges
        .iter()
        .zip(challenge_urls)
        .map(|(c, u)| challenge_value(c, u))
        .collect::<Result<Vec<_>, _>>()?;
    let mut m = Map::new();
    m.insert(
        "identifier".into(),
        json!({"type": a.identifier.kind, "value": value}),
    );
    m.insert("status".into(), json!(a.status.name()));
    m.insert("expires".into(), json!(rfc3339(a.expires)?));
    m.insert("challenges".into(), Value::Array(challenges));
    if wildcard {
        m.insert("wildcard".into(), json!(true));
    }
    serde_json::to_vec(&Value::Object(m)).map_err(|_| Error::ServerInternal)
}

/// What an order object shows besides the state: URLs and the request's optional fields.
#[derive(Debug, Clone, Copy)]
pub struct OrderView<'a> {
    /// The state.
    pub order: &'a Order,
    /// Authorization URLs, one per identifier.
    pub authorizations: &'a [String],
    /// The finalize URL.
    pub finalize: &'a str,
    /// The certificate URL once valid.
    pub certificate: Option<&'a str>,
    /// Requested notBefore.
    pub not_before: Option<OffsetDateTime>,
    /// Requested notAfter.
    pub not_after: Option<OffsetDateTime>,
    /// Profile name.
    pub profile: Option<&'a str>,
    /// The certificate replaced (ARI).
    pub replaces: Option<&'a CertId>,
}

/// An order object (RFC 8555 §7.1.3, RFC 9773 §5, draft-ietf-acme-profiles).
pub fn order_json(v: &OrderView<'_>) -> Result<Vec<u8>, Error> {
    let o = v.order;
    let mut m = Map::new();
    m.insert("status".into(), json!(o.status.name()));
    m.insert("expires".into(), json!(rfc3339(o.expires)?));
    m.insert("identifiers".into(), json!(o.identifiers));
    if let Some(t) = v.not_before {
        m.insert("notBefore".into(), json!(rfc3339(t)?));
    }
    if let Some(t) = v.not_after {
        m.insert("notAfter".into(), json!(rfc3339(t)?));
    }
    m.insert("authorizations".into(), json!(v.authorizations));
    m.insert("finalize".into(), json!(v.finalize));
    if let Some(c) = v.certificate {
        m.insert("certificate".into(), json!(c));
    }
    if let Some(p) = v.profile {
        m.insert("profile".into(), json!(p));
    }
    if let Some(r) = v.replaces {
        m.insert("replaces".into(), json!(r.to_string()));
    }
    if let Some(p) = &o.error {
        m.insert("error".into(), p.to_value());
    }
    serde_json::to_vec(&Value::Object(m)).map_err(|_| Error::ServerInternal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ValidationFailure;
    use crate::payload::Identifier;
    use crate::state::{AuthzInput, ChallengeInput};

    fn t() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    /// RFC 8555 §7.1.4: a wildcard authorization shows the base name and `wildcard: true`,
    /// and offers only dns-01.
    #[test]
    fn wildcard_authorization_shape() {
        let a = Authorization::new(Identifier::dns("*.example.org"), t(), &["tok".into()]).unwrap();
        let v: Value = serde_json::from_slice(
            &authorization_json(&a, &["https://h/acme/chall/1".into()]).unwrap(),
        )
        .unwrap();
        assert_eq!(v["identifier"], json!({"type":"dns","value":"example.org"}));
        assert_eq!(v["wildcard"], true);
        assert_eq!(v["status"], "pending");
        assert_eq!(v["expires"], "2027-01-15T08:00:00Z");
        assert_eq!(v["challenges"][0]["type"], "dns-01");
        assert_eq!(v["challenges"][0]["token"], "tok");
        assert!(authorization_json(&a, &[]).is_err());
    }

    #[test]
    fn invalid_challenge_carries_its_problem() {
        let a = Authorization::new(
            Identifier::ip("192.0.2.1"),
            t() + time::Duration::hours(1),
            &["a".into(), "b".into()],
        )
        .unwrap()
        .handle(AuthzInput::Challenge(0, ChallengeInput::Respond), t())
        .unwrap()
        .handle(
            AuthzInput::Challenge(
                0,
                ChallengeInput::Failed {
                    kind: ValidationFailure::Connection,
                    detail: "refused".into(),
                },
            ),
            t(),
        )
        .unwrap();
        let urls = ["u0".to_string(), "u1".to_string()];
        let v: Value = serde_json::from_slice(&authorization_json(&a, &urls).unwrap()).unwrap();
        assert_eq!(v["status"], "invalid");
        assert_eq!(
            v["challenges"][0]["error"]["type"],
            "urn:ietf:params:acme:error:connection"
        );
        assert!(v.get("wildcard").is_none());
    }

    /// RFC 8555 §7.1.3: the order object's members.
    #[test]
    fn order_object_shape() {
        let o = Order::new(vec![Identifier::dns("www.example.org")], t());
        let id = CertId::parse("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE").unwrap();
        let authz = ["https://h/acme/authz/1".to_string()];
        let view = OrderView {
            order: &o,
            authorizations: &authz,
            finalize: "https://h/acme/finalize/1",
            certificate: None,
            not_before: Some(t()),
            not_after: None,
            profile: Some("tlsserver"),
            replaces: Some(&id),
        };
        let v: Value = serde_json::from_slice(&order_json(&view).unwrap()).unwrap();
        assert_eq!(v["status"], "pending");
        assert_eq!(
            v["identifiers"],
            json!([{"type":"dns","value":"www.example.org"}])
        );
        assert_eq!(v["authorizations"][0], "https://h/acme/authz/1");
        assert_eq!(v["finalize"], "https://h/acme/finalize/1");
        assert_eq!(v["notBefore"], "2027-01-15T08:00:00Z");
        assert_eq!(v["profile"], "tlsserver");
        assert_eq!(v["replaces"], "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
        assert!(v.get("certificate").is_none() && v.get("notAfter").is_none());
    }

    #[test]
    fn account_object_shape() {
        let v: Value = serde_json::from_slice(&account_json(
            AccountStatus::Valid,
            &["mailto:a@example.org".into()],
            "https://h/acme/acct/1/orders",
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"status":"valid","contact":["mailto:a@example.org"],"orders":"https://h/acme/acct/1/orders"})
        );
    }
}
