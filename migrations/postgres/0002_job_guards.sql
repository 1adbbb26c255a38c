-- Guarded deletions and kept versions (issue 4).
-- max_deletes: a run that would delete more files than this at any destination stops before
--   deleting anything (NULL: no limit).
-- versions_dir: where mirror moves the files it deletes or overwrites at a destination, as a
--   folder name inside each destination (NULL: they are destroyed).
ALTER TABLE jobs ADD COLUMN max_deletes BIGINT CHECK (max_deletes >= 0);
ALTER TABLE jobs ADD COLUMN versions_dir TEXT
    CHECK (versions_dir <> '' AND versions_dir NOT LIKE '/%' AND versions_dir NOT LIKE '%..%');
