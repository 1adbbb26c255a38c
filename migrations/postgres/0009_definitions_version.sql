-- A counter that every change to what users define raises, in the writing transaction: jobs
-- with their destinations and filters, schedules, monitors and agents, by the CLI or by plain
-- SQL. A scheduler reads it at every tick and re-reads (and re-checks) the definitions only
-- when it moved. Like the notifications, it ignores ferry's own bookkeeping (last_error,
-- fired_until), which changes as schedules fire.
CREATE TABLE definitions_version (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  BIGINT NOT NULL
);
INSERT INTO definitions_version (id, version) VALUES (1, 1);

CREATE FUNCTION ferry_definitions_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE definitions_version SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_version AFTER INSERT OR UPDATE OR DELETE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_definitions_changed();
CREATE TRIGGER job_destinations_version AFTER INSERT OR UPDATE OR DELETE ON job_destinations
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_definitions_changed();
CREATE TRIGGER job_filters_version AFTER INSERT OR UPDATE OR DELETE ON job_filters
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_definitions_changed();
CREATE TRIGGER agents_version AFTER INSERT OR UPDATE OR DELETE ON agents
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_definitions_changed();
CREATE TRIGGER schedules_version
    AFTER INSERT OR DELETE OR UPDATE OF name, job_name, cron, timezone, preferred, fallback_any,
        held, retries, retry_delay_ms, misfire, run_requested_at ON schedules
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_definitions_changed();
CREATE TRIGGER monitors_version
    AFTER INSERT OR DELETE OR UPDATE OF name, job_name, preferred, fallback_any, held,
        debounce_ms, rescan_ms ON monitors
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_definitions_changed();

-- Every tick looks for retries that are due.
CREATE INDEX runs_retry ON runs (retry_at) WHERE retry_at IS NOT NULL;

-- Each scheduler renews every lease and job hold it has at every heartbeat: find them by
-- holder, and leave room in each page so that a renewal (a new expires_at) is a heap-only
-- update rather than a new tuple in every index.
CREATE INDEX leases_holder ON leases (holder_instance);
CREATE INDEX job_holds_holder ON job_holds (holder_instance);
ALTER TABLE leases SET (fillfactor = 50);
ALTER TABLE job_holds SET (fillfactor = 50);
