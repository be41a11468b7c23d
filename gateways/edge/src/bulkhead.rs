//! Bulkheads: one bounded concurrency pool per protocol and one per tenant (I-8).
//!
//! A request takes a permit from its protocol's pool and from its tenant's pool before any work;
//! when either is empty the request is refused at once (503 + Retry-After, rendered by the
//! protocol's handler) — nothing ever queues. So a flood of OCSP requests cannot starve ACME, and
//! one busy tenant cannot starve the others. Protocol names are `&'static str` from the route
//! table (a fixed set); tenant pools live in a bounded moka cache, so the set of pools is bounded
//! too. Evicting a tenant's pool while permits are out only lets that tenant briefly exceed its
//! bound by what was in flight (the old permits keep the old pool alive until they drop).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `[bulkheads]` in edge.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkheadConfig {
    /// Requests in service at once per protocol, unless `protocols` names the protocol.
    pub per_protocol: usize,
    /// Per-protocol overrides (`ocsp = 2048`).
    pub protocols: BTreeMap<String, usize>,
    /// Requests in service at once per tenant.
    pub per_tenant: usize,
    /// Most tenant pools held (least recently used are dropped beyond).
    pub max_tenant_pools: u64,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            per_protocol: 512,
            protocols: BTreeMap::new(),
            per_tenant: 512,
            max_tenant_pools: 1024,
        }
    }
}

impl BulkheadConfig {
    /// Refuses empty pools (an empty bound admits nothing).
    pub fn validate(&self) -> Result<(), String> {
        if self.per_protocol == 0
            || self.per_tenant == 0
            || self.max_tenant_pools == 0
            || self.protocols.values().any(|v| *v == 0)
        {
            return Err("[bulkheads] sizes must be positive".into());
        }
        Ok(())
    }
}

/// Which pool refused a request (the `pool` label of the shed counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The protocol's pool.
    Protocol,
    /// The tenant's pool.
    Tenant,
}

impl Pool {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Pool::Protocol => "protocol",
            Pool::Tenant => "tenant",
        }
    }
}

/// Both permits of an admitted request; dropping it frees them.
#[derive(Debug)]
pub struct Admission {
    _protocol: OwnedSemaphorePermit,
    _tenant: OwnedSemaphorePermit,
}

/// The pools.
pub struct Bulkheads {
    cfg: BulkheadConfig,
    protocols: RwLock<HashMap<&'static str, Arc<Semaphore>>>,
    tenants: moka::sync::Cache<String, Arc<Semaphore>>,
    /// The `default` tenant's pool, held outside the cache: every plain-path request (all of
    /// OCSP and CRL unless Host-mapped) takes it, so it skips the moka probe. One extra pool
    /// beyond `max_tenant_pools`, never evicted.
    default_tenant: Arc<Semaphore>,
}

impl Default for Bulkheads {
    fn default() -> Self {
        Self::new(BulkheadConfig::default())
    }
}

impl Bulkheads {
    /// Pools sized by `cfg`.
    pub fn new(cfg: BulkheadConfig) -> Self {
        Self {
            tenants: moka::sync::Cache::new(cfg.max_tenant_pools),
            default_tenant: Arc::new(Semaphore::new(cfg.per_tenant)),
            protocols: RwLock::new(HashMap::new()),
            cfg,
        }
    }

    fn protocol_pool(&self, protocol: &'static str) -> Arc<Semaphore> {
        if let Ok(m) = self.protocols.read()
            && let Some(s) = m.get(protocol)
        {
            return s.clone();
        }
        let size = self
            .cfg
            .protocols
            .get(protocol)
            .copied()
            .unwrap_or(self.cfg.per_protocol);
        match self.protocols.write() {
            Ok(mut m) => m
                .entry(protocol)
                .or_insert_with(|| Arc::new(Semaphore::new(size)))
                .clone(),
            // A poisoned map cannot happen without a panic elsewhere; a fresh pool still bounds.
            Err(_) => Arc::new(Semaphore::new(size)),
        }
    }

    /// Takes a permit from both pools, or says which one is full. Never waits.
    pub fn admit(&self, protocol: &'static str, tenant: &str) -> Result<Admission, Pool> {
        let p = self
            .protocol_pool(protocol)
            .try_acquire_owned()
            .map_err(|_| Pool::Protocol)?;
        let t = if tenant == crate::tenant::DEFAULT_TENANT {
            self.default_tenant.clone()
        } else {
            let per_tenant = self.cfg.per_tenant;
            self.tenants
                .get_with_by_ref(tenant, || Arc::new(Semaphore::new(per_tenant)))
        }
        .try_acquire_owned()
        .map_err(|_| Pool::Tenant)?;
        Ok(Admission {
            _protocol: p,
            _tenant: t,
        })
    }

    /// Free permits in `protocol`'s pool (for tests and debugging).
    pub fn available(&self, protocol: &'static str) -> usize {
        self.protocol_pool(protocol).available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Bulkheads {
        Bulkheads::new(BulkheadConfig {
            per_protocol: 2,
            protocols: BTreeMap::from([("ocsp".to_owned(), 1)]),
            per_tenant: 3,
            max_tenant_pools: 8,
        })
    }

    #[test]
    fn a_full_protocol_pool_refuses_only_that_protocol() {
        let b = small();
        let held = b.admit("ocsp", "default").expect("first ocsp");
        assert_eq!(b.admit("ocsp", "default").err(), Some(Pool::Protocol));
        assert!(b.admit("acme", "default").is_ok(), "acme has its own pool");
        drop(held);
        assert!(b.admit("ocsp", "default").is_ok(), "freed on drop");
    }

    #[test]
    fn a_full_tenant_pool_refuses_only_that_tenant() {
        let b = small();
        let _a = b.admit("acme", "busy").expect("1");
        let _b = b.admit("acme", "busy").expect("2");
        let _c = b.admit("est", "busy").expect("3");
        assert_eq!(b.admit("cmp", "busy").err(), Some(Pool::Tenant));
        assert!(b.admit("cmp", "quiet").is_ok());
    }

    #[test]
    fn the_default_tenant_pool_is_bounded_like_the_others() {
        let b = small();
        let a = b.admit("acme", DEFAULT).expect("1");
        let _b = b.admit("est", DEFAULT).expect("2");
        let _c = b.admit("cmp", DEFAULT).expect("3");
        assert_eq!(b.admit("crl", DEFAULT).err(), Some(Pool::Tenant));
        assert!(
            b.admit("crl", "other").is_ok(),
            "other tenants keep their own pools"
        );
        drop(a);
        assert!(b.admit("crl", DEFAULT).is_ok(), "freed on drop");
    }

    const DEFAULT: &str = crate::tenant::DEFAULT_TENANT;

    #[test]
    fn tenant_pools_are_bounded() {
        let b = small();
        for i in 0..100 {
            let _ = b.admit("acme", &format!("t{i}"));
        }
        b.tenants.run_pending_tasks();
        assert!(b.tenants.entry_count() <= 8, "{}", b.tenants.entry_count());
    }

    #[test]
    fn zero_sizes_are_refused() {
        let cfg = BulkheadConfig {
            per_tenant: 0,
            ..BulkheadConfig::default()
        };
        assert!(cfg.validate().is_err());
    }
}
