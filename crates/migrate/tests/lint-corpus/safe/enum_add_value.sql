-- v2.3 never reads 'refunded'; v2.4 writes it. ADD VALUE takes no table lock.
ALTER TYPE order_status ADD VALUE IF NOT EXISTS 'refunded' AFTER 'paid';
CREATE TYPE payment_method AS ENUM ('card', 'transfer', 'voucher');
ALTER TABLE orders ADD COLUMN payment_method payment_method;
