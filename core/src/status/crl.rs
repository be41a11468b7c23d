//! Building CRLs (RFC 5280 §5), sans I/O: the exact TBSCertList the issuer key signs, and the
//! assembled CertificateList.
//!
//! Every CRL — the full one and each shard — carries a critical IssuingDistributionPoint naming
//! its own URL exactly as the certificates' CRL distribution points do (`{base}/crl/{issuer}/
//! {shard}.crl`, `x509::build_leaf_tbs`), with onlyContainsUserCerts, so a relying party can tell
//! a shard from the full list; plus AKI and a CRL number that never decreases per (issuer, shard).
//! The full CRL's IDP names its own URL and then every shard URL: it covers every certificate,
//! and a relying party checking scope (OpenSSL does) must find the certificate's DP among them.

use const_oid::db::rfc5280;
use der::asn1::{BitString, Ia5String, OctetString, Uint};
use der::{Decode, Encode};
use spki::AlgorithmIdentifierOwned;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlNumber};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;

use super::ocsp::crl_reason;
use crate::error::{CoreError, Result};
use crate::store::status::RevokedRec;
use crate::x509;

/// The name of the full CRL in URLs and on the wire.
pub const FULL: &str = "full";

/// The URL of a CRL: the same string `x509::build_leaf_tbs` writes into CRL distribution points.
pub fn crl_url(base_url: &str, issuer_id: &str, shard: &str) -> String {
    format!(
        "{}/crl/{}/{}.crl",
        base_url.trim_end_matches('/'),
        issuer_id,
        shard
    )
}

/// The IssuingDistributionPoint names of a CRL: its own URL, and for the full CRL every shard's
/// URL after it.
pub fn idp_urls(base_url: &str, issuer_id: &str, shard: &str) -> Vec<String> {
    let mut urls = vec![crl_url(base_url, issuer_id, shard)];
    if shard == FULL {
        urls.extend((0..x509::CRL_SHARDS).map(|s| crl_url(base_url, issuer_id, &s.to_string())));
    }
    urls
}

/// Which shard a wire serial belongs to (`x509::crl_shard` on its bytes).
pub fn shard_of(serial_hex: &str) -> Result<u32> {
    let bytes = hex::decode(serial_hex)
        .map_err(|_| CoreError::Store(format!("stored serial {serial_hex:?} is not hex")))?;
    Ok(x509::crl_shard(&bytes))
}

/// Everything one CRL is built from.
pub struct CrlSpec<'a> {
    /// The issuer's subject Name.
    pub issuer_name: &'a Name,
    /// The issuer's subject key identifier (becomes the AKI).
    pub issuer_key_id: &'a [u8],
    /// The signature algorithm of the issuer key.
    pub signature: AlgorithmIdentifierOwned,
    /// thisUpdate.
    pub this_update: i64,
    /// nextUpdate.
    pub next_update: i64,
    /// The CRL number.
    pub number: u64,
    /// The IssuingDistributionPoint names: this CRL's own URL first. The full CRL also names
    /// every shard URL, so it is in scope (RFC 5280 §6.3.3 (b)(2)(i): one IDP name must match
    /// one name of the certificate's distribution point) for every certificate of the issuer.
    pub urls: &'a [String],
    /// The entries (already filtered to this shard).
    pub revoked: &'a [RevokedRec],
}

fn ext<T: Encode>(oid: der::asn1::ObjectIdentifier, critical: bool, v: &T) -> Result<Extension> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(v.to_der()?)?,
    })
}

/// Builds the TBSCertList.
pub fn build_tbs(spec: &CrlSpec<'_>) -> Result<TbsCertList> {
    let mut entries = Vec::with_capacity(spec.revoked.len());
    for r in spec.revoked {
        let serial = hex::decode(&r.serial_hex).map_err(|_| {
            CoreError::Store(format!("stored serial {:?} is not hex", r.serial_hex))
        })?;
        let crl_entry_extensions = match crl_reason(r.reason) {
            Some(reason) => Some(vec![ext(rfc5280::ID_CE_CRL_REASONS, false, &reason)?]),
            None => None,
        };
        entries.push(RevokedCert {
            serial_number: SerialNumber::new(&serial)?,
            revocation_date: x509::x509_time(r.revoked_at_unix)?,
            crl_entry_extensions,
        });
    }
    let mut names = Vec::with_capacity(spec.urls.len());
    for url in spec.urls {
        names.push(GeneralName::UniformResourceIdentifier(
            Ia5String::new(url.as_str())
                .map_err(|_| CoreError::malformed("tenant.public_base_url", "URL is not ASCII"))?,
        ));
    }
    let idp = IssuingDistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(names)),
        only_contains_user_certs: true,
        only_contains_ca_certs: false,
        only_some_reasons: None,
        indirect_crl: false,
        only_contains_attribute_certs: false,
    };
    let extensions = vec![
        ext(
            rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(spec.issuer_key_id.to_vec())?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        )?,
        ext(
            rfc5280::ID_CE_CRL_NUMBER,
            false,
            &CrlNumber(Uint::new(&spec.number.to_be_bytes())?),
        )?,
        ext(rfc5280::ID_CE_ISSUING_DISTRIBUTION_POINT, true, &idp)?,
    ];
    Ok(TbsCertList {
        version: x509_cert::Version::V2,
        signature: spec.signature.clone(),
        issuer: spec.issuer_name.clone(),
        this_update: x509::x509_time(spec.this_update)?,
        next_update: Some(x509::x509_time(spec.next_update)?),
        revoked_certificates: (!entries.is_empty()).then_some(entries),
        crl_extensions: Some(extensions),
    })
}

/// Assembles the signed CRL (DER).
pub fn assemble(tbs_der: &[u8], signature: &[u8]) -> Result<Vec<u8>> {
    let tbs = TbsCertList::from_der(tbs_der)?;
    Ok(CertificateList {
        signature_algorithm: tbs.signature.clone(),
        tbs_cert_list: tbs,
        signature: BitString::from_bytes(signature)?,
    }
    .to_der()?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use const_oid::db::rfc5912;

    #[test]
    fn shard_crl_names_its_url_critically_and_lists_reasons() {
        let name = x509::simple_name(Some("certgate"), Some("issuer")).unwrap();
        let url = crl_url("http://127.0.0.1:8080/", "iss-1", "3");
        assert_eq!(url, "http://127.0.0.1:8080/crl/iss-1/3.crl");
        let revoked = [
            RevokedRec {
                serial_hex: "4103".into(),
                revoked_at_unix: 1_700_000_000,
                reason: 1,
            },
            RevokedRec {
                serial_hex: "4113".into(),
                revoked_at_unix: 1_700_000_001,
                reason: 0,
            },
        ];
        let tbs = build_tbs(&CrlSpec {
            issuer_name: &name,
            issuer_key_id: &[9u8; 20],
            signature: AlgorithmIdentifierOwned {
                oid: rfc5912::ECDSA_WITH_SHA_256,
                parameters: None,
            },
            this_update: 1_700_000_100,
            next_update: 1_700_086_500,
            number: 300,
            urls: std::slice::from_ref(&url),
            revoked: &revoked,
        })
        .unwrap();
        let der = tbs.to_der().unwrap();
        let back = TbsCertList::from_der(&der).unwrap();
        let exts = back.crl_extensions.unwrap();
        let idp = exts
            .iter()
            .find(|e| e.extn_id == rfc5280::ID_CE_ISSUING_DISTRIBUTION_POINT)
            .unwrap();
        assert!(idp.critical);
        let parsed = IssuingDistributionPoint::from_der(idp.extn_value.as_bytes()).unwrap();
        assert!(parsed.only_contains_user_certs);
        assert!(String::from_utf8_lossy(idp.extn_value.as_bytes()).contains("/crl/iss-1/3.crl"));
        let number = exts
            .iter()
            .find(|e| e.extn_id == rfc5280::ID_CE_CRL_NUMBER)
            .unwrap();
        let n = CrlNumber::from_der(number.extn_value.as_bytes()).unwrap();
        assert_eq!(n.0.as_bytes(), &[1, 44]);
        let entries = back.revoked_certificates.unwrap();
        assert_eq!(entries.len(), 2);
        assert!(entries[0].crl_entry_extensions.is_some());
        assert!(
            entries[1].crl_entry_extensions.is_none(),
            "unspecified omitted"
        );
        assert_eq!(shard_of("4113").unwrap(), 3);
    }
}
