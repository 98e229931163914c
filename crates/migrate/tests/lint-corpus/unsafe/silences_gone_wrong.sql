-- expect: silence-without-reason, drop-column, unknown-rule, drop-table
-- cutover:allow drop-column
ALTER TABLE users DROP COLUMN legacy_flags;
-- cutover:allow drop-tabel: the table was never read
DROP TABLE scratch_imports;
