//! Building OCSP responses (RFC 6960 §4.2), sans I/O: the core builds the exact ResponseData
//! bytes, the signer signs them, and [`assemble`] wraps the signature into the complete DER
//! OCSPResponse served byte for byte by the edges.
//!
//! Profile: BasicOCSPResponse, responderID byKey (SHA-1 of the responder's public key, as RFC 6960
//! §4.2.2.3 defines KeyHash), one SingleResponse per certificate with thisUpdate and nextUpdate,
//! no nonce (a precomputed response cannot echo one; RFC 9654 §2.1 lets a client accept that),
//! and the delegated responder's certificate in `certs` when one signs.

use std::time::Duration;

use aws_lc_rs::digest;
use const_oid::db::rfc5912;
use der::asn1::{BitString, GeneralizedTime, Null, OctetString};
use der::{Any, Encode};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_cert::ext::pkix::CrlReason;
use x509_cert::serial_number::SerialNumber;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspResponse, ResponderId,
    ResponseData, RevokedInfo, SingleResponse, Version,
};

use crate::error::{CoreError, Result};

/// The CertID hash algorithms the core precomputes (and the edges accept).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// SHA-1: what most clients (OpenSSL, browsers) still send.
    Sha1,
    /// SHA-256.
    Sha256,
}

impl HashAlg {
    /// Both, in the order they are precomputed.
    pub const ALL: [HashAlg; 2] = [HashAlg::Sha1, HashAlg::Sha256];

    /// The wire name ("sha1", "sha256").
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "sha1" => Ok(HashAlg::Sha1),
            "sha256" => Ok(HashAlg::Sha256),
            _ => Err(CoreError::malformed(
                "ocsp.hash_alg",
                "hash_alg must be \"sha1\" or \"sha256\"",
            )),
        }
    }

    /// The digest.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            HashAlg::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => &digest::SHA256,
        };
        digest::digest(alg, data).as_ref().to_vec()
    }

    fn alg_id(self) -> AlgorithmIdentifierOwned {
        AlgorithmIdentifierOwned {
            oid: match self {
                HashAlg::Sha1 => rfc5912::ID_SHA_1,
                HashAlg::Sha256 => rfc5912::ID_SHA_256,
            },
            // OpenSSL and most responders write NULL parameters; matching is on the hashes.
            parameters: Some(Any::from(Null)),
        }
    }
}

/// The CertID of `serial` under `issuer` (RFC 6960 §4.1.1): hashes of the issuer's DER subject
/// Name and of its subjectPublicKey BIT STRING contents.
pub fn cert_id(issuer: &Certificate, serial: &[u8], alg: HashAlg) -> Result<CertId> {
    let tbs = &issuer.tbs_certificate;
    Ok(CertId {
        hash_algorithm: alg.alg_id(),
        issuer_name_hash: OctetString::new(alg.digest(&tbs.subject.to_der()?))?,
        issuer_key_hash: OctetString::new(
            alg.digest(tbs.subject_public_key_info.subject_public_key.raw_bytes()),
        )?,
        serial_number: SerialNumber::new(serial)?,
    })
}

/// The status of one certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not revoked.
    Good,
    /// Revoked at (Unix seconds) for an RFC 5280 CRLReason code.
    Revoked {
        /// Revocation time.
        at_unix: i64,
        /// CRLReason code.
        reason: u32,
    },
}

/// An RFC 5280 CRLReason from its code; None for unspecified (0), which is left out of responses
/// and CRL entries as RFC 5280 §5.3.1 recommends.
pub fn crl_reason(code: u32) -> Option<CrlReason> {
    Some(match code {
        1 => CrlReason::KeyCompromise,
        2 => CrlReason::CaCompromise,
        3 => CrlReason::AffiliationChanged,
        4 => CrlReason::Superseded,
        5 => CrlReason::CessationOfOperation,
        6 => CrlReason::CertificateHold,
        8 => CrlReason::RemoveFromCRL,
        9 => CrlReason::PrivilegeWithdrawn,
        10 => CrlReason::AaCompromise,
        _ => return None,
    })
}

/// A GeneralizedTime from Unix seconds (OCSP uses GeneralizedTime throughout).
pub fn gen_time(unix: i64) -> Result<OcspGeneralizedTime> {
    let secs = u64::try_from(unix).map_err(|_| CoreError::Internal("time before 1970".into()))?;
    Ok(OcspGeneralizedTime(GeneralizedTime::from_unix_duration(
        Duration::from_secs(secs),
    )?))
}

/// The KeyHash a responder is named by: SHA-1 of its subjectPublicKey BIT STRING contents.
pub fn responder_key_hash(spki: &spki::SubjectPublicKeyInfoOwned) -> Vec<u8> {
    HashAlg::Sha1.digest(spki.subject_public_key.raw_bytes())
}

/// Builds the ResponseData for a set of certificates (one SingleResponse each).
pub fn response_data(
    responder_key_hash: &[u8],
    produced_at: i64,
    entries: &[(CertId, Status)],
    this_update: i64,
    next_update: i64,
) -> Result<ResponseData> {
    let mut responses = Vec::with_capacity(entries.len());
    for (id, status) in entries {
        let cert_status = match *status {
            Status::Good => CertStatus::good(),
            Status::Revoked { at_unix, reason } => CertStatus::Revoked(RevokedInfo {
                revocation_time: gen_time(at_unix)?,
                revocation_reason: crl_reason(reason),
            }),
        };
        responses.push(SingleResponse {
            cert_id: id.clone(),
            cert_status,
            this_update: gen_time(this_update)?,
            next_update: Some(gen_time(next_update)?),
            single_extensions: None,
        });
    }
    Ok(ResponseData {
        version: Version::V1,
        responder_id: ResponderId::ByKey(OctetString::new(responder_key_hash.to_vec())?),
        produced_at: gen_time(produced_at)?,
        responses,
        response_extensions: None,
    })
}

/// Wraps signed ResponseData DER into a complete, successful DER OCSPResponse.
pub fn assemble(
    response_data_der: &[u8],
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: &[u8],
    certs: &[Certificate],
) -> Result<Vec<u8>> {
    use der::Decode;
    let basic = BasicOcspResponse {
        tbs_response_data: ResponseData::from_der(response_data_der)?,
        signature_algorithm,
        signature: BitString::from_bytes(signature)?,
        certs: (!certs.is_empty()).then(|| certs.to_vec()),
    };
    Ok(OcspResponse::successful(basic)?.to_der()?)
}

/// Whether a stored single-certificate response says "revoked" (false for anything that does
/// not parse as one).
pub fn says_revoked(response_der: &[u8]) -> bool {
    use der::Decode;
    let Ok(resp) = OcspResponse::from_der(response_der) else {
        return false;
    };
    let Some(bytes) = resp.response_bytes else {
        return false;
    };
    BasicOcspResponse::from_der(bytes.response.as_bytes()).is_ok_and(|b| {
        b.tbs_response_data
            .responses
            .first()
            .is_some_and(|r| matches!(r.cert_status, CertStatus::Revoked(_)))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use der::Decode;

    fn issuer() -> Certificate {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "test issuer");
        let c = p.self_signed(&key).unwrap();
        Certificate::from_der(c.der()).unwrap()
    }

    #[test]
    fn cert_ids_hash_name_and_key_with_the_named_algorithm() {
        let iss = issuer();
        let a = cert_id(&iss, &[0x41, 2, 3], HashAlg::Sha1).unwrap();
        let b = cert_id(&iss, &[0x41, 2, 3], HashAlg::Sha256).unwrap();
        assert_eq!(a.issuer_name_hash.as_bytes().len(), 20);
        assert_eq!(b.issuer_key_hash.as_bytes().len(), 32);
        assert_eq!(a.hash_algorithm.oid, rfc5912::ID_SHA_1);
        assert_eq!(b.hash_algorithm.oid, rfc5912::ID_SHA_256);
        let name = iss.tbs_certificate.subject.to_der().unwrap();
        assert_eq!(
            b.issuer_name_hash.as_bytes(),
            digest::digest(&digest::SHA256, &name).as_ref()
        );
        assert_eq!(a.serial_number.as_bytes(), &[0x41, 2, 3]);
    }

    #[test]
    fn revoked_status_carries_time_and_reason_and_unspecified_is_omitted() {
        let iss = issuer();
        let id = cert_id(&iss, &[0x41], HashAlg::Sha256).unwrap();
        let rd = response_data(
            &[7u8; 20],
            1_700_000_100,
            &[
                (
                    id.clone(),
                    Status::Revoked {
                        at_unix: 1_700_000_000,
                        reason: 1,
                    },
                ),
                (
                    id,
                    Status::Revoked {
                        at_unix: 1_700_000_000,
                        reason: 0,
                    },
                ),
            ],
            1_700_000_100,
            1_700_345_700,
        )
        .unwrap();
        let der = rd.to_der().unwrap();
        let back = ResponseData::from_der(&der).unwrap();
        match back.responses[0].cert_status {
            CertStatus::Revoked(info) => {
                assert_eq!(info.revocation_reason, Some(CrlReason::KeyCompromise));
                assert_eq!(
                    info.revocation_time.0.to_unix_duration().as_secs(),
                    1_700_000_000
                );
            }
            other => panic!("not revoked: {other:?}"),
        }
        match back.responses[1].cert_status {
            CertStatus::Revoked(info) => assert_eq!(info.revocation_reason, None),
            other => panic!("not revoked: {other:?}"),
        }
        assert!(back.response_extensions.is_none(), "no nonce");
        assert!(matches!(back.responder_id, ResponderId::ByKey(_)));
        let resp = assemble(
            &der,
            AlgorithmIdentifierOwned {
                oid: rfc5912::ECDSA_WITH_SHA_256,
                parameters: None,
            },
            &[1, 2, 3],
            &[],
        )
        .unwrap();
        assert!(says_revoked(&resp));
        assert!(!says_revoked(&resp[..resp.len() - 1]));
        let parsed = OcspResponse::from_der(&resp).unwrap();
        assert_eq!(
            parsed.response_status,
            x509_ocsp::OcspResponseStatus::Successful
        );
    }

    #[test]
    fn hash_alg_names_round_trip_and_unknown_is_refused() {
        for a in HashAlg::ALL {
            assert_eq!(HashAlg::parse(a.name()).unwrap(), a);
        }
        assert!(HashAlg::parse("md5").is_err());
    }
}
