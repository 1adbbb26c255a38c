use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use tempfile::TempDir;

use super::plan::*;
use super::*;
use crate::delta::{Encoded, Op as DataOp};
use crate::endpoint::{self, Incoming, LocalEndpoint};
use crate::fence::Fence;
use crate::meta::{Accounts, Keep, Meta, Xattrs};
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
fn sync_spreads_new_files_and_deletions_every_way() {
    let fx = Fixture::new(3);
    fx.write(0, "from0.txt", "0");
    fx.write(2, "from2.txt", "2");
    fx.run(Rule::Sync);
    for r in 0..3 {
        assert_eq!(fx.read(r, "from0.txt").as_deref(), Some("0"));
        assert_eq!(fx.read(r, "from2.txt").as_deref(), Some("2"));
    }

    fs::remove_file(fx.roots[1].join("from0.txt")).unwrap();
    let (summary, _) = fx.run(Rule::Sync);

    assert_eq!(summary.files_deleted, 2);
    for r in 0..3 {
        assert_eq!(
            fx.read(r, "from0.txt"),
            None,
            "replica {r} still has the deleted file"
        );
    }
}

#[test]
fn sync_conflict_keeps_the_newer_and_a_copy_of_the_older() {
    let fx = Fixture::new(2);
    fx.write(0, "doc.txt", "base");
    fx.run(Rule::Sync);
    fx.write(0, "doc.txt", "older edit");
    fx.set_mtime(0, "doc.txt", 2_000_000_000);
    fx.write(1, "doc.txt", "newer edit!");
    fx.set_mtime(1, "doc.txt", 2_000_000_100);

    let (summary, _) = fx.run(Rule::Sync);

    assert_eq!(summary.conflicts, 1);
    let aside = "doc.ferry-conflict-20330518-033320-r0.txt";
    for r in 0..2 {
        assert_eq!(fx.read(r, "doc.txt").as_deref(), Some("newer edit!"));
        assert_eq!(
            fx.read(r, aside).as_deref(),
            Some("older edit"),
            "replica {r}: {:?}",
            fx.listing(r)
        );
    }
    let (again, _) = fx.run(Rule::Sync);
    assert_eq!(again, Summary::default(), "a settled sync does nothing");
}

#[test]
fn sync_edit_beats_deletion() {
    let fx = Fixture::new(2);
    fx.write(0, "doc.txt", "v1");
    fx.run(Rule::Sync);
    fs::remove_file(fx.roots[0].join("doc.txt")).unwrap();
    fx.write(1, "doc.txt", "v2 edited");

    fx.run(Rule::Sync);

    assert_eq!(fx.read(0, "doc.txt").as_deref(), Some("v2 edited"));
}

#[test]
fn sync_refuses_to_treat_a_vanished_replica_as_deletions() {
    let fx = Fixture::new(2);
    fx.write(0, "a.txt", "a");
    fx.run(Rule::Sync);
    fs::remove_dir_all(&fx.roots[1]).unwrap();

    let err = fx
        .run_scoped(Rule::Sync, Filter::default(), &Scope::Full)
        .unwrap_err();

    assert!(matches!(err, EngineError::Destination { .. }), "{err}");
    assert_eq!(fx.read(0, "a.txt").as_deref(), Some("a"));
}

#[test]
fn identical_files_on_first_sync_are_no_conflict() {
    let fx = Fixture::new(2);
    fx.write(0, "same.txt", "same");
    fx.write(1, "same.txt", "same");
    fx.set_mtime(1, "same.txt", 1_500_000_000);

    let (summary, _) = fx.run(Rule::Sync);

    assert_eq!(summary.conflicts, 0);
    assert_eq!(fx.listing(0), vec!["same.txt"]);
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
        free_conflict_name(
            Path::new("a/report.txt"),
            Mtime { secs: 0, nanos: 0 },
            2,
            |_| false
        ),
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
fn a_failed_move_aside_keeps_the_losing_version() {
    let fx = Fixture::new(2);
    fx.write(0, "f.txt", "base");
    fx.run(Rule::Sync);
    fx.write(0, "f.txt", "older edit");
    fx.set_mtime(0, "f.txt", 2_000_000_000);
    fx.write(1, "f.txt", "newer edit!");
    fx.set_mtime(1, "f.txt", 2_000_000_100);
    // A file of the user's where the conflict copy would go, which the scan does not see
    // (excluded): moving the loser aside must fail rather than replace it.
    let mtime = Mtime {
        secs: 2_000_000_000,
        nanos: 0,
    };
    let aside = free_conflict_name(Path::new("f.txt"), mtime, 0, |_| false);
    fx.write(0, aside.to_str().unwrap(), "a user's file");
    let hidden = Filter::new(&[], &["*.ferry-conflict-*".into()]).unwrap();

    let (summary, _) = fx.run_scoped(Rule::Sync, hidden, &Scope::Full).unwrap();

    assert!(summary.failures >= 1);
    assert_eq!(
        fx.read(0, "f.txt").as_deref(),
        Some("older edit"),
        "the loser must survive"
    );
    let kept = fx.read(0, aside.to_str().unwrap());
    assert_eq!(kept.as_deref(), Some("a user's file"));
}

#[test]
fn a_sync_never_overwrites_a_file_changed_during_the_run() {
    let fx = Fixture::new(2);
    fx.write(0, "a.txt", "a1");
    fx.write(0, "b.txt", "b1");
    fx.run(Rule::Sync);
    fx.write(0, "a.txt", "a2");
    fx.write(0, "b.txt", "b2");
    fx.set_mtime(0, "a.txt", 2_000_000_000);
    fx.set_mtime(0, "b.txt", 2_000_000_000);

    // While the run copies a.txt, a user saves b.txt in the other replica.
    let user_edit = fx.roots[1].join("b.txt");
    let mut on_event = |event: Event| {
        if matches!(&event, Event::Copied { path, .. } if path == Path::new("a.txt")) {
            fs::write(&user_edit, "the user's edit").unwrap();
        }
    };
    let summary = run(
        &fx.spec(Rule::Sync, Filter::default()),
        &Scope::Full,
        &Halt::new(),
        &mut on_event,
    )
    .unwrap();

    assert_eq!(summary.failures, 1, "b.txt waits for the next run");
    assert_eq!(fx.read(1, "b.txt").as_deref(), Some("the user's edit"));
    let (next, _) = fx.run(Rule::Sync);
    assert_eq!(next.conflicts, 1, "the next run sees both edits");
    let kept: Vec<String> = fx
        .listing(1)
        .into_iter()
        .filter(|p| p.starts_with("b."))
        .collect();
    let contents: Vec<String> = kept.iter().filter_map(|p| fx.read(1, p)).collect();
    assert!(
        contents.contains(&"the user's edit".to_string()) && contents.contains(&"b2".to_string()),
        "{kept:?} {contents:?}"
    );
}

#[test]
fn a_file_saved_while_its_new_version_is_written_is_not_overwritten() {
    let fx = Fixture::new(1);
    fx.write(0, "doc.txt", "as scanned");
    let replica = LocalEndpoint::new(&fx.roots[0]);
    let doc = Path::new("doc.txt");
    let content = b"the other replica's version".to_vec();
    let entry = Entry {
        kind: Kind::File,
        size: content.len() as u64,
        mtime: Mtime {
            secs: 2_000_000_000,
            nanos: 0,
        },
        mode: 0o644,
        meta: Meta::default(),
    };
    let sent = Encoded {
        size: entry.size,
        hash: blake3::hash(&content),
    };
    let write = |expected: &Expected, meanwhile: &dyn Fn()| {
        let incoming = Incoming {
            entry: &entry,
            block_size: None,
            expected: Some(expected),
            xattrs: None,
        };
        let mut sink = replica.receive_file(doc, &incoming).unwrap();
        sink.write(DataOp::Literal(content.clone())).unwrap();
        meanwhile();
        let committed = sink.commit(&sent);
        // Put in place with its batch, or not at all.
        let failed = replica.publish_committed().into_iter().next();
        committed.and_then(|size| failed.map_or(Ok(size), |(_, e)| Err(e)))
    };

    // The user saves the file after the run scanned it, while its new version is written.
    let scanned = Expected {
        entry: replica.stat(doc).unwrap(),
    };
    let error = write(&scanned, &|| fx.write(0, "doc.txt", "the user's edit")).unwrap_err();
    assert!(
        error.to_string().contains("changed during the sync"),
        "{error}"
    );
    assert_eq!(fx.read(0, "doc.txt").as_deref(), Some("the user's edit"));
    let names: Vec<_> = fs::read_dir(&fx.roots[0]).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");

    // A file created where the scan saw nothing is not overwritten either.
    let nothing = Expected { entry: None };
    assert!(write(&nothing, &|| {}).is_err());
    assert_eq!(fx.read(0, "doc.txt").as_deref(), Some("the user's edit"));

    // Unchanged since the scan: the new version lands.
    let scanned = Expected {
        entry: replica.stat(doc).unwrap(),
    };
    write(&scanned, &|| {}).unwrap();
    assert_eq!(fx.read(0, "doc.txt").unwrap().as_bytes(), content);
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
    let mtime = Mtime { secs: 0, nanos: 0 };
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

/// A destination folder replaced by a symlink to somewhere else (any share user can do it).
fn plant_door(fx: &Fixture, replica: usize, name: &str) -> TempDir {
    let elsewhere = TempDir::new().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), fx.roots[replica].join(name)).unwrap();
    elsewhere
}

#[test]
fn copy_and_sync_never_write_through_a_symlinked_destination_folder() {
    for rule in [Rule::Copy, Rule::Sync] {
        let fx = Fixture::new(2);
        fx.write(0, "a/pwned", "payload");
        fx.write(0, "a/deeper/pwned", "payload");
        fx.write(0, "fine.txt", "ok");
        let elsewhere = plant_door(&fx, 1, "a");

        let (summary, _) = fx.run(rule);

        let outside: Vec<_> = fs::read_dir(elsewhere.path()).unwrap().collect();
        assert!(
            outside.is_empty(),
            "{rule}: wrote through the link: {outside:?}"
        );
        // Refused under copy; under sync the link is kept aside as a conflict copy.
        let reported = summary.failures + summary.conflicts;
        assert!(reported > 0, "{rule}: the link in the way is reported");
        assert_eq!(fx.read(1, "fine.txt").as_deref(), Some("ok"), "{rule}");
    }
}

#[test]
fn setuid_and_setgid_bits_are_not_replicated_onto_files_this_process_owns() {
    let fx = Fixture::new(2);
    fx.write(0, "tool", "#!/bin/sh");
    fs::set_permissions(fx.roots[0].join("tool"), fs::Permissions::from_mode(0o6755)).unwrap();

    fx.run(Rule::Mirror);

    let mode = fs::metadata(fx.roots[1].join("tool")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755);
}

#[test]
fn a_fifo_in_the_source_is_skipped_without_being_opened() {
    let fx = Fixture::new(2);
    fx.write(0, "before.txt", "x");
    fx.write(0, "zafter.txt", "y");
    let fifo = fx.roots[0].join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();

    // A reader blocked on the FIFO would never return: the run goes on another thread.
    let (done, finished) = std::sync::mpsc::channel();
    let roots = fx.roots.clone();
    std::thread::spawn(move || {
        let fx = Fixture {
            _dir: TempDir::new().unwrap(),
            roots,
        };
        let _ = done.send(fx.run(Rule::Mirror));
    });
    let (summary, events) = finished
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the run hung on the FIFO");

    assert_eq!(summary.failures, 0);
    assert_eq!(fx.listing(1), ["before.txt", "zafter.txt"]);
    let warned = events.iter().any(|e| {
        matches!(e, Event::Skipped { path, why, .. } if path == Path::new("pipe") && why.contains("FIFO"))
    });
    assert!(warned, "no warning event: {events:?}");
}

/// A replica whose scans another party forges (a compromised agent, say); everything else
/// is the local folder's.
struct Forged {
    real: LocalEndpoint,
    scan: Tree,
}

impl Endpoint for Forged {
    fn display(&self) -> String {
        self.real.display()
    }
    fn prepare(&self, create: bool, fence: Option<&Fence>) -> endpoint::Result<()> {
        self.real.prepare(create, fence)
    }
    fn scan(&self, _: &Scope, _: &Filter) -> endpoint::Result<Tree> {
        Ok(self.scan.clone())
    }
    fn stat(&self, rel: &Path) -> endpoint::Result<Option<Entry>> {
        self.real.stat(rel)
    }
    fn signature(&self, rel: &Path) -> endpoint::Result<Option<crate::delta::Signature>> {
        self.real.signature(rel)
    }
    fn send_file(
        &self,
        rel: &Path,
        base: Option<&crate::delta::Signature>,
        out: &mut dyn FnMut(DataOp) -> std::io::Result<()>,
    ) -> endpoint::Result<Encoded> {
        let literal = b"written through the link".to_vec();
        let _ = (rel, base);
        out(DataOp::Literal(literal.clone())).unwrap();
        Ok(Encoded {
            size: literal.len() as u64,
            hash: blake3::hash(&literal),
        })
    }
    fn receive_file<'a>(
        &'a self,
        rel: &Path,
        incoming: &Incoming,
    ) -> endpoint::Result<Box<dyn endpoint::FileSink + 'a>> {
        self.real.receive_file(rel, incoming)
    }
    fn make_dir(
        &self,
        rel: &Path,
        entry: &Entry,
        expected: Option<&Expected>,
    ) -> endpoint::Result<()> {
        self.real.make_dir(rel, entry, expected)
    }
    fn make_symlink(&self, rel: &Path, entry: &Entry) -> endpoint::Result<()> {
        self.real.make_symlink(rel, entry)
    }
    fn make_special(&self, rel: &Path, entry: &Entry) -> endpoint::Result<()> {
        self.real.make_special(rel, entry)
    }
    fn remove(
        &self,
        rel: &Path,
        entry: &Entry,
        expected: Option<&Expected>,
    ) -> endpoint::Result<bool> {
        self.real.remove(rel, entry, expected)
    }
    fn rename(&self, from: &Path, to: &Path) -> endpoint::Result<()> {
        self.real.rename(from, to)
    }
    fn duplicate(
        &self,
        from: &Path,
        to: &Path,
        check: Option<&endpoint::MoveCheck>,
    ) -> endpoint::Result<()> {
        self.real.duplicate(from, to, check)
    }
    fn set_mtime(&self, rel: &Path, mtime: Mtime) -> endpoint::Result<()> {
        self.real.set_mtime(rel, mtime)
    }
    fn set_meta(
        &self,
        rel: &Path,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
        keep: Keep,
    ) -> endpoint::Result<()> {
        self.real.set_meta(rel, entry, xattrs, keep)
    }
    fn xattrs(&self, rel: &Path) -> endpoint::Result<Xattrs> {
        self.real.xattrs(rel)
    }
    fn account_names(&self, uids: &[u32], gids: &[u32]) -> endpoint::Result<Accounts> {
        self.real.account_names(uids, gids)
    }
    fn account_ids(&self, users: &[String], groups: &[String]) -> endpoint::Result<Accounts> {
        self.real.account_ids(users, groups)
    }
    fn hash(&self, rel: &Path) -> endpoint::Result<blake3::Hash> {
        self.real.hash(rel)
    }
    fn publish_committed(&self) -> Vec<(PathBuf, endpoint::EndpointError)> {
        self.real.publish_committed()
    }
    fn read_state(&self, name: &str) -> endpoint::Result<Option<Vec<u8>>> {
        self.real.read_state(name)
    }
    fn write_state(&self, name: &str, bytes: &[u8]) -> endpoint::Result<()> {
        self.real.write_state(name, bytes)
    }
}

#[test]
fn a_source_scan_listing_a_file_under_a_symlink_is_refused() {
    let fx = Fixture::new(2);
    let elsewhere = TempDir::new().unwrap();
    let entry = |kind| Entry {
        kind,
        size: 24,
        mtime: Mtime { secs: 1, nanos: 0 },
        mode: 0o644,
        meta: Meta::default(),
    };
    let target = elsewhere.path().to_path_buf();
    let mut forged = Tree::new();
    forged.insert(
        "a",
        entry(Kind::Symlink {
            target: Box::new(target),
        }),
    );
    forged.insert("a/pwned", entry(Kind::File));
    let spec = JobSpec {
        source: Arc::new(Forged {
            real: LocalEndpoint::new(&fx.roots[0]),
            scan: forged,
        }),
        ..fx.spec(Rule::Mirror, Filter::default())
    };

    let ran = run(&spec, &Scope::Full, &Halt::new(), &mut |_| {});

    let error = ran.expect_err("a forged scan was trusted").to_string();
    assert!(error.contains("not a folder"), "{error}");
    assert!(!elsewhere.path().join("pwned").exists());
    assert!(fx.listing(1).is_empty());
}

#[test]
fn a_run_says_what_a_replica_cannot_keep_of_what_the_job_keeps() {
    let fx = Fixture::new(2);
    fx.write(0, "f.txt", "a file");
    let mut spec = JobSpec {
        // Another kind of replica, which says nothing of what it keeps beyond the defaults.
        destinations: vec![Arc::new(Forged {
            real: LocalEndpoint::new(&fx.roots[1]),
            scan: Tree::new(),
        })],
        ..fx.spec(Rule::Mirror, Filter::default())
    };
    spec.guards.keep.specials = true;
    let mut events = Vec::new();
    run(&spec, &Scope::Full, &Halt::new(), &mut |e| events.push(e)).unwrap();
    let said = events.iter().any(|e| {
        matches!(e, Event::Skipped { why, .. } if why.starts_with("special files are not kept there"))
    });
    assert!(said, "{events:?}");
    assert_eq!(fx.read(1, "f.txt").as_deref(), Some("a file"));
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

/// The shrunk case: two conflicts of one file within the same second.
#[test]
fn a_second_conflict_within_the_same_second_keeps_both_losing_versions() {
    let fx = Fixture::new(2);
    fx.write(0, "f.txt", "base");
    fx.run(Rule::Sync);
    let at = |replica: usize, content: &str, nanos: u32| {
        fx.write(replica, "f.txt", content);
        let time = filetime::FileTime::from_unix_time(1_780_000_000, nanos);
        filetime::set_file_mtime(fx.roots[replica].join("f.txt"), time).unwrap();
    };
    at(0, "first-loser", 100_000_000);
    at(1, "first-winner", 200_000_000);
    fx.run(Rule::Sync);
    at(0, "second-loser", 300_000_000);
    at(1, "second-winner", 400_000_000);
    fx.run(Rule::Sync);

    for replica in 0..2 {
        let contents: Vec<String> = fx
            .listing(replica)
            .iter()
            .filter_map(|name| fx.read(replica, name))
            .collect();
        for version in ["first-loser", "second-loser", "second-winner"] {
            assert!(
                contents.iter().any(|c| c == version),
                "{version} lost at r{replica}: {contents:?}"
            );
        }
    }
}

#[test]
fn a_conflict_copy_never_takes_a_users_file_or_an_overlong_name() {
    let mtime = Mtime { secs: 0, nanos: 0 };
    let plain = free_conflict_name(Path::new("r.txt"), mtime, 1, |_| false);
    let taken = |p: &Path| p == plain;
    let other = free_conflict_name(Path::new("r.txt"), mtime, 1, taken);
    assert_eq!(
        other,
        Path::new("r.ferry-conflict-19700101-000000-r1-2.txt")
    );
    let long = "é".repeat(120) + ".txt";
    let name = free_conflict_name(Path::new(&long), mtime, 1, |_| false);
    let bytes = name.as_os_str().len();
    assert!(bytes <= 255, "{bytes} bytes");
    assert!(
        name.to_str().is_some_and(|n| n.ends_with("-r1.txt")),
        "{name:?}"
    );
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

mod model;
