//! Runs and their events: started, counted, ended (with retries and cancels), and read back
//! for `ferry runs`, `tail` and `status`.

use chrono::{DateTime, Utc};

use super::*;

impl Store {
    /// Inserts a run row; `None` when that firing already has one (it ran, or runs, elsewhere).
    pub async fn start_run(&self, run: &NewRun) -> Result<Option<i64>> {
        let sql = self.sql(
            "INSERT INTO runs (job_name, schedule_name, monitor_name, fire_time, trigger, scheduler, \
               scheduler_instance, epoch, state, started_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', now(), now()) \
             ON CONFLICT DO NOTHING RETURNING id",
        );
        let row: Option<(i64,)> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(&run.job_name).bind(&run.schedule_name).bind(&run.monitor_name)
            .bind(DbTime(run.fire_time)).bind(run.trigger).bind(&run.holder.name).bind(&run.holder.instance)
            .bind(run.epoch)
            .fetch_optional(pool).await)?;
        Ok(row.map(|(id,)| id))
    }

    /// Inserts, in one statement (per thousand), the cron firings of a tick, each `running`
    /// under `holder`; returns those inserted, as (id, schedule). A firing that already has a
    /// row (it ran, or runs, elsewhere) is left out, as [`Store::start_run`] does.
    pub async fn start_cron_runs(
        &self,
        holder: &LeaseHolder,
        firings: &[CronFiring],
    ) -> Result<Vec<(i64, String)>> {
        let mut started = Vec::with_capacity(firings.len());
        for chunk in firings.chunks(1000) {
            // $1 and $2 are the holder; each firing takes four more.
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let n = 3 + 4 * i;
                    format!(
                        "(${n}, ${}, ${}, 'cron', $1, $2, ${}, 'running', now(), now())",
                        n + 1,
                        n + 2,
                        n + 3
                    )
                })
                .collect();
            let sql = self.sql(format!(
                "INSERT INTO runs (job_name, schedule_name, fire_time, trigger, scheduler, \
                   scheduler_instance, epoch, state, started_at, updated_at) VALUES {} \
                 ON CONFLICT DO NOTHING RETURNING id, schedule_name",
                rows.join(", ")
            ));
            let inserted: Vec<(i64, String)> = on_pool!(self, pool => {
                let mut query = sqlx::query_as(sql).bind(&holder.name).bind(&holder.instance);
                for f in chunk {
                    query = query.bind(&f.job_name).bind(&f.schedule_name)
                        .bind(DbTime(f.fire_time)).bind(f.epoch);
                }
                query.fetch_all(pool).await
            })?;
            started.extend(inserted);
        }
        Ok(started)
    }

    /// Writes a running attempt's counters. Fenced: an attempt another scheduler has since
    /// taken over (or retried) is not overwritten.
    pub async fn update_run(&self, run: &RunAttempt, counters: &Counters) -> Result<()> {
        let sql = self.sql(
            "UPDATE runs SET files_copied = $4, files_deleted = $5, bytes_total = $6, bytes_sent = $7, \
               updated_at = now() \
             WHERE id = $1 AND scheduler_instance = $2 AND attempt = $3 AND state = 'running'",
        );
        on_pool!(self, pool => sqlx::query(sql).bind(run.id).bind(&run.instance).bind(run.attempt)
            .bind(counters.files_copied).bind(counters.files_deleted)
            .bind(counters.bytes_total).bind(counters.bytes_sent)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Ends an attempt; `retry_in_ms` schedules another attempt of the same firing. Fenced like
    /// [`Store::update_run`].
    pub async fn finish_run(&self, run: &RunAttempt, end: &RunEnd) -> Result<()> {
        let sql = self.sql(
            // A run someone asked to cancel ends cancelled and is not retried, however it
            // ended (a failure that came before the halt, say).
            "UPDATE runs SET \
               state = CASE WHEN cancel_requested_at IS NULL THEN $4 ELSE 'cancelled' END, \
               error = $5, files_copied = $6, files_deleted = $7, \
               bytes_total = $8, bytes_sent = $9, finished_at = now(), updated_at = now(), \
               retry_at = CASE WHEN $10 IS NULL OR cancel_requested_at IS NOT NULL THEN NULL \
                 ELSE now_plus_ms($10) END \
             WHERE id = $1 AND scheduler_instance = $2 AND attempt = $3 AND state = 'running'",
        );
        let c = &end.counters;
        on_pool!(self, pool => sqlx::query(sql).bind(run.id).bind(&run.instance).bind(run.attempt)
            .bind(end.state).bind(&end.error)
            .bind(c.files_copied).bind(c.files_deleted).bind(c.bytes_total).bind(c.bytes_sent)
            .bind(end.retry_in_ms)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Asks for run `id` to stop. A running run of a schedule is stopped by the scheduler
    /// running it at its next tick; one waiting for a retry is cancelled here and now.
    pub async fn request_cancel(&self, id: i64) -> Result<Cancel> {
        let sql = self.sql(
            "UPDATE runs SET cancel_requested_at = now() \
             WHERE id = $1 AND state = 'running' AND schedule_name IS NOT NULL",
        );
        let affected = on_pool!(self, pool => sqlx::query(sql).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
        if affected > 0 {
            return Ok(Cancel::Asked);
        }
        let sql = self.sql(
            "UPDATE runs SET state = 'cancelled', retry_at = NULL, cancel_requested_at = now(), \
               updated_at = now() WHERE id = $1 AND state <> 'running' AND retry_at IS NOT NULL",
        );
        let affected = on_pool!(self, pool => sqlx::query(sql).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
        if affected > 0 {
            return Ok(Cancel::RetryDropped);
        }
        match self.run(id).await? {
            None => Err(StoreError::NotFound {
                what: "run",
                name: id.to_string(),
            }),
            Some(run) => Ok(Cancel::Not(Box::new(run))),
        }
    }

    /// The runs this scheduler instance runs that someone asked to cancel.
    pub async fn cancel_requests(&self, instance: &str) -> Result<Vec<i64>> {
        let sql = self.sql(
            "SELECT id FROM runs WHERE scheduler_instance = $1 AND state = 'running' \
             AND cancel_requested_at IS NOT NULL",
        );
        let ids: Vec<(i64,)> =
            on_pool!(self, pool => sqlx::query_as(sql).bind(instance).fetch_all(pool).await)?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// Whether someone asked to cancel run `id`.
    pub async fn cancel_requested(&self, id: i64) -> Result<bool> {
        let sql = self.sql("SELECT cancel_requested_at IS NOT NULL FROM runs WHERE id = $1");
        let asked: Option<(bool,)> =
            on_pool!(self, pool => sqlx::query_as(sql).bind(id).fetch_optional(pool).await)?;
        Ok(asked.is_some_and(|(asked,)| asked))
    }

    /// The runs this scheduler instance has `running`.
    pub async fn running_runs(&self, instance: &str) -> Result<Vec<i64>> {
        let sql =
            self.sql("SELECT id FROM runs WHERE scheduler_instance = $1 AND state = 'running'");
        let ids: Vec<(i64,)> =
            on_pool!(self, pool => sqlx::query_as(sql).bind(instance).fetch_all(pool).await)?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// Marks run `id` of this instance interrupted: no task of its scheduler carries it out
    /// (the tick that started it was cut off before its task began). It is retried as its
    /// schedule allows.
    pub async fn interrupt_stray(&self, id: i64, instance: &str) -> Result<()> {
        let sql = self.sql(
            "UPDATE runs SET state = 'interrupted', finished_at = now(), updated_at = now(), \
               error = 'its scheduler lost contact with the database while starting it, so it never began', \
               retry_at = CASE WHEN attempt <= COALESCE((SELECT retries FROM schedules s \
                 WHERE s.name = runs.schedule_name), 0) THEN now() END \
             WHERE id = $1 AND scheduler_instance = $2 AND state = 'running'",
        );
        on_pool!(self, pool => sqlx::query(sql).bind(id).bind(instance)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Runs waiting for another attempt whose time has come, oldest firing first (one query
    /// for all schedules; the caller picks those it holds).
    pub async fn due_retries(&self) -> Result<Vec<RunRow>> {
        let sql = self.sql(run_select(
            "WHERE schedule_name IS NOT NULL AND retry_at IS NOT NULL AND retry_at <= now() ORDER BY fire_time",
        ));
        Ok(on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?)
    }

    /// Takes a due retry for this instance: the run goes back to `running` with the next attempt
    /// number. Only one scheduler can win this, so an attempt runs once.
    pub async fn begin_retry(
        &self,
        id: i64,
        attempt: i32,
        me: &LeaseHolder,
        epoch: i64,
    ) -> Result<bool> {
        let sql = self.sql(
            "UPDATE runs SET state = 'running', attempt = attempt + 1, retry_at = NULL, error = NULL, \
               finished_at = NULL, scheduler = $3, scheduler_instance = $4, epoch = $5, updated_at = now() \
             WHERE id = $1 AND attempt = $2 AND retry_at IS NOT NULL AND cancel_requested_at IS NULL",
        );
        let affected = on_pool!(self, pool => sqlx::query(sql)
            .bind(id).bind(attempt).bind(&me.name).bind(&me.instance).bind(epoch)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(affected == 1)
    }

    pub async fn runs(&self, job: Option<&str>, limit: i64) -> Result<Vec<RunRow>> {
        let sql = self.sql(run_select(
            "WHERE ($1 IS NULL OR job_name = $1) ORDER BY started_at DESC, id DESC LIMIT $2",
        ));
        Ok(on_pool!(self, pool => sqlx::query_as(sql).bind(job).bind(limit).fetch_all(pool).await)?)
    }

    pub async fn run(&self, id: i64) -> Result<Option<RunRow>> {
        let sql = self.sql(run_select("WHERE id = $1"));
        Ok(on_pool!(self, pool => sqlx::query_as(sql).bind(id).fetch_optional(pool).await)?)
    }

    pub async fn run_for(
        &self,
        schedule: &str,
        fire_time: DateTime<Utc>,
    ) -> Result<Option<RunRow>> {
        let sql = self.sql(run_select("WHERE schedule_name = $1 AND fire_time = $2"));
        Ok(
            on_pool!(self, pool => sqlx::query_as(sql).bind(schedule).bind(DbTime(fire_time)).fetch_optional(pool).await)?,
        )
    }

    /// Deletes up to `batch` finished runs (with their events) that ended more than `keep_ms`
    /// ago; returns how many. Small batches keep each statement short on a busy database.
    pub async fn prune_runs(&self, keep_ms: i64, batch: i64) -> Result<u64> {
        let sql = self.sql(
            "DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE state <> 'running' \
               AND retry_at IS NULL AND finished_at < now_plus_ms(-$1) ORDER BY id LIMIT $2)",
        );
        Ok(
            on_pool!(self, pool => sqlx::query(sql).bind(keep_ms).bind(batch)
            .execute(pool).await.map(|r| r.rows_affected()))?,
        )
    }

    pub async fn add_event(
        &self,
        run_id: i64,
        level: &str,
        message: &str,
        path: Option<&str>,
    ) -> Result<()> {
        let sql = self.sql("INSERT INTO run_events (run_id, at, level, message, path) VALUES ($1, now(), $2, $3, $4)");
        on_pool!(self, pool => sqlx::query(sql).bind(run_id).bind(level).bind(message).bind(path)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Events with an id above `after`, oldest first, with their run's names.
    pub async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<EventRow>> {
        let sql = self.sql(
            "SELECT e.id, e.run_id, e.at, e.level, e.message, e.path, r.job_name, \
               COALESCE(r.schedule_name, r.monitor_name) AS source_name \
             FROM run_events e JOIN runs r ON r.id = e.run_id WHERE e.id > $1 ORDER BY e.id LIMIT $2",
        );
        Ok(
            on_pool!(self, pool => sqlx::query_as(sql).bind(after).bind(limit).fetch_all(pool).await)?,
        )
    }

    /// The id below the newest `count` events, to start a tail from.
    pub async fn event_id_before_last(&self, count: i64) -> Result<i64> {
        let sql = self.sql("SELECT COALESCE(MAX(id), 0) FROM run_events");
        let (max,): (i64,) = on_pool!(self, pool => sqlx::query_as(sql).fetch_one(pool).await)?;
        Ok((max - count).max(0))
    }

    pub async fn status(&self) -> Result<Vec<StatusRow>> {
        let sql = self.sql(
            "SELECT kind, name, job_name, state, holder, preferred, fallback_any, epoch, last_error \
             FROM ferry_status ORDER BY kind DESC, name",
        );
        Ok(on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?)
    }

    /// The newest run of each schedule and monitor, for status.
    pub async fn last_runs(&self) -> Result<Vec<RunRow>> {
        let sql = self.sql(run_select(
            "WHERE id IN (SELECT MAX(id) FROM runs GROUP BY COALESCE(schedule_name, monitor_name), \
               schedule_name IS NULL)",
        ));
        Ok(on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?)
    }
}

/// A query for whole run rows: the columns [`RunRow`] maps, then `tail`.
fn run_select(tail: &str) -> String {
    format!("SELECT {RUN_COLUMNS} FROM runs {tail}")
}
