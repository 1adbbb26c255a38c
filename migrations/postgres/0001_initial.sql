-- ferry's schema, version 1. Documented in docs/SQL.md; users' SQL relies on these names.

CREATE TABLE schedulers (
    name          TEXT PRIMARY KEY CHECK (name <> ''),
    instance_id   TEXT NOT NULL,
    host          TEXT NOT NULL,
    pid           BIGINT NOT NULL,
    version       TEXT NOT NULL,
    lease_ttl_ms  BIGINT NOT NULL CHECK (lease_ttl_ms > 0),
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    stopped_at    TIMESTAMPTZ
);

CREATE TABLE agents (
    name          TEXT PRIMARY KEY CHECK (name <> ''),
    address       TEXT NOT NULL CHECK (address <> ''),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    name          TEXT PRIMARY KEY CHECK (name <> ''),
    rule          TEXT NOT NULL CHECK (rule IN ('mirror', 'copy', 'sync')),
    source        TEXT NOT NULL CHECK (source <> ''),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE job_destinations (
    job_name      TEXT NOT NULL REFERENCES jobs (name) ON DELETE CASCADE ON UPDATE CASCADE,
    path          TEXT NOT NULL CHECK (path <> ''),
    PRIMARY KEY (job_name, path)
);

CREATE TABLE job_filters (
    job_name      TEXT NOT NULL REFERENCES jobs (name) ON DELETE CASCADE ON UPDATE CASCADE,
    kind          TEXT NOT NULL CHECK (kind IN ('include', 'exclude')),
    pattern       TEXT NOT NULL CHECK (pattern <> ''),
    PRIMARY KEY (job_name, kind, pattern)
);

CREATE TABLE schedules (
    name             TEXT PRIMARY KEY CHECK (name <> ''),
    job_name         TEXT NOT NULL REFERENCES jobs (name) ON UPDATE CASCADE,
    cron             TEXT NOT NULL,
    timezone         TEXT NOT NULL DEFAULT 'UTC',
    preferred        TEXT,
    fallback_any     BOOLEAN NOT NULL DEFAULT TRUE,
    held             BOOLEAN NOT NULL DEFAULT FALSE,
    retries          INTEGER NOT NULL DEFAULT 0 CHECK (retries >= 0),
    retry_delay_ms   BIGINT NOT NULL DEFAULT 30000 CHECK (retry_delay_ms >= 0),
    misfire          TEXT NOT NULL DEFAULT 'run_once' CHECK (misfire IN ('run_once', 'skip', 'run_all')),
    run_requested_at TIMESTAMPTZ,
    fired_until      TIMESTAMPTZ,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE monitors (
    name          TEXT PRIMARY KEY CHECK (name <> ''),
    job_name      TEXT NOT NULL REFERENCES jobs (name) ON UPDATE CASCADE,
    preferred     TEXT,
    fallback_any  BOOLEAN NOT NULL DEFAULT TRUE,
    held          BOOLEAN NOT NULL DEFAULT FALSE,
    debounce_ms   BIGINT NOT NULL DEFAULT 100 CHECK (debounce_ms >= 0),
    rescan_ms     BIGINT NOT NULL DEFAULT 3600000 CHECK (rescan_ms > 0),
    last_error    TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE leases (
    kind             TEXT NOT NULL CHECK (kind IN ('schedule', 'monitor')),
    name             TEXT NOT NULL,
    holder           TEXT,
    holder_instance  TEXT,
    epoch            BIGINT NOT NULL DEFAULT 0,
    ttl_ms           BIGINT NOT NULL DEFAULT 3000 CHECK (ttl_ms > 0),
    acquired_at      TIMESTAMPTZ,
    expires_at       TIMESTAMPTZ,
    PRIMARY KEY (kind, name)
);

CREATE TABLE runs (
    id                 BIGSERIAL PRIMARY KEY,
    job_name           TEXT NOT NULL,
    schedule_name      TEXT,
    monitor_name       TEXT,
    fire_time          TIMESTAMPTZ NOT NULL,
    trigger            TEXT NOT NULL DEFAULT 'cron' CHECK (trigger IN ('cron', 'manual', 'monitor')),
    scheduler          TEXT,
    scheduler_instance TEXT,
    epoch              BIGINT NOT NULL DEFAULT 0,
    state              TEXT NOT NULL DEFAULT 'running'
                       CHECK (state IN ('running', 'succeeded', 'failed', 'interrupted', 'cancelled')),
    attempt            INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    retry_at           TIMESTAMPTZ,
    started_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at        TIMESTAMPTZ,
    files_copied       BIGINT NOT NULL DEFAULT 0,
    files_deleted      BIGINT NOT NULL DEFAULT 0,
    bytes_total        BIGINT NOT NULL DEFAULT 0,
    bytes_sent         BIGINT NOT NULL DEFAULT 0,
    error              TEXT,
    CHECK ((schedule_name IS NULL) <> (monitor_name IS NULL)),
    UNIQUE (schedule_name, fire_time)
);
CREATE INDEX runs_job_started ON runs (job_name, started_at);
CREATE INDEX runs_running ON runs (state) WHERE state = 'running';
CREATE UNIQUE INDEX runs_monitor_fire ON runs (monitor_name, fire_time) WHERE monitor_name IS NOT NULL;

CREATE TABLE run_events (
    id        BIGSERIAL PRIMARY KEY,
    run_id    BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    level     TEXT NOT NULL DEFAULT 'info' CHECK (level IN ('info', 'warn', 'error')),
    message   TEXT NOT NULL,
    path      TEXT
);
CREATE INDEX run_events_run ON run_events (run_id, id);

CREATE VIEW ferry_status AS
SELECT 'schedule' AS kind, s.name, s.job_name,
       CASE WHEN s.held THEN 'held'
            WHEN l.expires_at IS NULL OR l.expires_at < now() THEN 'waiting'
            WHEN EXISTS (SELECT 1 FROM runs r WHERE r.schedule_name = s.name AND r.state = 'running')
                 THEN 'running'
            ELSE 'idle' END AS state,
       CASE WHEN l.expires_at >= now() THEN l.holder END AS holder,
       s.preferred, s.fallback_any, COALESCE(l.epoch, 0) AS epoch, s.last_error
FROM schedules s
LEFT JOIN leases l ON l.kind = 'schedule' AND l.name = s.name
UNION ALL
SELECT 'monitor', m.name, m.job_name,
       CASE WHEN m.held THEN 'held'
            WHEN l.expires_at IS NULL OR l.expires_at < now() THEN 'waiting'
            ELSE 'running' END,
       CASE WHEN l.expires_at >= now() THEN l.holder END,
       m.preferred, m.fallback_any, COALESCE(l.epoch, 0), m.last_error
FROM monitors m
LEFT JOIN leases l ON l.kind = 'monitor' AND l.name = m.name;

-- A running scheduler LISTENs on ferry_definitions, so rows written with plain SQL take effect
-- at once; ferry tail LISTENs on ferry_events.
CREATE FUNCTION ferry_notify_definitions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ferry_definitions', TG_TABLE_NAME);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OR DELETE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_notify_definitions();
CREATE TRIGGER job_destinations_notify AFTER INSERT OR UPDATE OR DELETE ON job_destinations
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_notify_definitions();
CREATE TRIGGER job_filters_notify AFTER INSERT OR UPDATE OR DELETE ON job_filters
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_notify_definitions();
-- Only the columns users write: ferry's own bookkeeping (last_error, fired_until) wakes nobody.
CREATE TRIGGER schedules_notify
    AFTER INSERT OR DELETE OR UPDATE OF name, job_name, cron, timezone, preferred, fallback_any,
        held, retries, retry_delay_ms, misfire, run_requested_at ON schedules
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_notify_definitions();
CREATE TRIGGER monitors_notify
    AFTER INSERT OR DELETE OR UPDATE OF name, job_name, preferred, fallback_any, held,
        debounce_ms, rescan_ms ON monitors
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_notify_definitions();

-- A released lease or a stopped scheduler wakes the others at once, so a graceful handoff
-- does not wait for their next poll.
CREATE TRIGGER leases_notify
    AFTER UPDATE OF holder_instance ON leases
    FOR EACH ROW WHEN (OLD.holder_instance IS NOT NULL AND NEW.holder_instance IS NULL)
    EXECUTE FUNCTION ferry_notify_definitions();
CREATE TRIGGER schedulers_notify
    AFTER UPDATE OF stopped_at ON schedulers
    FOR EACH ROW WHEN (NEW.stopped_at IS NOT NULL)
    EXECUTE FUNCTION ferry_notify_definitions();

CREATE FUNCTION ferry_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ferry_events', NEW.run_id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER run_events_notify AFTER INSERT ON run_events
    FOR EACH ROW EXECUTE FUNCTION ferry_notify_event();
