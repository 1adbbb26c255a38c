//! The agents' change journals, as a user meets them: a schedule over agents on 127.0.0.1 looks
//! only at what changed since its last run, so a quiet share costs a few hundred bytes; and
//! every change the journal could not have seen (made while the agent was down, lost in an
//! overflowed watch, made under a mount that appeared meanwhile, written through a memory map)
//! is still found, by a full scan.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use ferry_tests::harness::{Backend, Env, TestAgent, TestScheduler, wait_until};
use serde_json::Value;

/// Tests that change the kernel's inotify limits take turns with those that start agents.
static WATCH_LIMITS: Mutex<()> = Mutex::new(());

/// Two agents (`nas1` serving `srv1`, `nas2` serving `srv2`), a scheduler `s1`, and a
/// mirror (or `rule`) from `nas1:srv1/share` to `nas2:srv2/share` with a schedule that fires
/// when asked.
struct Site {
    env: Env,
    tls: PathBuf,
    srv: [PathBuf; 2],
    agents: [Option<TestAgent>; 2],
    listen: [String; 2],
    agent_args: Vec<String>,
    _scheduler: TestScheduler,
}

impl Site {
    fn new(rule: &str, agent_args: &[&str]) -> Self {
        let env = Env::new(Backend::Sqlite);
        let tls = env.tls_folder(&["nas1", "nas2"], &["s1"]);
        let srv = [env.path("srv1"), env.path("srv2")];
        let listen = [free_address(), free_address()];
        let mut site = Self {
            agents: [None, None],
            _scheduler: TestScheduler::start(&env, "s1", &["--tls-dir", &text(&tls)]),
            env,
            tls,
            srv,
            listen,
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
        };
        for i in 0..2 {
            fs::create_dir_all(site.srv[i].join("share")).unwrap();
            site.start_agent(i);
            let (name, address) = (format!("nas{}", i + 1), site.listen[i].clone());
            site.env
                .ferry(&["agent", "add", &name, "--address", &address])
                .ok();
        }
        let from = format!("nas1:{}", text(&site.srv[0].join("share")));
        let to = format!("nas2:{}", text(&site.srv[1].join("share")));
        let job = [
            "job", "add", "share", "--rule", rule, "--from", &from, "--to", &to,
        ];
        site.env.ferry(&job).ok();
        let yearly = [
            "schedule",
            "add",
            "share",
            "--job",
            "share",
            "--cron",
            "0 0 1 1 *",
        ];
        site.env.ferry(&yearly).ok();
        site
    }

    /// Starts agent `i` where it listened before, and waits for its journal.
    fn start_agent(&mut self, i: usize) {
        let _turn = WATCH_LIMITS.lock().unwrap_or_else(|p| p.into_inner());
        let args: Vec<&str> = self.agent_args.iter().map(String::as_str).collect();
        let (name, root) = (format!("nas{}", i + 1), &self.srv[i]);
        let agent =
            TestAgent::start_at_with(&self.env, &name, &[root], &self.tls, &self.listen[i], &args);
        let started = wait_until(Duration::from_secs(20), || {
            agent.log_since_start().contains("change journal started")
        });
        assert!(started, "no change journal:\n{}", agent.log_since_start());
        self.agents[i] = Some(agent);
    }

    fn agent(&self, i: usize) -> &TestAgent {
        self.agents[i].as_ref().expect("agent running")
    }

    fn share(&self, i: usize) -> PathBuf {
        self.srv[i].join("share")
    }

    /// Runs the schedule and waits for it; the run's row.
    fn run(&self) -> Value {
        let args = ["--output", "json", "schedule", "run", "share", "--wait"];
        let run = self.env.ferry(&args).json();
        assert_eq!(run["state"], "succeeded", "{run:#}");
        run
    }

    /// A run that finds nothing to do: the bytes it cost.
    fn quiet_run(&self) -> u64 {
        let run = self.run();
        assert_eq!(run["files_copied"], 0, "{run:#}");
        run["bytes_sent"].as_u64().unwrap()
    }
}

fn text(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// A loopback address with a port free now.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn write_files(folder: &Path, count: usize) {
    for i in 0..count {
        let dir = folder.join(format!("d{}", i % 20));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
}

/// `rsync -anc --delete --itemize-changes`, ferry's own folder aside: empty when identical.
/// Under the sync rule folder times follow each side's own changes: they are left out.
fn differences(src: &Path, dst: &Path, rule: &str) -> String {
    let dir_times = if rule == "sync" {
        "--omit-dir-times"
    } else {
        "-t"
    };
    let out = Command::new("rsync")
        .args([
            "-anc",
            "--delete",
            "--itemize-changes",
            "--exclude=/.ferry",
            dir_times,
        ])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .expect("rsync");
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = (String::from_utf8_lossy(&out.stdout).lines())
        .filter(|line| !line.ends_with(" ./"))
        .map(str::to_owned)
        .collect();
    match lines.len() {
        0..=20 => lines.join("\n"),
        n => format!("{}\n… {} more", lines[..20].join("\n"), n - 20),
    }
}

#[test]
fn a_quiet_share_costs_a_few_hundred_bytes_and_each_change_is_found() {
    let site = Site::new("mirror", &[]);
    let (src, dst) = (site.share(0), site.share(1));
    write_files(&src, 3000);
    let first = site.run();
    assert_eq!(first["files_copied"], 3000, "{first:#}");
    // The destination's journal reports what the first run wrote: looked at once more.
    site.quiet_run();
    let quiet = site.quiet_run();
    println!("a quiet run over 3,000 files cost {quiet} bytes");
    assert!(quiet < 2048, "a quiet run sent {quiet} bytes");

    fs::write(src.join("d1/f1.txt"), "changed at the source\n").unwrap();
    fs::write(src.join("d5/new.txt"), "new at the source\n").unwrap();
    fs::remove_file(src.join("d2/f2.txt")).unwrap();
    fs::rename(src.join("d3"), src.join("d3-renamed")).unwrap();
    fs::write(dst.join("d4/f4.txt"), "a user wrote over the replica\n").unwrap();
    let run = site.run();
    assert_eq!(differences(&src, &dst, "mirror"), "", "{run:#}");
    let sent = run["bytes_sent"].as_u64().unwrap();
    assert!(sent < 64 * 1024, "{sent} bytes for a few changes: {run:#}");
    // What that run wrote is looked at once more, then the share is quiet again.
    site.quiet_run();
    assert!(site.quiet_run() < 2048);
}

#[test]
fn the_sync_rule_finds_changes_on_either_side() {
    let site = Site::new("sync", &[]);
    let (a, b) = (site.share(0), site.share(1));
    write_files(&a, 200);
    site.run();
    site.quiet_run();
    assert!(site.quiet_run() < 2048);
    fs::write(a.join("d1/f1.txt"), "changed on nas1\n").unwrap();
    fs::write(b.join("d2/f2.txt"), "changed on nas2\n").unwrap();
    fs::remove_file(b.join("d3/f3.txt")).unwrap();
    fs::write(b.join("from-nas2.txt"), "new on nas2\n").unwrap();
    site.run();
    assert_eq!(differences(&a, &b, "sync"), "");
    assert_eq!(
        fs::read_to_string(a.join("d2/f2.txt")).unwrap(),
        "changed on nas2\n"
    );
    assert!(!a.join("d3/f3.txt").exists());
    assert!(a.join("from-nas2.txt").exists());
}

#[test]
fn a_change_made_while_the_agent_was_down_is_found_and_the_journal_takes_up_again() {
    let mut site = Site::new("mirror", &[]);
    let (src, dst) = (site.share(0), site.share(1));
    write_files(&src, 3000);
    site.run();
    site.quiet_run();
    // A restart catches up from 10 s before the last instant the journal knew itself
    // complete: let the copy's writes fall before it.
    std::thread::sleep(Duration::from_secs(11));
    site.quiet_run();
    site.agents[0].take().unwrap().kill();
    fs::write(src.join("d7/f7.txt"), "changed while nas1 was down\n").unwrap();
    fs::remove_file(src.join("d8/f8.txt")).unwrap();
    fs::rename(src.join("d9/f9.txt"), src.join("d9/f9-renamed.txt")).unwrap();
    site.start_agent(0);
    let log = site.agent(0).log_since_start();
    assert!(log.contains("resumed=true"), "{log}");
    let run = site.run();
    assert_eq!(differences(&src, &dst, "mirror"), "", "{run:#}");
    // Only what changed while the agent was down was looked at, not the 3,000 files.
    let sent = run["bytes_sent"].as_u64().unwrap();
    println!("the first run after the restart cost {sent} bytes");
    let log = site.agent(0).log_since_start();
    assert!(sent < 16 * 1024, "{sent} bytes: {run:#}\n{log}");
    site.quiet_run();
    assert!(site.quiet_run() < 2048);

    // An entry made or removed in the job's own folder while the agent was down: the folder
    // is looked at whole (which entry went is not known), and found.
    site.agents[0].take().unwrap().kill();
    fs::rename(src.join("d10"), src.join("d10-renamed")).unwrap();
    site.start_agent(0);
    site.run();
    assert_eq!(differences(&src, &dst, "mirror"), "");
}

/// The journal files in agent `name`'s state folder.
fn kept_journals(site: &Site, name: &str) -> Vec<PathBuf> {
    let state = site.env.path(&format!("agent-{name}-state"));
    (fs::read_dir(state).unwrap().flatten())
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("journal-")
        })
        .collect()
}

#[test]
fn a_kept_journal_that_does_not_match_its_root_starts_over() {
    let mut site = Site::new("mirror", &[]);
    let (src, dst) = (site.share(0), site.share(1));
    write_files(&src, 100);
    site.run();
    site.quiet_run();
    site.agents[0].take().unwrap().kill();
    let kept = kept_journals(&site, "nas1");
    assert_eq!(kept.len(), 1, "{kept:?}");
    fs::write(&kept[0], b"not a journal").unwrap();
    fs::write(src.join("d3/f3.txt"), "changed while nas1 was down\n").unwrap();
    site.start_agent(0);
    let log = site.agent(0).log_since_start();
    assert!(log.contains("does not match it: it starts over"), "{log}");
    assert!(log.contains("resumed=false"), "{log}");
    site.run();
    assert_eq!(differences(&src, &dst, "mirror"), "");
    site.quiet_run();
    assert!(site.quiet_run() < 2048, "the journal serves again");
}

#[test]
fn a_folder_put_in_the_place_of_a_replica_is_scanned_whole() {
    let site = Site::new("mirror", &[]);
    let (src, dst) = (site.share(0), site.share(1));
    write_files(&src, 100);
    site.run();
    site.quiet_run();
    // All the watch reports is the folder's own name, not what the old one held.
    fs::rename(&dst, site.srv[1].join("share.old")).unwrap();
    fs::create_dir(&dst).unwrap();
    site.run();
    assert_eq!(differences(&src, &dst, "mirror"), "");
}

#[test]
fn a_state_folder_put_back_from_an_older_copy_still_finds_every_change() {
    let mut site = Site::new("mirror", &[]);
    let (src, dst) = (site.share(0), site.share(1));
    write_files(&src, 100);
    site.run();
    site.quiet_run();
    // A copy of nas1's kept journal, as a backup of its state folder would hold it.
    let kept = kept_journals(&site, "nas1");
    let backup = fs::read(&kept[0]).unwrap();
    fs::write(src.join("d1/f1.txt"), "changed after the backup\n").unwrap();
    site.run();
    site.quiet_run();
    site.agents[0].take().unwrap().kill();
    fs::write(&kept[0], backup).unwrap();
    fs::write(src.join("d2/f2.txt"), "changed while nas1 was down\n").unwrap();
    site.start_agent(0);
    site.run();
    assert_eq!(differences(&src, &dst, "mirror"), "");
}

/// Sets `/proc/sys/fs/inotify/max_queued_events` until dropped: a watch started meanwhile
/// keeps the small queue for its lifetime.
struct QueueLimit(String);

impl QueueLimit {
    const FILE: &str = "/proc/sys/fs/inotify/max_queued_events";

    fn set(events: u32) -> Self {
        let was = fs::read_to_string(Self::FILE).expect("inotify limits");
        fs::write(Self::FILE, events.to_string()).expect("set the inotify queue (needs root)");
        Self(was)
    }
}

impl Drop for QueueLimit {
    fn drop(&mut self) {
        let _ = fs::write(Self::FILE, self.0.trim());
    }
}

#[test]
fn a_flood_past_the_watch_queue_is_found() {
    let mut site = Site::new("mirror", &[]);
    let (src, dst) = (site.share(0), site.share(1));
    write_files(&src, 10);
    site.run();
    // nas1 again, its watch's queue 16 events long.
    site.agents[0].take().unwrap().kill();
    {
        let _limit = QueueLimit::set(16);
        site.start_agent(0);
    }
    site.run();
    site.quiet_run();
    let agent = site.agent(0);
    // Stopped, so the flood overflows the queue before the agent reads it; into folders
    // watched already (a new folder's contents are found by walking it).
    let pid = agent.pid().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    write_files(&src, 500);
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let lost = wait_until(Duration::from_secs(10), || {
        agent.log_since_start().contains("the watcher lost events")
    });
    assert!(lost, "no overflow:\n{}", agent.log_since_start());
    site.run();
    assert_eq!(differences(&src, &dst, "mirror"), "");
    // The journal caught up and kept its identity: the runs' marks are still answered.
    let log = agent.log_since_start();
    assert!(log.contains("resumed=true"), "{log}");
    site.quiet_run();
    assert!(
        site.quiet_run() < 2048,
        "the journal serves on after the overflow"
    );
}

/// A bind mount, undone when dropped.
struct BindMount(PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_change_under_a_folder_mounted_meanwhile_is_found() {
    let site = Site::new("mirror", &[]);
    let (src, dst) = (site.share(0), site.share(1));
    write_files(&src, 10);
    fs::create_dir(src.join("mounted")).unwrap();
    site.run();
    site.quiet_run();
    let elsewhere = site.env.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let target = src.join("mounted");
    let mounted = Command::new("mount")
        .arg("--bind")
        .arg(&elsewhere)
        .arg(&target)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount --bind needs root");
    let _mount = BindMount(target);
    // Written where the watch never looked: through the mount's other name.
    fs::write(elsewhere.join("unseen.txt"), "under the new mount\n").unwrap();
    site.run();
    assert_eq!(differences(&src, &dst, "mirror"), "");
    assert!(dst.join("mounted/unseen.txt").exists());
}

#[test]
fn the_periodic_full_scan_finds_what_the_journal_missed() {
    let site = Site::new("mirror", &["--full-scan-every", "8s"]);
    let (src, dst) = (site.share(0), site.share(1));
    write_files(&src, 10);
    site.run();
    site.quiet_run();
    let file = src.join("d1/f1.txt");
    // Unmapping it would count as closing it after writing: the map lives to the end.
    let map = SharedMap::open(&file);
    map.write(b"MAPPED");
    // Within the interval the journal is believed, and it heard nothing.
    site.quiet_run();
    assert_ne!(
        fs::read(&file).unwrap(),
        fs::read(dst.join("d1/f1.txt")).unwrap()
    );
    std::thread::sleep(Duration::from_secs(8));
    let check = site.run();
    assert_eq!(check["files_copied"], 1, "{check:#}");
    assert_eq!(differences(&src, &dst, "mirror"), "");
    let warned = site.agent(0).log().contains("did not report");
    assert!(warned, "no word of the miss:\n{}", site.agent(0).log());
    drop(map);
}

/// A file mapped shared into memory: writes through the map change the file (and its time),
/// and no file watch hears of them.
struct SharedMap {
    at: *mut libc::c_void,
    len: usize,
}

#[allow(unsafe_code)]
impl SharedMap {
    fn open(path: &Path) -> Self {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let len = file.metadata().unwrap().len() as usize;
        // Safety: a fresh shared mapping of a file this test owns, unmapped on drop.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        Self { at, len }
    }

    fn write(&self, bytes: &[u8]) {
        assert!(bytes.len() <= self.len);
        // Safety: within the mapping, which lives until drop.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.at.cast::<u8>(), bytes.len());
            assert_eq!(libc::msync(self.at, self.len, libc::MS_SYNC), 0);
        }
    }
}

#[allow(unsafe_code)]
impl Drop for SharedMap {
    fn drop(&mut self) {
        // Safety: the mapping `open` made, unmapped once.
        unsafe { libc::munmap(self.at, self.len) };
    }
}
