//! Runs against what a share user or a peer can plant: a destination folder swapped for a
//! symlink, setuid bits, a FIFO, a forged scan, a replica that cannot keep what the job keeps.

use super::*;

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

/// A replica whose scans another party forges (a compromised agent, say), its entries handed
/// over in the order listed, then failing if it `breaks`; everything else is the local
/// folder's.
struct Forged {
    real: LocalEndpoint,
    scan: Vec<(PathBuf, Entry)>,
    breaks: bool,
}

impl Endpoint for Forged {
    fn display(&self) -> String {
        self.real.display()
    }
    fn prepare(&self, create: bool, fence: Option<&Fence>) -> endpoint::Result<()> {
        self.real.prepare(create, fence)
    }
    fn scan_each(&self, _: &Scope, _: &Filter, each: &mut EachEntry) -> endpoint::Result<()> {
        (self.scan.iter()).try_for_each(|(path, entry)| each(path, entry.clone()))?;
        match self.breaks {
            true => Err(endpoint::EndpointError::new(
                "scan",
                self.display(),
                std::io::Error::other("the connection broke"),
            )),
            false => Ok(()),
        }
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
    fn read_state(&self, name: &str) -> endpoint::Result<Option<Box<dyn std::io::Read + '_>>> {
        self.real.read_state(name)
    }
    fn write_state(&self, name: &str, produce: &mut endpoint::WriteState) -> endpoint::Result<()> {
        self.real.write_state(name, produce)
    }
}

#[test]
fn a_source_scan_listing_a_file_under_a_symlink_is_refused() {
    let fx = Fixture::new(2);
    let elsewhere = TempDir::new().unwrap();
    let target = elsewhere.path().to_path_buf();
    let forged = vec![
        ("a".into(), Entry::symlink(target, Mtime::at(1), 0o644)),
        ("a/pwned".into(), Entry::file(24, Mtime::at(1), 0o644)),
    ];
    let spec = JobSpec {
        source: Arc::new(Forged {
            real: LocalEndpoint::new(&fx.roots[0]),
            scan: forged,
            breaks: false,
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
            scan: Vec::new(),
            breaks: false,
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
fn a_destination_scan_naming_a_path_twice_cannot_make_a_mirror_delete_it() {
    let fx = Fixture::new(2);
    fx.write(0, "kept.txt", "the source's");
    fx.write(1, "kept.txt", "the source's");
    fx.set_mtime(0, "kept.txt", 1_700_000_000);
    fx.set_mtime(1, "kept.txt", 1_700_000_000);
    let real = LocalEndpoint::new(&fx.roots[1]);
    let alike = real.stat(Path::new("kept.txt")).unwrap().unwrap();
    // Found alike at both, then again as something else: whichever a run believes, the
    // path is at the destination, and a mirror has no cause to delete it.
    let mut other = alike.clone();
    other.size = 1;
    let spec = JobSpec {
        destinations: vec![Arc::new(Forged {
            real,
            scan: vec![("kept.txt".into(), alike), ("kept.txt".into(), other)],
            breaks: false,
        })],
        ..fx.spec(Rule::Mirror, Filter::default())
    };

    let summary = run(&spec, &Scope::Full, &Halt::new(), &mut |_| {}).unwrap();

    assert_eq!(summary.files_deleted, 0, "{summary:?}");
    assert_eq!(fx.read(1, "kept.txt").as_deref(), Some("the source's"));
}

#[test]
fn a_scan_that_breaks_midway_fails_the_run_without_the_other_waiting_for_it() {
    let fx = Fixture::new(2);
    let file = Entry::file(1, Mtime::at(1), 0o644);
    // Enough for the source's scan to run far ahead of the destination's and wait for it.
    let many: Vec<(PathBuf, Entry)> = (0..40_000)
        .map(|i| (format!("f{i:05}").into(), file.clone()))
        .collect();
    for breaking in [0, 1] {
        let forged = |replica: usize| Forged {
            real: LocalEndpoint::new(&fx.roots[replica]),
            scan: match replica == breaking {
                true => many[..10].to_vec(),
                false => many.clone(),
            },
            breaks: replica == breaking,
        };
        let spec = JobSpec {
            source: Arc::new(forged(0)),
            destinations: vec![Arc::new(forged(1))],
            ..fx.spec(Rule::Mirror, Filter::default())
        };
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(run(&spec, &Scope::Full, &Halt::new(), &mut |_| {}).map(|_| ()));
        });

        let ran = finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a scan waited for one that had broken");

        let error = ran.expect_err("a broken scan was taken for a whole one");
        let side = matches!(error, EngineError::Source { .. });
        assert_eq!(side, breaking == 0, "{error}");
        assert!(
            error.to_string().contains("the connection broke"),
            "{error}"
        );
        assert!(fx.listing(1).is_empty(), "nothing was written");
    }
}
