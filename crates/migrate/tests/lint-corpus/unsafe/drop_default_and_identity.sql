-- expect: drop-default, drop-default, drop-table
-- v3 sets created_at and id itself; v2, still running, leaves them to the defaults.
ALTER TABLE orders ALTER COLUMN created_at DROP DEFAULT;
ALTER TABLE orders ALTER COLUMN id DROP IDENTITY;
DROP SEQUENCE orders_legacy_seq;
