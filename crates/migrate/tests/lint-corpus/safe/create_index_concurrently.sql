-- cutover:no-transaction
-- An interrupted concurrent build leaves an INVALID index: drop it first so a re-run builds afresh.
DROP INDEX CONCURRENTLY IF EXISTS orders_user_id_created_at_idx;
CREATE INDEX CONCURRENTLY orders_user_id_created_at_idx
    ON orders (user_id, created_at DESC)
    WHERE deleted_at IS NULL;
