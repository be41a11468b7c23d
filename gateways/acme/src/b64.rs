//! Strict unpadded base64url (RFC 7515 §2): padding, the standard alphabet and non-zero trailing
//! bits are all refused, so one value has exactly one encoding.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::Error;

/// Decodes `s` as unpadded base64url; `field` names the field in the error.
pub(crate) fn decode(s: &str, field: &'static str) -> Result<Vec<u8>, Error> {
    URL_SAFE_NO_PAD
        .decode(s.as_bytes())
        .map_err(|_| Error::BadBase64(field))
}

/// Encodes `bytes` as unpadded base64url.
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
