-- 0007_order_items_product_name_checked: from now on every order line must have a product name.
-- NOT VALID: the check applies to new rows at once and skips the scan of the old ones (0008 does
-- that without blocking writes), so the ACCESS EXCLUSIVE lock this takes lasts a moment.
ALTER TABLE order_items
    ADD CONSTRAINT order_items_product_name_not_null CHECK (product_name IS NOT NULL) NOT VALID;
