//! The ACME state store (accounts, orders, authorizations, challenges, EAB keys, tenant ACME
//! settings) behind its own trait, beside [`super::Store`]: the ACME state service
//! (`crate::acme`) is its only user.
//!
//! Same rules as the main store: every row carries its tenant and every lookup of an account's
//! object takes the tenant and the account, so another tenant's or another account's object is
//! simply not found (I-4). Every state change takes its [`AuditEntry`] and appends it in the same
//! transaction (I-7). Transitions that race (a challenge starting, finalize) are compare-and-set
//! on the stored status, so two edges (or two retries) cannot both win.

use zeroize::Zeroizing;

use crate::audit::AuditEntry;
use crate::error::Result;

/// The audit record of an order's move pending → ready, the same whether a reader
/// (`refresh_order`) or [`AcmeStore::finish_challenge`] stores it; `actor` is the caller whose
/// request caused it.
pub fn order_ready_audit(tenant: &str, actor: &str, order_id: &str) -> AuditEntry {
    AuditEntry::new(
        "acme.order.status",
        tenant,
        actor,
        serde_json::json!({"order": order_id, "from": "pending", "to": "ready"}),
    )
}

/// Whether an order is ready at `now`: unexpired, and every authorization (status, expiry) is
/// valid and unexpired (RFC 8555 §7.1.6; the same rule `refresh_order` applies, expiry being
/// `now >= expires`). No authorizations is not ready (an order always has some).
pub(crate) fn order_ready_at(
    now: i64,
    order_expires: i64,
    authzs: impl IntoIterator<Item = (String, i64)>,
) -> bool {
    let mut any = false;
    for (status, expires) in authzs {
        if status != "valid" || now >= expires {
            return false;
        }
        any = true;
    }
    any && now < order_expires
}

/// A tenant's ACME settings (directory meta, newAccount rules).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcmeSettings {
    /// Tenant.
    pub tenant: String,
    /// Terms of service URL ("" = none; then no agreement is needed).
    pub terms_of_service: String,
    /// Website URL.
    pub website: String,
    /// CAA identities (RFC 8555 §7.1.1 `caaIdentities`).
    pub caa_identities: Vec<String>,
    /// newAccount needs an External Account Binding.
    pub external_account_required: bool,
}

/// An EAB key (RFC 8555 §7.3.4). The HMAC key never leaves the core after its one-time display.
#[derive(Clone, Debug)]
pub struct EabKey {
    /// Tenant.
    pub tenant: String,
    /// The `kid` clients send.
    pub key_id: String,
    /// The HMAC key.
    pub key: Zeroizing<Vec<u8>>,
    /// The account it was bound to ("" = unused; a key binds exactly one account).
    pub account_id: String,
    /// Creation time.
    pub created_unix: i64,
}

/// An ACME account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRec {
    /// Tenant.
    pub tenant: String,
    /// Id (the edge's account URL id).
    pub account_id: String,
    /// "valid", "deactivated", "revoked".
    pub status: String,
    /// `mailto:` URLs.
    pub contacts: Vec<String>,
    /// termsOfServiceAgreed.
    pub terms_agreed: bool,
    /// The public JWK (canonical JSON).
    pub jwk_json: String,
    /// RFC 7638 thumbprint; UNIQUE per tenant.
    pub jwk_thumbprint: String,
    /// The EAB key id it was bound with ("" = none).
    pub eab_key_id: String,
    /// Creation time.
    pub created_unix: i64,
}

/// An identifier as stored: ("dns" | "ip", value).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IdentRec {
    /// "dns" or "ip".
    pub kind: String,
    /// Value (a wildcard keeps its `*.` here, in the order).
    pub value: String,
}

/// An order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderRec {
    /// Tenant.
    pub tenant: String,
    /// Id.
    pub order_id: String,
    /// Owning account.
    pub account_id: String,
    /// "pending", "ready", "processing", "valid", "invalid" (as last stored; readers recompute
    /// pending/ready from the authorizations and expiry).
    pub status: String,
    /// Expiry of a not-yet-finalized order.
    pub expires_unix: i64,
    /// The identifiers, as requested (normalised).
    pub identifiers: Vec<IdentRec>,
    /// One authorization per identifier, same order.
    pub authz_ids: Vec<String>,
    /// Requested notBefore (0 = unset).
    pub not_before_unix: i64,
    /// Requested notAfter (0 = unset).
    pub not_after_unix: i64,
    /// The encoded `certgate.acme.v1.Problem` when invalid.
    pub error: Vec<u8>,
    /// The issued certificate's serial when valid.
    pub certificate_serial_hex: String,
    /// Profile name.
    pub profile: String,
    /// ARI `replaces`.
    pub replaces: String,
    /// Creation time.
    pub created_unix: i64,
    /// The CSR finalize accepted (empty before), kept so an order a stopped core left
    /// processing can be issued again under the same idempotency key.
    pub csr_der: Vec<u8>,
}

/// A challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChallengeRec {
    /// Id, unique in the tenant.
    pub challenge_id: String,
    /// "http-01", "dns-01", "tls-alpn-01".
    pub kind: String,
    /// "pending", "processing", "valid", "invalid".
    pub status: String,
    /// Token (128 random bits, base64url).
    pub token: String,
    /// When it became valid.
    pub validated_unix: i64,
    /// The encoded `certgate.acme.v1.Problem` when invalid.
    pub error: Vec<u8>,
}

/// An authorization with its challenges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthzRec {
    /// Tenant.
    pub tenant: String,
    /// Id.
    pub authz_id: String,
    /// Owning account.
    pub account_id: String,
    /// The identifier (a wildcard is stored as its base name with `wildcard` set).
    pub identifier: IdentRec,
    /// For a `*.` order identifier.
    pub wildcard: bool,
    /// "pending", "valid", "invalid", "deactivated", "expired", "revoked" (expiry is applied
    /// by readers).
    pub status: String,
    /// Expiry.
    pub expires_unix: i64,
    /// Challenges in offer order.
    pub challenges: Vec<ChallengeRec>,
    /// Creation time.
    pub created_unix: i64,
}

/// The outcome of newAccount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewAccountOutcome {
    /// Created now.
    Created(AccountRec),
    /// The key already had this account (nothing changed, no EAB key consumed).
    Existing(AccountRec),
}

/// The ACME state store.
pub trait AcmeStore: Send + Sync {
    /// The tenant's ACME settings (None = defaults).
    fn acme_settings(&self, tenant: &str) -> Result<Option<AcmeSettings>>;
    /// Replaces the tenant's ACME settings.
    fn put_acme_settings(&self, s: &AcmeSettings, audit: &AuditEntry) -> Result<()>;

    /// Stores a new EAB key (unused).
    fn insert_eab_key(&self, k: &EabKey, audit: &AuditEntry) -> Result<()>;
    /// One EAB key of a tenant.
    fn eab_key(&self, tenant: &str, key_id: &str) -> Result<Option<EabKey>>;

    /// Creates an account unless its key already has one in the tenant (then returns that one).
    /// When `a.eab_key_id` is set, the key is bound to the new account in the same transaction;
    /// a key already bound is refused (rule "unauthorized").
    fn create_account(&self, a: &AccountRec, audit: &AuditEntry) -> Result<NewAccountOutcome>;
    /// One account.
    fn account(&self, tenant: &str, account_id: &str) -> Result<Option<AccountRec>>;
    /// The account of a key thumbprint.
    fn account_by_thumbprint(&self, tenant: &str, thumbprint: &str) -> Result<Option<AccountRec>>;
    /// Replaces contacts and status; deactivating also deactivates the account's pending
    /// authorizations (same transaction).
    fn update_account(&self, a: &AccountRec, audit: &AuditEntry) -> Result<()>;
    /// Replaces the key; Some(other account id) (and nothing changed) when the new key already
    /// belongs to another account of the tenant.
    fn change_account_key(
        &self,
        tenant: &str,
        account_id: &str,
        jwk_json: &str,
        thumbprint: &str,
        audit: &AuditEntry,
    ) -> Result<Option<String>>;

    /// Stores an order and the authorizations it created (reused ones are only referenced).
    fn insert_order(&self, o: &OrderRec, new_authzs: &[AuthzRec], audit: &AuditEntry)
    -> Result<()>;
    /// One order of one account.
    fn order(&self, tenant: &str, account_id: &str, order_id: &str) -> Result<Option<OrderRec>>;
    /// The order whose certificate has this serial.
    fn order_by_serial(&self, tenant: &str, serial_hex: &str) -> Result<Option<OrderRec>>;
    /// A not-invalid order of the account that names `replaces` (RFC 9773 §5: a certificate is
    /// replaced once).
    fn order_replacing(
        &self,
        tenant: &str,
        account_id: &str,
        replaces: &str,
    ) -> Result<Option<OrderRec>>;
    /// The account's orders, newest first: up to `limit` strictly older than `before` (an
    /// opaque cursor from [`OrderPage::next`]; None = from the newest).
    fn list_orders(
        &self,
        tenant: &str,
        account_id: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<OrderPage>;
    /// Compare-and-set of an order's status: only when the stored status is one of `from`.
    /// Sets the error and serial too. True when it changed.
    fn set_order_status(
        &self,
        tenant: &str,
        order_id: &str,
        from: &[&str],
        to: &OrderUpdate,
        audit: &AuditEntry,
    ) -> Result<bool>;

    /// One authorization of one account.
    fn authz(&self, tenant: &str, account_id: &str, authz_id: &str) -> Result<Option<AuthzRec>>;
    /// A reusable authorization of the account for the identifier: valid (or pending) and not
    /// expiring before `min_expires`; valid ones first.
    fn reusable_authz(
        &self,
        tenant: &str,
        account_id: &str,
        identifier: &IdentRec,
        wildcard: bool,
        min_expires: i64,
    ) -> Result<Option<AuthzRec>>;
    /// The authorization holding a challenge, and the challenge's index in it.
    fn authz_of_challenge(
        &self,
        tenant: &str,
        account_id: &str,
        challenge_id: &str,
    ) -> Result<Option<(AuthzRec, usize)>>;
    /// Compare-and-set pending → processing for a challenge of a pending authorization with no
    /// other challenge processing. True when it changed (this caller runs the validation).
    fn start_challenge(
        &self,
        tenant: &str,
        authz_id: &str,
        challenge_id: &str,
        audit: &AuditEntry,
    ) -> Result<bool>;
    /// Records a validation result: the challenge processing → valid/invalid and its
    /// authorization pending → valid/invalid (with `valid_until` as the new expiry when valid).
    ///
    /// When the authorization became valid, the same transaction also moves the order that
    /// created it (recorded by [`Self::insert_order`]) pending → ready (compare-and-set), if at
    /// `result.now` the order has not expired and every one of its authorizations is valid and
    /// unexpired, appending that change's own [`order_ready_audit`] record: the order is ready
    /// as soon as it can be (RFC 8555 §7.1.6), without one more write transaction when it is
    /// next read. Readers still recompute pending/ready/invalid (`refresh_order`), so orders that
    /// only reuse the authorization, and every other transition, are stored as before. Returns
    /// the id of the order it made ready.
    fn finish_challenge(
        &self,
        tenant: &str,
        authz_id: &str,
        challenge_id: &str,
        result: &ChallengeResult,
        audit: &AuditEntry,
    ) -> Result<Option<String>>;
    /// Compare-and-set of an authorization's status. True when it changed.
    fn set_authz_status(
        &self,
        tenant: &str,
        authz_id: &str,
        from: &[&str],
        to: &str,
        audit: &AuditEntry,
    ) -> Result<bool>;
}

/// One page of order ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderPage {
    /// Order ids, newest first.
    pub order_ids: Vec<String>,
    /// The cursor for the next page, if there is one.
    pub next: Option<i64>,
}

/// A new order status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderUpdate {
    /// The new status.
    pub status: String,
    /// Encoded problem ("" unless invalid).
    pub error: Vec<u8>,
    /// Certificate serial ("" unless valid).
    pub certificate_serial_hex: String,
    /// When non-empty, stored as the order's CSR (ready → processing).
    pub csr_der: Vec<u8>,
}

/// A validation result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChallengeResult {
    /// Valid or invalid.
    pub valid: bool,
    /// When.
    pub now: i64,
    /// The authorization's expiry once valid.
    pub valid_until: i64,
    /// Encoded problem when invalid.
    pub error: Vec<u8>,
}
