//! The tonic `Acme` service. Every RPC checks the caller against the Core allow-list first (edges
//! call it; fail closed, I-5). Every object lookup takes the tenant and the account, so another
//! tenant's or account's object is NOT_FOUND (I-4).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certgate_acme::jwk::Jwk;
use certgate_acme::payload::{
    ExternalAccountBinding, IdentifierType, WireIdentifier, validate_contacts, validate_identifiers,
};
use certgate_acme::state::{AuthzStatus, OrderStatus, challenge_types_for};
use certgate_proto::Caller;
use certgate_proto::acme::acme_server::Acme;
use certgate_proto::acme::{
    Account, Authorization, CertificateChain, Chain, Challenge, FinalizeRequest, GetAccountRequest,
    GetAuthorizationRequest, GetOrderCertificateRequest, GetOrderRequest, GetTenantMetaRequest,
    Identifier, KeyChangeRequest, KeyChangeResponse, ListOrdersRequest, ListOrdersResponse,
    NewAccountRequest, NewAccountResponse, NewOrderRequest, Order, Problem,
    RespondChallengeRequest, RespondChallengeResponse, RevokeCertificateRequest,
    RevokeCertificateResponse, TenantMeta, UpdateAccountRequest, get_account_request,
    revoke_certificate_request,
};
use certgate_proto::transport::caller_of;
use der::Decode;
use prost::Message;
use serde_json::json;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::validate::Validator;
use super::{AcmeConfig, acme_error, random_id};
use crate::audit::AuditEntry;
use crate::error::{CoreError, Result};
use crate::issue::chain_of;
use crate::service::State;
use crate::store::RevokeOp;
use crate::store::acme::{
    AccountRec, AcmeStore, AuthzRec, ChallengeRec, ChallengeResult, IdentRec, NewAccountOutcome,
    OrderRec, OrderUpdate,
};

/// Orders per ListOrders page by default, and the most.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

/// What the ACME service shares.
pub struct AcmeState {
    /// The core's state (store, issuer, allow-lists).
    pub core: Arc<State>,
    /// `[acme]` settings.
    pub config: AcmeConfig,
    /// The validators.
    pub validator: Validator,
    /// Validations running at once (I-8).
    pub validations: Arc<Semaphore>,
    /// (tenant, challenge id) of the validations running in this process; each entry lives as
    /// long as its task (so at most `max_concurrent_validations` entries, I-8). A challenge
    /// stored as processing but absent here was left by a stopped core and is validated again.
    running: Arc<Mutex<HashSet<(String, String)>>>,
    /// (tenant, order id) of the finalizations under way in this process (same idea: a
    /// processing order absent here is resumed on the next read).
    finalizing: Arc<Mutex<HashSet<(String, String)>>>,
}

/// Holds a challenge's place in [`AcmeState::running`] until dropped.
struct Running {
    set: Arc<Mutex<HashSet<(String, String)>>>,
    key: (String, String),
}

impl Running {
    /// Claims the challenge; None when a validation of it already runs here.
    fn claim(set: &Arc<Mutex<HashSet<(String, String)>>>, tenant: &str, id: &str) -> Option<Self> {
        let key = (tenant.to_owned(), id.to_owned());
        let mut guard = match set.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard.insert(key.clone()).then(|| Running {
            set: set.clone(),
            key,
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut guard = match self.set.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard.remove(&self.key);
    }
}

impl AcmeState {
    /// The ACME service state over the core's.
    pub fn new(core: Arc<State>, config: AcmeConfig) -> Self {
        Self {
            validations: Arc::new(Semaphore::new(config.max_concurrent_validations.max(1))),
            validator: Validator::new(config.clone()),
            running: Arc::default(),
            finalizing: Arc::default(),
            core,
            config,
        }
    }

    fn store(&self) -> Result<&dyn AcmeStore> {
        self.core
            .store
            .as_acme()
            .ok_or_else(|| CoreError::Internal("this store has no ACME tables".into()))
    }
}

/// The `Acme` service.
#[derive(Clone)]
pub struct AcmeService(pub Arc<AcmeState>);

/// Runs store work without stalling the async workers (as the issuance path does).
pub(super) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn not_found(what: &'static str) -> CoreError {
    CoreError::not_found(what, "no such object")
}

fn problem_bytes(p: &Problem) -> Vec<u8> {
    p.encode_to_vec()
}

fn problem_of(b: &[u8]) -> Option<Problem> {
    if b.is_empty() {
        None
    } else {
        Problem::decode(b).ok()
    }
}

fn problem(kind: &str, detail: impl Into<String>) -> Problem {
    Problem {
        r#type: kind.to_owned(),
        detail: detail.into(),
        identifier: None,
        subproblems: Vec::new(),
    }
}

fn ident_proto(i: &IdentRec) -> Identifier {
    Identifier {
        r#type: i.kind.clone(),
        value: i.value.clone(),
    }
}

fn account_proto(a: &AccountRec) -> Account {
    Account {
        tenant: a.tenant.clone(),
        account_id: a.account_id.clone(),
        status: a.status.clone(),
        contacts: a.contacts.clone(),
        terms_agreed: a.terms_agreed,
        jwk_json: a.jwk_json.clone(),
        jwk_thumbprint: a.jwk_thumbprint.clone(),
        eab_key_id: a.eab_key_id.clone(),
        created_unix: a.created_unix,
    }
}

/// The authorization status as of `now` (expiry applies to pending and valid ones).
fn authz_status(a: &AuthzRec, now: i64) -> String {
    if (a.status == "pending" || a.status == "valid") && now >= a.expires_unix {
        "expired".into()
    } else {
        a.status.clone()
    }
}

fn authz_enum(s: &str) -> AuthzStatus {
    match s {
        "pending" => AuthzStatus::Pending,
        "valid" => AuthzStatus::Valid,
        "invalid" => AuthzStatus::Invalid,
        "deactivated" => AuthzStatus::Deactivated,
        "revoked" => AuthzStatus::Revoked,
        _ => AuthzStatus::Expired,
    }
}

fn challenge_proto(c: &ChallengeRec) -> Challenge {
    Challenge {
        challenge_id: c.challenge_id.clone(),
        r#type: c.kind.clone(),
        status: c.status.clone(),
        token: c.token.clone(),
        validated_unix: c.validated_unix,
        error: problem_of(&c.error),
    }
}

fn authz_proto(a: &AuthzRec, now: i64) -> Authorization {
    Authorization {
        tenant: a.tenant.clone(),
        authz_id: a.authz_id.clone(),
        account_id: a.account_id.clone(),
        identifier: Some(ident_proto(&a.identifier)),
        status: authz_status(a, now),
        expires_unix: a.expires_unix,
        challenges: a.challenges.iter().map(challenge_proto).collect(),
        wildcard: a.wildcard,
    }
}

fn order_proto(o: &OrderRec) -> Order {
    Order {
        tenant: o.tenant.clone(),
        order_id: o.order_id.clone(),
        account_id: o.account_id.clone(),
        status: o.status.clone(),
        expires_unix: o.expires_unix,
        identifiers: o.identifiers.iter().map(ident_proto).collect(),
        authorization_ids: o.authz_ids.clone(),
        not_before_unix: o.not_before_unix,
        not_after_unix: o.not_after_unix,
        error: problem_of(&o.error),
        certificate_serial_hex: o.certificate_serial_hex.clone(),
        profile: o.profile.clone(),
        replaces: o.replaces.clone(),
    }
}

/// The identifiers of a certificate's subjectAltName, as ACME identifiers.
fn cert_identifiers(der_bytes: &[u8]) -> Result<Vec<IdentRec>> {
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let cert = x509_cert::Certificate::from_der(der_bytes)
        .map_err(|_| CoreError::malformed("malformed", "certificate does not parse"))?;
    let mut out = Vec::new();
    for e in cert.tbs_certificate.extensions.unwrap_or_default() {
        if e.extn_id != const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME {
            continue;
        }
        let san = SubjectAltName::from_der(e.extn_value.as_bytes())
            .map_err(|_| CoreError::malformed("malformed", "subjectAltName does not parse"))?;
        for n in san.0 {
            match n {
                GeneralName::DnsName(d) => out.push(IdentRec {
                    kind: "dns".into(),
                    value: d.as_str().to_ascii_lowercase(),
                }),
                GeneralName::IpAddress(o) => {
                    let b = o.as_bytes();
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(b).map(IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(b).map(IpAddr::from).ok(),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        out.push(IdentRec {
                            kind: "ip".into(),
                            value: ip.to_string(),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

impl AcmeService {
    /// A read-only store section: inline when the store's reads are local (SQLite; a worker
    /// hand-off costs more than such a read), else a blocking section like [`blocking`].
    fn reading<T>(&self, f: impl FnOnce() -> T) -> T {
        if self.0.core.store.reads_are_local() {
            f()
        } else {
            blocking(f)
        }
    }

    fn check(&self, caller: &Caller, rpc: &str) -> Result<()> {
        let core = &self.0.core;
        if core.allow.admits(caller) {
            return Ok(());
        }
        let _ = core.store.append_audit(&AuditEntry::new(
            "auth.denied",
            "",
            caller,
            json!({"rpc": rpc, "rule": "core.caller_not_allowed"}),
        ));
        tracing::info!(%caller, rpc, "caller denied");
        Err(CoreError::Unauthorized {
            rule: "core.caller_not_allowed",
        })
    }

    fn tenant(&self, tenant: &str) -> Result<crate::store::TenantRec> {
        self.0
            .core
            .store
            .get_tenant(tenant)?
            .ok_or_else(|| CoreError::not_found("tenant.unknown", "no such tenant"))
    }

    /// A valid account of the tenant; NOT_FOUND (accountDoesNotExist) otherwise, and
    /// `unauthorized` for a deactivated one, or when `key_thumbprint` (the key the edge verified
    /// the request with; "" = not stated) is not the account's current key. Edges cache account
    /// keys; this check makes the store, not a cache, decide (a key rolled over or an account
    /// deactivated through another edge is refused at once).
    fn valid_account(
        &self,
        tenant: &str,
        account_id: &str,
        key_thumbprint: &str,
    ) -> Result<AccountRec> {
        let a = self
            .0
            .store()?
            .account(tenant, account_id)?
            .ok_or_else(|| CoreError::not_found("accountDoesNotExist", "no such account"))?;
        if a.status != "valid" {
            return Err(CoreError::policy(
                "unauthorized",
                format!("the account is {}", a.status),
            ));
        }
        if !key_thumbprint.is_empty() && key_thumbprint != a.jwk_thumbprint {
            return Err(CoreError::policy(
                "unauthorized",
                "the request is not signed with the account's current key",
            ));
        }
        Ok(a)
    }

    /// [`Self::valid_account`] when the edge stated the key it verified the request with
    /// (read-only calls of edges that do not state it check nothing more, as before).
    fn stated_account(&self, tenant: &str, account_id: &str, key_thumbprint: &str) -> Result<()> {
        if !key_thumbprint.is_empty() {
            self.reading(|| self.valid_account(tenant, account_id, key_thumbprint))?;
        }
        Ok(())
    }

    /// The order as of now: pending/ready recomputed from its authorizations and expiry (RFC
    /// 8555 §7.1.6); a change to ready or invalid is stored (compare-and-set).
    fn refresh_order(&self, mut o: OrderRec, caller: &Caller) -> Result<OrderRec> {
        let store = self.0.store()?;
        if o.status == "processing" {
            // A core that stopped between storing the certificate and marking the order leaves
            // it processing; the certificate under the order's key completes it.
            let key = format!("acme-order:{}", o.order_id);
            if let Some(cert) = self.0.core.store.cert_by_key(&o.tenant, &key)? {
                let audit = AuditEntry::new(
                    "acme.order.valid",
                    &o.tenant,
                    caller,
                    json!({"order": o.order_id, "serial": cert.serial_hex, "recovered": true}),
                );
                let update = OrderUpdate {
                    status: "valid".into(),
                    error: Vec::new(),
                    certificate_serial_hex: cert.serial_hex.clone(),
                    csr_der: Vec::new(),
                };
                store.set_order_status(&o.tenant, &o.order_id, &["processing"], &update, &audit)?;
                if let Some(stored) = store.order(&o.tenant, &o.account_id, &o.order_id)? {
                    o = stored;
                }
            }
            return Ok(o);
        }
        if o.status != "pending" && o.status != "ready" {
            return Ok(o);
        }
        let now = crate::now_unix();
        let mut authzs = Vec::with_capacity(o.authz_ids.len());
        for id in &o.authz_ids {
            authzs.push(
                store.authz(&o.tenant, &o.account_id, id)?.ok_or_else(|| {
                    CoreError::Store("order names a missing authorization".into())
                })?,
            );
        }
        let statuses: Vec<AuthzStatus> = authzs
            .iter()
            .map(|a| authz_enum(&authz_status(a, now)))
            .collect();
        let (next, err) = if now >= o.expires_unix {
            (
                OrderStatus::Invalid,
                Some(problem(
                    "malformed",
                    "the order expired before it was finalized",
                )),
            )
        } else {
            let s = certgate_acme::state::order_status_from_authorizations(&statuses);
            let err = (s == OrderStatus::Invalid).then(|| {
                let subproblems: Vec<Problem> = authzs
                    .iter()
                    .zip(&statuses)
                    .filter(|(_, s)| **s != AuthzStatus::Valid && **s != AuthzStatus::Pending)
                    .map(|(a, s)| {
                        let base = a
                            .challenges
                            .iter()
                            .find_map(|c| problem_of(&c.error))
                            .unwrap_or_else(|| {
                                problem(
                                    "unauthorized",
                                    format!("the authorization is {}", s.name()),
                                )
                            });
                        let value = if a.wildcard {
                            format!("*.{}", a.identifier.value)
                        } else {
                            a.identifier.value.clone()
                        };
                        Problem {
                            identifier: Some(Identifier {
                                r#type: a.identifier.kind.clone(),
                                value,
                            }),
                            ..base
                        }
                    })
                    .collect();
                let top = subproblems
                    .first()
                    .map(|p| p.r#type.clone())
                    .unwrap_or_else(|| "unauthorized".into());
                Problem {
                    r#type: top,
                    detail: "an authorization of the order failed".into(),
                    identifier: None,
                    subproblems,
                }
            });
            (s, err)
        };
        let next = next.name();
        if next == o.status {
            return Ok(o);
        }
        let update = OrderUpdate {
            status: next.into(),
            error: err.as_ref().map(problem_bytes).unwrap_or_default(),
            certificate_serial_hex: String::new(),
            csr_der: Vec::new(),
        };
        let audit = AuditEntry::new(
            "acme.order.status",
            &o.tenant,
            caller,
            json!({"order": o.order_id, "from": o.status, "to": next}),
        );
        if store.set_order_status(&o.tenant, &o.order_id, &[&o.status], &update, &audit)? {
            // Stored exactly this change (compare-and-set): no need to read it back.
            o.status = update.status;
            o.error = update.error;
            o.certificate_serial_hex = update.certificate_serial_hex;
            return Ok(o);
        }
        // Whatever won the race is what is stored now.
        match store.order(&o.tenant, &o.account_id, &o.order_id)? {
            Some(stored) => o = stored,
            None => return Err(not_found("acme.order")),
        }
        Ok(o)
    }

    /// RFC 9773 §5: `replaces` must name a certificate this account ordered (same issuer key
    /// identifier and serial) that no other live order of the account already replaces. The edge
    /// exempts renewals from some rate limits, so this is checked here, not trusted.
    fn check_replaces(&self, tenant: &str, account_id: &str, replaces: &str) -> Result<String> {
        let bad = || {
            CoreError::malformed(
                "malformed",
                "replaces does not name a certificate of this account",
            )
        };
        let id = certgate_acme::ari::CertId::parse(replaces).map_err(|e| acme_error(&e))?;
        let serial = crate::x509::serial_hex(&id.serial);
        let store = self.0.store()?;
        store
            .order_by_serial(tenant, &serial)?
            .filter(|o| o.account_id == account_id)
            .ok_or_else(bad)?;
        let cert = self
            .0
            .core
            .store
            .get_cert(tenant, &serial)?
            .ok_or_else(bad)?;
        let actual =
            certgate_acme::ari::CertId::from_certificate(&cert.cert_der).map_err(|_| bad())?;
        if actual != id {
            return Err(bad());
        }
        if store
            .order_replacing(tenant, account_id, replaces)?
            .is_some()
        {
            return Err(CoreError::policy(
                "alreadyReplaced",
                "another order already replaces this certificate",
            ));
        }
        Ok(serial)
    }

    async fn run_validation(
        state: Arc<AcmeState>,
        authz: AuthzRec,
        idx: usize,
        key_authorization: String,
        caller: Caller,
        _permit: tokio::sync::OwnedSemaphorePermit,
        _running: Running,
    ) {
        let Some(ch) = authz.challenges.get(idx).cloned() else {
            return;
        };
        let started = std::time::Instant::now();
        let mut result = state
            .validator
            .validate(&ch.kind, &authz.identifier, &ch.token, &key_authorization)
            .await;
        // CAA (RFC 8659) once the name is proven, when the tenant names its CA identities.
        if result.is_ok() && authz.identifier.kind == "dns" {
            let identities = state
                .store()
                .and_then(|s| s.acme_settings(&authz.tenant))
                .map(|s| s.map(|s| s.caa_identities).unwrap_or_default());
            result = match identities {
                Ok(ids) if ids.is_empty() => Ok(()),
                Ok(ids) => {
                    state
                        .validator
                        .check_caa(
                            &authz.identifier.value,
                            &super::validate::CaaRequest {
                                identities: &ids,
                                wildcard: authz.wildcard,
                                tenant: &authz.tenant,
                                account_id: &authz.account_id,
                                method: &ch.kind,
                            },
                        )
                        .await
                }
                Err(_) => Err(super::validate::Failure {
                    problem_type: "serverInternal",
                    detail: "the CA's settings could not be read".into(),
                    blocked: false,
                }),
            };
        }
        let now = crate::now_unix();
        let (outcome, res) = match &result {
            Ok(()) => (
                "valid",
                ChallengeResult {
                    valid: true,
                    now,
                    valid_until: now + state.config.authz_valid_secs,
                    error: Vec::new(),
                },
            ),
            Err(f) => (
                "invalid",
                ChallengeResult {
                    valid: false,
                    now,
                    valid_until: 0,
                    error: problem_bytes(&problem(f.problem_type, f.detail.clone())),
                },
            ),
        };
        metrics::counter!("certgate_acme_validations_total",
            "protocol" => "acme", "tenant" => authz.tenant.clone(), "type" => ch.kind.clone(),
            "outcome" => match &result { Ok(()) => "valid", Err(f) if f.blocked => "blocked", Err(f) => f.problem_type })
        .increment(1);
        tracing::info!(
            tenant = %authz.tenant,
            challenge = %ch.challenge_id,
            kind = %ch.kind,
            identifier = %authz.identifier.value,
            outcome,
            ms = started.elapsed().as_millis() as u64,
            "acme validation"
        );
        let audit = AuditEntry::new(
            "acme.challenge.result",
            &authz.tenant,
            &caller,
            json!({"authz": authz.authz_id, "challenge": ch.challenge_id, "type": ch.kind,
                   "identifier": authz.identifier.value, "outcome": outcome,
                   "problem": result.as_ref().err().map(|f| f.problem_type)}),
        );
        let st = state.clone();
        let r = tokio::task::spawn_blocking(move || -> Result<Option<String>> {
            // Also moves the order that created the authorization to ready when this made it
            // so (same transaction, its own audit record): one write fewer per issuance.
            st.store()?.finish_challenge(
                &authz.tenant,
                &authz.authz_id,
                &ch.challenge_id,
                &res,
                &audit,
            )
        })
        .await;
        if !matches!(r, Ok(Ok(_))) {
            tracing::error!("storing a validation result failed");
        }
    }

    /// newOrder's store work, run in one blocking section.
    fn new_order_sync(&self, r: &NewOrderRequest, caller: &Caller) -> Result<OrderRec> {
        let t = self.tenant(&r.tenant)?;
        self.valid_account(&t.name, &r.account_id, &r.account_key_thumbprint)?;
        let wire: Vec<WireIdentifier> = r
            .identifiers
            .iter()
            .map(|i| WireIdentifier {
                kind: i.r#type.clone(),
                value: i.value.clone(),
            })
            .collect();
        let ids = validate_identifiers(&wire).map_err(|e| acme_error(&e))?;
        let profile = if r.profile.is_empty() {
            if t.default_profile.is_empty() {
                crate::profile::BUILTIN_PROFILE_NAME.to_owned()
            } else {
                t.default_profile.clone()
            }
        } else {
            r.profile.clone()
        };
        let Some(profile_rec) = self.0.core.store.latest_profile(&t.name, &profile)? else {
            return Err(CoreError::policy(
                "invalidProfile",
                format!("no profile {profile:?} in this tenant"),
            ));
        };
        let now = crate::now_unix();
        super::check_requested_window(&profile_rec, r.not_before_unix, r.not_after_unix, now)?;
        if !r.replaces.is_empty() {
            self.check_replaces(&t.name, &r.account_id, &r.replaces)?;
        }
        let cfg = &self.0.config;
        let expires = now + cfg.order_lifetime_secs;
        let store = self.0.store()?;
        let mut authz_ids = Vec::with_capacity(ids.len());
        let mut new_authzs = Vec::new();
        for id in &ids {
            let wildcard = id.is_wildcard();
            let base = IdentRec {
                kind: match id.kind {
                    IdentifierType::Dns => "dns".into(),
                    IdentifierType::Ip => "ip".into(),
                },
                value: id.value.strip_prefix("*.").unwrap_or(&id.value).to_owned(),
            };
            // Reuse a valid (or pending) authorization of this account for the identifier that
            // is still good for a while (RFC 8555 §7.1.4 allows it).
            if let Some(a) =
                store.reusable_authz(&t.name, &r.account_id, &base, wildcard, now + 60)?
            {
                authz_ids.push(a.authz_id);
                continue;
            }
            let mut challenges = Vec::new();
            for kind in challenge_types_for(id) {
                challenges.push(ChallengeRec {
                    challenge_id: random_id(12)?,
                    kind: kind.name().into(),
                    status: "pending".into(),
                    token: random_id(16)?,
                    validated_unix: 0,
                    error: Vec::new(),
                });
            }
            let a = AuthzRec {
                tenant: t.name.clone(),
                authz_id: random_id(12)?,
                account_id: r.account_id.clone(),
                identifier: base,
                wildcard,
                status: "pending".into(),
                expires_unix: now + cfg.authz_pending_secs,
                challenges,
                created_unix: now,
            };
            authz_ids.push(a.authz_id.clone());
            new_authzs.push(a);
        }
        let o = OrderRec {
            tenant: t.name.clone(),
            order_id: random_id(12)?,
            account_id: r.account_id.clone(),
            status: "pending".into(),
            expires_unix: expires,
            identifiers: ids
                .iter()
                .map(|i| IdentRec {
                    kind: match i.kind {
                        IdentifierType::Dns => "dns".into(),
                        IdentifierType::Ip => "ip".into(),
                    },
                    value: i.value.clone(),
                })
                .collect(),
            authz_ids,
            not_before_unix: r.not_before_unix,
            not_after_unix: r.not_after_unix,
            error: Vec::new(),
            certificate_serial_hex: String::new(),
            profile,
            replaces: r.replaces.clone(),
            created_unix: now,
            csr_der: Vec::new(),
        };
        let audit = AuditEntry::new(
            "acme.order.new",
            &t.name,
            caller,
            json!({"order": o.order_id, "account": o.account_id,
                   "identifiers": o.identifiers.iter().map(|i| &i.value).collect::<Vec<_>>(),
                   "new_authorizations": new_authzs.len(), "profile": o.profile}),
        );
        store.insert_order(&o, &new_authzs, &audit)?;
        metrics::counter!("certgate_acme_orders_total", "protocol" => "acme", "tenant" => t.name.clone()).increment(1);
        // A new order whose authorizations are all new is pending (nothing to recompute).
        let o = if new_authzs.len() == o.authz_ids.len() {
            o
        } else {
            self.refresh_order(o, caller)?
        };
        Ok(o)
    }

    async fn finalize_inner(&self, r: FinalizeRequest, caller: &Caller) -> Result<Order> {
        // Marks the finalization as under way here (a concurrent one proceeds anyway: issuance
        // is idempotent under the order's key).
        let _claim = Running::claim(&self.0.finalizing, &r.tenant, &r.order_id);
        // CAA again when the proof is older than the window (RFC 8659, BR 3.2.2.8), before the
        // order can move to processing: a refusal issues nothing.
        let now = crate::now_unix();
        super::caa::recheck_at_finalize(&self.0, &r.tenant, &r.account_id, &r.order_id, now)
            .await?;
        self.valid_account(&r.tenant, &r.account_id, &r.account_key_thumbprint)?;
        let store = self.0.store()?;
        let o = store
            .order(&r.tenant, &r.account_id, &r.order_id)?
            .ok_or_else(|| not_found("acme.order"))?;
        let o = blocking(|| self.refresh_order(o, caller))?;
        match o.status.as_str() {
            // A repeated finalize of an issued order answers the same order (same certificate).
            "valid" => return Ok(order_proto(&o)),
            "ready" | "processing" => {}
            other => {
                return Err(CoreError::policy(
                    "orderNotReady",
                    format!("the order is {other}, not ready"),
                ));
            }
        }
        let ids: Vec<certgate_acme::payload::Identifier> = o
            .identifiers
            .iter()
            .map(|i| certgate_acme::payload::Identifier {
                kind: if i.kind == "ip" {
                    IdentifierType::Ip
                } else {
                    IdentifierType::Dns
                },
                value: i.value.clone(),
            })
            .collect();
        certgate_acme::state::check_csr(&r.csr_der, &ids).map_err(|e| acme_error(&e))?;
        if o.status == "ready" {
            let audit = AuditEntry::new(
                "acme.order.finalize",
                &o.tenant,
                caller,
                json!({"order": o.order_id, "account": o.account_id}),
            );
            let update = OrderUpdate {
                status: "processing".into(),
                csr_der: r.csr_der.clone(),
                ..OrderUpdate::default()
            };
            // Compare-and-set: only one finalize moves ready → processing; a concurrent one
            // falls through to the idempotent issue below and gets the same certificate.
            blocking(|| {
                store.set_order_status(&o.tenant, &o.order_id, &["ready"], &update, &audit)
            })?;
        }
        let issue = certgate_proto::core::IssueRequest {
            tenant: o.tenant.clone(),
            profile: o.profile.clone(),
            request: Some(certgate_proto::core::issue_request::Request::CsrDer(
                r.csr_der.clone(),
            )),
            validated_identifiers: o
                .identifiers
                .iter()
                .map(|i| certgate_proto::core::Identifier {
                    r#type: if i.kind == "ip" {
                        certgate_proto::core::identifier::Type::Ip as i32
                    } else {
                        certgate_proto::core::identifier::Type::Dns as i32
                    },
                    value: i.value.clone(),
                })
                .collect(),
            protocol: "acme".into(),
            client_identity: o.account_id.clone(),
            idempotency_key: format!("acme-order:{}", o.order_id),
            // The order's requested window exactly as stored: a retried finalize is the same
            // request, so the same certificate (I-3).
            validity_seconds: 0,
            not_before_unix: o.not_before_unix,
            not_after_unix: o.not_after_unix,
            issuer_id: String::new(),
            replaces_serial: if o.replaces.is_empty() {
                String::new()
            } else {
                certgate_acme::ari::CertId::parse(&o.replaces)
                    .map(|id| crate::x509::serial_hex(&id.serial))
                    .unwrap_or_default()
            },
            await_confirmation: false,
        };
        let mut issued = None;
        match self.0.core.issuer.issue(issue, caller).await {
            Ok(resp) => {
                let audit = AuditEntry::new(
                    "acme.order.valid",
                    &o.tenant,
                    caller,
                    json!({"order": o.order_id, "serial": resp.serial_hex}),
                );
                let update = OrderUpdate {
                    status: "valid".into(),
                    error: Vec::new(),
                    certificate_serial_hex: resp.serial_hex.clone(),
                    csr_der: Vec::new(),
                };
                if blocking(|| {
                    store.set_order_status(&o.tenant, &o.order_id, &["processing"], &update, &audit)
                })? {
                    // This call stored the change (compare-and-set): answer it without a read.
                    let mut done = o.clone();
                    done.status = update.status;
                    done.error = update.error;
                    done.certificate_serial_hex = update.certificate_serial_hex;
                    issued = Some(done);
                }
            }
            Err(CoreError::AlreadyExists { .. }) => {
                // The same order finalized concurrently with a different CSR: the first won.
                return Err(CoreError::policy(
                    "orderNotReady",
                    "the order is already being finalized with another CSR",
                ));
            }
            Err(CoreError::Policy { rule, message } | CoreError::Malformed { rule, message }) => {
                let kind = if rule.starts_with("csr.") || rule == "profile.key" {
                    "badCSR"
                } else if rule == "request.validity" || rule == "profile.max_validity" {
                    // The order's notBefore/notAfter no longer fit (time passed, profile changed).
                    "malformed"
                } else {
                    "rejectedIdentifier"
                };
                let p = problem(kind, format!("{message} ({rule})"));
                let audit = AuditEntry::new(
                    "acme.order.invalid",
                    &o.tenant,
                    caller,
                    json!({"order": o.order_id, "rule": rule}),
                );
                let update = OrderUpdate {
                    status: "invalid".into(),
                    error: problem_bytes(&p),
                    certificate_serial_hex: String::new(),
                    csr_der: Vec::new(),
                };
                blocking(|| {
                    store.set_order_status(&o.tenant, &o.order_id, &["processing"], &update, &audit)
                })?;
            }
            Err(e) => {
                // Transient (signer, store, overload): back to ready so the client may retry.
                let audit = AuditEntry::new(
                    "acme.order.retry",
                    &o.tenant,
                    caller,
                    json!({"order": o.order_id}),
                );
                let update = OrderUpdate {
                    status: "ready".into(),
                    ..OrderUpdate::default()
                };
                let _ = blocking(|| {
                    store.set_order_status(&o.tenant, &o.order_id, &["processing"], &update, &audit)
                });
                return Err(e);
            }
        }
        if let Some(done) = issued {
            return Ok(order_proto(&done));
        }
        let o = store
            .order(&r.tenant, &r.account_id, &r.order_id)?
            .ok_or_else(|| not_found("acme.order"))?;
        Ok(order_proto(&o))
    }
}

fn bad_jwk(e: certgate_acme::Error) -> CoreError {
    acme_error(&e)
}

fn parse_jwk(json_text: &str) -> Result<Jwk> {
    let v: serde_json::Value = serde_json::from_str(json_text)
        .map_err(|_| CoreError::malformed("badPublicKey", "the JWK is not JSON"))?;
    Jwk::from_value(&v).map_err(bad_jwk)
}

#[tonic::async_trait]
impl Acme for AcmeService {
    async fn get_tenant_meta(
        &self,
        req: Request<GetTenantMetaRequest>,
    ) -> Result<Response<TenantMeta>, Status> {
        let caller = caller_of(&req);
        self.check(&caller, "GetTenantMeta")?;
        let r = req.into_inner();
        let t = blocking(|| self.tenant(&r.tenant))?;
        let store = self.0.store()?;
        let settings = blocking(|| store.acme_settings(&t.name))?.unwrap_or_default();
        let profiles = blocking(|| self.0.core.store.latest_profiles(&t.name))?
            .into_iter()
            .map(|p| (p.name, format!("version {}", p.version)))
            .collect();
        let default_profile = if t.default_profile.is_empty() {
            crate::profile::BUILTIN_PROFILE_NAME.to_owned()
        } else {
            t.default_profile.clone()
        };
        Ok(Response::new(TenantMeta {
            tenant: t.name,
            terms_of_service: settings.terms_of_service,
            website: settings.website,
            caa_identities: settings.caa_identities,
            external_account_required: settings.external_account_required,
            profiles,
            default_profile,
        }))
    }

    async fn new_account(
        &self,
        req: Request<NewAccountRequest>,
    ) -> Result<Response<NewAccountResponse>, Status> {
        let caller = caller_of(&req);
        self.check(&caller, "NewAccount")?;
        let r = req.into_inner();
        let t = blocking(|| self.tenant(&r.tenant))?;
        let store = self.0.store()?;
        let jwk = parse_jwk(&r.jwk_json)?;
        let thumbprint = jwk.thumbprint();
        if let Some(existing) = blocking(|| store.account_by_thumbprint(&t.name, &thumbprint))? {
            return Ok(Response::new(NewAccountResponse {
                account: Some(account_proto(&existing)),
                created: false,
            }));
        }
        if r.only_return_existing {
            return Err(
                CoreError::not_found("accountDoesNotExist", "no account has this key").into(),
            );
        }
        let settings = blocking(|| store.acme_settings(&t.name))?.unwrap_or_default();
        if !settings.terms_of_service.is_empty() && !r.terms_agreed {
            return Err(acme_error(&certgate_acme::Error::TermsNotAgreed).into());
        }
        validate_contacts(&r.contacts).map_err(|e| acme_error(&e))?;
        let account_id = random_id(16)?;
        let mut eab_key_id = String::new();
        if !r.external_account_binding_json.is_empty() {
            let v: serde_json::Value = serde_json::from_slice(&r.external_account_binding_json)
                .map_err(|_| {
                    CoreError::malformed("malformed", "externalAccountBinding is not JSON")
                })?;
            let eab = ExternalAccountBinding::parse(&v, &r.new_account_url)
                .map_err(|e| acme_error(&e))?;
            let key = blocking(|| store.eab_key(&t.name, eab.key_id()))?;
            let Some(key) = key.filter(|k| k.account_id.is_empty()) else {
                return Err(CoreError::policy(
                    "unauthorized",
                    "the external account key is unknown or already used",
                )
                .into());
            };
            eab.verify(&key.key, &jwk).map_err(|e| acme_error(&e))?;
            eab_key_id = key.key_id.clone();
        } else if settings.external_account_required {
            return Err(acme_error(&certgate_acme::Error::ExternalAccountRequired).into());
        }
        let rec = AccountRec {
            tenant: t.name.clone(),
            account_id,
            status: "valid".into(),
            contacts: r.contacts.clone(),
            terms_agreed: r.terms_agreed,
            jwk_json: jwk.canonical_json(),
            jwk_thumbprint: thumbprint,
            eab_key_id,
            created_unix: crate::now_unix(),
        };
        let audit = AuditEntry::new(
            "acme.account.new",
            &t.name,
            &caller,
            json!({"account": rec.account_id, "thumbprint": rec.jwk_thumbprint,
                   "eab_key_id": rec.eab_key_id, "contacts": rec.contacts.len()}),
        );
        let out = blocking(|| store.create_account(&rec, &audit))?;
        let (account, created) = match out {
            NewAccountOutcome::Created(a) => (a, true),
            NewAccountOutcome::Existing(a) => (a, false),
        };
        metrics::counter!("certgate_acme_accounts_total", "protocol" => "acme", "tenant" => t.name.clone(),
            "outcome" => if created { "created" } else { "existing" })
        .increment(1);
        Ok(Response::new(NewAccountResponse {
            account: Some(account_proto(&account)),
            created,
        }))
    }

    async fn get_account(
        &self,
        req: Request<GetAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let caller = caller_of(&req);
        self.check(&caller, "GetAccount")?;
        let r = req.into_inner();
        let store = self.0.store()?;
        let a = match &r.by {
            Some(get_account_request::By::AccountId(id)) => {
                blocking(|| store.account(&r.tenant, id))?
            }
            Some(get_account_request::By::JwkThumbprint(tp)) => {
                blocking(|| store.account_by_thumbprint(&r.tenant, tp))?
            }
            None => None,
        };
        let a = a.ok_or_else(|| CoreError::not_found("accountDoesNotExist", "no such account"))?;
        Ok(Response::new(account_proto(&a)))
    }

    async fn update_account(
        &self,
        req: Request<UpdateAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let caller = caller_of(&req);
        self.check(&caller, "UpdateAccount")?;
        let r = req.into_inner();
        let mut a =
            blocking(|| self.valid_account(&r.tenant, &r.account_id, &r.account_key_thumbprint))?;
        if r.set_contacts {
            validate_contacts(&r.contacts).map_err(|e| acme_error(&e))?;
            a.contacts = r.contacts.clone();
        }
        if r.deactivate {
            a.status = "deactivated".into();
        }
        let audit = AuditEntry::new(
            "acme.account.update",
            &r.tenant,
            &caller,
            json!({"account": a.account_id, "contacts": r.set_contacts, "deactivate": r.deactivate}),
        );
        let store = self.0.store()?;
        blocking(|| store.update_account(&a, &audit))?;
        Ok(Response::new(account_proto(&a)))
    }

    async fn key_change(
        &self,
        req: Request<KeyChangeRequest>,
    ) -> Result<Response<KeyChangeResponse>, Status> {
        let caller = caller_of(&req);
        self.check(&caller, "KeyChange")?;
        let r = req.into_inner();
        blocking(|| self.valid_account(&r.tenant, &r.account_id, &r.account_key_thumbprint))?;
        let jwk = parse_jwk(&r.new_jwk_json)?;
        let tp = jwk.thumbprint();
        let audit = AuditEntry::new(
            "acme.account.key_change",
            &r.tenant,
            &caller,
            json!({"account": r.account_id, "thumbprint": tp}),
        );
        let store = self.0.store()?;
        let conflict = blocking(|| {
            store.change_account_key(&r.tenant, &r.account_id, &jwk.canonical_json(), &tp, &audit)
        })?;
        let a = blocking(|| store.account(&r.tenant, &r.account_id))?
            .ok_or_else(|| CoreError::not_found("accountDoesNotExist", "no such account"))?;
        Ok(Response::new(KeyChangeResponse {
            account: Some(account_proto(&a)),
            conflicting_account_id: conflict.unwrap_or_default(),
        }))
    }

    async fn list_orders(
        &self,
        req: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let caller = caller_of(&req);
        self.check(&caller, "ListOrders")?;
        let r = req.into_inner();
        let store = self.0.store()?;
        blocking(|| store.account(&r.tenant, &r.account_id))?
            .ok_or_else(|| CoreError::not_found("accountDoesNotExist", "no such account"))?;
        self.stated_account(&r.tenant, &r.account_id, &r.account_key_thumbprint)?;
        let before = if r.cursor.is_empty() {
            None
        } else {
            Some(
                r.cursor
                    .parse::<i64>()
                    .map_err(|_| CoreError::malformed("malformed", "bad cursor"))?,
            )
        };
        let size = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let page = blocking(|| store.list_orders(&r.tenant, &r.account_id, before, size))?;
        Ok(Response::new(ListOrdersResponse {
            order_ids: page.order_ids,
            next_cursor: page.next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn new_order(&self, req: Request<NewOrderRequest>) -> Result<Response<Order>, Status> {
        let caller = caller_of(&req);
        self.check(&caller, "NewOrder")?;
        let r = req.into_inner();
        // One blocking section for the whole request (lookups and the insert): each section
        // hands the async worker off to another thread, which cost more than the lookups.
        let o = blocking(|| self.new_order_sync(&r, &caller))?;
        Ok(Response::new(order_proto(&o)))
    }

    async fn get_order(&self, req: Request<GetOrderRequest>) -> Result<Response<Order>, Status> {
        let caller = caller_of(&req);
        self.check(&caller, "GetOrder")?;
        let r = req.into_inner();
        let store = self.0.store()?;
        // One blocking section for the lookups (each would otherwise hand the worker off).
        let o = blocking(|| {
            self.stated_account(&r.tenant, &r.account_id, &r.account_key_thumbprint)?;
            let o = store
                .order(&r.tenant, &r.account_id, &r.order_id)?
                .ok_or_else(|| not_found("acme.order"))?;
            self.refresh_order(o, &caller)
        })?;
        // Processing with no finalization under way here: left by a core that stopped between
        // accepting the CSR and storing the certificate. Issue again with the stored CSR under
        // the same idempotency key (the recorded intent is signed: one certificate).
        if o.status == "processing"
            && !o.csr_der.is_empty()
            && Running::claim(&self.0.finalizing, &r.tenant, &r.order_id).is_some()
        {
            let again = FinalizeRequest {
                tenant: r.tenant.clone(),
                account_id: r.account_id.clone(),
                order_id: r.order_id.clone(),
                csr_der: o.csr_der.clone(),
                account_key_thumbprint: r.account_key_thumbprint.clone(),
            };
            match self.finalize_inner(again, &caller).await {
                Ok(done) => return Ok(Response::new(done)),
                Err(e) => tracing::warn!(error = %e, order = %r.order_id, "resuming finalize"),
            }
        }
        Ok(Response::new(order_proto(&o)))
    }

    async fn get_authorization(
        &self,
        req: Request<GetAuthorizationRequest>,
    ) -> Result<Response<Authorization>, Status> {
        let caller = caller_of(&req);
        self.check(&caller, "GetAuthorization")?;
        let r = req.into_inner();
        let store = self.0.store()?;
        let a = self.reading(|| {
            self.stated_account(&r.tenant, &r.account_id, &r.account_key_thumbprint)?;
            store
                .authz(&r.tenant, &r.account_id, &r.authz_id)?
                .ok_or_else(|| not_found("acme.authorization"))
        })?;
        Ok(Response::new(authz_proto(&a, crate::now_unix())))
    }

    async fn deactivate_authorization(
        &self,
        req: Request<GetAuthorizationRequest>,
    ) -> Result<Response<Authorization>, Status> {
        let caller = caller_of(&req);
        self.check(&caller, "DeactivateAuthorization")?;
        let r = req.into_inner();
        self.stated_account(&r.tenant, &r.account_id, &r.account_key_thumbprint)?;
        let store = self.0.store()?;
        let a = blocking(|| store.authz(&r.tenant, &r.account_id, &r.authz_id))?
            .ok_or_else(|| not_found("acme.authorization"))?;
        let now = crate::now_unix();
        let status = authz_status(&a, now);
        if status != "pending" && status != "valid" {
            return Err(CoreError::malformed(
                "malformed",
                format!("an authorization that is {status} cannot be deactivated"),
            )
            .into());
        }
        let audit = AuditEntry::new(
            "acme.authz.deactivate",
            &r.tenant,
            &caller,
            json!({"authz": a.authz_id}),
        );
        blocking(|| {
            store.set_authz_status(
                &r.tenant,
                &a.authz_id,
                &["pending", "valid"],
                "deactivated",
                &audit,
            )
        })?;
        let a = blocking(|| store.authz(&r.tenant, &r.account_id, &r.authz_id))?
            .ok_or_else(|| not_found("acme.authorization"))?;
        Ok(Response::new(authz_proto(&a, now)))
    }

    async fn respond_challenge(
        &self,
        req: Request<RespondChallengeRequest>,
    ) -> Result<Response<RespondChallengeResponse>, Status> {
        let caller = caller_of(&req);
        self.check(&caller, "RespondChallenge")?;
        let r = req.into_inner();
        let store = self.0.store()?;
        // One blocking section for the lookups and the compare-and-set that starts the
        // validation (each section hands the async worker off to another thread).
        let (account, authz, idx, start) = blocking(|| {
            let account =
                self.valid_account(&r.tenant, &r.account_id, &r.account_key_thumbprint)?;
            let (authz, idx) = store
                .authz_of_challenge(&r.tenant, &r.account_id, &r.challenge_id)?
                .ok_or_else(|| not_found("acme.challenge"))?;
            let now = crate::now_unix();
            let ch = authz
                .challenges
                .get(idx)
                .ok_or_else(|| CoreError::Store("challenge index".into()))?;
            let authz_pending = authz_status(&authz, now) == "pending";
            // Processing with no validation running here: left by a core that stopped mid-way.
            let orphan = ch.status == "processing"
                && authz_pending
                && Running::claim(&self.0.running, &r.tenant, &ch.challenge_id).is_some();
            let mut start = None;
            if (ch.status == "pending" || orphan) && authz_pending {
                // Bounded (I-8): refuse at once rather than queue when validations are saturated.
                let permit = self
                    .0
                    .validations
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| CoreError::Overloaded)?;
                // Claimed before the compare-and-set, so no concurrent call sees it as an orphan.
                let running = Running::claim(&self.0.running, &r.tenant, &ch.challenge_id);
                let started = match running {
                    None => false,
                    Some(_) if orphan => {
                        self.0.core.store.append_audit(&AuditEntry::new(
                            "acme.challenge.resume",
                            &r.tenant,
                            &caller,
                            json!({"authz": authz.authz_id, "challenge": ch.challenge_id}),
                        ))?;
                        true
                    }
                    Some(_) => {
                        let audit = AuditEntry::new(
                            "acme.challenge.respond",
                            &r.tenant,
                            &caller,
                            json!({"authz": authz.authz_id, "challenge": ch.challenge_id, "type": ch.kind}),
                        );
                        store.start_challenge(
                            &r.tenant,
                            &authz.authz_id,
                            &ch.challenge_id,
                            &audit,
                        )?
                    }
                };
                if let (true, Some(running)) = (started, running) {
                    start = Some((permit, running));
                }
            }
            Ok::<_, CoreError>((account, authz, idx, start))
        })?;
        let ch = authz
            .challenges
            .get(idx)
            .cloned()
            .ok_or_else(|| CoreError::Store("challenge index".into()))?;
        let mut handle = None;
        if let Some((permit, running)) = start {
            let jwk = parse_jwk(&account.jwk_json)?;
            let key_auth = jwk.key_authorization(&ch.token);
            handle = Some(tokio::spawn(Self::run_validation(
                self.0.clone(),
                authz.clone(),
                idx,
                key_auth,
                caller.clone(),
                permit,
                running,
            )));
        }
        if let Some(h) = handle {
            let wait = r.wait_ms.min(self.0.config.max_wait_ms);
            if wait > 0 {
                let _ = tokio::time::timeout(Duration::from_millis(u64::from(wait)), h).await;
            }
        }
        let a = self
            .reading(|| store.authz(&r.tenant, &r.account_id, &authz.authz_id))?
            .ok_or_else(|| not_found("acme.challenge"))?;
        let ch = a
            .challenges
            .iter()
            .find(|c| c.challenge_id == r.challenge_id)
            .ok_or_else(|| not_found("acme.challenge"))?;
        Ok(Response::new(RespondChallengeResponse {
            challenge: Some(challenge_proto(ch)),
            authz_id: a.authz_id.clone(),
        }))
    }

    async fn finalize(&self, req: Request<FinalizeRequest>) -> Result<Response<Order>, Status> {
        let caller = caller_of(&req);
        self.check(&caller, "Finalize")?;
        let r = req.into_inner();
        let tenant = r.tenant.clone();
        let out = self.finalize_inner(r, &caller).await;
        let outcome = match &out {
            Ok(o) => o.status.clone(),
            Err(_) => "error".into(),
        };
        metrics::counter!("certgate_acme_finalize_total", "protocol" => "acme", "tenant" => tenant, "outcome" => outcome)
            .increment(1);
        Ok(Response::new(out?))
    }

    async fn get_order_certificate(
        &self,
        req: Request<GetOrderCertificateRequest>,
    ) -> Result<Response<CertificateChain>, Status> {
        let caller = caller_of(&req);
        self.check(&caller, "GetOrderCertificate")?;
        let r = req.into_inner();
        let store = self.0.store()?;
        let serial = r.serial_hex.trim().to_ascii_lowercase();
        let core_store = self.0.core.store.as_ref();
        let (cert, chain) = self.reading(|| {
            self.stated_account(&r.tenant, &r.account_id, &r.account_key_thumbprint)?;
            let o = store
                .order_by_serial(&r.tenant, &serial)?
                .filter(|o| o.account_id == r.account_id)
                .ok_or_else(|| not_found("acme.certificate"))?;
            let cert = core_store
                .get_cert(&o.tenant, &o.certificate_serial_hex)?
                .ok_or_else(|| not_found("acme.certificate"))?;
            let chain = chain_of(core_store, &cert.issuer_id)?;
            Ok::<_, CoreError>((cert, chain))
        })?;
        // Issuing CA up to, not including, the root the client is expected to have.
        let chain_der = chain
            .into_iter()
            .filter(|c| !c.parent_ca_id.is_empty())
            .map(|c| c.cert_der)
            .collect();
        Ok(Response::new(CertificateChain {
            certificate_der: cert.cert_der,
            chain: Some(Chain { chain_der }),
            alternates: Vec::new(),
        }))
    }

    async fn revoke_certificate(
        &self,
        req: Request<RevokeCertificateRequest>,
    ) -> Result<Response<RevokeCertificateResponse>, Status> {
        let caller = caller_of(&req);
        self.check(&caller, "RevokeCertificate")?;
        let r = req.into_inner();
        if r.reason > 10 || r.reason == 7 {
            return Err(acme_error(&certgate_acme::Error::BadRevocationReason(
                u8::try_from(r.reason).unwrap_or(u8::MAX),
            ))
            .into());
        }
        let serial = crate::x509::serial_hex(
            &crate::x509::serial_of(&r.certificate_der)
                .map_err(|_| CoreError::malformed("malformed", "certificate does not parse"))?,
        );
        let core_store = self.0.core.store.clone();
        let cert = blocking(|| core_store.get_cert(&r.tenant, &serial))?
            .filter(|c| c.cert_der == r.certificate_der)
            .ok_or_else(|| not_found("acme.certificate"))?;
        let store = self.0.store()?;
        let client = match &r.auth {
            Some(revoke_certificate_request::Auth::AccountId(account_id)) => {
                blocking(|| self.valid_account(&r.tenant, account_id, &r.account_key_thumbprint))?;
                let owner = blocking(|| store.order_by_serial(&r.tenant, &serial))?
                    .is_some_and(|o| o.account_id == *account_id);
                if !owner {
                    // RFC 8555 §7.6: or an account holding valid authorizations for every name.
                    let now = crate::now_unix();
                    let ids = cert_identifiers(&cert.cert_der)?;
                    let mut all = !ids.is_empty();
                    for id in &ids {
                        let (base, wildcard) = match id.value.strip_prefix("*.") {
                            Some(b) => (
                                IdentRec {
                                    kind: id.kind.clone(),
                                    value: b.to_owned(),
                                },
                                true,
                            ),
                            None => (id.clone(), false),
                        };
                        let a = blocking(|| {
                            store.reusable_authz(&r.tenant, account_id, &base, wildcard, now)
                        })?;
                        if a.is_none_or(|a| a.status != "valid") {
                            all = false;
                            break;
                        }
                    }
                    if !all {
                        return Err(CoreError::policy(
                            "unauthorized",
                            "this account neither ordered the certificate nor holds valid authorizations for all its names",
                        )
                        .into());
                    }
                }
                format!("account:{account_id}")
            }
            Some(revoke_certificate_request::Auth::CertificateKeyJwkJson(j)) => {
                let jwk = parse_jwk(j)?;
                let rc = certgate_acme::payload::RevokeCert {
                    certificate: r.certificate_der.clone(),
                    reason: u8::try_from(r.reason).unwrap_or(0),
                };
                rc.check_signed_by_certificate_key(&jwk)
                    .map_err(|e| acme_error(&e))?;
                "certificate-key".to_owned()
            }
            None => {
                return Err(CoreError::malformed("malformed", "no account and no key").into());
            }
        };
        if cert.revoked {
            return Err(acme_error(&certgate_acme::Error::AlreadyRevoked).into());
        }
        let now = crate::now_unix();
        let mut hashed = b"certgate-revoke-request-v1\0".to_vec();
        hashed.extend_from_slice(serial.as_bytes());
        hashed.push(0);
        hashed.extend_from_slice(&r.reason.to_be_bytes());
        let op = RevokeOp {
            serial_hex: serial.clone(),
            reason: r.reason,
            now,
            idem_key: format!("acme-revoke:{serial}:{}", r.reason),
            request_hash: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &hashed)
                .as_ref()
                .to_vec(),
        };
        let audit = AuditEntry::new(
            "revoke",
            &r.tenant,
            &caller,
            json!({"serial": serial, "reason": r.reason, "idempotency_key": op.idem_key,
                   "protocol": "acme", "client": client}),
        );
        let tenant = r.tenant.clone();
        let out = blocking(|| core_store.revoke(&tenant, &op, &audit))?;
        // The revocation queued its OCSP re-signing in the same transaction; wake the worker
        // (as Core.Revoke does).
        if let Some(engine) = self.0.core.issuer.status() {
            engine.poke();
        }
        let Some((rec, already)) = out else {
            return Err(not_found("acme.certificate").into());
        };
        if already {
            return Err(acme_error(&certgate_acme::Error::AlreadyRevoked).into());
        }
        Ok(Response::new(RevokeCertificateResponse {
            serial_hex: rec.serial_hex,
            revoked_at_unix: rec.revoked_at_unix,
        }))
    }
}
