-- phase: contract
-- cutover:no-transaction
-- Each statement commits before the next: VALIDATE scans under SHARE UPDATE EXCLUSIVE only,
-- and SET NOT NULL then trusts the check instead of scanning.
ALTER TABLE users DROP CONSTRAINT IF EXISTS users_email_not_null;
ALTER TABLE users ADD CONSTRAINT users_email_not_null CHECK (email IS NOT NULL) NOT VALID;
ALTER TABLE users VALIDATE CONSTRAINT users_email_not_null;
ALTER TABLE users ALTER COLUMN email SET NOT NULL;
ALTER TABLE users DROP CONSTRAINT IF EXISTS users_email_not_null;
