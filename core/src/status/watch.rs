//! `Core.WatchStatus`: issuers, then (unless resuming) a snapshot, `snapshot_complete`, live
//! events and heartbeats.
//!
//! Memory per subscriber is bounded: the snapshot and the live events are read from the store in
//! pages of [`PAGE`] into a channel of [`CHANNEL`] messages; the whole set is never held. A
//! subscriber that takes nothing for `[status] subscriber_timeout_ms` (default 30 s) is dropped;
//! it reconnects with its cursor and resumes. Snapshot entries carry cursor 0 (an edge must not
//! resume from the middle of a snapshot); `snapshot_complete`, live entries and heartbeats carry
//! the cursor to resume from.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use certgate_proto::core::{IssuerEntry, StatusEvent, WatchStatusRequest, status_event::Event};
use tokio::sync::mpsc;
use tonic::Status;

use super::{StatusEngine, crl_entry, ocsp_entry};
use crate::error::{CoreError, Result};
use crate::store::status::{SnapshotPos, StatusItem};

/// Rows read from the store at once.
pub const PAGE: usize = 256;
/// Messages buffered per subscriber.
pub const CHANNEL: usize = 64;

/// The stream type.
pub type Events = tokio_stream::wrappers::ReceiverStream<std::result::Result<StatusEvent, Status>>;

struct Sub {
    engine: Arc<StatusEngine>,
    tx: mpsc::Sender<std::result::Result<StatusEvent, Status>>,
    tenants: HashSet<String>,
    sent_issuers: HashSet<String>,
}

/// Why a subscription task stops.
enum Stop {
    /// The subscriber went away or fell behind.
    Gone,
    /// The store failed.
    Failed(CoreError),
}

impl From<CoreError> for Stop {
    fn from(e: CoreError) -> Self {
        Stop::Failed(e)
    }
}

impl Sub {
    fn wants(&self, tenant: &str) -> bool {
        self.tenants.is_empty() || self.tenants.contains(tenant)
    }

    async fn send(&self, cursor: u64, event: Event) -> std::result::Result<(), Stop> {
        let ev = StatusEvent {
            cursor,
            event: Some(event),
        };
        let limit = Duration::from_millis(self.engine.cfg.subscriber_timeout_ms);
        match tokio::time::timeout(limit, self.tx.send(Ok(ev))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::Gone),
            Err(_) => {
                metrics::counter!("certgate_core_status_subscribers_dropped_total").increment(1);
                tracing::info!("status subscriber fell behind; dropped (it resumes by cursor)");
                Err(Stop::Gone)
            }
        }
    }

    async fn issuer(&mut self, issuer_id: &str) -> std::result::Result<(), Stop> {
        if self.sent_issuers.contains(issuer_id) {
            return Ok(());
        }
        let ctx = self.engine.issuer(issuer_id)?;
        self.sent_issuers.insert(issuer_id.to_owned());
        self.send(
            0,
            Event::Issuer(IssuerEntry {
                tenant: ctx.ca.tenant.clone(),
                issuer_id: issuer_id.to_owned(),
                cert_der: ctx.ca.cert_der.clone(),
            }),
        )
        .await
    }

    /// Sends an entry (its issuer first if this stream has not named it yet).
    async fn item(&mut self, cursor: u64, item: StatusItem) -> std::result::Result<(), Stop> {
        let (tenant, issuer) = match &item {
            StatusItem::Ocsp(o) => (o.tenant.clone(), o.issuer_id.clone()),
            StatusItem::Crl(c) => (c.tenant.clone(), c.issuer_id.clone()),
        };
        if !self.wants(&tenant) {
            return Ok(());
        }
        self.issuer(&issuer).await?;
        let event = match item {
            StatusItem::Ocsp(o) => Event::Ocsp(ocsp_entry(o)),
            StatusItem::Crl(c) => Event::Crl(crl_entry(c)),
        };
        self.send(cursor, event).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&StatusEngine) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(|e| CoreError::Internal(format!("blocking task: {e}")))?
    }

    /// Streams every current entry; returns the cursor the snapshot is complete up to.
    async fn snapshot(&mut self) -> std::result::Result<u64, Stop> {
        // Read first: anything stored during the scan has a higher cursor and follows as live.
        let upto = self.blocking(|e| e.status.latest_cursor()).await?;
        let mut pos = SnapshotPos::Ocsp(0);
        while pos != SnapshotPos::Done {
            let (items, next) = self
                .blocking(move |e| e.status.snapshot_page(pos, PAGE))
                .await?;
            for item in items {
                self.item(0, item).await?;
            }
            pos = next;
        }
        self.send(upto, Event::SnapshotComplete(true)).await?;
        Ok(upto)
    }

    async fn run(mut self, requested: u64) -> std::result::Result<(), Stop> {
        // Issuers of the tenants asked for, before anything that names them.
        let cas = self.blocking(|e| e.store.list_cas(None)).await?;
        for ca in cas.into_iter().filter(|c| c.kind == "issuing") {
            if self.wants(&ca.tenant) {
                self.issuer(&ca.ca_id).await?;
            }
        }
        let (latest, resumable) = self
            .blocking(|e| Ok((e.status.latest_cursor()?, e.status.resumable_from()?)))
            .await?;
        let mut cursor = if requested != 0 && requested >= resumable && requested <= latest {
            requested
        } else {
            if requested != 0 {
                metrics::counter!("certgate_core_status_resets_total").increment(1);
                self.send(0, Event::Reset(true)).await?;
            }
            self.snapshot().await?
        };
        let mut wake = self.engine.subscribe();
        let heartbeat = Duration::from_secs(self.engine.cfg.heartbeat_secs);
        loop {
            wake.borrow_and_update();
            let (page, resumable) = self
                .blocking(move |e| {
                    let page = e.status.events_after(cursor, PAGE)?;
                    // Read after the page: if pruning passed us meanwhile, the page may have a
                    // gap, so it is discarded for a reset and a new snapshot.
                    Ok((page, e.status.resumable_from()?))
                })
                .await?;
            if cursor < resumable {
                metrics::counter!("certgate_core_status_resets_total").increment(1);
                self.send(0, Event::Reset(true)).await?;
                cursor = self.snapshot().await?;
                continue;
            }
            for (at, item) in page.items {
                self.item(at, item).await?;
            }
            if page.last_cursor != cursor {
                cursor = page.last_cursor;
                continue;
            }
            match tokio::time::timeout(heartbeat, wake.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Stop::Gone),
                Err(_) => self.send(cursor, Event::Heartbeat(true)).await?,
            }
        }
    }
}

/// Starts a subscription task and returns its stream.
pub fn watch(engine: Arc<StatusEngine>, req: WatchStatusRequest) -> Events {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let sub = Sub {
        engine,
        tx: tx.clone(),
        tenants: req.tenants.into_iter().collect(),
        sent_issuers: HashSet::new(),
    };
    metrics::gauge!("certgate_core_status_subscribers").increment(1.0);
    tokio::spawn(async move {
        if let Err(Stop::Failed(e)) = sub.run(req.cursor).await {
            tracing::warn!(error = %e, "status stream failed");
            let _ = tx.send(Err(Status::from(e))).await;
        }
        metrics::gauge!("certgate_core_status_subscribers").decrement(1.0);
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
