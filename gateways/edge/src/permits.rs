//! Lock-free counting permits for pools that are only ever *tried*, never waited on.
//!
//! The pipeline's admission (the in-flight request cap, the fixed protocol bulkheads and the
//! tenant bulkheads) refuses at once when a pool is full: nothing queues (I-8). A tokio
//! `Semaphore` does that too, but it is built for waiters: every release takes its waiter-list
//! mutex (`add_permits_locked`) even when nobody can be waiting, three times per request. A pool
//! nobody awaits needs only a counter: acquiring is one compare-and-swap that never lets the count
//! pass the capacity, releasing is one atomic decrement in the guard's `Drop` — so a permit is
//! returned however its holder ends (answered, cancelled by a dropped connection, panicked).
//!
//! Pools something awaits keep tokio's semaphore: the connection caps taken before `accept`
//! (server, workers, admin) and the HTTP/3 connection cap, whose shutdown waits for every
//! permit to come back (the drain).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A pool of `capacity` permits, tried without waiting.
#[derive(Debug)]
pub struct Permits {
    /// Permits out; never above `capacity` (only [`Permits::take`] increments it).
    used: AtomicUsize,
    capacity: usize,
}

impl Permits {
    /// A pool of `capacity` permits (0 admits nothing; configuration refuses 0 before this).
    pub const fn new(capacity: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            capacity,
        }
    }

    /// One permit held until the guard drops, or `None` at once when all are out.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        // `then`, not `then_some`: an eagerly built guard would be dropped (and give back a
        // permit never taken) on refusal.
        self.take().then(|| Permit { pool: self })
    }

    /// As [`Permits::try_acquire`], the guard holding the pool alive (for pools that may be
    /// dropped from their registry while permits are out, as evicted tenant pools are).
    pub fn try_acquire_owned(self: Arc<Self>) -> Option<OwnedPermit> {
        self.take().then(|| OwnedPermit { pool: self })
    }

    /// Permits not out now.
    pub fn available(&self) -> usize {
        self.capacity
            .saturating_sub(self.used.load(Ordering::Acquire))
    }

    /// The pool's size.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Counts one more permit out unless that would pass the capacity. A compare-and-swap, not
    /// an add-then-undo: an undone add would, for an instant, refuse others a free permit.
    fn take(&self) -> bool {
        self.used
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        // Only a live guard calls this, and each guard came from one successful `take`, so the
        // count is at least 1 here.
        self.used.fetch_sub(1, Ordering::Release);
    }
}

/// A permit borrowed from a [`Permits`]; released on drop.
#[derive(Debug)]
#[must_use = "the permit is released as soon as the guard drops"]
pub struct Permit<'a> {
    pool: &'a Permits,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.pool.give_back();
    }
}

/// A permit holding its [`Permits`] alive; released on drop.
#[derive(Debug)]
#[must_use = "the permit is released as soon as the guard drops"]
pub struct OwnedPermit {
    pool: Arc<Permits>,
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        self.pool.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::thread;

    #[test]
    fn refuses_beyond_capacity_and_releases_on_drop() {
        let p = Permits::new(2);
        let a = p.try_acquire().expect("first");
        let b = p.try_acquire().expect("second");
        assert_eq!(p.available(), 0);
        assert!(p.try_acquire().is_none(), "a full pool refuses at once");
        drop(a);
        assert_eq!(p.available(), 1);
        let c = p.try_acquire().expect("freed on drop");
        drop((b, c));
        assert_eq!(p.available(), 2);
        assert_eq!(p.capacity(), 2);
        assert!(Permits::new(0).try_acquire().is_none(), "empty pool");
    }

    #[test]
    fn owned_permits_outlive_their_pool_handle_and_release_on_drop() {
        let p = Arc::new(Permits::new(1));
        let held = p.clone().try_acquire_owned().expect("first");
        assert!(p.clone().try_acquire_owned().is_none());
        let weak = Arc::downgrade(&p);
        drop(p);
        assert!(weak.upgrade().is_some(), "the permit keeps its pool alive");
        drop(held);
        assert!(weak.upgrade().is_none(), "and lets it go when released");
    }

    #[test]
    fn permits_are_released_when_the_holder_panics_or_is_cancelled() {
        let p = Arc::new(Permits::new(1));
        let held = p.clone().try_acquire_owned().expect("free");
        let panicked = thread::spawn(move || {
            let _held = held;
            panic!("handler panicked while holding a permit");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(p.available(), 1, "released by the unwinding");
        // A request future dropped mid-await (client went away) drops its permit with it.
        let held = p.clone().try_acquire_owned().expect("free again");
        let fut = async move {
            let _held = held;
            std::future::pending::<()>().await;
        };
        assert_eq!(p.available(), 0);
        drop(fut);
        assert_eq!(p.available(), 1, "released by the cancellation");
    }

    #[test]
    fn racing_threads_get_exactly_the_capacity() {
        const THREADS: usize = 16;
        const CAPACITY: usize = 5;
        for _ in 0..50 {
            let p = Arc::new(Permits::new(CAPACITY));
            let start = Arc::new(Barrier::new(THREADS));
            let counted = Arc::new(Barrier::new(THREADS));
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (p, start, counted) = (p.clone(), start.clone(), counted.clone());
                    thread::spawn(move || {
                        start.wait();
                        let got = p.clone().try_acquire_owned();
                        let won = got.is_some();
                        // Hold until every thread has tried: no release makes room mid-race.
                        counted.wait();
                        drop(got);
                        won
                    })
                })
                .collect();
            let won = handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .filter(|w| *w)
                .count();
            assert_eq!(won, CAPACITY, "exactly the capacity admitted");
            assert_eq!(p.available(), CAPACITY, "all released");
        }
    }

    #[test]
    fn the_bound_holds_under_concurrent_acquire_and_release() {
        const THREADS: usize = 8;
        const CAPACITY: usize = 3;
        const ROUNDS: usize = 20_000;
        let p = Arc::new(Permits::new(CAPACITY));
        // Holders counted independently of the pool: what the pool admitted, as seen by them.
        let holding = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (p, holding, most, start) =
                    (p.clone(), holding.clone(), most.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    let mut admitted = 0usize;
                    for _ in 0..ROUNDS {
                        if let Some(_permit) = p.try_acquire() {
                            admitted += 1;
                            let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::hint::spin_loop();
                            holding.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: usize = handles.into_iter().map(|h| h.join().expect("thread")).sum();
        let most = most.load(Ordering::SeqCst);
        assert!(most <= CAPACITY, "{most} held at once, capacity {CAPACITY}");
        assert!(admitted > 0);
        assert_eq!(p.available(), CAPACITY, "every permit came back");
    }
}
