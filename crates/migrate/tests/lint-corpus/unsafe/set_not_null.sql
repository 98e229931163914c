-- phase: contract
-- expect: set-not-null-without-check
-- Scans all of users under ACCESS EXCLUSIVE: no validated CHECK (email IS NOT NULL) exists.
ALTER TABLE users ALTER COLUMN email SET NOT NULL;
