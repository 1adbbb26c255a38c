-- A job runs on one scheduler at a time. The scheduler whose instance holds a job's row here
-- claims the job's schedules and monitors, so their runs never overlap (a run of a job waits
-- for the other), and every run carries the row's epoch to the agents as its fence: once a
-- newer holder's run has reached an agent, the older holder's writes are refused there.
-- A holder renews its rows with its leases; a row it no longer renews expires, and another
-- scheduler takes the job (the epoch goes up by one). A row outlives its job, as a lease row
-- outlives its schedule: a job made again under the same name goes on from the same epoch,
-- which agents remember.
CREATE TABLE job_holds (
    job_name         TEXT PRIMARY KEY,
    holder           TEXT,
    holder_instance  TEXT,
    epoch            BIGINT NOT NULL DEFAULT 0,
    expires_at       TIMESTAMPTZ
);
