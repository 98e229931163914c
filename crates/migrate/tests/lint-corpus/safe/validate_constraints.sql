-- The constraints 0014 added NOT VALID: VALIDATE takes only SHARE UPDATE EXCLUSIVE.
ALTER TABLE orders VALIDATE CONSTRAINT orders_coupon_id_fkey;
ALTER TABLE orders VALIDATE CONSTRAINT orders_total_non_negative;
