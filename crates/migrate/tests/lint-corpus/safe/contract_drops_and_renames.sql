-- phase: contract
-- v2.3 is retired: the old name column and the shadow table can go.
ALTER TABLE users DROP COLUMN name;
DROP TABLE IF EXISTS users_name_backfill;
ALTER TABLE accounts_v2 RENAME TO accounts;
ALTER TABLE accounts RENAME COLUMN display_name_v2 TO display_name;
