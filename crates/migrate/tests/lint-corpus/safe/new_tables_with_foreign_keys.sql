CREATE TABLE invoices (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id bigint NOT NULL REFERENCES orders (id),
    number text NOT NULL UNIQUE,
    total_cents bigint NOT NULL CHECK (total_cents >= 0),
    issued_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE invoice_lines (
    invoice_id bigint NOT NULL,
    line_no integer NOT NULL,
    description text NOT NULL,
    amount_cents bigint NOT NULL
);
-- Both are new and empty: plain indexes and validated constraints cost nothing here.
ALTER TABLE invoice_lines ADD PRIMARY KEY (invoice_id, line_no);
ALTER TABLE invoice_lines
    ADD CONSTRAINT invoice_lines_invoice_fkey FOREIGN KEY (invoice_id) REFERENCES invoices (id);
CREATE INDEX invoices_order_id_idx ON invoices (order_id);
