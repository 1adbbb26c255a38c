//! Changing definitions in place (`ferry job|schedule|monitor set`), checked as `add` checks
//! them, and followed by a running scheduler without a restart.

use std::fs;
use std::time::Duration;

use ferry_tests::harness::{Backend, Env, wait_until};

fn job(env: &Env, extra: &[&str]) {
    let (src, dst) = (env.path("src"), env.path("dst1"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("keep.txt"), "kept").unwrap();
    fs::write(src.join("scratch.tmp"), "scratch").unwrap();
    env.add_job("j", "mirror", (&src, &dst), extra);
}

#[test]
fn a_schedule_set_takes_effect_without_a_restart_and_bad_values_are_refused_by_flag() {
    let env = Env::new(Backend::Sqlite);
    job(&env, &[]);
    let yearly = ["schedule", "add", "s", "--job", "j", "--cron", "0 0 1 1 *"];
    env.ferry(&yearly).ok();
    let _scheduler = env.scheduler("s1");

    let set = env
        .ferry(&[
            "schedule",
            "set",
            "s",
            "--cron",
            "* * * * * *",
            "--retries",
            "2",
        ])
        .ok();
    assert!(
        set.stdout.contains(r#"cron "0 0 1 1 *" -> "* * * * * *""#)
            && set.stdout.contains("retries 0 -> 2"),
        "{}",
        set.stdout
    );
    let copied = || fs::read_to_string(env.path("dst1/keep.txt")).is_ok();
    assert!(
        wait_until(Duration::from_secs(10), copied),
        "the running scheduler fired on the new cron"
    );

    for (args, flag) in [
        (
            &["schedule", "set", "s", "--tz", "Mars/Olympus"][..],
            "--tz",
        ),
        (&["schedule", "set", "s", "--cron", "every day"], "--cron"),
        (&["schedule", "set", "s", "--job", "nothing"], "--job"),
        (
            &["schedule", "set", "nothing", "--retries", "1"],
            "schedule",
        ),
    ] {
        let run = env.ferry(args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains(flag), "{args:?}: {}", run.stderr);
    }
    let show = env
        .ferry(&["--output", "json", "schedule", "show", "s"])
        .ok()
        .json();
    assert_eq!(
        show["cron"], "* * * * * *",
        "a refused change changes nothing"
    );
}

#[test]
fn a_job_set_replaces_its_lists_and_the_next_run_uses_them() {
    let env = Env::new(Backend::Sqlite);
    job(&env, &["--exclude", "*.tmp", "--max-deletes", "5"]);
    let dst2 = env.path("dst2");
    let set = env
        .ferry(&[
            "job",
            "set",
            "j",
            "--to",
            dst2.to_str().unwrap(),
            "--no-filters",
            "--no-max-deletes",
        ])
        .ok();
    assert!(set.stdout.contains("changed job j"), "{}", set.stdout);
    let show = env
        .ferry(&["--output", "json", "job", "show", "j"])
        .ok()
        .json();
    assert_eq!(
        show["destinations"],
        serde_json::json!([dst2.to_str().unwrap()])
    );
    assert_eq!(show["exclude"], serde_json::json!([]));
    assert_eq!(show["max_deletes"], serde_json::Value::Null);

    env.ferry(&["schedule", "add", "s", "--job", "j", "--cron", "0 0 1 1 *"])
        .ok();
    let _scheduler = env.scheduler("s1");
    env.ferry(&["schedule", "run", "s", "--wait"]).ok();
    assert_eq!(
        fs::read_to_string(dst2.join("scratch.tmp")).unwrap(),
        "scratch"
    );
    assert!(
        !env.path("dst1").exists(),
        "the old destination is left alone"
    );

    let overlap = env.path("src/inside");
    let run = env.ferry(&["job", "set", "j", "--to", overlap.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--to"), "{}", run.stderr);
}

#[test]
fn a_monitor_set_changes_its_timing_and_placement() {
    let env = Env::new(Backend::Sqlite);
    job(&env, &[]);
    let add = [
        "monitor",
        "add",
        "m",
        "--job",
        "j",
        "--prefer",
        "s1",
        "--no-fallback",
    ];
    env.ferry(&add).ok();
    let set = [
        "monitor",
        "set",
        "m",
        "--debounce",
        "1s",
        "--no-prefer",
        "--fallback",
    ];
    env.ferry(&set).ok();
    let show = env
        .ferry(&["--output", "json", "monitor", "show", "m"])
        .ok()
        .json();
    assert_eq!(show["debounce_ms"], 1000, "{show:#}");
    assert_eq!(show["preferred"], serde_json::Value::Null);
    assert_eq!(show["fallback_any"], true);
    let unchanged = env.ferry(&["monitor", "set", "m", "--debounce", "1s"]).ok();
    assert!(
        unchanged.stdout.contains("monitor m unchanged"),
        "{}",
        unchanged.stdout
    );
}

#[test]
fn a_cancelled_run_stops_before_its_next_file_ends_cancelled_and_is_not_retried() {
    let env = Env::new(Backend::Sqlite);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    // Enough that the run is still going when the cancel lands: small files are written a
    // batch at a time, tens of thousands a second.
    const FILES: usize = 100_000;
    for i in 0..FILES {
        fs::write(src.join(format!("f{i:06}")), [b'x'; 64]).unwrap();
    }
    job(&env, &[]);
    let schedule = [
        "--cron",
        "0 0 1 1 *",
        "--retries",
        "2",
        "--retry-delay",
        "100ms",
    ];
    env.ferry(&[&["schedule", "add", "s", "--job", "j"][..], &schedule].concat())
        .ok();
    let _scheduler = env.scheduler("s1");
    env.ferry(&["schedule", "run", "s"]).ok();
    let mut id = None;
    assert!(wait_until(Duration::from_secs(20), || {
        let runs = env.ferry(&["--output", "json", "runs"]).ok().json();
        id = runs[0]["id"]
            .as_i64()
            .filter(|_| runs[0]["state"] == "running");
        id.is_some()
    }));
    let id = id.unwrap().to_string();

    let cancelled = env
        .ferry(&["--output", "json", "run", "cancel", &id, "--wait"])
        .ok();
    let run: serde_json::Value =
        serde_json::from_str(&cancelled.stdout[cancelled.stdout.find('{').unwrap()..]).unwrap();
    assert_eq!(run["state"], "cancelled", "{run:#}");
    assert_eq!(
        run["retry_at"],
        serde_json::Value::Null,
        "no retry: {run:#}"
    );
    let copied = fs::read_dir(env.path("dst1")).map_or(0, |d| d.count());
    assert!(
        copied < FILES,
        "the run stopped before the end: {copied} files"
    );
    std::thread::sleep(Duration::from_secs(1));
    let runs = env.ferry(&["--output", "json", "runs"]).ok().json();
    assert_eq!(
        runs[0]["state"], "cancelled",
        "still cancelled, not retried: {runs:#}"
    );

    let again = env.ferry(&["run", "cancel", &id]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(
        again.stderr.contains("already ended (cancelled)"),
        "{}",
        again.stderr
    );
}

#[test]
fn an_ignore_file_adds_its_patterns_to_the_jobs_excludes() {
    let env = Env::new(Backend::Sqlite);
    let ignore = env.path("ferry.ignore");
    fs::write(&ignore, "# scratch files\n*.tmp\n\ncache/\n").unwrap();
    job(
        &env,
        &[
            "--exclude",
            "*.bak",
            "--exclude-from",
            ignore.to_str().unwrap(),
        ],
    );
    let show = env
        .ferry(&["--output", "json", "job", "show", "j"])
        .ok()
        .json();
    let mut exclude: Vec<&str> = (show["exclude"].as_array().unwrap().iter())
        .map(|g| g.as_str().unwrap())
        .collect();
    exclude.sort();
    assert_eq!(exclude, ["*.bak", "*.tmp", "cache/"], "{show:#}");

    fs::write(&ignore, "*.log\n!keep.log\n").unwrap();
    let run = env.ferry(&[
        "job",
        "set",
        "j",
        "--exclude-from",
        ignore.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("ferry.ignore:2"), "{}", run.stderr);
}

#[test]
fn a_dry_run_lists_what_a_mirror_would_copy_and_delete_and_changes_nothing() {
    let env = Env::new(Backend::Sqlite);
    job(&env, &["--max-deletes", "1"]);
    let dst = env.path("dst1");
    fs::create_dir_all(dst.join("old")).unwrap();
    fs::write(dst.join("gone.txt"), "only at the destination").unwrap();
    fs::write(dst.join("old/x"), "also").unwrap();
    let before = ferry_tests::harness::snapshot(&dst);

    let shown = env.ferry(&["job", "dry-run", "j"]).ok().stdout;
    for line in [
        "delete         gone.txt",
        "delete         old/x",
        "copy           keep.txt",
    ] {
        assert!(shown.contains(line), "{line:?} in:\n{shown}");
    }
    assert!(
        shown.contains("a run would stop before deleting anything: 2 deletions"),
        "{shown}"
    );
    let json = env
        .ferry(&["--output", "json", "job", "dry-run", "j"])
        .ok()
        .json();
    let mut deleted: Vec<&str> = (json["planned"].as_array().unwrap().iter())
        .filter(|p| p["what"] == "delete")
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    deleted.sort();
    assert_eq!(deleted, ["gone.txt", "old/x"]);
    assert_eq!(json["totals"][dst.to_str().unwrap()]["copy"], 2, "{json:#}");
    assert_eq!(
        ferry_tests::harness::snapshot(&dst),
        before,
        "a dry run writes nothing"
    );

    let sync = env.ferry(&[
        "job",
        "add",
        "two-way",
        "--rule",
        "sync",
        "--from",
        env.path("src").to_str().unwrap(),
        "--to",
        env.path("other").to_str().unwrap(),
    ]);
    sync.ok();
    let refused = env.ferry(&["job", "dry-run", "two-way"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("the sync rule has no dry-run"),
        "{}",
        refused.stderr
    );
}

#[test]
fn with_output_json_every_change_says_what_it_did_as_json() {
    let env = Env::new(Backend::Sqlite);
    let json = |args: &[&str]| {
        env.ferry(&[&["--output", "json"][..], args].concat())
            .ok()
            .json()
    };
    let (src, dst) = (env.path("src"), env.path("dst"));
    fs::create_dir_all(&src).unwrap();
    let (from, to) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let added = json(&[
        "job", "add", "j", "--rule", "copy", "--from", from, "--to", to,
    ]);
    assert_eq!(added["done"], "added", "{added}");
    assert_eq!(added["job"]["rule"], "copy", "{added}");
    let changed = json(&["job", "set", "j", "--rule", "mirror"]);
    assert_eq!(
        changed["changes"]["rule"],
        serde_json::json!({"from": "copy", "to": "mirror"})
    );
    json(&["schedule", "add", "s", "--job", "j", "--cron", "0 0 1 1 *"]);
    let held = json(&["schedule", "hold", "s"]);
    assert_eq!(
        held,
        serde_json::json!({"done": "held", "kind": "schedule", "name": "s"})
    );
    let agent = json(&["agent", "add", "nas1", "--address", "127.0.0.1:1"]);
    assert_eq!(agent["done"], "added", "{agent}");
    let removed = json(&["schedule", "rm", "s"]);
    assert_eq!(removed["done"], "removed", "{removed}");
}

/// Runs `ferry ARGS` with `script` (a shell script's text) as the editor.
fn with_editor(env: &Env, script: &str, args: &[&str]) -> std::process::Output {
    let editor = env.path("editor.sh");
    fs::write(&editor, format!("#!/bin/sh\n{script}\n")).unwrap();
    fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut command = env.command("ferry");
    command
        .arg("--db")
        .arg(&env.db)
        .args(args)
        .env("EDITOR", &editor)
        .env_remove("VISUAL");
    command.output().unwrap()
}

#[test]
fn edit_opens_the_definition_as_toml_and_writes_it_only_once_it_checks_out() {
    let env = Env::new(Backend::Sqlite);
    job(&env, &[]);
    env.ferry(&["schedule", "add", "s", "--job", "j", "--cron", "0 2 * * *"])
        .ok();
    let retimed = with_editor(
        &env,
        r#"sed -i 's/^cron = .*/cron = "30 1 * * *"/' "$1""#,
        &["schedule", "edit", "s"],
    );
    let said = String::from_utf8_lossy(&retimed.stdout);
    assert!(retimed.status.success(), "{retimed:?}");
    assert!(
        said.contains(r#"cron "0 2 * * *" -> "30 1 * * *""#),
        "{said}"
    );

    let bad = with_editor(
        &env,
        r#"sed -i 's/^cron = .*/cron = "every day"/' "$1""#,
        &["schedule", "edit", "s"],
    );
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--cron"),
        "{bad:?}"
    );
    let show = env
        .ferry(&["--output", "json", "schedule", "show", "s"])
        .ok()
        .json();
    assert_eq!(show["cron"], "30 1 * * *", "a refused edit writes nothing");

    let keep = with_editor(
        &env,
        r#"sed -i 's/^owner = true/owner = false/' "$1""#,
        &["job", "edit", "j"],
    );
    assert!(keep.status.success(), "{keep:?}");
    let show = env
        .ferry(&["--output", "json", "job", "show", "j"])
        .ok()
        .json();
    assert_eq!(show["keep"]["owner"], false, "{show:#}");
}

#[test]
fn the_folders_of_a_sync_job_cannot_be_changed_under_its_base() {
    let env = Env::new(Backend::Sqlite);
    let (a, b, c) = (env.path("a"), env.path("b"), env.path("c"));
    for dir in [&a, &b, &c] {
        fs::create_dir_all(dir).unwrap();
    }
    env.add_job("two-way", "sync", (&a, &b), &[]);
    for change in [&["--to", c.to_str().unwrap()][..], &["--rule", "mirror"]] {
        let run = env.ferry(&[&["job", "set", "two-way"][..], change].concat());
        assert_eq!(run.code, 2, "{change:?}: {run:?}");
        assert!(
            run.stderr.contains("deletions everywhere"),
            "{}",
            run.stderr
        );
    }
    env.ferry(&["job", "set", "two-way", "--exclude", "*.tmp"])
        .ok();
}
