-- expect: parse-error
ALTER TABLE orders ADD COLUMN note text;
ALTER TABLE orders ALTER COLUMN note SET DEFALT '';
