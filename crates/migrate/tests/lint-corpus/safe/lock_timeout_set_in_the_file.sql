-- lock-timeout: none
-- The runner is configured without a lock_timeout, so the file sets its own.
SET lock_timeout = '3s';
ALTER TABLE orders ADD COLUMN note text;
ALTER TABLE orders ALTER COLUMN note SET DEFAULT '';
