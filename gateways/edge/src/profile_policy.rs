//! A tenant's profile (`Core.DescribeProfile`, cached by [`crate::core_client::CoreClient`])
//! mapped into what each protocol publishes before a request: EST `csrattrs`
//! ([`certgate_est::csrattrs`]) and the CMP `certReqTemplate` genp value
//! ([`certgate_cmp::template`]). Names or OIDs this edge does not know (a newer core) are
//! skipped, never guessed.

use certgate_proto::core::ProfileDescription;
use const_oid::ObjectIdentifier;

/// secp256r1 (RFC 5480).
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// secp384r1 (RFC 5480).
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// id-at-commonName.
const CN: &str = "2.5.4.3";

/// A key type of the profile, protocol-neutral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Ec(ObjectIdentifier),
    Ed25519,
    Rsa(u32),
}

fn keys(d: &ProfileDescription) -> Vec<Key> {
    d.key_algorithms
        .iter()
        .filter_map(|k| match k.as_str() {
            "ecdsa-p256" => Some(Key::Ec(P256)),
            "ecdsa-p384" => Some(Key::Ec(P384)),
            "ed25519" => Some(Key::Ed25519),
            "rsa" => Some(Key::Rsa(d.min_rsa_bits.max(2048))),
            _ => None,
        })
        .collect()
}

fn oids(list: &[String]) -> Vec<ObjectIdentifier> {
    list.iter()
        .filter_map(|s| ObjectIdentifier::new(s).ok())
        .collect()
}

/// What EST `csrattrs` should ask for under this profile.
pub fn est_ask(d: &ProfileDescription) -> certgate_est::csrattrs::ProfileAsk {
    use certgate_est::csrattrs::KeyAsk;
    certgate_est::csrattrs::ProfileAsk {
        keys: keys(d)
            .into_iter()
            .map(|k| match k {
                Key::Ec(c) => KeyAsk::Ec(c),
                Key::Ed25519 => KeyAsk::Ed25519,
                Key::Rsa(b) => KeyAsk::Rsa(b),
            })
            .collect(),
        signature_algorithms: oids(&d.signature_algorithms),
        ekus: oids(&d.ekus),
        names: !d.san_types.is_empty(),
    }
}

/// What the CMP `certReqTemplate` should carry under this profile.
pub fn cmp_ask(d: &ProfileDescription) -> certgate_cmp::template::TemplateAsk {
    use certgate_cmp::template::KeyAsk;
    let has = |t: &str| d.san_types.iter().any(|s| s == t);
    certgate_cmp::template::TemplateAsk {
        keys: keys(d)
            .into_iter()
            .map(|k| match k {
                Key::Ec(c) => KeyAsk::Ec(c),
                Key::Ed25519 => KeyAsk::Ed25519,
                Key::Rsa(b) => KeyAsk::Rsa(b),
            })
            .collect(),
        ekus: oids(&d.ekus),
        dns: has("dns"),
        ip: has("ip"),
        uri: has("uri"),
        common_name: d.subject_attributes.iter().any(|a| a == CN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc() -> ProfileDescription {
        ProfileDescription {
            key_algorithms: vec![
                "ecdsa-p384".into(),
                "rsa".into(),
                "ed25519".into(),
                "future-pq".into(),
            ],
            min_rsa_bits: 4096,
            signature_algorithms: vec!["1.2.840.10045.4.3.3".into(), "not-an-oid".into()],
            subject_attributes: vec![CN.into()],
            san_types: vec!["dns".into(), "uri".into()],
            ekus: vec!["1.3.6.1.5.5.7.3.2".into()],
            ..ProfileDescription::default()
        }
    }

    #[test]
    fn est_ask_maps_keys_and_skips_unknown_names() {
        use certgate_est::csrattrs::KeyAsk;
        let a = est_ask(&desc());
        assert_eq!(
            a.keys,
            vec![KeyAsk::Ec(P384), KeyAsk::Rsa(4096), KeyAsk::Ed25519]
        );
        assert_eq!(a.signature_algorithms.len(), 1);
        assert_eq!(a.ekus[0].to_string(), "1.3.6.1.5.5.7.3.2");
        assert!(a.names);
        assert!(!est_ask(&ProfileDescription::default()).names);
    }

    #[test]
    fn cmp_ask_maps_san_types_and_subject() {
        let a = cmp_ask(&desc());
        assert!(a.dns && a.uri && !a.ip && a.common_name);
        assert_eq!(a.keys.len(), 3);
        let none = cmp_ask(&ProfileDescription::default());
        assert_eq!(none, certgate_cmp::template::TemplateAsk::default());
    }
}
