//! Syncing between agents, as a user runs it: two `ferry-agent run` processes on 127.0.0.1 with
//! certificates from `ferry ca`, a scheduler that hands the runs to the source agent, and the
//! replicas checked with `rsync -anc --delete --itemize-changes` (no output: identical).

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ferry_engine::beneath::Root;
use ferry_engine::delta::encode;
use ferry_engine::meta::{self, Named};
use ferry_engine::tree::{Entry, Expected, Kind, Meta, Mtime};
use ferry_tests::harness::{Backend, Env, TestAgent, TestScheduler, wait_until};
use ferry_tests::netns::SlowLink;
use ferry_tests::pg::own_server;
use ferry_wire::client::{ClientError, Dial, Session};
use ferry_wire::protocol::{DataOp, ErrorKind, Fence, Request, Response};
use serde_json::Value;

/// A CA, two agents serving `srv1` and `srv2`, and a scheduler `s1` that can reach them.
struct Site {
    env: Env,
    tls: PathBuf,
    srv: [PathBuf; 2],
    agents: Vec<Option<TestAgent>>,
    scheduler: Option<TestScheduler>,
}

fn text(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

impl Site {
    fn new() -> Self {
        Self::on(Env::new(Backend::Sqlite))
    }

    fn on(env: Env) -> Self {
        Self::launch(env, |env, i, root, tls| {
            TestAgent::start(env, &format!("nas{}", i + 1), &[root], tls)
        })
    }

    /// A site whose two agents see users and groups of their own (`passwd` and `group`
    /// contents), as agents on two machines do.
    fn with_accounts(accounts: [(&str, &str); 2]) -> Self {
        Self::launch(Env::new(Backend::Sqlite), |env, i, root, tls| {
            let name = format!("nas{}", i + 1);
            TestAgent::start_with_accounts(env, &name, &[root], tls, accounts[i])
        })
    }

    /// The site, its agent `i` (serving `nas{i+1}`) started by `start`.
    fn launch(env: Env, start: impl Fn(&Env, usize, &Path, &Path) -> TestAgent) -> Self {
        let tls = env.tls_folder(&["nas1", "nas2"], &["s1"]);
        let srv = [env.path("srv1"), env.path("srv2")];
        let mut agents = Vec::new();
        for (i, root) in srv.iter().enumerate() {
            fs::create_dir_all(root).unwrap();
            let name = format!("nas{}", i + 1);
            let agent = start(&env, i, root, &tls);
            env.ferry(&["agent", "add", &name, "--address", &agent.address])
                .ok();
            agents.push(Some(agent));
        }
        let scheduler = TestScheduler::start(&env, "s1", &["--tls-dir", &text(&tls)]);
        Self {
            env,
            tls,
            srv,
            agents,
            scheduler: Some(scheduler),
        }
    }

    /// A job from `nas1:srv1/NAME` to `nas2:srv2/NAME` with a schedule of the same name that
    /// only fires when asked.
    fn job(&self, name: &str, rule: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
        let (src, dst) = (self.srv[0].join(name), self.srv[1].join(name));
        fs::create_dir_all(&src).unwrap();
        let from = format!("nas1:{}", text(&src));
        let to = format!("nas2:{}", text(&dst));
        self.add(name, rule, &from, &to, extra);
        (src, dst)
    }

    /// A job `name` from `from` to `to`, and a schedule of the same name that only fires when
    /// asked.
    fn add(&self, name: &str, rule: &str, from: &str, to: &str, extra: &[&str]) {
        let mut args = vec![
            "job", "add", name, "--rule", rule, "--from", from, "--to", to,
        ];
        args.extend_from_slice(extra);
        self.env.ferry(&args).ok();
        let yearly = [
            "schedule",
            "add",
            name,
            "--job",
            name,
            "--cron",
            "0 0 1 1 *",
        ];
        self.env.ferry(&yearly).ok();
    }

    /// A job `live` of `rule` from `nas1:srv1/live` to `nas2:srv2/live`, and a monitor of it
    /// (debounce 20 ms, then `extra`). `before.txt` is in the source before the monitor starts.
    fn monitor(&self, rule: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
        let (src, dst) = (self.srv[0].join("live"), self.srv[1].join("live"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("before.txt"), "there before the monitor").unwrap();
        let (from, to) = (
            format!("nas1:{}", text(&src)),
            format!("nas2:{}", text(&dst)),
        );
        let job = [
            "job", "add", "live", "--rule", rule, "--from", &from, "--to", &to,
        ];
        self.env.ferry(&job).ok();
        let monitor = [
            "monitor",
            "add",
            "live",
            "--job",
            "live",
            "--debounce",
            "20ms",
        ];
        self.env.ferry(&[&monitor[..], extra].concat()).ok();
        (src, dst)
    }

    /// `ferry runs --job JOB`, newest first.
    fn runs(&self, job: &str) -> Value {
        let args = ["--output", "json", "runs", "--job", job];
        self.env.ferry(&args).ok().json()
    }

    fn run(&self, schedule: &str) -> Value {
        let run = self
            .env
            .ferry(&["--output", "json", "schedule", "run", schedule, "--wait"]);
        let json = run.json();
        assert!(json.is_object(), "{run:?}");
        json
    }
}

/// `rsync -anc --delete --itemize-changes`: what rsync would still change; empty when the
/// folders are identical. ferry's own `.ferry` folder is left out, and so is the time of the
/// replica's root folder itself: it belongs to the job's folders, not to what they hold (ferry
/// keeps its state in it, which changes its time).
fn differences(src: &Path, dst: &Path, rule: &str) -> String {
    match rule {
        "copy" => rsync_differences(src, dst, &["-anc"]),
        "mirror" => rsync_differences(src, dst, &["-anc", "--delete"]),
        // Folder times follow each side's own changes under the sync rule; ferry does not
        // carry them.
        _ => rsync_differences(src, dst, &["-anc", "--delete", "--omit-dir-times"]),
    }
}

/// What `rsync` run with `args` (and `--itemize-changes`) would still change from `src` to
/// `dst`, ferry's `.ferry` and the root folder's own time left out.
fn rsync_differences(src: &Path, dst: &Path, args: &[&str]) -> String {
    let out = Command::new("rsync")
        .args(args)
        .args(["--itemize-changes", "--exclude=.ferry"])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .expect("rsync must be installed (tests/run.sh installs it)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| *line != ".d..t...... ./")
        .map(|line| format!("{line}\n"))
        .collect()
}

/// `len` random bytes (incompressible, like most large files on a file server).
fn noise(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    fs::File::open("/dev/urandom")
        .and_then(|mut random| std::io::Read::read_exact(&mut random, &mut bytes))
        .unwrap();
    bytes
}

fn write_tree(root: &Path) {
    fs::create_dir_all(root.join("docs/deep/deeper")).unwrap();
    fs::write(root.join("readme.txt"), "hello agents\n".repeat(100)).unwrap();
    fs::write(root.join("docs/a.bin"), noise(70_000)).unwrap();
    fs::write(root.join("docs/deep/deeper/b.txt"), "b").unwrap();
    fs::write(root.join("big.bin"), noise(4 << 20)).unwrap();
    fs::write(root.join("empty"), "").unwrap();
    std::os::unix::fs::symlink("docs/a.bin", root.join("link")).unwrap();
    // A name in Latin-1, as an old file server may hold: bytes, not UTF-8.
    let latin1 = std::ffi::OsStr::from_bytes(b"docs/r\xe9sum\xe9.txt");
    fs::write(root.join(latin1), "not utf-8").unwrap();
}

/// Log-like text of `len` bytes: words from a small vocabulary, which zstd shrinks about
/// fivefold.
fn log_text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "replica",
        "lease",
        "agent",
        "status",
        "ok",
        "error",
        "report",
        "2026-12-01",
    ];
    let mut state = seed | 1;
    let mut text = Vec::with_capacity(len + 16);
    while text.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.extend_from_slice(WORDS[(state % 8) as usize].as_bytes());
        text.push(if state.is_multiple_of(11) {
            b'\n'
        } else {
            b' '
        });
    }
    text.truncate(len);
    text
}

/// Runs a job of 8 MiB of log files between the site's agents: its bytes and bytes sent.
fn sync_logs(site: &Site) -> (u64, u64) {
    let (src, dst) = site.job("logs", "mirror", &[]);
    for day in 0..8 {
        fs::write(src.join(format!("day{day}.log")), log_text(1 << 20, day)).unwrap();
    }
    let run = site.run("logs");
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(differences(&src, &dst, "mirror"), "");
    let bytes = |field: &str| run[field].as_u64().unwrap();
    (bytes("bytes_total"), bytes("bytes_sent"))
}

#[test]
fn file_data_goes_compressed_over_a_slow_link_and_raw_over_loopback() {
    let (total, sent) = sync_logs(&Site::new());
    assert!(
        sent >= total,
        "loopback is faster than the compressor, yet {sent} bytes carried {total}"
    );
    let Some(link) = SlowLink::new("40mbit") else {
        return;
    };
    let mut env = Env::new(Backend::Sqlite);
    env.network = Some(link);
    let (total, sent) = sync_logs(&Site::on(env));
    // The first 100 ms go raw, before the link is measured.
    assert!(
        sent < total / 2,
        "over 40 Mbit/s, {sent} bytes carried {total} bytes of text"
    );
}

#[test]
fn jobs_of_each_rule_between_two_agents_leave_identical_replicas() {
    let site = Site::new();

    // mirror: the destination becomes identical, extras deleted; a small edit in a big file
    // sends a few KiB, not the file.
    let (src, dst) = site.job("mirrored", "mirror", &[]);
    write_tree(&src);
    fs::create_dir_all(&dst).unwrap();
    fs::write(dst.join("extra.txt"), "not in the source").unwrap();
    let first = site.run("mirrored");
    assert_eq!(first["state"], "succeeded", "{first:#}");
    assert_eq!(differences(&src, &dst, "mirror"), "");
    let big = 4u64 << 20;
    assert!(first["bytes_total"].as_u64().unwrap() >= big, "{first:#}");

    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(src.join("big.bin"))
        .unwrap();
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(2_000_000)).unwrap();
    file.write_all(b"a few changed bytes").unwrap();
    drop(file);
    let edit = site.run("mirrored");
    assert_eq!(edit["state"], "succeeded", "{edit:#}");
    assert_eq!(edit["files_copied"], 1, "{edit:#}");
    assert_eq!(differences(&src, &dst, "mirror"), "");
    let sent = edit["bytes_sent"].as_u64().unwrap();
    assert!(
        sent < 64 * 1024,
        "a 19-byte edit sent {sent} bytes: {edit:#}"
    );

    // A rename or move on the source costs no file bytes: the destination has the content.
    fs::create_dir_all(src.join("moved")).unwrap();
    fs::rename(src.join("big.bin"), src.join("moved/big-renamed.bin")).unwrap();
    let moved = site.run("mirrored");
    assert_eq!(moved["state"], "succeeded", "{moved:#}");
    assert_eq!(differences(&src, &dst, "mirror"), "");
    let sent = moved["bytes_sent"].as_u64().unwrap();
    assert!(
        sent < 64 * 1024,
        "moving a 4 MiB file sent {sent} bytes: {moved:#}"
    );

    let unchanged = site.run("mirrored");
    assert_eq!(unchanged["files_copied"], 0, "{unchanged:#}");
    assert!(unchanged["bytes_sent"].as_u64().unwrap() < 16 * 1024);

    // copy: new and changed files arrive, nothing is deleted.
    let (src, dst) = site.job("copied", "copy", &[]);
    write_tree(&src);
    fs::create_dir_all(&dst).unwrap();
    fs::write(dst.join("kept.txt"), "the copy rule deletes nothing").unwrap();
    assert_eq!(site.run("copied")["state"], "succeeded");
    assert_eq!(differences(&src, &dst, "copy"), "");
    assert!(dst.join("kept.txt").exists());

    // sync: changes flow both ways.
    let (src, dst) = site.job("synced", "sync", &[]);
    write_tree(&src);
    assert_eq!(site.run("synced")["state"], "succeeded");
    fs::write(dst.join("from-the-other-side.txt"), "new on nas2").unwrap();
    fs::remove_file(dst.join("docs/a.bin")).unwrap();
    fs::write(src.join("readme.txt"), "changed on nas1").unwrap();
    let both = site.run("synced");
    assert_eq!(both["state"], "succeeded", "{both:#}");
    assert_eq!(differences(&src, &dst, "sync"), "");
    assert!(src.join("from-the-other-side.txt").exists());
    assert!(!src.join("docs/a.bin").exists());
    assert_eq!(
        fs::read_to_string(dst.join("readme.txt")).unwrap(),
        "changed on nas1"
    );
    // A rename on either side costs no file bytes: the other side has the content.
    fs::create_dir_all(dst.join("moved")).unwrap();
    fs::rename(dst.join("big.bin"), dst.join("moved/big-renamed.bin")).unwrap();
    let moved = site.run("synced");
    assert_eq!(moved["state"], "succeeded", "{moved:#}");
    assert_eq!(differences(&src, &dst, "sync"), "");
    assert!(src.join("moved/big-renamed.bin").exists() && !src.join("big.bin").exists());
    let sent = moved["bytes_sent"].as_u64().unwrap();
    assert!(
        sent < 64 * 1024,
        "renaming a 4 MiB file under the sync rule sent {sent} bytes: {moved:#}"
    );

    // Guards: a run over --max-deletes deletes nothing; --versions keeps what mirror replaces.
    let (src, dst) = site.job(
        "guarded",
        "mirror",
        &["--max-deletes", "2", "--versions", ".versions"],
    );
    fs::write(src.join("doc.txt"), "version 1").unwrap();
    assert_eq!(site.run("guarded")["state"], "succeeded");
    for i in 0..3 {
        fs::write(dst.join(format!("extra{i}.txt")), "x").unwrap();
    }
    let refused = site.run("guarded");
    assert_eq!(refused["state"], "failed", "{refused:#}");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains("would delete 3 files") && error.contains("nothing was deleted"),
        "{error}"
    );
    assert!(dst.join("extra0.txt").exists());
    fs::remove_file(dst.join("extra0.txt")).unwrap();
    fs::write(src.join("doc.txt"), "version 2").unwrap();
    let kept = site.run("guarded");
    assert_eq!(kept["state"], "succeeded", "{kept:#}");
    assert_eq!(
        fs::read_to_string(dst.join("doc.txt")).unwrap(),
        "version 2"
    );
    let dated: Vec<_> = fs::read_dir(dst.join(".versions"))
        .unwrap()
        .flatten()
        .collect();
    let old = dated[0].path();
    assert_eq!(
        fs::read_to_string(old.join("doc.txt")).unwrap(),
        "version 1"
    );
    assert_eq!(fs::read_to_string(old.join("extra1.txt")).unwrap(), "x");

    // A folder on the scheduler's machine to an agent, and back: the scheduler runs these
    // itself, through the same engine.
    let local = site.env.path("local");
    write_tree(&local);
    let there = site.srv[1].join("from-local");
    let back = site.env.path("back");
    for (name, from, to) in [
        ("up", text(&local), format!("nas2:{}", text(&there))),
        ("down", format!("nas2:{}", text(&there)), text(&back)),
    ] {
        site.add(name, "mirror", &from, &to, &[]);
        let run = site.run(name);
        assert_eq!(run["state"], "succeeded", "{name}: {run:#}");
    }
    assert_eq!(differences(&local, &there, "mirror"), "");
    assert_eq!(differences(&local, &back, "mirror"), "");

    // Where the data went: agent to agent, never through the scheduler's machine.
    let log = site.agents[0].as_ref().unwrap().log();
    assert!(log.contains("running a job handed over"), "{log}");
}

#[test]
fn a_first_sync_of_identical_copies_with_other_times_keeps_one_version_each() {
    let site = Site::new();
    let (src, dst) = site.job("seeded", "sync", &[]);
    fs::create_dir_all(&dst).unwrap();
    // Copies made without their times, on both agents before the job's first run: the same
    // content is no conflict, and no file's data needs to cross.
    let files = 40;
    for i in 0..files {
        let content = log_text(8 * 1024, i);
        fs::write(src.join(format!("{i}.log")), &content).unwrap();
        fs::write(dst.join(format!("{i}.log")), &content).unwrap();
        let old = filetime::FileTime::from_unix_time(1_500_000_000, 0);
        filetime::set_file_mtime(dst.join(format!("{i}.log")), old).unwrap();
    }
    let run = site.run("seeded");
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["files_copied"], 0, "{run:#}");
    let names: Vec<String> = (fs::read_dir(&dst).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != ".ferry")
        .collect();
    assert_eq!(names.len(), files as usize, "no conflict copies: {names:?}");
    assert_eq!(differences(&src, &dst, "sync"), "");
}

#[test]
fn many_edited_files_each_go_as_a_delta() {
    let site = Site::new();
    let (src, dst) = site.job("edited", "mirror", &[]);
    // More files than the signatures asked for ahead (64), so the window refills.
    let files = 150;
    for i in 0..files {
        fs::write(src.join(format!("{i:03}.bin")), noise(64 * 1024)).unwrap();
    }
    assert_eq!(site.run("edited")["state"], "succeeded");
    for i in 0..files {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .open(src.join(format!("{i:03}.bin")))
            .unwrap();
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(30_000)).unwrap();
        file.write_all(b"edit").unwrap();
    }
    let run = site.run("edited");
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["files_copied"], files, "{run:#}");
    assert_eq!(differences(&src, &dst, "mirror"), "");
    // Whole, they would be 9.6 MB; as deltas, a block and the signatures' overhead each.
    let sent = run["bytes_sent"].as_u64().unwrap();
    assert!(
        sent < files * 8 * 1024,
        "{sent} bytes for 150 edits: {run:#}"
    );
}

#[test]
fn a_delta_that_does_not_rebuild_the_file_is_sent_again_whole() {
    let site = Site::new();
    let (src, dst) = site.job("collided", "mirror", &[]);
    let old = false_match_base();
    fs::write(src.join("f.bin"), &old).unwrap();
    assert_eq!(site.run("collided")["state"], "succeeded");
    // A new version whose first block the old one's signature cannot tell from its own: the
    // delta says "old block 0", which rebuilds the old bytes, and the whole-file hash refuses.
    let new = false_match_of(&old);
    fs::write(src.join("f.bin"), &new).unwrap();
    let run = site.run("collided");
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["files_copied"], 1, "{run:#}");
    assert_eq!(fs::read(dst.join("f.bin")).unwrap(), new);
    assert_eq!(differences(&src, &dst, "mirror"), "");
}

/// Two blocks of text: no byte is within 2 of either end of its range, so any may move by 2.
fn false_match_base() -> Vec<u8> {
    log_text(1400, 7)
}

/// `old` with its first block changed so that its signature entry stays the same. Adding 1, -2
/// and 1 to three bytes in a row keeps both of rsync's running sums; the strong hash is only 2
/// bytes long for a file this small, so among 2^20 such changes one matches it too.
fn false_match_of(old: &[u8]) -> Vec<u8> {
    let signature =
        |bytes: &[u8]| ferry_engine::delta::signature(&mut &bytes[..], bytes.len() as u64).unwrap();
    let wanted = signature(old);
    assert_eq!((wanted.block_size, wanted.strong_len), (700, 2));
    let first_block = &old[..700];
    let entry = signature(first_block).sums;
    let found = (1u32..1 << 20).find_map(|n| {
        let mut block = first_block.to_vec();
        for bit in (0..20).filter(|bit| n & 1 << bit != 0) {
            let at = bit * 3;
            block[at] += 1;
            block[at + 1] -= 2;
            block[at + 2] += 1;
        }
        (signature(&block).sums == entry).then_some(block)
    });
    let block = found.expect("no false match among 2^20 candidates: is the strong hash longer?");
    let new = [&block[..], &old[700..]].concat();
    let width = 4 + usize::from(wanted.strong_len);
    assert_eq!(signature(&new).sums[..width], wanted.sums[..width]);
    new
}

/// Makes a file immutable (`chattr +i`), which even root cannot remove, until dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn new(path: &Path) -> Option<Self> {
        let made = Command::new("chattr").arg("+i").arg(path).status();
        if made.is_ok_and(|status| status.success()) {
            return Some(Self(path.to_owned()));
        }
        let under_ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !under_ci,
            "chattr +i is required under CI (an ext4 temp folder, run as root)"
        );
        eprintln!("\n!!!!! SKIPPING a failed-removal check: chattr +i does not work here\n");
        None
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn removals_on_an_agent_go_without_waiting_and_each_is_accounted_for() {
    let site = Site::new();
    let (src, dst) = site.job("pruned", "mirror", &[]);
    fs::write(src.join("kept.txt"), "in the source").unwrap();
    // More removals than the client sends before it reads answers (1024).
    let extra = 2500;
    for i in 0..extra {
        let folder = dst.join(format!("old/{}", i % 10));
        fs::create_dir_all(&folder).unwrap();
        fs::write(folder.join(format!("{i}.txt")), "only at the destination").unwrap();
    }
    fs::write(dst.join("stuck.txt"), "cannot be removed").unwrap();
    let stuck = Immutable::new(&dst.join("stuck.txt"));

    let run = site.run("pruned");
    let deleted = run["files_deleted"].as_u64().unwrap();
    assert!(!dst.join("old").exists(), "{run:#}");
    assert!(dst.join("kept.txt").exists(), "{run:#}");
    if stuck.is_none() {
        assert_eq!(run["state"], "succeeded", "{run:#}");
        assert_eq!(deleted, extra + 1, "{run:#}");
        return;
    }
    assert!(dst.join("stuck.txt").exists());
    assert_eq!(deleted, extra, "only what was removed counts: {run:#}");
    assert_eq!(run["state"], "failed", "{run:#}");
    assert!(
        run["error"].as_str().unwrap().contains("stuck.txt"),
        "{run:#}"
    );
    drop(stuck);
    let again = site.run("pruned");
    assert_eq!(again["state"], "succeeded", "{again:#}");
    assert_eq!(differences(&src, &dst, "mirror"), "");
}

#[test]
fn a_folder_an_agent_cannot_make_fails_with_its_files_and_nothing_else() {
    let site = Site::new();
    let (src, dst) = site.job("walled", "mirror", &[]);
    fs::create_dir_all(src.join("sealed")).unwrap();
    assert_eq!(site.run("walled")["state"], "succeeded");
    // Folders go without waiting for their answers: a failed one is still told apart.
    fs::create_dir_all(src.join("sealed/new/inner")).unwrap();
    fs::write(src.join("sealed/new/inner/a.txt"), "cannot land").unwrap();
    fs::write(src.join("other.txt"), "lands").unwrap();
    let Some(wall) = Immutable::new(&dst.join("sealed")) else {
        return;
    };
    let run = site.run("walled");
    assert_eq!(run["state"], "failed", "{run:#}");
    assert_eq!(run["files_copied"], 1, "only other.txt: {run:#}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("create folder") && error.contains("sealed/new"),
        "{run:#}"
    );
    assert_eq!(fs::read_to_string(dst.join("other.txt")).unwrap(), "lands");
    // Each failure names its own file: verdicts are matched to files by their order.
    let tail = site.env.ferry(&["tail"]).stdout;
    let failed = |name: &str| {
        tail.lines()
            .any(|line| line.contains(" error ") && line.contains(&format!("{name}: ")))
    };
    assert!(
        failed("sealed/new/inner/a.txt") && !failed("other.txt"),
        "{tail}"
    );
    drop(wall);
    let again = site.run("walled");
    assert_eq!(again["state"], "succeeded", "{again:#}");
    assert_eq!(differences(&src, &dst, "mirror"), "");
}

#[test]
fn paths_outside_an_agents_roots_are_refused() {
    let site = Site::new();
    let outside = site.env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret.txt"), "not served").unwrap();

    // A job naming a folder outside the roots.
    let from = format!("nas1:{}", text(&outside));
    let to = format!("nas2:{}", text(&site.srv[1].join("stolen")));
    site.add("escape", "mirror", &from, &to, &[]);
    let run = site.run("escape");
    assert_eq!(run["state"], "failed", "{run:#}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("outside the folders this agent serves"),
        "{error}"
    );
    assert!(error.contains(&text(&outside)), "{error}");

    // A folder inside a root that is a symlink leading out of it.
    std::os::unix::fs::symlink(&outside, site.srv[0].join("door")).unwrap();
    let from = format!("nas1:{}", text(&site.srv[0].join("door")));
    site.add("door", "mirror", &from, &to, &[]);
    let run = site.run("door");
    assert_eq!(run["state"], "failed", "{run:#}");
    assert!(
        run["error"].as_str().unwrap().contains("outside"),
        "{run:#}"
    );
    assert!(!site.srv[1].join("stolen/secret.txt").exists());

    // A peer asking for a path with `..` inside a served folder.
    let peer = Peer::new(&site);
    let reply = peer.block(async {
        let mut session = peer.connect(1).await.unwrap();
        peer.open(&mut session, &site.srv[0], false).await;
        let peek = Request::Stat {
            path: "../outside/secret.txt".into(),
        };
        session.call(&peek).await.unwrap()
    });
    let reply = format!("{reply:?}");
    assert!(reply.contains("leaves the folder"), "{reply}");
}

/// Speaks the agent protocol to nas1 directly, as scheduler s1 would.
struct Peer {
    runtime: tokio::runtime::Runtime,
    dial: Dial,
}

impl Peer {
    fn new(site: &Site) -> Self {
        Self {
            runtime: tokio::runtime::Runtime::new().unwrap(),
            dial: Dial {
                agent: "nas1".into(),
                address: site.agents[0].as_ref().unwrap().address.clone(),
                client: "s1".into(),
                tls: ferry_wire::tls::client_config(&site.tls, "s1").unwrap(),
            },
        }
    }

    fn block<T>(&self, work: impl Future<Output = T>) -> T {
        self.runtime.block_on(work)
    }

    /// A session working for `schedule:fenced` at `epoch`.
    async fn connect(&self, epoch: i64) -> Result<Session, ClientError> {
        let fence = renewed("schedule:fenced", epoch);
        Session::connect(&self.dial, Some(fence), Arc::default()).await
    }

    async fn open(&self, session: &mut Session, folder: &Path, create: bool) {
        let open = Request::Open {
            path: text(folder),
            create,
        };
        assert_eq!(session.call(&open).await.unwrap(), Response::Done);
    }
}

/// A lease as its holder presents it while its renewals reach the database: confirmed.
fn renewed(resource: &str, epoch: i64) -> Fence {
    Fence {
        confirmed: true,
        ..Fence::new(resource, epoch)
    }
}

async fn make_dir(session: &mut Session, name: &str) -> Response {
    let mkdir = Request::MakeDir {
        path: name.into(),
        entry: Entry::folder(0o755),
        expected: None,
    };
    session.call(&mkdir).await.unwrap()
}

#[test]
fn a_stale_lease_epoch_cannot_write() {
    let site = Site::new();
    let folder = site.srv[0].join("fenced");
    let peer = Peer::new(&site);
    peer.block(async {
        let mut five = peer.connect(5).await.unwrap();
        peer.open(&mut five, &folder, true).await;
        assert_eq!(make_dir(&mut five, "by-epoch-5").await, Response::Done);
        assert!(folder.join("by-epoch-5").is_dir());

        // A newer holder shows up: the old session's next write is refused...
        let mut six = peer.connect(6).await.unwrap();
        peer.open(&mut six, &folder, false).await;
        let late = make_dir(&mut five, "late-write").await;
        assert!(
            matches!(&late, Response::Failed(e) if e.kind == ErrorKind::StaleEpoch),
            "{late:?}"
        );
        assert!(!folder.join("late-write").exists());
        assert_eq!(make_dir(&mut six, "by-epoch-6").await, Response::Done);

        // ... and a new session under the old epoch is refused from its first word.
        let refused = peer.connect(5).await.err().map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("stale lease")),
            "{refused:?}"
        );
    });
    let log = site.agents[0].as_ref().unwrap().log();
    assert!(log.contains("refused a write"), "{log}");
}

#[test]
fn an_agent_refuses_a_sync_write_over_a_file_changed_since_the_scan() {
    let site = Site::new();
    let folder = site.srv[0].join("two-way");
    let doc = folder.join("doc.txt");
    fs::create_dir_all(&folder).unwrap();
    fs::write(&doc, "as scanned").unwrap();
    let scanned = Entry::from_metadata(&fs::symlink_metadata(&doc).unwrap(), None);
    fs::write(&doc, "the user's edit, saved since the scan").unwrap();

    let content = b"the other replica's version".as_slice();
    let mut ops = Vec::new();
    let sent = encode(&mut &content[..], None, &mut |op| {
        ops.push(op);
        Ok(())
    })
    .unwrap();
    let peer = Peer::new(&site);
    let verdict = peer.block(async {
        let mut session = peer.connect(1).await.unwrap();
        peer.open(&mut session, &folder, false).await;
        let write = Request::WriteFile {
            path: "doc.txt".into(),
            entry: Entry {
                kind: Kind::File,
                size: sent.size,
                mtime: Mtime {
                    secs: 2_000_000_000,
                    nanos: 0,
                },
                mode: 0o644,
                meta: Meta::default(),
            },
            block_size: None,
            expected: Some(Expected {
                entry: Some(scanned),
            }),
            xattrs: None,
        };
        session.send(&write).await.unwrap();
        let ops = ops.into_iter().map(DataOp::from).collect();
        session.send(&Request::Data { ops }).await.unwrap();
        let end = Request::DataEnd {
            hash: sent.hash.as_bytes().to_vec(),
        };
        session.send(&end).await.unwrap();
        // Anything but file data makes the agent publish what it staged: the verdict first.
        let verdict = session.call(&Request::Ping { nonce: 7 }).await.unwrap();
        assert_eq!(
            session.receive().await.unwrap(),
            Response::Pong { nonce: 7 }
        );
        verdict
    });
    assert!(
        matches!(&verdict, Response::Verdict { error: Some(e), .. }
            if e.message.contains("changed during the sync")),
        "{verdict:?}"
    );
    assert_eq!(
        fs::read_to_string(&doc).unwrap(),
        "the user's edit, saved since the scan"
    );
    let names: Vec<_> = fs::read_dir(&folder).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
}

#[test]
fn an_agent_refuses_a_sync_removal_of_a_file_changed_since_the_scan() {
    let site = Site::new();
    let folder = site.srv[0].join("two-way");
    fs::create_dir_all(&folder).unwrap();
    let scanned_at = |name: &str| {
        let path = folder.join(name);
        fs::write(&path, "as scanned").unwrap();
        Entry::from_metadata(&fs::symlink_metadata(&path).unwrap(), None)
    };
    let (edited, untouched) = (scanned_at("edited.txt"), scanned_at("untouched.txt"));
    fs::write(
        folder.join("edited.txt"),
        "the user's edit, saved since the scan",
    )
    .unwrap();
    let remove = |name: &str, scanned: Entry| Request::Remove {
        path: name.into(),
        entry: scanned.clone(),
        expected: Some(Expected {
            entry: Some(scanned),
        }),
    };
    let peer = Peer::new(&site);
    let (refused, removed) = peer.block(async {
        let mut session = peer.connect(1).await.unwrap();
        peer.open(&mut session, &folder, false).await;
        let refused = session.call(&remove("edited.txt", edited)).await.unwrap();
        let removed = session.call(&remove("untouched.txt", untouched)).await;
        (refused, removed.unwrap())
    });
    assert!(
        matches!(&refused, Response::Failed(e) if e.message.contains("changed during the sync")),
        "{refused:?}"
    );
    assert_eq!(
        fs::read_to_string(folder.join("edited.txt")).unwrap(),
        "the user's edit, saved since the scan"
    );
    assert_eq!(removed, Response::Removed(true));
    assert!(!folder.join("untouched.txt").exists());
}

#[test]
fn an_agent_killed_mid_transfer_leaves_no_partial_file_and_the_retry_completes() {
    let mut site = Site::new();
    let (src, dst) = site.job("large", "mirror", &[]);
    site.env.ferry(&["schedule", "rm", "large"]).ok();
    site.env
        .ferry(&[
            "schedule",
            "add",
            "large",
            "--job",
            "large",
            "--cron",
            "0 0 1 1 *",
            "--retries",
            "5",
            "--retry-delay",
            "1s",
        ])
        .ok();
    let size = 256usize << 20;
    let mut file = fs::File::create(src.join("large.bin")).unwrap();
    let mut urandom = fs::File::open("/dev/urandom").unwrap();
    std::io::copy(
        &mut std::io::Read::take(&mut urandom, size as u64),
        &mut file,
    )
    .unwrap();
    drop(file);

    site.env.ferry(&["schedule", "run", "large"]).ok();
    let temp_seen = wait_until(Duration::from_secs(60), || {
        fs::read_dir(&dst).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".ferry-tmp."))
        })
    });
    assert!(temp_seen, "the transfer never started");
    let nas2 = site.agents[1].take().unwrap();
    let address = nas2.address.clone();
    nas2.kill();
    assert!(
        !dst.join("large.bin").exists(),
        "a partial file under the real name"
    );

    let restarted = TestAgent::start_at(&site.env, "nas2", &[&site.srv[1]], &site.tls, &address);
    site.agents[1] = Some(restarted);
    let done = wait_until(Duration::from_secs(120), || {
        dst.join("large.bin")
            .metadata()
            .is_ok_and(|m| m.len() == size as u64)
    });
    assert!(done, "the retried run never completed");
    assert_eq!(differences(&src, &dst, "mirror"), "");
    let leftovers: Vec<_> = fs::read_dir(&dst)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".ferry-tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let runs = site.runs("large");
    // One run: its first attempt failed with the agent gone, a retry succeeded.
    assert_eq!(runs[0]["state"], "succeeded", "{runs:#}");
    assert!(runs[0]["attempt"].as_i64().unwrap() >= 2, "{runs:#}");
    drop(site.scheduler.take());
}

/// Whether `path` holds exactly `content`.
fn holds(path: &Path, content: &str) -> bool {
    fs::read_to_string(path).is_ok_and(|text| text == content)
}

#[test]
fn a_monitor_on_agents_replicates_each_change_every_way_and_rewatches_a_restarted_agent() {
    let mut site = Site::new();
    // A rescan an hour away: every change below must come through the agents' watches.
    let (src, dst) = site.monitor("sync", &["--rescan", "1h"]);
    let first_sync = Duration::from_secs(30);
    assert!(
        wait_until(first_sync, || holds(
            &dst.join("before.txt"),
            "there before the monitor"
        )),
        "the first full sync did not reach nas2: {:#}",
        site.runs("live")
    );

    fs::create_dir_all(src.join("a")).unwrap();
    fs::write(src.join("a/new.txt"), "written on nas1").unwrap();
    fs::write(dst.join("back.txt"), "written on nas2").unwrap();
    let soon = Duration::from_secs(5);
    assert!(
        wait_until(soon, || holds(&dst.join("a/new.txt"), "written on nas1")),
        "a change on the source agent was not replicated"
    );
    assert!(
        wait_until(soon, || holds(&src.join("back.txt"), "written on nas2")),
        "under the sync rule, a change on the destination agent was not replicated back"
    );

    // The source agent dies; what changes meanwhile is found when the watch comes back.
    let nas1 = site.agents[0].take().unwrap();
    let address = nas1.address.clone();
    nas1.kill();
    fs::write(src.join("while-down.txt"), "changed while nas1 was down").unwrap();
    let restarted = TestAgent::start_at(&site.env, "nas1", &[&site.srv[0]], &site.tls, &address);
    site.agents[0] = Some(restarted);
    assert!(
        wait_until(first_sync, || holds(
            &dst.join("while-down.txt"),
            "changed while nas1 was down"
        )),
        "the monitor did not come back after nas1 restarted"
    );
    fs::write(src.join("after.txt"), "written after the restart").unwrap();
    assert!(
        wait_until(soon, || holds(
            &dst.join("after.txt"),
            "written after the restart"
        )),
        "the watch on the restarted agent does not report changes"
    );
    assert_eq!(differences(&src, &dst, "sync"), "");

    let events = site.env.ferry(&["tail", "-n", "1000"]).ok().stdout;
    assert!(events.contains("watching nas1:"), "{events}");
    // Whichever noticed first, the broken watch or a sync, the outage is reported.
    let outage = events
        .lines()
        .any(|line| line.contains("error") && line.contains("nas1") && line.contains("retrying"));
    assert!(outage, "{events}");
    assert!(events.contains("changed paths"), "{events}");
    let status = site.env.ferry(&["monitor", "list"]).ok().stdout;
    assert!(status.contains("live"), "{status}");
}

#[test]
fn a_monitor_on_agents_keeps_replicating_while_the_database_is_down() {
    let Some(server) = own_server() else { return };
    let site = Site::on(Env::on_server(&server));
    let (src, dst) = site.monitor("mirror", &["--rescan", "1h"]);
    let soon = Duration::from_secs(10);
    assert!(wait_until(soon, || holds(
        &dst.join("before.txt"),
        "there before the monitor"
    )));
    let runs = "SELECT CAST(COUNT(*) AS TEXT) FROM runs WHERE monitor_name = 'live'";
    assert_eq!(site.env.sql_text(runs).as_deref(), Some("1"));

    server.stop().unwrap();
    let scheduler = site.scheduler.as_ref().unwrap();
    scheduler.wait_for_log("database unreachable", Duration::from_secs(15));
    // Well past the lease deadline: local work would have stopped by now.
    std::thread::sleep(Duration::from_secs(6));
    fs::write(src.join("during.txt"), "during the outage").unwrap();
    assert!(
        wait_until(soon, || holds(&dst.join("during.txt"), "during the outage")),
        "the monitor stopped with the database:\n{}",
        scheduler.log()
    );
    assert!(!scheduler.log().contains("stopped all local work"));

    server.restart().unwrap();
    scheduler.wait_for_log("database reachable again", Duration::from_secs(20));
    fs::write(src.join("after.txt"), "after").unwrap();
    assert!(wait_until(soon, || holds(&dst.join("after.txt"), "after")));
    // The same holding went on through the outage: no second run, no new epoch.
    assert_eq!(site.env.sql_text(runs).as_deref(), Some("1"));
    let epoch = "SELECT CAST(epoch AS TEXT) FROM leases WHERE name = 'live'";
    assert_eq!(site.env.sql_text(epoch).as_deref(), Some("1"));
}

#[test]
fn a_monitor_on_agents_keeps_replicating_while_the_database_hangs() {
    // A frozen server keeps its connections open and answers nothing: every write the
    // scheduler tries could wait forever.
    let Some(server) = own_server() else { return };
    let site = Site::on(Env::on_server(&server));
    let (src, dst) = site.monitor("mirror", &[]);
    let soon = Duration::from_secs(10);
    assert!(wait_until(soon, || holds(
        &dst.join("before.txt"),
        "there before the monitor"
    )));

    server.freeze().unwrap();
    let scheduler = site.scheduler.as_ref().unwrap();
    scheduler.wait_for_log("database unreachable", Duration::from_secs(15));
    // A burst of files: a scheduler that waited on the database for each file's event would
    // be busy for a long while before it took the next change.
    for round in 0..20 {
        fs::write(src.join(format!("burst-{round}.txt")), "burst").unwrap();
    }
    let burst = |dst: &Path| (0..20).all(|r| holds(&dst.join(format!("burst-{r}.txt")), "burst"));
    assert!(wait_until(soon, || burst(&dst)), "{}", scheduler.log());
    fs::write(src.join("next.txt"), "right after the burst").unwrap();
    assert!(
        wait_until(Duration::from_secs(8), || holds(
            &dst.join("next.txt"),
            "right after the burst"
        )),
        "the change after the burst waited on the database:\n{}",
        scheduler.log()
    );
    server.thaw().unwrap();
    scheduler.wait_for_log("database reachable again", Duration::from_secs(30));
    fs::write(src.join("after.txt"), "after").unwrap();
    assert!(wait_until(soon, || holds(&dst.join("after.txt"), "after")));
}

#[test]
fn a_run_handed_over_stops_once_a_newer_lease_holder_reaches_its_agent() {
    use ferry_engine::{Halt, Rule, Scope};
    use ferry_wire::handoff::{Handoff, hand_over};
    use ferry_wire::protocol::{JobOrder, RemoteFolder};

    let site = Site::new();
    let (src, dst) = (site.srv[0].join("stale"), site.srv[1].join("stale"));
    fs::create_dir_all(&src).unwrap();
    let mut urandom = fs::File::open("/dev/urandom").unwrap();
    let mut file = fs::File::create(src.join("large.bin")).unwrap();
    std::io::copy(&mut std::io::Read::take(&mut urandom, 512 << 20), &mut file).unwrap();
    drop(file);

    let peer = Peer::new(&site);
    let handoff = Handoff {
        dial: peer.dial.clone(),
        order: JobOrder {
            job: "stale".into(),
            rule: Rule::Mirror,
            source: text(&src),
            destinations: vec![RemoteFolder {
                agent: "nas2".into(),
                address: site.agents[1].as_ref().unwrap().address.clone(),
                path: text(&dst),
            }],
            include: vec![],
            exclude: vec![],
            guards: Default::default(),
            paths: None,
        },
    };
    let old_holder = Halt::fenced(renewed("schedule:stale", 5));
    let run = peer
        .runtime
        .spawn(async move { hand_over(&handoff, &Scope::Full, &old_holder, &mut |_| {}).await });
    let started = wait_until(Duration::from_secs(60), || {
        fs::read_dir(&dst).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".ferry-tmp."))
        })
    });
    assert!(started, "the transfer never started");

    // The new holder says Hello to the source's agent, and the old run goes.
    let fence = renewed("schedule:stale", 6);
    let newer = peer.block(Session::connect(&peer.dial, Some(fence), Arc::default()));
    assert!(newer.is_ok(), "{:?}", newer.err());
    let ended = peer.block(async { tokio::time::timeout(Duration::from_secs(5), run).await });
    let outcome = ended.expect("the stale run went on past its next keep-alive");
    // Stopped mid-file: the file fails (or, between files, the run does).
    if let Ok(summary) = outcome.unwrap() {
        assert!(
            summary.failures > 0,
            "the stale run claims success: {summary:?}"
        );
    }
    assert!(
        !dst.join("large.bin").exists(),
        "the stale run finished its file"
    );
    let log = site.agents[0].as_ref().unwrap().log();
    assert!(log.contains("a newer lease holder arrived"), "{log}");
}

/// A destination whose flushes to disk take longer than files take to arrive: the sender, its
/// window of unanswered files full, stops and waits; the agent must then hand over a batch's
/// verdicts as soon as the batch is on disk, not when the next request comes (none will).
#[test]
fn a_sender_waiting_for_verdicts_of_a_slow_flush_gets_them() {
    let site = Site::new();
    let (src, dst) = site.job("flush", "mirror", &[]);
    for i in 0..3000 {
        fs::write(src.join(format!("{i:04}.txt")), format!("file {i}\n")).unwrap();
    }
    // Another program keeps writing to the destination's file system, so each of the agent's
    // flushes (a `syncfs`) has all of that to write out too.
    let busy = std::sync::atomic::AtomicBool::new(true);
    let finished = std::thread::scope(|threads| {
        threads.spawn(|| {
            let chunk = noise(8 << 20);
            let ballast = site.srv[1].join("ballast");
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                let mut file = fs::File::create(&ballast).unwrap();
                for _ in 0..16 {
                    file.write_all(&chunk).unwrap();
                }
            }
            fs::remove_file(&ballast).unwrap();
        });
        site.env.ferry(&["schedule", "run", "flush"]).ok();
        let finished = wait_until(Duration::from_secs(60), || {
            let runs = site.runs("flush");
            runs[0]["state"]
                .as_str()
                .is_some_and(|state| state != "running" && state != "queued")
        });
        busy.store(false, std::sync::atomic::Ordering::Relaxed);
        finished
    });
    assert!(
        finished,
        "the run never finished: sender and agent wait for each other"
    );
    let runs = site.runs("flush");
    assert_eq!(runs[0]["state"], "succeeded", "{runs:#}");
    assert_eq!(runs[0]["files_copied"], 3000, "{runs:#}");
    assert_eq!(differences(&src, &dst, "mirror"), "");
}

/// `rsync -aHAXS` as root keeps these; ferry must too (the specials are checked apart).
const FIDELITY: &[&str] = &["-ancHAXS", "--numeric-ids", "--delete"];

/// Runs `program` with `args`, which must succeed.
fn tool(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed (tests/run.sh installs it): {e}"));
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
}

/// A tree holding every kind of entry and metadata a file server has; with `device`, a
/// character device too (only a job on local folders makes one).
fn write_server_tree(root: &Path, device: bool) {
    use std::os::unix::fs::{PermissionsExt, chown, lchown};
    let at = |rel: &str| root.join(rel);
    let path = |rel: &str| text(&root.join(rel));
    fs::create_dir_all(at("share/sub")).unwrap();
    // The replica's root folder is kept like the rest, as rsync keeps the top folder.
    fs::set_permissions(root, fs::Permissions::from_mode(0o2750)).unwrap();
    chown(root, Some(1000), Some(100)).unwrap();
    tool("setfacl", &["-m", "u:1001:rx", &text(root)]);
    tool("setfattr", &["-n", "user.share", "-v", "docs", &text(root)]);
    fs::write(at("owned.txt"), "owned by a user").unwrap();
    chown(at("owned.txt"), Some(1000), Some(1000)).unwrap();
    fs::write(at("grouped.txt"), "a group's").unwrap();
    chown(at("grouped.txt"), None, Some(100)).unwrap();
    fs::write(at("acl.txt"), "shared with one more user").unwrap();
    tool("setfacl", &["-m", "u:1000:rw", &path("acl.txt")]);
    tool("setfacl", &["-d", "-m", "g:100:rx", &path("share")]);
    fs::write(at("share/attrs.txt"), "with attributes").unwrap();
    tool(
        "setfattr",
        &["-n", "user.comment", "-v", "kept", &path("share/attrs.txt")],
    );
    tool(
        "setfattr",
        &[
            "-n",
            "trusted.origin",
            "-v",
            "nas1",
            &path("share/attrs.txt"),
        ],
    );
    tool(
        "setfattr",
        &["-n", "user.DOSATTRIB", "-v", "0sAAAE", &path("share/sub")],
    );
    fs::write(at("first-name.txt"), "one file, two names").unwrap();
    fs::hard_link(at("first-name.txt"), at("share/second-name.txt")).unwrap();
    let sparse = fs::File::create(at("sparse.img")).unwrap();
    sparse.set_len(100 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"data in the middle", 50 << 20).unwrap();
    tool("mkfifo", &[&path("fifo")]);
    std::os::unix::net::UnixListener::bind(at("socket")).unwrap();
    if device {
        tool("mknod", &[&path("null"), "c", "1", "3"]);
    }
    fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")),
        "latin-1",
    )
    .unwrap();
    fs::write(at(&"n".repeat(255)), "a name of 255 bytes").unwrap();
    fs::write(at("locked.txt"), "mode 000").unwrap();
    fs::set_permissions(at("locked.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::create_dir(at("sticky")).unwrap();
    fs::set_permissions(at("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", at("dangling")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", at("absolute")).unwrap();
    lchown(at("absolute"), Some(1000), Some(1000)).unwrap();
}

/// Whether the tests run as root, as CI runs them; elsewhere a test that needs root says it is
/// skipped, and `why`.
fn root_or_skip(why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI runs the tests as root"
    );
    eprintln!("SKIPPED: {why}");
    false
}

/// Bytes on disk (not the size) of a file.
fn allocated(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(&fs::metadata(path).unwrap()) * 512
}

#[test]
fn a_mirror_keeps_owners_acls_xattrs_hard_links_holes_and_specials_locally_and_between_agents() {
    if !root_or_skip("keeping owners needs root") {
        return;
    }
    let site = Site::new();
    let (src, dst) = site.job("server", "mirror", &["--specials"]);
    let (local_src, local_dst) = (site.env.path("local-src"), site.env.path("local-dst"));
    fs::create_dir_all(&local_src).unwrap();
    site.add(
        "local",
        "mirror",
        &text(&local_src),
        &text(&local_dst),
        &["--specials"],
    );
    for (source, destination, job) in [(&src, &dst, "server"), (&local_src, &local_dst, "local")] {
        write_server_tree(source, job == "local");
        let first = site.run(job);
        assert_eq!(first["state"], "succeeded", "{job}: {first:#}");
        let args = [FIDELITY, &["--specials", "--devices"][..]].concat();
        assert_eq!(rsync_differences(source, destination, &args), "", "{job}");
        let (was, now) = (
            allocated(&source.join("sparse.img")),
            allocated(&destination.join("sparse.img")),
        );
        assert!(
            now <= was + (64 << 10),
            "{job}: the sparse file takes {now} bytes, {was} at the source"
        );

        // Metadata-only changes cost no file bytes.
        let path = |rel: &str| text(&source.join(rel));
        fs::set_permissions(
            source.join("owned.txt"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::chown(source.join("grouped.txt"), Some(1001), Some(1001)).unwrap();
        tool("setfacl", &["-m", "u:1001:r", &path("acl.txt")]);
        tool(
            "setfattr",
            &[
                "-n",
                "user.comment",
                "-v",
                "changed",
                &path("share/attrs.txt"),
            ],
        );
        tool("setfattr", &["-x", "user.DOSATTRIB", &path("share/sub")]);
        fs::hard_link(
            source.join("owned.txt"),
            source.join("share/third-name.txt"),
        )
        .unwrap();
        let second = site.run(job);
        assert_eq!(second["state"], "succeeded", "{job}: {second:#}");
        assert_eq!(rsync_differences(source, destination, &args), "", "{job}");
        let sent = second["bytes_sent"].as_u64().unwrap();
        assert!(
            sent < 10 << 10,
            "{job}: metadata changes sent {sent} bytes: {second:#}"
        );
    }
}

#[test]
fn owners_travel_by_name_between_machines_unless_the_job_keeps_numbers() {
    if !root_or_skip("agents of their own users need root (a mount namespace)") {
        return;
    }
    // alice and staff have other numbers on each machine; 1777 has no name anywhere.
    let root = "root:x:0:0:root:/root:/bin/sh\n";
    let nas1 = (
        &*format!("{root}alice:x:1500:1500::/home/alice:/bin/sh\n"),
        "root:x:0:\nstaff:x:1600:\n",
    );
    let nas2 = (
        &*format!("{root}alice:x:2500:2500::/home/alice:/bin/sh\n"),
        "root:x:0:\nstaff:x:2600:\n",
    );
    let site = Site::with_accounts([nas1, nas2]);
    let owner = |path: &Path| {
        let meta = fs::symlink_metadata(path).unwrap();
        (
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::gid(&meta),
        )
    };
    // The users and groups the access ACL of `path` names, by number.
    let acl = |path: &Path| {
        let root = Root::open(path.parent().unwrap(), Path::new(""), false).unwrap();
        let xattrs = root.xattrs(Path::new(path.file_name().unwrap())).unwrap();
        let access = xattrs.iter().find(|x| x.name == b"system.posix_acl_access");
        access.map(|x| meta::acl_ids(&x.value)).unwrap_or_default()
    };
    for (job, extra, expected) in [
        ("by-name", &[][..], (2500, 2600)),
        ("by-number", &["--numeric-ids"][..], (1500, 1600)),
    ] {
        let (src, dst) = site.job(job, "mirror", extra);
        fs::write(src.join("alices.txt"), "alice's").unwrap();
        std::os::unix::fs::chown(src.join("alices.txt"), Some(1500), Some(1600)).unwrap();
        let alices = text(&src.join("alices.txt"));
        tool("setfacl", &["-m", "u:1500:rw,g:1600:r", &alices]);
        let named = vec![(Named::User, expected.0), (Named::Group, expected.1)];
        fs::write(src.join("nameless.txt"), "nobody's by name").unwrap();
        std::os::unix::fs::chown(src.join("nameless.txt"), Some(1777), Some(1777)).unwrap();
        let first = site.run(job);
        assert_eq!(first["state"], "succeeded", "{job}: {first:#}");
        assert_eq!(owner(&dst.join("alices.txt")), expected, "{job}");
        assert_eq!(
            acl(&dst.join("alices.txt")),
            named,
            "{job}: the ACL's entries"
        );
        assert_eq!(owner(&dst.join("nameless.txt")), (1777, 1777), "{job}");
        let again = site.run(job);
        assert_eq!(again["files_copied"], 0, "{job}: {again:#}");
        assert_eq!(
            owner(&dst.join("alices.txt")),
            expected,
            "{job}: changed back"
        );
        assert_eq!(acl(&dst.join("alices.txt")), named, "{job}: changed back");
    }
}

#[test]
fn under_the_sync_rule_a_chmod_chown_or_setfattr_on_either_side_reaches_the_other() {
    if !root_or_skip("keeping owners needs root") {
        return;
    }
    let site = Site::new();
    let (a, b) = site.job("two-way", "sync", &[]);
    // Folder times follow each side's own changes under the sync rule.
    let args = [FIDELITY, &["--omit-dir-times"][..]].concat();
    fs::write(a.join("shared.txt"), "one file, two replicas").unwrap();
    fs::create_dir_all(a.join("folder")).unwrap();
    assert_eq!(site.run("two-way")["state"], "succeeded");
    assert_eq!(rsync_differences(&a, &b, &args), "");

    // Changed on the destination side this time: the sync rule has no source.
    let at = |rel: &str| text(&b.join(rel));
    fs::set_permissions(
        b.join("shared.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::chown(b.join("shared.txt"), Some(1000), Some(100)).unwrap();
    tool(
        "setfattr",
        &["-n", "user.comment", "-v", "set on b", &at("shared.txt")],
    );
    tool("setfacl", &["-m", "u:1001:rwx", &at("folder")]);
    let run = site.run("two-way");
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["files_copied"], 0, "metadata only: {run:#}");
    assert_eq!(rsync_differences(&b, &a, &args), "");
    let again = site.run("two-way");
    assert_eq!(rsync_differences(&b, &a, &args), "", "{again:#}");
}

#[test]
fn a_dry_run_of_a_job_between_agents_lists_the_plan_and_writes_nothing_on_either() {
    let site = Site::new();
    let (src, dst) = site.job("preview", "mirror", &[]);
    fs::write(src.join("new.txt"), "to copy").unwrap();
    fs::create_dir_all(&dst).unwrap();
    fs::write(dst.join("extra.txt"), "to delete").unwrap();
    let tls = text(&site.tls);
    let run = [
        "--output",
        "json",
        "job",
        "dry-run",
        "preview",
        "--tls-dir",
        &tls,
        "--as",
        "s1",
    ];
    let json = site.env.ferry(&run).ok().json();
    let plan: Vec<(String, String)> = (json["planned"].as_array().unwrap().iter())
        .filter(|p| p["what"] != "set time")
        .map(|p| {
            (
                p["what"].as_str().unwrap().into(),
                p["path"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        plan,
        [
            ("delete".into(), "extra.txt".into()),
            ("copy".into(), "new.txt".into())
        ],
        "{json:#}"
    );
    assert!(
        json["planned"][0]["at"]
            .as_str()
            .unwrap()
            .starts_with("nas2:"),
        "{json:#}"
    );
    assert!(dst.join("extra.txt").exists() && !dst.join("new.txt").exists());

    // A destination that is not there yet counts as empty, and is not made.
    let (src2, dst2) = site.job("fresh", "mirror", &[]);
    fs::write(src2.join("first.txt"), "first").unwrap();
    let run = [
        "--output",
        "json",
        "job",
        "dry-run",
        "fresh",
        "--tls-dir",
        &tls,
        "--as",
        "s1",
    ];
    let json = site.env.ferry(&run).ok().json();
    assert_eq!(json["planned"][0]["what"], "copy", "{json:#}");
    assert!(!dst2.exists(), "a dry run made the destination folder");
}
