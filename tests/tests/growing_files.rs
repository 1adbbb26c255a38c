//! A monitored file that keeps growing (a log, a download, a recording) is replicated once it
//! settles, not copied whole after every write the watch reports.

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use ferry_tests::harness::{Backend, Env, TestScheduler, wait_until};
use serde_json::Value;

const STEP: usize = 512 << 10;
const STEPS: usize = 40;

#[test]
fn a_file_appended_in_many_steps_is_not_copied_whole_after_each() {
    let env = Env::new(Backend::Sqlite);
    let (src, dst) = (env.path("src"), env.path("dst"));
    fs::create_dir_all(&src).unwrap();
    env.add_job("grow", "mirror", (&src, &dst), &[]);
    let monitor = [
        "monitor",
        "add",
        "grow",
        "--job",
        "grow",
        "--debounce",
        "20ms",
    ];
    env.ferry(&monitor).ok();
    let _scheduler = TestScheduler::start(&env, "s1", &[]);
    fs::write(src.join("small.txt"), "a small file goes at once").unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || dst.join("small.txt").exists()),
        "the monitor never started"
    );

    // A writer appends 20 MiB in 40 steps of 512 KiB, one every 50 ms.
    let mut log = fs::File::create(src.join("growing.log")).unwrap();
    let chunk: Vec<u8> = (0..STEP).map(|i| (i % 251) as u8).collect();
    for _ in 0..STEPS {
        log.write_all(&chunk).unwrap();
        log.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(log);
    let finished = Instant::now();
    let size = (STEP * STEPS) as u64;
    let whole = || fs::metadata(dst.join("growing.log")).is_ok_and(|m| m.len() == size);
    assert!(
        wait_until(Duration::from_secs(20), whole),
        "never replicated whole"
    );
    let settled_in = finished.elapsed();
    assert_eq!(
        fs::read(src.join("growing.log")).unwrap(),
        fs::read(dst.join("growing.log")).unwrap()
    );
    // A file small enough still goes at once, while a large one settles.
    fs::write(src.join("after.txt"), "after the log").unwrap();
    assert!(wait_until(Duration::from_secs(2), || dst
        .join("after.txt")
        .exists()));

    let runs: Value = env
        .ferry(&["--output", "json", "runs", "--job", "grow"])
        .ok()
        .json();
    let copied = runs[0]["bytes_total"]
        .as_u64()
        .expect("bytes of the monitor's run");
    eprintln!(
        "{copied} bytes copied for a file of {size}, settled {settled_in:?} after its last write"
    );
    // Copied whole after each step, it would have cost about 20 times its size.
    assert!(
        copied < 3 * size,
        "{copied} bytes copied for a file of {size} (settled {settled_in:?} after the last write): \
         {runs:#}"
    );
    assert!(settled_in < Duration::from_secs(5), "{settled_in:?}");
}
