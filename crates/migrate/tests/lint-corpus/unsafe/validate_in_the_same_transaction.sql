-- expect: validate-in-same-transaction
-- NOT VALID then VALIDATE in one transaction: the ADD's lock is held through the scan.
ALTER TABLE orders ADD CONSTRAINT orders_total_non_negative CHECK (total_cents >= 0) NOT VALID;
ALTER TABLE orders VALIDATE CONSTRAINT orders_total_non_negative;
