-- ferry's schema for SQLite, version 1: the PostgreSQL schema with SQLite's types.
-- Timestamps are UTC text 'YYYY-MM-DD HH:MM:SS.SSS', which sorts and compares correctly.
-- SQLite stores any value in any column, so the columns users write check their type too.
-- Documented in docs/SQL.md; users' SQL relies on these names.

CREATE TABLE schedulers (
    name          TEXT PRIMARY KEY CHECK (name <> ''),
    instance_id   TEXT NOT NULL,
    host          TEXT NOT NULL,
    pid           BIGINT NOT NULL,
    version       TEXT NOT NULL,
    lease_ttl_ms  BIGINT NOT NULL CHECK (lease_ttl_ms > 0),
    started_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    heartbeat_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    stopped_at    TEXT
);

CREATE TABLE agents (
    name          TEXT PRIMARY KEY CHECK (name <> ''),
    address       TEXT NOT NULL CHECK (address <> ''),
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);

CREATE TABLE jobs (
    name          TEXT PRIMARY KEY CHECK (name <> ''),
    rule          TEXT NOT NULL CHECK (rule IN ('mirror', 'copy', 'sync')),
    source        TEXT NOT NULL CHECK (source <> ''),
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
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
    fallback_any     BOOLEAN NOT NULL DEFAULT TRUE CHECK (fallback_any IN (0, 1)),
    held             BOOLEAN NOT NULL DEFAULT FALSE CHECK (held IN (0, 1)),
    retries          INTEGER NOT NULL DEFAULT 0 CHECK (typeof(retries) = 'integer' AND retries >= 0),
    retry_delay_ms   BIGINT NOT NULL DEFAULT 30000
                     CHECK (typeof(retry_delay_ms) = 'integer' AND retry_delay_ms >= 0),
    misfire          TEXT NOT NULL DEFAULT 'run_once' CHECK (misfire IN ('run_once', 'skip', 'run_all')),
    run_requested_at TEXT CHECK (run_requested_at IS NULL OR julianday(run_requested_at) IS NOT NULL),
    fired_until      TEXT,
    last_error       TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);

CREATE TABLE monitors (
    name          TEXT PRIMARY KEY CHECK (name <> ''),
    job_name      TEXT NOT NULL REFERENCES jobs (name) ON UPDATE CASCADE,
    preferred     TEXT,
    fallback_any  BOOLEAN NOT NULL DEFAULT TRUE CHECK (fallback_any IN (0, 1)),
    held          BOOLEAN NOT NULL DEFAULT FALSE CHECK (held IN (0, 1)),
    debounce_ms   BIGINT NOT NULL DEFAULT 100 CHECK (typeof(debounce_ms) = 'integer' AND debounce_ms >= 0),
    rescan_ms     BIGINT NOT NULL DEFAULT 3600000 CHECK (typeof(rescan_ms) = 'integer' AND rescan_ms > 0),
    last_error    TEXT,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);

CREATE TABLE leases (
    kind             TEXT NOT NULL CHECK (kind IN ('schedule', 'monitor')),
    name             TEXT NOT NULL,
    holder           TEXT,
    holder_instance  TEXT,
    epoch            BIGINT NOT NULL DEFAULT 0,
    ttl_ms           BIGINT NOT NULL DEFAULT 3000 CHECK (ttl_ms > 0),
    acquired_at      TEXT,
    expires_at       TEXT,
    PRIMARY KEY (kind, name)
);

CREATE TABLE runs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    job_name           TEXT NOT NULL,
    schedule_name      TEXT,
    monitor_name       TEXT,
    fire_time          TEXT NOT NULL,
    trigger            TEXT NOT NULL DEFAULT 'cron' CHECK (trigger IN ('cron', 'manual', 'monitor')),
    scheduler          TEXT,
    scheduler_instance TEXT,
    epoch              BIGINT NOT NULL DEFAULT 0,
    state              TEXT NOT NULL DEFAULT 'running'
                       CHECK (state IN ('running', 'succeeded', 'failed', 'interrupted', 'cancelled')),
    attempt            INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    retry_at           TEXT,
    started_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    updated_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    finished_at        TEXT,
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
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id    BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    level     TEXT NOT NULL DEFAULT 'info' CHECK (level IN ('info', 'warn', 'error')),
    message   TEXT NOT NULL,
    path      TEXT
);
CREATE INDEX run_events_run ON run_events (run_id, id);

CREATE VIEW ferry_status AS
SELECT 'schedule' AS kind, s.name, s.job_name,
       CASE WHEN s.held THEN 'held'
            WHEN l.expires_at IS NULL OR l.expires_at < strftime('%Y-%m-%d %H:%M:%f', 'now') THEN 'waiting'
            WHEN EXISTS (SELECT 1 FROM runs r WHERE r.schedule_name = s.name AND r.state = 'running')
                 THEN 'running'
            ELSE 'idle' END AS state,
       CASE WHEN l.expires_at >= strftime('%Y-%m-%d %H:%M:%f', 'now') THEN l.holder END AS holder,
       s.preferred, s.fallback_any, COALESCE(l.epoch, 0) AS epoch, s.last_error
FROM schedules s
LEFT JOIN leases l ON l.kind = 'schedule' AND l.name = s.name
UNION ALL
SELECT 'monitor', m.name, m.job_name,
       CASE WHEN m.held THEN 'held'
            WHEN l.expires_at IS NULL OR l.expires_at < strftime('%Y-%m-%d %H:%M:%f', 'now') THEN 'waiting'
            ELSE 'running' END,
       CASE WHEN l.expires_at >= strftime('%Y-%m-%d %H:%M:%f', 'now') THEN l.holder END,
       m.preferred, m.fallback_any, COALESCE(l.epoch, 0), m.last_error
FROM monitors m
LEFT JOIN leases l ON l.kind = 'monitor' AND l.name = m.name;
