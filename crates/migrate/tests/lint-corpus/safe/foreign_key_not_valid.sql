SET lock_timeout = '1s';
ALTER TABLE orders ADD COLUMN coupon_id bigint;
-- New rows are checked at once; existing ones by 0015's VALIDATE.
ALTER TABLE orders
    ADD CONSTRAINT orders_coupon_id_fkey FOREIGN KEY (coupon_id) REFERENCES coupons (id) NOT VALID;
