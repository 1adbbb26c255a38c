-- Content comparison of files that look unchanged; see migrations/postgres/0003_job_checksum.sql.
ALTER TABLE jobs ADD COLUMN checksum INTEGER NOT NULL DEFAULT 0 CHECK (checksum IN (0, 1));
