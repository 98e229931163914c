-- No released version ever read this column; the silence says why, and the report keeps it.
-- cutover:allow drop-column: legacy_flags was added in 0009 and never shipped (see #812)
ALTER TABLE users DROP COLUMN legacy_flags;
