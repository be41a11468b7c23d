//! CRL update retrieval (RFC 9483 §4.3.4, RFC 9480 §2.17 / new RFC 4210 §5.3.19.17), free of
//! I/O: the genm `id-it-crlStatusList` value is decoded and each CRL source classified here; the
//! edge glue resolves the sources against the tenant's issuers (`Core.GetCaChain`,
//! `Core.GetCrl`) and [`newer_than`] decides which CRLs go into the genp `id-it-crls`.
//!
//! ```text
//! id-it-crlStatusList  OBJECT IDENTIFIER ::= { id-it 22 }
//! CRLStatusListValue   ::= SEQUENCE SIZE (1..MAX) OF CRLStatus
//! CRLStatus ::= SEQUENCE {
//!     source       CRLSource,
//!     thisUpdate   Time OPTIONAL }
//! CRLSource ::= CHOICE {
//!     dpn          [0] DistributionPointName,
//!     issuer       [1] GeneralNames }
//! ```
//!
//! The PKIXCMP-2023 module (RFC 9480 Appendix A) has `DEFINITIONS EXPLICIT TAGS`, so both
//! CRLSource alternatives are explicitly tagged (OpenSSL 3.2+ encodes them the same way).
//!
//! Sources this server understands (RFC 9480: the DistributionPointName is "an internal pointer
//! to identify a CRL that the server already has", never a URL to fetch):
//! - `dpn` `fullName` with a URI whose path ends in `/crl/{issuer-id}/{shard}.crl` or
//!   `/crl/{issuer-id}/full.crl` — the URLs certgate puts in CRL distribution points and
//!   IssuingDistributionPoint. The glue also requires the URI to be named in the fetched CRL's
//!   IssuingDistributionPoint, so a foreign host with a look-alike path is not answered;
//! - `issuer` with a directoryName equal to one of the tenant's issuing CAs' subject → that
//!   issuer's full CRL.
//!
//! Anything else (nameRelativeToCRLIssuer, other URIs, unknown issuers, another tenant's issuer)
//! is refused with `badRequest`: the request is well-formed but asks for a CRL this server does
//! not provide ("this transaction is not permitted or supported", RFC 4210 §5.2.3;
//! RFC 9483 §3.6.4 leaves the choice of failInfo to the server). A value that does not decode,
//! or an absent or empty list (SIZE (1..MAX)), is `badDataFormat` ("the data submitted has the
//! wrong format").

use const_oid::ObjectIdentifier;
use der::{Choice, Decode, Sequence};
use x509_cert::crl::CertificateList;
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName, GeneralNames};
use x509_cert::name::Name;
use x509_cert::time::Time;

use crate::der_util::{read_all, read_tlv};
use crate::error::{CmpError, FailInfo};
use crate::parse::Request;

/// At most this many CRLStatus entries are answered in one genm (I-8: each may cost core calls).
pub const MAX_CRL_STATUS: usize = 16;

const ID_CE_ISSUING_DISTRIBUTION_POINT: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.5.29.28");

/// CRLSource (RFC 9480 §2.17).
#[derive(Clone, Debug, Eq, PartialEq, Choice)]
pub enum CrlSource {
    /// dpn [0] DistributionPointName.
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", constructed = "true")]
    Dpn(DistributionPointName),
    /// issuer [1] GeneralNames.
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", constructed = "true")]
    Issuer(GeneralNames),
}

/// CRLStatus (RFC 9480 §2.17).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct CrlStatus {
    /// Which CRL.
    pub source: CrlSource,
    /// thisUpdate of the newest CRL from this source the client has.
    #[asn1(optional = "true")]
    pub this_update: Option<Time>,
}

/// A CRL source this server can look up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrlRef {
    /// One of certgate's CRL URLs.
    Url {
        /// The URI as the client sent it (checked against the CRL's IssuingDistributionPoint).
        uri: String,
        /// The issuer id from the path.
        issuer_id: String,
        /// `full` or the decimal shard number.
        shard: String,
    },
    /// An issuing CA by name: its full CRL.
    Issuer(Vec<Name>),
}

/// One decoded CRLStatus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlQuery {
    /// What to look up.
    pub source: CrlRef,
    /// The client's thisUpdate, Unix seconds (`None`: the client has no CRL from this source).
    pub this_update_unix: Option<u64>,
}

fn bad_format(what: &str) -> CmpError {
    CmpError::new(FailInfo::BadDataFormat, format!("crlStatusList: {what}"))
}

/// The refusal for a source this server has no CRL for (never says whether it exists elsewhere).
pub fn unknown_source(detail: &str) -> CmpError {
    CmpError::new(
        FailInfo::BadRequest,
        format!("crlStatusList: no CRL of this CA matches the source ({detail})"),
    )
}

/// The infoValue DER of the first ITAV with `oid` in a genm: `None` if the genm has no such
/// ITAV, `Some(None)` if its value is absent. Read from the received body bytes
/// (`protected_part_der` = header ‖ body), so the parsed `Body::Genm` stays a list of types.
pub fn genm_value(req: &Request, oid: ObjectIdentifier) -> Option<Option<Vec<u8>>> {
    let (pp, _) = read_tlv(&req.protected_part_der)?;
    let parts = read_all(pp.content)?;
    let body = parts.get(1).filter(|b| b.tag == 0xb5)?;
    let (list, _) = read_tlv(body.content)?;
    for itav in read_all(list.content)? {
        let fields = read_all(itav.content)?;
        let (first, rest) = fields.split_first()?;
        if ObjectIdentifier::from_bytes(first.content).ok() == Some(oid) {
            return Some(rest.first().map(|v| v.raw.to_vec()));
        }
    }
    None
}

/// Decodes a crlStatusList infoValue and classifies every source. Errors: `badDataFormat` for
/// an absent, empty or undecodable value; `badRequest` for more than [`MAX_CRL_STATUS`] entries
/// or a source of a kind this server never serves.
pub fn parse_crl_status_list(value: Option<&[u8]>) -> Result<Vec<CrlQuery>, CmpError> {
    let value = value.ok_or_else(|| {
        bad_format("the infoValue is required (SEQUENCE SIZE (1..MAX) OF CRLStatus)")
    })?;
    let list = Vec::<CrlStatus>::from_der(value)
        .map_err(|_| bad_format("the infoValue is not a SEQUENCE OF CRLStatus"))?;
    if list.is_empty() {
        return Err(bad_format("the list is empty (SIZE (1..MAX))"));
    }
    if list.len() > MAX_CRL_STATUS {
        return Err(CmpError::new(
            FailInfo::BadRequest,
            format!("crlStatusList: more than {MAX_CRL_STATUS} CRL sources in one request"),
        ));
    }
    list.into_iter().map(classify).collect()
}

fn classify(status: CrlStatus) -> Result<CrlQuery, CmpError> {
    let this_update_unix = status.this_update.map(|t| t.to_unix_duration().as_secs());
    let source = match status.source {
        CrlSource::Dpn(DistributionPointName::FullName(names)) => names
            .iter()
            .find_map(|n| match n {
                GeneralName::UniformResourceIdentifier(uri) => {
                    let uri = uri.as_str();
                    crl_path(uri).map(|(issuer_id, shard)| CrlRef::Url {
                        uri: uri.to_owned(),
                        issuer_id,
                        shard,
                    })
                }
                _ => None,
            })
            .ok_or_else(|| unknown_source("no URI of this server's CRLs in the fullName"))?,
        CrlSource::Dpn(DistributionPointName::NameRelativeToCRLIssuer(_)) => {
            return Err(unknown_source("nameRelativeToCRLIssuer is not supported"));
        }
        CrlSource::Issuer(names) => {
            let dns: Vec<Name> = names
                .into_iter()
                .filter_map(|n| match n {
                    GeneralName::DirectoryName(dn) => Some(dn),
                    _ => None,
                })
                .collect();
            if dns.is_empty() {
                return Err(unknown_source("the issuer names no directoryName"));
            }
            CrlRef::Issuer(dns)
        }
    };
    Ok(CrlQuery {
        source,
        this_update_unix,
    })
}

/// The (issuer id, shard) of a certgate CRL URL: `http(s)://host[/base]/crl/{issuer-id}/{shard}.crl`
/// with the issuer id `[A-Za-z0-9._-]{1,128}` (no leading dot) and the shard `full` or a decimal
/// number without leading zeros (the edge's `/crl/` paths). No query or fragment.
pub fn crl_path(uri: &str) -> Option<(String, String)> {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))?;
    if rest.contains(['?', '#']) {
        return None;
    }
    let (_host, path) = rest.split_once('/')?;
    let mut segs = path.rsplit('/');
    let file = segs.next()?;
    let issuer = segs.next()?;
    if segs.next()? != "crl" {
        return None;
    }
    let shard = file.strip_suffix(".crl")?;
    let shard_ok = shard == "full"
        || (!shard.is_empty()
            && shard.len() <= 4
            && shard.bytes().all(|b| b.is_ascii_digit())
            && (shard == "0" || !shard.starts_with('0')));
    let issuer_ok = !issuer.is_empty()
        && issuer.len() <= 128
        && !issuer.starts_with('.')
        && issuer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    (shard_ok && issuer_ok).then(|| (issuer.to_owned(), shard.to_owned()))
}

/// What the glue needs to know about a CRL the core returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlFacts {
    /// thisUpdate, Unix seconds.
    pub this_update_unix: u64,
    /// The issuer name.
    pub issuer: Name,
    /// The URIs in the IssuingDistributionPoint's fullName.
    pub idp_uris: Vec<String>,
}

/// Reads thisUpdate, the issuer and the IssuingDistributionPoint URIs of a DER CRL (from the
/// core: a CRL that does not decode is a server fault, `systemFailure`).
pub fn crl_facts(crl_der: &[u8]) -> Result<CrlFacts, CmpError> {
    let fail = || {
        CmpError::new(
            FailInfo::SystemFailure,
            "crlStatusList: the CRL is unreadable",
        )
    };
    let crl = CertificateList::from_der(crl_der).map_err(|_| fail())?;
    let tbs = crl.tbs_cert_list;
    let mut idp_uris = Vec::new();
    for ext in tbs.crl_extensions.iter().flatten() {
        if ext.extn_id != ID_CE_ISSUING_DISTRIBUTION_POINT {
            continue;
        }
        let idp =
            IssuingDistributionPoint::from_der(ext.extn_value.as_bytes()).map_err(|_| fail())?;
        if let Some(DistributionPointName::FullName(names)) = idp.distribution_point {
            for n in names {
                if let GeneralName::UniformResourceIdentifier(u) = n {
                    idp_uris.push(u.as_str().to_owned());
                }
            }
        }
    }
    Ok(CrlFacts {
        this_update_unix: tbs.this_update.to_unix_duration().as_secs(),
        issuer: tbs.issuer,
        idp_uris,
    })
}

/// Whether a CRL with `crl_this_update` goes to a client that has one from `client_this_update`
/// (RFC 9480 §2.17: "only those CRLs that are more recent than the ones indicated"; no
/// thisUpdate = the client has none, so the current CRL is newer).
pub fn newer_than(crl_this_update: u64, client_this_update: Option<u64>) -> bool {
    client_this_update.is_none_or(|c| crl_this_update > c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::der_util::{seq, tlv};
    use der::Encode;
    use der::asn1::Ia5String;
    use std::str::FromStr;

    fn uri(u: &str) -> GeneralName {
        GeneralName::UniformResourceIdentifier(Ia5String::new(u).expect("ia5"))
    }

    fn time(unix: u64) -> Time {
        Time::UtcTime(
            der::asn1::UtcTime::from_unix_duration(std::time::Duration::from_secs(unix))
                .expect("utc"),
        )
    }

    #[test]
    fn both_sources_are_explicitly_tagged_as_openssl_encodes_them() {
        // dpn [0] { fullName [0] { uri [6] "http://h/crl/iss-1/3.crl" } }, no thisUpdate.
        let u = b"http://h/crl/iss-1/3.crl";
        let want = seq(&[&tlv(0xa0, &tlv(0xa0, &tlv(0x86, u)))]);
        let status = CrlStatus {
            source: CrlSource::Dpn(DistributionPointName::FullName(vec![uri(
                "http://h/crl/iss-1/3.crl",
            )])),
            this_update: None,
        };
        assert_eq!(status.to_der().expect("encodes"), want);
        // issuer [1] { GeneralNames SEQUENCE { directoryName [4] { Name } } }, thisUpdate UTCTime.
        let name = Name::from_str("CN=Issuing CA").expect("name");
        let status = CrlStatus {
            source: CrlSource::Issuer(vec![GeneralName::DirectoryName(name.clone())]),
            this_update: Some(time(1_700_000_000)),
        };
        let want = seq(&[
            &tlv(0xa1, &seq(&[&tlv(0xa4, &name.to_der().expect("name"))])),
            &time(1_700_000_000).to_der().expect("time"),
        ]);
        assert_eq!(status.to_der().expect("encodes"), want);
    }

    #[test]
    fn a_list_decodes_into_url_and_issuer_queries() {
        let name = Name::from_str("CN=Issuing CA,O=certgate").expect("name");
        let list = vec![
            CrlStatus {
                source: CrlSource::Dpn(DistributionPointName::FullName(vec![
                    GeneralName::Rfc822Name(Ia5String::new("a@b").expect("ia5")),
                    uri("https://pki.example/t/x/crl/iss-1/full.crl"),
                ])),
                this_update: Some(time(1_700_000_000)),
            },
            CrlStatus {
                source: CrlSource::Issuer(vec![GeneralName::DirectoryName(name.clone())]),
                this_update: None,
            },
        ];
        let der = list.to_der().expect("encodes");
        let q = parse_crl_status_list(Some(&der)).expect("decodes");
        assert_eq!(
            q,
            vec![
                CrlQuery {
                    source: CrlRef::Url {
                        uri: "https://pki.example/t/x/crl/iss-1/full.crl".into(),
                        issuer_id: "iss-1".into(),
                        shard: "full".into(),
                    },
                    this_update_unix: Some(1_700_000_000),
                },
                CrlQuery {
                    source: CrlRef::Issuer(vec![name]),
                    this_update_unix: None,
                },
            ]
        );
    }

    #[test]
    fn malformed_absent_or_empty_is_bad_data_format_and_unknown_kinds_bad_request() {
        let fail = |v: Option<&[u8]>| parse_crl_status_list(v).map(|_| ()).map_err(|e| e.fail);
        assert_eq!(fail(None), Err(FailInfo::BadDataFormat));
        assert_eq!(fail(Some(&[0x30, 0x00])), Err(FailInfo::BadDataFormat));
        assert_eq!(
            fail(Some(&[0x30, 0x03, 0x02, 0x01, 0x07])),
            Err(FailInfo::BadDataFormat)
        );
        assert_eq!(fail(Some(b"garbage")), Err(FailInfo::BadDataFormat));
        // A URI that is not one of certgate's CRL URLs.
        let other = vec![CrlStatus {
            source: CrlSource::Dpn(DistributionPointName::FullName(vec![uri(
                "http://ca.example/root.crl",
            )])),
            this_update: None,
        }];
        assert_eq!(
            fail(Some(&other.to_der().expect("der"))),
            Err(FailInfo::BadRequest)
        );
        // An issuer given only as a DNS name.
        let dns = vec![CrlStatus {
            source: CrlSource::Issuer(vec![GeneralName::DnsName(
                Ia5String::new("ca.example").expect("ia5"),
            )]),
            this_update: None,
        }];
        assert_eq!(
            fail(Some(&dns.to_der().expect("der"))),
            Err(FailInfo::BadRequest)
        );
        // Too many entries (I-8).
        let many: Vec<CrlStatus> = (0..=MAX_CRL_STATUS)
            .map(|i| CrlStatus {
                source: CrlSource::Dpn(DistributionPointName::FullName(vec![uri(&format!(
                    "http://h/crl/iss-1/{i}.crl"
                ))])),
                this_update: None,
            })
            .collect();
        assert_eq!(
            fail(Some(&many.to_der().expect("der"))),
            Err(FailInfo::BadRequest)
        );
    }

    #[test]
    fn crl_paths_are_certgates_urls_only() {
        let p = |u: &str| crl_path(u);
        assert_eq!(
            p("http://127.0.0.1:8080/crl/iss-1/3.crl"),
            Some(("iss-1".into(), "3".into()))
        );
        assert_eq!(
            p("https://h/base/crl/a.b_c/full.crl"),
            Some(("a.b_c".into(), "full".into()))
        );
        assert_eq!(
            p("http://h/crl/iss-1/0.crl"),
            Some(("iss-1".into(), "0".into()))
        );
        for bad in [
            "ldap://h/crl/iss-1/3.crl",
            "http://h/crl/iss-1/03.crl",
            "http://h/crl/iss-1/3.pem",
            "http://h/crl/.x/3.crl",
            "http://h/crls/iss-1/3.crl",
            "http://h/crl/iss-1/3.crl?x=1",
            "http://h/crl/i%2F/3.crl",
            "http://h/crl/iss-1/-1.crl",
            "http://h",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    /// A CRL as the core builds it (signature not checked here).
    fn crl(issuer: &Name, this_update: u64, idp: &[&str]) -> Vec<u8> {
        use x509_cert::crl::TbsCertList;
        use x509_cert::ext::Extension;
        let idp = IssuingDistributionPoint {
            distribution_point: Some(DistributionPointName::FullName(
                idp.iter().map(|u| uri(u)).collect(),
            )),
            only_contains_user_certs: true,
            only_contains_ca_certs: false,
            only_some_reasons: None,
            indirect_crl: false,
            only_contains_attribute_certs: false,
        };
        let alg = spki::AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
            parameters: None,
        };
        CertificateList {
            tbs_cert_list: TbsCertList {
                version: x509_cert::Version::V2,
                signature: alg.clone(),
                issuer: issuer.clone(),
                this_update: time(this_update),
                next_update: Some(time(this_update + 3600)),
                revoked_certificates: None,
                crl_extensions: Some(vec![Extension {
                    extn_id: ID_CE_ISSUING_DISTRIBUTION_POINT,
                    critical: true,
                    extn_value: der::asn1::OctetString::new(idp.to_der().expect("idp"))
                        .expect("octets"),
                }]),
            },
            signature_algorithm: alg,
            signature: der::asn1::BitString::from_bytes(&[1, 2, 3]).expect("bits"),
        }
        .to_der()
        .expect("crl")
    }

    #[test]
    fn crl_facts_reads_this_update_issuer_and_idp_uris() {
        let issuer = Name::from_str("CN=Issuing CA").expect("name");
        let der = crl(
            &issuer,
            1_700_000_123,
            &["http://h/crl/iss-1/full.crl", "http://h/crl/iss-1/0.crl"],
        );
        let f = crl_facts(&der).expect("facts");
        assert_eq!(f.this_update_unix, 1_700_000_123);
        assert_eq!(f.issuer, issuer);
        assert_eq!(
            f.idp_uris,
            vec!["http://h/crl/iss-1/full.crl", "http://h/crl/iss-1/0.crl"]
        );
        assert_eq!(
            crl_facts(&der[..der.len() - 1]).map_err(|e| e.fail),
            Err(FailInfo::SystemFailure)
        );
    }

    #[test]
    fn only_strictly_newer_crls_are_sent() {
        assert!(
            newer_than(100, None),
            "no CRL yet: the current one is newer"
        );
        assert!(newer_than(101, Some(100)));
        assert!(!newer_than(100, Some(100)), "the same CRL is current");
        assert!(
            !newer_than(99, Some(100)),
            "a client ahead of us gets nothing"
        );
    }

    #[test]
    fn genm_value_reads_the_itav_value_as_received() {
        use crate::parse::{ID_IT_CA_CERTS, ID_IT_CRL_STATUS_LIST, Limits, parse};
        let raw = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/genm_cacerts.der"
        ))
        .expect("vector");
        let req = parse(&raw, &Limits::default()).expect("vector parses");
        assert_eq!(
            genm_value(&req, ID_IT_CA_CERTS),
            Some(None),
            "caCerts has no value"
        );
        assert_eq!(
            genm_value(&req, ID_IT_CRL_STATUS_LIST),
            None,
            "not asked for"
        );
    }
}
