//! certgate's gRPC contracts and the authenticated transports they run on.
//!
//! Every process boundary in certgate (edge → core, core → signer, CLI → core) is a tonic service
//! defined here. The transports in [`transport`] attach the authenticated caller identity (a Unix
//! peer uid or a SPIFFE ID from a client certificate) to every request, so services decide who may
//! call them from facts the kernel or TLS established, never from anything the caller claims.

pub mod error;
pub mod transport;

/// Generated code for `proto/signer.proto`.
#[allow(missing_docs, clippy::all)]
pub mod signer {
    tonic::include_proto!("certgate.signer.v1");
}

/// Generated code for `proto/core.proto`.
#[allow(missing_docs, clippy::all)]
pub mod core {
    tonic::include_proto!("certgate.core.v1");
}

/// Generated code for `proto/admin.proto`.
#[allow(missing_docs, clippy::all)]
pub mod admin {
    tonic::include_proto!("certgate.admin.v1");
}

/// Generated code for `proto/errors.proto`.
#[allow(missing_docs, clippy::all)]
pub mod errors {
    tonic::include_proto!("certgate.errors.v1");
}

pub use error::{ErrorDetail, ErrorKind, RpcError};
pub use transport::{AllowList, Caller};
