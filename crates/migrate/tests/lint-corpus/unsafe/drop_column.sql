-- expect: drop-column
-- v2.4 no longer reads users.name, but v2.3 does until the rollout ends.
ALTER TABLE users DROP COLUMN name;
