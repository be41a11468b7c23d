//! Challenge validation, performed by the core itself (the edge's word is never taken: a
//! compromised edge cannot validate a name).
//!
//! - http-01 (RFC 8555 §8.3): `GET http://NAME:PORT/.well-known/acme-challenge/TOKEN` with
//!   `Host: NAME`; the body, trailing whitespace trimmed and read up to [`MAX_HTTP_BODY`], must be
//!   the key authorization. Up to [`MAX_REDIRECTS`] plain-http redirects on the same port are
//!   followed; https redirects are not.
//! - dns-01 (§8.4): a TXT query for `_acme-challenge.NAME` sent over UDP to the configured
//!   resolver; one TXT record must equal base64url(SHA-256(key authorization)).
//! - tls-alpn-01 (RFC 8737): a TLS 1.2/1.3 handshake offering only ALPN `acme-tls/1`, SNI = NAME (for an
//!   IP identifier the reverse-DNS name, RFC 8738 §6); the self-signed certificate must name
//!   exactly the identifier and carry the critical id-pe-acmeIdentifier extension holding
//!   SHA-256(key authorization) as a DER OCTET STRING.
//!
//! Every attempt is bounded by the configured timeout. Failures name the ACME problem type.
//!
//! SSRF protection: every address validation is about to connect to (the resolved identifier,
//! each http-01 redirect hop, the tls-alpn-01 target) is checked against `[acme]
//! blocked_ranges` (default [`super::DEFAULT_BLOCKED_RANGES`]) minus `allowed_ranges` before
//! the connection is made; a blocked one fails with `connection` and is counted as outcome
//! `blocked`. A DNS answer truncated over UDP (TC) is asked again over TCP (RFC 7766).

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
    /// anything connects to it.
    fn check_target(&self, name: &str, addr: SocketAddr) -> Result<SocketAddr, Failure> {
        let ip = addr.ip().to_canonical();
        if self.allowed.iter().any(|r| r.contains(ip)) {
            return Ok(addr);
        }
        match self.blocked.iter().find(|r| r.contains(ip)) {
            None => Ok(addr),
            Some(range) => {
                tracing::warn!(%name, %ip, %range, "ACME validation target in a blocked range");
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

    /// Where to connect for an identifier: the dev shortcut, the static map, the IP itself, or
    /// the system resolver.
    async fn address(&self, id: &IdentRec, port: u16) -> Result<SocketAddr, Failure> {
        let addr = self.resolve(id, port).await?;
        self.check_target(&id.value, addr)
    }

    /// [`Self::address`] before the block-list check.
    async fn resolve(&self, id: &IdentRec, port: u16) -> Result<SocketAddr, Failure> {
        if self.cfg.dev_validate_on_localhost {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        if let Some(ip) = self.cfg.hosts.get(&id.value) {
            return Ok(SocketAddr::new(*ip, port));
        }
        if id.kind == "ip" {
            let ip: IpAddr = id
                .value
                .parse()
                .map_err(|_| fail("malformed", "IP identifier does not parse"))?;
            return Ok(SocketAddr::new(ip, port));
        }
        let mut addrs = tokio::net::lookup_host((id.value.as_str(), port))
            .await
            .map_err(|e| fail("dns", format!("resolving {}: {e}", id.value)))?;
        addrs
            .next()
            .ok_or_else(|| fail("dns", format!("no address for {}", id.value)))
    }

    async fn http01(&self, id: &IdentRec, token: &str, key_auth: &str) -> Result<(), Failure> {
        let port = if self.cfg.dev_validate_on_localhost {
            super::DEV_HTTP_PORT
        } else {
            self.cfg.http_port
        };
        let mut target = id.clone();
        let mut path = format!("/.well-known/acme-challenge/{token}");
        let mut hops = 0;
        let (addr, buf, too_long) = loop {
            let addr = self.address(&target, port).await?;
            let fetched = http_get(addr, &target.value, &path).await?;
            match fetched {
                Fetched::Body {
                    status,
                    body,
                    too_long,
                } => {
                    if !status.is_success() {
                        return Err(fail(
                            "unauthorized",
                            format!("{addr} answered HTTP {} for the challenge", status.as_u16()),
                        ));
                    }
                    break (addr, body, too_long);
                }
                Fetched::Redirect(location) => {
                    hops += 1;
                    if hops > MAX_REDIRECTS {
                        return Err(fail(
                            "connection",
                            format!("more than {MAX_REDIRECTS} redirects"),
                        ));
                    }
                    (target, path) = redirect_target(&location, port)?;
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
        let addr = self.address(id, port).await?;
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
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| fail("connection", format!("connecting to {addr}: {e}")))?;
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
    /// record set; if it has `issue` (or, for a wildcard, `issuewild`) properties, one must name
    /// one of `identities`. An unknown property flagged critical forbids issuance; a failed
    /// lookup forbids it too (fail closed). No CAA anywhere allows issuance.
    pub async fn check_caa(
        &self,
        name: &str,
        wildcard: bool,
        identities: &[String],
    ) -> Result<(), Failure> {
        let work = self.caa(name, wildcard, identities);
        match tokio::time::timeout(self.timeout(), work).await {
            Ok(r) => r,
            Err(_) => Err(fail("caa", format!("CAA lookup for {name} timed out"))),
        }
    }

    async fn caa(&self, name: &str, wildcard: bool, identities: &[String]) -> Result<(), Failure> {
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
            let set: Vec<&hickory_proto::rr::rdata::CAA> = resp
                .answers()
                .iter()
                .filter_map(|r| match r.data() {
                    RData::CAA(c) => Some(c),
                    _ => None,
                })
                .collect();
            if set.is_empty() {
                continue;
            }
            if set
                .iter()
                .any(|c| c.issuer_critical() && c.tag().is_unknown())
            {
                return Err(fail(
                    "caa",
                    format!("CAA at {qname} has a critical property this CA does not understand"),
                ));
            }
            let wild: Vec<_> = set.iter().filter(|c| c.tag().is_issuewild()).collect();
            let relevant: Vec<_> = if wildcard && !wild.is_empty() {
                wild
            } else {
                set.iter().filter(|c| c.tag().is_issue()).collect()
            };
            if relevant.is_empty() {
                return Ok(());
            }
            let allowed = relevant.iter().any(|c| {
                let raw = String::from_utf8_lossy(c.raw_value()).to_string();
                let domain = raw
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                !domain.is_empty()
                    && identities
                        .iter()
                        .any(|id| id.trim_end_matches('.').eq_ignore_ascii_case(&domain))
            });
            return if allowed {
                Ok(())
            } else {
                Err(fail(
                    "caa",
                    format!("CAA records at {qname} do not allow this CA to issue for {name}"),
                ))
            };
        }
        Ok(())
    }
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

/// One GET on a fresh connection to `addr` with `Host: host`.
async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<Fetched, Failure> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| fail("connection", format!("connecting to {addr}: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
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

/// The next hop of a redirect: plain http only, on the validation port, to a DNS name or an IP
/// address (resolved like the identifier itself). https targets are not followed.
fn redirect_target(location: &str, port: u16) -> Result<(IdentRec, String), Failure> {
    let refuse = |why: &str| fail("connection", format!("redirect to {location:?}: {why}"));
    let uri: http::Uri = location.parse().map_err(|_| refuse("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(refuse("https redirects are not followed")),
        _ => return Err(refuse("only absolute http:// URLs are followed")),
    }
    let host = uri.host().ok_or_else(|| refuse("no host"))?;
    if uri.port_u16().is_some_and(|p| p != port) {
        return Err(refuse(&format!("only port {port} is allowed")));
    }
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
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
    Ok((target, path))
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
/// chain is involved, the checks are [`check_alpn_certificate`]. The handshake signature is
/// still verified, so the responder holds the certificate's key.
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
            dev.address(&id("dns", "anything.example"), crate::acme::DEV_HTTP_PORT)
                .await
                .expect("dev"),
            "127.0.0.1:5002".parse::<SocketAddr>().expect("addr")
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
            "192.0.2.7:80".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(
            prod.resolve(&id("ip", "2001:db8::5"), 443)
                .await
                .expect("ip"),
            "[2001:db8::5]:443".parse::<SocketAddr>().expect("addr")
        );
        // Both are documentation addresses: the default block list keeps validation away.
        for (kind, name) in [("dns", "mapped.example"), ("ip", "2001:db8::5")] {
            let e = prod
                .address(&id(kind, name), 80)
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
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind((ip, port)).await.ok()?;
        let port = l.local_addr().ok()?.port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = s.read(&mut buf).await;
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
                });
            }
        });
        Some(port)
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
            dev.address(&ident("dns", "any.example"), crate::acme::DEV_TLS_ALPN_PORT)
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
