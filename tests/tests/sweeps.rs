//! What is left behind when schedulers disagree or a tick is cut short: a job placed on a
//! scheduler that will not take it is adopted by the next one, a run row inserted by a tick
//! that was cut off is marked interrupted (and retried) by its own scheduler, and a job whose
//! release was cut off is given back.

use std::fs;
use std::time::Duration;

use ferry_tests::harness::{Backend, Env, TestScheduler, backends, wait_until};

/// Scheduler `b` may use no folder of the test (its `--allow` is elsewhere), so the jobs
/// placement spreads to it are never taken there; `a` must adopt them.
#[test]
fn jobs_their_scheduler_will_not_take_are_adopted() {
    for backend in backends() {
        let env = Env::new(backend);
        let a = TestScheduler::start(&env, "a", &[]);
        let _b = TestScheduler::start(&env, "b", &["--allow", "/srv/not-these-folders"]);
        // Past the settling time (2 s), placement counts b from the first job on: otherwise a
        // could run every job once before b counts, and nothing would be left to adopt.
        std::thread::sleep(Duration::from_secs(3));
        let jobs = 6;
        for i in 0..jobs {
            let (src, dst) = (env.path(&format!("src{i}")), env.path(&format!("dst{i}")));
            fs::create_dir_all(&src).unwrap();
            fs::write(src.join("f.txt"), format!("job {i}")).unwrap();
            env.add_job(&format!("j{i}"), "mirror", (&src, &dst), &[]);
            let add = [
                "schedule",
                "add",
                &format!("s{i}"),
                "--job",
                &format!("j{i}"),
            ];
            env.ferry(&[&add[..], &["--cron", "* * * * * *"]].concat())
                .ok();
        }
        let all_ran = wait_until(Duration::from_secs(30), || {
            (0..jobs).all(|i| env.path(&format!("dst{i}/f.txt")).exists())
        });
        assert!(
            all_ran,
            "{backend:?}: a job placed on b never ran:\n{}",
            env.ferry(&["status"]).stdout
        );
        assert!(
            a.log()
                .contains("adopting a job its scheduler has not taken"),
            "{backend:?}: a ran everything without adopting: placement gave b nothing to leave"
        );
    }
}

/// A trigger holds the insert of a run for 4 s, past the time a tick may take (lease TTL less
/// a heartbeat: 2 s), so the scheduler gives up on it while the row is committed behind its
/// back, `running`, with no task running it.
#[test]
fn a_run_left_by_a_cut_off_tick_is_interrupted_and_retried_by_its_scheduler() {
    if ferry_tests::pg::shared().is_none() {
        return;
    }
    let env = Env::new(Backend::Postgres);
    let (src, dst) = (env.path("src"), env.path("dst"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f.txt"), "once").unwrap();
    env.add_job("j", "mirror", (&src, &dst), &[]);
    let add = ["schedule", "add", "s", "--job", "j", "--cron", "0 0 1 1 *"];
    env.ferry(&[&add[..], &["--retries", "1", "--retry-delay", "0s"]].concat())
        .ok();
    let scheduler = env.scheduler("a");
    scheduler.wait_for_log("claimed", Duration::from_secs(20));
    env.sql(
        "CREATE TABLE cut_next_insert (armed int); INSERT INTO cut_next_insert VALUES (1);
         CREATE FUNCTION hold_insert() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           DELETE FROM cut_next_insert;
           IF FOUND THEN PERFORM pg_sleep(4); END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER hold_insert AFTER INSERT ON runs FOR EACH ROW EXECUTE FUNCTION hold_insert();",
    );
    env.ferry(&["schedule", "run", "s"]).ok();
    let state =
        || env.sql_text("SELECT state || ' ' || attempt FROM runs WHERE schedule_name = 's'");
    let retried = wait_until(Duration::from_secs(20), || {
        state().as_deref() == Some("succeeded 2")
    });
    assert!(
        retried,
        "the run is {:?}, not retried and succeeded:\n{}",
        state(),
        scheduler.log()
    );
    assert!(dst.join("f.txt").exists(), "the retry did not copy");
    assert!(
        scheduler.log().contains("never began"),
        "the scheduler did not say why it interrupted the run:\n{}",
        scheduler.log()
    );
}

/// A trigger fails the statement that gives a job back, after holding it past the tick's time
/// limit: the scheduler has forgotten the job in memory while its hold stays in the database,
/// renewed by its heartbeat. Moved to another scheduler, the job's schedule must still run
/// there: the hold kept without work is given back.
#[test]
fn a_job_whose_release_was_cut_off_is_given_back() {
    if ferry_tests::pg::shared().is_none() {
        return;
    }
    let env = Env::new(Backend::Postgres);
    let (src, dst) = (env.path("src"), env.path("dst"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f.txt"), "moved along").unwrap();
    env.add_job("j", "mirror", (&src, &dst), &[]);
    let every_second = [
        "schedule",
        "add",
        "s",
        "--job",
        "j",
        "--cron",
        "* * * * * *",
    ];
    env.ferry(&[&every_second[..], &["--prefer", "a", "--no-fallback"]].concat())
        .ok();
    let a = env.scheduler("a");
    let _b = env.scheduler("b");
    assert!(wait_until(Duration::from_secs(20), || dst
        .join("f.txt")
        .exists()));
    env.sql(
        // A sequence, not a table, counts the releases: the failed statement rolls back its
        // own changes, but not a sequence's.
        "CREATE SEQUENCE releases;
         CREATE FUNCTION fail_release() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF nextval('releases') = 1 THEN
             PERFORM pg_sleep(4);
             RAISE EXCEPTION 'the release was cut off';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER fail_release BEFORE UPDATE ON job_holds FOR EACH ROW
           WHEN (NEW.holder IS NULL AND OLD.holder IS NOT NULL)
           EXECUTE FUNCTION fail_release();",
    );
    // The schedule moves to b: a releases its lease, then tries to give the job back.
    env.ferry(&["schedule", "set", "s", "--prefer", "b"]).ok();
    let holder = || env.sql_text("SELECT holder FROM leases WHERE name = 's'");
    let moved = wait_until(Duration::from_secs(30), || holder().as_deref() == Some("b"));
    assert!(
        moved,
        "the schedule never reached b (held by {:?}); a's log:\n{}",
        holder(),
        a.log()
    );
    fs::write(src.join("after.txt"), "run by b").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || dst.join("after.txt").exists()),
        "b holds the schedule but never ran it"
    );
    assert!(
        a.log().contains("releasing a job held without work"),
        "{}",
        a.log()
    );
}
