-- Service mesh control-plane state: the certificate authority, join tokens, the registry of
-- service instances with their leases, and a log of issued certificates.

-- One row (id = 1): the CA the control plane signs workload certificates with. Generated on
-- first start unless the operator provides an intermediate (then nothing is kept here).
CREATE TABLE mesh_authority (
    id BIGINT PRIMARY KEY,
    trust_domain TEXT NOT NULL,
    cert_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Bootstrap secrets, one or more per service, kept as the SHA-256 hex of the token (tokens
-- are 256-bit random, so a plain hash is enough).
CREATE TABLE mesh_join_tokens (
    token_hash TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    service TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- Unix seconds; NULL: does not expire.
    expires_at BIGINT
);

-- Instances registered by their sidecars; gone from snapshots once the lease runs out.
CREATE TABLE mesh_instances (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    service TEXT NOT NULL,
    -- IP:PORT of the instance's inbound (mTLS) listener.
    address TEXT NOT NULL,
    -- JSON object, e.g. {"version": "v2"}.
    labels_json TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    -- Unix milliseconds.
    lease_expires_at_ms BIGINT NOT NULL
);

CREATE TABLE mesh_certificates (
    serial TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    not_after BIGINT NOT NULL
);
