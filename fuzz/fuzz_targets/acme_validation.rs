//! Inputs the ACME validators take from the domain's owner, untrusted: CAA `issue` values (RFC
//! 8659 §4.2, with RFC 8657 parameters) from DNS and http-01 redirect `Location`s from the
//! client's web server. The sans-I/O deciders must never panic, and what they accept must keep
//! their promises: a redirect only to the allowed ports of its scheme, with an absolute path; a
//! CAA value authorizes only this CA's issuer domain.
#![no_main]

use certgate_core::acme::validate::{
    CaaProperty, CaaRequest, Hop, RedirectPorts, Scheme, caa_set_allows, issue_value_authorizes,
    parse_issue_value, redirect_hop,
};
use certgate_core::store::acme::IdentRec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let ids = ["ca.example".to_owned()];
    let req = CaaRequest {
        identities: &ids,
        wildcard: sel & 1 == 1,
        tenant: "blue",
        account_id: "acc1",
        method: "http-01",
    };
    if sel & 2 == 0 {
        if let Some((domain, params)) = parse_issue_value(&text) {
            assert!(!domain.contains(';') && domain == domain.to_ascii_lowercase());
            assert!(params.iter().all(|(t, _)| !t.is_empty()));
        }
        if issue_value_authorizes(&text, &req, &[]).is_ok() {
            let (domain, _) = parse_issue_value(&text).expect("an authorizing value parses");
            assert_eq!(domain, "ca.example");
        }
        let set: Vec<CaaProperty> = text
            .split('\n')
            .map(|l| {
                let (tag, value) = l.split_once(' ').unwrap_or((l, ""));
                CaaProperty {
                    critical: tag.starts_with('!'),
                    tag: tag.trim_start_matches('!').to_ascii_lowercase(),
                    value: value.to_owned(),
                }
            })
            .collect();
        let _ = caa_set_allows(&set, &req, &["https://acme.example.org".to_owned()]);
    } else {
        let ports = RedirectPorts {
            http: 5002,
            https: 5443,
        };
        let here = Hop {
            scheme: Scheme::Http,
            target: IdentRec {
                kind: "dns".into(),
                value: "a.example".into(),
            },
            port: 5002,
            path: "/".into(),
        };
        if let Ok(hop) = redirect_hop(&here, &text, ports) {
            let allowed = match hop.scheme {
                Scheme::Http => [80, ports.http],
                Scheme::Https => [443, ports.https],
            };
            assert!(allowed.contains(&hop.port));
            assert!(hop.path.starts_with('/'));
            assert!(hop.target.kind == "dns" || hop.target.kind == "ip");
        }
    }
});
