-- Guarded deletions and kept versions (issue 4); see migrations/postgres/0002_job_guards.sql.
ALTER TABLE jobs ADD COLUMN max_deletes INTEGER
    CHECK (max_deletes IS NULL OR (typeof(max_deletes) = 'integer' AND max_deletes >= 0));
ALTER TABLE jobs ADD COLUMN versions_dir TEXT
    CHECK (versions_dir IS NULL OR (versions_dir <> '' AND versions_dir NOT LIKE '/%' AND versions_dir NOT LIKE '%..%'));
