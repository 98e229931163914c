-- The column first, bare; then the default for new rows; existing rows are backfilled by a job.
ALTER TABLE api_keys ADD COLUMN public_id uuid;
ALTER TABLE api_keys ALTER COLUMN public_id SET DEFAULT gen_random_uuid();
