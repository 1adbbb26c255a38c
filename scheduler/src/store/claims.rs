//! Claims in batches: whatever a tick claims, it claims in a few statements, however many items
//! (the jobs held, the lease rows made, their former holders read, the leases taken, the runs
//! their former holders left marked interrupted), so that a scheduler taking over thousands of
//! schedules after a failover does not spend a round trip on each. Each statement is still a
//! compare-and-swap per row: of two schedulers claiming the same item, one wins.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::*;

/// A lease won by [`Store::claim_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedLease {
    pub name: String,
    pub epoch: i64,
    /// Another instance held it and stopped renewing it: this claim is a failover.
    pub abandoned: bool,
}

/// A time up to which a schedule fired, if it ever did.
type FiredUntil = Option<DateTime<Utc>>;

/// How far a schedule's firing got, for a new holder: its cursor (`fired_until`) and its
/// newest cron firing recorded.
pub type FiredSoFar = (FiredUntil, FiredUntil);

impl Store {
    /// Takes every job of `jobs` that nobody holds (or whose holder's time ran out), and
    /// confirms those this instance holds already; returns them with their epochs, raised by
    /// one for each that changed hands. Jobs another instance holds are left out.
    pub async fn hold_jobs(
        &self,
        jobs: &[String],
        me: &LeaseHolder,
        ttl_ms: i64,
    ) -> Result<Vec<(String, i64)>> {
        let list = names_json(jobs);
        let sql = self.sql(
            "INSERT INTO job_holds (job_name) SELECT value FROM json_items($1) WHERE true \
             ON CONFLICT DO NOTHING",
        );
        on_pool!(self, pool => sqlx::query(sql).bind(&list).execute(pool).await.map(|r| r.rows_affected()))?;
        let sql = self.sql(
            "UPDATE job_holds SET holder = $2, holder_instance = $3, expires_at = now_plus_ms($4), \
               epoch = CASE WHEN holder_instance = $3 THEN epoch ELSE epoch + 1 END \
             WHERE job_name IN (SELECT value FROM json_items($1)) AND (holder_instance IS NULL \
               OR holder_instance = $3 OR expires_at IS NULL OR expires_at < now()) \
             RETURNING job_name, epoch",
        );
        Ok(on_pool!(self, pool => sqlx::query_as(sql)
            .bind(&list).bind(&me.name).bind(&me.instance).bind(ttl_ms)
            .fetch_all(pool).await)?)
    }

    /// Claims every lease of `names` (all of `kind`) that is free or expired, making the rows
    /// that do not exist yet; returns those won, each with its new epoch.
    pub async fn claim_all(
        &self,
        kind: ResourceKind,
        names: &[String],
        me: &LeaseHolder,
        ttl_ms: i64,
    ) -> Result<Vec<ClaimedLease>> {
        let list = names_json(names);
        let sql = self.sql(
            "INSERT INTO leases (kind, name) SELECT CAST($1 AS TEXT), value FROM json_items($2) \
             WHERE true ON CONFLICT DO NOTHING",
        );
        on_pool!(self, pool => sqlx::query(sql).bind(kind.as_str()).bind(&list).execute(pool).await.map(|r| r.rows_affected()))?;
        // Read before the claim, for the failover count only: the claim decides.
        let sql = self.sql(
            "SELECT name FROM leases WHERE kind = $1 AND name IN (SELECT value FROM json_items($2)) \
             AND holder_instance IS NOT NULL",
        );
        let held: Vec<(String,)> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(kind.as_str()).bind(&list).fetch_all(pool).await)?;
        let held: HashSet<String> = held.into_iter().map(|(name,)| name).collect();
        let sql = self.sql(
            "UPDATE leases SET holder = $3, holder_instance = $4, epoch = epoch + 1, ttl_ms = $5, \
               acquired_at = now(), expires_at = now_plus_ms($5) \
             WHERE kind = $1 AND name IN (SELECT value FROM json_items($2)) \
               AND (holder_instance IS NULL OR expires_at IS NULL OR expires_at < now()) \
             RETURNING name, epoch",
        );
        let won: Vec<(String, i64)> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(kind.as_str()).bind(&list).bind(&me.name).bind(&me.instance).bind(ttl_ms)
            .fetch_all(pool).await)?;
        Ok(won
            .into_iter()
            .map(|(name, epoch)| ClaimedLease {
                abandoned: held.contains(&name),
                name,
                epoch,
            })
            .collect())
    }

    /// Marks the `running` runs of the schedules or monitors `names` that were started under an
    /// older epoch than their lease's now (their holder died or lost the lease) as interrupted,
    /// scheduling a retry where the schedule has attempts left (a monitor's next holder starts
    /// a run of its own).
    pub async fn interrupt_orphans(&self, kind: ResourceKind, names: &[String]) -> Result<u64> {
        let (column, error) = match kind {
            ResourceKind::Schedule => ("schedule_name", "stopped before the run ended"),
            ResourceKind::Monitor => ("monitor_name", "stopped while watching"),
        };
        let sql = self.sql(format!(
            "UPDATE runs SET state = 'interrupted', finished_at = now(), updated_at = now(), \
               error = 'its scheduler ' || COALESCE(scheduler, '?') || ' {error}', \
               retry_at = CASE WHEN attempt <= COALESCE((SELECT s.retries FROM schedules s \
                 WHERE s.name = runs.schedule_name), 0) THEN now() END \
             WHERE state = 'running' AND {column} IN (SELECT value FROM json_items($2)) \
               AND epoch < (SELECT l.epoch FROM leases l WHERE l.kind = $1 AND l.name = runs.{column})"
        ));
        let affected = on_pool!(self, pool => sqlx::query(sql)
            .bind(kind.as_str()).bind(names_json(names))
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(affected)
    }

    /// How far each schedule of `names` has fired (see [`FiredSoFar`]), read fresh for a new
    /// holder.
    pub async fn fired_so_far(&self, names: &[String]) -> Result<HashMap<String, FiredSoFar>> {
        let sql = self.sql(
            "SELECT s.name, s.fired_until, (SELECT MAX(r.fire_time) FROM runs r \
               WHERE r.schedule_name = s.name AND r.trigger = 'cron') \
             FROM schedules s WHERE s.name IN (SELECT value FROM json_items($1))",
        );
        let rows: Vec<(String, FiredUntil, FiredUntil)> = on_pool!(self, pool => sqlx::query_as(sql).bind(names_json(names)).fetch_all(pool).await)?;
        Ok(rows
            .into_iter()
            .map(|(name, until, last)| (name, (until, last)))
            .collect())
    }
}

/// A list of names as the JSON array `json_items` reads.
fn names_json(names: &[String]) -> String {
    serde_json::to_string(names).expect("strings always serialize")
}
