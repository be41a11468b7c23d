//! ACME Renewal Information (RFC 9773): certificate identifiers and suggested renewal windows.

use aws_lc_rs::digest;
use der::Decode;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use x509_cert::Certificate;
use x509_cert::ext::pkix::AuthorityKeyIdentifier;

use crate::b64;
use crate::error::Error;

/// The ARI certificate identifier (RFC 9773 §4.1):
/// `base64url(AKI keyIdentifier) "." base64url(serial number DER content octets)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertId {
    /// The issuer's key identifier, from the certificate's Authority Key Identifier.
    pub key_identifier: Vec<u8>,
    /// The serial number's DER INTEGER content octets (with a leading zero when the top bit is
    /// set, exactly as encoded in the certificate).
    pub serial: Vec<u8>,
}

impl CertId {
    /// Parses the identifier as it appears in a renewalInfo URL or a newOrder `replaces`.
    pub fn parse(s: &str) -> Result<CertId, Error> {
        let bad = || Error::Malformed("invalid ARI certificate identifier".into());
        let (aki, serial) = s.split_once('.').ok_or_else(bad)?;
        let key_identifier = b64::decode(aki, "keyIdentifier").map_err(|_| bad())?;
        let serial = b64::decode(serial, "serialNumber").map_err(|_| bad())?;
        if key_identifier.is_empty() || serial.is_empty() || serial.len() > 21 {
            return Err(bad());
        }
        // A DER INTEGER: positive (top bit clear) and minimal (no redundant leading zero).
        if serial[0] & 0x80 != 0 || (serial.len() > 1 && serial[0] == 0 && serial[1] & 0x80 == 0) {
            return Err(bad());
        }
        Ok(CertId {
            key_identifier,
            serial,
        })
    }

    /// The identifier of a DER certificate. A certificate without an AKI key identifier has no
    /// ARI identifier (RFC 9773 §4.1).
    pub fn from_certificate(der: &[u8]) -> Result<CertId, Error> {
        let cert = Certificate::from_der(der)
            .map_err(|_| Error::Malformed("certificate does not parse".into()))?;
        let tbs = &cert.tbs_certificate;
        let aki = tbs
            .extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER)
            .ok_or_else(|| {
                Error::Malformed("certificate has no authority key identifier".into())
            })?;
        let aki = AuthorityKeyIdentifier::from_der(aki.extn_value.as_bytes())
            .map_err(|_| Error::Malformed("authority key identifier does not parse".into()))?;
        let key_identifier = aki
            .key_identifier
            .ok_or_else(|| {
                Error::Malformed("authority key identifier has no keyIdentifier".into())
            })?
            .as_bytes()
            .to_vec();
        Ok(CertId {
            key_identifier,
            serial: tbs.serial_number.as_bytes().to_vec(),
        })
    }
}

impl std::fmt::Display for CertId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}",
            b64::encode(&self.key_identifier),
            b64::encode(&self.serial)
        )
    }
}

/// The suggested renewal window: inside the last third of the validity period, half a third
/// long, starting at an offset derived from the serial (SHA-256), so a fleet of certificates
/// issued together does not renew in the same second and the answer is the same on every edge.
pub fn suggested_window(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    serial: &[u8],
) -> (OffsetDateTime, OffsetDateTime) {
    let lifetime = (not_after - not_before).whole_seconds().max(0);
    let third = lifetime / 3;
    let half = (third / 2).max(1);
    let h = digest::digest(&digest::SHA256, serial);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.as_ref()[..8]);
    let offset = (u64::from_be_bytes(first) % half.unsigned_abs()) as i64;
    let start = not_after - Duration::seconds(third) + Duration::seconds(offset);
    let end = (start + Duration::seconds(half)).min(not_after);
    (start, end)
}

#[derive(Serialize)]
struct Window {
    start: String,
    end: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RenewalInfo<'a> {
    suggested_window: Window,
    #[serde(rename = "explanationURL", skip_serializing_if = "Option::is_none")]
    explanation_url: Option<&'a str>,
}

/// The renewalInfo response body (RFC 9773 §4.2). The glue adds `Retry-After`.
pub fn renewal_info_json(
    window: (OffsetDateTime, OffsetDateTime),
    explanation_url: Option<&str>,
) -> Result<Vec<u8>, Error> {
    let fmt = |t: OffsetDateTime| t.format(&Rfc3339).map_err(|_| Error::ServerInternal);
    let body = RenewalInfo {
        suggested_window: Window {
            start: fmt(window.0)?,
            end: fmt(window.1)?,
        },
        explanation_url,
    };
    serde_json::to_vec(&body).map_err(|_| Error::ServerInternal)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9773 §4.1 example: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4
    /// and serial 0x0087654321.
    #[test]
    fn rfc9773_example_identifier_round_trips() {
        let id = CertId::parse("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE").unwrap();
        assert_eq!(
            id.key_identifier,
            [
                0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3, 0x7B, 0x84, 0x7B, 0xA0,
                0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4
            ]
        );
        assert_eq!(id.serial, [0x00, 0x87, 0x65, 0x43, 0x21]);
        assert_eq!(id.to_string(), "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
    }

    #[test]
    fn identifier_of_an_issued_certificate_uses_aki_and_serial() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SerialNumber};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let ski = {
            let c = Certificate::from_der(ca_cert.der()).unwrap();
            let e = c
                .tbs_certificate
                .extensions
                .unwrap()
                .into_iter()
                .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER)
                .unwrap();
            x509_cert::ext::pkix::SubjectKeyIdentifier::from_der(e.extn_value.as_bytes())
                .unwrap()
                .0
                .as_bytes()
                .to_vec()
        };
        let issuer = Issuer::new(ca, ca_key);
        let ee_key = KeyPair::generate().unwrap();
        let mut ee = CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        ee.use_authority_key_identifier_extension = true;
        ee.serial_number = Some(SerialNumber::from(vec![0x87, 0x65, 0x43, 0x21]));
        let cert = ee.signed_by(&ee_key, &issuer).unwrap();
        let id = CertId::from_certificate(cert.der()).unwrap();
        assert_eq!(id.key_identifier, ski);
        assert_eq!(id.serial, [0x00, 0x87, 0x65, 0x43, 0x21]);
        assert_eq!(CertId::parse(&id.to_string()).unwrap(), id);
        // A certificate without AKI has no ARI identifier.
        assert!(CertId::from_certificate(ca_cert.der()).is_err());
    }

    #[test]
    fn rejects_malformed_identifiers() {
        for bad in [
            "",
            ".",
            "aYhb",
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ.",
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ.h2VDIQ",
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AAFl",
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ=.AIdlQyE",
        ] {
            assert!(CertId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn window_is_inside_the_last_third_and_deterministic() {
        let nb = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let na = nb + Duration::days(90);
        let mut starts = std::collections::HashSet::new();
        for s in 0u32..50 {
            let serial = s.to_be_bytes();
            let (start, end) = suggested_window(nb, na, &serial);
            assert!(start >= na - Duration::days(30), "{start}");
            assert!(end <= na && start < end);
            assert_eq!(suggested_window(nb, na, &serial), (start, end));
            starts.insert(start);
        }
        assert!(starts.len() > 40, "windows spread by serial");
    }

    #[test]
    fn renewal_info_has_the_rfc9773_shape() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&renewal_info_json((t, t + Duration::hours(1)), None).unwrap())
                .unwrap();
        assert_eq!(v["suggestedWindow"]["start"], "2023-11-14T22:13:20Z");
        assert_eq!(v["suggestedWindow"]["end"], "2023-11-14T23:13:20Z");
    }
}
