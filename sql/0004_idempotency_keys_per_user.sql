-- 0004_idempotency_keys_per_user: an Idempotency-Key belongs to the user who placed the order
-- (as Stripe scopes keys per account), so one user's key never blocks another's; and the key
-- remembers the order it created, not a rendered response: a replay renders the order again.
ALTER TABLE idempotency_keys ADD COLUMN user_id bigint, ADD COLUMN order_id bigint;
UPDATE idempotency_keys SET user_id = (response->>'user_id')::bigint, order_id = (response->>'id')::bigint;
DELETE FROM idempotency_keys WHERE user_id IS NULL OR order_id IS NULL;
ALTER TABLE idempotency_keys
    DROP CONSTRAINT idempotency_keys_pkey,
    DROP COLUMN response,
    DROP COLUMN status_code,
    ALTER COLUMN user_id SET NOT NULL,
    ALTER COLUMN order_id SET NOT NULL,
    ADD CONSTRAINT idempotency_keys_order_fk FOREIGN KEY (order_id) REFERENCES orders (id),
    ADD PRIMARY KEY (user_id, key);
