//! What a person at a terminal sees that a script does not: progress while a run goes, on
//! `ferry schedule run --wait` and `ferry-agent sync` (run here under `script`, which gives
//! them a terminal).

use std::fs;
use std::path::Path;
use std::process::Command;

use ferry_tests::harness::{Backend, Env, binary};

fn many_files(dir: &Path, count: usize) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        fs::write(dir.join(format!("f{i:05}")), [b'x'; 1024]).unwrap();
    }
}

/// Runs `command` (a shell command line) with a terminal as its output; returns what it wrote.
fn on_terminal(command: &str) -> String {
    let out = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .output()
        .expect("script (util-linux) runs");
    assert!(out.status.success(), "{command}: {out:?}");
    String::from_utf8_lossy(&out.stdout).replace('\r', "\n")
}

#[test]
fn an_agent_sync_on_a_terminal_shows_what_it_has_copied_and_a_pipe_gets_the_summary_only() {
    let env = Env::new(Backend::Sqlite);
    many_files(&env.path("src"), 3000);
    let agent = binary("ferry-agent");
    let sync = |dst: &str| {
        format!(
            "{} sync {} {}",
            agent.display(),
            env.path("src").display(),
            env.path(dst).display()
        )
    };
    let shown = on_terminal(&sync("on-terminal"));
    assert!(shown.contains("copying: "), "{shown}");
    assert!(shown.contains("3000 copied"), "{shown}");

    let piped = Command::new("sh")
        .args(["-c", &sync("piped")])
        .output()
        .unwrap();
    let piped = String::from_utf8_lossy(&piped.stdout);
    assert!(!piped.contains("copying: "), "{piped}");
    assert!(piped.contains("3000 copied"), "{piped}");
}

#[test]
fn waiting_for_a_run_on_a_terminal_shows_the_run_going() {
    let env = Env::new(Backend::Sqlite);
    many_files(&env.path("src"), 3000);
    env.add_job("j", "mirror", (&env.path("src"), &env.path("dst")), &[]);
    env.ferry(&["schedule", "add", "s", "--job", "j", "--cron", "0 0 1 1 *"])
        .ok();
    let _scheduler = env.scheduler("s1");
    let wait = format!(
        "{} --db {} schedule run s --wait",
        binary("ferry").display(),
        env.db
    );
    let shown = on_terminal(&wait);
    assert!(shown.contains("run 1 on s1, attempt 1: "), "{shown}");
    assert!(shown.contains("succeeded"), "{shown}");
}
