//! Challenge validation, performed by the core itself (the edge's word is never taken: a
//! compromised edge cannot validate a name).
//!
//! - http-01 (RFC 8555 §8.3): `GET http://NAME:PORT/.well-known/acme-challenge/TOKEN` with
//!   `Host: NAME`; the body, trailing whitespace trimmed and read up to [`MAX_HTTP_BODY`], must be
//!   the key authorization. Up to [`MAX_REDIRECTS`] redirects are followed, to http on port 80
//!   or the http-01 port and to https on 443 or the TLS port (certificate not validated, see
//!   [`Scheme`]), every hop through the SSRF check.
//! - dns-01 (§8.4): a TXT query for `_acme-challenge.NAME` sent over UDP to the configured
//!   resolver; one TXT record must equal base64url(SHA-256(key authorization)).
//! - tls-alpn-01 (RFC 8737): a TLS 1.2/1.3 handshake offering only ALPN `acme-tls/1`, SNI = NAME (for an
//!   IP identifier the reverse-DNS name, RFC 8738 §6); the self-signed certificate must name
//!   exactly the identifier and carry the critical id-pe-acmeIdentifier extension holding
//!   SHA-256(key authorization) as a DER OCTET STRING.
//!
//! Every attempt is bounded by the configured timeout. Failures name the ACME problem type.
//!
//! SSRF protection: a validation target (the identifier, each http-01 redirect hop, the
//! tls-alpn-01 target) is resolved once; every address of the answer is checked against
//! `[acme] blocked_ranges` (default [`super::DEFAULT_BLOCKED_RANGES`]) minus `allowed_ranges`,
//! blocked ones are dropped (and counted in `certgate_acme_blocked_targets_total`), and the
//! connection goes to one of the addresses that passed — never through a second resolution, so
//! DNS rebinding between check and connect is not possible. A target with no permitted address
//! fails with `connection` and is counted as outcome `blocked`. A DNS answer truncated over UDP
//! (TC) is asked again over TCP (RFC 7766).
//!
//! CAA (RFC 8659, RFC 8657): [`caa_set_allows`] decides on the closest non-empty CAA set
//! (sans-I/O); [`Validator::check_caa`] finds that set over DNS.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use der::Decode;
use http_body_util::BodyExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{AcmeConfig, IpRange};
use crate::store::acme::IdentRec;

/// The most of an http-01 response body read.
pub const MAX_HTTP_BODY: usize = 8 * 1024;
/// RFC 8737 §6.2: id-pe-acmeIdentifier.
pub const ACME_IDENTIFIER_OID: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.31");
/// RFC 8737 §6.2 ALPN protocol id.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Why a validation failed: the ACME problem type suffix and what was observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// "connection", "dns", "tls", "incorrectResponse", "unauthorized".
    pub problem_type: &'static str,
    /// Detail for the client.
    pub detail: String,
    /// The target address was in a blocked range (SSRF protection): nothing was contacted.
    pub blocked: bool,
}

fn fail(problem_type: &'static str, detail: impl Into<String>) -> Failure {
    Failure {
        problem_type,
        detail: detail.into(),
        blocked: false,
    }
}

/// Largest DNS response read over TCP: the protocol's own 16-bit length bound (RFC 1035 §4.2.2).
pub const MAX_DNS_TCP_RESPONSE: usize = 65_535;

/// The validators, configured once.
#[derive(Clone, Debug)]
pub struct Validator {
    cfg: AcmeConfig,
    resolver: Option<SocketAddr>,
    /// Ranges never connected to (SSRF protection)...
    blocked: Vec<IpRange>,
    /// ...except these.
    allowed: Vec<IpRange>,
}

/// The first `nameserver` line of /etc/resolv.conf, if any.
fn system_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some("nameserver"))
            .then(|| parts.next())
            .flatten()
            .and_then(|a| a.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

impl Validator {
    /// Validators with these settings.
    pub fn new(cfg: AcmeConfig) -> Self {
        let resolver = cfg.dns_resolver.or_else(system_resolver);
        let blocked = match &cfg.blocked_ranges {
            Some(list) => list.clone(),
            None => super::DEFAULT_BLOCKED_RANGES
                .iter()
                .filter_map(|r| r.parse().ok())
                .collect(),
        };
        let mut allowed = cfg.allowed_ranges.clone();
        if cfg.dev_validate_on_localhost {
            // The dev convention's one target (dev mode only, I-5) is allowed explicitly.
            allowed.extend("127.0.0.1/32".parse::<IpRange>().ok());
        }
        Self {
            cfg,
            resolver,
            blocked,
            allowed,
        }
    }

    /// SSRF protection: refuses an address in a blocked range (and not in an allowed one) before
    /// anything connects to it. Each refusal is counted (`certgate_acme_blocked_targets_total`).
    fn check_target(&self, name: &str, addr: SocketAddr) -> Result<SocketAddr, Failure> {
        let ip = addr.ip().to_canonical();
        if self.allowed.iter().any(|r| r.contains(ip)) {
            return Ok(addr);
        }
        match self.blocked.iter().find(|r| r.contains(ip)) {
            None => Ok(addr),
            Some(range) => {
                tracing::warn!(%name, %ip, %range, "ACME validation target in a blocked range");
                metrics::counter!("certgate_acme_blocked_targets_total", "protocol" => "acme")
                    .increment(1);
                Err(Failure {
                    problem_type: "connection",
                    detail: format!(
                        "{name} resolves to {ip}, in the blocked address range {range}: \
                         validation connects only to public addresses"
                    ),
                    blocked: true,
                })
            }
        }
    }

    /// SSRF protection over a whole answer: every address is checked and only those that pass
    /// are kept (in the resolver's order), as Let's Encrypt's resolver drops private addresses.
    /// A name with one public and one internal address is validated on the public one only; a
    /// name with nothing but blocked addresses fails with `connection` (`blocked`).
    fn permitted(&self, name: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Failure> {
        let mut ok = Vec::with_capacity(addrs.len());
        let mut refused = None;
        for a in addrs {
            match self.check_target(name, a) {
                Ok(a) => ok.push(a),
                Err(f) => {
                    refused.get_or_insert(f);
                }
            }
        }
        match (ok.is_empty(), refused) {
            (false, _) => Ok(ok),
            (true, Some(f)) => Err(f),
            (true, None) => Err(fail("dns", format!("no address for {name}"))),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.validation_timeout_ms.max(1))
    }

    /// Runs one validation of `kind` for the identifier (a wildcard's base name) with the key
    /// authorization; bounded by the configured timeout.
    pub async fn validate(
        &self,
        kind: &str,
        id: &IdentRec,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), Failure> {
        let work = async {
            match kind {
                "http-01" => self.http01(id, token, key_authorization).await,
                "dns-01" => self.dns01(id, key_authorization).await,
                "tls-alpn-01" => self.tls_alpn01(id, key_authorization).await,
                other => Err(fail("malformed", format!("unknown challenge type {other}"))),
            }
        };
        match tokio::time::timeout(self.timeout(), work).await {
            Ok(r) => r,
            Err(_) => Err(fail(
                if kind == "dns-01" {
                    "dns"
                } else {
                    "connection"
                },
                format!(
                    "{kind} validation for {} timed out after {} ms",
                    id.value, self.cfg.validation_timeout_ms
                ),
            )),
        }
    }

    /// Where validation may connect for an identifier: [`Self::resolve`] once, then
    /// [`Self::permitted`]. The caller connects only to these addresses ([`connect_any`]), never
    /// resolving the name again, so a DNS answer that changes between check and connect (DNS
    /// rebinding) cannot slip a blocked address in.
    async fn targets(&self, id: &IdentRec, port: u16) -> Result<Vec<SocketAddr>, Failure> {
        let addrs = self.resolve(id, port).await?;
        self.permitted(&id.value, addrs)
    }

    /// Every address of an identifier, before the block-list check: the dev shortcut, the static
    /// map, the IP itself, or the system resolver (all its answers, at most
    /// [`MAX_TARGET_ADDRS`], duplicates dropped).
    async fn resolve(&self, id: &IdentRec, port: u16) -> Result<Vec<SocketAddr>, Failure> {
        if self.cfg.dev_validate_on_localhost {
            return Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]);
        }
        if let Some(addrs) = self.cfg.hosts.get(&id.value) {
            return Ok(addrs
                .addrs()
                .iter()
                .take(MAX_TARGET_ADDRS)
                .map(|ip| SocketAddr::new(*ip, port))
                .collect());
        }
        if id.kind == "ip" {
            let ip: IpAddr = id
                .value
                .parse()
                .map_err(|_| fail("malformed", "IP identifier does not parse"))?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let answer = tokio::net::lookup_host((id.value.as_str(), port))
            .await
            .map_err(|e| fail("dns", format!("resolving {}: {e}", id.value)))?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for a in answer {
            if addrs.len() == MAX_TARGET_ADDRS {
                break;
            }
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        if addrs.is_empty() {
            return Err(fail("dns", format!("no address for {}", id.value)));
        }
        Ok(addrs)
    }

    /// The ports http-01 redirects may lead to: 80 or the configured http-01 port for http, 443
    /// or `tls_alpn_port` for https (Let's Encrypt follows redirects only to 80 and 443).
    fn redirect_ports(&self) -> RedirectPorts {
        RedirectPorts {
            http: if self.cfg.dev_validate_on_localhost {
                super::DEV_HTTP_PORT
            } else {
                self.cfg.http_port
            },
            https: self.cfg.tls_alpn_port,
        }
    }

    /// One http-01 request: resolve the hop's host once, keep the permitted addresses, connect
    /// to one of them, speak TLS for an https hop (certificate not validated, see [`Scheme`]),
    /// then one GET.
    async fn fetch(&self, hop: &Hop) -> Result<(Fetched, SocketAddr), Failure> {
        let addrs = self.targets(&hop.target, hop.port).await?;
        let (tcp, addr) = connect_any(&addrs).await?;
        let fetched = match hop.scheme {
            Scheme::Http => http_get(tcp, addr, &hop.target.value, &hop.path).await?,
            Scheme::Https => {
                let tls = https_connect(tcp, addr, &hop.target).await?;
                http_get(tls, addr, &hop.target.value, &hop.path).await?
            }
        };
        Ok((fetched, addr))
    }

    async fn http01(&self, id: &IdentRec, token: &str, key_auth: &str) -> Result<(), Failure> {
        let ports = self.redirect_ports();
        let mut hop = Hop {
            scheme: Scheme::Http,
            target: id.clone(),
            port: ports.http,
            path: format!("/.well-known/acme-challenge/{token}"),
        };
        let mut hops = 0;
        let (addr, buf, too_long) = loop {
            match self.fetch(&hop).await? {
                (
                    Fetched::Body {
                        status,
                        body,
                        too_long,
                    },
                    addr,
                ) => {
                    if !status.is_success() {
                        return Err(fail(
                            "unauthorized",
                            format!("{addr} answered HTTP {} for the challenge", status.as_u16()),
                        ));
                    }
                    break (addr, body, too_long);
                }
                (Fetched::Redirect(location), _) => {
                    hops += 1;
                    if hops > MAX_REDIRECTS {
                        return Err(fail(
                            "connection",
                            format!("more than {MAX_REDIRECTS} redirects"),
                        ));
                    }
                    hop = redirect_hop(&hop, &location, ports)?;
                }
            }
        };
        if too_long {
            return Err(fail(
                "incorrectResponse",
                format!("response body longer than {MAX_HTTP_BODY} bytes"),
            ));
        }
        let text = String::from_utf8_lossy(&buf);
        let got = text.trim_end();
        if got == key_auth {
            Ok(())
        } else {
            let shown: String = got.chars().take(128).collect();
            Err(fail(
                "incorrectResponse",
                format!("the key authorization served by {addr} is wrong: {shown:?}"),
            ))
        }
    }

    /// One DNS query over UDP to the configured resolver; answers with another id are ignored
    /// (spoofing and stray packets). The caller's deadline bounds it.
    async fn query(
        &self,
        qname: &str,
        rtype: hickory_proto::rr::RecordType,
    ) -> Result<hickory_proto::op::Message, Failure> {
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        use hickory_proto::rr::Name;
        use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};

        let resolver = self
            .resolver
            .ok_or_else(|| fail("dns", "no DNS resolver configured"))?;
        let name = Name::from_ascii(qname)
            .map_err(|e| fail("malformed", format!("bad name {qname}: {e}")))?;
        let mut idb = [0u8; 2];
        aws_lc_rs::rand::fill(&mut idb).map_err(|_| fail("dns", "CSPRNG"))?;
        let query_id = u16::from_be_bytes(idb);
        let mut msg = Message::new();
        msg.set_id(query_id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(name, rtype));
        let wire = msg
            .to_bytes()
            .map_err(|e| fail("dns", format!("encoding the query: {e}")))?;
        let bind: SocketAddr = if resolver.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let sock = tokio::net::UdpSocket::bind(bind)
            .await
            .map_err(|e| fail("dns", format!("UDP socket: {e}")))?;
        sock.connect(resolver)
            .await
            .map_err(|e| fail("dns", format!("resolver {resolver}: {e}")))?;
        sock.send(&wire)
            .await
            .map_err(|e| fail("dns", format!("resolver {resolver}: {e}")))?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = sock
                .recv(&mut buf)
                .await
                .map_err(|e| fail("dns", format!("resolver {resolver}: {e}")))?;
            let Ok(m) = Message::from_bytes(&buf[..n]) else {
                continue;
            };
            if m.id() == query_id && m.message_type() == MessageType::Response {
                if m.truncated() {
                    // RFC 7766 §5: a truncated UDP answer is asked again over TCP.
                    return tcp_query(resolver, &wire, query_id).await;
                }
                return Ok(m);
            }
        }
    }

    async fn dns01(&self, id: &IdentRec, key_auth: &str) -> Result<(), Failure> {
        use hickory_proto::op::ResponseCode;
        use hickory_proto::rr::{RData, RecordType};

        let expected = certgate_acme::base64url(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_auth.as_bytes()).as_ref(),
        );
        let qname = format!("_acme-challenge.{}.", id.value.trim_end_matches('.'));
        let resp = self.query(&qname, RecordType::TXT).await?;
        if resp.response_code() != ResponseCode::NoError {
            return Err(fail(
                "dns",
                format!("TXT query for {qname}: {}", resp.response_code()),
            ));
        }
        let mut seen = Vec::new();
        for rec in resp.answers() {
            if let RData::TXT(txt) = rec.data() {
                let value: String = txt
                    .txt_data()
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
                if value == expected {
                    return Ok(());
                }
                seen.push(value);
            }
        }
        if seen.is_empty() {
            Err(fail("dns", format!("no TXT record at {qname}")))
        } else {
            seen.truncate(4);
            Err(fail(
                "incorrectResponse",
                format!(
                    "TXT records at {qname} do not hold the key authorization digest: {seen:?}"
                ),
            ))
        }
    }

    async fn tls_alpn01(&self, id: &IdentRec, key_auth: &str) -> Result<(), Failure> {
        let port = if self.cfg.dev_validate_on_localhost {
            super::DEV_TLS_ALPN_PORT
        } else {
            self.cfg.tls_alpn_port
        };
        let addrs = self.targets(id, port).await?;
        let ip = if id.kind == "ip" {
            Some(
                id.value
                    .parse::<IpAddr>()
                    .map_err(|_| fail("malformed", "IP identifier does not parse"))?,
            )
        } else {
            None
        };
        let sni = match ip {
            Some(ip) => reverse_dns_name(ip),
            None => id.value.clone(),
        };
        let server_name = ServerName::try_from(sni.clone())
            .map_err(|_| fail("malformed", format!("{sni} is not a valid SNI name")))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| fail("tls", format!("TLS config: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptForInspection { provider }))
            .with_no_client_auth();
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        let (tcp, addr) = connect_any(&addrs).await?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(|e| fail("tls", format!("TLS handshake with {addr}: {e}")))?;
        let (_, conn) = tls.get_ref();
        if conn.alpn_protocol() != Some(ACME_TLS_ALPN) {
            return Err(fail(
                "tls",
                format!("{addr} did not negotiate the acme-tls/1 protocol"),
            ));
        }
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| fail("tls", "no certificate presented"))?;
        check_alpn_certificate(cert.as_ref(), id, ip, key_auth)
    }
}

impl Validator {
    /// CAA (RFC 8659 §3): climbs from the name towards the root to the first non-empty CAA
    /// record set and lets [`caa_set_allows`] decide on it. A failed lookup forbids issuance
    /// (fail closed); no CAA anywhere allows it.
    pub async fn check_caa(&self, name: &str, req: &CaaRequest<'_>) -> Result<(), Failure> {
        let work = self.caa(name, req);
        match tokio::time::timeout(self.timeout(), work).await {
            Ok(r) => r,
            Err(_) => Err(fail("caa", format!("CAA lookup for {name} timed out"))),
        }
    }

    async fn caa(&self, name: &str, req: &CaaRequest<'_>) -> Result<(), Failure> {
        use hickory_proto::op::ResponseCode;
        use hickory_proto::rr::{RData, RecordType};

        let labels: Vec<&str> = name.trim_end_matches('.').split('.').collect();
        for i in 0..labels.len() {
            let qname = format!("{}.", labels[i..].join("."));
            let resp = self
                .query(&qname, RecordType::CAA)
                .await
                .map_err(|f| fail("caa", format!("CAA lookup for {qname}: {}", f.detail)))?;
            match resp.response_code() {
                ResponseCode::NoError | ResponseCode::NXDomain => {}
                other => {
                    return Err(fail("caa", format!("CAA lookup for {qname}: {other}")));
                }
            }
            let set: Vec<CaaProperty> = resp
                .answers()
                .iter()
                .filter_map(|r| match r.data() {
                    RData::CAA(c) => Some(CaaProperty {
                        critical: c.issuer_critical(),
                        tag: c.tag().as_str().to_ascii_lowercase(),
                        value: String::from_utf8_lossy(c.raw_value()).into_owned(),
                    }),
                    _ => None,
                })
                .collect();
            if set.is_empty() {
                continue;
            }
            return caa_set_allows(&set, req, &self.cfg.account_uri_bases).map_err(|why| {
                fail(
                    "caa",
                    format!(
                        "CAA records at {qname} do not allow this CA to issue for {name}: {why}"
                    ),
                )
            });
        }
        Ok(())
    }
}

/// One CAA property (RFC 8659 §4.1) as the CAA decision sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaaProperty {
    /// The issuer-critical flag.
    pub critical: bool,
    /// The property tag, lower case (tags match case-insensitively).
    pub tag: String,
    /// The value as published.
    pub value: String,
}

/// What a CAA check is asked: may this CA issue for the name, to this account, after this
/// validation? RFC 8657 parameters restrict the account and the method, so both are inputs.
#[derive(Clone, Copy, Debug)]
pub struct CaaRequest<'a> {
    /// The tenant's CAA issuer domains (`caaIdentities`).
    pub identities: &'a [String],
    /// The name is a wildcard's base (`issuewild` governs when present).
    pub wildcard: bool,
    /// Tenant of the account (its account URL path includes it).
    pub tenant: &'a str,
    /// The ordering account's id.
    pub account_id: &'a str,
    /// The ACME challenge type that proved the name (`http-01`, `dns-01`, `tls-alpn-01`): the
    /// labels RFC 8657 §4 `validationmethods` lists.
    pub method: &'a str,
}

/// Property tags this CA understands; an unknown one flagged critical forbids issuance
/// (RFC 8659 §4.1).
const KNOWN_CAA_TAGS: &[&str] = &["issue", "issuewild", "iodef"];

/// The decision on the closest non-empty CAA set (sans-I/O). An unknown critical property
/// refuses. `issuewild` governs a wildcard when the set has one, `issue` otherwise; no relevant
/// property allows. Otherwise one relevant property must authorize ([`issue_value_authorizes`]).
/// `Err` says why not.
pub fn caa_set_allows(
    set: &[CaaProperty],
    req: &CaaRequest<'_>,
    account_uri_bases: &[String],
) -> Result<(), String> {
    if let Some(p) = set
        .iter()
        .find(|p| p.critical && !KNOWN_CAA_TAGS.contains(&p.tag.as_str()))
    {
        return Err(format!(
            "the critical property {:?} is not understood by this CA",
            p.tag
        ));
    }
    let wild: Vec<&CaaProperty> = set.iter().filter(|p| p.tag == "issuewild").collect();
    let relevant: Vec<&CaaProperty> = if req.wildcard && !wild.is_empty() {
        wild
    } else {
        set.iter().filter(|p| p.tag == "issue").collect()
    };
    if relevant.is_empty() {
        return Ok(());
    }
    let mut why = Vec::new();
    for p in relevant {
        match issue_value_authorizes(&p.value, req, account_uri_bases) {
            Ok(()) => return Ok(()),
            Err(w) => why.push(format!("{} {:?}: {w}", p.tag, p.value)),
        }
    }
    why.truncate(4);
    Err(why.join("; "))
}

/// An `issue` / `issuewild` value (RFC 8659 §4.2: `issuer-domain-name *(";" tag "=" value)`)
/// split into the issuer domain (lower case, no trailing dot; empty for `;`) and its parameters
/// (tags lower case). `None` when the value does not follow the grammar.
pub fn parse_issue_value(value: &str) -> Option<(String, Vec<(String, String)>)> {
    let mut parts = value.split(';');
    let domain = parts
        .next()
        .unwrap_or("")
        .trim_matches([' ', '\t'])
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if !domain
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return None;
    }
    let rest: Vec<&str> = parts.map(|p| p.trim_matches([' ', '\t'])).collect();
    let mut params = Vec::with_capacity(rest.len());
    for (i, p) in rest.iter().enumerate() {
        if p.is_empty() {
            // Only `domain;` (nothing after the last separator) is allowed.
            if i + 1 == rest.len() {
                continue;
            }
            return None;
        }
        let (tag, val) = p.split_once('=')?;
        let tag = tag.trim_matches([' ', '\t']);
        let val = val.trim_matches([' ', '\t']);
        let tag_ok = !tag.is_empty()
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !tag.starts_with('-')
            && !tag.ends_with('-');
        let val_ok = val.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b';');
        if !tag_ok || !val_ok {
            return None;
        }
        params.push((tag.to_ascii_lowercase(), val.to_owned()));
    }
    Some((domain, params))
}

/// Whether one `issue` / `issuewild` value authorizes this request: it must parse, name one of
/// the tenant's identities, and satisfy the RFC 8657 parameters it carries — `accounturi` must
/// be this account's URL ([`account_uri_matches`]), `validationmethods` must list the method
/// that proved the name. A parameter given twice does not authorize (which one would count is
/// ambiguous; failing closed is the safe reading). Other parameters are ignored (RFC 8659 §4.2).
pub fn issue_value_authorizes(
    value: &str,
    req: &CaaRequest<'_>,
    account_uri_bases: &[String],
) -> Result<(), String> {
    let (domain, params) = parse_issue_value(value).ok_or("malformed value")?;
    if domain.is_empty() {
        return Err("no CA may issue".into());
    }
    if !req
        .identities
        .iter()
        .any(|id| id.trim_end_matches('.').eq_ignore_ascii_case(&domain))
    {
        return Err("names another CA".into());
    }
    for tag in ["accounturi", "validationmethods"] {
        let mut values = params.iter().filter(|(t, _)| t == tag).map(|(_, v)| v);
        let Some(v) = values.next() else {
            continue;
        };
        if values.next().is_some() {
            return Err(format!("{tag} given more than once"));
        }
        if tag == "accounturi" && !account_uri_matches(v, req, account_uri_bases) {
            return Err("accounturi names another account (RFC 8657 §3)".into());
        }
        if tag == "validationmethods" && !v.split(',').any(|m| m.trim() == req.method) {
            return Err(format!(
                "validationmethods does not list {} (RFC 8657 §4)",
                req.method
            ));
        }
    }
    Ok(())
}

/// RFC 8657 §3: whether `uri` is the requesting account's URL. The core does not know the URL
/// the edges publish, so it matches the path the edges build (`/acme/acct/{id}` for a tenant
/// served at the plain paths or by host name, `/t/{tenant}/acme/acct/{id}` otherwise;
/// `certgate_acme::directory`) on an http(s) URL; with `account_uri_bases` configured the URL
/// must be exactly one of those bases followed by that path. Account ids are random and scoped
/// to the tenant, so another account's URL never matches.
pub fn account_uri_matches(uri: &str, req: &CaaRequest<'_>, account_uri_bases: &[String]) -> bool {
    let paths = [
        format!("/acme/acct/{}", req.account_id),
        format!("/t/{}/acme/acct/{}", req.tenant, req.account_id),
    ];
    if !account_uri_bases.is_empty() {
        return account_uri_bases.iter().any(|base| {
            let base = base.trim_end_matches('/');
            paths.iter().any(|p| uri == format!("{base}{p}"))
        });
    }
    let Ok(parsed) = uri.parse::<http::Uri>() else {
        return false;
    };
    matches!(parsed.scheme_str(), Some("https" | "http"))
        && parsed.authority().is_some()
        && parsed.query().is_none()
        && paths.iter().any(|p| parsed.path() == p)
}

/// One DNS query over TCP (RFC 1035 §4.2.2 framing: a 16-bit length before each message), for an
/// answer that was truncated over UDP. The response is at most [`MAX_DNS_TCP_RESPONSE`] bytes by
/// the framing; one with another id or not a response is refused. The caller's deadline bounds
/// it.
async fn tcp_query(
    resolver: SocketAddr,
    wire: &[u8],
    query_id: u16,
) -> Result<hickory_proto::op::Message, Failure> {
    use hickory_proto::op::{Message, MessageType};
    use hickory_proto::serialize::binary::BinDecodable;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let err = |e: std::io::Error| fail("dns", format!("resolver {resolver} over TCP: {e}"));
    let len = u16::try_from(wire.len()).map_err(|_| fail("dns", "query too long for TCP"))?;
    let mut tcp = tokio::net::TcpStream::connect(resolver)
        .await
        .map_err(err)?;
    let mut out = Vec::with_capacity(wire.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(wire);
    tcp.write_all(&out).await.map_err(err)?;
    let mut lb = [0u8; 2];
    tcp.read_exact(&mut lb).await.map_err(err)?;
    let n = usize::from(u16::from_be_bytes(lb)).min(MAX_DNS_TCP_RESPONSE);
    let mut buf = vec![0u8; n];
    tcp.read_exact(&mut buf).await.map_err(err)?;
    let m = Message::from_bytes(&buf)
        .map_err(|e| fail("dns", format!("resolver {resolver} over TCP: {e}")))?;
    if m.id() != query_id || m.message_type() != MessageType::Response {
        return Err(fail(
            "dns",
            format!("resolver {resolver} over TCP answered another query"),
        ));
    }
    Ok(m)
}

/// Most redirects http-01 follows (RFC 8555 §8.3 lets the client redirect, e.g. to a central
/// server).
pub const MAX_REDIRECTS: usize = 10;

/// What one http-01 GET produced.
enum Fetched {
    /// A final answer: status, body (up to [`MAX_HTTP_BODY`]), whether it was longer.
    Body {
        status: http::StatusCode,
        body: Vec<u8>,
        too_long: bool,
    },
    /// A 301/302/303/307/308 with this Location.
    Redirect(String),
}

/// The scheme of one http-01 request. The first is always http (RFC 8555 §8.3); a redirect may
/// lead to https (RFC 8555 §8.3 lets the server follow redirects, e.g. to a central server). On
/// an https hop the server's certificate is not validated, as Let's Encrypt does: what proves
/// control is the key authorization in the body, not the certificate, and a name asking for its
/// first certificate typically has no valid one yet (or a self-signed default), so validating
/// it would refuse exactly the clients that redirect http to https. The TLS handshake signature
/// is still checked against the presented key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP/1.1.
    Http,
    /// HTTP/1.1 over TLS (certificate not validated).
    Https,
}

/// One http-01 request: the host (a DNS name or an IP address, resolved and SSRF-checked when
/// the hop is made), the port and the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// http or https.
    pub scheme: Scheme,
    /// The host, as an identifier record (`dns` or `ip`).
    pub target: IdentRec,
    /// The port connected to.
    pub port: u16,
    /// Path and query sent.
    pub path: String,
}

/// The ports redirects may lead to besides the schemes' defaults (80, 443).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectPorts {
    /// The http-01 port (80 in production).
    pub http: u16,
    /// The TLS port (`tls_alpn_port`, 443 in production).
    pub https: u16,
}

/// Most addresses of one name that validation considers (each may cost a connection attempt).
pub const MAX_TARGET_ADDRS: usize = 16;

/// Connects to the first of `addrs` that accepts. Each address already passed the SSRF check and
/// nothing is resolved here, so the address connected to is one that was checked.
async fn connect_any(addrs: &[SocketAddr]) -> Result<(tokio::net::TcpStream, SocketAddr), Failure> {
    let mut last = fail("connection", "no address to connect to");
    for &addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => return Ok((s, addr)),
            Err(e) => last = fail("connection", format!("connecting to {addr}: {e}")),
        }
    }
    Err(last)
}

/// TLS to an https redirect target: SNI = the host name (none for an IP), ALPN `http/1.1`, the
/// certificate not validated (see [`Scheme`]) but the handshake signature checked.
async fn https_connect(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    host: &IdentRec,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Failure> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("tls", format!("TLS config: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptForInspection { provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = match host.value.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.value.clone()).map_err(|_| {
            fail(
                "malformed",
                format!("{} is not a valid SNI name", host.value),
            )
        })?,
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| fail("tls", format!("TLS handshake with {addr}: {e}")))
}

/// One GET on a fresh connection `io` to `addr` with `Host: host`.
async fn http_get<S>(io: S, addr: SocketAddr, host: &str, path: &str) -> Result<Fetched, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| fail("connection", format!("HTTP to {addr}: {e}")))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let out = async {
        let host = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => host.to_owned(),
        };
        let req = http::Request::get(path)
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "certgate-acme-validator")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| fail("malformed", format!("building the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail("connection", format!("HTTP to {addr}: {e}")))?;
        let status = resp.status();
        if status.is_redirection() && status != http::StatusCode::NOT_MODIFIED {
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| fail("connection", format!("{addr}: redirect without Location")))?;
            return Ok(Fetched::Redirect(location.to_owned()));
        }
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        let mut too_long = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| fail("connection", format!("reading body: {e}")))?;
            if let Some(d) = frame.data_ref() {
                if buf.len() + d.len() > MAX_HTTP_BODY {
                    too_long = true;
                    break;
                }
                buf.extend_from_slice(d);
            }
        }
        Ok(Fetched::Body {
            status,
            body: buf,
            too_long,
        })
    }
    .await;
    driver.abort();
    out
}

/// The next hop of an http-01 redirect (sans-I/O). An absolute `http://` URL may name port 80 or
/// the http-01 port, an `https://` URL port 443 or the TLS port; a URL without a port goes to
/// the configured one (80 / 443 in production, what the URL means). A path-absolute reference
/// (`/elsewhere`) stays on the current hop's scheme, host and port. The host is a DNS name or
/// an IP address, resolved and SSRF-checked when the hop is made, like the identifier itself.
pub fn redirect_hop(current: &Hop, location: &str, ports: RedirectPorts) -> Result<Hop, Failure> {
    let refuse = |why: &str| fail("connection", format!("redirect to {location:?}: {why}"));
    if location.starts_with('/') && !location.starts_with("//") {
        let path: http::uri::PathAndQuery = location.parse().map_err(|_| refuse("not a path"))?;
        return Ok(Hop {
            path: path.as_str().to_owned(),
            ..current.clone()
        });
    }
    let uri: http::Uri = location.parse().map_err(|_| refuse("not a URL"))?;
    let (scheme, allowed) = match uri.scheme_str() {
        Some("http") => (Scheme::Http, [80, ports.http]),
        Some("https") => (Scheme::Https, [443, ports.https]),
        _ => return Err(refuse("only http:// and https:// URLs are followed")),
    };
    let port = match uri.port_u16() {
        None => allowed[1],
        Some(p) if allowed.contains(&p) => p,
        Some(_) => {
            return Err(refuse(&format!(
                "only ports {} and {} are allowed for this scheme",
                allowed[0], allowed[1]
            )));
        }
    };
    let host = uri.host().ok_or_else(|| refuse("no host"))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(refuse("credentials in the URL"));
    }
    // An empty path (`https://h?q`) is `/` (RFC 9110 §4.2.3); found by the fuzz target.
    let mut path = match uri.path() {
        p if p.starts_with('/') => p.to_owned(),
        _ => "/".to_owned(),
    };
    if let Some(q) = uri.query() {
        path.push('?');
        path.push_str(q);
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let target = match bare.parse::<IpAddr>() {
        Ok(ip) => IdentRec {
            kind: "ip".into(),
            value: ip.to_string(),
        },
        Err(_) => IdentRec {
            kind: "dns".into(),
            value: certgate_acme::payload::validate_dns_name(bare)
                .map_err(|_| refuse("bad host name"))?,
        },
    };
    Ok(Hop {
        scheme,
        target,
        port,
        path,
    })
}

/// RFC 8738 §6: the reverse-DNS name of an address (`in-addr.arpa` / `ip6.arpa`).
pub fn reverse_dns_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut parts = Vec::with_capacity(34);
            for b in v6.octets().iter().rev() {
                parts.push(format!("{:x}", b & 0x0f));
                parts.push(format!("{:x}", b >> 4));
            }
            parts.push("ip6.arpa".into());
            parts.join(".")
        }
    }
}

/// The RFC 8737 §3 checks on the presented certificate.
pub fn check_alpn_certificate(
    der_bytes: &[u8],
    id: &IdentRec,
    ip: Option<IpAddr>,
    key_auth: &str,
) -> Result<(), Failure> {
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let cert = x509_cert::Certificate::from_der(der_bytes)
        .map_err(|_| fail("tls", "the certificate does not parse"))?;
    let exts = cert.tbs_certificate.extensions.unwrap_or_default();
    let san = exts
        .iter()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME)
        .ok_or_else(|| fail("tls", "the certificate has no subjectAltName"))?;
    let san = SubjectAltName::from_der(san.extn_value.as_bytes())
        .map_err(|_| fail("tls", "subjectAltName does not parse"))?;
    let names: Vec<&GeneralName> = san.0.iter().collect();
    let matches = match (names.as_slice(), ip) {
        ([GeneralName::DnsName(n)], None) => n.as_str().eq_ignore_ascii_case(&id.value),
        ([GeneralName::IpAddress(o)], Some(ip)) => match ip {
            IpAddr::V4(v4) => o.as_bytes() == v4.octets(),
            IpAddr::V6(v6) => o.as_bytes() == v6.octets(),
        },
        _ => false,
    };
    if !matches {
        return Err(fail(
            "unauthorized",
            format!(
                "the certificate's subjectAltName must be exactly {}",
                id.value
            ),
        ));
    }
    let ext = exts
        .iter()
        .find(|e| e.extn_id == ACME_IDENTIFIER_OID)
        .ok_or_else(|| fail("unauthorized", "no acmeIdentifier extension"))?;
    if !ext.critical {
        return Err(fail(
            "unauthorized",
            "the acmeIdentifier extension is not critical",
        ));
    }
    let value = der::asn1::OctetString::from_der(ext.extn_value.as_bytes())
        .map_err(|_| fail("unauthorized", "acmeIdentifier is not a DER OCTET STRING"))?;
    let want = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_auth.as_bytes());
    if value.as_bytes() == want.as_ref() {
        Ok(())
    } else {
        Err(fail(
            "incorrectResponse",
            "the acmeIdentifier extension does not hold the key authorization digest",
        ))
    }
}

/// Accepts the (self-signed) tls-alpn-01 certificate for inspection after the handshake: no
/// chain is involved, the checks are [`check_alpn_certificate`]. Also the verifier of an https
/// http-01 redirect hop, whose certificate is deliberately not validated ([`Scheme`]). The
/// handshake signature is still verified, so the server holds the certificate's key.
#[derive(Debug)]
struct AcceptForInspection {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AcceptForInspection {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // As for TLS 1.3 below, against the raw key (webpki will not parse the certificate).
        // TLS 1.2 schemes map to several algorithms: the one for this key's algorithm is used.
        let bad = |m: &str| rustls::Error::General(m.to_owned());
        let cert = x509_cert::Certificate::from_der(cert.as_ref())
            .map_err(|_| bad("certificate does not parse"))?;
        let spki = &cert.tbs_certificate.subject_public_key_info;
        let mut alg_id = der::Encode::to_der(&spki.algorithm.oid)
            .map_err(|_| bad("certificate key does not encode"))?;
        if let Some(p) = &spki.algorithm.parameters {
            alg_id.extend(der::Encode::to_der(p).map_err(|_| bad("parameters do not encode"))?);
        }
        let key = spki.subject_public_key.raw_bytes();
        let candidates = self
            .provider
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algs)| *algs)
            .unwrap_or(&[]);
        for alg in candidates {
            if alg.public_key_alg_id().as_ref() == alg_id.as_slice()
                && alg.verify_signature(key, message, dss.signature()).is_ok()
            {
                return Ok(HandshakeSignatureValid::assertion());
            }
        }
        Err(bad(
            "the handshake signature does not verify under the certificate's key",
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // webpki refuses to parse a certificate with the critical acmeIdentifier extension, so
        // the handshake signature is checked against the certificate's raw public key.
        let cert = x509_cert::Certificate::from_der(cert.as_ref())
            .map_err(|_| rustls::Error::General("certificate does not parse".into()))?;
        let spki = der::Encode::to_der(&cert.tbs_certificate.subject_public_key_info)
            .map_err(|_| rustls::Error::General("certificate key does not encode".into()))?;
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &rustls::pki_types::SubjectPublicKeyInfoDer::from(spki),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pebble's convention: in dev mode every name is checked at 127.0.0.1 on 5002 / 5001; the
    /// static map and the identifier's own address apply otherwise.
    #[tokio::test]
    async fn addresses_follow_dev_mode_static_map_and_ip() {
        let id = |k: &str, v: &str| IdentRec {
            kind: k.into(),
            value: v.into(),
        };
        let dev = Validator::new(AcmeConfig {
            dev_validate_on_localhost: true,
            ..AcmeConfig::default()
        });
        assert_eq!(
            dev.targets(&id("dns", "anything.example"), crate::acme::DEV_HTTP_PORT)
                .await
                .expect("dev"),
            ["127.0.0.1:5002".parse::<SocketAddr>().expect("addr")]
        );
        let mut hosts = std::collections::BTreeMap::new();
        hosts.insert(
            "mapped.example".to_owned(),
            "192.0.2.7".parse().expect("ip"),
        );
        let prod = Validator::new(AcmeConfig {
            hosts,
            ..AcmeConfig::default()
        });
        assert_eq!(
            prod.resolve(&id("dns", "mapped.example"), 80)
                .await
                .expect("mapped"),
            ["192.0.2.7:80".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(
            prod.resolve(&id("ip", "2001:db8::5"), 443)
                .await
                .expect("ip"),
            ["[2001:db8::5]:443".parse::<SocketAddr>().expect("addr")]
        );
        // Both are documentation addresses: the default block list keeps validation away.
        for (kind, name) in [("dns", "mapped.example"), ("ip", "2001:db8::5")] {
            let e = prod
                .targets(&id(kind, name), 80)
                .await
                .expect_err("documentation range is blocked");
            assert!(e.blocked && e.problem_type == "connection", "{e:?}");
        }
    }

    fn range(s: &str) -> IpRange {
        s.parse().expect("range parses")
    }

    fn ident(kind: &str, value: &str) -> IdentRec {
        IdentRec {
            kind: kind.into(),
            value: value.into(),
        }
    }

    /// The default SSRF block list covers the ranges it names (IPv4-mapped IPv6 included) and
    /// nothing public; malformed ranges are refused at config load.
    #[test]
    fn default_block_list_covers_private_ranges_only() {
        let v = Validator::new(AcmeConfig::default());
        let blocked = |ip: &str| {
            let addr = SocketAddr::new(ip.parse().expect("ip"), 80);
            v.check_target("n", addr).is_err()
        };
        for ip in [
            "127.0.0.1",
            "127.5.6.7",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "224.0.0.251",
            "255.255.255.255",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.9",
            "::1",
            "::",
            "fe80::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(blocked(ip), "{ip} must be blocked");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "192.0.3.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!blocked(ip), "{ip} must be allowed");
        }
        assert!(range("10.0.0.0/8").contains("10.255.0.1".parse().expect("ip")));
        assert!(!range("10.0.0.0/8").contains("11.0.0.1".parse().expect("ip")));
        assert!(range("0.0.0.0/0").contains("203.0.113.1".parse().expect("ip")));
        assert!(range("::ffff:10.0.0.0/104").contains("10.1.1.1".parse().expect("ip")));
        assert!(range("::ffff:10.0.0.0/104").contains("::ffff:10.1.1.1".parse().expect("ip")));
        assert!(!range("::ffff:0:0/95").contains("10.1.1.1".parse().expect("ip")));
        assert_eq!(range("192.0.2.7").to_string(), "192.0.2.7/32");
        for bad in ["10.0.0.0/33", "fc00::/129", "nonsense", "10.0.0.0/x", ""] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad:?} must not parse");
        }
        let cfg: AcmeConfig =
            toml::from_str("blocked_ranges = [\"10.0.0.0/8\"]\nallowed_ranges = [\"10.1.0.0/16\"]")
                .expect("config parses");
        let v = Validator::new(cfg);
        let at = |ip: &str| SocketAddr::new(ip.parse().expect("ip"), 80);
        assert!(v.check_target("n", at("10.2.0.1")).is_err());
        assert!(v.check_target("n", at("10.1.0.1")).is_ok());
        assert!(v.check_target("n", at("127.0.0.1")).is_ok());
        assert!(toml::from_str::<AcmeConfig>("blocked_ranges = [\"10.0.0.0/99\"]").is_err());
    }

    /// An HTTP server on `ip`:`port` (0 = any) answering every request with `answer`: either
    /// the body, or with `redirect:URL` a 302 to URL. Returns the port.
    async fn http_server(ip: &str, port: u16, answer: String) -> Option<u16> {
        http_server_on(ip, port, answer, None).await.map(|(p, _)| p)
    }

    /// [`http_server`] speaking HTTPS with `tls` when given; also returns the count of requests
    /// answered (to prove an address was never contacted).
    async fn http_server_on(
        ip: &str,
        port: u16,
        answer: String,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Option<(u16, Arc<std::sync::atomic::AtomicUsize>)> {
        let l = tokio::net::TcpListener::bind((ip, port)).await.ok()?;
        let port = l.local_addr().ok()?.port();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = hits.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let answer = answer.clone();
                let seen = seen.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => answer_once(s, &answer, &seen).await,
                        Some(cfg) => {
                            if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await {
                                answer_once(s, &answer, &seen).await;
                            }
                        }
                    }
                });
            }
        });
        Some((port, hits))
    }

    async fn answer_once<S>(mut s: S, answer: &str, seen: &std::sync::atomic::AtomicUsize)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await;
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let resp = match answer.strip_prefix("redirect:") {
            Some(url) => format!(
                "HTTP/1.1 302 Found\r\nLocation: {url}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            None => format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            ),
        };
        let _ = s.write_all(resp.as_bytes()).await;
        let _ = s.shutdown().await;
    }

    /// A port free on both 127.0.0.1 and 127.0.0.2, with `a` served on the first and `b` on the
    /// second; returns the port and both hit counters.
    async fn twin_servers(
        a: String,
        b: String,
    ) -> (
        u16,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        for _ in 0..20 {
            let Ok(probe) = std::net::TcpListener::bind("127.0.0.1:0") else {
                continue;
            };
            let p = probe.local_addr().expect("addr").port();
            drop(probe);
            let Some((_, hits_b)) = http_server_on("127.0.0.2", p, b.clone(), None).await else {
                continue;
            };
            if let Some((_, hits_a)) = http_server_on("127.0.0.1", p, a.clone(), None).await {
                return (p, hits_a, hits_b);
            }
        }
        panic!("no port free on 127.0.0.1 and 127.0.0.2");
    }

    fn hosts(
        entries: &[(&str, &str)],
    ) -> std::collections::BTreeMap<String, crate::acme::HostAddrs> {
        entries
            .iter()
            .map(|(n, a)| ((*n).to_owned(), a.parse().expect("addresses")))
            .collect()
    }

    /// SSRF over a whole answer: a name whose addresses are a blocked one (127.0.0.2, listed
    /// first, serving the right answer) and an allowed one (127.0.0.1) is validated on the
    /// allowed one only — the blocked one is never contacted. Before, only the first address was
    /// checked and the validation failed. A name with nothing but blocked addresses is refused
    /// with `connection` (blocked), contacting nothing.
    #[tokio::test]
    async fn every_resolved_address_is_checked_and_only_permitted_ones_are_contacted() {
        let (port, hits_allowed, hits_blocked) =
            twin_servers("tok.tp".into(), "tok.tp".into()).await;
        let cfg = AcmeConfig {
            http_port: port,
            hosts: hosts(&[
                ("mixed.example", "127.0.0.2,127.0.0.1"),
                ("internal.example", "127.0.0.2,10.1.2.3"),
            ]),
            validation_timeout_ms: 5_000,
            allowed_ranges: vec![range("127.0.0.1/32")],
            ..AcmeConfig::default()
        };
        let v = Validator::new(cfg);
        v.validate("http-01", &ident("dns", "mixed.example"), "tok", "tok.tp")
            .await
            .expect("validated on the permitted address");
        assert_eq!(hits_allowed.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(hits_blocked.load(std::sync::atomic::Ordering::SeqCst), 0);
        let e = v
            .validate(
                "http-01",
                &ident("dns", "internal.example"),
                "tok",
                "tok.tp",
            )
            .await
            .expect_err("only blocked addresses");
        assert!(e.blocked && e.problem_type == "connection", "{e:?}");
        assert_eq!(hits_blocked.load(std::sync::atomic::Ordering::SeqCst), 0);
        // Permitted addresses are tried in order: nothing listens on 127.0.0.3, so the next one
        // (127.0.0.1) answers.
        let failover = Validator::new(AcmeConfig {
            http_port: port,
            hosts: hosts(&[("two.example", "127.0.0.3,127.0.0.1")]),
            validation_timeout_ms: 5_000,
            allowed_ranges: vec![range("127.0.0.0/8")],
            ..AcmeConfig::default()
        });
        failover
            .validate("http-01", &ident("dns", "two.example"), "tok", "tok.tp")
            .await
            .expect("the second permitted address answers");
        assert_eq!(hits_allowed.load(std::sync::atomic::Ordering::SeqCst), 2);
        // The permitted set keeps the resolver's order and drops exactly the blocked ones.
        let t = v
            .targets(&ident("dns", "mixed.example"), 80)
            .await
            .expect("targets");
        assert_eq!(t, ["127.0.0.1:80".parse::<SocketAddr>().expect("addr")]);
    }

    /// `[acme.hosts]` takes one address or a list; an empty list or a bad address is refused at
    /// load.
    #[test]
    fn static_map_takes_one_address_or_a_list() {
        let cfg: AcmeConfig = toml::from_str(
            "[hosts]\none = \"192.0.2.1\"\nmany = [\"192.0.2.1\", \"2001:db8::1\"]\n",
        )
        .expect("config parses");
        assert_eq!(cfg.hosts["one"].addrs().len(), 1);
        assert_eq!(
            cfg.hosts["many"].addrs()[1],
            "2001:db8::1".parse::<IpAddr>().expect("ip")
        );
        for bad in ["[hosts]\nx = []\n", "[hosts]\nx = \"nope\"\n"] {
            assert!(toml::from_str::<AcmeConfig>(bad).is_err(), "{bad}");
        }
    }

    /// A rustls server config with a self-signed certificate for `name` (not trusted by anyone).
    fn self_signed_tls(name: &str) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// RFC 8555 §8.3 redirects as Let's Encrypt follows them: http → https on the TLS port,
    /// served by a real rustls server whose self-signed certificate nobody trusts (not
    /// validated), then back to http under a relative path... every hop checked: an https target
    /// resolving to a blocked address is refused; a port that is neither 443 nor the TLS port is
    /// refused; a loop stops after 10 redirects.
    #[tokio::test]
    async fn http01_follows_redirects_to_https_without_validating_the_certificate() {
        let tls = self_signed_tls("secure.example");
        let (tls_port, tls_hits) = http_server_on("127.0.0.1", 0, "tok.tp".into(), Some(tls))
            .await
            .expect("https server");
        let to_https = format!("redirect:https://secure.example:{tls_port}/central/tok");
        let http_port = http_server("127.0.0.1", 0, to_https).await.expect("http");
        let cfg = AcmeConfig {
            http_port,
            tls_alpn_port: tls_port,
            hosts: hosts(&[
                ("start.example", "127.0.0.1"),
                ("secure.example", "127.0.0.1"),
            ]),
            validation_timeout_ms: 5_000,
            allowed_ranges: vec![range("127.0.0.1/32")],
            ..AcmeConfig::default()
        };
        Validator::new(cfg.clone())
            .validate("http-01", &ident("dns", "start.example"), "tok", "tok.tp")
            .await
            .expect("validated through the https redirect");
        assert_eq!(tls_hits.load(std::sync::atomic::Ordering::SeqCst), 1);

        // The https hop's name resolves to a blocked address: refused before connecting.
        let blocked = Validator::new(AcmeConfig {
            hosts: hosts(&[
                ("start.example", "127.0.0.1"),
                ("secure.example", "10.9.9.9"),
            ]),
            ..cfg.clone()
        });
        let e = blocked
            .validate("http-01", &ident("dns", "start.example"), "tok", "tok.tp")
            .await
            .expect_err("blocked hop");
        assert!(e.blocked && e.detail.contains("10.9.9.9"), "{e:?}");

        // A redirect to https on another port (here the http port) is not followed.
        let other_port = http_server(
            "127.0.0.1",
            0,
            format!("redirect:https://secure.example:{http_port}/x"),
        )
        .await
        .expect("http");
        let e = Validator::new(AcmeConfig {
            http_port: other_port,
            ..cfg.clone()
        })
        .validate("http-01", &ident("dns", "start.example"), "tok", "tok.tp")
        .await
        .expect_err("port not allowed");
        assert_eq!(e.problem_type, "connection", "{e:?}");
        assert!(e.detail.contains("only ports 443 and"), "{e:?}");

        // A loop (a relative redirect to itself) stops after MAX_REDIRECTS.
        let looping = http_server("127.0.0.1", 0, "redirect:/again".into())
            .await
            .expect("http");
        let e = Validator::new(AcmeConfig {
            http_port: looping,
            ..cfg
        })
        .validate("http-01", &ident("dns", "start.example"), "tok", "tok.tp")
        .await
        .expect_err("loop");
        assert!(e.detail.contains("more than 10 redirects"), "{e:?}");
    }

    /// The redirect rules without I/O: ports per scheme, default ports, relative paths, no
    /// other schemes, no credentials, IP hosts.
    #[test]
    fn redirect_hops_follow_the_port_and_scheme_rules() {
        let ports = RedirectPorts {
            http: 5002,
            https: 5443,
        };
        let here = Hop {
            scheme: Scheme::Http,
            target: ident("dns", "a.example"),
            port: 5002,
            path: "/.well-known/acme-challenge/t".into(),
        };
        let hop = |l: &str| redirect_hop(&here, l, ports);
        let h = hop("https://b.example/p?q=1").expect("https default");
        assert_eq!(
            (h.scheme, h.port, h.path.as_str(), h.target.value.as_str()),
            (Scheme::Https, 5443, "/p?q=1", "b.example")
        );
        assert_eq!(hop("https://b.example:443/").expect("443").port, 443);
        assert_eq!(hop("http://b.example:80/").expect("80").port, 80);
        assert_eq!(hop("http://b.example").expect("no path").path, "/");
        assert_eq!(
            hop("https://b.example:?q=1").expect("query only").path,
            "/?q=1"
        );
        let h = hop("/elsewhere").expect("relative");
        assert_eq!((h.port, h.path.as_str()), (5002, "/elsewhere"));
        assert_eq!(h.target, here.target);
        let h = hop("http://[2001:db8::1]:5002/x").expect("ipv6");
        assert_eq!(h.target, ident("ip", "2001:db8::1"));
        for bad in [
            "https://b.example:8443/",
            "http://b.example:443/",
            "ftp://b.example/",
            "//b.example/x",
            "b.example/x",
            "http://user:pw@b.example/",
            "http://bad_name!/",
        ] {
            let e = hop(bad).expect_err(bad);
            assert_eq!(e.problem_type, "connection", "{bad}");
        }
    }

    fn caa_req<'a>(ids: &'a [String], method: &'a str) -> CaaRequest<'a> {
        CaaRequest {
            identities: ids,
            wildcard: false,
            tenant: "blue",
            account_id: "acc1",
            method,
        }
    }

    /// RFC 8659 §4.2 value syntax: issuer domain and `tag=value` parameters.
    #[test]
    fn caa_issue_values_parse_per_rfc8659() {
        assert_eq!(
            parse_issue_value(
                "CA.Example.; accounturi=https://h/acme/acct/1 ;validationmethods=dns-01"
            ),
            Some((
                "ca.example".to_owned(),
                vec![
                    ("accounturi".to_owned(), "https://h/acme/acct/1".to_owned()),
                    ("validationmethods".to_owned(), "dns-01".to_owned())
                ]
            ))
        );
        assert_eq!(parse_issue_value(";"), Some((String::new(), vec![])));
        assert_eq!(
            parse_issue_value("ca.example;"),
            Some(("ca.example".into(), vec![]))
        );
        for bad in [
            "ca.example; novalue",
            "ca.example;; a=b",
            "ca.example; a=b c",
            "ca example",
            "ca.example; -a=b",
        ] {
            assert_eq!(parse_issue_value(bad), None, "{bad}");
        }
    }

    /// RFC 8657: `accounturi` must be this account's URL and `validationmethods` must list the
    /// method that proved the name; otherwise the record does not authorize. A set where one
    /// record authorizes is enough; an unknown critical tag refuses.
    #[test]
    fn caa_rfc8657_parameters_restrict_account_and_method() {
        let ids = vec!["ca.example".to_owned()];
        let http = caa_req(&ids, "http-01");
        let ok = |v: &str, r: &CaaRequest<'_>| issue_value_authorizes(v, r, &[]);
        ok("ca.example", &http).expect("plain");
        ok(
            "ca.example; accounturi=https://h:8443/t/blue/acme/acct/acc1",
            &http,
        )
        .expect("own account (tenant path)");
        ok("ca.example; accounturi=https://h/acme/acct/acc1", &http)
            .expect("own account (plain path)");
        ok("ca.example; validationmethods=dns-01,http-01", &http).expect("method listed");
        for (v, why) in [
            ("other.example", "another CA"),
            (";", "no CA"),
            (
                "ca.example; accounturi=https://h/acme/acct/acc2",
                "another account",
            ),
            (
                "ca.example; accounturi=https://h/t/red/acme/acct/acc1",
                "another tenant",
            ),
            ("ca.example; accounturi=https://h/acme/acct/acc1?x", "query"),
            ("ca.example; accounturi=urn:acc1", "not a URL"),
            ("ca.example; validationmethods=dns-01", "other method only"),
            (
                "ca.example; validationmethods=http-01; validationmethods=dns-01",
                "twice",
            ),
            (
                "ca.example; accounturi=https://h/acme/acct/acc1; accounturi=https://h/acme/acct/acc1",
                "twice",
            ),
        ] {
            assert!(ok(v, &http).is_err(), "{v}: {why}");
        }
        // With bases configured, the URL must start with one of them.
        let bases = vec!["https://acme.example.org/".to_owned()];
        assert!(
            issue_value_authorizes(
                "ca.example; accounturi=https://acme.example.org/acme/acct/acc1",
                &http,
                &bases
            )
            .is_ok()
        );
        assert!(
            issue_value_authorizes(
                "ca.example; accounturi=https://evil.example/acme/acct/acc1",
                &http,
                &bases
            )
            .is_err()
        );

        let prop = |tag: &str, value: &str, critical: bool| CaaProperty {
            critical,
            tag: tag.into(),
            value: value.into(),
        };
        let set = [
            prop("issue", "ca.example; validationmethods=dns-01", false),
            prop(
                "issue",
                "ca.example; accounturi=https://h/acme/acct/acc1",
                false,
            ),
        ];
        caa_set_allows(&set, &http, &[]).expect("the second record authorizes");
        let e = caa_set_allows(&set[..1], &http, &[]).expect_err("method");
        assert!(e.contains("validationmethods"), "{e}");
        let mut wild = caa_req(&ids, "dns-01");
        wild.wildcard = true;
        let set = [
            prop("issue", "ca.example", false),
            prop(
                "issuewild",
                "ca.example; accounturi=https://h/acme/acct/other",
                false,
            ),
        ];
        assert!(
            caa_set_allows(&set, &wild, &[]).is_err(),
            "issuewild governs"
        );
        caa_set_allows(&set, &http, &[]).expect("issue governs the plain name");
        let set = [prop("issue", "ca.example", false), prop("tbs", "x", true)];
        assert!(
            caa_set_allows(&set, &http, &[]).is_err(),
            "unknown critical"
        );
        let set = [prop("iodef", "mailto:a@b", true)];
        caa_set_allows(&set, &http, &[]).expect("no issue property: allowed");
    }

    /// SSRF: a name that resolves (static map, or the system resolver for `localhost`) to a
    /// blocked address is refused with `connection` before anything is contacted, although a
    /// responder there would answer correctly; allowing the range makes the same validation pass.
    #[tokio::test]
    async fn http01_to_a_blocked_address_is_refused_and_allowed_ranges_lift_it() {
        let port = http_server("127.0.0.1", 0, "tok.tp".into())
            .await
            .expect("server");
        let mut hosts = std::collections::BTreeMap::new();
        hosts.insert(
            "internal.example".to_owned(),
            "127.0.0.1".parse().expect("ip"),
        );
        let cfg = AcmeConfig {
            http_port: port,
            hosts,
            validation_timeout_ms: 5_000,
            ..AcmeConfig::default()
        };
        let v = Validator::new(cfg.clone());
        for id in [
            ident("dns", "internal.example"),
            ident("dns", "localhost"),
            ident("ip", "127.0.0.1"),
        ] {
            let e = v
                .validate("http-01", &id, "tok", "tok.tp")
                .await
                .expect_err("blocked");
            assert_eq!(e.problem_type, "connection", "{e:?}");
            assert!(
                e.blocked && e.detail.contains("blocked address range"),
                "{e:?}"
            );
        }
        let open = Validator::new(AcmeConfig {
            allowed_ranges: vec![range("127.0.0.1/32")],
            ..cfg
        });
        open.validate(
            "http-01",
            &ident("dns", "internal.example"),
            "tok",
            "tok.tp",
        )
        .await
        .expect("allowed range validates");
    }

    /// SSRF on redirects: every hop is checked. The first server (127.0.0.1, allowed) redirects
    /// to a second one on 127.0.0.2, same port, that serves the right answer; with only 127.0.0.1 allowed the hop is
    /// refused, with 127.0.0.0/8 allowed the validation passes.
    #[tokio::test]
    async fn http01_redirect_hops_are_checked_against_the_block_list() {
        let mut port = None;
        for _ in 0..20 {
            let Ok(probe) = std::net::TcpListener::bind("127.0.0.1:0") else {
                continue;
            };
            let p = probe.local_addr().expect("addr").port();
            drop(probe);
            if http_server("127.0.0.2", p, "tok.tp".into()).await.is_none() {
                continue;
            }
            let url = format!("http://127.0.0.2:{p}/.well-known/acme-challenge/tok");
            if http_server("127.0.0.1", p, format!("redirect:{url}"))
                .await
                .is_some()
            {
                port = Some(p);
                break;
            }
        }
        let port = port.expect("a port free on 127.0.0.1 and 127.0.0.2");
        let mut hosts = std::collections::BTreeMap::new();
        hosts.insert("hop.example".to_owned(), "127.0.0.1".parse().expect("ip"));
        let cfg = AcmeConfig {
            http_port: port,
            hosts,
            validation_timeout_ms: 5_000,
            allowed_ranges: vec![range("127.0.0.1/32")],
            ..AcmeConfig::default()
        };
        let e = Validator::new(cfg.clone())
            .validate("http-01", &ident("dns", "hop.example"), "tok", "tok.tp")
            .await
            .expect_err("the hop to 127.0.0.2 is blocked");
        assert!(e.blocked && e.detail.contains("127.0.0.2"), "{e:?}");
        Validator::new(AcmeConfig {
            allowed_ranges: vec![range("127.0.0.0/8")],
            ..cfg
        })
        .validate("http-01", &ident("dns", "hop.example"), "tok", "tok.tp")
        .await
        .expect("the redirect is followed when the range is allowed");
    }

    /// SSRF for tls-alpn-01: the target is checked before the TCP connection (a private name
    /// and a private IP identifier), and the dev convention's 127.0.0.1 stays allowed.
    #[tokio::test]
    async fn tls_alpn01_to_a_blocked_address_is_refused() {
        let mut hosts = std::collections::BTreeMap::new();
        hosts.insert(
            "intranet.example".to_owned(),
            "10.20.30.40".parse().expect("ip"),
        );
        let v = Validator::new(AcmeConfig {
            hosts,
            validation_timeout_ms: 5_000,
            ..AcmeConfig::default()
        });
        for id in [ident("dns", "intranet.example"), ident("ip", "192.168.7.7")] {
            let e = v
                .validate("tls-alpn-01", &id, "tok", "tok.tp")
                .await
                .expect_err("blocked");
            assert!(e.blocked && e.problem_type == "connection", "{e:?}");
        }
        let dev = Validator::new(AcmeConfig {
            dev_validate_on_localhost: true,
            ..AcmeConfig::default()
        });
        assert!(
            dev.targets(&ident("dns", "any.example"), crate::acme::DEV_TLS_ALPN_PORT)
                .await
                .is_ok()
        );
    }

    /// RFC 7766: a UDP answer with TC set is asked again over TCP. The responder answers every
    /// UDP query truncated and empty, and over TCP (same port) with the TXT record, so dns-01
    /// passes only through the TCP retry.
    #[tokio::test]
    async fn dns01_truncated_udp_answer_is_retried_over_tcp() {
        use hickory_proto::op::{Message, MessageType};
        use hickory_proto::rr::rdata::TXT;
        use hickory_proto::rr::{RData, Record};
        use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let key_auth = "tok.tp";
        let digest = certgate_acme::base64url(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_auth.as_bytes()).as_ref(),
        );
        let answer = move |q: &Message, full: bool| -> Vec<u8> {
            let mut r = Message::new();
            r.set_id(q.id())
                .set_message_type(MessageType::Response)
                .set_op_code(q.op_code())
                .set_recursion_desired(q.recursion_desired());
            for query in q.queries() {
                r.add_query(query.clone());
                if full {
                    r.add_answer(Record::from_rdata(
                        query.name().clone(),
                        60,
                        RData::TXT(TXT::new(vec![digest.clone()])),
                    ));
                }
            }
            r.set_truncated(!full);
            r.to_bytes().expect("encode")
        };
        let mut bound = None;
        for _ in 0..20 {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("udp");
            let addr = udp.local_addr().expect("addr");
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                bound = Some((udp, tcp, addr));
                break;
            }
        }
        let (udp, tcp, addr) = bound.expect("a port free for UDP and TCP");
        let udp_answer = answer.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                if let Ok(q) = Message::from_bytes(&buf[..n]) {
                    let _ = udp.send_to(&udp_answer(&q, false), peer).await;
                }
            }
        });
        let tcp_queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = tcp_queries.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let answer = answer.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut lb = [0u8; 2];
                    if s.read_exact(&mut lb).await.is_err() {
                        return;
                    }
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(lb))];
                    if s.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    let Ok(q) = Message::from_bytes(&q) else {
                        return;
                    };
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let out = answer(&q, true);
                    let mut framed = u16::try_from(out.len())
                        .expect("small")
                        .to_be_bytes()
                        .to_vec();
                    framed.extend_from_slice(&out);
                    let _ = s.write_all(&framed).await;
                });
            }
        });
        let v = Validator::new(AcmeConfig {
            dns_resolver: Some(addr),
            validation_timeout_ms: 5_000,
            ..AcmeConfig::default()
        });
        v.validate("dns-01", &ident("dns", "big.example"), "tok", key_auth)
            .await
            .expect("valid through the TCP retry");
        assert_eq!(tcp_queries.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A resolver that never answers is a `dns` problem after the timeout, not a hang.
    #[tokio::test]
    async fn silent_resolver_times_out_as_dns() {
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let v = Validator::new(AcmeConfig {
            dns_resolver: Some(silent.local_addr().expect("addr")),
            validation_timeout_ms: 200,
            ..AcmeConfig::default()
        });
        let id = IdentRec {
            kind: "dns".into(),
            value: "example.org".into(),
        };
        let started = std::time::Instant::now();
        let e = v
            .validate("dns-01", &id, "tok", "tok.tp")
            .await
            .expect_err("no answer");
        assert_eq!(e.problem_type, "dns");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn reverse_names_follow_rfc8738() {
        assert_eq!(
            reverse_dns_name("192.0.2.5".parse().expect("ip")),
            "5.2.0.192.in-addr.arpa"
        );
        let v6 = reverse_dns_name("2001:db8::1".parse().expect("ip"));
        assert!(v6.starts_with("1.0.0.0.0.0.0.0."), "{v6}");
        assert!(v6.ends_with("8.b.d.0.1.0.0.2.ip6.arpa"), "{v6}");
    }
}
