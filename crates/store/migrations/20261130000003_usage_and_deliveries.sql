-- Metered usage per application, product, plan, route and UTC day, and the outbox of
-- usage webhook deliveries. Written by gateways without bumping the version: usage is
-- not configuration.

CREATE TABLE usage_daily (
    -- Days since 1970-01-01, UTC.
    day BIGINT NOT NULL,
    consumer_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    route TEXT NOT NULL,
    -- 1: sandbox traffic, never billed.
    sandbox BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    client_errors BIGINT NOT NULL,
    server_errors BIGINT NOT NULL,
    latency_ms_sum BIGINT NOT NULL,
    -- Requests answered within 10, 50, 100, 250, 1000 ms, and slower.
    latency_le_10 BIGINT NOT NULL,
    latency_le_50 BIGINT NOT NULL,
    latency_le_100 BIGINT NOT NULL,
    latency_le_250 BIGINT NOT NULL,
    latency_le_1000 BIGINT NOT NULL,
    latency_over_1000 BIGINT NOT NULL,
    PRIMARY KEY (day, consumer_id, product_id, plan_id, route, sandbox)
);

CREATE INDEX usage_daily_by_consumer ON usage_daily (consumer_id, day);

CREATE TABLE usage_deliveries (
    id TEXT PRIMARY KEY,
    -- The JSON body, signed when it is sent.
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    -- Unix seconds before which no gateway tries it (backoff, or another gateway's claim).
    next_attempt_at BIGINT NOT NULL,
    delivered_at BIGINT,
    last_error TEXT
);

CREATE INDEX usage_deliveries_pending ON usage_deliveries (delivered_at, next_attempt_at);
