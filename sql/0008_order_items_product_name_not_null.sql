-- 0008_order_items_product_name_not_null: the old rows (backfilled by 0006) are proven to pass 0007's
-- check, and the column itself says NOT NULL (what readers of the schema look at).
-- VALIDATE scans the table under SHARE UPDATE EXCLUSIVE, which lets reads and writes go on (in
-- 0007's transaction it would have scanned under that file's ACCESS EXCLUSIVE lock instead). SET NOT
-- NULL then finds the validated check and skips a scan of its own, so its ACCESS EXCLUSIVE lock is
-- brief, and bounded by the runner's lock_timeout.
ALTER TABLE order_items VALIDATE CONSTRAINT order_items_product_name_not_null;
ALTER TABLE order_items ALTER COLUMN product_name SET NOT NULL;
-- squawk-ignore ban-drop-constraint -- why: the column's own NOT NULL, just set, enforces what this check did
ALTER TABLE order_items DROP CONSTRAINT order_items_product_name_not_null;
