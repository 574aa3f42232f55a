-- Developer portal sign-in: sessions, and one-time tokens for email verification and
-- password reset. Only SHA-256 digests of session ids and tokens are kept.

CREATE TABLE developer_sessions (
    id_hash TEXT PRIMARY KEY,
    developer_id TEXT NOT NULL REFERENCES developers (id) ON DELETE CASCADE,
    -- The session's CSRF token, echoed by every form it posts.
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX developer_sessions_by_developer ON developer_sessions (developer_id);

CREATE TABLE developer_tokens (
    token_hash TEXT PRIMARY KEY,
    developer_id TEXT NOT NULL REFERENCES developers (id) ON DELETE CASCADE,
    -- 'verify_email' or 'reset_password'.
    purpose TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
