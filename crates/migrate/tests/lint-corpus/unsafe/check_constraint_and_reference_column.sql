-- expect: constraint-without-not-valid, constraint-without-not-valid
ALTER TABLE orders ADD CONSTRAINT orders_total_non_negative CHECK (total_cents >= 0);
ALTER TABLE orders ADD COLUMN coupon_id bigint REFERENCES coupons (id);
