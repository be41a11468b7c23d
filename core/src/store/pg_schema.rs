//! The PostgreSQL schema as numbered migrations (docs/postgres.md). Each runs once, in order, in
//! one transaction under an advisory lock, by the owner role (`[store] migrate_url`); the core's
//! own app role only reads and writes rows. Never edit a shipped migration: add the next one.
//!
//! What the database itself enforces, whichever core (or bug) writes:
//! - idempotency: `UNIQUE (tenant, idem_key)` on intents and certificates, `PRIMARY KEY (tenant,
//!   op, idem_key)` on other idempotent operations;
//! - serials: unique per tenant and per issuer;
//! - CRL numbers and stored CRLs only move forward (triggers);
//! - the audit log is append-only except for adding a signature once (trigger, no DELETE grant),
//!   and its chain head is one row every append locks, so appends from all cores form one chain;
//! - tenant isolation: row-level security on every tenant-owned table, against the
//!   transaction-local setting `certgate.tenant`; unset (or empty) matches no row.

/// The advisory lock key (two int4) that serialises migrations between cores starting together.
pub(crate) const MIGRATION_LOCK: (i32, i32) = (0x6365_7274, 1);

/// A migration: its SQL, then row-level security for the tenant tables it creates.
pub(crate) struct Migration {
    /// Version (1, 2, ...).
    pub(crate) version: i32,
    /// The statements.
    pub(crate) sql: &'static str,
    /// (table, tenant column) pairs that get the tenant policy.
    pub(crate) tenant_tables: &'static [(&'static str, &'static str)],
}

/// Migrations, applied in order; the latest version is the last entry's.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: V1,
        tenant_tables: V1_TENANT_TABLES,
    },
    Migration {
        version: 2,
        sql: V2_ACME,
        tenant_tables: V2_TENANT_TABLES,
    },
    Migration {
        version: 3,
        sql: V3_CMP,
        tenant_tables: V3_TENANT_TABLES,
    },
    Migration {
        version: 4,
        sql: V4_SCEP,
        tenant_tables: V4_TENANT_TABLES,
    },
    Migration {
        version: 5,
        sql: V5_PENDING,
        tenant_tables: &[("pending_requests", "tenant")],
    },
    Migration {
        version: 6,
        sql: V6_ACME_AUTHZ_ORDERS,
        tenant_tables: &[("acme_authz_orders", "tenant")],
    },
];

/// The tables of migration 1 that row-level security applies to, with their tenant column.
const V1_TENANT_TABLES: &[(&str, &str)] = &[
    ("tenants", "name"),
    ("profiles", "tenant"),
    ("cas", "tenant"),
    ("intents", "tenant"),
    ("certificates", "tenant"),
    ("idempotency", "tenant"),
    ("ceremonies", "tenant"),
    ("status_pending", "tenant"),
    ("status_events", "tenant"),
    ("ocsp_responses", "tenant"),
    ("crls", "tenant"),
];

const V1: &str = r#"
-- The tenant of the current transaction, or NULL when unset or empty ("" is what a session
-- shows after a transaction-local setting ended, so it must mean "none", not a tenant).
CREATE OR REPLACE FUNCTION certgate_scope() RETURNS text
    LANGUAGE sql STABLE AS $$ SELECT NULLIF(current_setting('certgate.tenant', true), '') $$;
-- A row of tenant t is visible when the transaction is scoped to t, or to '*' (the store's
-- cross-tenant maintenance calls set it explicitly). NULL scope: nothing (fail closed).
CREATE OR REPLACE FUNCTION certgate_visible(t text) RETURNS boolean
    LANGUAGE sql STABLE AS $$ SELECT COALESCE(certgate_scope() = '*' OR t = certgate_scope(), false) $$;

CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    public_base_url TEXT NOT NULL,
    default_profile TEXT NOT NULL,
    active_issuer_id TEXT NOT NULL DEFAULT ''
);
CREATE TABLE profiles (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    body_json TEXT NOT NULL,
    created_unix BIGINT NOT NULL,
    PRIMARY KEY (tenant, name, version)
);
CREATE TABLE cas (
    ca_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    parent_ca_id TEXT NOT NULL,
    cert_der BYTEA NOT NULL,
    signer_key_id TEXT NOT NULL,
    key_type INTEGER NOT NULL,
    state TEXT NOT NULL,
    not_after_unix BIGINT NOT NULL,
    created_unix BIGINT NOT NULL
);
CREATE TABLE intents (
    tenant TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash BYTEA NOT NULL,
    serial_hex TEXT NOT NULL,
    tbs_der BYTEA NOT NULL,
    issuer_id TEXT NOT NULL,
    profile TEXT NOT NULL,
    profile_version BIGINT NOT NULL,
    created_unix BIGINT NOT NULL,
    PRIMARY KEY (tenant, idem_key),
    UNIQUE (tenant, serial_hex),
    UNIQUE (issuer_id, serial_hex)
);
CREATE TABLE certificates (
    tenant TEXT NOT NULL,
    serial_hex TEXT NOT NULL,
    cert_der BYTEA NOT NULL,
    issuer_id TEXT NOT NULL,
    profile TEXT NOT NULL,
    profile_version BIGINT NOT NULL,
    not_before_unix BIGINT NOT NULL,
    not_after_unix BIGINT NOT NULL,
    idem_key TEXT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT false,
    revoked_at_unix BIGINT NOT NULL DEFAULT 0,
    revocation_reason BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, serial_hex),
    UNIQUE (tenant, idem_key),
    UNIQUE (issuer_id, serial_hex)
);
CREATE INDEX certificates_revoked ON certificates(issuer_id) WHERE revoked;
CREATE TABLE idempotency (
    tenant TEXT NOT NULL,
    op TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash BYTEA NOT NULL,
    target TEXT NOT NULL,
    created_unix BIGINT NOT NULL,
    PRIMARY KEY (tenant, op, idem_key)
);
CREATE TABLE ceremonies (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL DEFAULT '',
    action BYTEA NOT NULL,
    digest BYTEA NOT NULL,
    required BIGINT NOT NULL,
    approved_by TEXT NOT NULL,
    state INTEGER NOT NULL,
    result_ca_ids TEXT NOT NULL,
    created_unix BIGINT NOT NULL
);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    time TEXT NOT NULL,
    prev BYTEA NOT NULL,
    kind TEXT NOT NULL,
    tenant TEXT NOT NULL,
    actor TEXT NOT NULL,
    details TEXT NOT NULL,
    hash BYTEA NOT NULL,
    signature BYTEA
);
CREATE INDEX audit_unsigned ON audit(seq) WHERE signature IS NULL;
-- The chain head: every append locks this one row (FOR UPDATE) until its transaction ends, so
-- appends from all cores are serialised and each links to the one committed before it.
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash BYTEA NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));
CREATE FUNCTION certgate_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit records are append-only';
    END IF;
    IF OLD.signature IS NOT NULL
       OR (NEW.seq, NEW.time, NEW.prev, NEW.kind, NEW.tenant, NEW.actor, NEW.details, NEW.hash)
          IS DISTINCT FROM
          (OLD.seq, OLD.time, OLD.prev, OLD.kind, OLD.tenant, OLD.actor, OLD.details, OLD.hash) THEN
        RAISE EXCEPTION 'an audit record may only gain a signature, once';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION certgate_audit_append_only();
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Status (docs/status.md).
CREATE TABLE status_pending (
    id BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL,
    serial_hex TEXT NOT NULL,
    queued_unix BIGINT NOT NULL
);
CREATE FUNCTION certgate_queue_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR (NEW.revoked AND NOT OLD.revoked) THEN
        INSERT INTO status_pending (tenant, serial_hex, queued_unix)
        VALUES (NEW.tenant, NEW.serial_hex, extract(epoch FROM now())::bigint);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER status_on_issue AFTER INSERT ON certificates
    FOR EACH ROW EXECUTE FUNCTION certgate_queue_status();
CREATE TRIGGER status_on_revoke AFTER UPDATE OF revoked ON certificates
    FOR EACH ROW EXECUTE FUNCTION certgate_queue_status();
-- Event cursors come from this one row, locked until commit, so cursor order is commit order
-- across cores (a sequence would let a later cursor commit first and a watcher skip the earlier).
CREATE TABLE status_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    cursor BIGINT NOT NULL,
    pruned_upto BIGINT NOT NULL
);
INSERT INTO status_head (id, cursor, pruned_upto) VALUES (1, 0, 0);
CREATE TABLE status_events (
    cursor BIGINT PRIMARY KEY,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_unix BIGINT NOT NULL
);
CREATE TABLE ocsp_responses (
    id BIGSERIAL UNIQUE,
    tenant TEXT NOT NULL,
    issuer_id TEXT NOT NULL,
    serial_hex TEXT NOT NULL,
    hash_alg TEXT NOT NULL,
    response_der BYTEA NOT NULL,
    this_update_unix BIGINT NOT NULL,
    next_update_unix BIGINT NOT NULL,
    cursor BIGINT NOT NULL,
    PRIMARY KEY (tenant, serial_hex, hash_alg)
);
CREATE INDEX ocsp_responses_cursor ON ocsp_responses(cursor);
CREATE INDEX ocsp_responses_this_update ON ocsp_responses(this_update_unix);
CREATE TABLE crls (
    id BIGSERIAL UNIQUE,
    tenant TEXT NOT NULL,
    issuer_id TEXT NOT NULL,
    shard TEXT NOT NULL,
    crl_der BYTEA NOT NULL,
    crl_number BIGINT NOT NULL,
    this_update_unix BIGINT NOT NULL,
    next_update_unix BIGINT NOT NULL,
    cursor BIGINT NOT NULL,
    PRIMARY KEY (issuer_id, shard)
);
CREATE INDEX crls_cursor ON crls(cursor);
CREATE TABLE crl_numbers (
    issuer_id TEXT NOT NULL,
    shard TEXT NOT NULL,
    last_number BIGINT NOT NULL,
    PRIMARY KEY (issuer_id, shard)
);
-- CRL numbers (RFC 5280 5.2.3) and the stored CRL of a shard only move forward.
CREATE FUNCTION certgate_crl_number_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.last_number <= OLD.last_number THEN
        RAISE EXCEPTION 'CRL number of % / % would go from % to %',
            OLD.issuer_id, OLD.shard, OLD.last_number, NEW.last_number;
    END IF;
    RETURN NEW;
END $$;
CREATE FUNCTION certgate_crl_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.crl_number <= OLD.crl_number THEN
        RAISE EXCEPTION 'stored CRL of % / % would go from number % to %',
            OLD.issuer_id, OLD.shard, OLD.crl_number, NEW.crl_number;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER crl_numbers_forward BEFORE UPDATE ON crl_numbers
    FOR EACH ROW EXECUTE FUNCTION certgate_crl_number_forward();
CREATE TRIGGER crls_forward BEFORE UPDATE ON crls
    FOR EACH ROW EXECUTE FUNCTION certgate_crl_forward();
CREATE TABLE ocsp_responders (
    issuer_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    cert_der BYTEA NOT NULL,
    created_unix BIGINT NOT NULL
);

-- The audit log: anyone may append (a scoped change audits itself in its own transaction);
-- reading and signing are cross-tenant maintenance ('*').
ALTER TABLE audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_append ON audit FOR INSERT WITH CHECK (true);
CREATE POLICY audit_read ON audit FOR SELECT USING (COALESCE(certgate_scope() = '*', false));
CREATE POLICY audit_sign ON audit FOR UPDATE USING (COALESCE(certgate_scope() = '*', false));
"#;

/// The ACME state tables (mirroring the SQLite store's; booleans as BOOLEAN, JSON lists as TEXT).
const V2_ACME: &str = r#"
CREATE TABLE acme_settings (
    tenant TEXT PRIMARY KEY,
    terms_of_service TEXT NOT NULL,
    website TEXT NOT NULL,
    caa_identities TEXT NOT NULL,
    eab_required BOOLEAN NOT NULL
);
CREATE TABLE acme_eab_keys (
    tenant TEXT NOT NULL,
    key_id TEXT NOT NULL,
    hmac_key BYTEA NOT NULL,
    account_id TEXT NOT NULL DEFAULT '',
    created_unix BIGINT NOT NULL,
    PRIMARY KEY (tenant, key_id)
);
CREATE TABLE acme_accounts (
    tenant TEXT NOT NULL,
    account_id TEXT NOT NULL,
    status TEXT NOT NULL,
    contacts TEXT NOT NULL,
    terms_agreed BOOLEAN NOT NULL,
    jwk_json TEXT NOT NULL,
    jwk_thumbprint TEXT NOT NULL,
    eab_key_id TEXT NOT NULL,
    created_unix BIGINT NOT NULL,
    PRIMARY KEY (tenant, account_id),
    UNIQUE (tenant, jwk_thumbprint)
);
CREATE TABLE acme_orders (
    seq BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL,
    order_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    status TEXT NOT NULL,
    expires_unix BIGINT NOT NULL,
    identifiers TEXT NOT NULL,
    authz_ids TEXT NOT NULL,
    not_before_unix BIGINT NOT NULL,
    not_after_unix BIGINT NOT NULL,
    error BYTEA NOT NULL,
    certificate_serial_hex TEXT NOT NULL,
    profile TEXT NOT NULL,
    replaces TEXT NOT NULL,
    created_unix BIGINT NOT NULL,
    csr_der BYTEA NOT NULL DEFAULT ''::bytea,
    UNIQUE (tenant, order_id)
);
CREATE INDEX acme_orders_account ON acme_orders(tenant, account_id, seq);
CREATE INDEX acme_orders_serial ON acme_orders(tenant, certificate_serial_hex)
    WHERE certificate_serial_hex <> '';
CREATE TABLE acme_authzs (
    tenant TEXT NOT NULL,
    authz_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    id_type TEXT NOT NULL,
    id_value TEXT NOT NULL,
    wildcard BOOLEAN NOT NULL,
    status TEXT NOT NULL,
    expires_unix BIGINT NOT NULL,
    created_unix BIGINT NOT NULL,
    PRIMARY KEY (tenant, authz_id)
);
CREATE INDEX acme_authzs_reuse ON acme_authzs(tenant, account_id, id_type, id_value, wildcard);
CREATE TABLE acme_challenges (
    tenant TEXT NOT NULL,
    challenge_id TEXT NOT NULL,
    authz_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    idx BIGINT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    token TEXT NOT NULL,
    validated_unix BIGINT NOT NULL,
    error BYTEA NOT NULL,
    PRIMARY KEY (tenant, challenge_id)
);
CREATE INDEX acme_challenges_authz ON acme_challenges(tenant, authz_id, idx);
"#;

const V2_TENANT_TABLES: &[(&str, &str)] = &[
    ("acme_settings", "tenant"),
    ("acme_eab_keys", "tenant"),
    ("acme_accounts", "tenant"),
    ("acme_orders", "tenant"),
    ("acme_authzs", "tenant"),
    ("acme_challenges", "tenant"),
];

/// The CMP tables (MAC secrets, the tenant's RA, certificates awaiting certConf).
const V3_CMP: &str = r#"
CREATE TABLE cmp_secrets (
    tenant TEXT NOT NULL,
    reference BYTEA NOT NULL,
    secret BYTEA NOT NULL,
    created_unix BIGINT NOT NULL,
    PRIMARY KEY (tenant, reference)
);
CREATE TABLE cmp_ra (
    tenant TEXT PRIMARY KEY,
    signer_key_id TEXT NOT NULL,
    key_type INTEGER NOT NULL,
    cert_der BYTEA NOT NULL,
    issuer_id TEXT NOT NULL,
    created_unix BIGINT NOT NULL
);
CREATE TABLE cmp_confirm (
    tenant TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    state TEXT NOT NULL,
    deadline_unix BIGINT NOT NULL,
    done BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (tenant, idem_key)
);
CREATE INDEX cmp_confirm_due ON cmp_confirm(state, deadline_unix);
"#;

const V3_TENANT_TABLES: &[(&str, &str)] = &[
    ("cmp_secrets", "tenant"),
    ("cmp_ra", "tenant"),
    ("cmp_confirm", "tenant"),
];

/// The SCEP tables (RA; challenge passwords as digests, never the secret).
const V4_SCEP: &str = r#"
CREATE TABLE scep_ra (
    tenant TEXT PRIMARY KEY,
    signer_key_id TEXT NOT NULL,
    key_type INTEGER NOT NULL,
    cert_der BYTEA NOT NULL,
    issuer_id TEXT NOT NULL,
    created_unix BIGINT NOT NULL
);
CREATE TABLE scep_static_challenges (
    tenant TEXT NOT NULL,
    profile TEXT NOT NULL,
    digest BYTEA NOT NULL,
    created_unix BIGINT NOT NULL,
    PRIMARY KEY (tenant, profile)
);
CREATE TABLE scep_one_time_challenges (
    id BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL,
    profile TEXT NOT NULL,
    digest BYTEA NOT NULL,
    expires_unix BIGINT NOT NULL
);
CREATE INDEX scep_one_time_by_tenant ON scep_one_time_challenges(tenant, expires_unix);
"#;

const V4_TENANT_TABLES: &[(&str, &str)] = &[
    ("scep_ra", "tenant"),
    ("scep_static_challenges", "tenant"),
    ("scep_one_time_challenges", "tenant"),
];

/// Requests held for manual approval.
const V5_PENDING: &str = r#"
CREATE TABLE pending_requests (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash BYTEA NOT NULL,
    request_pb BYTEA NOT NULL,
    protocol TEXT NOT NULL,
    client_identity TEXT NOT NULL,
    profile TEXT NOT NULL,
    summary TEXT NOT NULL,
    state TEXT NOT NULL,
    created_unix BIGINT NOT NULL,
    expires_unix BIGINT NOT NULL,
    decided_by TEXT NOT NULL DEFAULT '',
    decided_unix BIGINT NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, idem_key)
);
CREATE INDEX pending_requests_open ON pending_requests(tenant, state, expires_unix);
"#;

/// The order that created each ACME authorization (orders that only reuse one are not listed),
/// so the transaction that records a validation can move that order to ready
/// (`AcmeStore::finish_challenge`). Orders created before this migration have no row: readers
/// move them to ready as before.
const V6_ACME_AUTHZ_ORDERS: &str = r#"
CREATE TABLE acme_authz_orders (
    tenant TEXT NOT NULL,
    authz_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    PRIMARY KEY (tenant, authz_id)
);
"#;

/// Row-level security statements for one tenant table (part of migration 1, generated so every
/// table gets the same policy).
pub(crate) fn rls_sql(table: &str, column: &str) -> String {
    format!(
        "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
         ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
         CREATE POLICY tenant_isolation ON {table}
             USING (certgate_visible({column})) WITH CHECK (certgate_visible({column}));"
    )
}
