-- users_email_key was built CONCURRENTLY by 0021; attaching it as the constraint is instant.
SET lock_timeout = '2s';
ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email_key;
