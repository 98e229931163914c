-- expect: drop-table, drop-table
DROP TABLE IF EXISTS password_resets;
DROP MATERIALIZED VIEW daily_revenue;
