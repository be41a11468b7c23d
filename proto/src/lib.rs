//! certgate's gRPC contracts and the authenticated transports they run on.
//!
//! Every process boundary in certgate (edge → core, core → signer, CLI → core) is a tonic service
//! defined here. The transports in [`transport`] attach the authenticated caller identity (a Unix
//! peer uid or a SPIFFE ID from a client certificate) to every request, so services decide who may
//! call them from facts the kernel or TLS established, never from anything the caller claims.

pub mod error;
pub mod parent;
pub mod transport;

/// Generated code, nested by protobuf package so cross-file references (`admin` uses `signer`
/// types) resolve.
#[allow(missing_docs, clippy::all)]
mod generated {
    pub mod certgate {
        pub mod signer {
            pub mod v1 {
                tonic::include_proto!("certgate.signer.v1");
            }
        }
        pub mod core {
            pub mod v1 {
                tonic::include_proto!("certgate.core.v1");
            }
        }
        pub mod admin {
            pub mod v1 {
                tonic::include_proto!("certgate.admin.v1");
            }
        }
        pub mod acme {
            pub mod v1 {
                tonic::include_proto!("certgate.acme.v1");
            }
        }
        pub mod cmp {
            pub mod v1 {
                tonic::include_proto!("certgate.cmp.v1");
            }
        }
        pub mod scep {
            pub mod v1 {
                tonic::include_proto!("certgate.scep.v1");
            }
        }
        pub mod errors {
            pub mod v1 {
                tonic::include_proto!("certgate.errors.v1");
            }
        }
    }
}

/// `proto/acme.proto`: the core's ACME state service edges call.
pub use generated::certgate::acme::v1 as acme;
/// `proto/admin.proto`: the core's administration service.
pub use generated::certgate::admin::v1 as admin;
/// `proto/cmp.proto`: the core's CMP support (MACs, RA protection, confirmation).
pub use generated::certgate::cmp::v1 as cmp;
/// `proto/core.proto`: the core service edges call.
pub use generated::certgate::core::v1 as core;
/// `proto/errors.proto`: the error detail crossing every hop.
pub use generated::certgate::errors::v1 as errors;
/// `proto/scep.proto`: the core's SCEP support (RA decryption and signing, challenges).
pub use generated::certgate::scep::v1 as scep;
/// `proto/signer.proto`: the signer service.
pub use generated::certgate::signer::v1 as signer;

pub use error::{ErrorDetail, ErrorKind, RpcError};
pub use transport::{AllowList, Caller};
