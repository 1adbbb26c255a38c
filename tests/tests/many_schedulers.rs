//! Several `ferry scheduler run` processes sharing one database: failover after SIGKILL, work
//! returning to its preferred scheduler, pinned work waiting, even spreading, a database
//! restart, and a frozen holder that must not write once it wakes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_tests::harness::{Backend, Env, TestScheduler, backends, wait_until};

type Time = chrono::DateTime<chrono::FixedOffset>;
use ferry_tests::pg::own_server;
use serde_json::Value;

/// A mirror job from `NAME-src` to `NAME-dst` with a monitor `NAME`; returns the two folders.
fn monitored(env: &Env, name: &str, monitor_flags: &[&str]) -> (PathBuf, PathBuf) {
    let (src, dst) = (
        env.path(&format!("{name}-src")),
        env.path(&format!("{name}-dst")),
    );
    fs::create_dir_all(&src).unwrap();
    let (from, to) = (src.to_str().unwrap(), dst.to_str().unwrap());
    env.ferry(&[
        "job", "add", name, "--rule", "mirror", "--from", from, "--to", to,
    ])
    .ok();
    let base = ["monitor", "add", name, "--job", name, "--debounce", "20ms"];
    env.ferry(&[&base[..], monitor_flags].concat()).ok();
    (src, dst)
}

fn status_of(env: &Env, name: &str) -> Value {
    let status = env.ferry(&["--output", "json", "status"]).ok().json();
    let found = status["definitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .cloned();
    found.unwrap_or(Value::Null)
}

fn arrives(path: &Path, within: Duration) -> bool {
    wait_until(within, || path.exists())
}

fn count(env: &Env, query: &str) -> i64 {
    env.sql_text(query)
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

#[test]
fn a_killed_holders_monitor_fails_over_and_returns_to_its_preferred_scheduler() {
    for backend in backends() {
        let env = Env::new(backend);
        let s1 = env.scheduler("s1");
        let _s2 = env.scheduler("s2");
        let _s3 = env.scheduler("s3");
        let (src, dst) = monitored(&env, "m", &["--prefer", "s1"]);
        assert!(
            wait_until(Duration::from_secs(10), || env.holder("m").as_deref()
                == Some("s1")),
            "{backend:?}"
        );
        fs::write(src.join("a.txt"), "a").unwrap();
        assert!(
            arrives(&dst.join("a.txt"), Duration::from_secs(10)),
            "{backend:?}: {}",
            s1.log()
        );

        s1.kill();
        let killed = Instant::now();
        fs::write(src.join("after-kill.txt"), "b").unwrap();
        assert!(
            arrives(&dst.join("after-kill.txt"), Duration::from_secs(15)),
            "{backend:?}: no failover"
        );
        let failover = killed.elapsed();
        assert!(
            failover < Duration::from_secs(15),
            "{backend:?}: failover took {failover:?}"
        );
        let holder = env.holder("m");
        assert!(
            matches!(holder.as_deref(), Some("s2" | "s3")),
            "{backend:?}: {holder:?}"
        );
        let why = status_of(&env, "m")["placement"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            why.starts_with("fallback: preferred s1 down since"),
            "{backend:?}: {why}"
        );

        let _s1 = env.scheduler("s1");
        assert!(
            wait_until(Duration::from_secs(15), || env.holder("m").as_deref()
                == Some("s1")),
            "{backend:?}: the monitor never returned to s1 ({:?})",
            env.holder("m")
        );
        fs::write(src.join("back.txt"), "c").unwrap();
        assert!(
            arrives(&dst.join("back.txt"), Duration::from_secs(10)),
            "{backend:?}"
        );
        assert_eq!(status_of(&env, "m")["placement"], "preferred");
    }
}

#[test]
fn pinned_work_without_fallback_waits_for_its_scheduler() {
    for backend in backends() {
        let env = Env::new(backend);
        let s1 = env.scheduler("s1");
        let _s2 = env.scheduler("s2");
        let (src, dst) = monitored(&env, "pinned", &["--prefer", "s1", "--no-fallback"]);
        assert!(wait_until(Duration::from_secs(10), || env
            .holder("pinned")
            .as_deref()
            == Some("s1")));

        s1.kill();
        let waiting = || {
            let status = status_of(&env, "pinned");
            status["state"] == "waiting"
                && status["placement"]
                    .as_str()
                    .unwrap_or("")
                    .contains("fallback off")
        };
        assert!(
            wait_until(Duration::from_secs(10), waiting),
            "{backend:?}: {:#}",
            status_of(&env, "pinned")
        );
        fs::write(src.join("while-down.txt"), "x").unwrap();
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            !dst.join("while-down.txt").exists(),
            "{backend:?}: work ran without its scheduler"
        );
        assert_eq!(env.holder("pinned"), None);

        let _s1 = env.scheduler("s1");
        assert!(
            arrives(&dst.join("while-down.txt"), Duration::from_secs(15)),
            "{backend:?}"
        );
        assert_eq!(env.holder("pinned").as_deref(), Some("s1"));
    }
}

#[test]
fn unpinned_schedules_spread_evenly_and_rebalance() {
    for backend in backends() {
        let env = Env::new(backend);
        let src = env.path("src");
        fs::create_dir_all(&src).unwrap();
        // A job's schedules run on one scheduler: ten jobs spread, one schedule each.
        for i in 0..10 {
            let (from, to) = (src.to_str().unwrap(), env.path(&format!("dst-{i}")));
            let (job, to) = (format!("j{i}"), to.display().to_string());
            env.ferry(&[
                "job", "add", &job, "--rule", "copy", "--from", from, "--to", &to,
            ])
            .ok();
            env.ferry(&[
                "schedule",
                "add",
                &format!("yearly-{i}"),
                "--job",
                &job,
                "--cron",
                "0 0 1 1 *",
            ])
            .ok();
        }
        let held_by = |name: &str| {
            count(
                &env,
                &format!("SELECT CAST(COUNT(*) AS TEXT) FROM ferry_status WHERE holder = '{name}'"),
            )
        };
        let balanced = |names: &[&str], low: i64, high: i64| {
            let counts: Vec<i64> = names.iter().map(|n| held_by(n)).collect();
            counts.iter().sum::<i64>() == 10 && counts.iter().all(|c| (low..=high).contains(c))
        };

        let _s1 = env.scheduler("s1");
        let _s2 = env.scheduler("s2");
        assert!(
            wait_until(Duration::from_secs(20), || balanced(&["s1", "s2"], 4, 6)),
            "{backend:?}: not spread over two"
        );
        let s3 = env.scheduler("s3");
        assert!(
            wait_until(Duration::from_secs(20), || balanced(
                &["s1", "s2", "s3"],
                3,
                4
            )),
            "{backend:?}: s3 got no share"
        );
        let (code, _) = s3.terminate();
        assert_eq!(code, 0);
        assert!(
            wait_until(Duration::from_secs(10), || balanced(&["s1", "s2"], 4, 6)),
            "{backend:?}: s3's share not taken back"
        );
    }
}

/// The scheduled runs of `job` from `ferry runs`, as (started, finished) in order, finished
/// ones only.
fn finished_runs(env: &Env, job: &str) -> Vec<(Time, Time)> {
    let runs = env
        .ferry(&["--output", "json", "runs", "--job", job, "--limit", "1000"])
        .ok()
        .json();
    let mut spans: Vec<(Time, Time)> = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["schedule_name"].is_string() && r["finished_at"].is_string())
        .map(|r| {
            let at = |field: &str| Time::parse_from_rfc3339(r[field].as_str().unwrap()).unwrap();
            (at("started_at"), at("finished_at"))
        })
        .collect();
    spans.sort();
    spans
}

#[test]
fn a_jobs_schedules_and_monitor_pinned_to_two_schedulers_never_run_at_once() {
    for backend in backends() {
        let env = Env::new(backend);
        let _s1 = env.scheduler("s1");
        let _s2 = env.scheduler("s2");
        let (a, b) = (env.path("a"), env.path("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        let (from, to) = (a.to_str().unwrap(), b.to_str().unwrap());
        env.ferry(&[
            "job", "add", "j", "--rule", "sync", "--from", from, "--to", to,
        ])
        .ok();
        for (name, prefer) in [("every-second-1", "s1"), ("every-second-2", "s2")] {
            let schedule = [
                "schedule",
                "add",
                name,
                "--job",
                "j",
                "--cron",
                "* * * * * *",
            ];
            env.ferry(&[&schedule[..], &["--prefer", prefer]].concat())
                .ok();
        }
        let monitor = ["monitor", "add", "live", "--job", "j", "--debounce", "20ms"];
        env.ferry(&[&monitor[..], &["--prefer", "s2"]].concat())
            .ok();

        // Both replicas change while the schedules fire every second and the monitor watches.
        for i in 0..30 {
            fs::write(a.join(format!("a{i}.txt")), format!("from a, {i}")).unwrap();
            fs::write(b.join(format!("b{i}.txt")), format!("from b, {i}")).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        let complete = |root: &Path| {
            (0..30).all(|i| {
                root.join(format!("a{i}.txt")).exists() && root.join(format!("b{i}.txt")).exists()
            })
        };
        assert!(
            wait_until(Duration::from_secs(20), || complete(&a) && complete(&b)),
            "{backend:?}: a change was lost"
        );
        let holders: Vec<Option<String>> = ["every-second-1", "every-second-2", "live"]
            .iter()
            .map(|name| env.holder(name))
            .collect();
        assert!(
            holders.iter().all(|h| h.as_deref() == Some("s1")),
            "{backend:?}: one job, one scheduler, where its first schedule asks: {holders:?}"
        );
        let why = status_of(&env, "live")["placement"].clone();
        assert_eq!(
            why, "preferred (as its job j, which prefers s1)",
            "{backend:?}"
        );
        let spans = finished_runs(&env, "j");
        assert!(spans.len() >= 3, "{backend:?}: {spans:?}");
        for pair in spans.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "{backend:?}: a run started at {} before the one started at {} ended at {}",
                pair[1].0,
                pair[0].0,
                pair[0].1
            );
        }
    }
}

#[test]
fn schedulers_ride_out_a_database_restart() {
    let Some(server) = own_server() else { return };
    let env = Env::on_server(&server);
    let s1 = env.scheduler("s1");
    let s2 = env.scheduler("s2");
    let (src, dst) = monitored(&env, "m", &[]);
    let job_src = env.path("j-src");
    fs::create_dir_all(&job_src).unwrap();
    let (from, to) = (
        job_src.to_str().unwrap(),
        env.path("j-dst").display().to_string(),
    );
    env.ferry(&[
        "job", "add", "j", "--rule", "mirror", "--from", from, "--to", &to,
    ])
    .ok();
    env.ferry(&[
        "schedule",
        "add",
        "every",
        "--job",
        "j",
        "--cron",
        "* * * * * *",
    ])
    .ok();
    fs::write(src.join("before.txt"), "x").unwrap();
    assert!(arrives(&dst.join("before.txt"), Duration::from_secs(10)));
    let runs = || {
        count(
            &env,
            "SELECT CAST(COUNT(*) AS TEXT) FROM runs WHERE schedule_name = 'every'",
        )
    };
    assert!(wait_until(Duration::from_secs(10), || runs() >= 2));

    server.stop().unwrap();
    std::thread::sleep(Duration::from_secs(6));
    fs::write(src.join("during.txt"), "y").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // Past the lease deadline another scheduler could hold the monitor: local work stopped.
    assert!(
        !dst.join("during.txt").exists(),
        "a monitor wrote after its lease deadline"
    );
    for s in [&s1, &s2] {
        let log = s.log();
        assert_eq!(
            log.matches("database unreachable").count(),
            1,
            "one line per state change:\n{log}"
        );
    }
    server.restart().unwrap();
    let restarted = Instant::now();

    for s in [&s1, &s2] {
        s.wait_for_log("database reachable again", Duration::from_secs(15));
    }
    assert!(
        arrives(&dst.join("during.txt"), Duration::from_secs(15)),
        "monitor did not resume:\n{}",
        s1.log()
    );
    let before = runs();
    assert!(
        wait_until(Duration::from_secs(10), || runs() > before + 1),
        "schedule did not resume"
    );
    assert!(restarted.elapsed() < Duration::from_secs(30));
    let doubled = "SELECT CAST(COUNT(*) AS TEXT) FROM (SELECT 1 FROM runs WHERE schedule_name IS NOT NULL \
                   GROUP BY schedule_name, fire_time HAVING COUNT(*) > 1) d";
    assert_eq!(count(&env, doubled), 0);
}

/// Starts s1 and s2 with monitor `m` on s1, freezes s1 (SIGSTOP) and waits until s2 has taken
/// the monitor over. Returns the schedulers and the monitor's folders.
fn freeze_the_holder(env: &Env) -> (TestScheduler, TestScheduler, PathBuf, PathBuf) {
    let s1 = env.scheduler("s1");
    let s2 = env.scheduler("s2");
    let (src, dst) = monitored(env, "m", &["--prefer", "s1"]);
    assert!(wait_until(Duration::from_secs(10), || env
        .holder("m")
        .as_deref()
        == Some("s1")));
    fs::write(src.join("first.txt"), "1").unwrap();
    assert!(arrives(&dst.join("first.txt"), Duration::from_secs(10)));
    s1.pause(env);
    let taken = wait_until(Duration::from_secs(15), || {
        env.holder("m").as_deref() == Some("s2")
    });
    assert!(
        taken,
        "{:?}: s2 never took over from the frozen s1 (holder {:?}):\ns1:\n{}\ns2:\n{}",
        env.backend,
        env.holder("m"),
        s1.log(),
        s2.log()
    );
    (s1, s2, src, dst)
}

#[test]
fn a_frozen_holder_writes_nothing_after_it_resumes() {
    for backend in backends() {
        let env = Env::new(backend);
        let (s1, _s2, src, dst) = freeze_the_holder(&env);
        let s1_run = env
            .sql_text("SELECT CAST(MIN(id) AS TEXT) FROM runs WHERE monitor_name = 'm' AND scheduler = 's1'")
            .unwrap();
        fs::write(src.join("while-frozen.txt"), "2").unwrap();
        assert!(
            arrives(&dst.join("while-frozen.txt"), Duration::from_secs(10)),
            "{backend:?}"
        );
        // Nobody may copy from now on: the monitor is held, and s2 gives it up.
        env.ferry(&["monitor", "hold", "m"]).ok();
        assert!(
            wait_until(Duration::from_secs(10), || env.holder("m").is_none()),
            "{backend:?}: s2 kept it"
        );
        let mark = count(
            &env,
            "SELECT CAST(COALESCE(MAX(id), 0) AS TEXT) FROM run_events",
        );
        // s1's watch is still open and sees this the moment it wakes; its lease is long gone.
        fs::write(src.join("after-hold.txt"), "3").unwrap();

        s1.resume();
        std::thread::sleep(Duration::from_secs(4));
        assert!(
            !dst.join("after-hold.txt").exists(),
            "{backend:?}: the resumed holder wrote:\n{}",
            s1.log()
        );
        let writes = count(
            &env,
            &format!(
                "SELECT CAST(COUNT(*) AS TEXT) FROM run_events WHERE run_id = {s1_run} AND id > {mark} \
                 AND (message LIKE 'copied%' OR message LIKE 'deleted%')"
            ),
        );
        assert_eq!(
            writes,
            0,
            "{backend:?}: the resumed holder recorded writes:\n{}",
            s1.log()
        );
    }
}

/// libfaketime, which `tests/run.sh` installs; `None` (after a loud message) outside CI.
fn libfaketime() -> Option<&'static str> {
    const PATH: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    if Path::new(PATH).exists() {
        return Some(PATH);
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "libfaketime is required under CI"
    );
    eprintln!(
        "\n!!!!! SKIPPING the clock-skew test: libfaketime is not installed (tests/run.sh installs it)\n"
    );
    None
}

#[test]
fn a_scheduler_an_hour_ahead_neither_steals_nor_loses_leases() {
    let Some(faketime) = libfaketime() else {
        return;
    };
    // PostgreSQL only: SQLite's clock is that of the process running the statement, which is
    // the same machine's clock for every scheduler sharing the file; faking one process's
    // clock there makes a case that cannot happen.
    for backend in backends().into_iter().filter(|b| *b == Backend::Postgres) {
        let env = Env::new(backend);
        let _s1 = env.scheduler("s1");
        let skewed = [("LD_PRELOAD", faketime), ("FAKETIME", "+1h")];
        let s2 = TestScheduler::start_with_vars(&env, "s2", &[], &skewed);
        for i in 0..4 {
            monitored(&env, &format!("m{i}"), &[]);
        }
        let (src, dst) = monitored(&env, "on-s2", &["--prefer", "s2"]);
        let spread = || {
            let holders: Vec<Option<String>> =
                (0..4).map(|i| env.holder(&format!("m{i}"))).collect();
            holders.iter().all(Option::is_some)
                && holders.iter().any(|h| h.as_deref() == Some("s1"))
                && holders.iter().any(|h| h.as_deref() == Some("s2"))
        };
        assert!(
            wait_until(Duration::from_secs(20), spread),
            "{backend:?}: work did not spread over both"
        );
        // Let the placement settle (on-s2 held by s2, nothing moving), then watch it stay put.
        let mut snapshot = lease_snapshot(&env, backend);
        let settled = wait_until(Duration::from_secs(20), || {
            std::thread::sleep(Duration::from_secs(3));
            let now = lease_snapshot(&env, backend);
            let stable = now == snapshot && env.holder("on-s2").as_deref() == Some("s2");
            snapshot = now;
            stable
        });
        assert!(settled, "{backend:?}: placement never settled");
        std::thread::sleep(Duration::from_secs(8));
        assert_eq!(
            lease_snapshot(&env, backend),
            snapshot,
            "{backend:?}: leases changed hands with no one failing"
        );
        fs::write(src.join("skewed.txt"), "x").unwrap();
        assert!(
            arrives(&dst.join("skewed.txt"), Duration::from_secs(10)),
            "{backend:?}: the skewed scheduler's work stalled"
        );
        assert!(
            !s2.log().contains("lease lost"),
            "{backend:?}:\n{}",
            s2.log()
        );
    }
}

/// Every lease's holder and epoch: unchanged while nobody fails means nobody stole or lost one.
fn lease_snapshot(env: &Env, backend: Backend) -> Option<String> {
    let query = match backend {
        Backend::Postgres => {
            "SELECT string_agg(name || '=' || COALESCE(holder, '-') || '@' || epoch, ',' ORDER BY name) FROM leases"
        }
        Backend::Sqlite => {
            "SELECT group_concat(name || '=' || COALESCE(holder, '-') || '@' || epoch, ',') \
             FROM (SELECT * FROM leases ORDER BY name)"
        }
    };
    env.sql_text(query)
}

#[test]
fn a_frozen_holder_that_wakes_without_a_database_writes_nothing() {
    // Only the lease deadline can stop it here: it cannot learn that it lost the lease.
    let Some(server) = own_server() else { return };
    let env = Env::on_server(&server);
    let (s1, _s2, src, dst) = freeze_the_holder(&env);
    env.ferry(&["monitor", "hold", "m"]).ok();
    assert!(
        wait_until(Duration::from_secs(10), || env.holder("m").is_none()),
        "s2 kept it"
    );
    server.stop().unwrap();
    fs::write(src.join("after-hold.txt"), "2").unwrap();

    s1.resume();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !dst.join("after-hold.txt").exists(),
        "the woken holder wrote past its lease deadline:\n{}",
        s1.log()
    );
}
