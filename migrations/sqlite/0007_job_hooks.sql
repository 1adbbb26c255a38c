-- What to do when a run fails for good; see migrations/postgres/0007_job_hooks.sql.
ALTER TABLE jobs ADD COLUMN on_failure TEXT;
