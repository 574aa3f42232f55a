-- Consumers and their API keys, and the version every change bumps (what gateways follow).
-- Portable SQL: the same file runs on SQLite and PostgreSQL.

CREATE TABLE store_version (
    id INTEGER PRIMARY KEY,
    version BIGINT NOT NULL
);

INSERT INTO store_version (id, version) VALUES (1, 0);

CREATE TABLE consumers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- JSON array of group names.
    groups_json TEXT NOT NULL,
    -- JSON object of string metadata.
    metadata_json TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    -- The key's public id (the middle part of `<prefix>_<public id>_<secret>`).
    public_id TEXT PRIMARY KEY,
    consumer_id TEXT NOT NULL REFERENCES consumers (id) ON DELETE CASCADE,
    -- `hmac-sha256:<base64>` of the whole key under the gateway's api_key_secret.
    hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- Unix seconds; NULL: never.
    expires_at BIGINT,
    revoked_at BIGINT
);

CREATE INDEX api_keys_by_consumer ON api_keys (consumer_id);
