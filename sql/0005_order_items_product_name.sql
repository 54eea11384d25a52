-- 0005_order_items_product_name: an order line remembers the product's name as it was when ordered
-- (a product renamed later must not rename what a customer bought).
--
-- Expand/contract, step 1 of 2 (docs/operations.md, "Releasing", the worked example): the column
-- is added nullable with no default, so adding it rewrites nothing and takes its ACCESS EXCLUSIVE
-- lock for a moment only (under the runner's lock_timeout). The release before this one keeps
-- inserting lines without it (NULL); this release writes it on every new line; reads do not use it
-- yet. Step 2 (0006-0008) backfills old lines in batches, makes it NOT NULL, and starts reading it.
ALTER TABLE order_items ADD COLUMN product_name text;
