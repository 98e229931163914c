-- expect: rename-table, rename-table
ALTER TABLE customers RENAME TO accounts;
ALTER TABLE audit_events SET SCHEMA archive;
