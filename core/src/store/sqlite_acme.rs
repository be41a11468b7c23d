//! [`AcmeStore`] for the SQLite store: the ACME tables, applied by `SqliteStore::open` beside the
//! main schema. Writes go through the same writer thread (group commit) with the audit record in
//! the same transaction (I-7).

use rusqlite::{Connection, OptionalExtension, Row, params};
use zeroize::Zeroizing;

use super::acme::{
    AccountRec, AcmeSettings, AcmeStore, AuthzRec, ChallengeRec, ChallengeResult, EabKey, IdentRec,
    NewAccountOutcome, OrderPage, OrderRec, OrderUpdate, order_ready_at, order_ready_audit,
};
use super::sqlite::{SqliteStore, append};
use crate::audit::AuditEntry;
use crate::error::{CoreError, Result};

/// The ACME tables. Every row carries its tenant; account-owned rows carry the account.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS acme_settings (
    tenant TEXT PRIMARY KEY,
    terms_of_service TEXT NOT NULL,
    website TEXT NOT NULL,
    caa_identities TEXT NOT NULL,
    eab_required INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS acme_eab_keys (
    tenant TEXT NOT NULL,
    key_id TEXT NOT NULL,
    hmac_key BLOB NOT NULL,
    account_id TEXT NOT NULL DEFAULT '',
    created_unix INTEGER NOT NULL,
    PRIMARY KEY (tenant, key_id)
);
CREATE TABLE IF NOT EXISTS acme_accounts (
    tenant TEXT NOT NULL,
    account_id TEXT NOT NULL,
    status TEXT NOT NULL,
    contacts TEXT NOT NULL,
    terms_agreed INTEGER NOT NULL,
    jwk_json TEXT NOT NULL,
    jwk_thumbprint TEXT NOT NULL,
    eab_key_id TEXT NOT NULL,
    created_unix INTEGER NOT NULL,
    PRIMARY KEY (tenant, account_id),
    UNIQUE (tenant, jwk_thumbprint)
);
CREATE TABLE IF NOT EXISTS acme_orders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    order_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    status TEXT NOT NULL,
    expires_unix INTEGER NOT NULL,
    identifiers TEXT NOT NULL,
    authz_ids TEXT NOT NULL,
    not_before_unix INTEGER NOT NULL,
    not_after_unix INTEGER NOT NULL,
    error BLOB NOT NULL,
    certificate_serial_hex TEXT NOT NULL,
    profile TEXT NOT NULL,
    replaces TEXT NOT NULL,
    created_unix INTEGER NOT NULL,
    csr_der BLOB NOT NULL DEFAULT x'',
    UNIQUE (tenant, order_id)
);
CREATE INDEX IF NOT EXISTS acme_orders_account ON acme_orders(tenant, account_id, seq);
CREATE INDEX IF NOT EXISTS acme_orders_serial ON acme_orders(tenant, certificate_serial_hex)
    WHERE certificate_serial_hex <> '';
CREATE TABLE IF NOT EXISTS acme_authzs (
    tenant TEXT NOT NULL,
    authz_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    id_type TEXT NOT NULL,
    id_value TEXT NOT NULL,
    wildcard INTEGER NOT NULL,
    status TEXT NOT NULL,
    expires_unix INTEGER NOT NULL,
    created_unix INTEGER NOT NULL,
    PRIMARY KEY (tenant, authz_id)
);
CREATE INDEX IF NOT EXISTS acme_authzs_reuse
    ON acme_authzs(tenant, account_id, id_type, id_value, wildcard);
CREATE TABLE IF NOT EXISTS acme_challenges (
    tenant TEXT NOT NULL,
    challenge_id TEXT NOT NULL,
    authz_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    token TEXT NOT NULL,
    validated_unix INTEGER NOT NULL,
    error BLOB NOT NULL,
    PRIMARY KEY (tenant, challenge_id)
);
CREATE INDEX IF NOT EXISTS acme_challenges_authz ON acme_challenges(tenant, authz_id, idx);
-- The order that created each authorization (orders that only reuse one are not listed), so the
-- transaction that records a validation can move that order to ready (finish_challenge).
CREATE TABLE IF NOT EXISTS acme_authz_orders (
    tenant TEXT NOT NULL,
    authz_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    PRIMARY KEY (tenant, authz_id)
) WITHOUT ROWID;
"#;

fn json_err(e: serde_json::Error) -> CoreError {
    CoreError::Store(format!("stored JSON: {e}"))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(json_err)
}

const ACCOUNT_COLS: &str = "tenant, account_id, status, contacts, terms_agreed, jwk_json, jwk_thumbprint, eab_key_id, created_unix";

fn account_row(r: &Row<'_>) -> rusqlite::Result<(AccountRec, String)> {
    Ok((
        AccountRec {
            tenant: r.get(0)?,
            account_id: r.get(1)?,
            status: r.get(2)?,
            contacts: Vec::new(),
            terms_agreed: r.get::<_, i64>(4)? != 0,
            jwk_json: r.get(5)?,
            jwk_thumbprint: r.get(6)?,
            eab_key_id: r.get(7)?,
            created_unix: r.get(8)?,
        },
        r.get(3)?,
    ))
}

fn finish_account((mut a, contacts): (AccountRec, String)) -> Result<AccountRec> {
    a.contacts = serde_json::from_str(&contacts).map_err(json_err)?;
    Ok(a)
}

const ORDER_COLS: &str = "tenant, order_id, account_id, status, expires_unix, identifiers, authz_ids, not_before_unix, not_after_unix, error, certificate_serial_hex, profile, replaces, created_unix, csr_der";

type RawOrder = (OrderRec, String, String);

fn order_row(r: &Row<'_>) -> rusqlite::Result<RawOrder> {
    Ok((
        OrderRec {
            tenant: r.get(0)?,
            order_id: r.get(1)?,
            account_id: r.get(2)?,
            status: r.get(3)?,
            expires_unix: r.get(4)?,
            identifiers: Vec::new(),
            authz_ids: Vec::new(),
            not_before_unix: r.get(7)?,
            not_after_unix: r.get(8)?,
            error: r.get(9)?,
            certificate_serial_hex: r.get(10)?,
            profile: r.get(11)?,
            replaces: r.get(12)?,
            created_unix: r.get(13)?,
            csr_der: r.get(14)?,
        },
        r.get(5)?,
        r.get(6)?,
    ))
}

fn finish_order((mut o, ids, authzs): RawOrder) -> Result<OrderRec> {
    let ids: Vec<(String, String)> = serde_json::from_str(&ids).map_err(json_err)?;
    o.identifiers = ids
        .into_iter()
        .map(|(kind, value)| IdentRec { kind, value })
        .collect();
    o.authz_ids = serde_json::from_str(&authzs).map_err(json_err)?;
    Ok(o)
}

const AUTHZ_COLS: &str =
    "tenant, authz_id, account_id, id_type, id_value, wildcard, status, expires_unix, created_unix";

fn authz_row(r: &Row<'_>) -> rusqlite::Result<AuthzRec> {
    Ok(AuthzRec {
        tenant: r.get(0)?,
        authz_id: r.get(1)?,
        account_id: r.get(2)?,
        identifier: IdentRec {
            kind: r.get(3)?,
            value: r.get(4)?,
        },
        wildcard: r.get::<_, i64>(5)? != 0,
        status: r.get(6)?,
        expires_unix: r.get(7)?,
        challenges: Vec::new(),
        created_unix: r.get(8)?,
    })
}

fn load_challenges(c: &Connection, a: &mut AuthzRec) -> Result<()> {
    let mut st = c.prepare_cached(
        "SELECT challenge_id, kind, status, token, validated_unix, error FROM acme_challenges
         WHERE tenant = ?1 AND authz_id = ?2 ORDER BY idx",
    )?;
    a.challenges = st
        .query_map(params![a.tenant, a.authz_id], |r| {
            Ok(ChallengeRec {
                challenge_id: r.get(0)?,
                kind: r.get(1)?,
                status: r.get(2)?,
                token: r.get(3)?,
                validated_unix: r.get(4)?,
                error: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(())
}

fn authz_in(
    c: &Connection,
    tenant: &str,
    account_id: &str,
    authz_id: &str,
) -> Result<Option<AuthzRec>> {
    let a = c
        .prepare_cached(&format!(
                "SELECT {AUTHZ_COLS} FROM acme_authzs WHERE tenant = ?1 AND account_id = ?2 AND authz_id = ?3"
            ))?.query_row(
            params![tenant, account_id, authz_id],
            authz_row,
        )
        .optional()?;
    match a {
        Some(mut a) => {
            load_challenges(c, &mut a)?;
            Ok(Some(a))
        }
        None => Ok(None),
    }
}

fn status_in(from: &[&str]) -> String {
    // Statuses are our own constants, never client input; still, quote defensively.
    from.iter()
        .map(|s| format!("'{}'", s.replace('\'', "")))
        .collect::<Vec<_>>()
        .join(",")
}

impl AcmeStore for SqliteStore {
    fn acme_settings(&self, tenant: &str) -> Result<Option<AcmeSettings>> {
        let row: Option<(String, String, String, i64)> = self.with(|c| {
            Ok(c.prepare_cached("SELECT terms_of_service, website, caa_identities, eab_required FROM acme_settings WHERE tenant = ?1")?.query_row(
                [tenant],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?)
        })?;
        row.map(|(tos, website, caa, eab)| {
            Ok(AcmeSettings {
                tenant: tenant.to_owned(),
                terms_of_service: tos,
                website,
                caa_identities: serde_json::from_str(&caa).map_err(json_err)?,
                external_account_required: eab != 0,
            })
        })
        .transpose()
    }

    fn put_acme_settings(&self, s: &AcmeSettings, audit: &AuditEntry) -> Result<()> {
        let s = s.clone();
        let caa = to_json(&s.caa_identities)?;
        let audit = audit.clone();
        self.tx(move |tx| {
            tx.prepare_cached("INSERT INTO acme_settings (tenant, terms_of_service, website, caa_identities, eab_required)
                 VALUES (?1,?2,?3,?4,?5)
                 ON CONFLICT(tenant) DO UPDATE SET terms_of_service = excluded.terms_of_service,
                   website = excluded.website, caa_identities = excluded.caa_identities,
                   eab_required = excluded.eab_required")?.execute(
                params![s.tenant, s.terms_of_service, s.website, caa, s.external_account_required as i64],
            )?;
            append(tx, &audit)?;
            Ok(())
        })
    }

    fn insert_eab_key(&self, k: &EabKey, audit: &AuditEntry) -> Result<()> {
        let (tenant, key_id, created) = (k.tenant.clone(), k.key_id.clone(), k.created_unix);
        let key = k.key.clone();
        let audit = audit.clone();
        self.tx(move |tx| {
            let n = tx.prepare_cached("INSERT OR IGNORE INTO acme_eab_keys (tenant, key_id, hmac_key, account_id, created_unix)
                 VALUES (?1,?2,?3,'',?4)")?.execute(
                params![tenant, key_id, key.as_slice(), created],
            )?;
            if n == 0 {
                return Err(CoreError::exists("acme.eab_key_exists", "EAB key id exists"));
            }
            append(tx, &audit)?;
            Ok(())
        })
    }

    fn eab_key(&self, tenant: &str, key_id: &str) -> Result<Option<EabKey>> {
        self.with(|c| {
            Ok(c.prepare_cached("SELECT hmac_key, account_id, created_unix FROM acme_eab_keys WHERE tenant = ?1 AND key_id = ?2")?.query_row(
                params![tenant, key_id],
                |r| {
                    Ok(EabKey {
                        tenant: tenant.to_owned(),
                        key_id: key_id.to_owned(),
                        key: Zeroizing::new(r.get::<_, Vec<u8>>(0)?),
                        account_id: r.get(1)?,
                        created_unix: r.get(2)?,
                    })
                },
            )
            .optional()?)
        })
    }

    fn create_account(&self, a: &AccountRec, audit: &AuditEntry) -> Result<NewAccountOutcome> {
        let a = a.clone();
        let contacts = to_json(&a.contacts)?;
        let audit = audit.clone();
        self.tx(move |tx| {
            if let Some(existing) = tx
                .prepare_cached(&format!("SELECT {ACCOUNT_COLS} FROM acme_accounts WHERE tenant = ?1 AND jwk_thumbprint = ?2"))?.query_row(
                    params![a.tenant, a.jwk_thumbprint],
                    account_row,
                )
                .optional()?
            {
                return Ok(NewAccountOutcome::Existing(finish_account(existing)?));
            }
            if !a.eab_key_id.is_empty() {
                let n = tx.prepare_cached("UPDATE acme_eab_keys SET account_id = ?1 WHERE tenant = ?2 AND key_id = ?3 AND account_id = ''")?.execute(
                    params![a.account_id, a.tenant, a.eab_key_id],
                )?;
                if n == 0 {
                    return Err(CoreError::policy(
                        "unauthorized",
                        "this external account key is unknown or already bound to an account",
                    ));
                }
            }
            tx.prepare_cached(&format!("INSERT INTO acme_accounts ({ACCOUNT_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"))?.execute(
                params![
                    a.tenant,
                    a.account_id,
                    a.status,
                    contacts,
                    a.terms_agreed as i64,
                    a.jwk_json,
                    a.jwk_thumbprint,
                    a.eab_key_id,
                    a.created_unix
                ],
            )?;
            append(tx, &audit)?;
            Ok(NewAccountOutcome::Created(a))
        })
    }

    fn account(&self, tenant: &str, account_id: &str) -> Result<Option<AccountRec>> {
        let raw = self.with(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {ACCOUNT_COLS} FROM acme_accounts WHERE tenant = ?1 AND account_id = ?2"
            ))?
            .query_row(params![tenant, account_id], account_row)
            .optional()?)
        })?;
        raw.map(finish_account).transpose()
    }

    fn account_by_thumbprint(&self, tenant: &str, thumbprint: &str) -> Result<Option<AccountRec>> {
        let raw = self.with(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {ACCOUNT_COLS} FROM acme_accounts WHERE tenant = ?1 AND jwk_thumbprint = ?2"
            ))?
            .query_row(params![tenant, thumbprint], account_row)
            .optional()?)
        })?;
        raw.map(finish_account).transpose()
    }

    fn update_account(&self, a: &AccountRec, audit: &AuditEntry) -> Result<()> {
        let a = a.clone();
        let contacts = to_json(&a.contacts)?;
        let audit = audit.clone();
        self.tx(move |tx| {
            // Deactivation is final: a deactivated account is never made valid again here.
            let n = tx
                .prepare_cached(
                    "UPDATE acme_accounts SET contacts = ?1, status = ?2
                 WHERE tenant = ?3 AND account_id = ?4 AND status = 'valid'",
                )?
                .execute(params![contacts, a.status, a.tenant, a.account_id])?;
            if n == 0 {
                return Err(CoreError::policy(
                    "unauthorized",
                    "the account is not valid (deactivated accounts cannot change)",
                ));
            }
            // RFC 8555 §7.3.6: pending operations of a deactivated account are cancelled (its
            // pending authorizations end, so its pending orders become invalid).
            if a.status == "deactivated" {
                tx.prepare_cached(
                    "UPDATE acme_authzs SET status = 'deactivated'
                     WHERE tenant = ?1 AND account_id = ?2 AND status = 'pending'",
                )?
                .execute(params![a.tenant, a.account_id])?;
            }
            append(tx, &audit)?;
            Ok(())
        })
    }

    fn change_account_key(
        &self,
        tenant: &str,
        account_id: &str,
        jwk_json: &str,
        thumbprint: &str,
        audit: &AuditEntry,
    ) -> Result<Option<String>> {
        let (tenant, account_id, jwk_json, thumbprint) = (
            tenant.to_owned(),
            account_id.to_owned(),
            jwk_json.to_owned(),
            thumbprint.to_owned(),
        );
        let audit = audit.clone();
        self.tx(move |tx| {
            let other: Option<String> = tx
                .prepare_cached("SELECT account_id FROM acme_accounts WHERE tenant = ?1 AND jwk_thumbprint = ?2")?.query_row(
                    params![tenant, thumbprint],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(other) = other {
                return Ok(Some(other));
            }
            let n = tx.prepare_cached("UPDATE acme_accounts SET jwk_json = ?1, jwk_thumbprint = ?2
                 WHERE tenant = ?3 AND account_id = ?4 AND status = 'valid'")?.execute(
                params![jwk_json, thumbprint, tenant, account_id],
            )?;
            if n == 0 {
                return Err(CoreError::not_found(
                    "accountDoesNotExist",
                    "no such valid account",
                ));
            }
            append(tx, &audit)?;
            Ok(None)
        })
    }

    fn insert_order(
        &self,
        o: &OrderRec,
        new_authzs: &[AuthzRec],
        audit: &AuditEntry,
    ) -> Result<()> {
        let o = o.clone();
        let ids = to_json(
            &o.identifiers
                .iter()
                .map(|i| (i.kind.clone(), i.value.clone()))
                .collect::<Vec<_>>(),
        )?;
        let authz_ids = to_json(&o.authz_ids)?;
        let authzs = new_authzs.to_vec();
        let audit = audit.clone();
        self.tx(move |tx| {
            for a in &authzs {
                tx.prepare_cached(&format!("INSERT INTO acme_authzs ({AUTHZ_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"))?.execute(
                    params![
                        a.tenant,
                        a.authz_id,
                        a.account_id,
                        a.identifier.kind,
                        a.identifier.value,
                        a.wildcard as i64,
                        a.status,
                        a.expires_unix,
                        a.created_unix
                    ],
                )?;
                tx.prepare_cached(
                    "INSERT INTO acme_authz_orders (tenant, authz_id, order_id) VALUES (?1,?2,?3)",
                )?
                .execute(params![a.tenant, a.authz_id, o.order_id])?;
                for (i, ch) in a.challenges.iter().enumerate() {
                    tx.prepare_cached("INSERT INTO acme_challenges (tenant, challenge_id, authz_id, account_id, idx, kind, status, token, validated_unix, error)
                         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)")?.execute(
                        params![
                            a.tenant,
                            ch.challenge_id,
                            a.authz_id,
                            a.account_id,
                            i as i64,
                            ch.kind,
                            ch.status,
                            ch.token,
                            ch.validated_unix,
                            ch.error
                        ],
                    )?;
                }
            }
            tx.prepare_cached(&format!("INSERT INTO acme_orders ({ORDER_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15)"))?.execute(
                params![
                    o.tenant,
                    o.order_id,
                    o.account_id,
                    o.status,
                    o.expires_unix,
                    ids,
                    authz_ids,
                    o.not_before_unix,
                    o.not_after_unix,
                    o.error,
                    o.certificate_serial_hex,
                    o.profile,
                    o.replaces,
                    o.created_unix,
                    o.csr_der
                ],
            )?;
            append(tx, &audit)?;
            Ok(())
        })
    }

    fn order(&self, tenant: &str, account_id: &str, order_id: &str) -> Result<Option<OrderRec>> {
        let raw = self.with(|c| {
            Ok(c.prepare_cached(&format!("SELECT {ORDER_COLS} FROM acme_orders WHERE tenant = ?1 AND account_id = ?2 AND order_id = ?3"))?.query_row(
                params![tenant, account_id, order_id],
                order_row,
            )
            .optional()?)
        })?;
        raw.map(finish_order).transpose()
    }

    fn order_by_serial(&self, tenant: &str, serial_hex: &str) -> Result<Option<OrderRec>> {
        let raw = self.with(|c| {
            Ok(c.prepare_cached(&format!("SELECT {ORDER_COLS} FROM acme_orders WHERE tenant = ?1 AND certificate_serial_hex = ?2 AND certificate_serial_hex <> ''"))?.query_row(
                params![tenant, serial_hex],
                order_row,
            )
            .optional()?)
        })?;
        raw.map(finish_order).transpose()
    }

    fn order_replacing(
        &self,
        tenant: &str,
        account_id: &str,
        replaces: &str,
    ) -> Result<Option<OrderRec>> {
        let raw = self.with(|c| {
            Ok(c.prepare_cached(&format!("SELECT {ORDER_COLS} FROM acme_orders WHERE tenant = ?1 AND account_id = ?2 AND replaces = ?3 AND status <> 'invalid' LIMIT 1"))?.query_row(
                params![tenant, account_id, replaces],
                order_row,
            )
            .optional()?)
        })?;
        raw.map(finish_order).transpose()
    }

    fn list_orders(
        &self,
        tenant: &str,
        account_id: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<OrderPage> {
        let rows: Vec<(i64, String)> = self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT seq, order_id FROM acme_orders WHERE tenant = ?1 AND account_id = ?2 AND seq < ?3
                 ORDER BY seq DESC LIMIT ?4",
            )?;
            let rows = st
                .query_map(
                    params![
                        tenant,
                        account_id,
                        before.unwrap_or(i64::MAX),
                        (limit + 1) as i64
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        let more = rows.len() > limit;
        let page: Vec<(i64, String)> = rows.into_iter().take(limit).collect();
        Ok(OrderPage {
            next: if more {
                page.last().map(|(s, _)| *s)
            } else {
                None
            },
            order_ids: page.into_iter().map(|(_, id)| id).collect(),
        })
    }

    fn set_order_status(
        &self,
        tenant: &str,
        order_id: &str,
        from: &[&str],
        to: &OrderUpdate,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let (tenant, order_id, to) = (tenant.to_owned(), order_id.to_owned(), to.clone());
        let from = status_in(from);
        let audit = audit.clone();
        self.tx(move |tx| {
            let n = tx
                .prepare_cached(&format!(
                    "UPDATE acme_orders SET status = ?1, error = ?2, certificate_serial_hex = ?3,
                       csr_der = CASE WHEN length(?6) > 0 THEN ?6 ELSE csr_der END
                     WHERE tenant = ?4 AND order_id = ?5 AND status IN ({from})"
                ))?
                .execute(params![
                    to.status,
                    to.error,
                    to.certificate_serial_hex,
                    tenant,
                    order_id,
                    to.csr_der
                ])?;
            if n == 0 {
                return Ok(false);
            }
            append(tx, &audit)?;
            Ok(true)
        })
    }

    fn authz(&self, tenant: &str, account_id: &str, authz_id: &str) -> Result<Option<AuthzRec>> {
        self.with(|c| authz_in(c, tenant, account_id, authz_id))
    }

    fn reusable_authz(
        &self,
        tenant: &str,
        account_id: &str,
        identifier: &IdentRec,
        wildcard: bool,
        min_expires: i64,
    ) -> Result<Option<AuthzRec>> {
        self.with(|c| {
            let id: Option<String> = c
                .prepare_cached("SELECT authz_id FROM acme_authzs WHERE tenant = ?1 AND account_id = ?2
                       AND id_type = ?3 AND id_value = ?4 AND wildcard = ?5
                       AND status IN ('valid', 'pending') AND expires_unix > ?6
                     ORDER BY CASE status WHEN 'valid' THEN 0 ELSE 1 END, expires_unix DESC LIMIT 1")?.query_row(
                    params![
                        tenant,
                        account_id,
                        identifier.kind,
                        identifier.value,
                        wildcard as i64,
                        min_expires
                    ],
                    |r| r.get(0),
                )
                .optional()?;
            match id {
                Some(id) => authz_in(c, tenant, account_id, &id),
                None => Ok(None),
            }
        })
    }

    fn authz_of_challenge(
        &self,
        tenant: &str,
        account_id: &str,
        challenge_id: &str,
    ) -> Result<Option<(AuthzRec, usize)>> {
        self.with(|c| {
            let id: Option<String> = c
                .prepare_cached("SELECT authz_id FROM acme_challenges WHERE tenant = ?1 AND account_id = ?2 AND challenge_id = ?3")?.query_row(
                    params![tenant, account_id, challenge_id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = id else { return Ok(None) };
            let Some(a) = authz_in(c, tenant, account_id, &id)? else {
                return Ok(None);
            };
            let idx = a
                .challenges
                .iter()
                .position(|ch| ch.challenge_id == challenge_id)
                .ok_or_else(|| CoreError::Store("challenge without its authorization".into()))?;
            Ok(Some((a, idx)))
        })
    }

    fn start_challenge(
        &self,
        tenant: &str,
        authz_id: &str,
        challenge_id: &str,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let (tenant, authz_id, challenge_id) = (
            tenant.to_owned(),
            authz_id.to_owned(),
            challenge_id.to_owned(),
        );
        let audit = audit.clone();
        self.tx(move |tx| {
            let n = tx.prepare_cached("UPDATE acme_challenges SET status = 'processing'
                 WHERE tenant = ?1 AND authz_id = ?2 AND challenge_id = ?3 AND status = 'pending'
                   AND EXISTS (SELECT 1 FROM acme_authzs WHERE tenant = ?1 AND authz_id = ?2 AND status = 'pending')
                   AND NOT EXISTS (SELECT 1 FROM acme_challenges WHERE tenant = ?1 AND authz_id = ?2 AND status = 'processing')")?.execute(
                params![tenant, authz_id, challenge_id],
            )?;
            if n == 0 {
                return Ok(false);
            }
            append(tx, &audit)?;
            Ok(true)
        })
    }

    fn finish_challenge(
        &self,
        tenant: &str,
        authz_id: &str,
        challenge_id: &str,
        result: &ChallengeResult,
        audit: &AuditEntry,
    ) -> Result<Option<String>> {
        let (tenant, authz_id, challenge_id) = (
            tenant.to_owned(),
            authz_id.to_owned(),
            challenge_id.to_owned(),
        );
        let result = result.clone();
        let audit = audit.clone();
        self.tx(move |tx| {
            let status = if result.valid { "valid" } else { "invalid" };
            let n = tx.prepare_cached("UPDATE acme_challenges SET status = ?1, validated_unix = ?2, error = ?3
                 WHERE tenant = ?4 AND authz_id = ?5 AND challenge_id = ?6 AND status = 'processing'")?.execute(
                params![
                    status,
                    if result.valid { result.now } else { 0 },
                    result.error,
                    tenant,
                    authz_id,
                    challenge_id
                ],
            )?;
            if n == 0 {
                return Ok(None);
            }
            if !result.valid {
                tx.prepare_cached("UPDATE acme_authzs SET status = 'invalid'
                     WHERE tenant = ?1 AND authz_id = ?2 AND status = 'pending'")?.execute(
                    params![tenant, authz_id],
                )?;
                append(tx, &audit)?;
                return Ok(None);
            }
            let n = tx.prepare_cached("UPDATE acme_authzs SET status = 'valid', expires_unix = ?1
                 WHERE tenant = ?2 AND authz_id = ?3 AND status = 'pending'")?.execute(
                params![result.valid_until, tenant, authz_id],
            )?;
            append(tx, &audit)?;
            if n == 0 {
                return Ok(None);
            }
            ready_creating_order(tx, &tenant, &authz_id, result.now, &audit.actor)
        })
    }

    fn set_authz_status(
        &self,
        tenant: &str,
        authz_id: &str,
        from: &[&str],
        to: &str,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let (tenant, authz_id, to) = (tenant.to_owned(), authz_id.to_owned(), to.to_owned());
        let from = status_in(from);
        let audit = audit.clone();
        self.tx(move |tx| {
            let n = tx.prepare_cached(&format!(
                    "UPDATE acme_authzs SET status = ?1 WHERE tenant = ?2 AND authz_id = ?3 AND status IN ({from})"
                ))?.execute(
                params![to, tenant, authz_id],
            )?;
            if n == 0 {
                return Ok(false);
            }
            append(tx, &audit)?;
            Ok(true)
        })
    }
}

/// The fold of [`AcmeStore::finish_challenge`]: the order that created `authz_id`, pending →
/// ready when it is ready at `now` ([`order_ready_at`]), with its audit record.
fn ready_creating_order(
    tx: &Connection,
    tenant: &str,
    authz_id: &str,
    now: i64,
    actor: &str,
) -> Result<Option<String>> {
    let Some(order_id): Option<String> = tx
        .prepare_cached(
            "SELECT order_id FROM acme_authz_orders WHERE tenant = ?1 AND authz_id = ?2",
        )?
        .query_row(params![tenant, authz_id], |r| r.get(0))
        .optional()?
    else {
        return Ok(None);
    };
    let Some((status, expires, authz_ids)): Option<(String, i64, String)> = tx
        .prepare_cached(
            "SELECT status, expires_unix, authz_ids FROM acme_orders WHERE tenant = ?1 AND order_id = ?2",
        )?
        .query_row(params![tenant, order_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?
    else {
        return Ok(None);
    };
    if status != "pending" {
        return Ok(None);
    }
    let ids: Vec<String> = serde_json::from_str(&authz_ids).map_err(json_err)?;
    let mut authzs = Vec::with_capacity(ids.len());
    {
        let mut st = tx.prepare_cached(
            "SELECT status, expires_unix FROM acme_authzs WHERE tenant = ?1 AND authz_id = ?2",
        )?;
        for id in &ids {
            match st
                .query_row(params![tenant, id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
            {
                Some(a) => authzs.push(a),
                None => return Ok(None),
            }
        }
    }
    if !order_ready_at(now, expires, authzs) {
        return Ok(None);
    }
    let n = tx
        .prepare_cached(
            "UPDATE acme_orders SET status = 'ready' WHERE tenant = ?1 AND order_id = ?2 AND status = 'pending'",
        )?
        .execute(params![tenant, order_id])?;
    if n == 0 {
        return Ok(None);
    }
    append(tx, &order_ready_audit(tenant, actor, &order_id))?;
    Ok(Some(order_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn audit() -> AuditEntry {
        AuditEntry::new("test", "t", "test", serde_json::json!({}))
    }

    fn account(tenant: &str, id: &str, tp: &str, eab: &str) -> AccountRec {
        AccountRec {
            tenant: tenant.into(),
            account_id: id.into(),
            status: "valid".into(),
            contacts: vec!["mailto:a@example.org".into()],
            terms_agreed: true,
            jwk_json: "{}".into(),
            jwk_thumbprint: tp.into(),
            eab_key_id: eab.into(),
            created_unix: 1,
        }
    }

    fn authz(tenant: &str, account: &str, id: &str, name: &str) -> AuthzRec {
        AuthzRec {
            tenant: tenant.into(),
            authz_id: id.into(),
            account_id: account.into(),
            identifier: IdentRec {
                kind: "dns".into(),
                value: name.into(),
            },
            wildcard: false,
            status: "pending".into(),
            expires_unix: 1_000,
            challenges: ["http-01", "dns-01"]
                .iter()
                .map(|k| ChallengeRec {
                    challenge_id: format!("{id}-{k}"),
                    kind: (*k).into(),
                    status: "pending".into(),
                    token: format!("tok-{id}-{k}"),
                    validated_unix: 0,
                    error: Vec::new(),
                })
                .collect(),
            created_unix: 1,
        }
    }

    fn order(tenant: &str, account: &str, id: &str, authzs: &[&str]) -> OrderRec {
        OrderRec {
            tenant: tenant.into(),
            order_id: id.into(),
            account_id: account.into(),
            status: "pending".into(),
            expires_unix: 1_000,
            identifiers: vec![IdentRec {
                kind: "dns".into(),
                value: "a.example".into(),
            }],
            authz_ids: authzs.iter().map(|s| (*s).to_owned()).collect(),
            not_before_unix: 0,
            not_after_unix: 0,
            error: Vec::new(),
            certificate_serial_hex: String::new(),
            profile: "tls-server".into(),
            replaces: String::new(),
            created_unix: 1,
            csr_der: Vec::new(),
        }
    }

    /// I-4: another account or tenant finds nothing of account A's, by any lookup.
    #[test]
    fn other_accounts_and_tenants_cannot_see_orders_authorizations_or_challenges() {
        let s = SqliteStore::in_memory().expect("store");
        s.create_account(&account("ta", "A", "tpA", ""), &audit())
            .expect("A");
        s.create_account(&account("ta", "B", "tpB", ""), &audit())
            .expect("B");
        s.insert_order(
            &order("ta", "A", "o1", &["z1"]),
            &[authz("ta", "A", "z1", "a.example")],
            &audit(),
        )
        .expect("order");
        assert!(s.order("ta", "A", "o1").expect("q").is_some());
        assert!(s.authz("ta", "A", "z1").expect("q").is_some());
        for (tenant, acct) in [("ta", "B"), ("tb", "A")] {
            assert!(s.order(tenant, acct, "o1").expect("q").is_none());
            assert!(s.authz(tenant, acct, "z1").expect("q").is_none());
            assert!(
                s.authz_of_challenge(tenant, acct, "z1-http-01")
                    .expect("q")
                    .is_none()
            );
            assert!(
                s.reusable_authz(
                    tenant,
                    acct,
                    &IdentRec {
                        kind: "dns".into(),
                        value: "a.example".into()
                    },
                    false,
                    0
                )
                .expect("q")
                .is_none()
            );
            assert!(
                s.list_orders(tenant, acct, None, 10)
                    .expect("q")
                    .order_ids
                    .is_empty()
            );
        }
        assert!(s.account("tb", "A").expect("q").is_none());
    }

    /// One account per key per tenant; the same key in another tenant is another account.
    #[test]
    fn a_key_has_one_account_per_tenant() {
        let s = SqliteStore::in_memory().expect("store");
        let first = s
            .create_account(&account("ta", "A", "tp", ""), &audit())
            .expect("A");
        assert!(matches!(first, NewAccountOutcome::Created(_)));
        let again = s
            .create_account(&account("ta", "A2", "tp", ""), &audit())
            .expect("A2");
        assert!(matches!(again, NewAccountOutcome::Existing(a) if a.account_id == "A"));
        let other = s
            .create_account(&account("tb", "A3", "tp", ""), &audit())
            .expect("A3");
        assert!(matches!(other, NewAccountOutcome::Created(_)));
    }

    /// Challenge and authorization transitions are compare-and-set: one start wins, a result
    /// moves the authorization, and a valid authorization starts no further validation.
    #[test]
    fn challenge_start_and_finish_are_compare_and_set() {
        let s = SqliteStore::in_memory().expect("store");
        s.create_account(&account("ta", "A", "tp", ""), &audit())
            .expect("A");
        s.insert_order(
            &order("ta", "A", "o1", &["z1"]),
            &[authz("ta", "A", "z1", "a.example")],
            &audit(),
        )
        .expect("order");
        let before = s.audit_records().expect("audit").len();
        assert!(
            s.start_challenge("ta", "z1", "z1-http-01", &audit())
                .expect("start")
        );
        assert!(
            !s.start_challenge("ta", "z1", "z1-http-01", &audit())
                .expect("again"),
            "a second start loses"
        );
        assert!(
            !s.start_challenge("ta", "z1", "z1-dns-01", &audit())
                .expect("other"),
            "one challenge at a time per authorization"
        );
        let ready = s
            .finish_challenge(
                "ta",
                "z1",
                "z1-http-01",
                &ChallengeResult {
                    valid: true,
                    now: 5,
                    valid_until: 2_000,
                    error: Vec::new(),
                },
                &audit(),
            )
            .expect("finish");
        assert_eq!(
            ready.as_deref(),
            Some("o1"),
            "its only authorization is valid"
        );
        let o = s.order("ta", "A", "o1").expect("q").expect("order");
        assert_eq!(o.status, "ready");
        let a = s.authz("ta", "A", "z1").expect("q").expect("authz");
        assert_eq!(a.status, "valid");
        assert_eq!(a.expires_unix, 2_000);
        assert_eq!(a.challenges[0].status, "valid");
        assert_eq!(a.challenges[0].validated_unix, 5);
        assert!(
            !s.start_challenge("ta", "z1", "z1-dns-01", &audit())
                .expect("after")
        );
        // start, finish and the order's move to ready each audited in their transaction (the
        // last two in one); the losers wrote nothing.
        let records = s.audit_records().expect("audit");
        assert_eq!(records.len(), before + 3);
        let last = records.last().expect("a record");
        assert_eq!(last.kind, "acme.order.status");
        assert!(
            last.details.contains("\"to\":\"ready\""),
            "{}",
            last.details
        );
        // The same result again changes nothing and records nothing.
        let again = s
            .finish_challenge(
                "ta",
                "z1",
                "z1-http-01",
                &ChallengeResult {
                    valid: true,
                    now: 6,
                    valid_until: 3_000,
                    error: Vec::new(),
                },
                &audit(),
            )
            .expect("again");
        assert_eq!(again, None);
        assert_eq!(s.audit_records().expect("audit").len(), before + 3);
        // Another tenant cannot start it.
        assert!(
            !s.start_challenge("tb", "z1", "z1-dns-01", &audit())
                .expect("tb")
        );
    }

    /// Finalize's ready → processing is taken once.
    fn valid_at(now: i64) -> ChallengeResult {
        ChallengeResult {
            valid: true,
            now,
            valid_until: 2_000,
            error: Vec::new(),
        }
    }

    #[test]
    fn a_validation_makes_its_order_ready_only_when_every_authorization_is_valid() {
        let s = SqliteStore::in_memory().expect("store");
        s.create_account(&account("ta", "A", "tp", ""), &audit())
            .expect("A");
        // o1 creates z1 and z2; o2 reuses z1 and creates z3; o3 (expiring at 1,000) creates z4.
        s.insert_order(
            &order("ta", "A", "o1", &["z1", "z2"]),
            &[
                authz("ta", "A", "z1", "a.example"),
                authz("ta", "A", "z2", "b.example"),
            ],
            &audit(),
        )
        .expect("o1");
        s.insert_order(
            &order("ta", "A", "o2", &["z1", "z3"]),
            &[authz("ta", "A", "z3", "c.example")],
            &audit(),
        )
        .expect("o2");
        s.insert_order(
            &order("ta", "A", "o3", &["z4"]),
            &[authz("ta", "A", "z4", "d.example")],
            &audit(),
        )
        .expect("o3");
        let status = |id: &str| s.order("ta", "A", id).expect("q").expect("order").status;
        let finish = |z: &str, r: &ChallengeResult| {
            let ch = format!("{z}-http-01");
            assert!(s.start_challenge("ta", z, &ch, &audit()).expect("start"));
            s.finish_challenge("ta", z, &ch, r, &audit())
                .expect("finish")
        };
        assert_eq!(finish("z1", &valid_at(5)), None, "z2 is still pending");
        assert_eq!(status("o1"), "pending");
        assert_eq!(finish("z2", &valid_at(5)), Some("o1".into()));
        assert_eq!(status("o1"), "ready");
        // o2 only reuses z1: its own z3 becoming valid makes it ready (all valid), and nothing
        // else ever moves it but readers.
        assert_eq!(finish("z3", &valid_at(5)), Some("o2".into()));
        assert_eq!(status("o2"), "ready");
        // An expired order is not made ready (readers make it invalid).
        assert_eq!(finish("z4", &valid_at(1_000)), None);
        assert_eq!(status("o3"), "pending");
        // An invalid result makes nothing ready.
        s.insert_order(
            &order("ta", "A", "o4", &["z5"]),
            &[authz("ta", "A", "z5", "e.example")],
            &audit(),
        )
        .expect("o4");
        let invalid = ChallengeResult {
            valid: false,
            now: 5,
            valid_until: 0,
            error: b"problem".to_vec(),
        };
        assert_eq!(finish("z5", &invalid), None);
        assert_eq!(status("o4"), "pending");
    }

    #[test]
    fn order_status_compare_and_set_takes_ready_once() {
        let s = SqliteStore::in_memory().expect("store");
        s.insert_order(&order("ta", "A", "o1", &[]), &[], &audit())
            .expect("order");
        let to = |st: &str| OrderUpdate {
            status: st.into(),
            ..OrderUpdate::default()
        };
        assert!(
            s.set_order_status("ta", "o1", &["pending"], &to("ready"), &audit())
                .expect("ready")
        );
        assert!(
            s.set_order_status("ta", "o1", &["ready"], &to("processing"), &audit())
                .expect("p1")
        );
        assert!(
            !s.set_order_status("ta", "o1", &["ready"], &to("processing"), &audit())
                .expect("p2")
        );
        assert!(
            !s.set_order_status("tb", "o1", &["processing"], &to("valid"), &audit())
                .expect("other tenant")
        );
        assert_eq!(
            s.order("ta", "A", "o1").expect("q").expect("o").status,
            "processing"
        );
    }

    /// An EAB key binds exactly one account, in the account's transaction.
    #[test]
    fn eab_key_binds_one_account() {
        let s = SqliteStore::in_memory().expect("store");
        s.insert_eab_key(
            &EabKey {
                tenant: "ta".into(),
                key_id: "k1".into(),
                key: Zeroizing::new(vec![1; 32]),
                account_id: String::new(),
                created_unix: 0,
            },
            &audit(),
        )
        .expect("key");
        s.create_account(&account("ta", "A", "tpA", "k1"), &audit())
            .expect("A binds");
        assert_eq!(
            s.eab_key("ta", "k1").expect("q").expect("k").account_id,
            "A"
        );
        let e = s
            .create_account(&account("ta", "B", "tpB", "k1"), &audit())
            .expect_err("reuse");
        assert!(matches!(
            e,
            CoreError::Policy {
                rule: "unauthorized",
                ..
            }
        ));
        assert!(
            s.account("ta", "B").expect("q").is_none(),
            "nothing created"
        );
        let e = s
            .create_account(&account("ta", "C", "tpC", "nope"), &audit())
            .expect_err("unknown");
        assert!(matches!(e, CoreError::Policy { .. }));
        assert!(s.eab_key("tb", "k1").expect("q").is_none());
    }
}
