//! `bash bench/scale.sh [MINUTES]`: how ferry's scheduling holds up with many definitions.
//!
//! PostgreSQL: 10,000 schedules (each firing once a minute, spread over the 60 seconds) and
//! 1,000 monitors, each with a job of its own on a tiny local folder, on three schedulers and
//! one private PostgreSQL. After every item is held and a minute of warm-up, it measures for
//! MINUTES (default 2): the lag from each fire time to its run's start, the schedulers' CPU and
//! peak memory, the database's statements per second (pg_stat_statements) and CPU. Then one
//! scheduler is SIGKILLed and it times until its third of the work is held again, with the lag
//! of the firings meanwhile. SQLite: one scheduler, 1,000 schedules, the same lag measure.
//! The folders are tiny so that the bench measures the scheduling, not the copying.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ferry_bench::{machine, replace_section, results_file, today};
use ferry_tests::harness::{Backend, Env, TestScheduler};
use ferry_tests::pg::PgServer;

const SCHEDULES: usize = 10_000;
const MONITORS: usize = 1_000;
const SQLITE_SCHEDULES: usize = 1_000;
const WARM_UP: Duration = Duration::from_secs(60);

fn main() -> Result<()> {
    let minutes: u64 = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(2);
    let window = Duration::from_secs(60 * minutes);
    // Durable, as a deployment runs it: every commit waits for its flush.
    let server = PgServer::start_with(&[
        "shared_preload_libraries=pg_stat_statements",
        "max_connections=300",
        "fsync=on",
        "synchronous_commit=on",
        "full_page_writes=on",
    ])
    .context("starting PostgreSQL (tests/run.sh installs it)")?;
    let postgres = postgres_run(&server, window)?;
    let sqlite = sqlite_run(window)?;
    write_results(minutes, &server, &postgres, &sqlite)
}

/// What one measured stretch saw.
struct Measured {
    lag: Lags,
    /// Per scheduler: CPU seconds per second of the window, and peak resident memory in MiB.
    schedulers: Vec<(String, f64, f64)>,
    database: Option<Database>,
    /// How long until every item was held after the schedulers started.
    all_held: Duration,
    failover: Option<(Duration, Lags)>,
}

struct Database {
    statements_per_second: f64,
    /// Ticks of each scheduler a second, on average.
    ticks_per_second: f64,
    cpu: f64,
}

/// Lag from fire time to run start, in seconds, and fire times that did not run.
struct Lags {
    samples: Vec<f64>,
    missing: usize,
}

fn postgres_run(server: &PgServer, window: Duration) -> Result<Measured> {
    let url = server.create_database()?;
    let database = url
        .rsplit('/')
        .next()
        .context("a database name")?
        .to_owned();
    let env = Env::on_database(url);
    env.ferry(&["db", "migrate"]).ok();
    define(&env, SCHEDULES, MONITORS)?;
    server.query(
        &database,
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
    )?;
    let names = ["s1", "s2", "s3"];
    let started = Instant::now();
    let mut schedulers: Vec<TestScheduler> =
        names.iter().map(|n| quiet_scheduler(&env, n)).collect();
    let items = SCHEDULES + MONITORS;
    wait_until_held(&env, items, Duration::from_secs(600))?;
    let all_held = started.elapsed();
    eprintln!(
        "all {items} items held after {:.1} s; warming up",
        all_held.as_secs_f64()
    );
    std::thread::sleep(WARM_UP);

    let calls = |server: &PgServer, like: &str| -> Result<f64> {
        let query = format!(
            "SELECT COALESCE(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '{like}%'"
        );
        Ok(server.query(&database, &query)?.parse()?)
    };
    let statements = |server: &PgServer| calls(server, "");
    // Each tick begins with one heartbeat.
    let ticks = |server: &PgServer| calls(server, "UPDATE schedulers SET heartbeat_at");
    let (from, calls_before, ticks_before, db_cpu_before) = (
        db_now(&env),
        statements(server)?,
        ticks(server)?,
        cpu_seconds(&server.processes()?),
    );
    let cpu_before: Vec<f64> = schedulers.iter().map(|s| cpu_seconds(&[s.pid()])).collect();
    let clock = Instant::now();
    std::thread::sleep(window);
    let elapsed = clock.elapsed().as_secs_f64();
    let until = db_now(&env);
    let statements_run = statements(server)? - calls_before;
    let tick_rate = (ticks(server)? - ticks_before) / elapsed / names.len() as f64;
    let db_cpu = cpu_seconds(&server.processes()?) - db_cpu_before;
    let usage: Vec<(String, f64, f64)> = schedulers
        .iter()
        .zip(&cpu_before)
        .map(|(s, before)| {
            let cpu = (cpu_seconds(&[s.pid()]) - before) / elapsed;
            (s.name.clone(), cpu, peak_mib(s.pid()))
        })
        .collect();
    let lag = lags(&env, &from, &until, SCHEDULES)?;
    eprintln!(
        "PostgreSQL: lag {}; schedulers (name, CPU, MiB) {usage:?}, {tick_rate:.1} ticks/s each; \
         {:.0} statements/s, database CPU {:.3}",
        summary(&lag),
        statements_run / elapsed,
        db_cpu / elapsed
    );

    // A third of the load loses its scheduler.
    let killed_at = db_now(&env);
    let clock = Instant::now();
    let killed = schedulers.pop().context("three schedulers")?;
    let victim = killed.name.clone();
    killed.kill();
    wait_until_held_by_others(&env, items, &victim, Duration::from_secs(300))?;
    let failover = clock.elapsed();
    std::thread::sleep(Duration::from_secs(65));
    let after = db_now(&env);
    let failover_lag = lags(&env, &killed_at, &after, SCHEDULES)?;
    eprintln!(
        "failover of a third: {:.1} s; lag meanwhile {}",
        failover.as_secs_f64(),
        summary(&failover_lag)
    );
    Ok(Measured {
        lag,
        schedulers: usage,
        database: Some(Database {
            statements_per_second: statements_run / elapsed,
            ticks_per_second: tick_rate,
            cpu: db_cpu / elapsed,
        }),
        all_held,
        failover: Some((failover, failover_lag)),
    })
}

fn sqlite_run(window: Duration) -> Result<Measured> {
    let env = Env::new(Backend::Sqlite);
    env.ferry(&["db", "migrate"]).ok();
    define(&env, SQLITE_SCHEDULES, 0)?;
    let started = Instant::now();
    let scheduler = quiet_scheduler(&env, "s1");
    wait_until_held(&env, SQLITE_SCHEDULES, Duration::from_secs(300))?;
    let all_held = started.elapsed();
    std::thread::sleep(WARM_UP);
    let (from, before, clock) = (
        db_now(&env),
        cpu_seconds(&[scheduler.pid()]),
        Instant::now(),
    );
    std::thread::sleep(window);
    let cpu = (cpu_seconds(&[scheduler.pid()]) - before) / clock.elapsed().as_secs_f64();
    let until = db_now(&env);
    Ok(Measured {
        lag: lags(&env, &from, &until, SQLITE_SCHEDULES)?,
        schedulers: vec![("s1".into(), cpu, peak_mib(scheduler.pid()))],
        database: None,
        all_held,
        failover: None,
    })
}

/// A scheduler that logs at info (runs started, claims), not the tests' debug.
fn quiet_scheduler(env: &Env, name: &str) -> TestScheduler {
    TestScheduler::start_with_vars(env, name, &[], &[("FERRY_LOG", "info")])
}

/// Jobs on tiny folders (one small file each), one per schedule and per monitor, written with
/// plain SQL as an administrator would load them in bulk.
fn define(env: &Env, schedules: usize, monitors: usize) -> Result<()> {
    let root = env.path("folders");
    for i in 0..schedules + monitors {
        let src = root.join(format!("src{i}"));
        fs::create_dir_all(&src)?;
        fs::write(src.join("f.txt"), format!("{i}"))?;
    }
    let root = root.to_str().context("a UTF-8 path")?;
    let (last_schedule, last) = (schedules as i64 - 1, (schedules + monitors) as i64 - 1);
    env.sql(&format!(
        "INSERT INTO jobs (name, rule, source) SELECT 'j' || i, 'mirror', '{root}/src' || i FROM ({range}) r;
         INSERT INTO job_destinations (job_name, path) SELECT 'j' || i, '{root}/dst' || i FROM ({range}) r;
         INSERT INTO schedules (name, job_name, cron) SELECT 's' || i, 'j' || i, (i % 60) || ' * * * * *'
           FROM ({range}) r WHERE i <= {last_schedule};
         INSERT INTO monitors (name, job_name) SELECT 'm' || i, 'j' || i
           FROM ({range}) r WHERE i > {last_schedule};",
        range = series(env, last),
    ));
    Ok(())
}

/// The integers 0..=last as a one-column query, in the backend's dialect.
fn series(env: &Env, last: i64) -> String {
    match env.backend {
        Backend::Postgres => format!("SELECT generate_series(0, {last}) AS i"),
        Backend::Sqlite => format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last}) SELECT i FROM n"
        ),
    }
}

fn wait_until_held(env: &Env, items: usize, limit: Duration) -> Result<()> {
    let query = "SELECT CAST(COUNT(*) AS TEXT) FROM ferry_status WHERE holder IS NOT NULL";
    wait_for_count(env, query, items, limit)
}

/// Waits until every item has a live lease held by a scheduler other than `victim`.
fn wait_until_held_by_others(env: &Env, items: usize, victim: &str, limit: Duration) -> Result<()> {
    let query = format!(
        "SELECT CAST(COUNT(*) AS TEXT) FROM leases WHERE holder IS NOT NULL \
         AND holder <> '{victim}' AND expires_at > now()"
    );
    wait_for_count(env, &query, items, limit)
}

fn wait_for_count(env: &Env, query: &str, items: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let held: usize = env.sql_text(query).unwrap_or_default().parse().unwrap_or(0);
        if held >= items {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("not every one of the {items} items was held within {limit:?}")
}

/// The database's clock, as text the lag query compares fire times with.
fn db_now(env: &Env) -> String {
    let now = match env.backend {
        Backend::Postgres => "SELECT CAST(now() AS TEXT)",
        Backend::Sqlite => "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
    };
    env.sql_text(now).expect("the database's clock")
}

/// The lag of every cron firing with a fire time in [from, until), and how many of the
/// `schedules` × minutes firings that should have run did not.
fn lags(env: &Env, from: &str, until: &str, schedules: usize) -> Result<Lags> {
    let seconds = match env.backend {
        Backend::Postgres => "EXTRACT(EPOCH FROM (started_at - fire_time))",
        Backend::Sqlite => "(julianday(started_at) - julianday(fire_time)) * 86400.0",
    };
    let bounds = format!("fire_time >= '{from}' AND fire_time < '{until}' AND trigger = 'cron'");
    let samples: Vec<f64> = env
        .sql_text(&format!(
            "SELECT string_agg(CAST({seconds} AS TEXT), ',') FROM runs WHERE {bounds}"
        ))
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let span: f64 = env
        .sql_text(&match env.backend {
            Backend::Postgres => format!("SELECT CAST(EXTRACT(EPOCH FROM (TIMESTAMPTZ '{until}' - TIMESTAMPTZ '{from}')) AS TEXT)"),
            Backend::Sqlite => format!("SELECT CAST((julianday('{until}') - julianday('{from}')) * 86400.0 AS TEXT)"),
        })
        .context("the window's length")?
        .parse()?;
    let expected = (span.floor() as usize) * schedules / 60;
    ensure!(!samples.is_empty(), "no cron run started in the window");
    Ok(Lags {
        missing: expected.saturating_sub(samples.len()),
        samples,
    })
}

/// User and system CPU seconds of `pids` so far.
fn cpu_seconds(pids: &[i32]) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    pids.iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / ticks
}

/// Peak resident memory of `pid` in MiB (VmHWM).
fn peak_mib(pid: i32) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn summary(lag: &Lags) -> String {
    let mut sorted = lag.samples.clone();
    sorted.sort_by(f64::total_cmp);
    let rank =
        |q: f64| sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    format!(
        "{:.3} s | {:.3} s | {:.3} s | {} runs, {} missing",
        rank(0.5),
        rank(0.99),
        sorted[sorted.len() - 1],
        sorted.len(),
        lag.missing
    )
}

fn write_results(minutes: u64, server: &PgServer, pg: &Measured, sqlite: &Measured) -> Result<()> {
    let version = server.query("postgres", "SHOW server_version")?;
    let mut s = String::from("<!-- scale:start -->\n## Scale (bench/scale.sh)\n\n");
    s += &format!(
        "`bash bench/scale.sh {minutes}` on {}, {}; PostgreSQL {version} (private, durable: fsync and synchronous commits on), \
         default scheduler settings (lease TTL 3 s, heartbeat 1 s). Each schedule and monitor has \
         a job of its own on a tiny local folder, so this measures the scheduling, not the \
         copying. Measured over {minutes} min after every item was held and a minute of warm-up.\n\n",
        today(),
        machine()
    );
    s += "| setup | lag median | lag p99 | lag max | firings |\n| --- | --- | --- | --- | --- |\n";
    s += &format!(
        "| PostgreSQL, {SCHEDULES} schedules + {MONITORS} monitors, 3 schedulers | {} |\n",
        summary(&pg.lag)
    );
    if let Some((_, lag)) = &pg.failover {
        s += &format!(
            "| the same, the minute after one scheduler is SIGKILLed | {} |\n",
            summary(lag)
        );
    }
    s += &format!(
        "| SQLite, {SQLITE_SCHEDULES} schedules, 1 scheduler | {} |\n\n",
        summary(&sqlite.lag)
    );
    if let Some((took, _)) = &pg.failover {
        s += &format!(
            "Failover of a third of the load (SIGKILL of one scheduler → every item held \
             again): {:.1} s. Startup (schedulers started → all {} items held): {:.1} s.\n\n",
            took.as_secs_f64(),
            SCHEDULES + MONITORS,
            pg.all_held.as_secs_f64()
        );
    }
    s += "| process | CPU (cores) | peak memory |\n| --- | --- | --- |\n";
    for (name, cpu, mib) in &pg.schedulers {
        s += &format!("| PostgreSQL scheduler {name} | {cpu:.3} | {mib:.0} MiB |\n");
    }
    if let Some(db) = &pg.database {
        s += &format!(
            "| PostgreSQL server (all its processes; {:.0} statements/s, the schedulers ticking \
             {:.1} times a second each) | {:.3} | |\n",
            db.statements_per_second, db.ticks_per_second, db.cpu
        );
    }
    for (name, cpu, mib) in &sqlite.schedulers {
        s += &format!("| SQLite scheduler {name} | {cpu:.3} | {mib:.0} MiB |\n");
    }
    s += "\nPublished anchors, not measured here: db-scheduler reports 2,000-11,000 executions/s on \
          one PostgreSQL; Quartz's clustered JobStore takes one database row lock (QRTZ_LOCKS) per \
          trigger acquisition across the cluster; River works jobs off a PostgreSQL queue. The load \
          here is 167 firings/s (10,000 a minute) plus 1,000 watches.\n\
          <!-- scale:end -->\n";
    print!("{s}");
    replace_section(&results_file(), "scale", &s)
}
