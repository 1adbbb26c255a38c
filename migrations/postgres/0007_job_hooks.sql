-- What the scheduler that held a run does when the run fails for good (its retries spent):
-- `on_failure` is an http:// or https:// URL that gets the run as JSON (POST), or the name of a
-- program in that scheduler's hook folder (`ferry scheduler run --hook-dir DIR`), which gets
-- the run as JSON on its standard input. NULL: nothing. A row cannot name a command line:
-- only programs the scheduler's administrator put in its hook folder run.
ALTER TABLE jobs ADD COLUMN on_failure TEXT;
