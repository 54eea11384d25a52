-- 0003_idempotency_keys: remembered responses for POST /orders retried with the same Idempotency-Key.
-- Written in the same transaction as the order, so a key exists if and only if its order does.
CREATE TABLE idempotency_keys (
    key           text        PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  text        NOT NULL,
    -- squawk-ignore prefer-bigint-over-smallint -- why: an HTTP status code, 100-599
    status_code   smallint    NOT NULL,
    response      jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Expired keys are deleted by age (see IDEMPOTENCY_RETENTION_HOURS).
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
