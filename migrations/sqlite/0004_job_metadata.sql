-- What a job keeps beyond content, mode and times; see migrations/postgres/0004_job_metadata.sql.
ALTER TABLE jobs ADD COLUMN keep_owner INTEGER NOT NULL DEFAULT 1 CHECK (keep_owner IN (0, 1));
ALTER TABLE jobs ADD COLUMN keep_acls INTEGER NOT NULL DEFAULT 1 CHECK (keep_acls IN (0, 1));
ALTER TABLE jobs ADD COLUMN keep_xattrs INTEGER NOT NULL DEFAULT 1 CHECK (keep_xattrs IN (0, 1));
ALTER TABLE jobs ADD COLUMN keep_hard_links INTEGER NOT NULL DEFAULT 1 CHECK (keep_hard_links IN (0, 1));
ALTER TABLE jobs ADD COLUMN keep_specials INTEGER NOT NULL DEFAULT 0 CHECK (keep_specials IN (0, 1));
ALTER TABLE jobs ADD COLUMN numeric_ids INTEGER NOT NULL DEFAULT 0 CHECK (numeric_ids IN (0, 1));
