//! [`AcmeStore`] on PostgreSQL (migration 2): the SQLite store's semantics, made safe for several
//! cores writing at once. Every call is scoped to its tenant (row-level security); transitions
//! that race are compare-and-set `UPDATE ... WHERE status = ANY(...)` (PostgreSQL re-checks the
//! condition on the latest row version after waiting for a concurrent writer), and starting a
//! challenge locks its authorization row first so two cores cannot start two challenges of one
//! authorization.

use tokio_postgres::Row;
use zeroize::Zeroizing;

use super::acme::{
    AccountRec, AcmeSettings, AcmeStore, AuthzRec, ChallengeRec, ChallengeResult, EabKey, IdentRec,
    NewAccountOutcome, OrderPage, OrderRec, OrderUpdate, order_ready_at, order_ready_audit,
};
use super::pg::{PgStore, append, col, db, in_tx, tenant_scope};
use crate::audit::AuditEntry;
use crate::error::{CoreError, Result};

fn json_err(e: serde_json::Error) -> CoreError {
    CoreError::Store(format!("stored JSON: {e}"))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(json_err)
}

const ACCOUNT_COLS: &str = "tenant, account_id, status, contacts, terms_agreed, jwk_json, jwk_thumbprint, eab_key_id, created_unix";

fn account_row(r: &Row) -> Result<AccountRec> {
    let contacts: String = col(r, 3)?;
    Ok(AccountRec {
        tenant: col(r, 0)?,
        account_id: col(r, 1)?,
        status: col(r, 2)?,
        contacts: serde_json::from_str(&contacts).map_err(json_err)?,
        terms_agreed: col(r, 4)?,
        jwk_json: col(r, 5)?,
        jwk_thumbprint: col(r, 6)?,
        eab_key_id: col(r, 7)?,
        created_unix: col(r, 8)?,
    })
}

const ORDER_COLS: &str = "tenant, order_id, account_id, status, expires_unix, identifiers, authz_ids, not_before_unix, not_after_unix, error, certificate_serial_hex, profile, replaces, created_unix, csr_der";

fn order_row(r: &Row) -> Result<OrderRec> {
    let ids: String = col(r, 5)?;
    let authzs: String = col(r, 6)?;
    let ids: Vec<(String, String)> = serde_json::from_str(&ids).map_err(json_err)?;
    Ok(OrderRec {
        tenant: col(r, 0)?,
        order_id: col(r, 1)?,
        account_id: col(r, 2)?,
        status: col(r, 3)?,
        expires_unix: col(r, 4)?,
        identifiers: ids
            .into_iter()
            .map(|(kind, value)| IdentRec { kind, value })
            .collect(),
        authz_ids: serde_json::from_str(&authzs).map_err(json_err)?,
        not_before_unix: col(r, 7)?,
        not_after_unix: col(r, 8)?,
        error: col(r, 9)?,
        certificate_serial_hex: col(r, 10)?,
        profile: col(r, 11)?,
        replaces: col(r, 12)?,
        created_unix: col(r, 13)?,
        csr_der: col(r, 14)?,
    })
}

const AUTHZ_COLS: &str =
    "tenant, authz_id, account_id, id_type, id_value, wildcard, status, expires_unix, created_unix";

fn authz_row(r: &Row) -> Result<AuthzRec> {
    Ok(AuthzRec {
        tenant: col(r, 0)?,
        authz_id: col(r, 1)?,
        account_id: col(r, 2)?,
        identifier: IdentRec {
            kind: col(r, 3)?,
            value: col(r, 4)?,
        },
        wildcard: col(r, 5)?,
        status: col(r, 6)?,
        expires_unix: col(r, 7)?,
        challenges: Vec::new(),
        created_unix: col(r, 8)?,
    })
}

async fn authz_in(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    account_id: &str,
    authz_id: &str,
) -> Result<Option<AuthzRec>> {
    let Some(row) = tx
        .query_opt(
            &format!(
                "SELECT {AUTHZ_COLS} FROM acme_authzs
                 WHERE tenant = $1 AND account_id = $2 AND authz_id = $3"
            ),
            &[&tenant, &account_id, &authz_id],
        )
        .await
        .map_err(db)?
    else {
        return Ok(None);
    };
    let mut a = authz_row(&row)?;
    let rows = tx
        .query(
            "SELECT challenge_id, kind, status, token, validated_unix, error FROM acme_challenges
             WHERE tenant = $1 AND authz_id = $2 ORDER BY idx",
            &[&a.tenant, &a.authz_id],
        )
        .await
        .map_err(db)?;
    a.challenges = rows
        .iter()
        .map(|r| {
            Ok(ChallengeRec {
                challenge_id: col(r, 0)?,
                kind: col(r, 1)?,
                status: col(r, 2)?,
                token: col(r, 3)?,
                validated_unix: col(r, 4)?,
                error: col(r, 5)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Some(a))
}

fn owned(from: &[&str]) -> Vec<String> {
    from.iter().map(|s| (*s).to_owned()).collect()
}

impl AcmeStore for PgStore {
    fn acme_settings(&self, tenant: &str) -> Result<Option<AcmeSettings>> {
        let tenant = tenant.to_owned();
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let Some(r) = tx
                .query_opt(
                    "SELECT terms_of_service, website, caa_identities, eab_required
                     FROM acme_settings WHERE tenant = $1",
                    &[&tenant],
                )
                .await
                .map_err(db)?
            else {
                return Ok(None);
            };
            let caa: String = col(&r, 2)?;
            Ok(Some(AcmeSettings {
                tenant: tenant.clone(),
                terms_of_service: col(&r, 0)?,
                website: col(&r, 1)?,
                caa_identities: serde_json::from_str(&caa).map_err(json_err)?,
                external_account_required: col(&r, 3)?,
            }))
        })
    }

    fn put_acme_settings(&self, s: &AcmeSettings, audit: &AuditEntry) -> Result<()> {
        let (s, audit) = (s.clone(), audit.clone());
        let caa = to_json(&s.caa_identities)?;
        in_tx!(self, tenant_scope(&s.tenant), |tx| {
            tx.execute(
                "INSERT INTO acme_settings (tenant, terms_of_service, website, caa_identities, eab_required)
                 VALUES ($1,$2,$3,$4,$5)
                 ON CONFLICT (tenant) DO UPDATE SET terms_of_service = excluded.terms_of_service,
                   website = excluded.website, caa_identities = excluded.caa_identities,
                   eab_required = excluded.eab_required",
                &[
                    &s.tenant,
                    &s.terms_of_service,
                    &s.website,
                    &caa,
                    &s.external_account_required,
                ],
            )
            .await
            .map_err(db)?;
            append(&tx, &audit).await?;
            Ok(())
        })
    }

    fn insert_eab_key(&self, k: &EabKey, audit: &AuditEntry) -> Result<()> {
        let (tenant, key_id, created) = (k.tenant.clone(), k.key_id.clone(), k.created_unix);
        let key = k.key.clone();
        let audit = audit.clone();
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let n = tx
                .execute(
                    "INSERT INTO acme_eab_keys (tenant, key_id, hmac_key, account_id, created_unix)
                     VALUES ($1,$2,$3,'',$4) ON CONFLICT DO NOTHING",
                    &[&tenant, &key_id, &key.as_slice(), &created],
                )
                .await
                .map_err(db)?;
            if n == 0 {
                return Err(CoreError::exists(
                    "acme.eab_key_exists",
                    "EAB key id exists",
                ));
            }
            append(&tx, &audit).await?;
            Ok(())
        })
    }

    fn eab_key(&self, tenant: &str, key_id: &str) -> Result<Option<EabKey>> {
        let (tenant, key_id) = (tenant.to_owned(), key_id.to_owned());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let Some(r) = tx
                .query_opt(
                    "SELECT hmac_key, account_id, created_unix FROM acme_eab_keys
                     WHERE tenant = $1 AND key_id = $2",
                    &[&tenant, &key_id],
                )
                .await
                .map_err(db)?
            else {
                return Ok(None);
            };
            Ok(Some(EabKey {
                tenant: tenant.clone(),
                key_id: key_id.clone(),
                key: Zeroizing::new(col::<Vec<u8>>(&r, 0)?),
                account_id: col(&r, 1)?,
                created_unix: col(&r, 2)?,
            }))
        })
    }

    fn create_account(&self, a: &AccountRec, audit: &AuditEntry) -> Result<NewAccountOutcome> {
        let (a, audit) = (a.clone(), audit.clone());
        let contacts = to_json(&a.contacts)?;
        in_tx!(self, tenant_scope(&a.tenant), |tx| {
            // The key's account, whichever core created it first (UNIQUE (tenant, thumbprint)).
            let inserted = tx
                .query_opt(
                    &format!(
                        "INSERT INTO acme_accounts ({ACCOUNT_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)
                         ON CONFLICT DO NOTHING RETURNING 1"
                    ),
                    &[
                        &a.tenant,
                        &a.account_id,
                        &a.status,
                        &contacts,
                        &a.terms_agreed,
                        &a.jwk_json,
                        &a.jwk_thumbprint,
                        &a.eab_key_id,
                        &a.created_unix,
                    ],
                )
                .await
                .map_err(db)?;
            if inserted.is_none() {
                let existing = tx
                    .query_opt(
                        &format!(
                            "SELECT {ACCOUNT_COLS} FROM acme_accounts
                             WHERE tenant = $1 AND jwk_thumbprint = $2"
                        ),
                        &[&a.tenant, &a.jwk_thumbprint],
                    )
                    .await
                    .map_err(db)?
                    .ok_or_else(|| CoreError::Store("account id collision".into()))?;
                return Ok(NewAccountOutcome::Existing(account_row(&existing)?));
            }
            if !a.eab_key_id.is_empty() {
                let n = tx
                    .execute(
                        "UPDATE acme_eab_keys SET account_id = $1
                         WHERE tenant = $2 AND key_id = $3 AND account_id = ''",
                        &[&a.account_id, &a.tenant, &a.eab_key_id],
                    )
                    .await
                    .map_err(db)?;
                if n == 0 {
                    // Returning Err rolls the account insert back.
                    return Err(CoreError::policy(
                        "unauthorized",
                        "this external account key is unknown or already bound to an account",
                    ));
                }
            }
            append(&tx, &audit).await?;
            Ok(NewAccountOutcome::Created(a.clone()))
        })
    }

    fn account(&self, tenant: &str, account_id: &str) -> Result<Option<AccountRec>> {
        let (tenant, id) = (tenant.to_owned(), account_id.to_owned());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.query_opt(
                &format!(
                    "SELECT {ACCOUNT_COLS} FROM acme_accounts WHERE tenant = $1 AND account_id = $2"
                ),
                &[&tenant, &id],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(account_row)
            .transpose()
        })
    }

    fn account_by_thumbprint(&self, tenant: &str, thumbprint: &str) -> Result<Option<AccountRec>> {
        let (tenant, tp) = (tenant.to_owned(), thumbprint.to_owned());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.query_opt(
                &format!(
                    "SELECT {ACCOUNT_COLS} FROM acme_accounts WHERE tenant = $1 AND jwk_thumbprint = $2"
                ),
                &[&tenant, &tp],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(account_row)
            .transpose()
        })
    }

    fn update_account(&self, a: &AccountRec, audit: &AuditEntry) -> Result<()> {
        let (a, audit) = (a.clone(), audit.clone());
        let contacts = to_json(&a.contacts)?;
        in_tx!(self, tenant_scope(&a.tenant), |tx| {
            // Deactivation is final: a deactivated account is never made valid again here.
            let n = tx
                .execute(
                    "UPDATE acme_accounts SET contacts = $1, status = $2
                     WHERE tenant = $3 AND account_id = $4 AND status = 'valid'",
                    &[&contacts, &a.status, &a.tenant, &a.account_id],
                )
                .await
                .map_err(db)?;
            if n == 0 {
                return Err(CoreError::policy(
                    "unauthorized",
                    "the account is not valid (deactivated accounts cannot change)",
                ));
            }
            // RFC 8555 §7.3.6: a deactivated account's pending authorizations end.
            if a.status == "deactivated" {
                tx.execute(
                    "UPDATE acme_authzs SET status = 'deactivated'
                     WHERE tenant = $1 AND account_id = $2 AND status = 'pending'",
                    &[&a.tenant, &a.account_id],
                )
                .await
                .map_err(db)?;
            }
            append(&tx, &audit).await?;
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
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let other = tx
                .query_opt(
                    "SELECT account_id FROM acme_accounts WHERE tenant = $1 AND jwk_thumbprint = $2",
                    &[&tenant, &thumbprint],
                )
                .await
                .map_err(db)?;
            if let Some(r) = other {
                return Ok(Some(col(&r, 0)?));
            }
            // A concurrent key change to the same key on another core loses on the unique key.
            let n = tx
                .execute(
                    "UPDATE acme_accounts SET jwk_json = $1, jwk_thumbprint = $2
                     WHERE tenant = $3 AND account_id = $4 AND status = 'valid'",
                    &[&jwk_json, &thumbprint, &tenant, &account_id],
                )
                .await
                .map_err(db)?;
            if n == 0 {
                return Err(CoreError::not_found(
                    "accountDoesNotExist",
                    "no such valid account",
                ));
            }
            append(&tx, &audit).await?;
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
        let (authzs, audit) = (new_authzs.to_vec(), audit.clone());
        in_tx!(self, tenant_scope(&o.tenant), |tx| {
            for a in &authzs {
                tx.execute(
                    &format!(
                        "INSERT INTO acme_authzs ({AUTHZ_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"
                    ),
                    &[
                        &a.tenant,
                        &a.authz_id,
                        &a.account_id,
                        &a.identifier.kind,
                        &a.identifier.value,
                        &a.wildcard,
                        &a.status,
                        &a.expires_unix,
                        &a.created_unix,
                    ],
                )
                .await
                .map_err(db)?;
                tx.execute(
                    "INSERT INTO acme_authz_orders (tenant, authz_id, order_id) VALUES ($1,$2,$3)",
                    &[&a.tenant, &a.authz_id, &o.order_id],
                )
                .await
                .map_err(db)?;
                for (i, ch) in a.challenges.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO acme_challenges (tenant, challenge_id, authz_id, account_id,
                           idx, kind, status, token, validated_unix, error)
                         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
                        &[
                            &a.tenant,
                            &ch.challenge_id,
                            &a.authz_id,
                            &a.account_id,
                            &(i as i64),
                            &ch.kind,
                            &ch.status,
                            &ch.token,
                            &ch.validated_unix,
                            &ch.error,
                        ],
                    )
                    .await
                    .map_err(db)?;
                }
            }
            tx.execute(
                &format!(
                    "INSERT INTO acme_orders ({ORDER_COLS})
                     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)"
                ),
                &[
                    &o.tenant,
                    &o.order_id,
                    &o.account_id,
                    &o.status,
                    &o.expires_unix,
                    &ids,
                    &authz_ids,
                    &o.not_before_unix,
                    &o.not_after_unix,
                    &o.error,
                    &o.certificate_serial_hex,
                    &o.profile,
                    &o.replaces,
                    &o.created_unix,
                    &o.csr_der,
                ],
            )
            .await
            .map_err(db)?;
            append(&tx, &audit).await?;
            Ok(())
        })
    }

    fn order(&self, tenant: &str, account_id: &str, order_id: &str) -> Result<Option<OrderRec>> {
        let (tenant, account, id) = (
            tenant.to_owned(),
            account_id.to_owned(),
            order_id.to_owned(),
        );
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.query_opt(
                &format!(
                    "SELECT {ORDER_COLS} FROM acme_orders
                     WHERE tenant = $1 AND account_id = $2 AND order_id = $3"
                ),
                &[&tenant, &account, &id],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(order_row)
            .transpose()
        })
    }

    fn order_by_serial(&self, tenant: &str, serial_hex: &str) -> Result<Option<OrderRec>> {
        let (tenant, serial) = (tenant.to_owned(), serial_hex.to_owned());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.query_opt(
                &format!(
                    "SELECT {ORDER_COLS} FROM acme_orders
                     WHERE tenant = $1 AND certificate_serial_hex = $2
                       AND certificate_serial_hex <> '' LIMIT 1"
                ),
                &[&tenant, &serial],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(order_row)
            .transpose()
        })
    }

    fn order_replacing(
        &self,
        tenant: &str,
        account_id: &str,
        replaces: &str,
    ) -> Result<Option<OrderRec>> {
        let (tenant, account, replaces) = (
            tenant.to_owned(),
            account_id.to_owned(),
            replaces.to_owned(),
        );
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.query_opt(
                &format!(
                    "SELECT {ORDER_COLS} FROM acme_orders
                     WHERE tenant = $1 AND account_id = $2 AND replaces = $3
                       AND status <> 'invalid' LIMIT 1"
                ),
                &[&tenant, &account, &replaces],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(order_row)
            .transpose()
        })
    }

    fn list_orders(
        &self,
        tenant: &str,
        account_id: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<OrderPage> {
        let (tenant, account) = (tenant.to_owned(), account_id.to_owned());
        let (before, fetch) = (before.unwrap_or(i64::MAX), limit as i64 + 1);
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let rows = tx
                .query(
                    "SELECT seq, order_id FROM acme_orders
                     WHERE tenant = $1 AND account_id = $2 AND seq < $3
                     ORDER BY seq DESC LIMIT $4",
                    &[&tenant, &account, &before, &fetch],
                )
                .await
                .map_err(db)?;
            let rows: Vec<(i64, String)> = rows
                .iter()
                .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
                .collect::<Result<_>>()?;
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
        let (tenant, order_id, to, audit) = (
            tenant.to_owned(),
            order_id.to_owned(),
            to.clone(),
            audit.clone(),
        );
        let from = owned(from);
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let n = tx
                .execute(
                    "UPDATE acme_orders SET status = $1, error = $2, certificate_serial_hex = $3,
                       csr_der = CASE WHEN octet_length($6::bytea) > 0 THEN $6::bytea ELSE csr_der END
                     WHERE tenant = $4 AND order_id = $5 AND status = ANY($7)",
                    &[
                        &to.status,
                        &to.error,
                        &to.certificate_serial_hex,
                        &tenant,
                        &order_id,
                        &to.csr_der,
                        &from,
                    ],
                )
                .await
                .map_err(db)?;
            if n == 0 {
                return Ok(false);
            }
            append(&tx, &audit).await?;
            Ok(true)
        })
    }

    fn authz(&self, tenant: &str, account_id: &str, authz_id: &str) -> Result<Option<AuthzRec>> {
        let (tenant, account, id) = (
            tenant.to_owned(),
            account_id.to_owned(),
            authz_id.to_owned(),
        );
        in_tx!(self, tenant_scope(&tenant), |tx| {
            authz_in(&tx, &tenant, &account, &id).await
        })
    }

    fn reusable_authz(
        &self,
        tenant: &str,
        account_id: &str,
        identifier: &IdentRec,
        wildcard: bool,
        min_expires: i64,
    ) -> Result<Option<AuthzRec>> {
        let (tenant, account, ident) =
            (tenant.to_owned(), account_id.to_owned(), identifier.clone());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let Some(r) = tx
                .query_opt(
                    "SELECT authz_id FROM acme_authzs WHERE tenant = $1 AND account_id = $2
                       AND id_type = $3 AND id_value = $4 AND wildcard = $5
                       AND status IN ('valid', 'pending') AND expires_unix > $6
                     ORDER BY CASE status WHEN 'valid' THEN 0 ELSE 1 END, expires_unix DESC
                     LIMIT 1",
                    &[
                        &tenant,
                        &account,
                        &ident.kind,
                        &ident.value,
                        &wildcard,
                        &min_expires,
                    ],
                )
                .await
                .map_err(db)?
            else {
                return Ok(None);
            };
            let id: String = col(&r, 0)?;
            authz_in(&tx, &tenant, &account, &id).await
        })
    }

    fn authz_of_challenge(
        &self,
        tenant: &str,
        account_id: &str,
        challenge_id: &str,
    ) -> Result<Option<(AuthzRec, usize)>> {
        let (tenant, account, challenge) = (
            tenant.to_owned(),
            account_id.to_owned(),
            challenge_id.to_owned(),
        );
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let Some(r) = tx
                .query_opt(
                    "SELECT authz_id FROM acme_challenges
                     WHERE tenant = $1 AND account_id = $2 AND challenge_id = $3",
                    &[&tenant, &account, &challenge],
                )
                .await
                .map_err(db)?
            else {
                return Ok(None);
            };
            let id: String = col(&r, 0)?;
            let Some(a) = authz_in(&tx, &tenant, &account, &id).await? else {
                return Ok(None);
            };
            let idx = a
                .challenges
                .iter()
                .position(|ch| ch.challenge_id == challenge)
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
        let (tenant, authz_id, challenge_id, audit) = (
            tenant.to_owned(),
            authz_id.to_owned(),
            challenge_id.to_owned(),
            audit.clone(),
        );
        in_tx!(self, tenant_scope(&tenant), |tx| {
            // Lock the pending authorization: starts of its challenges on any core queue here,
            // so the "no other challenge processing" check below sees the winner's update.
            let pending = tx
                .query_opt(
                    "SELECT 1 FROM acme_authzs
                     WHERE tenant = $1 AND authz_id = $2 AND status = 'pending' FOR UPDATE",
                    &[&tenant, &authz_id],
                )
                .await
                .map_err(db)?;
            if pending.is_none() {
                return Ok(false);
            }
            let n = tx
                .execute(
                    "UPDATE acme_challenges SET status = 'processing'
                     WHERE tenant = $1 AND authz_id = $2 AND challenge_id = $3 AND status = 'pending'
                       AND NOT EXISTS (SELECT 1 FROM acme_challenges
                                       WHERE tenant = $1 AND authz_id = $2 AND status = 'processing')",
                    &[&tenant, &authz_id, &challenge_id],
                )
                .await
                .map_err(db)?;
            if n == 0 {
                return Ok(false);
            }
            append(&tx, &audit).await?;
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
        let (tenant, authz_id, challenge_id, result, audit) = (
            tenant.to_owned(),
            authz_id.to_owned(),
            challenge_id.to_owned(),
            result.clone(),
            audit.clone(),
        );
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let status = if result.valid { "valid" } else { "invalid" };
            let validated = if result.valid { result.now } else { 0 };
            let n = tx
                .execute(
                    "UPDATE acme_challenges SET status = $1, validated_unix = $2, error = $3
                     WHERE tenant = $4 AND authz_id = $5 AND challenge_id = $6
                       AND status = 'processing'",
                    &[
                        &status,
                        &validated,
                        &result.error,
                        &tenant,
                        &authz_id,
                        &challenge_id,
                    ],
                )
                .await
                .map_err(db)?;
            if n == 0 {
                return Ok(None);
            }
            if !result.valid {
                tx.execute(
                    "UPDATE acme_authzs SET status = 'invalid'
                     WHERE tenant = $1 AND authz_id = $2 AND status = 'pending'",
                    &[&tenant, &authz_id],
                )
                .await
                .map_err(db)?;
                append(&tx, &audit).await?;
                return Ok(None);
            }
            let n = tx
                .execute(
                    "UPDATE acme_authzs SET status = 'valid', expires_unix = $1
                     WHERE tenant = $2 AND authz_id = $3 AND status = 'pending'",
                    &[&result.valid_until, &tenant, &authz_id],
                )
                .await
                .map_err(db)?;
            append(&tx, &audit).await?;
            if n == 0 {
                return Ok(None);
            }
            // The order that created the authorization, moved to ready when all of its
            // authorizations are valid. Its row is locked first: two cores finishing the
            // order's last two authorizations at once then decide one after the other, and the
            // second sees the first's committed authorization (READ COMMITTED re-reads per
            // statement), so the order is not left pending by both.
            let Some(row) = tx
                .query_opt(
                    "SELECT o.order_id, o.status, o.expires_unix, o.authz_ids
                     FROM acme_authz_orders m JOIN acme_orders o
                       ON o.tenant = m.tenant AND o.order_id = m.order_id
                     WHERE m.tenant = $1 AND m.authz_id = $2
                     FOR UPDATE OF o",
                    &[&tenant, &authz_id],
                )
                .await
                .map_err(db)?
            else {
                return Ok(None);
            };
            let (order_id, status, expires, ids): (String, String, i64, String) =
                (col(&row, 0)?, col(&row, 1)?, col(&row, 2)?, col(&row, 3)?);
            if status != "pending" {
                return Ok(None);
            }
            let ids: Vec<String> = serde_json::from_str(&ids).map_err(json_err)?;
            let rows = tx
                .query(
                    "SELECT status, expires_unix FROM acme_authzs
                     WHERE tenant = $1 AND authz_id = ANY($2)",
                    &[&tenant, &ids],
                )
                .await
                .map_err(db)?;
            if rows.len() != ids.len() {
                return Ok(None);
            }
            let mut authzs = Vec::with_capacity(rows.len());
            for r in &rows {
                authzs.push((col::<String>(r, 0)?, col::<i64>(r, 1)?));
            }
            if !order_ready_at(result.now, expires, authzs) {
                return Ok(None);
            }
            let n = tx
                .execute(
                    "UPDATE acme_orders SET status = 'ready'
                     WHERE tenant = $1 AND order_id = $2 AND status = 'pending'",
                    &[&tenant, &order_id],
                )
                .await
                .map_err(db)?;
            if n == 0 {
                return Ok(None);
            }
            append(&tx, &order_ready_audit(&tenant, &audit.actor, &order_id)).await?;
            Ok(Some(order_id))
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
        let (tenant, authz_id, to, audit) = (
            tenant.to_owned(),
            authz_id.to_owned(),
            to.to_owned(),
            audit.clone(),
        );
        let from = owned(from);
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let n = tx
                .execute(
                    "UPDATE acme_authzs SET status = $1
                     WHERE tenant = $2 AND authz_id = $3 AND status = ANY($4)",
                    &[&to, &tenant, &authz_id, &from],
                )
                .await
                .map_err(db)?;
            if n == 0 {
                return Ok(false);
            }
            append(&tx, &audit).await?;
            Ok(true)
        })
    }
}
