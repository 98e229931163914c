-- expect: access-exclusive-without-lock-timeout
SET lock_timeout = 0;
ALTER TABLE users ADD COLUMN nickname text;
