//! Upgrading one machine at a time: only `ferry db migrate` changes the schema, a binary keeps
//! working with a newer schema it is compatible with and refuses, by name, one it is not, and
//! reading commands never write (a read-only role can run them). And the whole procedure with
//! the previous release's binaries: the standby scheduler, then the active one, then an agent.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::harness::{self, Backend, Env, TestAgent, TestScheduler, backends, wait_until};

/// The newest schema version the database has applied.
fn schema_version(env: &Env) -> i64 {
    env.sql_text("SELECT CAST(MAX(version) AS TEXT) FROM _sqlx_migrations")
        .expect("migrations applied")
        .parse()
        .unwrap()
}

fn ready(backend: Backend) -> Env {
    let env = Env::new(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    env.add_job("j", "mirror", (&src, &env.path("dst")), &[]);
    env
}

/// What a newer ferry's `db migrate` leaves: a migration this binary does not know.
fn migrate_from_the_future(env: &Env) {
    let checksum = match env.backend {
        Backend::Postgres => "decode('00', 'hex')",
        Backend::Sqlite => "x'00'",
    };
    env.sql(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (900, 'from a newer ferry', true, {checksum}, 1)"
    ));
}

/// Runs `ferry args…` and waits at most 20 s for it to end (a scheduler that starts does not).
fn ferry_ending(env: &Env, args: &[&str]) -> ferry_tests::harness::Run {
    let mut child = env
        .command("ferry")
        .arg("--db")
        .arg(&env.db)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ended = wait_until(Duration::from_secs(20), || {
        child.try_wait().unwrap().is_some()
    });
    if !ended {
        child.kill().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        ended,
        "ferry {args:?} did not end: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ferry_tests::harness::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_newer_compatible_schema_is_used_and_an_incompatible_one_is_refused_by_name() {
    for backend in backends() {
        let env = ready(backend);
        migrate_from_the_future(&env);

        for args in [
            &["status"][..],
            &["job", "list"],
            &["runs"],
            &["db", "migrate"],
        ] {
            env.ferry(args).ok();
        }
        env.ferry(&["schedule", "add", "s", "--job", "j", "--cron", "0 0 1 1 *"])
            .ok();
        let scheduler = env.scheduler("old");
        assert!(
            wait_until(Duration::from_secs(10), || env.holder("s").as_deref()
                == Some("old")),
            "an older scheduler runs on a compatible newer schema: {}",
            scheduler.log()
        );
        drop(scheduler);
        assert_eq!(schema_version(&env), 900, "the newer migration stays");

        env.sql("UPDATE schema_compat SET oldest_compatible = 900, requires_ferry = '9.1.0'");
        for args in [&["status"][..], &["job", "list"], &["db", "migrate"]] {
            let run = env.ferry(args);
            assert_eq!(run.code, 1, "{args:?} on an incompatible schema: {run:?}");
            assert!(
                run.stderr.contains("needs ferry 9.1.0 or newer")
                    && run.stderr.contains("upgrade this machine's ferry"),
                "{}",
                run.stderr
            );
        }
        let status = env.ferry(&["--output", "json", "db", "status"]).ok().json();
        assert_eq!(status["database"], 900, "{status:#}");
        assert_eq!(status["oldest_compatible"], 900);
    }
}

/// Leaves the database as the migration before `newest` left it.
fn undo_newest_migration(env: &Env, newest: i64) {
    let undo = match (newest, env.backend) {
        (9, Backend::Postgres) => "DROP INDEX runs_retry, leases_holder, job_holds_holder; \
            DROP TABLE definitions_version; DROP FUNCTION ferry_definitions_changed() CASCADE"
            .to_owned(),
        (9, Backend::Sqlite) => {
            let tables = [
                "jobs",
                "job_destinations",
                "job_filters",
                "agents",
                "schedules",
                "monitors",
            ];
            let triggers = tables.iter().flat_map(|table| {
                ["insert", "update", "delete"]
                    .map(|event| format!("DROP TRIGGER {table}_version_{event}"))
            });
            let drops: Vec<String> = triggers.collect();
            format!(
                "{}; DROP INDEX runs_retry; DROP INDEX leases_holder; DROP INDEX job_holds_holder; \
                 DROP TABLE definitions_version",
                drops.join("; ")
            )
        }
        (other, _) => panic!("teach this test how to undo migration {other}"),
    };
    env.sql(&format!(
        "{undo}; DELETE FROM _sqlx_migrations WHERE version = {newest}"
    ));
}

#[test]
fn a_schema_behind_the_binary_changes_only_through_db_migrate() {
    for backend in backends() {
        let env = ready(backend);
        let current = schema_version(&env);
        undo_newest_migration(&env, current);

        for args in [
            &["status"][..],
            &["job", "list"],
            &["job", "rm", "j"],
            &["scheduler", "run", "--name", "new"],
        ] {
            let run = ferry_ending(&env, args);
            assert_eq!(run.code, 1, "{args:?} on an older schema: {run:?}");
            assert!(
                run.stderr
                    .contains(&format!("the database's schema is version {}", current - 1))
                    && run.stderr.contains("run `ferry db migrate`"),
                "{}",
                run.stderr
            );
        }
        assert_eq!(
            schema_version(&env),
            current - 1,
            "nothing migrated unasked"
        );

        let status = env.ferry(&["db", "status"]).ok();
        assert!(
            status
                .stdout
                .contains(&format!("`ferry db migrate` would apply: {current} ")),
            "{}",
            status.stdout
        );
        let migrated = env.ferry(&["db", "migrate"]).ok();
        assert!(
            migrated
                .stdout
                .contains(&format!("is at schema version {current}")),
            "{}",
            migrated.stdout
        );
        env.ferry(&["job", "rm", "j"]).ok();
    }
}

#[test]
fn a_read_only_role_reads_everything_a_reading_command_shows() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let env = ready(Backend::Postgres);
    env.ferry(&["schedule", "add", "s", "--job", "j", "--cron", "0 0 1 1 *"])
        .ok();
    let role = format!("ferry_reader_{}", std::process::id());
    env.sql(&format!(
        "CREATE ROLE {role} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}; \
         REVOKE CREATE ON SCHEMA public FROM PUBLIC"
    ));
    let url = env.db.replacen("postgres@", &format!("{role}@"), 1);
    for args in [
        &["status"][..],
        &["runs"],
        &["tail"],
        &["job", "list"],
        &["schedule", "show", "s"],
        &["scheduler", "list"],
        &["db", "status"],
    ] {
        let run = env
            .command("ferry")
            .arg("--db")
            .arg(&url)
            .args(args)
            .output();
        let run = run.unwrap();
        assert!(
            run.status.success(),
            "{args:?} as a read-only role: {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
}

/// The previous release's `ferry` and `ferry-agent`, or a loud skip when this checkout could
/// not build them (tests/run.sh builds them from the release's commit; a shallow clone has
/// none).
fn previous_release() -> Option<(PathBuf, PathBuf)> {
    match (
        harness::previous_release("ferry"),
        harness::previous_release("ferry-agent"),
    ) {
        (Some(ferry), Some(agent)) => Some((ferry, agent)),
        _ => {
            eprintln!(
                "SKIPPED: ferry 0.1.0's binaries are not in target/previous-release \
                 (`bash tests/run.sh` builds them from the release's commit)"
            );
            None
        }
    }
}

/// Runs of `schedule` that ran at the same time as another of it (there must be none).
fn overlapping_runs(env: &Env, schedule: &str) -> String {
    env.sql_text(&format!(
        "SELECT CAST(COUNT(*) AS TEXT) FROM runs a JOIN runs b \
           ON a.schedule_name = b.schedule_name AND a.id < b.id \
          AND a.started_at < b.finished_at AND b.started_at < a.finished_at \
         WHERE a.schedule_name = '{schedule}'"
    ))
    .unwrap_or_default()
}

/// Waits until `schedule` has a run after run `after` that `by` finished well; returns its id.
fn succeeded_after(env: &Env, schedule: &str, by: &str, after: i64) -> i64 {
    let query = format!(
        "SELECT CAST(MIN(id) AS TEXT) FROM runs WHERE schedule_name = '{schedule}' \
         AND scheduler = '{by}' AND state = 'succeeded' AND id > {after}"
    );
    let mut found = None;
    let done = wait_until(Duration::from_secs(30), || {
        found = env.sql_text(&query).and_then(|id| id.parse().ok());
        found.is_some()
    });
    let runs = env.ferry(&["runs", "--limit", "10"]).stdout;
    assert!(
        done,
        "no run of {schedule} by {by} after run {after}:\n{runs}"
    );
    found.unwrap()
}

fn versions(env: &Env) -> Vec<(String, String)> {
    let list = env
        .ferry(&["--output", "json", "scheduler", "list"])
        .ok()
        .json();
    let list = list.as_array().unwrap().iter();
    let alive = list.filter(|s| s["alive"] == true);
    alive
        .map(|s| {
            (
                s["name"].as_str().unwrap().into(),
                s["version"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[test]
fn the_standby_then_the_active_scheduler_then_the_agent_upgrade_with_work_moving_and_nothing_doubled()
 {
    let Some((old_ferry, old_agent)) = previous_release() else {
        return;
    };
    let env = Env::new(Backend::Sqlite);
    let old = |args: &[&str]| {
        let out = Command::new(&old_ferry)
            .arg("--db")
            .arg(&env.db)
            .args(args)
            .output();
        let out = out.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ferry 0.1.0 {args:?}: {stderr}");
    };
    let tls = env.tls_folder(&["nas1"], &["s1", "s2"]);
    let srv = env.path("srv");
    fs::create_dir_all(srv.join("a")).unwrap();
    fs::write(srv.join("a/on-the-agent.txt"), "served by nas1").unwrap();
    // Entries whose shape in memory changed since 0.1.0 (a symlink's target boxed, link
    // numbers never 0, a packed time) read the same from the old agent's frames.
    std::os::unix::fs::symlink("on-the-agent.txt", srv.join("a/link")).unwrap();
    fs::hard_link(
        srv.join("a/on-the-agent.txt"),
        srv.join("a/second-name.txt"),
    )
    .unwrap();
    fs::create_dir_all(env.path("src")).unwrap();
    fs::write(env.path("src/local.txt"), "on the scheduler's machine").unwrap();
    let agent = TestAgent::start_program(&env, &old_agent, "nas1", &[&srv], &tls);
    let address = agent.address.clone();

    // ferry 0.1.0 makes the database, the jobs and the schedules.
    old(&["agent", "add", "nas1", "--address", &address]);
    let here = |p: &str| env.path(p).display().to_string();
    let on_agent = format!("nas1:{}", srv.join("a").display());
    for (job, from, to) in [
        ("local", here("src"), here("dst-local")),
        ("remote", on_agent, here("dst-remote")),
    ] {
        old(&[
            "job", "add", job, "--rule", "mirror", "--from", &from, "--to", &to,
        ]);
        let every_2s = ["--cron", "*/2 * * * * *", "--prefer", "s1"];
        old(&[&["schedule", "add", job, "--job", job][..], &every_2s].concat());
    }
    let tls_args = ["--tls-dir", tls.to_str().unwrap()];
    let old_s1 = TestScheduler::start_program(&env, &old_ferry, "s1", &tls_args);
    let old_s2 = TestScheduler::start_program(&env, &old_ferry, "s2", &tls_args);
    let mut last = 0;
    for schedule in ["local", "remote"] {
        last = last.max(succeeded_after(&env, schedule, "s1", 0));
    }

    // 1. The schema, with the new release; the old schedulers carry on with it.
    env.ferry(&["db", "migrate"]).ok();
    let schema = env.ferry(&["--output", "json", "db", "status"]).ok().json();
    assert_eq!(schema["database"], schema["binary"], "{schema:#}");
    for schedule in ["local", "remote"] {
        last = last.max(succeeded_after(&env, schedule, "s1", last));
    }

    // 2. The standby first.
    old_s2.terminate();
    let s2 = TestScheduler::start(&env, "s2", &tls_args);
    let mixed = versions(&env);
    assert!(mixed.contains(&("s1".into(), "0.1.0".into())), "{mixed:?}");
    assert!(mixed.contains(&("s2".into(), "0.2.0".into())), "{mixed:?}");

    // 3. Then the active one: its work moves to the upgraded standby (which speaks to the old
    // agent), and comes back once it runs again.
    old_s1.terminate();
    for schedule in ["local", "remote"] {
        last = last.max(succeeded_after(&env, schedule, "s2", last));
    }
    let s1 = TestScheduler::start(&env, "s1", &tls_args);
    for schedule in ["local", "remote"] {
        last = last.max(succeeded_after(&env, schedule, "s1", last));
    }

    // 4. The agent.
    agent.kill();
    let agent = TestAgent::start_at(&env, "nas1", &[&srv], &tls, &address);
    fs::write(srv.join("a/after-the-upgrade.txt"), "new agent").unwrap();
    let restarted = last;
    succeeded_after(&env, "remote", "s1", restarted);
    assert!(wait_until(Duration::from_secs(10), || {
        fs::read_to_string(env.path("dst-remote/after-the-upgrade.txt")).is_ok()
    }));

    for schedule in ["local", "remote"] {
        assert_eq!(
            overlapping_runs(&env, schedule),
            "0",
            "{schedule} ran twice at once"
        );
    }
    assert_eq!(
        fs::read_to_string(env.path("dst-local/local.txt")).unwrap(),
        "on the scheduler's machine"
    );
    assert_eq!(
        fs::read_to_string(env.path("dst-remote/on-the-agent.txt")).unwrap(),
        "served by nas1"
    );
    let copied = |name: &str| env.path("dst-remote").join(name);
    assert_eq!(
        fs::read_link(copied("link")).unwrap(),
        Path::new("on-the-agent.txt")
    );
    let inode = |path: PathBuf| fs::metadata(path).unwrap().ino();
    assert_eq!(
        inode(copied("on-the-agent.txt")),
        inode(copied("second-name.txt")),
        "one file under two names, as at the source"
    );
    let mtime = |path: PathBuf| fs::metadata(path).unwrap().modified().unwrap();
    assert_eq!(
        mtime(copied("on-the-agent.txt")),
        mtime(srv.join("a/on-the-agent.txt"))
    );
    assert!(versions(&env).iter().all(|(_, v)| v == "0.2.0"));
    drop((s1, s2, agent));
}
