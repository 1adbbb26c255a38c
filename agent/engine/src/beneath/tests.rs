//! Each test plants a symlink where a share user could, and checks that nothing outside the
//! root is read, written or changed through it.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use super::*;

struct Site {
    _dir: tempfile::TempDir,
    root: Root,
    inside: PathBuf,
    outside: PathBuf,
}

fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("share");
    let outside = dir.path().join("outside");
    fs::create_dir_all(&inside).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), "outside").unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o700)).unwrap();
    let root = Root::open(&inside, Path::new(""), false).unwrap();
    Site {
        _dir: dir,
        root,
        inside,
        outside,
    }
}

fn assert_outside(result: io::Result<impl std::fmt::Debug>) {
    let e = result.expect_err("a symlink was followed");
    assert!(is_outside(&e), "{e}");
}

#[test]
fn a_symlinked_folder_is_never_passed_through() {
    let s = site();
    symlink(&s.outside, s.inside.join("door")).unwrap();
    let through = Path::new("door/secret");
    assert_outside(s.root.open_file(through));
    assert_outside(s.root.create_new(Path::new("door/planted"), 0o644));
    assert_outside(s.root.make_dirs(Path::new("door/sub"), 0o755));
    assert_outside(s.root.rename(through, Path::new("taken")));
    assert_outside(s.root.hard_link(through, Path::new("linked")));
    assert_outside(s.root.remove_file(through));
    assert_outside(s.root.folder(Path::new("door")));
    assert_outside(s.root.set_dir_mode(Path::new("door"), 0o7777));
    assert_eq!(
        fs::read_to_string(s.outside.join("secret")).unwrap(),
        "outside"
    );
    assert!(!s.outside.join("planted").exists());
    assert!(!s.outside.join("sub").exists());
    let mode = fs::metadata(&s.outside).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o700);
}

#[test]
fn a_final_symlink_is_never_opened_nor_chmodded_through() {
    let s = site();
    symlink(s.outside.join("secret"), s.inside.join("leak")).unwrap();
    let opened = s.root.open_file(Path::new("leak"));
    assert!(opened.is_err(), "read through the link: {opened:?}");
    let created = s.root.create_new(Path::new("leak"), 0o644);
    assert!(created.is_err(), "wrote through the link");
    // The link itself can be read and replaced, which is all a replica needs.
    let target = s.root.read_link(Path::new("leak")).unwrap();
    assert_eq!(target, s.outside.join("secret"));
    let found = s.root.stat(Path::new("leak")).unwrap().unwrap();
    assert_eq!(found.file_type, FileType::Symlink);
    assert_eq!(
        fs::read_to_string(s.outside.join("secret")).unwrap(),
        "outside"
    );
}

#[test]
fn paths_that_leave_the_root_are_refused_before_any_call() {
    let s = site();
    for escaping in [
        "../outside/secret",
        "/etc/passwd",
        "a/../../outside/secret",
        "",
    ] {
        assert_outside(s.root.open_file(Path::new(escaping)));
    }
}

#[test]
fn a_root_swapped_for_a_symlink_after_opening_keeps_its_writes_inside() {
    let s = site();
    fs::create_dir(s.inside.join("proj")).unwrap();
    let proj = Root::open(&s.inside, Path::new("proj"), false).unwrap();
    fs::rename(s.inside.join("proj"), s.inside.join("moved")).unwrap();
    symlink(&s.outside, s.inside.join("proj")).unwrap();
    proj.create_new(Path::new("written"), 0o644).unwrap();
    assert!(s.inside.join("moved/written").exists());
    assert!(!s.outside.join("written").exists());
    // Opened anew, the symlink is refused.
    let reopened = Root::open(&s.inside, Path::new("proj"), false);
    assert_outside(reopened);
}

#[test]
fn a_fifo_is_refused_at_once_instead_of_waiting_for_a_writer() {
    let s = site();
    nix::unistd::mkfifo(
        &s.inside.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let e = s.root.open_file(Path::new("pipe")).unwrap_err();
    assert!(e.to_string().contains("FIFO"), "{e}");
}

#[test]
fn the_walk_without_openat2_refuses_symlinks_as_openat2_does() {
    let s = site();
    fs::create_dir_all(s.inside.join("a/b")).unwrap();
    symlink(&s.outside, s.inside.join("a/door")).unwrap();
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    assert!(walk(&s.root.fd, Path::new("a/b"), flags).is_ok());
    for through in ["a/door", "a/door/x"] {
        let e = walk(&s.root.fd, Path::new(through), flags).unwrap_err();
        assert_eq!(e, rustix::io::Errno::LOOP, "{through}");
    }
}

#[test]
fn make_dirs_makes_every_missing_folder_beneath_the_root() {
    let s = site();
    s.root.make_dirs(Path::new("x/y/z"), 0o755).unwrap();
    assert!(s.inside.join("x/y/z").is_dir());
    s.root.make_dirs(Path::new("x/y/z"), 0o755).unwrap();
}
