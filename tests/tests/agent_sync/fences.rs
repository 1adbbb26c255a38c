//! Writes an agent refuses: under a lease epoch that is no longer the latest, and under the sync
//! rule over a file changed since the run's scan.

use super::*;

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
            entry: Entry::file(sent.size, Mtime::at(2_000_000_000), 0o644),
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
