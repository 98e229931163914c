-- expect: concurrently-in-transaction
-- The runner wraps this file in a transaction: PostgreSQL refuses the CONCURRENTLY.
CREATE INDEX CONCURRENTLY orders_created_at_idx ON orders (created_at);
