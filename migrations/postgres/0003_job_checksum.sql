-- checksum: mirror and copy compare the content of files whose size and modification time
--   agree (BLAKE3 on both sides), and copy those that differ, as `rsync --checksum` does.
ALTER TABLE jobs ADD COLUMN checksum BOOLEAN NOT NULL DEFAULT false;
