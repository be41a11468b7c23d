//! Opt-in "exit with the parent" watch for the signer, the core and the edge.
//!
//! `certgate up` stops its children on SIGINT/SIGTERM, but a SIGKILLed or crashed `up` cannot:
//! its children would keep running and holding their ports. The kernel's parent-death signal
//! (`prctl(PR_SET_PDEATHSIG)`) needs `unsafe` in a `pre_exec` hook, which the workspace forbids,
//! so the supervisor instead names itself in [`PARENT_PID_ENV`] and each child polls its own
//! parent pid: once the child has been re-parented (to init or a subreaper), its supervisor is
//! gone and the child takes its ordinary graceful shutdown path, as on SIGTERM.

use std::time::Duration;

/// Environment variable a supervisor sets to its own pid to opt its children into the watch.
pub const PARENT_PID_ENV: &str = "CERTGATE_PARENT_PID";

/// How often the parent pid is checked: cheap (one `getppid`), and quick enough that a killed
/// supervisor's ports are freed within about a second.
const POLL: Duration = Duration::from_millis(300);

/// The pid named by [`PARENT_PID_ENV`] (`value` is its content), if it is a valid pid.
pub fn watched_parent(value: Option<&str>) -> Option<u32> {
    value?.trim().parse::<u32>().ok().filter(|pid| *pid > 1)
}

/// Resolves once this process's parent is no longer the pid named by [`PARENT_PID_ENV`];
/// never resolves when the variable is unset (the watch is opt-in) or invalid (logged).
pub async fn parent_gone() {
    let value = std::env::var(PARENT_PID_ENV).ok();
    match watched_parent(value.as_deref()) {
        Some(pid) => parent_gone_from(pid).await,
        None => {
            if let Some(v) = value {
                tracing::warn!(value = %v, "ignoring {PARENT_PID_ENV}: not a pid");
            }
            std::future::pending::<()>().await
        }
    }
}

/// Resolves once this process's parent pid differs from `expected` (logging why).
pub async fn parent_gone_from(expected: u32) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = std::os::unix::process::parent_id();
        if now != expected {
            tracing::warn!(
                expected_parent = expected,
                parent = now,
                "supervising parent process exited; shutting down"
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_pids_are_watched() {
        assert_eq!(watched_parent(Some("4242")), Some(4242));
        assert_eq!(watched_parent(Some(" 4242\n")), Some(4242));
        assert_eq!(watched_parent(None), None);
        assert_eq!(watched_parent(Some("")), None);
        assert_eq!(watched_parent(Some("abc")), None);
        assert_eq!(watched_parent(Some("-5")), None);
        // init (or pid 0) is what an orphan is re-parented to, never a supervisor.
        assert_eq!(watched_parent(Some("1")), None);
        assert_eq!(watched_parent(Some("0")), None);
    }

    #[tokio::test]
    async fn a_different_parent_resolves_the_watch() {
        let other = std::os::unix::process::parent_id().wrapping_add(1);
        tokio::time::timeout(Duration::from_secs(30), parent_gone_from(other))
            .await
            .expect("watch resolves when the parent pid differs");
    }

    #[tokio::test]
    async fn the_current_parent_keeps_the_watch_pending() {
        let me = std::os::unix::process::parent_id();
        let r = tokio::time::timeout(Duration::from_millis(1200), parent_gone_from(me)).await;
        assert!(r.is_err(), "watch resolved while the parent is alive");
    }
}
