-- lock-timeout: none
-- expect: access-exclusive-without-lock-timeout, access-exclusive-without-lock-timeout
-- Nothing bounds the wait: behind one long transaction, every query of orders queues up.
ALTER TABLE orders ADD COLUMN note text;
ALTER TABLE orders ADD CONSTRAINT orders_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;
-- VALIDATE takes only SHARE UPDATE EXCLUSIVE: no lock_timeout needed.
ALTER TABLE orders VALIDATE CONSTRAINT orders_coupon_id_fkey;
