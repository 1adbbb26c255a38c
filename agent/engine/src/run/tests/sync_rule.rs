//! The sync rule: changes spread every way, conflicts keep every version, and nothing a user
//! changed during a run is overwritten.

use super::*;

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
    let entry = Entry::file(content.len() as u64, Mtime::at(2_000_000_000), 0o644);
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
    let mtime = Mtime::at(0);
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
