//! `--on-failure`: a run that fails for good calls its job's hook once, with the run as JSON,
//! from the scheduler that ran it: a program from that scheduler's hook folder, or a webhook.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use ferry_tests::harness::{Backend, Env, TestScheduler, wait_until};
use serde_json::Value;

/// A job `j` whose source is missing, so every run fails, with `hook` as its `on_failure`, and
/// a schedule `s` of it that retries once.
fn failing_job(env: &Env, hook: &str) {
    let (src, dst) = (env.path("missing"), env.path("dst"));
    let extra = ["--allow-missing-source", "--on-failure", hook];
    env.add_job("j", "mirror", (&src, &dst), &extra);
    let schedule = [
        "--cron",
        "0 0 1 1 *",
        "--retries",
        "1",
        "--retry-delay",
        "100ms",
    ];
    env.ferry(&[&["schedule", "add", "s", "--job", "j"][..], &schedule].concat())
        .ok();
}

#[test]
fn a_run_that_fails_for_good_runs_the_hook_program_once_with_the_run() {
    let env = Env::new(Backend::Sqlite);
    let hooks = env.path("hooks");
    fs::create_dir_all(&hooks).unwrap();
    let calls = env.path("calls");
    fs::create_dir_all(&calls).unwrap();
    let program = hooks.join("record");
    let script = format!(
        "#!/bin/sh\ncat > {}/\"$FERRY_RUN_ID-$FERRY_STATE.json\"\n",
        calls.display()
    );
    fs::write(&program, script).unwrap();
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
    failing_job(&env, "record");
    let hook_dir = hooks.to_str().unwrap();
    let _scheduler = TestScheduler::start(&env, "s1", &["--hook-dir", hook_dir]);

    let run = env.ferry(&["--output", "json", "schedule", "run", "s", "--wait"]);
    assert_eq!(run.code, 1, "{run:?}");
    let called = || fs::read_dir(&calls).unwrap().count();
    assert!(wait_until(Duration::from_secs(10), || called() > 0));
    std::thread::sleep(Duration::from_millis(500));
    let files: Vec<_> = fs::read_dir(&calls).unwrap().flatten().collect();
    assert_eq!(
        files.len(),
        1,
        "one call for the run's two attempts: {files:?}"
    );
    let name = files[0].file_name().to_string_lossy().into_owned();
    assert!(name.ends_with("-failed.json"), "{name}");
    let body: Value = serde_json::from_slice(&fs::read(files[0].path()).unwrap()).unwrap();
    assert_eq!(body["state"], "failed", "{body:#}");
    assert_eq!(body["job_name"], "j");
    assert_eq!(
        body["attempt"], 2,
        "called after the last attempt: {body:#}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("missing"),
        "{body:#}"
    );

    let events = env.events(50);
    assert!(
        events.contains("called the on_failure hook record"),
        "{events}"
    );
}

#[test]
fn a_webhook_gets_the_failed_run_as_json() {
    let env = Env::new(Backend::Sqlite);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ferry-failed", listener.local_addr().unwrap());
    failing_job(&env, &url);
    let _scheduler = env.scheduler("s1");
    let receiver = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = Vec::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
            head.push(line);
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let answer = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";
        reader.get_mut().write_all(answer).unwrap();
        (head, body)
    });

    env.ferry(&["schedule", "run", "s", "--wait"]);
    let (head, body) = receiver.join().unwrap();
    assert!(head[0].starts_with("POST /ferry-failed "), "{head:?}");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["state"], "failed", "{body:#}");
    assert_eq!(body["schedule_name"], "s");
    let events = env.events(50);
    assert!(
        events.contains("called the on_failure hook http://"),
        "{events}"
    );
}

#[test]
fn a_hook_that_is_a_path_or_a_command_line_is_refused() {
    let env = Env::new(Backend::Sqlite);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let (from, to) = (src.to_str().unwrap(), env.path("dst"));
    for hook in ["/bin/sh", "../x", "rm -rf /"] {
        let run = env.ferry(&[
            "job",
            "add",
            "j",
            "--rule",
            "mirror",
            "--from",
            from,
            "--to",
            to.to_str().unwrap(),
            "--on-failure",
            hook,
        ]);
        assert_eq!(run.code, 2, "{hook}: {run:?}");
        assert!(run.stderr.contains("--on-failure"), "{}", run.stderr);
    }
}
