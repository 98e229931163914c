-- expect: change-column-type
ALTER TABLE orders ALTER COLUMN total_cents TYPE bigint USING total_cents::bigint;
