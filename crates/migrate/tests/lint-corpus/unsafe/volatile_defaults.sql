-- expect: volatile-default, volatile-default, volatile-default
ALTER TABLE api_keys ADD COLUMN public_id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE events ADD COLUMN received_at timestamptz DEFAULT clock_timestamp();
ALTER TABLE orders ADD COLUMN position bigserial;
