//! Response builders: header, bodies (ip/cp/kup, rp, pkiConf, genp, error) and the final
//! PKIMessage. Two steps, because the protection comes from the core: build the header and body,
//! hand [`protected_part`] to the core (MAC or RA signature), then [`assemble`].

use const_oid::ObjectIdentifier;
use der::Encode;
use x509_cert::ext::pkix::name::GeneralName;

use crate::der_util::{bits, int, octets, read_all, read_tlv, seq, tlv, utf8};
use crate::error::{CmpError, FailInfo};
use crate::parse::{ID_IT_IMPLICIT_CONFIRM, PASSWORD_BASED_MAC, PBMAC1};

/// PKIStatus values used in responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// accepted (0).
    Accepted = 0,
    /// rejection (2).
    Rejection = 2,
    /// waiting (3): the request is held (manual approval); poll for the result.
    Waiting = 3,
}

/// The response header's fields (RFC 9483 §3.1).
#[derive(Debug, Clone)]
pub struct Header {
    /// pvno (the request's, 2 or 3).
    pub pvno: u8,
    /// The responder's name (the RA certificate's subject, or the request's recipient).
    pub sender: GeneralName,
    /// The request's sender.
    pub recipient: GeneralName,
    /// messageTime, Unix seconds.
    pub message_time_unix: u64,
    /// protectionAlg DER (absent for an unprotected error).
    pub protection_alg_der: Option<Vec<u8>>,
    /// senderKID (the reference for MAC, the RA key identifier for signatures).
    pub sender_kid: Option<Vec<u8>>,
    /// The request's transactionID.
    pub transaction_id: Vec<u8>,
    /// A fresh nonce.
    pub sender_nonce: Vec<u8>,
    /// The request's senderNonce.
    pub recip_nonce: Option<Vec<u8>>,
    /// implicitConfirm granted.
    pub implicit_confirm: bool,
}

fn explicit(n: u8, inner: &[u8]) -> Vec<u8> {
    tlv(0xa0 | n, inner)
}

impl Header {
    /// The PKIHeader DER.
    pub fn to_der(&self) -> Result<Vec<u8>, CmpError> {
        let enc = |g: &GeneralName| {
            g.to_der()
                .map_err(|_| CmpError::new(FailInfo::SystemFailure, "cannot encode a name"))
        };
        let mut parts = vec![
            int(u64::from(self.pvno)),
            enc(&self.sender)?,
            enc(&self.recipient)?,
        ];
        let time = der::asn1::GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(
            self.message_time_unix,
        ))
        .and_then(|t| t.to_der())
        .map_err(|_| CmpError::new(FailInfo::SystemFailure, "cannot encode messageTime"))?;
        parts.push(explicit(0, &time));
        if let Some(a) = &self.protection_alg_der {
            parts.push(explicit(1, a));
        }
        if let Some(k) = &self.sender_kid {
            parts.push(explicit(2, &octets(k)));
        }
        parts.push(explicit(4, &octets(&self.transaction_id)));
        parts.push(explicit(5, &octets(&self.sender_nonce)));
        if let Some(n) = &self.recip_nonce {
            parts.push(explicit(6, &octets(n)));
        }
        if self.implicit_confirm {
            let oid = ID_IT_IMPLICIT_CONFIRM
                .to_der()
                .map_err(|_| CmpError::new(FailInfo::SystemFailure, "oid"))?;
            let itav = seq(&[&oid, &[0x05, 0x00]]);
            parts.push(explicit(8, &seq(&[&itav])));
        }
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        Ok(seq(&refs))
    }
}

/// PKIStatusInfo DER.
pub fn status_info(status: Status, text: Option<&str>, fail: Option<FailInfo>) -> Vec<u8> {
    let mut parts = vec![int(status as u64)];
    if let Some(t) = text {
        parts.push(seq(&[&utf8(t)]));
    }
    if let Some(f) = fail {
        parts.push(f.bit_string_der());
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    seq(&refs)
}

/// Body tag of ip, cp and kup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRepKind {
    /// ip [1].
    Ip = 1,
    /// cp [3].
    Cp = 3,
    /// kup [8].
    Kup = 8,
}

/// ip/cp/kup carrying one accepted certificate (certReqId 0) and optional caPubs.
pub fn cert_rep(kind: CertRepKind, cert_der: &[u8], ca_pubs: &[Vec<u8>]) -> Vec<u8> {
    let ckp = seq(&[&explicit(0, cert_der)]);
    let resp = seq(&[&int(0), &status_info(Status::Accepted, None, None), &ckp]);
    let responses = seq(&[&resp]);
    let mut content = Vec::new();
    if !ca_pubs.is_empty() {
        content.extend(explicit(1, &tlv(0x30, &ca_pubs.concat())));
    }
    content.extend(responses);
    explicit(kind as u8, &tlv(0x30, &content))
}

/// ip/cp/kup answering `waiting` for `cert_req_id` (RFC 4210 §5.3.22, RFC 9483 §4.4): no
/// certificate yet, the client polls with pollReq.
pub fn cert_rep_waiting(kind: CertRepKind, cert_req_id: u64, text: Option<&str>) -> Vec<u8> {
    let resp = seq(&[&int(cert_req_id), &status_info(Status::Waiting, text, None)]);
    explicit(kind as u8, &seq(&[&seq(&[&resp])]))
}

/// pollRep [26]: ask again for `cert_req_id` after `check_after` seconds.
pub fn poll_rep(cert_req_id: u64, check_after: u64, reason: Option<&str>) -> Vec<u8> {
    let mut parts = vec![int(cert_req_id), int(check_after)];
    if let Some(r) = reason {
        parts.push(seq(&[&utf8(r)]));
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    explicit(26, &seq(&[&seq(&refs)]))
}

/// rp with one status.
pub fn rev_rep(status: Status, text: Option<&str>, fail: Option<FailInfo>) -> Vec<u8> {
    explicit(12, &seq(&[&seq(&[&status_info(status, text, fail)])]))
}

/// pkiConf.
pub fn pki_conf() -> Vec<u8> {
    explicit(19, &[0x05, 0x00])
}

/// genp with (infoType, value DER) pairs; `None` value = absent.
pub fn genp(itavs: &[(ObjectIdentifier, Option<Vec<u8>>)]) -> Result<Vec<u8>, CmpError> {
    let mut content = Vec::new();
    for (oid, value) in itavs {
        let oid = oid
            .to_der()
            .map_err(|_| CmpError::new(FailInfo::SystemFailure, "oid"))?;
        match value {
            Some(v) => content.extend(seq(&[&oid, v])),
            None => content.extend(seq(&[&oid])),
        }
    }
    Ok(explicit(22, &tlv(0x30, &content)))
}

/// The value of an id-it-caCerts ITAV: SEQUENCE OF CMPCertificate.
pub fn ca_certs_value(certs: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &certs.concat())
}

/// The value of an id-it-crls ITAV (RFC 9483 §4.3.4): SEQUENCE SIZE (1..MAX) OF CertificateList.
pub fn crls_value(crls: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &crls.concat())
}

/// error body: rejection with the failInfo bit and text.
pub fn error_body(err: &CmpError) -> Vec<u8> {
    explicit(
        23,
        &seq(&[&status_info(
            Status::Rejection,
            Some(&err.text),
            Some(err.fail),
        )]),
    )
}

/// ProtectedPart DER: what the MAC or signature covers.
pub fn protected_part(header_der: &[u8], body_der: &[u8]) -> Vec<u8> {
    seq(&[header_der, body_der])
}

/// The final PKIMessage.
pub fn assemble(
    header_der: &[u8],
    body_der: &[u8],
    protection: Option<&[u8]>,
    extra_certs: &[Vec<u8>],
) -> Vec<u8> {
    let mut content = Vec::with_capacity(header_der.len() + body_der.len() + 256);
    content.extend_from_slice(header_der);
    content.extend_from_slice(body_der);
    if let Some(p) = protection {
        content.extend(explicit(0, &bits(p)));
    }
    if !extra_certs.is_empty() {
        content.extend(explicit(1, &tlv(0x30, &extra_certs.concat())));
    }
    tlv(0x30, &content)
}

/// The request's MAC protectionAlg with the salt replaced by `salt` (RFC 9483 §3.2: a fresh
/// salt for the response, same algorithm and parameters otherwise). Handles PasswordBasedMac
/// (PBMParameter.salt) and PBMAC1 (PBKDF2-params.salt). `None` for anything else.
pub fn mac_alg_with_salt(alg_der: &[u8], salt: &[u8]) -> Option<Vec<u8>> {
    let (alg, _) = read_tlv(alg_der)?;
    let parts = read_all(alg.content)?;
    let [oid_tlv, params] = parts.as_slice() else {
        return None;
    };
    let oid = ObjectIdentifier::from_bytes(oid_tlv.content).ok()?;
    let new_params = if oid == PASSWORD_BASED_MAC {
        replace_first(params.raw, &octets(salt))?
    } else if oid == PBMAC1 {
        // PBMAC1-params { keyDerivationFunc AlgId { pbkdf2, PBKDF2-params { salt, ... } }, mac }
        let (p, _) = read_tlv(params.raw)?;
        let fields = read_all(p.content)?;
        let [kdf, mac] = fields.as_slice() else {
            return None;
        };
        let (k, _) = read_tlv(kdf.raw)?;
        let kf = read_all(k.content)?;
        let [kdf_oid, kdf_params] = kf.as_slice() else {
            return None;
        };
        let new_kdf_params = replace_first(kdf_params.raw, &octets(salt))?;
        let new_kdf = seq(&[kdf_oid.raw, &new_kdf_params]);
        seq(&[&new_kdf, mac.raw])
    } else {
        return None;
    };
    Some(seq(&[oid_tlv.raw, &new_params]))
}

/// A SEQUENCE with its first element (an OCTET STRING) replaced.
fn replace_first(seq_der: &[u8], first: &[u8]) -> Option<Vec<u8>> {
    let (s, _) = read_tlv(seq_der)?;
    if s.tag != 0x30 {
        return None;
    }
    let fields = read_all(s.content)?;
    let (head, rest) = fields.split_first()?;
    if head.tag != 0x04 {
        return None;
    }
    let mut parts: Vec<&[u8]> = vec![first];
    parts.extend(rest.iter().map(|f| f.raw));
    Some(seq(&parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(s: &str) -> Vec<u8> {
        ObjectIdentifier::new_unwrap(s).to_der().expect("oid")
    }

    #[test]
    fn pbmac1_salt_is_replaced_and_everything_else_kept() {
        let hmac256 = seq(&[&oid("1.2.840.113549.2.9"), &[0x05, 0x00]]);
        let kdf_params = seq(&[&octets(&[1u8; 16]), &int(10_000), &int(32), &hmac256]);
        let kdf = seq(&[&oid("1.2.840.113549.1.5.12"), &kdf_params]);
        let alg = seq(&[&oid("1.2.840.113549.1.5.14"), &seq(&[&kdf, &hmac256])]);
        let fresh = mac_alg_with_salt(&alg, &[2u8; 16]).expect("PBMAC1 handled");
        let kdf_params2 = seq(&[&octets(&[2u8; 16]), &int(10_000), &int(32), &hmac256]);
        let kdf2 = seq(&[&oid("1.2.840.113549.1.5.12"), &kdf_params2]);
        let want = seq(&[&oid("1.2.840.113549.1.5.14"), &seq(&[&kdf2, &hmac256])]);
        assert_eq!(fresh, want);
        // Unknown algorithm: not touched.
        let other = seq(&[&oid("1.2.3.4"), &kdf_params]);
        assert_eq!(mac_alg_with_salt(&other, &[2u8; 16]), None);
    }

    #[test]
    fn error_body_carries_rejection_text_and_one_bit() {
        let body = error_body(&CmpError::new(FailInfo::BadPop, "no"));
        let want_status = status_info(Status::Rejection, Some("no"), Some(FailInfo::BadPop));
        assert_eq!(body, explicit(23, &seq(&[&want_status])));
        assert_eq!(
            want_status,
            seq(&[
                &int(2),
                &seq(&[&utf8("no")]),
                &[0x03, 0x03, 0x06, 0x00, 0x40]
            ])
        );
    }

    #[test]
    fn genp_with_absent_values_decodes_as_a_genp_with_no_info_value() {
        use crate::parse::{ID_IT_CA_CERTS, ID_IT_CERT_REQ_TEMPLATE, ID_IT_ROOT_CA_KEY_UPDATE};
        use der::Decode;
        let ca = ca_certs_value(&[]);
        let body = genp(&[
            (ID_IT_CA_CERTS, Some(ca.clone())),
            (ID_IT_ROOT_CA_KEY_UPDATE, None),
            (ID_IT_CERT_REQ_TEMPLATE, None),
        ])
        .expect("genp encodes");
        let decoded = cmpv2::body::PkiBody::from_der(&body).expect("a PKIBody");
        let cmpv2::body::PkiBody::GenP(itavs) = decoded else {
            panic!("genp expected, got {decoded:?}");
        };
        assert_eq!(itavs.len(), 3);
        assert_eq!(itavs[0].oid, ID_IT_CA_CERTS);
        assert_eq!(
            itavs[0].value.as_ref().map(|v| v.to_der().expect("any")),
            Some(ca)
        );
        assert_eq!(itavs[1].oid, ID_IT_ROOT_CA_KEY_UPDATE);
        assert!(itavs[1].value.is_none(), "rootCaKeyUpdate value absent");
        assert_eq!(itavs[2].oid, ID_IT_CERT_REQ_TEMPLATE);
        assert!(itavs[2].value.is_none(), "certReqTemplate value absent");
    }

    #[test]
    fn crls_value_is_a_sequence_of_the_crls_as_given() {
        // A minimal CertificateList-shaped element; the value wraps the DER untouched.
        let crl = seq(&[
            &seq(&[&int(1)]),
            &seq(&[&oid("1.2.840.10045.4.3.2")]),
            &bits(&[1, 2]),
        ]);
        let v = crls_value(std::slice::from_ref(&crl));
        assert_eq!(v, seq(&[&crl]));
        let body = genp(&[(crate::parse::ID_IT_CRLS, Some(v.clone()))]).expect("genp encodes");
        use der::Decode;
        let cmpv2::body::PkiBody::GenP(itavs) =
            cmpv2::body::PkiBody::from_der(&body).expect("a PKIBody")
        else {
            panic!("genp expected");
        };
        assert_eq!(itavs[0].oid.to_string(), "1.3.6.1.5.5.7.4.23");
        assert_eq!(
            itavs[0].value.as_ref().map(|x| x.to_der().expect("any")),
            Some(v)
        );
    }

    #[test]
    fn waiting_and_poll_rep_decode_as_cmp_bodies() {
        use der::Decode;
        let body = cert_rep_waiting(CertRepKind::Ip, 0, Some("awaits approval"));
        let cmpv2::body::PkiBody::Ip(rep) = cmpv2::body::PkiBody::from_der(&body).expect("ip")
        else {
            panic!("ip expected");
        };
        assert_eq!(rep.response.len(), 1);
        assert_eq!(rep.response[0].cert_req_id.as_bytes(), &[0]);
        assert_eq!(rep.response[0].status.status as u8, Status::Waiting as u8);
        assert!(rep.response[0].certified_key_pair.is_none());

        // pollRep [26] { SEQUENCE OF SEQUENCE { certReqId 0, checkAfter 7, reason } }
        let body = poll_rep(0, 7, Some("awaits approval"));
        let entry = seq(&[&int(0), &int(7), &seq(&[&utf8("awaits approval")])]);
        assert_eq!(body, explicit(26, &seq(&[&entry])));
        assert_eq!(&body[..2], &[0xba, body.len() as u8 - 2]);
    }
}
