use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use tempfile::TempDir;

use super::plan::*;
use super::*;
use crate::delta::{Encoded, Op as DataOp};
use crate::endpoint::{self, EachEntry, Incoming, LocalEndpoint};
use crate::fence::Fence;
use crate::meta::{Accounts, Keep, Xattrs};
use crate::tree::{Entry, Expected, Mtime};

struct Fixture {
    _dir: TempDir,
    roots: Vec<PathBuf>,
}

impl Fixture {
    fn new(replicas: usize) -> Self {
        let dir = TempDir::new().unwrap();
        let roots: Vec<PathBuf> = (0..replicas)
            .map(|i| dir.path().join(format!("r{i}")))
            .collect();
        for root in &roots {
            fs::create_dir_all(root).unwrap();
        }
        Self { _dir: dir, roots }
    }

    fn write(&self, replica: usize, rel: &str, content: &str) {
        let path = self.roots[replica].join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn read(&self, replica: usize, rel: &str) -> Option<String> {
        fs::read_to_string(self.roots[replica].join(rel)).ok()
    }

    fn set_mtime(&self, replica: usize, rel: &str, secs: i64) {
        let time = filetime::FileTime::from_unix_time(secs, 0);
        filetime::set_file_mtime(self.roots[replica].join(rel), time).unwrap();
    }

    fn spec(&self, rule: Rule, filter: Filter) -> JobSpec {
        let endpoint = |p: &PathBuf| Arc::new(LocalEndpoint::new(p)) as Arc<dyn Endpoint>;
        JobSpec {
            name: "job".into(),
            rule,
            source: endpoint(&self.roots[0]),
            destinations: self.roots[1..].iter().map(endpoint).collect(),
            filter,
            guards: Default::default(),
            full_scan_every: None,
        }
    }

    fn run(&self, rule: Rule) -> (Summary, Vec<Event>) {
        self.run_scoped(rule, Filter::default(), &Scope::Full)
            .unwrap()
    }

    fn run_scoped(
        &self,
        rule: Rule,
        filter: Filter,
        scope: &Scope,
    ) -> Result<(Summary, Vec<Event>), EngineError> {
        let mut events = Vec::new();
        let summary = run(&self.spec(rule, filter), scope, &Halt::new(), &mut |e| {
            events.push(e)
        })?;
        Ok((summary, events))
    }

    /// Relative paths of files and folders under a replica, ferry's own excluded.
    fn listing(&self, replica: usize) -> Vec<String> {
        let tree = LocalEndpoint::new(&self.roots[replica])
            .scan(&Scope::Full, &Filter::default())
            .unwrap();
        tree.keys().map(|p| p.display().to_string()).collect()
    }
}

#[test]
fn modes_the_umask_would_strip_are_kept() {
    let fx = Fixture::new(2);
    let modes = [0o666, 0o777, 0o1755, 0o400];
    for (i, mode) in modes.iter().enumerate() {
        let name = format!("f{i}");
        fx.write(0, &name, "x");
        fs::set_permissions(fx.roots[0].join(&name), fs::Permissions::from_mode(*mode)).unwrap();
    }

    fx.run(Rule::Mirror);

    for (i, mode) in modes.iter().enumerate() {
        let meta = fs::metadata(fx.roots[1].join(format!("f{i}"))).unwrap();
        assert_eq!(meta.mode() & 0o7777, *mode, "mode of f{i}");
    }
}

#[test]
fn mirror_copies_content_mtime_and_mode_then_deletes_extras() {
    let fx = Fixture::new(2);
    fx.write(0, "a.txt", "alpha");
    fx.write(0, "sub/b.txt", "beta");
    fs::set_permissions(fx.roots[0].join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fx.set_mtime(0, "a.txt", 1_000_000);
    fx.write(1, "extra/old.txt", "stale");

    let (summary, _) = fx.run(Rule::Mirror);

    assert_eq!(fx.read(1, "a.txt").as_deref(), Some("alpha"));
    assert_eq!(fx.read(1, "sub/b.txt").as_deref(), Some("beta"));
    let meta = fs::metadata(fx.roots[1].join("a.txt")).unwrap();
    assert_eq!(meta.mtime(), 1_000_000);
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(fx.listing(1), fx.listing(0), "extras must be gone");
    assert_eq!(summary.files_copied, 2);
    assert_eq!(summary.files_deleted, 1);
    assert_eq!(summary.bytes_total, 9);
}

#[test]
fn unchanged_files_are_not_rewritten() {
    let fx = Fixture::new(2);
    fx.write(0, "a.txt", "alpha");
    fx.run(Rule::Mirror);
    let inode = fs::metadata(fx.roots[1].join("a.txt")).unwrap().ino();

    let (summary, events) = fx.run(Rule::Mirror);

    assert_eq!(summary.files_copied, 0);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(
        fs::metadata(fx.roots[1].join("a.txt")).unwrap().ino(),
        inode
    );
}

#[test]
fn copy_brings_changes_but_deletes_nothing() {
    let fx = Fixture::new(2);
    fx.write(0, "a.txt", "new");
    fx.write(1, "a.txt", "old!");
    fx.write(1, "keep.txt", "mine");

    let (summary, _) = fx.run(Rule::Copy);

    assert_eq!(fx.read(1, "a.txt").as_deref(), Some("new"));
    assert_eq!(fx.read(1, "keep.txt").as_deref(), Some("mine"));
    assert_eq!(summary.files_deleted, 0);
}

#[test]
fn files_of_many_batches_all_land_in_place_with_their_times() {
    let fx = Fixture::new(2);
    let count = 1000;
    for i in 0..count {
        fx.write(0, &format!("d{}/f{i}", i % 7), &format!("file {i}"));
    }
    fx.set_mtime(0, "d3", 1_500_000_000);

    let (summary, _) = fx.run(Rule::Mirror);

    assert_eq!(summary.files_copied, count, "{summary:?}");
    assert_eq!(summary.failures, 0, "{summary:?}");
    for i in (0..count).step_by(97) {
        let rel = format!("d{}/f{i}", i % 7);
        assert_eq!(fx.read(1, &rel), Some(format!("file {i}")));
    }
    // Every file was renamed into place before the folders' times were set.
    let d3 = fs::metadata(fx.roots[1].join("d3")).unwrap();
    assert_eq!(d3.mtime(), 1_500_000_000);
    let temporary = walk(&fx.roots[1])
        .filter(|p| p.contains(".ferry-tmp."))
        .count();
    assert_eq!(temporary, 0);
    assert_eq!(walk(&fx.roots[1]).count(), count as usize + 7);
}

/// Every path under `root`, ferry's own folder left out.
fn walk(root: &Path) -> impl Iterator<Item = String> {
    let mut found = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if entry.file_name() == ".ferry" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                folders.push(path.clone());
            }
            found.push(path.display().to_string());
        }
    }
    found.into_iter()
}

#[test]
fn mirror_replaces_a_folder_with_a_file() {
    let fx = Fixture::new(2);
    fx.write(0, "x", "now a file");
    fx.write(1, "x/inner.txt", "was a folder");

    let (summary, _) = fx.run(Rule::Mirror);

    assert_eq!(fx.read(1, "x").as_deref(), Some("now a file"));
    assert_eq!(summary.failures, 0);
}

#[test]
fn excluded_files_are_neither_copied_nor_deleted() {
    let fx = Fixture::new(2);
    fx.write(0, "a.txt", "a");
    fx.write(0, "a.tmp", "scratch");
    fx.write(1, "local.tmp", "destination's own");
    let filter = Filter::new(&[], &["*.tmp".into()]).unwrap();

    fx.run_scoped(Rule::Mirror, filter, &Scope::Full).unwrap();

    assert_eq!(fx.read(1, "a.tmp"), None);
    assert_eq!(
        fx.read(1, "local.tmp").as_deref(),
        Some("destination's own")
    );
}

#[test]
fn a_missing_source_fails_before_touching_the_destination() {
    let fx = Fixture::new(2);
    fx.write(1, "precious.txt", "keep me");
    fs::remove_dir(&fx.roots[0]).unwrap();

    let err = fx
        .run_scoped(Rule::Mirror, Filter::default(), &Scope::Full)
        .unwrap_err();

    assert!(matches!(err, EngineError::Source { .. }), "{err}");
    assert!(
        err.to_string().contains(&fx.roots[0].display().to_string()),
        "{err}"
    );
    assert_eq!(fx.read(1, "precious.txt").as_deref(), Some("keep me"));
}

#[test]
fn a_scoped_run_touches_only_its_paths() {
    let fx = Fixture::new(2);
    fx.write(0, "in/a.txt", "a");
    fx.write(0, "out.txt", "b");

    let scope = Scope::Paths(vec!["in".into(), "in/a.txt".into()]);
    fx.run_scoped(Rule::Mirror, Filter::default(), &scope)
        .unwrap();

    assert_eq!(fx.read(1, "in/a.txt").as_deref(), Some("a"));
    assert_eq!(fx.read(1, "out.txt"), None);
}

#[test]
fn a_scoped_mirror_deletes_a_path_gone_from_the_source() {
    let fx = Fixture::new(2);
    fx.write(0, "gone.txt", "x");
    fx.run(Rule::Mirror);
    fs::remove_file(fx.roots[0].join("gone.txt")).unwrap();

    let scope = Scope::Paths(vec!["gone.txt".into()]);
    let (summary, _) = fx
        .run_scoped(Rule::Mirror, Filter::default(), &scope)
        .unwrap();

    assert_eq!(summary.files_deleted, 1);
    assert_eq!(fx.read(1, "gone.txt"), None);
}

#[test]
fn orphaned_temporary_files_are_cleaned_up() {
    let fx = Fixture::new(2);
    fx.write(0, "a.txt", "a");
    // pid 0 is never a live writer.
    fx.write(1, ".ferry-tmp.0.7", "half a file");

    fx.run(Rule::Mirror);

    assert!(!fx.roots[1].join(".ferry-tmp.0.7").exists());
}

#[test]
fn a_halted_run_writes_nothing() {
    let fx = Fixture::new(2);
    fx.write(0, "a.txt", "a");
    let stopped = Halt::new();
    stopped.stop();
    let expired = Halt::new();
    expired.extend_until(std::time::Instant::now());
    for halt in [stopped, expired] {
        let err = run(
            &fx.spec(Rule::Mirror, Filter::default()),
            &Scope::Full,
            &halt,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, EngineError::Cancelled { .. }));
        assert_eq!(fx.read(1, "a.txt"), None);
    }
}

#[test]
fn a_deadline_in_the_future_lets_work_go_on() {
    let fx = Fixture::new(2);
    fx.write(0, "a.txt", "a");
    let halt = Halt::new();
    halt.extend_until(std::time::Instant::now() + std::time::Duration::from_secs(60));
    run(
        &fx.spec(Rule::Mirror, Filter::default()),
        &Scope::Full,
        &halt,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(fx.read(1, "a.txt").as_deref(), Some("a"));
}

#[test]
fn symlinks_are_copied_as_links() {
    let fx = Fixture::new(2);
    std::os::unix::fs::symlink("target/elsewhere", fx.roots[0].join("link")).unwrap();

    fx.run(Rule::Mirror);

    assert_eq!(
        fs::read_link(fx.roots[1].join("link")).unwrap(),
        Path::new("target/elsewhere")
    );
}

#[test]
fn conflict_names_carry_the_losers_time() {
    assert_eq!(
        free_conflict_name(Path::new("a/report.txt"), Mtime::at(0), 2, |_| false),
        Path::new("a/report.ferry-conflict-19700101-000000-r2.txt")
    );
    assert_eq!(utc_stamp(951_782_400), "20000229-000000");
}

#[test]
fn an_empty_unmarked_mirror_source_does_not_wipe_the_destination() {
    let fx = Fixture::new(2);
    fx.write(1, "precious.txt", "keep me");

    let err = fx
        .run_scoped(Rule::Mirror, Filter::default(), &Scope::Full)
        .unwrap_err();

    assert!(matches!(err, EngineError::Vanished { .. }), "{err}");
    assert!(err.to_string().contains(".ferry/replica"), "{err}");
    assert_eq!(fx.read(1, "precious.txt").as_deref(), Some("keep me"));
}

#[test]
fn a_marked_source_emptied_on_purpose_is_mirrored() {
    let fx = Fixture::new(2);
    fx.write(0, "a.txt", "a");
    fx.run(Rule::Mirror);
    fs::remove_file(fx.roots[0].join("a.txt")).unwrap();

    let (summary, _) = fx.run(Rule::Mirror);

    assert_eq!(summary.files_deleted, 1);
    assert_eq!(fx.read(1, "a.txt"), None);
}

#[test]
fn sync_refuses_an_empty_replica_that_lost_its_mark() {
    let fx = Fixture::new(2);
    fx.write(0, "a.txt", "a");
    fx.run(Rule::Sync);
    // What an unmounted disk looks like: the folder is there, empty, without ferry's state.
    fs::remove_dir_all(&fx.roots[1]).unwrap();
    fs::create_dir(&fx.roots[1]).unwrap();

    let err = fx
        .run_scoped(Rule::Sync, Filter::default(), &Scope::Full)
        .unwrap_err();

    assert!(matches!(err, EngineError::Vanished { .. }), "{err}");
    assert_eq!(fx.read(0, "a.txt").as_deref(), Some("a"));
}

#[test]
fn a_run_over_max_deletes_deletes_nothing() {
    let fx = Fixture::new(2);
    fx.write(0, "keep.txt", "k");
    for i in 0..5 {
        fx.write(1, &format!("old{i}.txt"), "o");
    }
    let mut spec = fx.spec(Rule::Mirror, Filter::default());
    spec.guards.max_deletes = Some(4);
    let err = run(&spec, &Scope::Full, &Halt::new(), &mut |_| {}).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            EngineError::TooManyDeletes {
                count: 5,
                max: 4,
                ..
            }
        ),
        "{message}"
    );
    assert!(message.contains("nothing was deleted"), "{message}");
    assert_eq!(fx.read(1, "old0.txt").as_deref(), Some("o"));
    assert_eq!(fx.read(1, "keep.txt"), None, "nothing at all was done");

    spec.guards.max_deletes = Some(5);
    let summary = run(&spec, &Scope::Full, &Halt::new(), &mut |_| {}).unwrap();
    assert_eq!(summary.files_deleted, 5);
}

#[test]
fn mirror_keeps_deleted_and_overwritten_files_in_the_versions_folder() {
    let fx = Fixture::new(2);
    fx.write(0, "doc.txt", "first");
    fx.write(0, "gone.txt", "soon deleted");
    let mut spec = fx.spec(Rule::Mirror, Filter::default());
    spec.guards.versions = Some(PathBuf::from(".versions"));
    run(&spec, &Scope::Full, &Halt::new(), &mut |_| {}).unwrap();

    fx.write(0, "doc.txt", "second version");
    fs::remove_file(fx.roots[0].join("gone.txt")).unwrap();
    let summary = run(&spec, &Scope::Full, &Halt::new(), &mut |_| {}).unwrap();

    assert_eq!(summary.versions_kept, 2);
    assert_eq!(fx.read(1, "doc.txt").as_deref(), Some("second version"));
    assert_eq!(fx.read(1, "gone.txt"), None);
    let stamps: Vec<_> = fs::read_dir(fx.roots[1].join(".versions"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(stamps.len(), 1, "one dated folder per run");
    let kept = stamps[0].path();
    assert_eq!(fs::read_to_string(kept.join("doc.txt")).unwrap(), "first");
    assert_eq!(
        fs::read_to_string(kept.join("gone.txt")).unwrap(),
        "soon deleted"
    );

    // The versions folder is the destination's own: the next run leaves it alone.
    let again = run(&spec, &Scope::Full, &Halt::new(), &mut |_| {}).unwrap();
    assert_eq!(again.files_deleted, 0);
    assert!(kept.join("doc.txt").exists());
}

#[test]
fn names_that_are_not_utf8_sync_and_are_remembered() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let fx = Fixture::new(2);
    let name = OsStr::from_bytes(b"r\xe9sum\xe9.txt");
    fs::write(fx.roots[0].join(name), "latin-1 name").unwrap();
    let (summary, _) = fx.run(Rule::Sync);
    assert_eq!(summary.failures, 0, "{summary:?}");
    assert_eq!(
        fs::read_to_string(fx.roots[1].join(name)).unwrap(),
        "latin-1 name"
    );

    // The base remembered the name: its deletion on one side is a deletion, not a new file.
    fs::remove_file(fx.roots[1].join(name)).unwrap();
    let (summary, _) = fx.run(Rule::Sync);
    assert_eq!(summary.files_deleted, 1, "{summary:?}");
    assert!(!fx.roots[0].join(name).exists());
}

#[test]
fn conflict_names_keep_names_that_are_not_utf8_apart() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let mtime = Mtime::at(0);
    let name =
        |bytes: &[u8]| free_conflict_name(Path::new(OsStr::from_bytes(bytes)), mtime, 1, |_| false);
    let (acute, grave) = (
        name(b"docs/r\xe9sum\xe9.txt"),
        name(b"docs/r\xe8sum\xe8.txt"),
    );
    assert_ne!(acute, grave);
    assert!(
        acute
            .as_os_str()
            .as_bytes()
            .starts_with(b"docs/r\xe9sum\xe9.ferry-conflict-")
    );
    assert_eq!(acute.extension(), Some(OsStr::new("txt")));
}

#[test]
fn a_file_gone_between_the_scan_and_its_copy_is_churn_not_a_failure() {
    for rule in [Rule::Mirror, Rule::Sync] {
        let fx = Fixture::new(2);
        fx.write(0, "a.txt", "copied first");
        fx.write(0, "b.txt", "deleted before its copy");
        let gone = fx.roots[0].join("b.txt");
        let mut events = Vec::new();
        let spec = fx.spec(rule, Filter::default());
        let summary = run(&spec, &Scope::Full, &Halt::new(), &mut |e| {
            if matches!(&e, Event::Copied { path, .. } if path == Path::new("a.txt")) {
                let _ = fs::remove_file(&gone);
            }
            events.push(e);
        })
        .unwrap();
        assert_eq!(summary.failures, 0, "{rule}: {events:?}");
        let said = events.iter().any(|e| {
            matches!(e, Event::Skipped { path, why, .. }
                if path == Path::new("b.txt") && why.contains("went away"))
        });
        assert!(said, "{rule}: {events:?}");
        assert_eq!(fx.read(1, "a.txt").as_deref(), Some("copied first"));
        let (again, _) = fx.run(rule);
        assert_eq!(again.failures, 0, "{rule}: the next run settles it");
        assert_eq!(fx.read(1, "b.txt"), None, "{rule}");
    }
}

#[test]
fn a_rename_never_replaces_what_is_at_its_target() {
    let fx = Fixture::new(1);
    fx.write(0, "from", "moving");
    fx.write(0, "to", "a user's file");
    let replica = LocalEndpoint::new(&fx.roots[0]);
    assert!(replica.rename(Path::new("from"), Path::new("to")).is_err());
    assert_eq!(fx.read(0, "to").as_deref(), Some("a user's file"));
    assert_eq!(fx.read(0, "from").as_deref(), Some("moving"));
}

fn mtime_of(path: &Path) -> filetime::FileTime {
    filetime::FileTime::from_last_modification_time(&fs::metadata(path).unwrap())
}

#[test]
fn folder_times_match_the_source_after_a_run_the_roots_and_a_scoped_runs_too() {
    let fx = Fixture::new(2);
    fx.write(0, "sub/a.txt", "a");
    fx.set_mtime(0, "sub", 1_000_000);
    fx.set_mtime(0, "", 2_000_000);

    fx.run(Rule::Mirror);
    assert_eq!(mtime_of(&fx.roots[1]), mtime_of(&fx.roots[0]), "the root");
    assert_eq!(
        mtime_of(&fx.roots[1].join("sub")),
        mtime_of(&fx.roots[0].join("sub"))
    );

    // A monitor's batch: only the new file is scanned, not the folder it is in.
    fx.write(0, "sub/b.txt", "b");
    fx.set_mtime(0, "sub", 3_000_000);
    fx.write(0, "top.txt", "t");
    fx.set_mtime(0, "", 4_000_000);
    let scope = Scope::Paths(vec!["sub/b.txt".into(), "top.txt".into()]);
    fx.run_scoped(Rule::Mirror, Filter::default(), &scope)
        .unwrap();
    assert_eq!(fx.read(1, "sub/b.txt").as_deref(), Some("b"));
    assert_eq!(
        mtime_of(&fx.roots[1].join("sub")),
        mtime_of(&fx.roots[0].join("sub"))
    );
    assert_eq!(mtime_of(&fx.roots[1]), mtime_of(&fx.roots[0]), "the root");
}

/// The case: a folder that gained a file on one replica, replaced by a file on the
/// other. Every run failed the same way; now the folder wins, the file is kept aside, and the
/// next run has nothing left to do.
#[test]
fn a_folder_against_a_file_keeps_both_and_settles() {
    let fx = Fixture::new(2);
    fx.write(0, "d/x", "x");
    fx.run(Rule::Sync);
    fx.write(0, "d/new", "new");
    fs::remove_dir_all(fx.roots[1].join("d")).unwrap();
    fx.write(1, "d", "file");

    let (first, _) = fx.run(Rule::Sync);
    let (again, events) = fx.run(Rule::Sync);

    assert_eq!(first.failures, 0, "{:?}", first.first_failure);
    assert_eq!(first.conflicts, 1);
    for replica in 0..2 {
        assert_eq!(
            fx.read(replica, "d/new").as_deref(),
            Some("new"),
            "r{replica}"
        );
        let kept: Vec<String> = (fx.listing(replica).into_iter())
            .filter(|name| name.starts_with("d.ferry-conflict-"))
            .collect();
        assert_eq!(kept.len(), 1, "r{replica}: {:?}", fx.listing(replica));
        assert_eq!(fx.read(replica, &kept[0]).as_deref(), Some("file"));
    }
    assert_eq!(again.failures, 0, "{:?}", again.first_failure);
    assert!(
        events.is_empty(),
        "a settled sync did something: {events:?}"
    );
}

#[test]
fn checksum_copies_a_file_whose_size_and_time_agree_but_not_its_bytes() {
    let fx = Fixture::new(2);
    fx.write(0, "a.txt", "original");
    fx.run(Rule::Mirror);
    // Same size, same time, other bytes (a disk's silent corruption, or a careless tool).
    fx.write(1, "a.txt", "CORRUPTD");
    let time = mtime_of(&fx.roots[0].join("a.txt"));
    filetime::set_file_mtime(fx.roots[1].join("a.txt"), time).unwrap();

    fx.run(Rule::Mirror);
    assert_eq!(
        fx.read(1, "a.txt").as_deref(),
        Some("CORRUPTD"),
        "skipped without it"
    );

    let mut spec = fx.spec(Rule::Mirror, Filter::default());
    spec.guards.checksum = true;
    let summary = run(&spec, &Scope::Full, &Halt::new(), &mut |_| {}).unwrap();
    assert_eq!(summary.files_copied, 1);
    assert_eq!(fx.read(1, "a.txt").as_deref(), Some("original"));
    let again = run(&spec, &Scope::Full, &Halt::new(), &mut |_| {}).unwrap();
    assert_eq!(again.files_copied, 0, "identical files are left alone");
}

#[test]
fn a_chmod_at_the_source_reaches_the_destination_without_its_bytes() {
    let fx = Fixture::new(2);
    fx.write(0, "sub/a.txt", "content");
    fx.run(Rule::Mirror);
    fs::set_permissions(
        fx.roots[0].join("sub/a.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::set_permissions(fx.roots[0].join("sub"), fs::Permissions::from_mode(0o750)).unwrap();

    let (summary, _) = fx.run(Rule::Mirror);

    assert_eq!(summary.files_copied, 0, "a chmod sent the file again");
    let mode = |rel: &str| fs::metadata(fx.roots[1].join(rel)).unwrap().mode() & 0o7777;
    assert_eq!(mode("sub/a.txt"), 0o600);
    assert_eq!(mode("sub"), 0o750);
    let (again, _) = fx.run(Rule::Mirror);
    assert_eq!(again, Summary::default(), "a second run found more to do");
}

#[test]
fn a_scoped_run_over_one_name_of_a_file_updates_its_other_names() {
    let fx = Fixture::new(2);
    fx.write(0, "first", "old");
    fs::create_dir_all(fx.roots[0].join("elsewhere")).unwrap();
    fs::hard_link(
        fx.roots[0].join("first"),
        fx.roots[0].join("elsewhere/second"),
    )
    .unwrap();
    fx.run(Rule::Mirror);
    let inode = |rel: &str| fs::metadata(fx.roots[1].join(rel)).unwrap().ino();
    assert_eq!(
        inode("first"),
        inode("elsewhere/second"),
        "kept as one file"
    );

    // Written in place through one name, as an editor may: a watcher reports that name only.
    fs::write(fx.roots[0].join("first"), "new").unwrap();
    let scope = Scope::Paths(vec!["first".into()]);
    fx.run_scoped(Rule::Mirror, Filter::default(), &scope)
        .unwrap();
    assert_eq!(fx.read(1, "elsewhere/second").as_deref(), Some("new"));
    assert_eq!(inode("first"), inode("elsewhere/second"));
}

mod hostile;
mod model;
mod sync_rule;

#[test]
fn a_scope_keeps_each_path_once_and_none_that_another_covers() {
    let paths = ["c/d/e", "a/b", "a", "c/d", "a-b", "c/d", "b"];
    let scope = Scope::Paths(paths.iter().map(PathBuf::from).collect());
    let want = ["a", "a-b", "b", "c/d"].map(PathBuf::from).to_vec();
    assert_eq!(normalise(&scope), Scope::Paths(want));
    let with_root = Scope::Paths(vec!["a".into(), "".into()]);
    assert_eq!(normalise(&with_root), Scope::Full);
}
