//! Who signs OCSP responses: the issuing CA's key, or a delegated responder (RFC 6960 §4.2.2.2):
//! a signer key of role OCSP whose certificate the issuing CA signs with id-kp-OCSPSigning and
//! id-pkix-ocsp-nocheck (so clients do not ask for the responder's own status), carried in each
//! response's `certs`.

use const_oid::db::{rfc5280, rfc6960};
use der::asn1::{Null, OctetString};
use der::{Decode, Encode};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::Certificate;
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectKeyIdentifier,
};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

use super::IssuerCtx;
use super::ocsp::responder_key_hash;
use crate::error::{CoreError, Result};
use crate::signer_client::Signer;
use crate::store::status::StatusStore;
use crate::x509;
use certgate_proto::signer::{Algorithm, KeyRole, KeyType};

/// A signing identity for OCSP responses.
#[derive(Clone, Debug)]
pub struct Responder {
    /// The signer key id.
    pub key_id: String,
    /// What the signer is asked for.
    pub alg: Algorithm,
    /// signatureAlgorithm in the response.
    pub sig_alg: AlgorithmIdentifierOwned,
    /// The key's SubjectPublicKeyInfo DER (every signature is checked against it).
    pub spki_der: Vec<u8>,
    /// responderID byKey.
    pub key_hash: Vec<u8>,
    /// The delegated responder certificate (empty for the CA itself).
    pub certs: Vec<Certificate>,
    /// Until when responses may be signed (the responder certificate's notAfter).
    pub not_after: i64,
}

impl Responder {
    /// The issuing CA signs its own responses.
    pub fn issuer(issuer: &IssuerCtx) -> Result<Self> {
        let (alg, sig_alg) = x509::signing_algorithm(issuer.info.key_type)?;
        let spki = &issuer.cert.tbs_certificate.subject_public_key_info;
        Ok(Self {
            key_id: issuer.ca.signer_key_id.clone(),
            alg,
            sig_alg,
            spki_der: spki.to_der()?,
            key_hash: responder_key_hash(spki),
            certs: Vec::new(),
            not_after: issuer.ca.not_after_unix,
        })
    }

    /// Whether a response valid for `validity` seconds from `now` may still be signed.
    pub fn usable_at(&self, now: i64, validity: u64) -> bool {
        self.not_after > now.saturating_add(validity as i64)
    }
}

fn ext<T: Encode>(oid: der::asn1::ObjectIdentifier, critical: bool, v: &T) -> Result<Extension> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(v.to_der()?)?,
    })
}

/// Builds the TBSCertificate of a delegated OCSP responder.
pub fn responder_tbs(
    issuer: &IssuerCtx,
    spki: &SubjectPublicKeyInfoOwned,
    serial: &[u8],
    now: i64,
    validity_secs: u64,
) -> Result<TbsCertificate> {
    let (_, sig_alg) = x509::signing_algorithm(issuer.info.key_type)?;
    let not_after = now
        .saturating_add(validity_secs as i64)
        .min(issuer.ca.not_after_unix);
    let subject = x509::simple_name(
        Some(x509::CA_ORGANIZATION),
        Some(&format!("{} OCSP responder", issuer.ca.ca_id)),
    )?;
    let exts = vec![
        ext(
            rfc5280::ID_CE_BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )?,
        ext(
            rfc5280::ID_CE_KEY_USAGE,
            true,
            &KeyUsage(KeyUsages::DigitalSignature.into()),
        )?,
        ext(
            rfc5280::ID_CE_EXT_KEY_USAGE,
            false,
            &ExtendedKeyUsage(vec![rfc5280::ID_KP_OCSP_SIGNING]),
        )?,
        ext(rfc6960::ID_PKIX_OCSP_NOCHECK, false, &Null)?,
        ext(
            rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER,
            false,
            &SubjectKeyIdentifier(OctetString::new(x509::key_identifier(spki))?),
        )?,
        ext(
            rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(issuer.info.key_id.clone())?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        )?,
    ];
    Ok(TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(serial)?,
        signature: sig_alg,
        issuer: issuer.info.name.clone(),
        validity: Validity {
            not_before: x509::x509_time(now - x509::BACKDATE.as_secs() as i64)?,
            not_after: x509::x509_time(not_after)?,
        },
        subject,
        subject_public_key_info: spki.clone(),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(exts),
    })
}

/// The delegated responder of `issuer`: the stored one while its certificate outlives two
/// response lifetimes, else a new certificate (and the key, created once) through the signer.
pub async fn delegated(
    signer: &Signer,
    status: &dyn StatusStore,
    issuer: &IssuerCtx,
    now: i64,
    cert_validity: u64,
    ocsp_validity: u64,
) -> Result<Responder> {
    let key_id = format!("{}-ocsp", issuer.ca.ca_id);
    let from_cert = |cert_der: &[u8]| -> Result<Responder> {
        let cert = Certificate::from_der(cert_der)
            .map_err(|e| CoreError::Store(format!("stored responder certificate: {e}")))?;
        let spki = cert.tbs_certificate.subject_public_key_info.clone();
        let (alg, sig_alg) = x509::signing_algorithm(KeyType::EcP256)?;
        let (_, not_after) = x509::validity_of(cert_der)?;
        Ok(Responder {
            key_id: key_id.clone(),
            alg,
            sig_alg,
            spki_der: spki.to_der()?,
            key_hash: responder_key_hash(&spki),
            certs: vec![cert],
            not_after,
        })
    };
    if let Some(der) = status.get_responder(&issuer.ca.ca_id)? {
        let r = from_cert(&der)?;
        if r.usable_at(now, ocsp_validity.saturating_mul(2)) {
            return Ok(r);
        }
    }
    let info = signer
        .ensure_key(
            &key_id,
            &issuer.ca.tenant,
            KeyRole::Ocsp,
            KeyType::EcP256,
            None,
        )
        .await?;
    let spki = SubjectPublicKeyInfoOwned::from_der(&info.public_key_der)
        .map_err(|e| CoreError::Internal(format!("responder key from the signer: {e}")))?;
    let serial = x509::random_serial()?;
    let tbs = responder_tbs(issuer, &spki, &serial, now, cert_validity)?.to_der()?;
    let (alg, _) = x509::signing_algorithm(issuer.info.key_type)?;
    let sig = signer
        .sign(&issuer.ca.signer_key_id, alg, tbs.clone())
        .await?;
    x509::verify_signature(
        &crate::issue::spki_of(&issuer.ca.cert_der)?,
        alg,
        &tbs,
        &sig,
    )?;
    let cert_der = x509::assemble(&tbs, &sig)?;
    status.put_responder(&issuer.ca.ca_id, &key_id, &cert_der)?;
    tracing::info!(issuer = %issuer.ca.ca_id, key_id, "delegated OCSP responder certified");
    from_cert(&cert_der)
}
