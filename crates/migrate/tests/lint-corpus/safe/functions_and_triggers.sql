-- The body holds ';' and '--' that are not statements or comments.
CREATE OR REPLACE FUNCTION touch_updated_at() RETURNS trigger AS $body$
BEGIN
    NEW.updated_at := now(); -- ALTER TABLE orders DROP COLUMN total;
    RETURN NEW;
END;
$body$ LANGUAGE plpgsql;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE OR REPLACE VIEW recent_orders AS
    SELECT id, user_id, total_cents FROM orders WHERE created_at > now() - interval '30 days';
