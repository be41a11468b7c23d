//! Process hardening at start-up: no core dumps or ptrace by other same-uid processes
//! (`PR_SET_DUMPABLE=0`), and all memory locked so keys are never swapped out (`mlockall`).

use nix::sys::mman::{MlockAllFlags, mlockall};
use nix::sys::resource::{Resource, getrlimit};

/// Locking all future memory with a small RLIMIT_MEMLOCK would make later allocations fail, so
/// `mlockall` is only attempted when the limit is at least this large (or we are root).
const MIN_MEMLOCK: u64 = 1 << 30;

/// What hardening achieved; each `false` has been logged as a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardening {
    /// `PR_SET_DUMPABLE` is 0.
    pub undumpable: bool,
    /// All current and future memory is locked.
    pub memory_locked: bool,
}

/// Applies what the OS allows and warns about the rest.
pub fn harden() -> Hardening {
    let undumpable = match nix::sys::prctl::set_dumpable(false) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "PR_SET_DUMPABLE=0 failed: core dumps may contain keys");
            false
        }
    };
    let root = nix::unistd::geteuid().is_root();
    let limit_ok = match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) => soft == nix::sys::resource::RLIM_INFINITY || soft >= MIN_MEMLOCK,
        Err(_) => false,
    };
    let memory_locked = if root || limit_ok {
        match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "mlockall failed: key memory may be swapped out");
                false
            }
        }
    } else {
        tracing::warn!(
            "RLIMIT_MEMLOCK is too small to lock the signer's memory (raise it, e.g. LimitMEMLOCK=infinity): key memory may be swapped out"
        );
        false
    };
    Hardening {
        undumpable,
        memory_locked,
    }
}
