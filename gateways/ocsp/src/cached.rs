//! Cached responses and their HTTP caching headers (RFC 5019 §6, RFC 9111, RFC 9110 §5.6.7).
//!
//! A [`CachedResponse`] is built once, when the core's bytes arrive: the DER is parsed for
//! thisUpdate/nextUpdate, and the `ETag`, `Last-Modified` and `Expires` values are rendered then.
//! Serving a hit clones a few [`Bytes`] (reference-count increments) and renders
//! `Cache-Control: max-age=…` into a stack buffer ([`CacheControl`]): no heap allocation.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use const_oid::db::rfc6960::ID_PKIX_OCSP_BASIC;
use der::Decode;
use sha2::{Digest, Sha256};
use x509_cert::crl::CertificateList;
use x509_ocsp::{BasicOcspResponse, CertId, OcspResponse, OcspResponseStatus};

use crate::Error;

/// `Content-Type` of an OCSP response (RFC 6960 Appendix A.2).
pub const OCSP_RESPONSE_CONTENT_TYPE: &str = "application/ocsp-response";
/// `Content-Type` of a DER CRL (RFC 2585 §4.2).
pub const CRL_CONTENT_TYPE: &str = "application/pkix-crl";

/// A response ready to serve: the bytes and every header value that does not depend on `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedResponse {
    /// The DER, served byte for byte.
    pub der: Bytes,
    /// `application/ocsp-response` or `application/pkix-crl`.
    pub content_type: &'static str,
    /// thisUpdate (for an OCSP response with several SingleResponses: the latest).
    pub this_update: SystemTime,
    /// nextUpdate (for several SingleResponses: the earliest).
    pub next_update: SystemTime,
    /// Strong `ETag` value: `"` + hex(SHA-256(der)) + `"`.
    pub etag: Bytes,
    /// `Last-Modified` value: thisUpdate as an IMF-fixdate.
    pub last_modified_header: Bytes,
    /// `Expires` value: nextUpdate as an IMF-fixdate.
    pub expires_header: Bytes,
}

impl CachedResponse {
    /// From a DER `OCSPResponse` pushed by the core. It must be `successful`, of type
    /// `id-pkix-ocsp-basic`, and every SingleResponse must carry nextUpdate after thisUpdate
    /// (RFC 5019 §2.2.4). The signature is not checked here: the bytes come from the core.
    pub fn ocsp(der: Bytes) -> Result<Self, Error> {
        Self::ocsp_with_cert_ids(der).map(|(c, _)| c)
    }

    /// As [`CachedResponse::ocsp`], also returning the CertIDs the response answers for, so the
    /// glue can compute its [`crate::CacheKey`] with [`crate::IssuerIndex::key_for`].
    pub fn ocsp_with_cert_ids(der: Bytes) -> Result<(Self, Vec<CertId>), Error> {
        let resp = OcspResponse::from_der(&der).map_err(|_| Error::BadResponse("not DER"))?;
        if resp.response_status != OcspResponseStatus::Successful {
            return Err(Error::BadResponse("status is not successful"));
        }
        let rb = resp
            .response_bytes
            .ok_or(Error::BadResponse("no responseBytes"))?;
        if rb.response_type != ID_PKIX_OCSP_BASIC {
            return Err(Error::BadResponse("not a BasicOCSPResponse"));
        }
        let basic = BasicOcspResponse::from_der(rb.response.as_bytes())
            .map_err(|_| Error::BadResponse("BasicOCSPResponse does not decode"))?;
        let mut this_update: Option<SystemTime> = None;
        let mut next_update: Option<SystemTime> = None;
        let mut ids = Vec::with_capacity(basic.tbs_response_data.responses.len());
        for single in basic.tbs_response_data.responses {
            let tu = single.this_update.0.to_system_time();
            let nu = single
                .next_update
                .ok_or(Error::BadResponse("SingleResponse without nextUpdate"))?
                .0
                .to_system_time();
            this_update = Some(this_update.map_or(tu, |t| t.max(tu)));
            next_update = Some(next_update.map_or(nu, |t| t.min(nu)));
            ids.push(single.cert_id);
        }
        let (Some(tu), Some(nu)) = (this_update, next_update) else {
            return Err(Error::BadResponse("no SingleResponse"));
        };
        if nu <= tu {
            return Err(Error::BadResponse("nextUpdate is not after thisUpdate"));
        }
        Ok((Self::build(der, OCSP_RESPONSE_CONTENT_TYPE, tu, nu), ids))
    }

    /// From a DER CRL pushed by the core (RFC 5280 §5.1). nextUpdate is required (RFC 5280
    /// §5.1.2.5: conforming CRL issuers MUST include it).
    pub fn crl(der: Bytes) -> Result<Self, Error> {
        let crl = CertificateList::from_der(&der).map_err(|_| Error::BadCrl("not DER"))?;
        let tu = crl.tbs_cert_list.this_update.to_system_time();
        let nu = crl
            .tbs_cert_list
            .next_update
            .ok_or(Error::BadCrl("no nextUpdate"))?
            .to_system_time();
        if nu <= tu {
            return Err(Error::BadCrl("nextUpdate is not after thisUpdate"));
        }
        Ok(Self::build(der, CRL_CONTENT_TYPE, tu, nu))
    }

    fn build(
        der: Bytes,
        content_type: &'static str,
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Self {
        let etag = format!("\"{}\"", hex::encode(Sha256::digest(&der)));
        CachedResponse {
            der,
            content_type,
            this_update,
            next_update,
            etag: Bytes::from(etag),
            last_modified_header: Bytes::from(imf_fixdate(this_update)),
            expires_header: Bytes::from(imf_fixdate(next_update)),
        }
    }

    /// Bytes this entry holds, for a cache bounded by bytes (moka `weigher`, I-8): the DER and
    /// the rendered header values.
    pub fn weight(&self) -> u32 {
        let n = self.der.len()
            + self.etag.len()
            + self.last_modified_header.len()
            + self.expires_header.len();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Whether the response may still be served at `now` (strictly before nextUpdate).
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now < self.next_update
    }

    /// Seconds a client or HTTP cache may keep the response: until nextUpdate, 0 once past it.
    pub fn max_age(&self, now: SystemTime) -> u64 {
        self.next_update
            .duration_since(now)
            .map_or(0, |d| d.as_secs())
    }

    /// `Cache-Control` for `now`: `max-age=<secs until nextUpdate>, public, no-transform,
    /// must-revalidate` (RFC 5019 §6.2).
    pub fn cache_control(&self, now: SystemTime) -> CacheControl {
        CacheControl::new(self.max_age(now))
    }
}

/// A rendered `Cache-Control` value on the stack (no allocation per request).
#[derive(Clone, Copy)]
pub struct CacheControl {
    buf: [u8; 80],
    len: usize,
}

impl CacheControl {
    const PREFIX: &'static [u8] = b"max-age=";
    const SUFFIX: &'static [u8] = b", public, no-transform, must-revalidate";

    fn new(secs: u64) -> Self {
        let mut buf = [0u8; 80];
        let mut len = 0;
        for &b in Self::PREFIX {
            buf[len] = b;
            len += 1;
        }
        let mut digits = [0u8; 20];
        let mut n = secs;
        let mut d = 0;
        loop {
            digits[d] = b'0' + (n % 10) as u8;
            d += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        while d > 0 {
            d -= 1;
            buf[len] = digits[d];
            len += 1;
        }
        for &b in Self::SUFFIX {
            buf[len] = b;
            len += 1;
        }
        CacheControl { buf, len }
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and the ASCII prefix/suffix were written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("no-cache")
    }
}

impl std::fmt::Debug for CacheControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An HTTP date in IMF-fixdate form (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
/// Times before 1970 are clamped to the epoch.
pub fn imf_fixdate(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    let dt =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[usize::from(dt.weekday().number_days_from_monday())],
        dt.day(),
        MONTHS[usize::from(u8::from(dt.month()) - 1)],
        dt.year(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imf_fixdate_matches_rfc9110_example() {
        // RFC 9110 §5.6.7: Sun, 06 Nov 1994 08:49:37 GMT = 784111777.
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(imf_fixdate(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(imf_fixdate(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn cache_control_renders_max_age() {
        assert_eq!(
            CacheControl::new(0).as_str(),
            "max-age=0, public, no-transform, must-revalidate"
        );
        assert_eq!(
            CacheControl::new(u64::MAX).as_str(),
            "max-age=18446744073709551615, public, no-transform, must-revalidate"
        );
    }

    #[test]
    fn weight_counts_the_bytes_held() {
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let c = CachedResponse::build(
            Bytes::from_static(&[0; 300]),
            OCSP_RESPONSE_CONTENT_TYPE,
            t,
            t + Duration::from_secs(60),
        );
        assert_eq!(c.weight(), 300 + 66 + 29 + 29);
    }

    #[test]
    fn rejects_error_and_garbage_responses() {
        assert!(CachedResponse::ocsp(crate::OcspStatus::TryLater.bytes()).is_err());
        assert!(CachedResponse::ocsp(Bytes::from_static(b"\x30\x00")).is_err());
        assert!(CachedResponse::crl(Bytes::from_static(b"junk")).is_err());
    }
}
