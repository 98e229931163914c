-- now() and CURRENT_TIMESTAMP are stable: PostgreSQL 11+ stores the default once, no rewrite.
ALTER TABLE orders ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE orders ADD COLUMN archived_at timestamptz DEFAULT CURRENT_TIMESTAMP;
