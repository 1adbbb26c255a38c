//! A share user plants symlinks where the replica's calls go: none of them may lead out.

use super::*;

use std::os::unix::fs::PermissionsExt;

fn link(target: &Path) -> Entry {
    Entry::symlink(target.into(), Mtime::at(0), 0o777)
}

#[test]
fn planted_links_lead_nowhere_outside_the_folder() {
    let share = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("victim"), "untouched").unwrap();
    std::fs::write(outside.path().join("secret"), "TOP SECRET").unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let replica = LocalEndpoint::beneath(share.path(), share.path());
    replica.prepare(false, None).unwrap();
    let _ = replica.make_symlink(Path::new("out"), &link(&outside.path().join("victim")));
    let _ = replica.write_state_bytes("payload", b"written by the peer");
    let _ = replica.duplicate(Path::new(".ferry/payload"), Path::new("out"), None);
    let _ = replica.make_symlink(
        Path::new(".ferry/leak"),
        &link(&outside.path().join("secret")),
    );
    let leaked = replica.read_state_bytes("leak");
    let _ = replica.make_symlink(Path::new("door"), &link(outside.path()));
    let dir = Entry::folder(0o7777);
    let _ = replica.make_dir(Path::new("door"), &dir, None);
    assert_eq!(
        std::fs::read_to_string(outside.path().join("victim")).unwrap(),
        "untouched",
        "overwritten through a link"
    );
    let secret_read = leaked
        .ok()
        .flatten()
        .is_some_and(|b| b.starts_with(b"TOP SECRET"));
    assert!(!secret_read, "read through a link");
    let mode = std::fs::metadata(outside.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o700, "chmod through a link");
}

#[test]
fn a_scan_reads_each_entrys_own_attributes_in_every_folder() {
    let share = tempfile::tempdir().unwrap();
    let files = [("a/f", "1"), ("a/sub/g", "2"), ("b/f", "3"), ("c", "4")];
    for (rel, value) in files {
        let path = share.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, rel).unwrap();
        rustix::fs::setxattr(
            &path,
            "user.v",
            value.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    }
    let replica = LocalEndpoint::new(share.path());
    let tree = replica.scan(&Scope::Full, &Filter::default()).unwrap();
    let mut digests = std::collections::HashSet::new();
    for (rel, _) in files {
        let scanned = tree[Path::new(rel)].meta().xattrs;
        let alone = replica.stat(Path::new(rel)).unwrap().unwrap().meta().xattrs;
        assert!(scanned.is_some(), "{rel} has an attribute");
        assert_eq!(
            scanned, alone,
            "{rel}: the scan read another entry's attributes"
        );
        digests.insert(scanned);
    }
    assert_eq!(digests.len(), files.len());
}

#[test]
fn a_checked_duplicate_is_made_only_while_both_paths_hold_what_was_planned() {
    let share = tempfile::tempdir().unwrap();
    let replica = LocalEndpoint::new(share.path());
    replica.prepare(false, None).unwrap();
    std::fs::write(share.path().join("old.txt"), "moved content").unwrap();
    let scanned = replica.stat(Path::new("old.txt")).unwrap();
    let check = MoveCheck {
        from: Expected {
            entry: scanned.clone(),
        },
        to: Expected { entry: None },
    };

    // A user saved something at the new name meanwhile: it stays.
    std::fs::write(share.path().join("new.txt"), "the user's file").unwrap();
    let (old, new) = (Path::new("old.txt"), Path::new("new.txt"));
    assert!(replica.duplicate(old, new, Some(&check)).is_err());
    assert_eq!(read(share.path(), "new.txt"), "the user's file");
    std::fs::remove_file(share.path().join("new.txt")).unwrap();

    // The moved file was edited meanwhile: its new content is not taken as the old one.
    std::fs::write(share.path().join("old.txt"), "edited after the scan").unwrap();
    assert!(replica.duplicate(old, new, Some(&check)).is_err());
    assert!(!share.path().join("new.txt").exists());

    // Both as planned: the duplicate is made.
    let check = MoveCheck {
        from: Expected {
            entry: replica.stat(old).unwrap(),
        },
        to: Expected { entry: None },
    };
    replica.duplicate(old, new, Some(&check)).unwrap();
    assert_eq!(read(share.path(), "new.txt"), "edited after the scan");
    let leftovers = std::fs::read_dir(share.path()).unwrap().count();
    assert_eq!(leftovers, 2, "no temporary file is left");
}

fn read(root: &Path, name: &str) -> String {
    std::fs::read_to_string(root.join(name)).unwrap()
}

/// A share user nests folders as deep as paths go (2,000 levels): the scan walks them all,
/// where it overflowed its thread's stack and aborted the whole agent.
#[test]
fn folders_nested_as_deep_as_paths_go_are_scanned_without_overflowing() {
    let share = tempfile::tempdir().unwrap();
    let levels = 2_000;
    let deepest: PathBuf = std::iter::repeat_n("d", levels).collect();
    std::fs::create_dir_all(share.path().join(&deepest)).unwrap();
    std::fs::write(share.path().join(&deepest).join("f"), "deep").unwrap();
    let replica = LocalEndpoint::new(share.path());
    let tree = replica.scan(&Scope::Full, &Filter::default()).unwrap();
    assert_eq!(tree.len(), levels + 1, "every folder and the file");
    assert_eq!(tree.get(deepest.join("f")).map(|e| e.size), Some(4));
}

/// Receives `content` as `rel` and commits it: it waits with its batch to go into place.
fn receive(replica: &LocalEndpoint, rel: &str, content: &[u8]) -> Result<u64> {
    let entry = Entry::file(content.len() as u64, Mtime::at(0), 0o644);
    let incoming = Incoming {
        entry: &entry,
        block_size: None,
        expected: None,
        xattrs: None,
    };
    let mut sink = replica.receive_file(Path::new(rel), &incoming)?;
    sink.write(Op::Literal(content.to_vec()))?;
    sink.commit(&Encoded {
        size: entry.size,
        hash: blake3::hash(content),
    })
}

#[test]
fn a_folder_removed_while_its_files_wait_for_their_batch_is_made_again_for_the_next() {
    let share = tempfile::tempdir().unwrap();
    std::fs::create_dir(share.path().join("a")).unwrap();
    let replica = LocalEndpoint::new(share.path());
    replica.prepare(false, None).unwrap();
    receive(&replica, "a/x", b"first").unwrap();
    // A share user removes the folder, and the file waiting in it.
    std::fs::remove_dir_all(share.path().join("a")).unwrap();
    receive(&replica, "a/y", b"second").unwrap();

    let failed: Vec<PathBuf> = (replica.publish_committed().into_iter())
        .map(|(path, _)| path)
        .collect();
    assert_eq!(failed, [PathBuf::from("a/x")]);
    let written = std::fs::read_to_string(share.path().join("a/y")).unwrap();
    assert_eq!(written, "second");
}
