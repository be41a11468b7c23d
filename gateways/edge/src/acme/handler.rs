//! The ACME HTTP endpoints (RFC 8555 §7, RFC 9773, draft-ietf-acme-profiles).
//!
//! Per POST: content type → flattened JWS and header rules, `url` = the URL built by
//! [`AcmeUrls`] from the configured base URL (never from `Host`) → the key (`jwk`, or the
//! account's key fetched by `kid` with `Acme.GetAccount`) → signature → nonce redeemed once →
//! the endpoint. Every response carries a fresh `Replay-Nonce`, `Link rel="index"` and
//! `Cache-Control: no-store`; every failure is an ACME problem document.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use certgate_acme::ari::{self, CertId};
use certgate_acme::directory::{self, AcmeUrls, DirectoryMeta};
use certgate_acme::jws::{self, Payload, Verified};
use certgate_acme::nonce::{NonceStore, NonceVerifier, REPLAY_NONCE_HEADER};
use certgate_acme::payload::{
    self, AccountUpdate, Finalize, NewAccount, WireAccountUpdate, WireNewOrder, WireRevokeCert,
};
use certgate_acme::problem::PROBLEM_CONTENT_TYPE;
use certgate_proto::acme as pb;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::Full;

use super::AcmeConfig;
use super::accounts::{AccountCache, CachedAccount};
use super::render::{self, Fail};
use crate::error::{EdgeError, EdgeResponse};
use crate::metrics::{self, Endpoint};
use crate::ratelimit::{RateLimiter, Rule, registered_domain};
use crate::router::{EdgeContext, EdgeRequest, Handler, HandlerFuture};
use crate::tenant::{DEFAULT_TENANT, TenantDirectory};

/// How long ARI clients should wait before asking again (RFC 9773 §4.3: hours).
const ARI_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);

/// The ACME handler, mounted at `/acme/` on the HTTPS listener.
pub struct AcmeHandler {
    cfg: AcmeConfig,
    accounts: AccountCache,
    nonces: NonceVerifier,
    store: Arc<dyn NonceStore>,
    tenants: TenantDirectory,
    limiter: Arc<dyn RateLimiter>,
}

/// The route inside one tenant's ACME tree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Directory,
    NewNonce,
    NewAccount,
    NewOrder,
    RevokeCert,
    KeyChange,
    RenewalInfo(String),
    Account(String),
    Orders(String),
    Order(String),
    Finalize(String),
    Authz(String),
    Challenge(String, String),
    Cert(String, usize),
}

fn id_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.contains('/')
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let path = path.strip_prefix('/').unwrap_or(path);
        let parts: Vec<&str> = path.split('/').collect();
        Some(match parts.as_slice() {
            ["directory"] => Route::Directory,
            ["new-nonce"] => Route::NewNonce,
            ["new-acct"] => Route::NewAccount,
            ["new-order"] => Route::NewOrder,
            ["revoke-cert"] => Route::RevokeCert,
            ["key-change"] => Route::KeyChange,
            ["renewal-info", id] if id_ok(id) => Route::RenewalInfo((*id).to_owned()),
            ["acct", id] if id_ok(id) => Route::Account((*id).to_owned()),
            ["acct", id, "orders"] if id_ok(id) => Route::Orders((*id).to_owned()),
            ["order", id] if id_ok(id) => Route::Order((*id).to_owned()),
            ["finalize", id] if id_ok(id) => Route::Finalize((*id).to_owned()),
            ["authz", id] if id_ok(id) => Route::Authz((*id).to_owned()),
            ["chall", a, c] if id_ok(a) && id_ok(c) => {
                Route::Challenge((*a).to_owned(), (*c).to_owned())
            }
            ["cert", id] if id_ok(id) => Route::Cert((*id).to_owned(), 0),
            ["cert", id, n] if id_ok(id) => Route::Cert((*id).to_owned(), n.parse().ok()?),
            _ => return None,
        })
    }

    /// The URL of this route as [`AcmeUrls`] builds it (the JWS `url` must equal it).
    fn url(&self, urls: &AcmeUrls) -> String {
        match self {
            Route::Directory => urls.directory(),
            Route::NewNonce => urls.new_nonce(),
            Route::NewAccount => urls.new_account(),
            Route::NewOrder => urls.new_order(),
            Route::RevokeCert => urls.revoke_cert(),
            Route::KeyChange => urls.key_change(),
            Route::RenewalInfo(id) => format!("{}/{id}", urls.renewal_info()),
            Route::Account(id) => urls.account(id),
            Route::Orders(id) => render::orders_url(urls, id),
            Route::Order(id) => urls.order(id),
            Route::Finalize(id) => urls.finalize(id),
            Route::Authz(id) => urls.authorization(id),
            Route::Challenge(a, c) => render::challenge_url(urls, a, c),
            Route::Cert(id, 0) => urls.certificate(id),
            Route::Cert(id, n) => format!("{}/{n}", urls.certificate(id)),
        }
    }

    fn endpoint(&self) -> &'static str {
        match self {
            Route::Directory => "directory",
            Route::NewNonce => "new-nonce",
            Route::NewAccount => "new-account",
            Route::NewOrder => "new-order",
            Route::RevokeCert => "revoke-cert",
            Route::KeyChange => "key-change",
            Route::RenewalInfo(_) => "renewal-info",
            Route::Account(_) => "account",
            Route::Orders(_) => "orders",
            Route::Order(_) => "order",
            Route::Finalize(_) => "finalize",
            Route::Authz(_) => "authz",
            Route::Challenge(..) => "challenge",
            Route::Cert(..) => "cert",
        }
    }
}

/// One successful answer before the common headers are added.
struct Answer {
    status: StatusCode,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    location: Option<String>,
    links: Vec<String>,
    retry_after: Option<Duration>,
}

impl Answer {
    fn json(status: StatusCode, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: Some("application/json"),
            body,
            location: None,
            links: Vec::new(),
            retry_after: None,
        }
    }
    fn empty(status: StatusCode) -> Self {
        Self {
            status,
            content_type: None,
            body: Vec::new(),
            location: None,
            links: Vec::new(),
            retry_after: None,
        }
    }
    fn location(mut self, url: String) -> Self {
        self.location = Some(url);
        self
    }
    fn link(mut self, url: &str, rel: &str) -> Self {
        self.links.push(format!("<{url}>;rel=\"{rel}\""));
        self
    }
    fn retry_if(mut self, cond: bool) -> Self {
        if cond {
            self.retry_after = Some(Duration::from_secs(1));
        }
        self
    }
}

/// Which key reference an endpoint accepts (RFC 8555 §6.2).
#[derive(Debug, Clone, Copy)]
enum KeyRule {
    /// newAccount.
    Jwk,
    /// Everything but newAccount and revokeCert.
    Kid,
    /// revokeCert: the account's `kid` or the certificate key's `jwk`.
    Either,
}

/// A request whose JWS verified, with its account (for `kid` requests).
struct Authed {
    verified: Verified,
    account: Option<Arc<CachedAccount>>,
}

impl Authed {
    fn account_id(&self) -> Result<&str, Fail> {
        self.account
            .as_ref()
            .map(|a| a.account.account_id.as_str())
            .ok_or(Fail::Acme(certgate_acme::Error::ServerInternal))
    }

    /// The thumbprint of the account key that verified the request ("" for `jwk` requests),
    /// stated to the core on every call (it refuses a key that is no longer the account's).
    fn key_thumbprint(&self) -> String {
        self.account
            .as_ref()
            .map(|a| a.account.jwk_thumbprint.clone())
            .unwrap_or_default()
    }
}

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    // A CSPRNG failure leaves zeros; the HMAC still authenticates the nonce, only its
    // uniqueness would suffer, and aws-lc's RNG does not fail in practice.
    let _ = aws_lc_rs::rand::fill(&mut b);
    b
}

/// Retry-After with 0–3 % jitter, whole seconds, at least 1.
fn jittered(d: Duration) -> u64 {
    let mut b = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let frac = f64::from(u16::from_be_bytes(b)) / f64::from(u16::MAX) * 0.03;
    let secs = d.as_secs_f64() * (1.0 + frac);
    (secs.ceil() as u64).max(1)
}

impl AcmeHandler {
    /// The handler; `nonce_key` is the fleet key (≥ 32 bytes).
    pub fn new(
        cfg: AcmeConfig,
        nonce_key: &zeroize::Zeroizing<Vec<u8>>,
        store: Arc<dyn NonceStore>,
        tenants: TenantDirectory,
        limiter: Arc<dyn RateLimiter>,
    ) -> Result<Self, certgate_acme::Error> {
        let nonces = NonceVerifier::new(1, nonce_key, Duration::from_secs(cfg.nonce_ttl_seconds))?;
        Ok(Self {
            accounts: AccountCache::new(
                cfg.account_cache_capacity,
                Duration::from_secs(cfg.account_cache_ttl_seconds),
            ),
            cfg,
            nonces,
            store,
            tenants,
            limiter,
        })
    }

    fn urls(&self, tenant: &str) -> Result<AcmeUrls, Fail> {
        let t = (tenant != DEFAULT_TENANT).then_some(tenant);
        Ok(AcmeUrls::new(&self.cfg.base_url, t)?)
    }

    fn nonce(&self) -> String {
        self.nonces.mint(SystemTime::now(), random16())
    }

    /// Adds the headers every ACME response carries.
    fn finish(&self, urls: Option<&AcmeUrls>, endpoint: &'static str, a: Answer) -> EdgeResponse {
        let mut r = http::Response::new(Full::new(Bytes::from(a.body)));
        *r.status_mut() = a.status;
        let h = r.headers_mut();
        if let Some(ct) = a.content_type {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        if let Ok(v) = HeaderValue::from_str(&self.nonce()) {
            h.insert(REPLAY_NONCE_HEADER, v);
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(u) = urls
            && let Ok(v) = HeaderValue::from_str(&directory::index_link(u))
        {
            h.append(header::LINK, v);
        }
        for l in &a.links {
            if let Ok(v) = HeaderValue::from_str(l) {
                h.append(header::LINK, v);
            }
        }
        if let Some(loc) = a.location
            && let Ok(v) = HeaderValue::from_str(&loc)
        {
            h.insert(header::LOCATION, v);
        }
        if let Some(after) = a.retry_after
            && let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string())
        {
            h.insert(header::RETRY_AFTER, v);
        }
        r.extensions_mut().insert(Endpoint(endpoint));
        r
    }

    fn fail(&self, tenant: &str, endpoint: &'static str, f: &Fail) -> EdgeResponse {
        if let Fail::RateLimited(rule, _) = f {
            metrics::record_rate_limited("acme", tenant, rule.label());
        }
        let (p, retry, location) = render::fail_problem(f);
        let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut a = Answer {
            status,
            content_type: Some(PROBLEM_CONTENT_TYPE),
            body: p.to_json(),
            location,
            links: Vec::new(),
            retry_after: None,
        };
        a.retry_after = retry.map(|d| {
            if matches!(f, Fail::RateLimited(..)) {
                Duration::from_secs(jittered(d))
            } else {
                d
            }
        });
        let urls = self.urls(tenant).ok();
        self.finish(urls.as_ref(), endpoint, a)
    }

    async fn meta(&self, tenant: &str) -> Result<crate::tenant::TenantMeta, Fail> {
        match self.tenants.lookup(tenant).await? {
            Some(m) => Ok(m),
            None => Err(Fail::Edge(EdgeError::NotFound)),
        }
    }

    async fn serve(
        &self,
        req: &EdgeRequest,
        route: &Route,
        urls: &AcmeUrls,
    ) -> Result<Answer, Fail> {
        match (&req.method, route) {
            (&Method::GET, Route::Directory) => {
                let m = self.meta(&req.tenant).await?;
                let meta = DirectoryMeta {
                    terms_of_service: (!m.terms_of_service.is_empty())
                        .then(|| m.terms_of_service.clone()),
                    website: (!m.website.is_empty()).then(|| m.website.clone()),
                    caa_identities: m.caa_identities.clone(),
                    external_account_required: m.external_account_required,
                    profiles: m
                        .profiles
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                };
                Ok(Answer::json(
                    StatusCode::OK,
                    directory::directory_json(urls, &meta),
                ))
            }
            (&Method::HEAD, Route::NewNonce) => Ok(Answer::empty(StatusCode::OK)),
            (&Method::GET, Route::NewNonce) => Ok(Answer::empty(StatusCode::NO_CONTENT)),
            (&Method::GET, Route::RenewalInfo(id)) => self.renewal_info(&req.tenant, id).await,
            (&Method::POST, _) => self.post(req, route, urls).await,
            _ => Err(Fail::Edge(EdgeError::MethodNotAllowed)),
        }
    }

    /// Parses and verifies the JWS, redeems the nonce.
    async fn authenticate(
        &self,
        req: &EdgeRequest,
        request_url: &str,
        urls: &AcmeUrls,
        keys: KeyRule,
    ) -> Result<Authed, Fail> {
        let ct = req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let jws = jws::parse_request(ct, &req.body, request_url)?;
        match keys {
            KeyRule::Jwk => jws.require_jwk()?,
            KeyRule::Kid => jws.require_kid()?,
            KeyRule::Either => {}
        }
        let (verified, account) = match jws.kid() {
            None => (jws.verify_embedded()?, None),
            Some(kid) => {
                let id = urls.account_id_from_kid(kid)?.to_owned();
                // The cached key first; a signature it does not verify gets one fresh look at
                // the core's copy (the key may have been rolled over through another edge).
                let cached = match self.accounts.get(&req.tenant, &id) {
                    Some(c) => match jws.clone().verify_with(&c.key) {
                        Ok(v) => Some((v, c)),
                        Err(_) => {
                            self.accounts.invalidate(&req.tenant, &id);
                            None
                        }
                    },
                    None => None,
                };
                let (verified, account) = match cached {
                    Some(hit) => hit,
                    None => {
                        let account = self
                            .get_account(&req.tenant, &id)
                            .await?
                            .ok_or(certgate_acme::Error::AccountDoesNotExist)?;
                        let account = Arc::new(CachedAccount::new(account)?);
                        let verified = jws.verify_with(&account.key)?;
                        self.accounts.insert(&req.tenant, account.clone());
                        (verified, account)
                    }
                };
                // Only the key holder learns the account's state (RFC 8555 §7.3.6: a deactivated
                // account's key authorizes nothing).
                if account.account.status != "valid" {
                    return Err(Fail::Acme(certgate_acme::Error::Unauthorized(format!(
                        "account is {}",
                        account.account.status
                    ))));
                }
                (verified, Some(account))
            }
        };
        self.nonces
            .redeem(verified.nonce(), SystemTime::now(), self.store.as_ref())
            .await?;
        Ok(Authed { verified, account })
    }

    async fn get_account(&self, tenant: &str, id: &str) -> Result<Option<pb::Account>, Fail> {
        let r = pb::GetAccountRequest {
            tenant: tenant.to_owned(),
            by: Some(pb::get_account_request::By::AccountId(id.to_owned())),
        };
        match self.tenants_core().acme_get_account(r).await {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.kind == certgate_proto::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn tenants_core(&self) -> &crate::core_client::CoreClient {
        self.tenants.core()
    }

    async fn post(
        &self,
        req: &EdgeRequest,
        route: &Route,
        urls: &AcmeUrls,
    ) -> Result<Answer, Fail> {
        let mut request_url = route.url(urls);
        if let Some(q) = &req.query {
            request_url = format!("{request_url}?{q}");
        }
        let core = self.tenants_core();
        let tenant = req.tenant.clone();
        match route {
            Route::NewAccount => {
                let a = self
                    .authenticate(req, &request_url, urls, KeyRule::Jwk)
                    .await?;
                self.new_account(req, urls, &a.verified).await
            }
            Route::RevokeCert => {
                let a = self
                    .authenticate(req, &request_url, urls, KeyRule::Either)
                    .await?;
                let rc = a.verified.json::<WireRevokeCert>()?.validate()?;
                let auth = match &a.account {
                    Some(acc) => pb::revoke_certificate_request::Auth::AccountId(
                        acc.account.account_id.clone(),
                    ),
                    None => {
                        rc.check_signed_by_certificate_key(&a.verified.key)?;
                        pb::revoke_certificate_request::Auth::CertificateKeyJwkJson(
                            a.verified.key.canonical_json(),
                        )
                    }
                };
                let out = core
                    .acme_revoke_certificate(pb::RevokeCertificateRequest {
                        tenant: tenant.clone(),
                        certificate_der: rc.certificate,
                        reason: u32::from(rc.reason),
                        auth: Some(auth),
                        account_key_thumbprint: a.key_thumbprint(),
                    })
                    .await;
                if out.is_err()
                    && let Ok(id) = a.account_id()
                {
                    self.accounts.invalidate(&tenant, id);
                }
                out?;
                Ok(Answer::empty(StatusCode::OK))
            }
            Route::RenewalInfo(_) | Route::Directory | Route::NewNonce => {
                Err(Fail::Edge(EdgeError::MethodNotAllowed))
            }
            _ => {
                let a = self
                    .authenticate(req, &request_url, urls, KeyRule::Kid)
                    .await?;
                self.kid_endpoint(req, route, urls, a).await
            }
        }
    }

    async fn new_account(
        &self,
        req: &EdgeRequest,
        urls: &AcmeUrls,
        v: &Verified,
    ) -> Result<Answer, Fail> {
        let meta = self.meta(&req.tenant).await?;
        let na: NewAccount = match &v.payload {
            Payload::PostAsGet => {
                return Err(Fail::Acme(certgate_acme::Error::WrongPayloadKind(
                    "newAccount needs a JSON payload",
                )));
            }
            Payload::Json(_) => v.json()?,
        };
        na.validate(
            !meta.terms_of_service.is_empty(),
            meta.external_account_required,
        )?;
        let ip = req.peer.ip().to_string();
        let limited = !na.only_return_existing;
        if limited {
            self.limiter
                .check(&req.tenant, Rule::AcmeNewAccounts, &ip)
                .await
                .map_err(|e| Fail::RateLimited(Rule::AcmeNewAccounts, e.retry_after))?;
        }
        let eab = match &na.external_account_binding {
            Some(v) => serde_json::to_vec(v).map_err(|_| certgate_acme::Error::ServerInternal)?,
            None => Vec::new(),
        };
        let result = self
            .tenants_core()
            .acme_new_account(pb::NewAccountRequest {
                tenant: req.tenant.clone(),
                jwk_json: v.key.canonical_json(),
                contacts: na.contact.clone(),
                terms_agreed: na.terms_of_service_agreed,
                only_return_existing: na.only_return_existing,
                external_account_binding_json: eab,
                new_account_url: urls.new_account(),
            })
            .await;
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                if limited {
                    self.limiter
                        .refund(&req.tenant, Rule::AcmeNewAccounts, &ip)
                        .await;
                }
                return Err(e.into());
            }
        };
        if limited && !resp.created {
            self.limiter
                .refund(&req.tenant, Rule::AcmeNewAccounts, &ip)
                .await;
        }
        let acc = resp.account.ok_or(certgate_acme::Error::ServerInternal)?;
        let status = if resp.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(Answer::json(status, render::account_body(urls, &acc))
            .location(urls.account(&acc.account_id)))
    }

    async fn kid_endpoint(
        &self,
        req: &EdgeRequest,
        route: &Route,
        urls: &AcmeUrls,
        a: Authed,
    ) -> Result<Answer, Fail> {
        let account_id = a.account_id()?.to_owned();
        let out = self.kid_endpoint_inner(req, route, urls, a).await;
        // A refusal (the core may have found the account deactivated or its key rolled over
        // through another edge) and any account change made through this edge drop the cached
        // copy, so the next request sees the core's.
        if out.is_err() || matches!(route, Route::Account(_) | Route::KeyChange) {
            self.accounts.invalidate(&req.tenant, &account_id);
        }
        out
    }

    async fn kid_endpoint_inner(
        &self,
        req: &EdgeRequest,
        route: &Route,
        urls: &AcmeUrls,
        a: Authed,
    ) -> Result<Answer, Fail> {
        let core = self.tenants_core();
        let tenant = req.tenant.clone();
        let account_id = a.account_id()?.to_owned();
        let tp = a.key_thumbprint();
        let v = &a.verified;
        match route {
            Route::Account(id) => {
                if *id != account_id {
                    return Err(Fail::Acme(certgate_acme::Error::Unauthorized(
                        "the account URL is not the kid's account".into(),
                    )));
                }
                // The account as the core holds it now (a cached copy may predate a contact
                // change made through another edge), still under the key that signed this.
                let fresh = || async {
                    let acc = self
                        .get_account(&tenant, &account_id)
                        .await?
                        .ok_or(certgate_acme::Error::AccountDoesNotExist)?;
                    if acc.status != "valid" || acc.jwk_thumbprint != tp {
                        return Err(Fail::Acme(certgate_acme::Error::Unauthorized(format!(
                            "account is {}",
                            if acc.status == "valid" {
                                "under another key"
                            } else {
                                &acc.status
                            }
                        ))));
                    }
                    Ok::<_, Fail>(Some(acc))
                };
                let acc = match &v.payload {
                    Payload::PostAsGet => fresh().await?,
                    Payload::Json(_) => {
                        let update = v.json::<WireAccountUpdate>()?.validate()?;
                        let (set_contacts, contacts, deactivate) = match update {
                            AccountUpdate::Contact(c) => (true, c, false),
                            AccountUpdate::Deactivate => (false, Vec::new(), true),
                            AccountUpdate::NoChange => (false, Vec::new(), false),
                        };
                        if set_contacts || deactivate {
                            Some(
                                core.acme_update_account(pb::UpdateAccountRequest {
                                    tenant: tenant.clone(),
                                    account_id: account_id.clone(),
                                    set_contacts,
                                    contacts,
                                    deactivate,
                                    account_key_thumbprint: tp.clone(),
                                })
                                .await?,
                            )
                        } else {
                            fresh().await?
                        }
                    }
                }
                .ok_or(certgate_acme::Error::ServerInternal)?;
                Ok(
                    Answer::json(StatusCode::OK, render::account_body(urls, &acc))
                        .location(urls.account(&account_id)),
                )
            }
            Route::Orders(id) => {
                if *id != account_id {
                    return Err(Fail::Acme(certgate_acme::Error::Unauthorized(
                        "the orders URL is not the kid's account's".into(),
                    )));
                }
                v.expect_post_as_get()?;
                let cursor = req
                    .query
                    .as_deref()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("cursor=")))
                    .unwrap_or("")
                    .to_owned();
                let page = core
                    .acme_list_orders(pb::ListOrdersRequest {
                        account_key_thumbprint: tp.clone(),
                        tenant,
                        account_id: account_id.clone(),
                        cursor,
                        page_size: self.cfg.orders_page_size,
                    })
                    .await?;
                let orders: Vec<String> = page.order_ids.iter().map(|o| urls.order(o)).collect();
                let body = serde_json::to_vec(&serde_json::json!({ "orders": orders }))
                    .map_err(|_| certgate_acme::Error::ServerInternal)?;
                let mut ans = Answer::json(StatusCode::OK, body);
                if !page.next_cursor.is_empty()
                    && page
                        .next_cursor
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    let next = format!(
                        "{}?cursor={}",
                        render::orders_url(urls, &account_id),
                        page.next_cursor
                    );
                    ans = ans.link(&next, "next");
                }
                Ok(ans)
            }
            Route::KeyChange => {
                let account_url = urls.account(&account_id);
                let new_key = payload::check_key_change(v, &account_url)?;
                let r = core
                    .acme_key_change(pb::KeyChangeRequest {
                        account_key_thumbprint: tp.clone(),
                        tenant,
                        account_id: account_id.clone(),
                        new_jwk_json: new_key.canonical_json(),
                    })
                    .await?;
                if !r.conflicting_account_id.is_empty() {
                    return Err(Fail::KeyInUse(urls.account(&r.conflicting_account_id)));
                }
                let acc = r.account.ok_or(certgate_acme::Error::ServerInternal)?;
                Ok(
                    Answer::json(StatusCode::OK, render::account_body(urls, &acc))
                        .location(account_url),
                )
            }
            Route::NewOrder => {
                let no = v.json::<WireNewOrder>()?.validate()?;
                let renewal = no.replaces.is_some();
                if !renewal {
                    self.limiter
                        .check(&tenant, Rule::AcmeNewOrders, &account_id)
                        .await
                        .map_err(|e| Fail::RateLimited(Rule::AcmeNewOrders, e.retry_after))?;
                }
                let unix = |t: Option<time::OffsetDateTime>| t.map_or(0, |t| t.unix_timestamp());
                let result = core
                    .acme_new_order(pb::NewOrderRequest {
                        account_key_thumbprint: tp.clone(),
                        tenant: tenant.clone(),
                        account_id: account_id.clone(),
                        identifiers: no.identifiers.iter().map(render::ident_to_pb).collect(),
                        not_before_unix: unix(no.not_before),
                        not_after_unix: unix(no.not_after),
                        profile: no.profile.clone().unwrap_or_default(),
                        replaces: no
                            .replaces
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                    })
                    .await;
                let o = match result {
                    Ok(o) => o,
                    Err(e) => {
                        if !renewal {
                            self.limiter
                                .refund(&tenant, Rule::AcmeNewOrders, &account_id)
                                .await;
                        }
                        return Err(e.into());
                    }
                };
                Ok(
                    Answer::json(StatusCode::CREATED, render::order_body(urls, &o)?)
                        .location(urls.order(&o.order_id)),
                )
            }
            Route::Order(id) => {
                v.expect_post_as_get()?;
                let o = core
                    .acme_get_order(pb::GetOrderRequest {
                        account_key_thumbprint: tp.clone(),
                        tenant,
                        account_id,
                        order_id: id.clone(),
                    })
                    .await?;
                // Clients poll orders while pending or processing (RFC 8555 §7.4).
                let busy = o.status == "processing" || o.status == "pending";
                Ok(Answer::json(StatusCode::OK, render::order_body(urls, &o)?).retry_if(busy))
            }
            Route::Authz(id) => {
                let r = pb::GetAuthorizationRequest {
                    account_key_thumbprint: tp.clone(),
                    tenant,
                    account_id,
                    authz_id: id.clone(),
                };
                let az = match &v.payload {
                    Payload::PostAsGet => core.acme_get_authorization(r).await?,
                    Payload::Json(_) => {
                        #[derive(serde::Deserialize)]
                        struct Deactivate {
                            status: String,
                        }
                        let d: Deactivate = v.json()?;
                        if d.status != "deactivated" {
                            return Err(Fail::Acme(certgate_acme::Error::Malformed(
                                "only status \"deactivated\" may be requested".into(),
                            )));
                        }
                        core.acme_deactivate_authorization(r).await?
                    }
                };
                let pending = az.status == "pending"
                    && az.challenges.iter().any(|c| c.status == "processing");
                Ok(Answer::json(StatusCode::OK, render::authz_body(urls, &az)?).retry_if(pending))
            }
            Route::Challenge(authz_id, ch_id) => {
                let (ch, authz) = match &v.payload {
                    Payload::PostAsGet => {
                        let az = core
                            .acme_get_authorization(pb::GetAuthorizationRequest {
                                account_key_thumbprint: tp.clone(),
                                tenant,
                                account_id,
                                authz_id: authz_id.clone(),
                            })
                            .await?;
                        let ch = az
                            .challenges
                            .into_iter()
                            .find(|c| c.challenge_id == *ch_id)
                            .ok_or(Fail::Edge(EdgeError::NotFound))?;
                        (ch, authz_id.clone())
                    }
                    Payload::Json(_) => {
                        let _: serde_json::Map<String, serde_json::Value> = v.json()?;
                        self.limiter
                            .check(&tenant, Rule::AcmeFailedValidations, &account_id)
                            .await
                            .map_err(|e| {
                                Fail::RateLimited(Rule::AcmeFailedValidations, e.retry_after)
                            })?;
                        let r = core
                            .acme_respond_challenge(pb::RespondChallengeRequest {
                                account_key_thumbprint: tp.clone(),
                                tenant: tenant.clone(),
                                account_id: account_id.clone(),
                                challenge_id: ch_id.clone(),
                                wait_ms: self.cfg.challenge_wait_ms,
                            })
                            .await;
                        // Counted as a failure only when the validation failed.
                        let failed = matches!(&r, Ok(x) if x.challenge.as_ref().is_some_and(|c| c.status == "invalid"));
                        if !failed {
                            self.limiter
                                .refund(&tenant, Rule::AcmeFailedValidations, &account_id)
                                .await;
                        }
                        let r = r?;
                        if r.authz_id != *authz_id {
                            return Err(Fail::Edge(EdgeError::NotFound));
                        }
                        (
                            r.challenge.ok_or(certgate_acme::Error::ServerInternal)?,
                            r.authz_id,
                        )
                    }
                };
                let busy = ch.status == "processing";
                Ok(
                    Answer::json(StatusCode::OK, render::challenge_body(urls, &authz, &ch)?)
                        .link(&urls.authorization(&authz), "up")
                        .retry_if(busy),
                )
            }
            Route::Finalize(id) => {
                let csr = v.json::<Finalize>()?.csr_der()?;
                let order = core
                    .acme_get_order(pb::GetOrderRequest {
                        account_key_thumbprint: tp.clone(),
                        tenant: tenant.clone(),
                        account_id: account_id.clone(),
                        order_id: id.clone(),
                    })
                    .await?;
                // Certificates per registered domain: counted at finalize (when a certificate is
                // about to be issued); ARI renewals are exempt; refunded if issuance fails.
                let mut taken: Vec<String> = Vec::new();
                if order.replaces.is_empty() && order.status == "ready" {
                    let mut domains: Vec<String> = order
                        .identifiers
                        .iter()
                        .map(|i| registered_domain(&i.value))
                        .collect();
                    domains.sort();
                    domains.dedup();
                    for d in domains {
                        if let Err(e) = self
                            .limiter
                            .check(&tenant, Rule::AcmeCertificatesPerDomain, &d)
                            .await
                        {
                            for t in &taken {
                                self.limiter
                                    .refund(&tenant, Rule::AcmeCertificatesPerDomain, t)
                                    .await;
                            }
                            return Err(Fail::RateLimited(
                                Rule::AcmeCertificatesPerDomain,
                                e.retry_after,
                            ));
                        }
                        taken.push(d);
                    }
                }
                let result = core
                    .acme_finalize(pb::FinalizeRequest {
                        account_key_thumbprint: tp.clone(),
                        tenant: tenant.clone(),
                        account_id,
                        order_id: id.clone(),
                        csr_der: csr,
                    })
                    .await;
                let o = match result {
                    Ok(o) if o.status != "invalid" => o,
                    other => {
                        for t in &taken {
                            self.limiter
                                .refund(&tenant, Rule::AcmeCertificatesPerDomain, t)
                                .await;
                        }
                        other?
                    }
                };
                let busy = o.status == "processing";
                Ok(Answer::json(StatusCode::OK, render::order_body(urls, &o)?)
                    .location(urls.order(&o.order_id))
                    .retry_if(busy))
            }
            Route::Cert(serial, alt) => {
                v.expect_post_as_get()?;
                let c = core
                    .acme_get_order_certificate(pb::GetOrderCertificateRequest {
                        account_key_thumbprint: tp.clone(),
                        tenant,
                        account_id,
                        serial_hex: serial.clone(),
                    })
                    .await?;
                let chain = if *alt == 0 {
                    c.chain.as_ref()
                } else {
                    c.alternates.get(alt - 1)
                }
                .ok_or(Fail::Edge(EdgeError::NotFound))?;
                let mut pem = String::new();
                for der in std::iter::once(&c.certificate_der).chain(chain.chain_der.iter()) {
                    pem.push_str(&pem_block(der));
                }
                let mut ans = Answer {
                    status: StatusCode::OK,
                    content_type: Some("application/pem-certificate-chain"),
                    body: pem.into_bytes(),
                    location: None,
                    links: Vec::new(),
                    retry_after: None,
                };
                let base = urls.certificate(serial);
                if *alt != 0 {
                    ans = ans.link(&base, "alternate");
                }
                for n in 1..=c.alternates.len() {
                    if n != *alt {
                        ans = ans.link(&format!("{base}/{n}"), "alternate");
                    }
                }
                Ok(ans)
            }
            _ => Err(Fail::Edge(EdgeError::MethodNotAllowed)),
        }
    }

    async fn renewal_info(&self, tenant: &str, id: &str) -> Result<Answer, Fail> {
        let cert_id = CertId::parse(id)?;
        let magnitude: Vec<u8> = cert_id
            .serial
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        let serial_hex = crate::status::serial_hex(&magnitude);
        let rec = match self
            .tenants_core()
            .get_certificate(tenant, &serial_hex)
            .await
        {
            Ok(r) => r,
            Err(e) if e.kind == certgate_proto::ErrorKind::NotFound => {
                return Err(Fail::Edge(EdgeError::NotFound));
            }
            Err(e) => return Err(e.into()),
        };
        // The identifier must name this certificate exactly (AKI too), not just its serial.
        if CertId::from_certificate(&rec.certificate_der).ok().as_ref() != Some(&cert_id) {
            return Err(Fail::Edge(EdgeError::NotFound));
        }
        let nb = time::OffsetDateTime::from_unix_timestamp(rec.not_before_unix)
            .map_err(|_| certgate_acme::Error::ServerInternal)?;
        let na = time::OffsetDateTime::from_unix_timestamp(rec.not_after_unix)
            .map_err(|_| certgate_acme::Error::ServerInternal)?;
        let window = if rec.revoked {
            // A revoked certificate should be replaced now (RFC 9773 §4.2).
            let now = time::OffsetDateTime::now_utc();
            (now - time::Duration::hours(1), now)
        } else {
            ari::suggested_window(nb, na, &cert_id.serial)
        };
        let mut a = Answer::json(StatusCode::OK, ari::renewal_info_json(window, None)?);
        a.retry_after = Some(ARI_RETRY_AFTER);
        Ok(a)
    }
}

/// One PEM `CERTIFICATE` block.
fn pem_block(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(chunk));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

impl Handler for AcmeHandler {
    fn protocol(&self) -> &'static str {
        "acme"
    }

    fn max_body_bytes(&self) -> Option<usize> {
        Some(self.cfg.max_body_bytes)
    }

    fn render_error(&self, tenant: &str, err: EdgeError) -> EdgeResponse {
        self.fail(tenant, "other", &Fail::Edge(err))
    }

    fn handle<'a>(&'a self, _ctx: &'a EdgeContext, req: EdgeRequest) -> HandlerFuture<'a> {
        Box::pin(async move {
            let Some(route) = Route::parse(&req.path) else {
                return Ok(self.fail(&req.tenant, "other", &Fail::Edge(EdgeError::NotFound)));
            };
            let endpoint = route.endpoint();
            let urls = match self.urls(&req.tenant) {
                Ok(u) => u,
                Err(f) => return Ok(self.fail(&req.tenant, endpoint, &f)),
            };
            Ok(match self.serve(&req, &route, &urls).await {
                Ok(a) => self.finish(Some(&urls), endpoint, a),
                Err(f) => {
                    tracing::debug!(tenant = %req.tenant, endpoint, error = %f, "ACME request refused");
                    self.fail(&req.tenant, endpoint, &f)
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_round_trip_through_their_urls() {
        let urls = AcmeUrls::new("https://127.0.0.1:8443", Some("corp")).expect("urls");
        for r in [
            Route::Directory,
            Route::NewNonce,
            Route::NewAccount,
            Route::NewOrder,
            Route::RevokeCert,
            Route::KeyChange,
            Route::RenewalInfo("a.b".into()),
            Route::Account("A1".into()),
            Route::Orders("A1".into()),
            Route::Order("o".into()),
            Route::Finalize("o".into()),
            Route::Authz("z".into()),
            Route::Challenge("z".into(), "c".into()),
            Route::Cert("0a".into(), 0),
            Route::Cert("0a".into(), 2),
        ] {
            let url = r.url(&urls);
            let path = url
                .strip_prefix("https://127.0.0.1:8443/t/corp/acme/")
                .expect("under the tenant root");
            assert_eq!(Route::parse(path), Some(r.clone()), "{url}");
        }
        assert_eq!(Route::parse("acct/a/b"), None);
        assert_eq!(Route::parse("acct/"), None);
        assert_eq!(Route::parse("nope"), None);
    }

    fn handler() -> AcmeHandler {
        let core = crate::core_client::CoreClient::unix("/nonexistent", Duration::from_secs(1));
        AcmeHandler::new(
            AcmeConfig::default(),
            &zeroize::Zeroizing::new(vec![7u8; 32]),
            Arc::new(certgate_acme::nonce::MemoryNonceStore::new(16)),
            TenantDirectory::new(core, &crate::tenant::TenantConfig::default()),
            Arc::new(crate::ratelimit::GovernorLimiter::new(
                crate::ratelimit::RateLimitConfig::default(),
            )),
        )
        .expect("handler")
    }

    /// Refusals decided by the shared plumbing are ACME problems with a fresh nonce.
    #[tokio::test]
    async fn plumbing_refusals_are_acme_problems_with_a_nonce() {
        let h = handler();
        for (err, status, ptype, retry) in [
            (EdgeError::Overloaded, 503, "serverInternal", true),
            (EdgeError::Timeout, 503, "serverInternal", true),
            (EdgeError::BodyTooLarge, 413, "malformed", false),
            (EdgeError::NotFound, 404, "malformed", false),
        ] {
            let name = format!("{err:?}");
            let r = h.render_error("corp", err);
            assert_eq!(r.status().as_u16(), status, "{name}");
            assert_eq!(
                r.headers().get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
                Some(PROBLEM_CONTENT_TYPE.as_bytes()),
                "{name}"
            );
            let nonce = r
                .headers()
                .get(REPLAY_NONCE_HEADER)
                .and_then(|v| v.to_str().ok())
                .expect("Replay-Nonce");
            assert!(h.nonces.check(nonce, SystemTime::now()).is_ok(), "{name}");
            assert_eq!(
                r.headers().contains_key(header::RETRY_AFTER),
                retry,
                "{name}"
            );
            let link = r
                .headers()
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(link.contains("/t/corp/acme/directory"), "{name}: {link}");
            let body = format!("{:?}", r.body());
            assert!(body.contains(ptype), "{name}: {body}");
        }
    }

    #[tokio::test]
    async fn rate_limited_problems_carry_a_jittered_retry_after() {
        let h = handler();
        let r = h.fail(
            "default",
            "new-order",
            &Fail::RateLimited(Rule::AcmeNewOrders, Duration::from_secs(600)),
        );
        assert_eq!(r.status().as_u16(), 429);
        let after: u64 = r
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert!((600..=618).contains(&after), "{after}");
        assert!(format!("{:?}", r.body()).contains("rateLimited"));
    }

    #[test]
    fn jitter_stays_within_three_percent() {
        for _ in 0..100 {
            let s = jittered(Duration::from_secs(1000));
            assert!((1000..=1030).contains(&s), "{s}");
        }
        assert_eq!(jittered(Duration::from_millis(10)), 1);
    }
}
