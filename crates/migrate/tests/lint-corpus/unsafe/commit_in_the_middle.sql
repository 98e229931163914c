-- expect: transaction-control
-- A COMMIT in the file ends the runner's transaction: c1 stays if a later statement fails,
-- the history has no row for it, and the next deploy fails on "column c1 already exists".
ALTER TABLE users ADD COLUMN c1 int;
COMMIT;
ALTER TABLE users ADD COLUMN c2 int;
