//! PKIMessage decoding and the RFC 9483 §3 header checks.

use cmpv2::body::PkiBody;
use cmpv2::header::PkiHeader;
use const_oid::ObjectIdentifier;
use crmf::pop::ProofOfPossession;
use der::asn1::BitString;
use der::{Decode, Encode};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use crate::crypto;
use crate::der_util::{self, read_all, read_tlv};
use crate::error::{CmpError, FailInfo};

/// id-it-implicitConfirm (RFC 4210 §5.1.1.1).
pub const ID_IT_IMPLICIT_CONFIRM: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.4.13");
/// id-it-caCerts (RFC 9483 §4.3.1).
pub const ID_IT_CA_CERTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.4.17");
/// id-it-rootCaKeyUpdate (RFC 9483 §4.3.2).
pub const ID_IT_ROOT_CA_KEY_UPDATE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.4.20");
/// id-it-certReqTemplate (RFC 9483 §4.3.3).
pub const ID_IT_CERT_REQ_TEMPLATE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.4.19");
/// id-it-crlStatusList (RFC 9483 §4.3.4).
pub const ID_IT_CRL_STATUS_LIST: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.4.22");
/// id-it-crls (RFC 9483 §4.3.4): the genp answer to crlStatusList.
pub const ID_IT_CRLS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.4.23");
/// PasswordBasedMac (RFC 4210 §5.1.3.1).
pub const PASSWORD_BASED_MAC: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113533.7.66.13");
/// PBMAC1 (RFC 8018, RFC 9480 §2.3).
pub const PBMAC1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.14");
const SAN_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const CRL_REASON_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.21");

/// Bounds on what is parsed (I-8).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest PKIMessage, bytes.
    pub max_message_bytes: usize,
    /// Most extraCerts accepted.
    pub max_extra_certs: usize,
    /// Allowed |messageTime − now|, seconds (RFC 9483 §3.1: badTime beyond it).
    pub max_clock_skew_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_extra_certs: 8,
            max_clock_skew_secs: 300,
        }
    }
}

/// How the request is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// PasswordBasedMac or PBMAC1 under the shared secret named by `sender_kid`.
    Mac {
        /// The reference (senderKID).
        sender_kid: Vec<u8>,
    },
    /// A signature by the first extraCerts certificate.
    Signature,
}

/// The message types a client sends, as metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertReqKind {
    /// Initialization request.
    Ir,
    /// Certification request.
    Cr,
    /// Key update request.
    Kur,
}

/// A CRMF certificate request after proof of possession was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmfRequest {
    /// ir, cr or kur.
    pub kind: CertReqKind,
    /// SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
    /// Subject Name DER (an empty SEQUENCE when absent).
    pub subject_der: Vec<u8>,
    /// SANs from the template's subjectAltName extension: (kind, value) with kind one of
    /// `dns`, `ip`, `email`, `uri`.
    pub sans: Vec<(&'static str, String)>,
}

/// A revocation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevRequest {
    /// Serial, lower-case hex of the magnitude.
    pub serial_hex: String,
    /// CRLReason code (0 when absent).
    pub reason: u32,
}

/// A certConf entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertConfirm {
    /// certHash.
    pub cert_hash: Vec<u8>,
    /// certReqId.
    pub cert_req_id: u64,
    /// Accepted (statusInfo absent or status accepted).
    pub accepted: bool,
    /// The client's statusString when rejecting.
    pub reason: String,
}

/// What the body asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// ir / cr / kur.
    CertReq(CrmfRequest),
    /// p10cr: the PKCS#10 DER.
    P10cr(Vec<u8>),
    /// rr.
    Rr(RevRequest),
    /// certConf (empty = the client confirms nothing, RFC 4210 allows it).
    CertConf(Vec<CertConfirm>),
    /// pollReq: the certReqId polled for (RFC 9483: one request per transaction).
    PollReq(u64),
    /// genm: the requested infoTypes.
    Genm(Vec<ObjectIdentifier>),
    /// Anything else (ip, error...), by name.
    Other(&'static str),
}

impl Body {
    /// The metrics label of the message type.
    pub fn label(&self) -> &'static str {
        match self {
            Body::CertReq(r) => match r.kind {
                CertReqKind::Ir => "ir",
                CertReqKind::Cr => "cr",
                CertReqKind::Kur => "kur",
            },
            Body::P10cr(_) => "p10cr",
            Body::Rr(_) => "rr",
            Body::CertConf(_) => "certConf",
            Body::PollReq(_) => "pollReq",
            Body::Genm(_) => "genm",
            Body::Other(n) => n,
        }
    }
}

/// A decoded request: owned, with the exact bytes protection covers.
#[derive(Debug, Clone)]
pub struct Request {
    /// pvno as received (2 or 3).
    pub pvno: u8,
    /// The header's sender.
    pub sender: GeneralName,
    /// The header's recipient.
    pub recipient: GeneralName,
    /// messageTime, Unix seconds.
    pub message_time: Option<u64>,
    /// protectionAlg.
    pub protection_alg: Option<AlgorithmIdentifierOwned>,
    /// protectionAlg, DER as received.
    pub protection_alg_der: Option<Vec<u8>>,
    /// senderKID.
    pub sender_kid: Option<Vec<u8>>,
    /// transactionID.
    pub transaction_id: Vec<u8>,
    /// senderNonce.
    pub sender_nonce: Vec<u8>,
    /// recipNonce.
    pub recip_nonce: Option<Vec<u8>>,
    /// implicitConfirm requested in generalInfo.
    pub implicit_confirm: bool,
    /// The body.
    pub body: Body,
    /// The protection BIT STRING's bytes.
    pub protection: Option<Vec<u8>>,
    /// extraCerts.
    pub extra_certs: Vec<Certificate>,
    /// DER of ProtectedPart ::= SEQUENCE { header, body } from the received bytes.
    pub protected_part_der: Vec<u8>,
}

/// What [`parse`] can salvage from a message it refuses, so the error response can echo the
/// transactionID and nonces (RFC 9483 §3.6.4).
#[derive(Debug, Clone, Default)]
pub struct Salvage {
    /// transactionID, if the header decoded.
    pub transaction_id: Option<Vec<u8>>,
    /// senderNonce, if present.
    pub sender_nonce: Option<Vec<u8>>,
    /// The sender, if the header decoded.
    pub sender: Option<GeneralName>,
}

fn malformed(what: &str) -> CmpError {
    CmpError::new(
        FailInfo::BadDataFormat,
        format!("malformed PKIMessage: {what}"),
    )
}

/// Decodes one PKIMessage. Errors carry the failInfo to answer with; `Salvage` what the
/// header offered for the error response.
pub fn parse(input: &[u8], limits: &Limits) -> Result<Request, (CmpError, Box<Salvage>)> {
    let mut salvage = Salvage::default();
    parse_inner(input, limits, &mut salvage).map_err(|e| (e, Box::new(salvage)))
}

fn parse_inner(input: &[u8], limits: &Limits, salvage: &mut Salvage) -> Result<Request, CmpError> {
    if input.len() > limits.max_message_bytes {
        return Err(CmpError::new(
            FailInfo::BadRequest,
            format!("PKIMessage larger than {} bytes", limits.max_message_bytes),
        ));
    }
    let (outer, rest) = read_tlv(input).ok_or_else(|| malformed("not DER"))?;
    if outer.tag != 0x30 || !rest.is_empty() {
        return Err(malformed("not a single SEQUENCE"));
    }
    let parts = read_all(outer.content).ok_or_else(|| malformed("bad element"))?;
    let (header_tlv, body_tlv) = match parts.as_slice() {
        [h, b, ..] if h.tag == 0x30 && (0xa0..=0xba).contains(&b.tag) => (*h, *b),
        _ => return Err(malformed("header or body missing")),
    };
    let mut protection = None;
    let mut extra_certs = Vec::new();
    let mut last_tag = 0u8;
    for p in &parts[2..] {
        if p.tag <= last_tag {
            return Err(malformed("optional fields out of order"));
        }
        last_tag = p.tag;
        match p.tag {
            0xa0 => {
                let bs = BitString::from_der(p.content).map_err(|_| malformed("protection"))?;
                protection = Some(
                    bs.as_bytes()
                        .ok_or_else(|| malformed("protection has unused bits"))?
                        .to_vec(),
                );
            }
            0xa1 => {
                let (seq, rest) = read_tlv(p.content).ok_or_else(|| malformed("extraCerts"))?;
                if seq.tag != 0x30 || !rest.is_empty() {
                    return Err(malformed("extraCerts"));
                }
                for c in read_all(seq.content).ok_or_else(|| malformed("extraCerts"))? {
                    if extra_certs.len() >= limits.max_extra_certs {
                        return Err(CmpError::new(
                            FailInfo::BadRequest,
                            format!("more than {} extraCerts", limits.max_extra_certs),
                        ));
                    }
                    extra_certs
                        .push(Certificate::from_der(c.raw).map_err(|_| malformed("extraCerts"))?);
                }
            }
            _ => return Err(malformed("unknown trailing field")),
        }
    }

    // pvno: the first element of the header. cmpv2 0.2 decodes only 1 and 2, so cmp2021 (3)
    // is mapped to 2 for decoding; the bytes protection covers stay as received.
    let (pvno_tlv, _) = read_tlv(header_tlv.content).ok_or_else(|| malformed("pvno"))?;
    let pvno = match (pvno_tlv.tag, pvno_tlv.content) {
        (0x02, [v]) => *v,
        _ => return Err(malformed("pvno")),
    };
    let mut header_bytes = header_tlv.raw.to_vec();
    if pvno == 3 {
        let pos = header_tlv.raw.len() - header_tlv.content.len() + 2;
        header_bytes[pos] = 2;
    }
    let header = PkiHeader::from_der(&header_bytes).map_err(|_| malformed("header"))?;
    salvage.transaction_id = header.trans_id.as_ref().map(|t| t.as_bytes().to_vec());
    salvage.sender_nonce = header.sender_nonce.as_ref().map(|t| t.as_bytes().to_vec());
    salvage.sender = Some(header.sender.clone());
    if pvno != 2 && pvno != 3 {
        return Err(CmpError::new(
            FailInfo::UnsupportedVersion,
            format!("pvno {pvno} is not supported (2 or 3)"),
        ));
    }
    // An error body is never processed; cmpv2 0.2 cannot decode failInfo bits above 15.
    let body = if body_tlv.tag == 0xb7 {
        Body::Other("error")
    } else if body_tlv.tag == 0xb9 {
        // cmpv2 0.2 decodes pollReq [25] with the pollRep type; read PollReqContent here.
        poll_req(body_tlv.content)?
    } else {
        let body_decoded = PkiBody::from_der(body_tlv.raw).map_err(|_| malformed("body"))?;
        body_from(&body_decoded, body_tlv.content)?
    };

    let message_time = header.message_time.map(|t| t.to_unix_duration().as_secs());
    let implicit_confirm = header
        .general_info
        .as_ref()
        .is_some_and(|g| g.iter().any(|i| i.oid == ID_IT_IMPLICIT_CONFIRM));
    let protection_alg_der = header
        .protection_alg
        .as_ref()
        .map(|a| a.to_der())
        .transpose()
        .map_err(|_| malformed("protectionAlg"))?;
    Ok(Request {
        pvno,
        sender: header.sender.clone(),
        recipient: header.recipient.clone(),
        message_time,
        protection_alg: header.protection_alg.clone(),
        protection_alg_der,
        sender_kid: header.sender_kid.as_ref().map(|k| k.as_bytes().to_vec()),
        transaction_id: header
            .trans_id
            .as_ref()
            .map(|t| t.as_bytes().to_vec())
            .unwrap_or_default(),
        sender_nonce: header
            .sender_nonce
            .as_ref()
            .map(|t| t.as_bytes().to_vec())
            .unwrap_or_default(),
        recip_nonce: header.recip_nonce.as_ref().map(|t| t.as_bytes().to_vec()),
        implicit_confirm,
        body,
        protection,
        extra_certs,
        protected_part_der: der_util::seq(&[header_tlv.raw, body_tlv.raw]),
    })
}

/// PollReqContent ::= SEQUENCE OF SEQUENCE { certReqId INTEGER } (RFC 4210 §5.3.22), exactly
/// one entry (RFC 9483 §4.4: one request per transaction).
fn poll_req(content: &[u8]) -> Result<Body, CmpError> {
    let bad = || malformed("pollReq");
    let (outer, rest) = read_tlv(content).ok_or_else(bad)?;
    if outer.tag != 0x30 || !rest.is_empty() {
        return Err(bad());
    }
    let entries = read_all(outer.content).ok_or_else(bad)?;
    let [entry] = entries.as_slice() else {
        return Err(malformed("pollReq must name exactly one certReqId"));
    };
    if entry.tag != 0x30 {
        return Err(bad());
    }
    let (id, rest) = read_tlv(entry.content).ok_or_else(bad)?;
    if id.tag != 0x02 || !rest.is_empty() {
        return Err(bad());
    }
    let id = der::asn1::Int::from_der(id.raw).map_err(|_| bad())?;
    Ok(Body::PollReq(
        int_u64(&id).ok_or_else(|| malformed("pollReq certReqId"))?,
    ))
}

fn int_u64(i: &der::asn1::Int) -> Option<u64> {
    let b = i.as_bytes();
    if b.len() > 8 || b.first().is_some_and(|x| x & 0x80 != 0) {
        return None;
    }
    Some(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
}

fn body_from(body: &PkiBody<'_>, content: &[u8]) -> Result<Body, CmpError> {
    Ok(match body {
        PkiBody::Ir(m) => Body::CertReq(crmf(CertReqKind::Ir, m, content)?),
        PkiBody::Cr(m) => Body::CertReq(crmf(CertReqKind::Cr, m, content)?),
        PkiBody::KUr(m) => Body::CertReq(crmf(CertReqKind::Kur, m, content)?),
        PkiBody::P10cr(csr) => Body::P10cr(csr.to_der().map_err(|_| malformed("p10cr"))?),
        PkiBody::Rr(rr) => {
            let [details] = rr.as_slice() else {
                return Err(CmpError::new(
                    FailInfo::BadRequest,
                    "rr must carry exactly one RevDetails (RFC 9483 §4.2)",
                ));
            };
            let serial = details.cert_details.serial_number.as_ref().ok_or_else(|| {
                CmpError::new(FailInfo::BadCertId, "rr certDetails without serialNumber")
            })?;
            let mag: Vec<u8> = serial
                .as_bytes()
                .iter()
                .copied()
                .skip_while(|b| *b == 0)
                .collect();
            let reason = details
                .crl_entry_details
                .as_ref()
                .and_then(|exts| exts.iter().find(|e| e.extn_id == CRL_REASON_OID))
                .and_then(|e| match e.extn_value.as_bytes() {
                    [0x0a, 0x01, v] => Some(u32::from(*v)),
                    _ => None,
                })
                .unwrap_or(0);
            Body::Rr(RevRequest {
                serial_hex: hex::encode(mag),
                reason,
            })
        }
        PkiBody::CertConf(statuses) => {
            let mut out = Vec::new();
            for s in statuses {
                let status = s.status_info.as_ref();
                let accepted = status.is_none_or(|st| {
                    matches!(
                        st.status,
                        cmpv2::status::PkiStatus::Accepted
                            | cmpv2::status::PkiStatus::GrantedWithMods
                    )
                });
                let reason = status
                    .and_then(|st| st.status_string.as_ref())
                    .map(|t| t.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; "))
                    .unwrap_or_default();
                out.push(CertConfirm {
                    cert_hash: s.cert_hash.as_bytes().to_vec(),
                    cert_req_id: int_u64(&s.cert_req_id).ok_or_else(|| malformed("certReqId"))?,
                    accepted,
                    reason: reason.chars().take(256).collect(),
                });
            }
            Body::CertConf(out)
        }
        // Read from the raw bytes before decoding (see `poll_req`).
        PkiBody::PollReq(_) => return Err(malformed("pollReq")),
        PkiBody::GenM(itavs) => Body::Genm(itavs.iter().map(|i| i.oid).collect()),
        PkiBody::Ip(_) => Body::Other("ip"),
        PkiBody::Cp(_) => Body::Other("cp"),
        PkiBody::Kup(_) => Body::Other("kup"),
        PkiBody::Error(_) => Body::Other("error"),
        PkiBody::PkiConf(_) => Body::Other("pkiConf"),
        PkiBody::Krr(_) => Body::Other("krr"),
        PkiBody::Ccr(_) => Body::Other("ccr"),
        _ => Body::Other("other"),
    })
}

/// The raw CertRequest DER of the first CertReqMsg (what signature POP covers), found in the
/// body's content bytes: [n] { SEQUENCE OF CertReqMsg { CertRequest, ... } }.
fn raw_cert_request(body_content: &[u8]) -> Option<&[u8]> {
    let (msgs, _) = read_tlv(body_content)?;
    let (msg, _) = read_tlv(msgs.content)?;
    let (req, _) = read_tlv(msg.content)?;
    Some(req.raw)
}

fn crmf(
    kind: CertReqKind,
    msgs: &crmf::request::CertReqMessages,
    body_content: &[u8],
) -> Result<CrmfRequest, CmpError> {
    let [msg] = msgs.as_slice() else {
        return Err(CmpError::new(
            FailInfo::BadRequest,
            "exactly one CertReqMsg is supported (RFC 9483 §4.1.1)",
        ));
    };
    if int_u64(&msg.cert_req.cert_req_id) != Some(0) {
        return Err(CmpError::new(FailInfo::BadRequest, "certReqId must be 0"));
    }
    let t = &msg.cert_req.cert_template;
    let spki = t.subject_public_key_info.as_ref().ok_or_else(|| {
        CmpError::new(
            FailInfo::BadCertTemplate,
            "certTemplate without publicKey: central key generation is not supported",
        )
    })?;
    match &msg.popo {
        Some(ProofOfPossession::Signature(sk)) => {
            if sk.poposk_input.is_some() {
                return Err(CmpError::new(
                    FailInfo::BadPop,
                    "POPOSigningKeyInput is not supported (RFC 9483 §4.1.1: absent)",
                ));
            }
            let raw = raw_cert_request(body_content).ok_or_else(|| malformed("CertRequest"))?;
            let sig = sk
                .signature
                .as_bytes()
                .ok_or_else(|| CmpError::new(FailInfo::BadPop, "POP signature has unused bits"))?;
            crypto::verify(&sk.alg_id.oid, spki, raw, sig, FailInfo::BadPop).map_err(|e| {
                CmpError::new(FailInfo::BadPop, format!("proof of possession: {}", e.text))
            })?;
        }
        Some(_) => {
            return Err(CmpError::new(
                FailInfo::BadPop,
                "only signature proof of possession is supported",
            ));
        }
        None => {
            return Err(CmpError::new(
                FailInfo::BadPop,
                "proof of possession missing",
            ));
        }
    }
    let subject_der = match &t.subject {
        Some(n) => n.to_der().map_err(|_| malformed("subject"))?,
        None => vec![0x30, 0x00],
    };
    let mut sans = Vec::new();
    if let Some(exts) = &t.extensions {
        for e in exts.iter().filter(|e| e.extn_id == SAN_OID) {
            let san = SubjectAltName::from_der(e.extn_value.as_bytes())
                .map_err(|_| CmpError::new(FailInfo::BadCertTemplate, "subjectAltName"))?;
            for n in san.0 {
                sans.push(match n {
                    GeneralName::DnsName(d) => ("dns", d.to_string()),
                    GeneralName::Rfc822Name(d) => ("email", d.to_string()),
                    GeneralName::UniformResourceIdentifier(d) => ("uri", d.to_string()),
                    GeneralName::IpAddress(ip) => {
                        let b = ip.as_bytes();
                        let s = match b.len() {
                            4 => std::net::Ipv4Addr::from([b[0], b[1], b[2], b[3]]).to_string(),
                            16 => {
                                let mut a = [0u8; 16];
                                a.copy_from_slice(b);
                                std::net::Ipv6Addr::from(a).to_string()
                            }
                            _ => {
                                return Err(CmpError::new(
                                    FailInfo::BadCertTemplate,
                                    "bad IP address SAN",
                                ));
                            }
                        };
                        ("ip", s)
                    }
                    _ => {
                        return Err(CmpError::new(
                            FailInfo::BadCertTemplate,
                            "only DNS, IP, email and URI subjectAltNames are supported",
                        ));
                    }
                });
            }
        }
    }
    Ok(CrmfRequest {
        kind,
        public_key_der: spki.to_der().map_err(|_| malformed("publicKey"))?,
        subject_der,
        sans,
    })
}

impl Request {
    /// RFC 9483 §3.1 header checks that need no key: transactionID and senderNonce of at least
    /// 128 bits, recipNonce on follow-up messages, messageTime within the window, protection
    /// present with a known algorithm. Returns how the message is protected.
    pub fn check_header(&self, now_unix: u64, limits: &Limits) -> Result<Protection, CmpError> {
        if self.transaction_id.len() < 16 {
            return Err(CmpError::new(
                FailInfo::BadRequest,
                "transactionID missing or shorter than 128 bits",
            ));
        }
        if self.sender_nonce.len() < 16 {
            return Err(CmpError::new(
                FailInfo::BadSenderNonce,
                "senderNonce missing or shorter than 128 bits",
            ));
        }
        if matches!(self.body, Body::CertConf(_) | Body::PollReq(_))
            && self.recip_nonce.as_ref().is_none_or(|n| n.len() < 16)
        {
            return Err(CmpError::new(
                FailInfo::BadRecipientNonce,
                "recipNonce missing on a follow-up message",
            ));
        }
        if let Some(t) = self.message_time
            && t.abs_diff(now_unix) > limits.max_clock_skew_secs
        {
            return Err(CmpError::new(
                FailInfo::BadTime,
                format!(
                    "messageTime is more than {} seconds from the server's time",
                    limits.max_clock_skew_secs
                ),
            ));
        }
        let (Some(alg), Some(_)) = (&self.protection_alg, &self.protection) else {
            return Err(CmpError::new(
                FailInfo::BadMessageCheck,
                "the request is not protected",
            ));
        };
        if alg.oid == PASSWORD_BASED_MAC || alg.oid == PBMAC1 {
            let kid = self
                .sender_kid
                .clone()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    CmpError::new(
                        FailInfo::BadRequest,
                        "MAC protection without senderKID (the reference)",
                    )
                })?;
            Ok(Protection::Mac { sender_kid: kid })
        } else if crypto::is_signature_alg(&alg.oid) {
            if self.extra_certs.is_empty() {
                return Err(CmpError::new(
                    FailInfo::BadRequest,
                    "signature protection without the protecting certificate in extraCerts",
                ));
            }
            Ok(Protection::Signature)
        } else {
            Err(CmpError::new(
                FailInfo::BadAlg,
                format!("unsupported protectionAlg {}", alg.oid),
            ))
        }
    }

    /// Verifies signature protection: the first extraCerts certificate signed the
    /// ProtectedPart and chains to one of `anchors`. Returns the protecting certificate.
    pub fn verify_signature(
        &self,
        anchors: &[Certificate],
        now_unix: u64,
    ) -> Result<&Certificate, CmpError> {
        let (Some(alg), Some(sig), Some(cert)) = (
            &self.protection_alg,
            &self.protection,
            self.extra_certs.first(),
        ) else {
            return Err(CmpError::new(
                FailInfo::BadMessageCheck,
                "no signature protection",
            ));
        };
        crypto::verify(
            &alg.oid,
            &cert.tbs_certificate.subject_public_key_info,
            &self.protected_part_der,
            sig,
            FailInfo::BadMessageCheck,
        )?;
        crypto::verify_path(cert, &self.extra_certs[1..], anchors, now_unix)?;
        Ok(cert)
    }
}

/// Lower-case hex of a certificate's serial magnitude (the core's `serial_hex`).
pub fn serial_hex(cert: &Certificate) -> String {
    let mag: Vec<u8> = cert
        .tbs_certificate
        .serial_number
        .as_bytes()
        .iter()
        .copied()
        .skip_while(|b| *b == 0)
        .collect();
    hex::encode(mag)
}
