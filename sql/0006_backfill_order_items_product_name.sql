-- 0006_backfill_order_items_product_name: order lines placed before 0005 get their product's name
-- (the worked example of docs/operations.md, "Releasing": expand/contract step 2, the backfill).
-- migrate: no-transaction
-- migrate: batches
-- squawk-disable-assume-in-transaction
--
-- In batches of 1,000 lines, each its own short transaction: `webapp migrate` repeats the statement
-- until it touches no row. One UPDATE of the whole table would hold every row lock it took until it
-- ended, and write the whole table in one transaction. The release serving meanwhile (0005's) fills
-- in the name of every new line itself, so the batches only ever shrink. The product's current name
-- is the best the past left: lines from before 0005 never recorded theirs. On a big table each batch
-- would scan for NULLs from the start: walk by key range instead, or add a partial index first.
UPDATE order_items AS i SET product_name = p.name
FROM products AS p
WHERE p.id = i.product_id
  AND (i.order_id, i.product_id) IN (
      SELECT order_id, product_id FROM order_items WHERE product_name IS NULL LIMIT 1000);
