-- expect: data-change-under-lock
-- The new column and its backfill in one transaction: ADD COLUMN's ACCESS EXCLUSIVE lock on
-- users is held until COMMIT, so the live app waits for the whole UPDATE of every row.
ALTER TABLE users ADD COLUMN full_name text;
UPDATE users SET full_name = name;
