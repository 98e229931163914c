-- expect: not-idempotent-without-transaction
-- cutover:no-transaction
-- If the build is interrupted (a lock timeout, a crash), the INVALID index stays, and the
-- re-run's IF NOT EXISTS keeps it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_status_idx ON orders (status);
