-- expect: unique-or-primary-key-without-index, unique-or-primary-key-without-index
ALTER TABLE events ADD PRIMARY KEY (id);
ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);
