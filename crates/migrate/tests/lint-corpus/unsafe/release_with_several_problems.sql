-- expect: drop-column, create-index-not-concurrently, constraint-without-not-valid, add-not-null-column-without-default, data-change-under-lock
-- A release that does too much at once.
ALTER TABLE users ADD COLUMN org_id bigint REFERENCES orgs (id);
UPDATE users SET org_id = 1 WHERE org_id IS NULL;
CREATE INDEX users_org_id_idx ON users (org_id);
ALTER TABLE users DROP COLUMN team_id;
ALTER TABLE orgs ADD COLUMN plan text NOT NULL;
