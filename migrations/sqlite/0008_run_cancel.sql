-- `ferry run cancel ID`; see migrations/postgres/0008_run_cancel.sql.
ALTER TABLE runs ADD COLUMN cancel_requested_at TEXT;
