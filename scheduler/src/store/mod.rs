//! The database layer: every SQL statement ferry runs lives in this module.
//!
//! PostgreSQL and SQLite share one set of queries written in PostgreSQL's dialect; the few
//! differences (time arithmetic, connection setup, LISTEN) live in [`postgres`] and [`sqlite`].
//! Every timestamp that decides anything is computed by the database (`now()`), never by a
//! scheduler's wall clock, and every lease write is one conditional statement that reports
//! whether it won.

mod postgres;
mod rows;
mod servers;
mod sqlite;
mod time;

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgPool, SqlitePool};

pub use postgres::{Channel, Notifications};
pub use rows::*;
pub use time::DbTime;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("applying the schema migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Schema(SchemaError),
    #[error("no answer from the database within {0:?}")]
    Timeout(std::time::Duration),
    #[error("{what} {name:?} already exists")]
    Exists { what: &'static str, name: String },
    #[error("{what} {name:?} does not exist")]
    NotFound { what: &'static str, name: String },
    #[error("{what} {name:?} is still used by {user}; remove that first, or point it elsewhere")]
    InUse {
        what: &'static str,
        name: String,
        user: String,
    },
    #[error(
        "scheduler {name:?} is alive (pid {pid} on {host}): stop it first; only a scheduler \
         that is down can be forgotten"
    )]
    Alive {
        name: String,
        pid: i64,
        host: String,
    },
    #[error(
        "scheduler name {name:?} is in use by a live scheduler on host {host} (started {started_at}); \
         stop it, or pick another name with --name"
    )]
    NameInUse {
        name: String,
        host: String,
        started_at: DateTime<Utc>,
    },
}

impl StoreError {
    /// True when the database could not be reached (or did not answer in time), as opposed to
    /// answering with something unusable.
    pub fn is_connection(&self) -> bool {
        match self {
            StoreError::Timeout(_) => true,
            StoreError::Db(e) | StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::Tls(_)
                        | sqlx::Error::Protocol(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                ) || matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| is_connection_code(&c)))
            }
            _ => false,
        }
    }
}

/// How [`Store::write_job`] writes: a new job, or over an existing one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum JobWrite {
    Insert,
    Replace,
}

/// `NotFound` when a statement about `name` changed no row.
fn found(affected: u64, what: &'static str, name: &str) -> Result<()> {
    match affected {
        0 => Err(StoreError::NotFound {
            what,
            name: name.into(),
        }),
        _ => Ok(()),
    }
}

/// Whether process `pid` of this host still runs: it exists and is not a zombie (killed, and
/// not yet reaped by the supervisor about to restart it).
fn process_runs(pid: i64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold any byte.
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !state.is_some_and(|state| state.starts_with('Z') || state.starts_with('X'))
}

/// PostgreSQL error codes that mean "this connection or server cannot serve you now": class 08
/// (connection), 57 (shutdown, cancelled), 53300/53400 (too many connections), 25006 (a
/// read-only standby: the primary moved).
fn is_connection_code(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57") || ["53300", "53400", "25006"].contains(&code)
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A connection pool to ferry's database, PostgreSQL or SQLite.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    /// With the servers the URL names, to find the primary again after a failover.
    Postgres(PgPool, Arc<servers::Servers>),
    Sqlite(SqlitePool),
}

/// Runs the same code against whichever pool the store holds.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Postgres($pool, _) => $body,
            Backend::Sqlite($pool) => $body,
        }
    };
}

mod claims;
mod runs;
mod schema;

pub use schema::{Access, SchemaError, SchemaState};

/// Which kind of definition a lease or a status line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    Schedule,
    Monitor,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Schedule => "schedule",
            ResourceKind::Monitor => "monitor",
        }
    }
}

impl std::str::FromStr for ResourceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "schedule" => Ok(ResourceKind::Schedule),
            "monitor" => Ok(ResourceKind::Monitor),
            other => Err(format!("unknown kind {other:?}")),
        }
    }
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Store {
    /// Connects to the database at `url` (creating a missing SQLite file): `postgres://…`
    /// (with several hosts in libpq's form, the first usable one), `sqlite://path`, or a plain
    /// file path meaning SQLite. Nothing is read or written yet: [`Store::prepare`] checks the
    /// schema.
    pub async fn open(url: &str) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (pool, servers) = postgres::connect(url).await?;
            return Ok(Self {
                backend: Backend::Postgres(pool, Arc::new(servers)),
            });
        }
        Ok(Self {
            backend: Backend::Sqlite(sqlite::connect(url).await?),
        })
    }

    /// A store on a pool of its own, `connections` wide, to the same database (and following
    /// it to another server as this one does): a scheduler records its runs through one, so
    /// that the statements that keep its leases never queue behind hundreds of runs writing
    /// their events.
    pub fn beside(&self, connections: u32) -> Self {
        let backend = match &self.backend {
            Backend::Postgres(pool, servers) => Backend::Postgres(
                postgres::pool_beside(pool, servers, connections),
                servers.clone(),
            ),
            Backend::Sqlite(pool) => Backend::Sqlite(sqlite::pool_beside(pool, connections)),
        };
        Self { backend }
    }

    /// After a connection error: finds the server to use now, when the URL names several (a
    /// standby promoted after a failover); whether it moved.
    pub async fn follow_primary(&self) -> Result<bool> {
        match &self.backend {
            Backend::Postgres(pool, servers) => Ok(servers.follow(pool).await?),
            Backend::Sqlite(_) => Ok(false),
        }
    }

    /// Subscribes to definition changes or new run events (PostgreSQL only; SQLite polls).
    pub async fn notifications(&self, channel: Channel) -> Result<Option<Notifications>> {
        match &self.backend {
            Backend::Postgres(pool, _) => Ok(Some(Notifications::listen(pool, channel).await?)),
            Backend::Sqlite(_) => Ok(None),
        }
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    /// The query text for this backend.
    fn sql(&self, query: impl Into<Cow<'static, str>>) -> AssertSqlSafe<Cow<'static, str>> {
        let query = query.into();
        AssertSqlSafe(match self.backend {
            Backend::Postgres(..) => postgres::dialect(query),
            Backend::Sqlite(_) => sqlite::dialect(query),
        })
    }

    /// The database's clock: the only clock leases and firing decisions use.
    pub async fn now(&self) -> Result<DateTime<Utc>> {
        let sql = self.sql("SELECT now()");
        let (now,): (DateTime<Utc>,) =
            on_pool!(self, pool => sqlx::query_as(sql).fetch_one(pool).await)?;
        Ok(now)
    }

    // ---- definitions ----------------------------------------------------------------------

    /// A number that moves whenever a definition changes (`definitions_version`).
    pub async fn definitions_version(&self) -> Result<i64> {
        let sql = self.sql("SELECT version FROM definitions_version WHERE id = 1");
        let (version,): (i64,) = on_pool!(self, pool => sqlx::query_as(sql).fetch_one(pool).await)?;
        Ok(version)
    }

    pub async fn add_job(&self, job: &JobRow) -> Result<()> {
        let exists = self.job(&job.name).await?.is_some();
        if exists {
            return Err(StoreError::Exists {
                what: "job",
                name: job.name.clone(),
            });
        }
        self.write_job(job, JobWrite::Insert).await
    }

    /// Replaces a job's row, destinations and filters with `job`'s, in one transaction.
    pub async fn replace_job(&self, job: &JobRow) -> Result<()> {
        if self.job(&job.name).await?.is_none() {
            return Err(StoreError::NotFound {
                what: "job",
                name: job.name.clone(),
            });
        }
        self.write_job(job, JobWrite::Replace).await
    }

    async fn write_job(&self, job: &JobRow, how: JobWrite) -> Result<()> {
        let head = match how {
            JobWrite::Insert => {
                "INSERT INTO jobs (name, rule, source, max_deletes, versions_dir, checksum, \
                 keep_owner, keep_acls, keep_xattrs, keep_hard_links, keep_specials, numeric_ids, \
                 on_failure) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            }
            JobWrite::Replace => {
                "UPDATE jobs SET rule = $2, source = $3, max_deletes = $4, versions_dir = $5, \
                 checksum = $6, keep_owner = $7, keep_acls = $8, keep_xattrs = $9, \
                 keep_hard_links = $10, keep_specials = $11, numeric_ids = $12, on_failure = $13 \
                 WHERE name = $1"
            }
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(self.sql(head))
                .bind(&job.name).bind(&job.rule).bind(&job.source)
                .bind(job.max_deletes).bind(&job.versions_dir).bind(job.checksum)
                .bind(job.keep.owner).bind(job.keep.acls).bind(job.keep.xattrs)
                .bind(job.keep.hard_links).bind(job.keep.specials).bind(job.keep.numeric_ids)
                .bind(&job.on_failure)
                .execute(&mut *tx).await?;
            if how == JobWrite::Replace {
                for table in ["job_destinations", "job_filters"] {
                    sqlx::query(self.sql(format!("DELETE FROM {table} WHERE job_name = $1")))
                        .bind(&job.name)
                        .execute(&mut *tx).await?;
                }
            }
            for path in &job.destinations {
                sqlx::query(self.sql("INSERT INTO job_destinations (job_name, path) VALUES ($1, $2)"))
                    .bind(&job.name).bind(path)
                    .execute(&mut *tx).await?;
            }
            for (kind, patterns) in [("include", &job.include), ("exclude", &job.exclude)] {
                for pattern in patterns {
                    sqlx::query(self.sql(
                        "INSERT INTO job_filters (job_name, kind, pattern) VALUES ($1, $2, $3) \
                         ON CONFLICT DO NOTHING",
                    ))
                    .bind(&job.name).bind(kind).bind(pattern)
                    .execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn jobs(&self) -> Result<Vec<JobRow>> {
        let sql = self.sql(
            "SELECT name, rule, source, max_deletes, versions_dir, checksum, keep_owner, \
                  keep_acls, keep_xattrs, keep_hard_links, keep_specials, numeric_ids, on_failure \
             FROM jobs ORDER BY name",
        );
        let heads: Vec<rows::JobHead> =
            on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?;
        let sql = self.sql("SELECT job_name, path FROM job_destinations ORDER BY job_name, path");
        let dests: Vec<(String, String)> =
            on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?;
        let sql =
            self.sql("SELECT job_name, kind, pattern FROM job_filters ORDER BY job_name, pattern");
        let filters: Vec<(String, String, String)> =
            on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?;
        Ok(JobRow::assemble(heads, dests, filters))
    }

    pub async fn job(&self, name: &str) -> Result<Option<JobRow>> {
        Ok(self.jobs().await?.into_iter().find(|j| j.name == name))
    }

    /// Removes a job; refuses while a schedule or monitor still names it.
    pub async fn remove_job(&self, name: &str) -> Result<()> {
        let users = self.job_users(name).await?;
        if let Some((kind, user)) = users.first() {
            let more = match users.len() - 1 {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            return Err(StoreError::InUse {
                what: "job",
                name: name.into(),
                user: format!("{kind} {user}{more}"),
            });
        }
        let sql = self.sql("DELETE FROM jobs WHERE name = $1");
        let affected = on_pool!(self, pool => sqlx::query(sql).bind(name).execute(pool).await.map(|r| r.rows_affected()))?;
        if affected == 0 {
            return Err(StoreError::NotFound {
                what: "job",
                name: name.into(),
            });
        }
        Ok(())
    }

    async fn job_users(&self, job: &str) -> Result<Vec<(String, String)>> {
        let sql = self.sql(
            "SELECT 'schedule', name FROM schedules WHERE job_name = $1 \
             UNION ALL SELECT 'monitor', name FROM monitors WHERE job_name = $1",
        );
        Ok(on_pool!(self, pool => sqlx::query_as(sql).bind(job).fetch_all(pool).await)?)
    }

    pub async fn add_schedule(&self, s: &ScheduleRow) -> Result<()> {
        let sql = self.sql(
            "INSERT INTO schedules (name, job_name, cron, timezone, preferred, fallback_any, held, \
             retries, retry_delay_ms, misfire) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT DO NOTHING",
        );
        let affected = on_pool!(self, pool => sqlx::query(sql)
            .bind(&s.name).bind(&s.job_name).bind(&s.cron).bind(&s.timezone).bind(&s.preferred)
            .bind(s.fallback_any).bind(s.held).bind(s.retries).bind(s.retry_delay_ms).bind(&s.misfire)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        if affected == 0 {
            return Err(StoreError::Exists {
                what: "schedule",
                name: s.name.clone(),
            });
        }
        Ok(())
    }

    pub async fn schedules(&self) -> Result<Vec<ScheduleRow>> {
        let sql = self.sql(
            "SELECT name, job_name, cron, timezone, preferred, fallback_any, held, retries, \
             retry_delay_ms, misfire, run_requested_at, fired_until, last_error, created_at \
             FROM schedules ORDER BY name",
        );
        Ok(on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?)
    }

    /// Writes a schedule's definition (not its state: held, requested runs, cursor, error).
    pub async fn update_schedule(&self, s: &ScheduleRow) -> Result<()> {
        let sql = self.sql(
            "UPDATE schedules SET job_name = $2, cron = $3, timezone = $4, preferred = $5, \
             fallback_any = $6, retries = $7, retry_delay_ms = $8, misfire = $9 WHERE name = $1",
        );
        let affected = on_pool!(self, pool => sqlx::query(sql)
            .bind(&s.name).bind(&s.job_name).bind(&s.cron).bind(&s.timezone).bind(&s.preferred)
            .bind(s.fallback_any).bind(s.retries).bind(s.retry_delay_ms).bind(&s.misfire)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        found(affected, "schedule", &s.name)
    }

    /// Writes a monitor's definition (not whether it is held, nor its error).
    pub async fn update_monitor(&self, m: &MonitorRow) -> Result<()> {
        let sql = self.sql(
            "UPDATE monitors SET job_name = $2, preferred = $3, fallback_any = $4, \
             debounce_ms = $5, rescan_ms = $6 WHERE name = $1",
        );
        let affected = on_pool!(self, pool => sqlx::query(sql)
            .bind(&m.name).bind(&m.job_name).bind(&m.preferred).bind(m.fallback_any)
            .bind(m.debounce_ms).bind(m.rescan_ms)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        found(affected, "monitor", &m.name)
    }

    pub async fn add_monitor(&self, m: &MonitorRow) -> Result<()> {
        let sql = self.sql(
            "INSERT INTO monitors (name, job_name, preferred, fallback_any, held, debounce_ms, rescan_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        );
        let affected = on_pool!(self, pool => sqlx::query(sql)
            .bind(&m.name).bind(&m.job_name).bind(&m.preferred).bind(m.fallback_any).bind(m.held)
            .bind(m.debounce_ms).bind(m.rescan_ms)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        if affected == 0 {
            return Err(StoreError::Exists {
                what: "monitor",
                name: m.name.clone(),
            });
        }
        Ok(())
    }

    pub async fn monitors(&self) -> Result<Vec<MonitorRow>> {
        let sql = self.sql(
            "SELECT name, job_name, preferred, fallback_any, held, debounce_ms, rescan_ms, last_error, \
             created_at FROM monitors ORDER BY name",
        );
        Ok(on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?)
    }

    pub async fn remove(&self, kind: ResourceKind, name: &str) -> Result<()> {
        let sql = self.sql(match kind {
            ResourceKind::Schedule => "DELETE FROM schedules WHERE name = $1",
            ResourceKind::Monitor => "DELETE FROM monitors WHERE name = $1",
        });
        let affected = on_pool!(self, pool => sqlx::query(sql).bind(name).execute(pool).await.map(|r| r.rows_affected()))?;
        if affected == 0 {
            return Err(StoreError::NotFound {
                what: kind.as_str(),
                name: name.into(),
            });
        }
        Ok(())
    }

    /// Holds (pauses) or releases a schedule or monitor.
    pub async fn set_held(&self, kind: ResourceKind, name: &str, held: bool) -> Result<()> {
        let sql = self.sql(match kind {
            ResourceKind::Schedule => "UPDATE schedules SET held = $2 WHERE name = $1",
            ResourceKind::Monitor => "UPDATE monitors SET held = $2 WHERE name = $1",
        });
        let affected = on_pool!(self, pool => sqlx::query(sql).bind(name).bind(held).execute(pool).await.map(|r| r.rows_affected()))?;
        if affected == 0 {
            return Err(StoreError::NotFound {
                what: kind.as_str(),
                name: name.into(),
            });
        }
        Ok(())
    }

    /// Records (or clears) the problem a scheduler found with a definition, if it changed.
    pub async fn set_last_error(
        &self,
        kind: ResourceKind,
        name: &str,
        error: Option<&str>,
    ) -> Result<()> {
        let sql = self.sql(match kind {
            ResourceKind::Schedule => {
                "UPDATE schedules SET last_error = $2 WHERE name = $1 AND last_error IS DISTINCT FROM $2"
            }
            ResourceKind::Monitor => {
                "UPDATE monitors SET last_error = $2 WHERE name = $1 AND last_error IS DISTINCT FROM $2"
            }
        });
        on_pool!(self, pool => sqlx::query(sql).bind(name).bind(error).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Asks the holder of a schedule to fire it once, now; returns the request's time, which
    /// becomes the run's `fire_time`.
    pub async fn request_run(&self, schedule: &str) -> Result<DateTime<Utc>> {
        let sql = self.sql("UPDATE schedules SET run_requested_at = now() WHERE name = $1 RETURNING run_requested_at");
        let row: Option<(DateTime<Utc>,)> =
            on_pool!(self, pool => sqlx::query_as(sql).bind(schedule).fetch_optional(pool).await)?;
        row.map(|(at,)| at).ok_or_else(|| StoreError::NotFound {
            what: "schedule",
            name: schedule.into(),
        })
    }

    /// Clears a run request once its run exists (unless a newer request came in meanwhile).
    /// `<=`, not `=`: on SQLite a user may have written the time in another text form.
    pub async fn clear_run_request(&self, schedule: &str, requested: DateTime<Utc>) -> Result<()> {
        let sql = self.sql("UPDATE schedules SET run_requested_at = NULL WHERE name = $1 AND run_requested_at <= $2");
        on_pool!(self, pool => sqlx::query(sql).bind(schedule).bind(DbTime(requested)).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Moves the firing cursors of schedules forward, in one statement (per 500): every cron
    /// time up to each `until` was handled. A cursor never moves back.
    pub async fn set_fired_until(&self, cursors: &[(String, DateTime<Utc>)]) -> Result<()> {
        for chunk in cursors.chunks(500) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| format!("SELECT ${} AS name, ${} AS until", 2 * i + 1, 2 * i + 2))
                .collect();
            let sql = self.sql(format!(
                "UPDATE schedules SET fired_until = v.until FROM ({}) v \
                 WHERE schedules.name = v.name \
                   AND (schedules.fired_until IS NULL OR schedules.fired_until < v.until)",
                rows.join(" UNION ALL ")
            ));
            on_pool!(self, pool => {
                let mut query = sqlx::query(sql);
                for (name, until) in chunk {
                    query = query.bind(name).bind(DbTime(*until));
                }
                query.execute(pool).await.map(|r| r.rows_affected())
            })?;
        }
        Ok(())
    }

    pub async fn add_agent(&self, name: &str, address: &str) -> Result<()> {
        let sql =
            self.sql("INSERT INTO agents (name, address) VALUES ($1, $2) ON CONFLICT DO NOTHING");
        let affected = on_pool!(self, pool => sqlx::query(sql).bind(name).bind(address)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        if affected == 0 {
            return Err(StoreError::Exists {
                what: "agent",
                name: name.into(),
            });
        }
        Ok(())
    }

    /// Removes an agent no job names in its source or destinations.
    pub async fn remove_agent(&self, name: &str) -> Result<()> {
        let sql = self.sql(
            "SELECT name FROM jobs WHERE substr(source, 1, length($1) + 1) = $1 || ':' \
             UNION SELECT job_name FROM job_destinations WHERE substr(path, 1, length($1) + 1) = $1 || ':' \
             ORDER BY 1",
        );
        let users: Vec<(String,)> =
            on_pool!(self, pool => sqlx::query_as(sql).bind(name).fetch_all(pool).await)?;
        if !users.is_empty() {
            let jobs: Vec<String> = users.into_iter().map(|(job,)| job).collect();
            return Err(StoreError::InUse {
                what: "agent",
                name: name.into(),
                user: format!("job {}", jobs.join(", job ")),
            });
        }
        let sql = self.sql("DELETE FROM agents WHERE name = $1");
        let affected = on_pool!(self, pool => sqlx::query(sql).bind(name).execute(pool).await.map(|r| r.rows_affected()))?;
        if affected == 0 {
            return Err(StoreError::NotFound {
                what: "agent",
                name: name.into(),
            });
        }
        Ok(())
    }

    pub async fn agents(&self) -> Result<Vec<AgentRow>> {
        let sql = self.sql("SELECT name, address, created_at FROM agents ORDER BY name");
        Ok(on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?)
    }

    // ---- schedulers -----------------------------------------------------------------------

    /// Registers this process under its name, refusing while another live process has it.
    /// A crashed process on this same host (its pid is gone) is replaced at once rather than
    /// after its heartbeat expires, so a restart after a crash is not refused.
    pub async fn register_scheduler(&self, me: &Registration) -> Result<()> {
        if self.try_register(me, None).await? {
            return Ok(());
        }
        let holder = self
            .schedulers()
            .await?
            .into_iter()
            .find(|s| s.name == me.name);
        let Some(holder) = holder else {
            return Box::pin(self.register_scheduler(me)).await;
        };
        let crashed_here = holder.host == me.host && !process_runs(holder.pid);
        if crashed_here && self.try_register(me, Some(&holder.instance_id)).await? {
            return Ok(());
        }
        Err(StoreError::NameInUse {
            name: me.name.clone(),
            host: holder.host,
            started_at: holder.started_at,
        })
    }

    /// Takes the name if it is free, its holder stopped or expired, or its holder is `dead`.
    async fn try_register(&self, me: &Registration, dead: Option<&str>) -> Result<bool> {
        let sql = self.sql(
            "INSERT INTO schedulers (name, instance_id, host, pid, version, lease_ttl_ms, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5, $6, now(), now()) \
             ON CONFLICT (name) DO UPDATE SET instance_id = excluded.instance_id, host = excluded.host, \
               pid = excluded.pid, version = excluded.version, lease_ttl_ms = excluded.lease_ttl_ms, \
               started_at = now(), heartbeat_at = now(), stopped_at = NULL \
             WHERE schedulers.stopped_at IS NOT NULL \
                OR schedulers.heartbeat_at < now_plus_ms(-schedulers.lease_ttl_ms) \
                OR schedulers.instance_id = $7",
        );
        let affected = on_pool!(self, pool => sqlx::query(sql)
            .bind(&me.name).bind(&me.instance_id).bind(&me.host).bind(me.pid).bind(&me.version)
            .bind(me.lease_ttl_ms).bind(dead)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(affected == 1)
    }

    /// Returns false when this instance no longer owns its name (it was declared dead and
    /// replaced): the caller must stop at once.
    pub async fn heartbeat(&self, name: &str, instance: &str) -> Result<bool> {
        let sql = self
            .sql("UPDATE schedulers SET heartbeat_at = now() WHERE name = $1 AND instance_id = $2");
        let affected = on_pool!(self, pool => sqlx::query(sql).bind(name).bind(instance).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(affected == 1)
    }

    pub async fn deregister(&self, name: &str, instance: &str) -> Result<()> {
        let sql = self
            .sql("UPDATE schedulers SET stopped_at = now() WHERE name = $1 AND instance_id = $2");
        on_pool!(self, pool => sqlx::query(sql).bind(name).bind(instance).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Removes a scheduler that is not alive from the list. Its leases stay: they expired, and
    /// their epochs must keep counting up.
    pub async fn forget_scheduler(&self, name: &str) -> Result<()> {
        let scheduler = self
            .schedulers()
            .await?
            .into_iter()
            .find(|s| s.name == name);
        match scheduler {
            None => Err(StoreError::NotFound {
                what: "scheduler",
                name: name.into(),
            }),
            Some(s) if s.alive => Err(StoreError::Alive {
                name: name.into(),
                pid: s.pid,
                host: s.host,
            }),
            Some(s) => {
                let sql = self.sql("DELETE FROM schedulers WHERE name = $1 AND instance_id = $2");
                on_pool!(self, pool => sqlx::query(sql).bind(name).bind(&s.instance_id).execute(pool).await.map(|_| ()))?;
                Ok(())
            }
        }
    }

    /// Every scheduler, with the count of the live leases it holds.
    pub async fn schedulers(&self) -> Result<Vec<SchedulerRow>> {
        self.scheduler_rows(
            "(SELECT COUNT(*) FROM leases l WHERE l.holder_instance = s.instance_id AND l.expires_at >= now())",
        )
        .await
    }

    /// Every scheduler, its `leases` left at 0: counting them reads every lease row, which a
    /// tick (it only places work) has no use for.
    pub async fn schedulers_uncounted(&self) -> Result<Vec<SchedulerRow>> {
        self.scheduler_rows("0").await
    }

    async fn scheduler_rows(&self, leases: &str) -> Result<Vec<SchedulerRow>> {
        let sql = self.sql(format!(
            "SELECT s.name, s.instance_id, s.host, s.pid, s.version, s.started_at, s.heartbeat_at, \
               (s.stopped_at IS NULL AND s.heartbeat_at >= now_plus_ms(-s.lease_ttl_ms)) AS alive, \
               (s.stopped_at IS NOT NULL) AS stopped, CAST({leases} AS BIGINT) AS leases \
             FROM schedulers s ORDER BY s.name"
        ));
        Ok(on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?)
    }

    // ---- leases ---------------------------------------------------------------------------

    /// Extends, in one statement, every lease this instance holds, and returns them as
    /// (kind, name, epoch). A lease missing from the answer is lost: released, or claimed by
    /// another instance. One that expired unclaimed (the database was away) is still this
    /// instance's: a claim would have made the claimant its holder.
    pub async fn renew_all(&self, me: &LeaseHolder, ttl_ms: i64) -> Result<Vec<RenewedLease>> {
        let sql = self.sql(
            "UPDATE leases SET expires_at = now_plus_ms($2), ttl_ms = $2 \
             WHERE holder_instance = $1 RETURNING kind, name, epoch",
        );
        let rows: Vec<(String, String, i64)> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(&me.instance).bind(ttl_ms).fetch_all(pool).await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(kind, name, epoch)| match kind.parse() {
                Ok(kind) => Some(RenewedLease { kind, name, epoch }),
                Err(e) => {
                    // CHECK (kind IN ...) keeps this from happening; a row that slips by is
                    // not work this scheduler knows, so it is not kept.
                    tracing::warn!(kind, name, error = %e, "renewed a lease of an unknown kind");
                    None
                }
            })
            .collect())
    }

    /// Gives a lease up at once so another scheduler can take it without waiting for expiry.
    pub async fn release(
        &self,
        kind: ResourceKind,
        name: &str,
        me: &LeaseHolder,
        epoch: i64,
    ) -> Result<()> {
        let sql = self.sql(
            "UPDATE leases SET holder = NULL, holder_instance = NULL, expires_at = NULL \
             WHERE kind = $1 AND name = $2 AND holder_instance = $3 AND epoch = $4",
        );
        on_pool!(self, pool => sqlx::query(sql)
            .bind(kind.as_str()).bind(name).bind(&me.instance).bind(epoch)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    // ---- job holds ------------------------------------------------------------------------

    /// The jobs no live scheduler holds (for the orphan sweep).
    pub async fn unheld_jobs(&self) -> Result<Vec<String>> {
        let sql = self.sql(
            "SELECT j.name FROM jobs j LEFT JOIN job_holds h ON h.job_name = j.name \
             WHERE h.holder_instance IS NULL OR h.expires_at IS NULL OR h.expires_at < now()",
        );
        let jobs: Vec<(String,)> =
            on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?;
        Ok(jobs.into_iter().map(|(job,)| job).collect())
    }

    /// Extends every job this instance holds, in one statement; returns them as (job, epoch).
    /// A job missing from the answer was taken by another instance.
    pub async fn renew_job_holds(
        &self,
        me: &LeaseHolder,
        ttl_ms: i64,
    ) -> Result<Vec<(String, i64)>> {
        let sql = self.sql(
            "UPDATE job_holds SET expires_at = now_plus_ms($2) WHERE holder_instance = $1 \
             RETURNING job_name, epoch",
        );
        let rows: Vec<(String, i64)> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(&me.instance).bind(ttl_ms).fetch_all(pool).await)?;
        Ok(rows)
    }

    /// Gives a job up at once, so another scheduler can take it without waiting for expiry.
    pub async fn release_job(&self, job: &str, me: &LeaseHolder, epoch: i64) -> Result<()> {
        let sql = self.sql(
            "UPDATE job_holds SET holder = NULL, holder_instance = NULL, expires_at = NULL \
             WHERE job_name = $1 AND holder_instance = $2 AND epoch = $3",
        );
        on_pool!(self, pool => sqlx::query(sql)
            .bind(job).bind(&me.instance).bind(epoch)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

/// Replaces each `name(arg)` in `query` with `expand(arg)`. The argument must not contain
/// parentheses; the shared queries keep to that.
fn expand_calls(
    query: Cow<'static, str>,
    name: &str,
    expand: impl Fn(&str) -> String,
) -> Cow<'static, str> {
    let opening = format!("{name}(");
    if !query.contains(&opening) {
        return query;
    }
    let mut out = String::with_capacity(query.len() + 64);
    let mut rest: &str = &query;
    while let Some(start) = rest.find(&opening) {
        let arg_start = start + opening.len();
        let arg_len = rest[arg_start..]
            .find(')')
            .expect("an unclosed call in a ferry query");
        out.push_str(&rest[..start]);
        out.push_str(&expand(&rest[arg_start..arg_start + arg_len]));
        rest = &rest[arg_start + arg_len + 1..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}
