-- API products, their plans, developer accounts, applications (consumers a developer owns)
-- and subscriptions. Portable SQL: the same file runs on SQLite and PostgreSQL.

CREATE TABLE products (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    -- The product's OpenAPI document (JSON text); NULL: none.
    openapi TEXT,
    -- JSON array of the configuration's route names the product exposes.
    routes_json TEXT NOT NULL,
    version TEXT NOT NULL,
    -- 'public' (listed in the portal) or 'private' (only admins subscribe applications).
    visibility TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE plans (
    id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    -- JSON: rate limits, monthly quota and prices (see PlanTerms).
    terms_json TEXT NOT NULL,
    -- 1: new subscriptions wait for an admin's approval.
    requires_approval BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX plans_by_product ON plans (product_id);

CREATE TABLE developers (
    id TEXT PRIMARY KEY,
    -- Lower-cased.
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    -- Argon2id PHC string.
    password_hash TEXT NOT NULL,
    email_verified_at BIGINT,
    disabled_at BIGINT,
    created_at BIGINT NOT NULL
);

-- An application is a consumer a developer owns: its keys are the consumer's keys.
ALTER TABLE consumers ADD COLUMN developer_id TEXT REFERENCES developers (id);
ALTER TABLE consumers ADD COLUMN description TEXT NOT NULL DEFAULT '';

CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    consumer_id TEXT NOT NULL REFERENCES consumers (id) ON DELETE CASCADE,
    product_id TEXT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    plan_id TEXT NOT NULL REFERENCES plans (id),
    -- 'pending', 'approved', 'rejected' or 'cancelled'.
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX subscriptions_by_consumer ON subscriptions (consumer_id);

-- Which plan a subscription was on when: what invoices prorate by.
CREATE TABLE subscription_periods (
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    plan_id TEXT NOT NULL REFERENCES plans (id),
    started_at BIGINT NOT NULL,
    -- NULL: still running.
    ended_at BIGINT
);

CREATE INDEX subscription_periods_by_subscription ON subscription_periods (subscription_id);
