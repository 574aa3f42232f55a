-- Sandboxes: a product's sandbox settings, and keys that call sandboxes only.

-- JSON: {"service": NAME or null (mock from the OpenAPI document), "limits": [...]};
-- NULL: the product has no sandbox.
ALTER TABLE products ADD COLUMN sandbox_json TEXT;

-- 'live' or 'sandbox'.
ALTER TABLE api_keys ADD COLUMN environment TEXT NOT NULL DEFAULT 'live';
