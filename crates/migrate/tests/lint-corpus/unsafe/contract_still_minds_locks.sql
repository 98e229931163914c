-- phase: contract
-- expect: create-index-not-concurrently, unique-or-primary-key-without-index
-- The old version is gone, but the new one is live: its queries wait on these locks.
ALTER TABLE users DROP COLUMN name;
CREATE INDEX users_display_name_idx ON users (display_name);
ALTER TABLE users ADD CONSTRAINT users_display_name_key UNIQUE (display_name);
