//! The command line's one error type. Errors from the core arrive as [`RpcError`] and are shown
//! with their safe message and rule; everything prints on stderr and exits non-zero.

use certgate_proto::RpcError;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The core (or signer) refused or could not be reached.
    #[error("{}", rpc_text(.0))]
    Rpc(#[from] RpcError),
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// Which file or action.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// Invalid input (a bad file, a bad flag combination).
    #[error("{0}")]
    Input(String),
    /// A child process failed to start, became unready or died.
    #[error("{0}")]
    Process(String),
    /// Key generation or signing failed.
    #[error("crypto: {0}")]
    Crypto(String),
}

fn rpc_text(e: &RpcError) -> String {
    if e.rule.is_empty() {
        format!("{:?}: {}", e.kind, e.message)
    } else {
        format!("{:?} ({}): {}", e.kind, e.rule, e.message)
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Rpc(RpcError::from_status(&s))
    }
}

/// Adds the file name to an I/O error.
pub fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> CliError {
    let what = what.to_string();
    move |source| CliError::Io { what, source }
}

/// The command line's result type.
pub type Result<T, E = CliError> = std::result::Result<T, E>;
