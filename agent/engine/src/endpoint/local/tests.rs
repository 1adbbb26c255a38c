//! A share user plants symlinks where the replica's calls go: none of them may lead out.

use super::*;

use std::os::unix::fs::PermissionsExt;

fn link(target: &Path) -> Entry {
    Entry {
        kind: Kind::Symlink {
            target: target.into(),
        },
        size: 0,
        mtime: Mtime { secs: 0, nanos: 0 },
        mode: 0o777,
        meta: Meta::default(),
    }
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
    let _ = replica.write_state("payload", b"written by the peer");
    let _ = replica.duplicate(Path::new(".ferry/payload"), Path::new("out"));
    let _ = replica.make_symlink(
        Path::new(".ferry/leak"),
        &link(&outside.path().join("secret")),
    );
    let leaked = replica.read_state("leak");
    let _ = replica.make_symlink(Path::new("door"), &link(outside.path()));
    let dir = Entry {
        kind: Kind::Dir,
        size: 0,
        mtime: Mtime { secs: 0, nanos: 0 },
        mode: 0o7777,
        meta: Meta::default(),
    };
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
