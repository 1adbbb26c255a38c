-- A job runs on one scheduler at a time; see migrations/postgres/0005_job_holds.sql.
CREATE TABLE job_holds (
    job_name         TEXT PRIMARY KEY,
    holder           TEXT,
    holder_instance  TEXT,
    epoch            BIGINT NOT NULL DEFAULT 0,
    expires_at       TEXT
);
