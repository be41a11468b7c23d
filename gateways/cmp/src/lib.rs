//! certgate-cmp: the CMP gateway's protocol logic (RFC 4210 as updated by RFC 9480, the
//! Lightweight CMP Profile RFC 9483), free of I/O.
//!
//! [`parse::parse`] decodes a PKIMessage keeping the exact bytes protection covers,
//! [`parse::Request::check_header`] applies the RFC 9483 §3 header rules, CRMF proof of
//! possession and signature protection are verified here with aws-lc-rs ([`crypto`]), and
//! [`respond`] builds every response body and header. MACs and the RA's signatures come from
//! the core (cmp.proto); the edge glue (`gateways/edge/src/cmp`) does the calls.

pub mod crl_status;
pub mod crypto;
pub mod der_util;
pub mod error;
pub mod parse;
pub mod respond;
pub mod template;

pub use error::{CmpError, FailInfo};
pub use parse::{Body, Limits, Protection, Request, parse};

/// Entry point for the cargo-fuzz target (never panics on any input).
pub fn fuzz_one(data: &[u8]) {
    let limits = Limits::default();
    if let Ok(req) = parse(data, &limits) {
        let _ = req.check_header(0, &limits);
        let _ = req.verify_signature(&[], 0);
        if let Some(v) = crl_status::genm_value(&req, parse::ID_IT_CRL_STATUS_LIST) {
            let _ = crl_status::parse_crl_status_list(v.as_deref());
        }
    }
}
