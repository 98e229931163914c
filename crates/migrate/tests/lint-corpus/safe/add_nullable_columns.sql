-- Adds the columns v2.4 writes; v2.3 ignores them.
ALTER TABLE users ADD COLUMN display_name text;
ALTER TABLE users
    ADD COLUMN marketing_opt_in boolean NOT NULL DEFAULT false,
    ADD COLUMN locale text DEFAULT 'en-US';
COMMENT ON COLUMN users.display_name IS 'shown instead of the email when set';
