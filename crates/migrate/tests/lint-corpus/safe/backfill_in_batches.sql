-- cutover:no-transaction
-- Fills users.email_normalized in batches of 5000, committing each, so no row lock is held long.
DO $$
DECLARE
    done integer;
BEGIN
    LOOP
        UPDATE users SET email_normalized = lower(email)
        WHERE id IN (
            SELECT id FROM users
            WHERE email_normalized IS NULL AND email IS NOT NULL
            LIMIT 5000
            FOR UPDATE SKIP LOCKED
        );
        GET DIAGNOSTICS done = ROW_COUNT;
        COMMIT; -- a DROP TABLE users; in here is only text
        EXIT WHEN done = 0;
    END LOOP;
END
$$;
