//! The background task that keeps the status cache current from the core's `WatchStatus`
//! stream.
//!
//! - Reconnects after any stream end or error with exponential backoff (doubling from
//!   `backoff_initial` to `backoff_max`, with up to 25% jitter so a fleet of edges does not
//!   reconnect in lockstep after a core restart); a connection that delivered events resets it.
//! - Resumes from the last cursor it committed. The cursor is committed for live events, and for
//!   `snapshot_complete`; events of a snapshot in progress (after a `reset` or when starting from
//!   cursor 0) are not committed one by one, so a stream broken mid-snapshot resumes from before
//!   it and gets the whole snapshot again rather than half of one.
//! - A stream silent for longer than `idle_timeout` (the core sends heartbeats when idle) is
//!   treated as dead and reopened.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certgate_proto::core::WatchStatusRequest;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Applied, STATUS_STREAM_CONNECTED, StatusCache};
use crate::core_client::CoreClient;

/// Timing of the watch task (the `[status]` config section).
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// A stream with no event (heartbeats included) for this long is reopened.
    pub idle_timeout: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Runs until `shutdown` flips: keeps `cache` in step with the core.
pub async fn run(
    cache: StatusCache,
    core: CoreClient,
    settings: WatchSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = settings.backoff_initial;
    let mut gauges = tokio::time::interval(Duration::from_secs(5));
    gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let cursor = cache.cursor();
        debug!(cursor, "opening the status stream");
        let opened = tokio::select! {
            r = core.watch_status(WatchStatusRequest { cursor, tenants: Vec::new() }) => r,
            _ = crate::server::stopped(&mut shutdown) => return,
        };
        match opened {
            Ok(mut stream) => {
                info!(cursor, "status stream open");
                metrics::gauge!(STATUS_STREAM_CONNECTED).set(1.0);
                // Starting from nothing means a snapshot comes first.
                let mut in_snapshot = cursor == 0;
                loop {
                    let next = tokio::select! {
                        r = tokio::time::timeout(settings.idle_timeout, stream.message()) => r,
                        _ = gauges.tick() => { cache.publish_gauges(); continue; }
                        _ = crate::server::stopped(&mut shutdown) => {
                            metrics::gauge!(STATUS_STREAM_CONNECTED).set(0.0);
                            return;
                        }
                    };
                    match next {
                        Ok(Ok(Some(ev))) => {
                            backoff = settings.backoff_initial;
                            let at = ev.cursor;
                            match cache.apply(ev) {
                                Applied::Reset => in_snapshot = true,
                                Applied::SnapshotComplete => {
                                    in_snapshot = false;
                                    cache.set_cursor(at);
                                    cache.publish_gauges();
                                }
                                Applied::Other if !in_snapshot && at != 0 => cache.set_cursor(at),
                                Applied::Other => {}
                            }
                        }
                        Ok(Ok(None)) => {
                            info!("the core ended the status stream");
                            break;
                        }
                        Ok(Err(status)) => {
                            warn!(code = ?status.code(), message = status.message(), "status stream failed");
                            break;
                        }
                        Err(_) => {
                            warn!(
                                idle_seconds = settings.idle_timeout.as_secs(),
                                "status stream silent (no heartbeat); reopening"
                            );
                            break;
                        }
                    }
                }
                metrics::gauge!(STATUS_STREAM_CONNECTED).set(0.0);
            }
            Err(e) => {
                debug!(error = %e, "cannot open the status stream");
            }
        }
        let delay = jitter(backoff);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = crate::server::stopped(&mut shutdown) => return,
        }
        backoff = (backoff * 2).min(settings.backoff_max);
    }
}

/// `d` plus up to 25% (from the clock's sub-second nanoseconds: spread, not secrecy).
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}
