//! What a replica keeps, checked as `rsync -ancHAXS --numeric-ids` sees it: owners, ACLs,
//! extended attributes, hard links, holes and special files, locally and between agents.

use super::*;

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
        // At the destination already, alike to the byte and the number, but numbers name
        // others there: by name, it is not alike.
        fs::create_dir_all(&dst).unwrap();
        let time = filetime::FileTime::from_unix_time(1_700_000_000, 0);
        for root in [&src, &dst] {
            fs::write(root.join("numbered.txt"), "alice's by number").unwrap();
            std::os::unix::fs::chown(root.join("numbered.txt"), Some(1500), Some(1600)).unwrap();
            filetime::set_file_mtime(root.join("numbered.txt"), time).unwrap();
        }
        let first = site.run(job);
        assert_eq!(first["state"], "succeeded", "{job}: {first:#}");
        assert_eq!(owner(&dst.join("alices.txt")), expected, "{job}");
        assert_eq!(
            acl(&dst.join("alices.txt")),
            named,
            "{job}: the ACL's entries"
        );
        assert_eq!(owner(&dst.join("nameless.txt")), (1777, 1777), "{job}");
        assert_eq!(owner(&dst.join("numbered.txt")), expected, "{job}");
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
