-- expect: add-not-null-column-without-default
-- v2.3's INSERT INTO orders (...) does not name currency: it would fail.
ALTER TABLE orders ADD COLUMN currency char(3) NOT NULL;
