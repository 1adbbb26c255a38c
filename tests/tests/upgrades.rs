//! Upgrading one machine at a time: only `ferry db migrate` changes the schema, a binary keeps
//! working with a newer schema it is compatible with and refuses, by name, one it is not, and
//! reading commands never write (a read-only role can run them).

use std::process::Stdio;
use std::time::Duration;

use ferry_tests::harness::{Backend, Env, backends, wait_until};

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
    let (from, to) = (src.to_str().unwrap(), env.path("dst"));
    let to = to.to_str().unwrap();
    env.ferry(&[
        "job", "add", "j", "--rule", "mirror", "--from", from, "--to", to,
    ])
    .ok();
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

#[test]
fn a_schema_behind_the_binary_changes_only_through_db_migrate() {
    for backend in backends() {
        let env = ready(backend);
        let current = schema_version(&env);
        // The database as the previous release left it.
        env.sql(&format!(
            "DROP TABLE schema_compat; DELETE FROM _sqlx_migrations WHERE version = {current}"
        ));

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
                .contains("`ferry db migrate` would apply: 6 schema compat"),
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
