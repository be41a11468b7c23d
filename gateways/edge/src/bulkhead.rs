//! Bulkheads: one bounded concurrency pool per protocol and one per tenant (I-8).
//!
//! A request takes a permit from its protocol's pool and from its tenant's pool before any work;
//! when either is empty the request is refused at once (503 + Retry-After, rendered by the
//! protocol's handler) — nothing ever queues. So a flood of OCSP requests cannot starve ACME, and
//! one busy tenant cannot starve the others. Protocol names are `&'static str` from the route
//! table (a fixed set); tenant pools live in a bounded moka cache, so the set of pools is bounded
//! too. Evicting a tenant's pool while permits are out only lets that tenant briefly exceed its
//! bound by what was in flight (the old permits keep the old pool alive until they drop).
//!
//! Issuance protocols (`[bulkheads] adaptive`, default EST, SCEP, CMP) get an *adaptive* pool
//! instead of a fixed one: a fixed bound of hundreds of requests lets a slow core queue hundreds
//! of enrollments, so under overload every admitted request waits seconds (Little's law: queue
//! length / throughput). The adaptive pool is an AIMD concurrency limit (as TCP's congestion
//! window, or Netflix's concurrency-limits): it learns the protocol's unloaded latency from
//! requests that ran alone (an EWMA); it grows by one per limit's worth of requests answered
//! within `adaptive_latency_factor` × that latency, and shrinks by 10-50 % (in proportion to the
//! excess) when one takes longer while the pool is at least half full (at most once per round
//! trip: only a request admitted after the last decrease can trigger the next). Starting at
//! 4 × `adaptive_min` and kept between `adaptive_min` and the configured size, the limit settles
//! where the core answers about as fast as when idle, and the excess is refused at once (503 +
//! Retry-After). A tenant alone may use the whole limit; beside other tenants it holds at most
//! `tenant_share` of it (never less than `adaptive_min`), and a tenant below its share, or
//! holding less than some other tenant, is admitted even into a full pool (the pool's size plus one share stays the hard bound), so a
//! flooding tenant, or a limit that just shrank, cannot lock the others out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use crate::permits::{OwnedPermit, Permit, Permits};
use serde::Deserialize;

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
    /// Protocols whose pool is latency-adaptive (the pool size is then the limit's ceiling).
    pub adaptive: Vec<String>,
    /// Smallest limit of an adaptive pool.
    pub adaptive_min: usize,
    /// A request slower than this × the learned unloaded latency shrinks the limit.
    pub adaptive_latency_factor: f64,
    /// Most of an adaptive pool's limit one tenant may hold, in (0, 1].
    pub tenant_share: f64,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            per_protocol: 512,
            protocols: BTreeMap::new(),
            per_tenant: 512,
            max_tenant_pools: 1024,
            adaptive: vec!["est".into(), "scep".into(), "cmp".into()],
            adaptive_min: 4,
            adaptive_latency_factor: 3.0,
            tenant_share: 0.5,
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
            || self.adaptive_min == 0
        {
            return Err("[bulkheads] sizes must be positive".into());
        }
        if !(self.adaptive_latency_factor >= 1.0 && self.adaptive_latency_factor.is_finite()) {
            return Err("[bulkheads] adaptive_latency_factor must be at least 1".into());
        }
        if !(self.tenant_share > 0.0 && self.tenant_share <= 1.0) {
            return Err("[bulkheads] tenant_share must be in (0, 1]".into());
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

/// The protocol's share of an admitted request: a fixed pool's permit or an adaptive pool's slot.
/// A fixed pool in [`Bulkheads`]' slot table lives as long as the bulkheads, so its permit
/// borrows it (no reference count per request); one beyond the table is held by `Arc`.
#[derive(Debug)]
#[allow(dead_code)] // held for their Drop
enum ProtocolPermit<'a> {
    Fixed(Permit<'a>),
    FixedOwned(OwnedPermit),
    Adaptive(AdaptiveSlot),
}

/// The tenant's share: the `default` tenant's pool is a field of [`Bulkheads`] (borrowed); the
/// other tenants' pools may be evicted from their cache while permits are out (owned).
#[derive(Debug)]
#[allow(dead_code)] // held for their Drop
enum TenantPermit<'a> {
    Default(Permit<'a>),
    Named(OwnedPermit),
}

/// Both permits of an admitted request; dropping it frees them (and, for an adaptive pool,
/// reports the request's latency to it). Borrows the [`Bulkheads`] that admitted it.
#[derive(Debug)]
pub struct Admission<'a> {
    _protocol: ProtocolPermit<'a>,
    _tenant: TenantPermit<'a>,
}

/// An AIMD concurrency limit learning the unloaded latency online (module docs).
#[derive(Debug)]
struct AdaptivePool {
    protocol: &'static str,
    max: f64,
    min: f64,
    factor: f64,
    share: f64,
    clock: Clock,
    state: Mutex<AdaptiveState>,
}

/// Where adaptive pools read the time: a test drives a manual clock so latency samples are
/// exactly what it says, whatever the machine's load (a sleeping thread on a busy CI runner
/// can oversleep by more than the latencies the test feeds).
#[derive(Debug, Clone, Default)]
enum Clock {
    #[default]
    Real,
    #[cfg(test)]
    Manual(Arc<Mutex<Instant>>),
}

impl Clock {
    fn now(&self) -> Instant {
        match self {
            Clock::Real => Instant::now(),
            #[cfg(test)]
            Clock::Manual(t) => *t.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

#[derive(Debug)]
struct AdaptiveState {
    in_flight: usize,
    limit: f64,
    /// EWMA (seconds) of the latency of requests that ran alone.
    baseline: Option<f64>,
    last_decrease: Instant,
    /// In-flight count per tenant (entries removed at zero: bounded by the limit).
    tenants: HashMap<String, usize>,
}

/// One admitted request of an adaptive pool.
#[derive(Debug)]
struct AdaptiveSlot {
    pool: Arc<AdaptivePool>,
    tenant: String,
    start: Instant,
    /// Admitted with nothing else in flight: its latency is an unloaded sample.
    unloaded: bool,
}

/// Limit gauge of adaptive pools, by protocol.
const LIMIT_GAUGE: &str = "certgate_edge_bulkhead_limit";

impl AdaptivePool {
    fn new(protocol: &'static str, size: usize, cfg: &BulkheadConfig, clock: Clock) -> Self {
        let max = size as f64;
        let min = (cfg.adaptive_min as f64).min(max);
        // Start low (as TCP does) and grow into what the core sustains, rather than start at
        // the ceiling and let a first burst queue hundreds of requests in the core.
        let initial = (4.0 * min).min(max);
        let last_decrease = clock.now();
        ::metrics::gauge!(LIMIT_GAUGE, "protocol" => protocol).set(initial);
        Self {
            protocol,
            max,
            min,
            factor: cfg.adaptive_latency_factor,
            share: cfg.tenant_share,
            clock,
            state: Mutex::new(AdaptiveState {
                in_flight: 0,
                limit: initial,
                baseline: None,
                last_decrease,
                tenants: HashMap::new(),
            }),
        }
    }

    fn admit(self: &Arc<Self>, tenant: &str) -> Result<AdaptiveSlot, Pool> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let limit = st.limit.floor().max(1.0) as usize;
        // A share is never below the floor, so a light tenant's occasional burst still fits.
        let share = (st.limit * self.share).ceil().max(self.min) as usize;
        let held = st.tenants.get(tenant).copied().unwrap_or(0);
        let others = st.in_flight - held;
        // The most any other tenant holds: a tenant holding less is never the one shed.
        let biggest_other = st
            .tenants
            .iter()
            .filter(|(t, _)| t.as_str() != tenant)
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0);
        if st.in_flight < limit {
            // Below the limit a tenant alone may use all of it; beside others, its share.
            if held >= share && others > 0 {
                return Err(Pool::Tenant);
            }
        } else if (held >= share && held >= biggest_other)
            || st.in_flight >= self.max as usize + share
        {
            // Full: only a tenant below its share still gets in (so a tenant that filled the
            // pool alone, or a limit that just shrank under it, cannot lock the others out);
            // the pool's size plus one share stays the hard bound.
            return Err(if held >= share && held >= biggest_other && others > 0 {
                Pool::Tenant
            } else {
                Pool::Protocol
            });
        }
        st.tenants.insert(tenant.to_owned(), held + 1);
        st.in_flight += 1;
        Ok(AdaptiveSlot {
            pool: self.clone(),
            tenant: tenant.to_owned(),
            start: self.clock.now(),
            unloaded: st.in_flight == 1,
        })
    }

    fn release(&self, slot: &AdaptiveSlot) {
        let now = self.clock.now();
        let took = now.duration_since(slot.start).as_secs_f64();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.in_flight = st.in_flight.saturating_sub(1);
        if let Some(n) = st.tenants.get_mut(&slot.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.tenants.remove(&slot.tenant);
            }
        }
        if slot.unloaded {
            st.baseline = Some(match st.baseline {
                Some(b) => b + 0.1 * (took - b),
                None => took,
            });
        }
        let Some(baseline) = st.baseline else {
            return;
        };
        let before = st.limit;
        if took > self.factor * baseline {
            // One decrease per round trip (only requests admitted after the last one count),
            // and only when our concurrency can be the cause (the pool is at least half full):
            // a slow answer to a lone request is the core's, not the queue's.
            if slot.start > st.last_decrease && (st.in_flight + 1) as f64 >= st.limit / 2.0 {
                // In proportion to how far off the target the answer was, by 10-50 %.
                let ratio = (self.factor * baseline / took).clamp(0.5, 0.9);
                st.limit = (st.limit * ratio).max(self.min);
                st.last_decrease = now;
            }
        } else if st.in_flight + 1 >= st.limit.floor() as usize {
            // Grow only when the limit is what bounds us (not while mostly idle).
            st.limit = (st.limit + 1.0 / st.limit).min(self.max);
        }
        if st.limit.floor() != before.floor() {
            ::metrics::gauge!(LIMIT_GAUGE, "protocol" => self.protocol).set(st.limit.floor());
        }
    }

    #[cfg(test)]
    fn limit(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .limit
            .floor() as usize
    }
}

impl Drop for AdaptiveSlot {
    fn drop(&mut self) {
        self.pool.release(self);
    }
}

/// Protocol pools found by a scan of [`Bulkheads::slots`] (no lock, no hash); the route table
/// has about ten protocols, a protocol beyond this many goes to the locked map.
const PROTOCOL_SLOTS: usize = 16;

/// The pools.
pub struct Bulkheads {
    cfg: BulkheadConfig,
    /// The protocol pools, filled in order the first time each protocol is admitted and never
    /// replaced: the per-request lookup is a scan comparing `&'static str`s (pointer first),
    /// then a borrowed permit — instead of a `RwLock` read, a SipHash of the name and two
    /// reference counts. Filled under `fill` (so no protocol gets two pools).
    slots: [OnceLock<(&'static str, ProtocolPool)>; PROTOCOL_SLOTS],
    fill: Mutex<()>,
    /// Protocols beyond the slots (never in practice: the route table's set is fixed).
    protocols: RwLock<HashMap<&'static str, ProtocolPool>>,
    tenants: moka::sync::Cache<String, Arc<Permits>>,
    /// The `default` tenant's pool, held outside the cache: every plain-path request (all of
    /// OCSP and CRL unless Host-mapped) takes it, so it skips the moka probe. One extra pool
    /// beyond `max_tenant_pools`, never evicted.
    default_tenant: Permits,
    clock: Clock,
}

/// A protocol's pool: fixed size, or adaptive (issuance protocols).
#[derive(Clone)]
enum ProtocolPool {
    Fixed(Arc<Permits>),
    Adaptive(Arc<AdaptivePool>),
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
            default_tenant: Permits::new(cfg.per_tenant),
            slots: [const { OnceLock::new() }; PROTOCOL_SLOTS],
            fill: Mutex::new(()),
            protocols: RwLock::new(HashMap::new()),
            cfg,
            clock: Clock::Real,
        }
    }

    /// The protocol's pool in the slot table, if it is there (the per-request path).
    fn slot(&self, protocol: &'static str) -> Option<&ProtocolPool> {
        for slot in &self.slots {
            // Slots fill in order: the first empty one ends the scan.
            let (name, pool) = slot.get()?;
            // Equal `&'static str`s from one route table are usually one pointer; compare the
            // text too, so two copies of a name still share one pool.
            if std::ptr::eq(*name, protocol) || *name == protocol {
                return Some(pool);
            }
        }
        None
    }

    /// The protocol's pool: from the slot table, filling the next slot the first time; beyond
    /// the table, from the locked map. `Err` carries a pool held by `Arc` (the map's).
    fn protocol_pool(&self, protocol: &'static str) -> Result<&ProtocolPool, ProtocolPool> {
        if let Some(p) = self.slot(protocol) {
            return Ok(p);
        }
        let _fill = self.fill.lock().unwrap_or_else(|e| e.into_inner());
        // Another thread may have filled it while this one waited.
        if let Some(p) = self.slot(protocol) {
            return Ok(p);
        }
        if let Some(slot) = self.slots.iter().find(|s| s.get().is_none()) {
            let pool = self.new_protocol_pool(protocol);
            // Only writer under `fill`: the slot is still empty.
            let (_, p) = slot.get_or_init(|| (protocol, pool));
            return Ok(p);
        }
        if let Ok(m) = self.protocols.read()
            && let Some(s) = m.get(protocol)
        {
            return Err(s.clone());
        }
        let make = || self.new_protocol_pool(protocol);
        Err(match self.protocols.write() {
            Ok(mut m) => m.entry(protocol).or_insert_with(make).clone(),
            // A poisoned map cannot happen without a panic elsewhere; a fresh pool still bounds.
            Err(_) => make(),
        })
    }

    fn new_protocol_pool(&self, protocol: &'static str) -> ProtocolPool {
        let size = self
            .cfg
            .protocols
            .get(protocol)
            .copied()
            .unwrap_or(self.cfg.per_protocol);
        if self.cfg.adaptive.iter().any(|p| p == protocol) {
            ProtocolPool::Adaptive(Arc::new(AdaptivePool::new(
                protocol,
                size,
                &self.cfg,
                self.clock.clone(),
            )))
        } else {
            ProtocolPool::Fixed(Arc::new(Permits::new(size)))
        }
    }

    /// Takes a permit from both pools, or says which one is full. Never waits.
    pub fn admit(&self, protocol: &'static str, tenant: &str) -> Result<Admission<'_>, Pool> {
        // The tenant's permit first: a request its tenant pool refuses never touches (or
        // reports a latency sample to) the protocol's pool.
        let t = if tenant == crate::tenant::DEFAULT_TENANT {
            TenantPermit::Default(self.default_tenant.try_acquire().ok_or(Pool::Tenant)?)
        } else {
            let per_tenant = self.cfg.per_tenant;
            TenantPermit::Named(
                self.tenants
                    .get_with_by_ref(tenant, || Arc::new(Permits::new(per_tenant)))
                    .try_acquire_owned()
                    .ok_or(Pool::Tenant)?,
            )
        };
        let p = match self.protocol_pool(protocol) {
            Ok(ProtocolPool::Fixed(s)) => {
                ProtocolPermit::Fixed(s.try_acquire().ok_or(Pool::Protocol)?)
            }
            Ok(ProtocolPool::Adaptive(a)) => ProtocolPermit::Adaptive(a.admit(tenant)?),
            Err(ProtocolPool::Fixed(s)) => {
                ProtocolPermit::FixedOwned(s.try_acquire_owned().ok_or(Pool::Protocol)?)
            }
            Err(ProtocolPool::Adaptive(a)) => ProtocolPermit::Adaptive(a.admit(tenant)?),
        };
        Ok(Admission {
            _protocol: p,
            _tenant: t,
        })
    }

    /// Free permits in `protocol`'s pool (for tests and debugging).
    pub fn available(&self, protocol: &'static str) -> usize {
        let owned;
        let pool = match self.protocol_pool(protocol) {
            Ok(p) => p,
            Err(p) => {
                owned = p;
                &owned
            }
        };
        match pool {
            ProtocolPool::Fixed(s) => s.available(),
            ProtocolPool::Adaptive(a) => {
                let st = a.state.lock().unwrap_or_else(|e| e.into_inner());
                (st.limit.floor() as usize).saturating_sub(st.in_flight)
            }
        }
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
            ..BulkheadConfig::default()
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
    fn every_protocol_gets_its_own_pool_in_and_beyond_the_slot_table() {
        const NAMES: [&str; PROTOCOL_SLOTS + 4] = [
            "p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10", "p11", "p12", "p13",
            "p14", "p15", "p16", "p17", "p18", "p19",
        ];
        let b = Bulkheads::new(BulkheadConfig {
            per_protocol: 1,
            per_tenant: 1000,
            adaptive: vec![],
            ..BulkheadConfig::default()
        });
        // One permit held per protocol, the slots filled and four protocols beyond them.
        let held: Vec<_> = NAMES
            .iter()
            .map(|p| {
                b.admit(p, DEFAULT)
                    .expect("each protocol's own first permit")
            })
            .collect();
        assert!(b.slots.iter().all(|s| s.get().is_some()), "slots filled");
        for p in NAMES {
            assert_eq!(
                b.admit(p, DEFAULT).err(),
                Some(Pool::Protocol),
                "{p} is full"
            );
            assert_eq!(b.available(p), 0, "{p}");
        }
        drop(held);
        for p in NAMES {
            assert_eq!(b.available(p), 1, "{p} released");
        }
    }

    #[test]
    fn one_protocol_name_from_two_places_shares_one_pool() {
        let b = small();
        let copy: &'static str = String::from("ocsp").leak();
        assert!(!std::ptr::eq(copy, "ocsp"), "a distinct pointer");
        let _held = b.admit("ocsp", DEFAULT).expect("first");
        assert_eq!(b.admit(copy, DEFAULT).err(), Some(Pool::Protocol));
        assert_eq!(b.admit(copy, "other").err(), Some(Pool::Protocol));
    }

    #[test]
    fn racing_first_admissions_create_one_pool_per_protocol() {
        const THREADS: usize = 8;
        for _ in 0..20 {
            let b = Arc::new(Bulkheads::new(BulkheadConfig {
                per_protocol: 3,
                per_tenant: 100,
                ..BulkheadConfig::default()
            }));
            let start = Arc::new(std::sync::Barrier::new(THREADS));
            let counted = Arc::new(std::sync::Barrier::new(THREADS));
            let won: usize = (0..THREADS)
                .map(|i| {
                    let (b, start, counted) = (b.clone(), start.clone(), counted.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        let tenant = if i % 2 == 0 { DEFAULT } else { "other" };
                        let a = b.admit("ocsp", tenant);
                        let won = a.is_ok();
                        counted.wait();
                        drop(a);
                        usize::from(won)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .sum();
            assert_eq!(won, 3, "one pool of 3, whichever thread created it");
            assert_eq!(
                b.slots.iter().filter(|s| s.get().is_some()).count(),
                1,
                "one slot"
            );
            assert_eq!(b.available("ocsp"), 3);
        }
    }

    #[test]
    fn named_tenant_permits_survive_their_pool_being_evicted() {
        let b = Bulkheads::new(BulkheadConfig {
            protocols: BTreeMap::from([("acme".to_owned(), 4)]),
            per_tenant: 3,
            ..BulkheadConfig::default()
        });
        let held: Vec<_> = (0..3)
            .map(|_| b.admit("acme", "t").expect("t's three"))
            .collect();
        b.tenants.invalidate("t");
        b.tenants.run_pending_tasks();
        // A fresh pool for `t` (the evicted one lives on in the permits), and the protocol's
        // own bound still counts the old permits.
        let _fresh = b.admit("acme", "t").expect("fresh pool");
        assert_eq!(b.admit("acme", "u").err(), Some(Pool::Protocol));
        drop(held);
        assert!(
            b.admit("acme", "u").is_ok(),
            "released into the protocol pool"
        );
    }

    fn adaptive(size: usize) -> Bulkheads {
        Bulkheads::new(BulkheadConfig {
            protocols: BTreeMap::from([("est".to_owned(), size)]),
            adaptive_min: 2,
            ..BulkheadConfig::default()
        })
    }

    fn est_pool(b: &Bulkheads) -> Arc<AdaptivePool> {
        match b.protocol_pool("est") {
            Ok(ProtocolPool::Adaptive(a)) => a.clone(),
            _ => panic!("est is adaptive by default, in a slot"),
        }
    }

    #[test]
    fn an_adaptive_pool_shrinks_when_latency_rises_and_grows_back_when_it_falls() {
        let mut b = adaptive(16);
        let clock = Arc::new(Mutex::new(Instant::now()));
        b.clock = Clock::Manual(clock.clone());
        let tick = |ms: u64| {
            let mut t = clock.lock().unwrap_or_else(|e| e.into_inner());
            *t += std::time::Duration::from_millis(ms);
        };
        let pool = est_pool(&b);
        // Unloaded samples (one at a time): 1 ms.
        for _ in 0..5 {
            tick(1);
            let a = b.admit("est", "t").expect("idle pool admits");
            tick(1);
            drop(a);
        }
        assert_eq!(
            pool.limit(),
            8,
            "starts at 4 x adaptive_min; fast lone answers keep it"
        );
        // Overload: every round trip takes 20x the unloaded latency (one request stays in
        // flight throughout, as under a steady load, so no sample counts as unloaded).
        let steady = b.admit("est", "steady").expect("admits");
        for _ in 0..30 {
            tick(1);
            let held: Vec<_> = (0..pool.limit())
                .filter_map(|i| b.admit("est", &format!("t{i}")).ok())
                .collect();
            tick(20);
            drop(held);
        }
        assert_eq!(pool.limit(), 2, "shrunk to adaptive_min");
        drop(steady);
        let held: Vec<_> = (0..2)
            .map(|_| b.admit("est", "u").expect("within the limit"))
            .collect();
        assert_eq!(
            b.admit("est", "u").err(),
            Some(Pool::Protocol),
            "beyond the limit: shed"
        );
        let v: Vec<_> = (0..2)
            .map(|_| b.admit("est", "v").expect("a share beyond the limit"))
            .collect();
        assert_eq!(b.admit("est", "v").err(), Some(Pool::Tenant));
        tick(1);
        drop((held, v));
        // Fast again (answers within the unloaded latency): the limit climbs back (additive:
        // ~1 per limit's worth of answers).
        for _ in 0..200 {
            tick(1);
            let held: Vec<_> = (0..pool.limit())
                .filter_map(|i| b.admit("est", &format!("w{i}")).ok())
                .collect();
            tick(1);
            drop(held);
        }
        assert!(pool.limit() >= 8, "grew back: {}", pool.limit());
    }

    #[test]
    fn a_flooding_tenant_cannot_lock_another_out_of_an_adaptive_pool() {
        let b = adaptive(8);
        // Alone, a tenant may fill the whole limit (8 = 4 x adaptive_min).
        let mut flood: Vec<_> = (0..8)
            .map(|_| b.admit("est", "flood").expect("alone: the whole limit"))
            .collect();
        assert_eq!(
            b.admit("est", "flood").err(),
            Some(Pool::Protocol),
            "alone: the limit"
        );
        // Another tenant still gets its share (4 of 8), beyond the full limit.
        let quiet: Vec<_> = (0..4)
            .map(|_| b.admit("est", "quiet").expect("below its share"))
            .collect();
        // The hard bound: the pool's size plus one share.
        for t in ["quiet", "third"] {
            assert_eq!(
                b.admit("est", t).err(),
                Some(Pool::Protocol),
                "size + share"
            );
        }
        // As the flood's requests finish, it cannot refill beyond its share while others run
        // (and the other tenant, holding less than the flood did, was never the one refused).
        flood.truncate(3);
        let fourth = b.admit("est", "flood").expect("4th: within its share");
        assert_eq!(b.admit("est", "flood").err(), Some(Pool::Tenant));
        drop(fourth);
        let mut quiet = quiet;
        quiet.truncate(1);
        let q = b.admit("est", "quiet").expect("holds less than the flood");
        drop(q);
        drop((flood, quiet));
        assert!(b.admit("est", "flood").is_ok(), "freed on drop");
        // Fixed pools (OCSP) are unaffected by the share.
        let _o: Vec<_> = (0..8)
            .map(|_| b.admit("ocsp", "flood").expect("fixed pool"))
            .collect();
    }

    #[test]
    fn adaptive_settings_are_validated() {
        for cfg in [
            BulkheadConfig {
                adaptive_min: 0,
                ..BulkheadConfig::default()
            },
            BulkheadConfig {
                adaptive_latency_factor: 0.5,
                ..BulkheadConfig::default()
            },
            BulkheadConfig {
                tenant_share: 0.0,
                ..BulkheadConfig::default()
            },
        ] {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
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
