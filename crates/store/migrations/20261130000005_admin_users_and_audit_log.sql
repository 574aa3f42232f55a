-- Dashboard users (kept apart from developer accounts), their sessions, and the audit log
-- of every admin action (dashboard and admin API).

CREATE TABLE admin_users (
    id TEXT PRIMARY KEY,
    -- Lower-cased.
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    -- Argon2id PHC string.
    password_hash TEXT NOT NULL,
    -- 'admin', 'editor' or 'viewer'.
    role TEXT NOT NULL,
    disabled_at BIGINT,
    created_at BIGINT NOT NULL
);

CREATE TABLE admin_sessions (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES admin_users (id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    -- `admin:<email>` for dashboard users, `api-token` for the admin API, `cli` for the
    -- command line.
    actor TEXT NOT NULL,
    -- e.g. `plan.update`, `subscription.approve`.
    action TEXT NOT NULL,
    -- What was acted on, e.g. `plan:starter`.
    target TEXT NOT NULL,
    -- JSON object with the change.
    details_json TEXT NOT NULL
);

CREATE INDEX audit_log_by_time ON audit_log (at);
