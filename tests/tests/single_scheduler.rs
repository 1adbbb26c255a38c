//! One `ferry scheduler run` process on local folders, on SQLite and on PostgreSQL: what a user
//! defines by CLI and by SQL is replicated, recorded and reported.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_tests::harness::{Backend, Env, backends, snapshot, wait_until};
use filetime::FileTime;
use serde_json::Value;

fn write(path: &Path, content: &str, mtime_secs: i64) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
    filetime::set_file_mtime(path, FileTime::from_unix_time(mtime_secs, 0)).unwrap();
}

/// `ferry job add NAME --rule RULE --from SRC --to DST`, which must succeed.
fn add_job(env: &Env, name: &str, rule: &str, src: &Path, dst: &Path) {
    env.add_job(name, rule, (src, dst), &[]);
}

fn same_tree(a: &Path, b: &Path) -> bool {
    snapshot(a) == snapshot(b)
}

fn runs_of(env: &Env, by: &str) -> Vec<Value> {
    let runs = env
        .ferry(&["--output", "json", "runs", "--limit", "1000"])
        .ok()
        .json();
    runs.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["schedule_name"] == by || r["monitor_name"] == by)
        .cloned()
        .collect()
}

fn status_of(env: &Env, name: &str) -> Value {
    let status = env.ferry(&["--output", "json", "status"]).ok().json();
    status["definitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn schedules_and_monitors_replicate_local_folders() {
    for backend in backends() {
        schedule_by_cli_and_monitor_by_sql(backend);
    }
}

fn schedule_by_cli_and_monitor_by_sql(backend: Backend) {
    let env = Env::new(backend);
    let (src, dst) = (env.path("src"), env.path("dst"));
    write(&src.join("a.txt"), "alpha", 1_600_000_000);
    write(&src.join("docs/b.txt"), "beta", 1_600_000_100);
    write(&dst.join("stale.txt"), "should be deleted", 1_500_000_000);
    let (live_src, live_dst) = (env.path("live-src"), env.path("live-dst"));
    fs::create_dir_all(&live_src).unwrap();

    let scheduler = env.scheduler("s1");
    add_job(&env, "docs", "mirror", &src, &dst);
    env.ferry(&[
        "schedule",
        "add",
        "docs-every-second",
        "--job",
        "docs",
        "--cron",
        "* * * * * *",
    ])
    .ok();
    env.sql(&format!(
        "INSERT INTO jobs (name, rule, source) VALUES ('live', 'mirror', '{}');
         INSERT INTO job_destinations (job_name, path) VALUES ('live', '{}');
         INSERT INTO monitors (name, job_name) VALUES ('live-monitor', 'live');",
        live_src.display(),
        live_dst.display()
    ));

    // The schedule mirrors content and mtimes and deletes extras.
    assert!(
        wait_until(Duration::from_secs(15), || same_tree(&src, &dst)),
        "{backend:?}: dst never matched src\n{}",
        scheduler.log()
    );
    assert!(!dst.join("stale.txt").exists());
    fs::remove_file(src.join("a.txt")).unwrap();
    write(&src.join("docs/c.txt"), "gamma", 1_600_000_200);
    assert!(
        wait_until(Duration::from_secs(10), || same_tree(&src, &dst)),
        "{backend:?}: deletion and new file not mirrored"
    );

    // The monitor (defined by SQL) replicates a new file within about a second.
    assert!(
        wait_until(Duration::from_secs(10), || live_dst.is_dir()),
        "{backend:?}: monitor never ran\n{}",
        scheduler.log()
    );
    let written = Instant::now();
    write(&live_src.join("new.txt"), "fresh", 1_700_000_000);
    assert!(
        wait_until(Duration::from_secs(10), || same_tree(&live_src, &live_dst)),
        "{backend:?}: monitored file never arrived\n{}",
        scheduler.log()
    );
    let latency = written.elapsed();
    assert!(
        latency < Duration::from_secs(5),
        "{backend:?}: monitor took {latency:?}"
    );

    // Runs: the schedule's succeed, the monitor's one run is still running and counted the file.
    let schedule_runs = runs_of(&env, "docs-every-second");
    assert!(
        schedule_runs
            .iter()
            .any(|r| r["state"] == "succeeded" && r["files_deleted"].as_i64() >= Some(1)),
        "{schedule_runs:#?}"
    );
    let monitor_runs = runs_of(&env, "live-monitor");
    assert!(!monitor_runs.is_empty(), "{monitor_runs:#?}");
    assert_eq!(
        monitor_runs[0]["state"], "running",
        "the newest holding period is running"
    );
    assert!(
        monitor_runs[0]["files_copied"].as_i64() >= Some(1),
        "{monitor_runs:#?}"
    );
    let events = env.ferry(&["tail", "-n", "1000"]).ok().stdout;
    assert!(events.contains("new.txt: copied to"), "{events}");
    assert!(events.contains("docs/docs-every-second run"), "{events}");
    let table = env.ferry(&["runs", "--job", "docs"]).ok().stdout;
    assert!(
        table.contains("docs-every-second") && table.contains("succeeded"),
        "{table}"
    );

    // Status names the holder and the state of each.
    let schedule = status_of(&env, "docs-every-second");
    assert_eq!(schedule["holder"], "s1", "{schedule:#}");
    assert!(
        schedule["state"] == "idle" || schedule["state"] == "running",
        "{schedule:#}"
    );
    assert!(schedule["next_fire"].is_string(), "{schedule:#}");
    let monitor = status_of(&env, "live-monitor");
    assert_eq!(
        (monitor["state"].as_str(), monitor["holder"].as_str()),
        (Some("running"), Some("s1")),
        "{monitor:#}"
    );

    // SIGTERM stops cleanly and releases the leases at once.
    let (code, took) = scheduler.terminate();
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(15), "stop took {took:?}");
    assert_eq!(status_of(&env, "live-monitor")["state"], "waiting");
    assert_eq!(runs_of(&env, "live-monitor")[0]["state"], "succeeded");
    let schedulers = env
        .ferry(&["--output", "json", "scheduler", "list"])
        .ok()
        .json();
    assert_eq!(schedulers[0]["alive"], false);
}

#[test]
fn an_invalid_cron_from_sql_is_reported_and_other_schedules_keep_firing() {
    for backend in backends() {
        let env = Env::new(backend);
        fs::create_dir_all(env.path("src")).unwrap();
        let _scheduler = env.scheduler("s1");
        add_job(&env, "j", "copy", &env.path("src"), &env.path("dst"));
        env.ferry(&[
            "schedule",
            "add",
            "good",
            "--job",
            "j",
            "--cron",
            "* * * * * *",
        ]);
        assert!(wait_until(Duration::from_secs(10), || !runs_of(
            &env, "good"
        )
        .is_empty()));

        env.sql("INSERT INTO schedules (name, job_name, cron) VALUES ('bad', 'j', '61 * * * *')");
        let error = || env.sql_text("SELECT last_error FROM ferry_status WHERE name = 'bad'");
        assert!(
            wait_until(Duration::from_secs(10), || error().is_some()),
            "{backend:?}: no last_error"
        );
        assert!(error().unwrap().contains("61 * * * *"), "{:?}", error());
        assert_eq!(
            env.sql_text("SELECT state FROM ferry_status WHERE name = 'bad'")
                .as_deref(),
            Some("waiting")
        );

        let before = runs_of(&env, "good").len();
        assert!(
            wait_until(Duration::from_secs(10), || runs_of(&env, "good").len()
                >= before + 2),
            "{backend:?}: good stopped firing"
        );
        let status = env.ferry(&["status"]).ok().stdout;
        assert!(status.contains("invalid cron expression"), "{status}");

        // Fixing the row by SQL clears the error and the schedule runs.
        env.sql("UPDATE schedules SET cron = '* * * * * *' WHERE name = 'bad'");
        assert!(
            wait_until(Duration::from_secs(10), || error().is_none()
                && !runs_of(&env, "bad").is_empty()),
            "{backend:?}: fix not picked up"
        );
    }
}

#[test]
fn schedule_run_wait_prints_the_result_and_holding_pauses_firing() {
    for backend in backends() {
        let env = Env::new(backend);
        write(&env.path("src/f.txt"), "x", 1_600_000_000);
        let _scheduler = env.scheduler("s1");
        let (src, dst) = (env.path("src"), env.path("dst"));
        add_job(&env, "j", "mirror", &src, &dst);
        env.ferry(&[
            "schedule",
            "add",
            "yearly",
            "--job",
            "j",
            "--cron",
            "0 0 1 1 *",
        ]);

        let run = env
            .ferry(&["--output", "json", "schedule", "run", "yearly", "--wait"])
            .ok();
        let result = run.json();
        assert_eq!(result["state"], "succeeded", "{result:#}");
        assert_eq!(result["trigger"], "manual");
        assert_eq!(result["files_copied"], 1);
        assert_eq!(fs::read_to_string(dst.join("f.txt")).unwrap(), "x");

        env.ferry(&["schedule", "hold", "yearly"]).ok();
        assert!(wait_until(Duration::from_secs(10), || status_of(
            &env, "yearly"
        )["state"]
            == "held"));
        env.ferry(&["schedule", "release", "yearly"]).ok();
        assert!(wait_until(Duration::from_secs(10), || status_of(
            &env, "yearly"
        )["holder"]
            == "s1"));
    }
}

#[test]
fn a_sync_monitor_carries_changes_both_ways() {
    for backend in backends() {
        let env = Env::new(backend);
        let (a, b) = (env.path("a"), env.path("b"));
        write(&a.join("from-a.txt"), "a", 1_600_000_000);
        write(&b.join("from-b.txt"), "b", 1_600_000_000);
        let scheduler = env.scheduler("s1");
        add_job(&env, "two-way", "sync", &a, &b);
        env.ferry(&[
            "monitor",
            "add",
            "two-way-live",
            "--job",
            "two-way",
            "--debounce",
            "50ms",
        ]);
        assert!(
            wait_until(Duration::from_secs(10), || same_tree(&a, &b)
                && a.join("from-b.txt").exists()),
            "{}",
            scheduler.log()
        );

        write(&b.join("later-in-b.txt"), "later", 1_700_000_000);
        assert!(
            wait_until(Duration::from_secs(10), || a
                .join("later-in-b.txt")
                .exists()),
            "{backend:?}: b -> a\n{}",
            scheduler.log()
        );
        fs::remove_file(a.join("from-a.txt")).unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || !b.join("from-a.txt").exists()),
            "{backend:?}: deletion a -> b"
        );
        assert!(wait_until(Duration::from_secs(10), || same_tree(&a, &b)));
    }
}

#[test]
fn a_second_live_scheduler_with_the_same_name_is_refused() {
    for backend in backends() {
        let env = Env::new(backend);
        let first = env.scheduler("twin");
        let second = std::process::Command::new(ferry_tests::harness::binary("ferry"))
            .args(["--db", &env.db, "scheduler", "run", "--name", "twin"])
            .output()
            .unwrap();
        assert_ne!(second.status.code(), Some(0));
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(
            stderr.contains("twin") && stderr.contains("in use by a live scheduler"),
            "{stderr}"
        );

        // After a crash (SIGKILL) on this host, a restart under the same name is accepted at once,
        // even before the supervisor reaped the dead process (a zombie still in /proc).
        let pid = nix::unistd::Pid::from_raw(first.pid());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let zombie = || {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        };
        assert!(wait_until(Duration::from_secs(5), zombie), "{backend:?}");
        let restarted = env.scheduler("twin");
        restarted.wait_for_log("registered", Duration::from_secs(10));
        first.kill();
    }
}

#[test]
fn a_monitor_with_a_missing_source_reports_it_and_recovers() {
    for backend in backends() {
        let env = Env::new(backend);
        let (src, dst) = (env.path("not-yet"), env.path("dst"));
        let _scheduler = env.scheduler("s1");
        let (from, to) = (src.to_str().unwrap(), dst.to_str().unwrap());
        let job = [
            "job", "add", "j", "--rule", "mirror", "--from", from, "--to", to,
        ];
        env.ferry(&[&job[..], &["--allow-missing-source"]].concat())
            .ok();
        env.ferry(&["monitor", "add", "m", "--job", "j"]).ok();
        let error = || env.sql_text("SELECT last_error FROM monitors WHERE name = 'm'");
        assert!(
            wait_until(Duration::from_secs(10), || error()
                .is_some_and(|e| e.contains("not-yet"))),
            "{backend:?}: {:?}",
            error()
        );

        write(&src.join("f.txt"), "finally", 1_600_000_000);
        assert!(
            wait_until(Duration::from_secs(15), || dst.join("f.txt").exists()),
            "{backend:?}: monitor did not recover"
        );
        assert!(
            wait_until(Duration::from_secs(10), || error().is_none()),
            "{backend:?}: error not cleared"
        );
    }
}

#[test]
fn bad_input_from_the_cli_exits_2_and_names_the_field() {
    let env = Env::new(Backend::Sqlite);
    let (src, dst) = (env.path("src"), env.path("dst"));
    fs::create_dir_all(&src).unwrap();
    let job = |rule: &str, from: &str, to: &str, extra: &[&str]| -> Vec<String> {
        let base = [
            "job", "add", "j", "--rule", rule, "--from", from, "--to", to,
        ];
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let from = src.to_str().unwrap();
    let missing = "/no/such/folder";
    let inside = format!("{from}/inside");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            job("clone", from, "/b", &[]),
            "--rule: job j: rule: unknown rule \"clone\"",
        ),
        (job("mirror", "relative", "/b", &[]), "--from"),
        (
            job("mirror", missing, "/b", &[]),
            "--from: source folder /no/such/folder does not exist",
        ),
        (job("mirror", from, &inside, &[]), "--to"),
        (
            job("mirror", from, "/b", &["--exclude", "a["]),
            "--include/--exclude",
        ),
        (
            vec!["job".into(), "rm".into(), "nope".into()],
            "does not exist",
        ),
    ];
    for (args, expected) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = env.ferry(&args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
    }

    add_job(&env, "j", "mirror", &src, &dst);
    let schedule = |extra: &[&'static str]| {
        let base = ["schedule", "add", "s", "--job", "j"];
        base.iter().chain(extra).copied().collect::<Vec<&str>>()
    };
    let cases = [
        (schedule(&["--cron", "61 * * * *"]), "--cron"),
        (schedule(&["--cron", "* * *"]), "expected 5 fields"),
        (
            schedule(&["--cron", "* * * * *", "--tz", "Mars/Base"]),
            "--tz",
        ),
        (
            schedule(&["--cron", "* * * * *", "--misfire", "later"]),
            "--misfire",
        ),
        (
            vec![
                "schedule",
                "add",
                "s",
                "--job",
                "nope",
                "--cron",
                "* * * * *",
            ],
            "--job",
        ),
    ];
    for (args, expected) in cases {
        let run = env.ferry(&args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
    }
    let duplicate = env.ferry(&[
        "job", "add", "j", "--rule", "copy", "--from", from, "--to", "/b",
    ]);
    assert_eq!(duplicate.code, 2, "{duplicate:?}");
    assert!(
        duplicate.stderr.contains("job \"j\" already exists"),
        "{}",
        duplicate.stderr
    );
}

#[test]
fn a_job_from_sql_with_a_missing_source_shows_in_the_schedules_last_error() {
    for backend in backends() {
        let env = Env::new(backend);
        let _scheduler = env.scheduler("s1");
        let missing = env.path("unmounted");
        env.sql(&format!(
            "INSERT INTO jobs (name, rule, source) VALUES ('j', 'mirror', '{}');
             INSERT INTO job_destinations (job_name, path) VALUES ('j', '{}');
             INSERT INTO schedules (name, job_name, cron) VALUES ('s', 'j', '* * * * * *');",
            missing.display(),
            env.path("dst").display()
        ));
        let error = || env.sql_text("SELECT last_error FROM ferry_status WHERE name = 's'");
        let seen = wait_until(Duration::from_secs(10), || {
            error().is_some_and(|e| e.contains("unmounted"))
        });
        assert!(seen, "{backend:?}: {:?}", error());
        let runs = runs_of(&env, "s");
        assert!(runs.iter().all(|r| r["state"] != "succeeded"), "{runs:#?}");
        let ended = runs.iter().find(|r| r["state"] != "running");
        assert!(
            ended.is_some_and(|r| r["error"].as_str().is_some_and(|e| e.contains("unmounted"))),
            "{runs:#?}"
        );

        fs::create_dir_all(&missing).unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || error().is_none()),
            "{backend:?}: not cleared"
        );
    }
}

#[test]
fn rows_of_the_wrong_type_are_refused_by_the_database() {
    for backend in backends() {
        let env = Env::new(backend);
        fs::create_dir_all(env.path("src")).unwrap();
        add_job(&env, "j", "copy", &env.path("src"), &env.path("dst"));
        for bad in [
            "INSERT INTO schedules (name, job_name, cron, retries) VALUES ('s', 'j', '* * * * *', 'abc')",
            "INSERT INTO schedules (name, job_name, cron, run_requested_at) VALUES ('s', 'j', '* * * * *', 'soon')",
            "INSERT INTO monitors (name, job_name, rescan_ms) VALUES ('m', 'j', 'hourly')",
            "INSERT INTO jobs (name, rule, source) VALUES ('k', 'clone', '/srv')",
        ] {
            assert!(env.try_sql(bad).is_err(), "{backend:?} accepted: {bad}");
        }
    }
}

#[test]
fn a_long_table_into_a_pipe_that_closes_early_ends_quietly() {
    let env = Env::new(Backend::Sqlite);
    env.ferry(&["db", "migrate"]).ok();
    env.sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) \
         INSERT INTO runs (job_name, schedule_name, fire_time, state) \
         SELECT 'docs', 'nightly', strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || i || ' seconds'), \
         'succeeded' FROM n",
    );
    let mut runs = env
        .command("ferry")
        .arg("--db")
        .arg(env.path("ferry.db"))
        .args(["runs", "--limit", "3000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -1`: one line read, then the pipe closes while ferry still writes.
    let mut stdout = std::io::BufReader::new(runs.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = runs.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(first.starts_with("ID"), "{first}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

#[test]
fn a_database_ferry_cannot_use_or_that_is_not_there_is_named_and_nothing_is_created() {
    let env = Env::new(Backend::Sqlite);
    let ferry = |args: &[&str]| {
        let out = env.command("ferry").args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stderr)
    };
    let nowhere = env.path("nowhere.db");
    let (code, stderr) = ferry(&["--db", nowhere.to_str().unwrap(), "status"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--db: no ferry database at"), "{stderr}");
    let left: Vec<_> = fs::read_dir(env.path("")).unwrap().flatten().collect();
    assert!(
        left.iter()
            .all(|e| !e.file_name().to_string_lossy().starts_with("nowhere")),
        "a read created files: {left:?}"
    );

    let (code, stderr) = ferry(&["--db", "mysql://ferry@127.0.0.1:1/ferry", "runs"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--db: mysql:// is not a database ferry uses"),
        "{stderr}"
    );
    assert!(!env.path("mysql:").exists());

    let config = env.path("scheduler.toml");
    fs::write(&config, "lease_ttl = \"soon\"\n").unwrap();
    let db = env.path("ferry.db");
    let args = ["--db", db.to_str().unwrap(), "scheduler", "run", "--config"];
    let (code, stderr) = ferry(&[&args[..], &[config.to_str().unwrap()]].concat());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--config: config file"), "{stderr}");
}

#[test]
fn the_count_of_unlisted_file_events_comes_before_the_runs_outcome() {
    let env = Env::new(Backend::Sqlite);
    let _scheduler = env.scheduler("s1");
    let (src, dst) = (env.path("src"), env.path("dst"));
    fs::create_dir_all(&src).unwrap();
    for i in 0..250 {
        fs::write(src.join(format!("f{i}.txt")), "x").unwrap();
    }
    add_job(&env, "many", "mirror", &src, &dst);
    env.ferry(&[
        "schedule",
        "add",
        "many",
        "--job",
        "many",
        "--cron",
        "0 0 1 1 *",
    ])
    .ok();
    let run = env.ferry(&["--output", "json", "schedule", "run", "many", "--wait"]);
    assert_eq!(run.json()["state"], "succeeded", "{run:?}");
    // One JSON object a line, oldest first.
    let tail = env
        .ferry(&["--output", "json", "tail", "-n", "3"])
        .ok()
        .stdout;
    let events: Vec<Value> = tail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let messages: Vec<&str> = events
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    let more = messages.iter().position(|m| m.contains("more file events"));
    let outcome = messages.iter().position(|m| m.starts_with("succeeded in"));
    assert!(
        matches!((more, outcome), (Some(m), Some(o)) if m < o),
        "{messages:?}"
    );
}

#[test]
fn waiting_for_a_run_no_scheduler_takes_says_so_and_gives_up_at_the_timeout() {
    let env = Env::new(Backend::Sqlite);
    let (src, dst) = (env.path("src"), env.path("dst"));
    fs::create_dir_all(&src).unwrap();
    add_job(&env, "docs", "mirror", &src, &dst);
    env.ferry(&[
        "schedule",
        "add",
        "docs",
        "--job",
        "docs",
        "--cron",
        "0 0 1 1 *",
    ])
    .ok();
    let began = std::time::Instant::now();
    let waited = env.ferry(&["schedule", "run", "docs", "--wait", "--timeout", "7s"]);
    assert_eq!(waited.code, 1, "{waited:?}");
    assert!(
        waited
            .stderr
            .contains("no scheduler is running to take docs"),
        "{waited:?}"
    );
    assert!(
        waited.stderr.contains("gave up waiting for docs after 7s"),
        "{waited:?}"
    );
    assert!(began.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn status_check_goes_critical_within_a_lease_of_a_crash_and_ok_once_back() {
    let env = Env::new(Backend::Sqlite);
    let check = || env.ferry(&["status", "--check"]);
    let first = env.scheduler("s1");
    let ok = check();
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.starts_with("OK: 1 schedulers alive"), "{ok:?}");

    first.kill();
    let crashed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(6), || check().code == 2),
        "{:?}",
        check()
    );
    assert!(
        crashed.elapsed() < Duration::from_secs(5),
        "{:?}",
        crashed.elapsed()
    );
    let critical = check();
    assert!(
        critical
            .stdout
            .starts_with("CRITICAL: no scheduler is alive (s1 was the last"),
        "{critical:?}"
    );

    let _back = env.scheduler("s1");
    let ok = check();
    assert_eq!(ok.code, 0, "{ok:?}");
}

#[test]
fn times_show_in_the_schedules_zone_unless_utc_and_errors_come_as_json_when_asked() {
    let env = Env::new(Backend::Sqlite);
    let (src, dst) = (env.path("src"), env.path("dst"));
    fs::create_dir_all(&src).unwrap();
    add_job(&env, "j", "mirror", &src, &dst);
    let paris = ["--cron", "0 2 * * *", "--tz", "Europe/Paris"];
    env.ferry(&[&["schedule", "add", "nightly", "--job", "j"][..], &paris].concat())
        .ok();
    for args in [&["status"][..], &["schedule", "list"]] {
        let local = env.ferry(args).ok().stdout;
        assert!(
            local.contains(" 02:00:00 CET") || local.contains(" 02:00:00 CEST"),
            "{args:?}: {local}"
        );
        let utc = env.ferry(&[&["--utc"][..], args].concat()).ok().stdout;
        assert!(
            utc.contains(" 01:00:00 UTC") || utc.contains(" 00:00:00 UTC"),
            "{args:?} --utc: {utc}"
        );
    }

    let run = env.ferry(&["--output", "json", "job", "rm", "nothing"]);
    assert_eq!(run.code, 2);
    let error: Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(error["exit_code"], 2, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("nothing"),
        "{error}"
    );
}
