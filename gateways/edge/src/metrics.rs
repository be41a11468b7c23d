//! Prometheus metrics (served on the admin listener's `/metrics`).
//!
//! Requests are counted and timed with labels `protocol`, `tenant`, `endpoint`, `outcome`. Label
//! values come from fixed sets (`endpoint` is a `&'static str` the handler names, see
//! [`Endpoint`]) or from tenant names the core confirmed exist (unknown ones are labelled
//! `unknown`), so cardinality stays bounded (I-8).

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests served, by protocol, tenant and outcome.
pub const REQUESTS_TOTAL: &str = "certgate_edge_requests_total";
/// Request latency in seconds, by protocol, tenant and outcome.
pub const REQUEST_SECONDS: &str = "certgate_edge_request_duration_seconds";
/// Core RPC latency in seconds, by method and outcome (an error kind or `ok`).
pub const CORE_CALL_SECONDS: &str = "certgate_edge_core_call_duration_seconds";
/// Requests refused because a bulkhead was full, by protocol, tenant and pool.
pub const SHED_TOTAL: &str = "certgate_edge_shed_total";
/// Requests refused by a rate limit, by protocol, tenant and rule.
pub const RATE_LIMITED_TOTAL: &str = "certgate_edge_rate_limited_total";
/// Retries of idempotent core calls, by method.
pub const CORE_RETRIES_TOTAL: &str = "certgate_edge_core_retries_total";
/// Connections currently open, by listener.
pub const CONNECTIONS_OPEN: &str = "certgate_edge_connections_open";
/// Responses sent, by `http_version` (`1.0`, `1.1`, `2`, `3`), listener and status class.
pub const HTTP_REQUESTS_TOTAL: &str = "certgate_edge_http_requests_total";
/// QUIC connection attempts turned away before the handshake, by reason: `max_connections`
/// (refused at the cap) or `retry` (asked to validate its address first, under pressure).
pub const H3_REFUSED_TOTAL: &str = "certgate_edge_h3_refused_total";

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct MetricsError(String);

/// Installs the global recorder and returns the handle `/metrics` renders from.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(REQUEST_SECONDS.to_owned()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .map_err(|e| MetricsError(e.to_string()))?
        .set_buckets_for_metric(
            Matcher::Full(CORE_CALL_SECONDS.to_owned()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
            ],
        )
        .map_err(|e| MetricsError(e.to_string()))?
        .install_recorder()
        .map_err(|e| MetricsError(e.to_string()))?;
    INSTALLED.store(true, Ordering::Relaxed);
    metrics::describe_counter!(REQUESTS_TOTAL, "Requests served by the edge");
    metrics::describe_gauge!(CONNECTIONS_OPEN, "Open client connections");
    metrics::describe_counter!(SHED_TOTAL, "Requests refused by a full bulkhead");
    metrics::describe_counter!(RATE_LIMITED_TOTAL, "Requests refused by a rate limit");
    metrics::describe_counter!(CORE_RETRIES_TOTAL, "Retries of idempotent core calls");
    metrics::describe_histogram!(
        CORE_CALL_SECONDS,
        metrics::Unit::Seconds,
        "Latency of the edge's calls to the core"
    );
    Ok(handle)
}

/// The endpoint a handler served, put in the response's extensions so the pipeline can label
/// the request metrics with it (`directory`, `new-order`, …). Absent = `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint(pub &'static str);

/// Records one finished request.
pub fn record(protocol: &'static str, tenant: &str, outcome: &'static str, elapsed: Duration) {
    record_endpoint(protocol, tenant, "other", outcome, elapsed);
}

/// Records one request refused by a bulkhead.
pub fn record_shed(protocol: &'static str, tenant: &str, pool: &'static str) {
    metrics::counter!(SHED_TOTAL, "protocol" => protocol, "tenant" => tenant.to_owned(), "pool" => pool)
        .increment(1);
}

/// Records one request refused by a rate limit.
pub fn record_rate_limited(protocol: &'static str, tenant: &str, rule: &'static str) {
    metrics::counter!(RATE_LIMITED_TOTAL, "protocol" => protocol, "tenant" => tenant.to_owned(), "rule" => rule)
        .increment(1);
}

/// Records one finished request with its endpoint.
pub fn record_endpoint(
    protocol: &'static str,
    tenant: &str,
    endpoint: &'static str,
    outcome: &'static str,
    elapsed: Duration,
) {
    static HANDLES: HandleCache = HandleCache::new();
    HANDLES.with(
        [protocol, endpoint, outcome],
        tenant,
        || {
            let labels = [
                ("protocol", protocol.to_owned()),
                ("tenant", tenant.to_owned()),
                ("endpoint", endpoint.to_owned()),
                ("outcome", outcome.to_owned()),
            ];
            (
                metrics::counter!(REQUESTS_TOTAL, &labels),
                latency_histogram(
                    REQUEST_SECONDS,
                    "Edge request latency",
                    &[
                        ("protocol", protocol),
                        ("tenant", tenant),
                        ("endpoint", endpoint),
                        ("outcome", outcome),
                    ],
                ),
            )
        },
        |counter, histogram| {
            counter.increment(1);
            histogram.record(elapsed);
        },
    );
}

/// Upper bounds (seconds) of the request-latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`LATENCY_BUCKETS`] in nanoseconds (what a sample is compared with).
const LATENCY_BUCKET_NANOS: [u64; 13] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A request-latency histogram with fixed buckets ([`LATENCY_BUCKETS`]), kept by the edge
/// itself and rendered into `/metrics` by [`render`].
///
/// Why not the exporter's histogram: `metrics-exporter-prometheus` keeps every sample in a
/// lock-free queue and folds it into its buckets at upkeep or scrape — ~1,200 instructions per
/// sample on the OCSP path (and a DDSketch for histograms without buckets), two samples per
/// OCSP request. Here a sample is a bucket search over 13 integers and two atomic adds; the
/// exposition is the same (`_bucket{le}` cumulative, `_sum`, `_count`), and a scrape always
/// sees every sample recorded before it.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Samples per bucket (not cumulative); the last slot counts those above every bound.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of all samples, nanoseconds.
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// Counts one sample.
    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // The first bucket whose bound is at least the sample (`le`: less or equal).
        let i = LATENCY_BUCKET_NANOS.partition_point(|b| *b < nanos);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// (cumulative count per bucket bound and `+Inf`, sum in seconds).
    fn snapshot(&self) -> ([u64; LATENCY_BUCKETS.len() + 1], f64) {
        let mut cumulative = [0u64; LATENCY_BUCKETS.len() + 1];
        let mut total = 0u64;
        for (c, slot) in self.counts.iter().zip(cumulative.iter_mut()) {
            total += c.load(Ordering::Relaxed);
            *slot = total;
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, sum)
    }
}

/// Label pairs of one histogram series (names static, values owned).
type SeriesLabels = Vec<(&'static str, String)>;

/// Histogram families by name: help text and series by labels.
type Families = std::collections::BTreeMap<
    &'static str,
    (
        &'static str,
        std::collections::BTreeMap<SeriesLabels, std::sync::Arc<LatencyHistogram>>,
    ),
>;

static HISTOGRAMS: std::sync::Mutex<Families> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The histogram series `name{labels}`, registered on first use (the per-request path reaches
/// it through a [`HandleCache`]). Label values come from the same bounded sets as the counters'.
pub fn latency_histogram(
    name: &'static str,
    help: &'static str,
    labels: &[(&'static str, &str)],
) -> std::sync::Arc<LatencyHistogram> {
    let key: SeriesLabels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    let mut families = HISTOGRAMS.lock().unwrap_or_else(|e| e.into_inner());
    families
        .entry(name)
        .or_insert_with(|| (help, Default::default()))
        .1
        .entry(key)
        .or_default()
        .clone()
}

/// `/metrics`: what the Prometheus recorder holds, then the edge's own latency histograms.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    render_histograms(&mut out);
    out
}

/// Appends every [`LatencyHistogram`] in the Prometheus text format.
fn render_histograms(out: &mut String) {
    use std::fmt::Write as _;
    let families = HISTOGRAMS.lock().unwrap_or_else(|e| e.into_inner());
    for (name, (help, series)) in families.iter() {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (labels, h) in series {
            let mut l = String::new();
            for (k, v) in labels {
                let _ = write!(l, "{k}=\"{}\",", escape_label(v));
            }
            let (cumulative, sum) = h.snapshot();
            for (bound, n) in LATENCY_BUCKETS.iter().zip(cumulative) {
                let _ = writeln!(out, "{name}_bucket{{{l}le=\"{bound}\"}} {n}");
            }
            let count = cumulative[LATENCY_BUCKETS.len()];
            let _ = writeln!(out, "{name}_bucket{{{l}le=\"+Inf\"}} {count}");
            let l = l.trim_end_matches(',');
            let _ = writeln!(out, "{name}_sum{{{l}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{l}}} {count}");
        }
    }
}

/// A label value as the text format wants it (`\`, `"` and newlines escaped).
fn escape_label(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

/// Most label sets a [`HandleCache`] keeps registered handles for; beyond, requests are still
/// counted, through the registry lookup (bounded memory, I-8).
const MAX_CACHED_HANDLES: usize = 4096;

/// Registered counter and histogram handles per label set (three static labels plus the
/// tenant), so the per-request path skips building the label `String`s, hashing the key and the
/// recorder's registry lookup: a read lock, a hash of three addresses and the tenant, and three
/// atomic updates. Filled only once
/// [`install`] has run (a handle taken before would stay a no-op); bounded by
/// [`MAX_CACHED_HANDLES`].
pub struct HandleCache {
    map: std::sync::OnceLock<RwLock<HandleMap>>,
    len: AtomicUsize,
}

type Handles = (metrics::Counter, std::sync::Arc<LatencyHistogram>);
/// Static labels → tenant → handles.
type HandleMap = HashMap<Statics, HashMap<Box<str>, Handles, Fx>, Fx>;

/// The three static label values of a [`HandleCache`] key, compared and hashed by address
/// (pointer and length): six words instead of every byte of three strings. Equal addresses
/// mean equal text; equal text at two addresses (the same literal in two places) only makes
/// two cache entries holding handles of the same series.
#[derive(Clone, Copy)]
struct Statics([&'static str; 3]);

impl PartialEq for Statics {
    fn eq(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .all(|(a, b)| std::ptr::eq(*a, *b))
    }
}

impl Eq for Statics {}

impl std::hash::Hash for Statics {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for s in self.0 {
            state.write_usize(s.as_ptr() as usize);
            state.write_usize(s.len());
        }
    }
}

/// A multiply-rotate hash (rustc's FxHash) for the handle maps: their keys are addresses and
/// short tenant names, where SipHash's setup costs more than the lookup. Flooding is not a
/// concern: the keys are fixed label values and tenants the core confirmed, at most
/// [`MAX_CACHED_HANDLES`] of them.
type Fx = std::hash::BuildHasherDefault<FxHasher>;

/// See [`Fx`].
#[derive(Default)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// Set by [`install`]: handles registered from now on reach the Prometheus recorder.
static INSTALLED: AtomicBool = AtomicBool::new(false);

impl HandleCache {
    /// An empty cache (usable as a `static`).
    pub const fn new() -> Self {
        Self {
            map: std::sync::OnceLock::new(),
            len: AtomicUsize::new(0),
        }
    }

    /// Runs `f` on the handles for (`statics`, `tenant`), registering them with `make` first if
    /// they are not cached yet.
    pub fn with(
        &self,
        statics: [&'static str; 3],
        tenant: &str,
        make: impl FnOnce() -> Handles,
        f: impl FnOnce(&metrics::Counter, &LatencyHistogram),
    ) {
        if !INSTALLED.load(Ordering::Relaxed) {
            let (c, h) = make();
            return f(&c, &h);
        }
        let map = self.map.get_or_init(Default::default);
        if let Ok(m) = map.read()
            && let Some((c, h)) = m.get(&Statics(statics)).and_then(|t| t.get(tenant))
        {
            return f(c, h);
        }
        let (c, h) = make();
        f(&c, &h);
        if self.len.load(Ordering::Relaxed) < MAX_CACHED_HANDLES
            && let Ok(mut m) = map.write()
        {
            let per_tenant = m.entry(Statics(statics)).or_default();
            if !per_tenant.contains_key(tenant) {
                per_tenant.insert(tenant.into(), (c, h));
                self.len.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Default for HandleCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Records one core RPC.
pub fn record_core_call(method: &'static str, outcome: &'static str, elapsed: Duration) {
    metrics::histogram!(CORE_CALL_SECONDS, "method" => method, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// Records one response by transport: `http_version` (`1.0`, `1.1`, `2`, `3`), listener and
/// status class (`2xx` … `5xx`); all label values come from fixed sets.
pub fn record_http_version(
    version: http::Version,
    listener: &'static str,
    status: http::StatusCode,
) {
    let (vi, v) = match version {
        http::Version::HTTP_09 => (0, "0.9"),
        http::Version::HTTP_10 => (1, "1.0"),
        http::Version::HTTP_11 => (2, "1.1"),
        http::Version::HTTP_2 => (3, "2"),
        http::Version::HTTP_3 => (4, "3"),
        _ => (5, "other"),
    };
    let (ci, class) = match status.as_u16() {
        100..=199 => (0, "1xx"),
        200..=299 => (1, "2xx"),
        300..=399 => (2, "3xx"),
        400..=499 => (3, "4xx"),
        _ => (4, "5xx"),
    };
    // Registered handles per (version, listener, class) for the TCP listeners, so the per-request
    // path is one atomic add instead of a registry lookup (hashing the key, comparing labels).
    // Taken only once the recorder is installed (a handle taken before would stay a no-op).
    static HANDLES: [[[std::sync::OnceLock<metrics::Counter>; 5]; 2]; 6] =
        [const { [const { [const { std::sync::OnceLock::new() }; 5] }; 2] }; 6];
    let li = match listener {
        "http" => Some(0),
        "https" => Some(1),
        _ => None,
    };
    let make = || metrics::counter!(HTTP_REQUESTS_TOTAL, "http_version" => v, "listener" => listener, "status" => class);
    match li {
        Some(li) if INSTALLED.load(Ordering::Relaxed) => {
            HANDLES[vi][li][ci].get_or_init(make).increment(1)
        }
        _ => make().increment(1),
    }
}

/// Folds histogram samples into their buckets every few seconds. `install_recorder` (unlike
/// `install`) spawns no upkeep task, and without one every histogram keeps each raw sample until
/// the next `/metrics` scrape — memory growing with the request rate when nothing scrapes
/// (I-8). Runs until `shutdown` flips.
pub async fn upkeep(handle: PrometheusHandle, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handle_cache_keeps_tenants_and_label_sets_apart() {
        let handle = install().expect("recorder (one per test process)");
        static CACHE: HandleCache = HandleCache::new();
        let rec = |statics: [&'static str; 3], tenant: &str| {
            CACHE.with(
                statics,
                tenant,
                || {
                    (
                        metrics::counter!(
                            "test_cache_total",
                            "a" => statics[0],
                            "b" => statics[1],
                            "c" => statics[2],
                            "tenant" => tenant.to_owned()
                        ),
                        latency_histogram("test_cache_seconds", "x", &[("tenant", tenant)]),
                    )
                },
                |c, h| {
                    c.increment(1);
                    h.record(Duration::from_millis(1));
                },
            )
        };
        for _ in 0..3 {
            rec(["x", "y", "z"], "t1");
        }
        rec(["x", "y", "z"], "t2");
        rec(["x", "y", "w"], "t1");
        // The same text at another address: its own cache entry, the same series.
        let copy: &'static str = String::from("x").leak();
        rec([copy, "y", "z"], "t1");
        let out = render(&handle);
        let value = |series: &str| {
            out.lines()
                .find(|l| l.starts_with(series))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("no {series} in\n{out}"))
        };
        assert_eq!(
            value(r#"test_cache_total{a="x",b="y",c="z",tenant="t1"}"#),
            "4"
        );
        assert_eq!(
            value(r#"test_cache_total{a="x",b="y",c="z",tenant="t2"}"#),
            "1"
        );
        assert_eq!(
            value(r#"test_cache_total{a="x",b="y",c="w",tenant="t1"}"#),
            "1"
        );
        assert_eq!(value(r#"test_cache_seconds_count{tenant="t1"}"#), "5");
        assert_eq!(value(r#"test_cache_seconds_count{tenant="t2"}"#), "1");
    }

    #[test]
    fn latency_histograms_count_each_sample_in_its_le_bucket_and_render_cumulatively() {
        let h = latency_histogram(
            "test_latency_seconds",
            "Test latency",
            &[("protocol", "ocsp"), ("tenant", "a\"b")],
        );
        let same = latency_histogram(
            "test_latency_seconds",
            "Test latency",
            &[("protocol", "ocsp"), ("tenant", "a\"b")],
        );
        assert!(
            std::sync::Arc::ptr_eq(&h, &same),
            "one series per label set"
        );
        let other = latency_histogram(
            "test_latency_seconds",
            "Test latency",
            &[("protocol", "ocsp"), ("tenant", "b")],
        );
        h.record(Duration::from_micros(500)); // le 0.001
        h.record(Duration::from_millis(1)); // exactly on a bound: le 0.001
        h.record(Duration::from_millis(3)); // le 0.005
        h.record(Duration::from_secs(60)); // above every bound: +Inf only
        other.record(Duration::from_millis(20));
        let mut out = String::new();
        render_histograms(&mut out);
        let line = |l: &str| {
            out.lines()
                .find(|x| x.starts_with(l))
                .and_then(|x| x.rsplit(' ').next())
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("no line {l} in\n{out}"))
        };
        let s = r#"test_latency_seconds_bucket{protocol="ocsp",tenant="a\"b","#;
        assert_eq!(line(&format!("{s}le=\"0.001\"}}")), "2");
        assert_eq!(line(&format!("{s}le=\"0.0025\"}}")), "2");
        assert_eq!(line(&format!("{s}le=\"0.005\"}}")), "3");
        assert_eq!(line(&format!("{s}le=\"10\"}}")), "3");
        assert_eq!(line(&format!("{s}le=\"+Inf\"}}")), "4");
        assert_eq!(
            line(r#"test_latency_seconds_count{protocol="ocsp",tenant="a\"b"}"#),
            "4"
        );
        let sum: f64 = line(r#"test_latency_seconds_sum{protocol="ocsp",tenant="a\"b"}"#)
            .parse()
            .expect("sum is a number");
        assert!((sum - 60.0045).abs() < 1e-9, "{sum}");
        assert_eq!(
            line(r#"test_latency_seconds_bucket{protocol="ocsp",tenant="b",le="0.025"}"#),
            "1",
            "the other tenant's series is separate"
        );
        assert_eq!(
            line(r#"test_latency_seconds_bucket{protocol="ocsp",tenant="b",le="0.01"}"#),
            "0"
        );
        assert_eq!(
            out.matches("# TYPE test_latency_seconds histogram").count(),
            1,
            "one TYPE line per family"
        );
    }
}
