//! A PostgreSQL failover, as a highly available PostgreSQL does one: the primary dies, its
//! synchronous standby is promoted (`pg_ctl promote`), and three schedulers given both servers
//! in one URL (`target_session_attrs=read-write`) find the new primary and go on. Then the old
//! primary comes back as a standby of the new one and the roles swap once more. Work runs again
//! within 10 s of each promotion, no fire time runs twice, no lease ever has two holders, and
//! the destinations converge.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ferry_tests::harness::{Env, TestScheduler, snapshot, wait_until};
use ferry_tests::leases::{Incarnation, assert_leases_never_overlap};
use ferry_tests::pg::PgServer;

/// How soon after a promotion work must run again.
const BACK_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn schedulers_follow_a_promoted_standby_and_never_double_work() {
    if ferry_tests::pg::shared().is_none() {
        return;
    }
    let first = PgServer::start_with(&["synchronous_commit=on"]).expect("the primary");
    let second = PgServer::standby_of(&first).expect("a streaming standby");
    first
        .require_synchronous_standby()
        .expect("synchronous replication");
    let one_host = first.create_database().expect("createdb");
    let database = one_host.rsplit('/').next().expect("a database name");
    let env = Env::on_database(format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}?target_session_attrs=read-write",
        first.port(),
        second.port()
    ));
    env.ferry(&["db", "migrate"]).ok();
    let (tick_src, tick_dst) = (env.path("tick-src"), env.path("tick-dst"));
    let (watched, replica) = (env.path("watched"), env.path("replica"));
    for folder in [&tick_src, &watched] {
        fs::create_dir_all(folder).unwrap();
    }
    fs::write(tick_src.join("a.txt"), "scheduled").unwrap();
    env.add_job("tick", "mirror", (&tick_src, &tick_dst), &[]);
    env.ferry(&[
        "schedule",
        "add",
        "tick",
        "--job",
        "tick",
        "--cron",
        "* * * * * *",
    ])
    .ok();
    env.add_job("watch", "mirror", (&watched, &replica), &[]);
    env.ferry(&[
        "monitor",
        "add",
        "watch",
        "--job",
        "watch",
        "--debounce",
        "20ms",
    ])
    .ok();
    let schedulers: Vec<TestScheduler> = ["s1", "s2", "s3"]
        .iter()
        .map(|name| env.scheduler(name))
        .collect();
    let monitored = (watched.as_path(), replica.as_path());
    replicates(monitored, "before.txt", Duration::from_secs(20));

    failover(&env, (&first, &second), monitored, 1);
    first
        .rejoin_as_standby_of(&second)
        .expect("the old primary back as a standby");
    second
        .require_synchronous_standby()
        .expect("synchronous replication");
    replicates(monitored, "rejoined.txt", Duration::from_secs(20));
    failover(&env, (&second, &first), monitored, 2);

    fs::write(tick_src.join("b.txt"), "scheduled, late").unwrap();
    let converged = wait_until(Duration::from_secs(20), || {
        snapshot(&tick_src) == snapshot(&tick_dst) && snapshot(&watched) == snapshot(&replica)
    });
    assert!(converged, "the destinations never matched their sources");
    let alive = env
        .ferry(&["--output", "json", "scheduler", "list"])
        .ok()
        .json();
    let alive = alive
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["alive"] == true);
    assert_eq!(alive.count(), 3, "a scheduler stopped during the failovers");
    let doubled = first
        .query(
            database,
            "SELECT count(*) FROM (SELECT 1 FROM runs WHERE schedule_name IS NOT NULL \
             GROUP BY schedule_name, fire_time HAVING count(*) > 1) d",
        )
        .unwrap();
    assert_eq!(doubled, "0", "a fire time ran twice");
    let restarted = first
        .query(
            database,
            "SELECT count(*) FROM (SELECT 1 FROM run_events WHERE message LIKE 'started%' \
             GROUP BY run_id, message HAVING count(*) > 1) d",
        )
        .unwrap();
    assert_eq!(restarted, "0", "an attempt of a run started twice");
    let lives: Vec<Incarnation> = (schedulers.iter())
        .map(|s| Incarnation {
            log: s.log_path().to_path_buf(),
            killed: None,
        })
        .collect();
    assert_leases_never_overlap(&lives, Utc::now(), "database failover");
}

/// Kills `primary`, promotes `standby`, and checks that the monitor and the schedule work
/// again within [`BACK_WITHIN`] of the promotion.
fn failover(
    env: &Env,
    (primary, standby): (&PgServer, &PgServer),
    monitored: (&Path, &Path),
    round: u32,
) {
    primary.kill().expect("killing the primary");
    // Written while there is no primary: the monitor sees it now and copies it once it can.
    fs::write(
        monitored.0.join(format!("during-{round}.txt")),
        "no primary",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    standby.promote().expect("pg_ctl promote");
    let promoted = Instant::now();
    let promoted_at = Utc::now();
    replicates(monitored, &format!("after-{round}.txt"), BACK_WITHIN);
    assert!(
        monitored.1.join(format!("during-{round}.txt")).exists(),
        "round {round}: a file written while there was no primary was not replicated"
    );
    let ran = wait_until(BACK_WITHIN.saturating_sub(promoted.elapsed()), || {
        last_cron_start(env).is_some_and(|started| started > promoted_at)
    });
    assert!(
        ran,
        "round {round}: no scheduled run started within {BACK_WITHIN:?} of the promotion"
    );
    eprintln!(
        "round {round}: work ran again {:.1} s after the promotion",
        promoted.elapsed().as_secs_f64()
    );
}

/// Writes `name` into the monitored folder and waits up to `within` for its copy.
fn replicates((watched, replica): (&Path, &Path), name: &str, within: Duration) {
    fs::write(watched.join(name), name).unwrap();
    let copied = wait_until(within, || replica.join(name).exists());
    assert!(
        copied,
        "the monitor did not replicate {name} within {within:?}"
    );
}

/// When the newest cron run started, as `ferry runs` says (`None` while the database is away).
fn last_cron_start(env: &Env) -> Option<DateTime<Utc>> {
    let runs = env.ferry(&["--output", "json", "runs", "--limit", "20"]);
    if runs.code != 0 {
        return None;
    }
    let runs = runs.json();
    (runs.as_array()?.iter())
        .filter(|r| r["trigger"] == "cron")
        .filter_map(|r| r["started_at"].as_str()?.parse().ok())
        .max()
}
