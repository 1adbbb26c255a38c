-- The definitions' change counter; see migrations/postgres/0009_definitions_version.sql.
-- SQLite has only row triggers, one event each.
CREATE TABLE definitions_version (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  INTEGER NOT NULL
);
INSERT INTO definitions_version (id, version) VALUES (1, 1);

CREATE TRIGGER jobs_version_insert AFTER INSERT ON jobs
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER jobs_version_update AFTER UPDATE ON jobs
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER jobs_version_delete AFTER DELETE ON jobs
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER job_destinations_version_insert AFTER INSERT ON job_destinations
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER job_destinations_version_update AFTER UPDATE ON job_destinations
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER job_destinations_version_delete AFTER DELETE ON job_destinations
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER job_filters_version_insert AFTER INSERT ON job_filters
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER job_filters_version_update AFTER UPDATE ON job_filters
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER job_filters_version_delete AFTER DELETE ON job_filters
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER agents_version_insert AFTER INSERT ON agents
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER agents_version_update AFTER UPDATE ON agents
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER agents_version_delete AFTER DELETE ON agents
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER schedules_version_insert AFTER INSERT ON schedules
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER schedules_version_update AFTER UPDATE OF name, job_name, cron, timezone, preferred, fallback_any, held, retries, retry_delay_ms, misfire, run_requested_at ON schedules
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER schedules_version_delete AFTER DELETE ON schedules
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER monitors_version_insert AFTER INSERT ON monitors
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER monitors_version_update AFTER UPDATE OF name, job_name, preferred, fallback_any, held, debounce_ms, rescan_ms ON monitors
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER monitors_version_delete AFTER DELETE ON monitors
BEGIN UPDATE definitions_version SET version = version + 1 WHERE id = 1; END;

-- Every tick looks for retries that are due.
CREATE INDEX runs_retry ON runs (retry_at) WHERE retry_at IS NOT NULL;

-- Each scheduler renews every lease and job hold it has at every heartbeat: find them by holder.
CREATE INDEX leases_holder ON leases (holder_instance);
CREATE INDEX job_holds_holder ON job_holds (holder_instance);
