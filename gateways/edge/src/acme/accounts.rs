//! Edge-local cache of ACME account keys, by (tenant, account id).
//!
//! Every `kid` request needs the account's key to verify its JWS; without a cache that is one
//! `Acme.GetAccount` round trip to the core per request (seven per issuance). The cache holds the
//! account as the core last returned it with its key already parsed. It is only an accelerator:
//!
//! - only valid accounts are cached; bounded by entry count and time (I-8);
//! - a request whose signature does not verify under the cached key asks the core again once
//!   (the key may have been rolled over through another edge) before refusing;
//! - every call the edge then makes for the request states the thumbprint of the key that
//!   verified it (`account_key_thumbprint`), and the core refuses unless the account is valid
//!   and that is its current key, so a key rolled over or an account deactivated anywhere in
//!   the fleet is refused at once, cached or not;
//! - this edge drops the entry when it forwards an account update or key change, and when the
//!   core refuses a request of the account.

use std::sync::Arc;
use std::time::Duration;

use certgate_acme::jwk::Jwk;
use certgate_proto::acme as pb;

/// An account with its parsed key.
#[derive(Debug)]
pub struct CachedAccount {
    /// The account as the core returned it.
    pub account: pb::Account,
    /// Its key, parsed once.
    pub key: Jwk,
}

impl CachedAccount {
    /// Parses the account's key.
    pub fn new(account: pb::Account) -> Result<Self, certgate_acme::Error> {
        let v: serde_json::Value = serde_json::from_str(&account.jwk_json)
            .map_err(|_| certgate_acme::Error::ServerInternal)?;
        let key = Jwk::from_value(&v)?;
        Ok(Self { account, key })
    }
}

/// The bounded cache (`[acme] account_cache_capacity` entries, each kept at most
/// `account_cache_ttl_seconds`); capacity 0 turns it off.
pub struct AccountCache {
    cache: Option<moka::sync::Cache<(String, String), Arc<CachedAccount>>>,
}

impl AccountCache {
    /// A cache of at most `capacity` accounts, each for at most `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        let cache = (capacity > 0 && !ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build()
        });
        Self { cache }
    }

    /// The cached account, if any.
    pub fn get(&self, tenant: &str, account_id: &str) -> Option<Arc<CachedAccount>> {
        self.cache
            .as_ref()?
            .get(&(tenant.to_owned(), account_id.to_owned()))
    }

    /// Remembers an account (valid ones only: any other state is refused without a cache).
    pub fn insert(&self, tenant: &str, account: Arc<CachedAccount>) {
        if let Some(c) = &self.cache
            && account.account.status == "valid"
        {
            c.insert(
                (tenant.to_owned(), account.account.account_id.clone()),
                account,
            );
        }
    }

    /// Forgets an account.
    pub fn invalidate(&self, tenant: &str, account_id: &str) {
        if let Some(c) = &self.cache {
            c.invalidate(&(tenant.to_owned(), account_id.to_owned()));
        }
    }

    /// Entries held (after pending evictions ran), for tests.
    pub fn len(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| {
            c.run_pending_tasks();
            c.entry_count()
        })
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: &str, status: &str) -> Arc<CachedAccount> {
        let jwk = r#"{"crv":"P-256","kty":"EC","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        Arc::new(
            CachedAccount::new(pb::Account {
                tenant: "t".into(),
                account_id: id.into(),
                status: status.into(),
                jwk_json: jwk.into(),
                ..Default::default()
            })
            .expect("a valid JWK"),
        )
    }

    #[test]
    fn holds_valid_accounts_per_tenant_and_forgets_on_invalidate() {
        let c = AccountCache::new(10, Duration::from_secs(60));
        c.insert("t", account("a1", "valid"));
        assert!(c.get("t", "a1").is_some());
        assert!(c.get("other", "a1").is_none(), "keyed by tenant (I-4)");
        c.invalidate("t", "a1");
        assert!(c.get("t", "a1").is_none());
    }

    #[test]
    fn never_holds_a_deactivated_account() {
        let c = AccountCache::new(10, Duration::from_secs(60));
        c.insert("t", account("a1", "deactivated"));
        assert!(c.get("t", "a1").is_none());
    }

    #[test]
    fn is_bounded() {
        let c = AccountCache::new(5, Duration::from_secs(60));
        for i in 0..100 {
            c.insert("t", account(&format!("a{i}"), "valid"));
        }
        assert!(c.len() <= 5, "{} entries held", c.len());
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let c = AccountCache::new(0, Duration::from_secs(60));
        c.insert("t", account("a1", "valid"));
        assert!(c.get("t", "a1").is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn a_bad_key_is_not_cached() {
        let bad = CachedAccount::new(pb::Account {
            account_id: "a1".into(),
            status: "valid".into(),
            jwk_json: "{}".into(),
            ..Default::default()
        });
        assert!(bad.is_err());
    }
}
