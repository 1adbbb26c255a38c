//! Attacks on an agent by peers that hold a certificate from its CA, each as the security
//! review tried it: every one of them worked before the trust model and the confinement by
//! handles, and none may work now.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::sync::Arc;

use ferry_engine::Fence;
use ferry_engine::meta::{Keep, Xattr};
use ferry_engine::tree::{Entry, Mtime, Node};
use ferry_wire::client::Session as Client;
use ferry_wire::frame;
use ferry_wire::identity::{Peer, Role};
use ferry_wire::protocol::{
    ErrorKind, JobOrder, MAX_BATCH, PROTOCOL_VERSION, RemoteFolder, Request, Response, WireError,
};

use super::tests::*;
use crate::config::ServedRoot;

fn agent(name: &str) -> Peer {
    Peer {
        name: name.into(),
        role: Role::Agent,
    }
}

/// A session of `peer` under `fence`, with `folder` open.
async fn session_as(
    agent: &TestAgent,
    peer: Peer,
    fence: Option<Fence>,
    folder: &str,
) -> Result<Client, Response> {
    let name = peer.name.clone();
    let (near, _served) = agent.serve_to(peer);
    let mut client = Client::start(near, &name, fence, "nas1", Arc::default())
        .await
        .map_err(|e| Response::Refused {
            reason: e.to_string(),
        })?;
    let open = Request::Open {
        path: folder.into(),
        create: false,
    };
    match client.call(&open).await.unwrap() {
        Response::Done => Ok(client),
        refused => Err(refused),
    }
}

fn failed(response: &Response) -> &WireError {
    match response {
        Response::Failed(error) => error,
        other => panic!("{other:?} instead of a failure"),
    }
}

/// A run of `folder` handed over to nas1, pushing to `agent` at `address`.
fn run_to(folder: &str, agent: &str, address: &str) -> Request {
    let order = JobOrder {
        job: "handed-over".into(),
        rule: ferry_engine::Rule::Mirror,
        source: folder.into(),
        destinations: vec![RemoteFolder {
            agent: agent.into(),
            address: address.into(),
            path: "/srv".into(),
        }],
        include: vec![],
        exclude: vec![],
        guards: Default::default(),
        paths: None,
    };
    Request::RunJob {
        order,
        valid_for_ms: 10_000,
    }
}

fn make_dir(path: &str, mode: u32) -> Request {
    Request::MakeDir {
        path: path.into(),
        entry: Entry::folder(mode),
        expected: None,
    }
}

fn make_symlink(path: &str, target: &Path) -> Request {
    Request::MakeSymlink {
        path: path.into(),
        entry: Entry::symlink(target.into(), Mtime::at(0), 0o777),
    }
}

/// A folder outside every root, holding a secret, mode 0700.
fn outside() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    std::fs::write(dir.path().join("victim"), "untouched").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn assert_untouched(outside: &Path) {
    let victim = std::fs::read_to_string(outside.join("victim")).unwrap();
    assert_eq!(victim, "untouched");
    let mode = std::fs::metadata(outside).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o700, "the outside folder's mode changed");
    let names: Vec<_> = std::fs::read_dir(outside)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 2, "something was made outside: {names:?}");
}

/// Whether any answer carries the secret, or its hash.
fn leaks(responses: &[Response]) -> bool {
    let hash = blake3::hash(SECRET).as_bytes().to_vec();
    responses.iter().any(|r| match r {
        Response::Hash(h) => *h == hash,
        other => format!("{other:?}").contains("TOP SECRET"),
    })
}

const SECRET: &[u8] = b"TOP SECRET outside the root";

/// The verdict on the file sent last: files are put in place (and answered for) before the
/// next request that is not file data.
async fn verdict_of_last_file(client: &mut Client) -> Response {
    client.send(&Request::Ping { nonce: 1 }).await.unwrap();
    let verdict = client.receive().await.unwrap();
    assert_eq!(client.receive().await.unwrap(), Response::Pong { nonce: 1 });
    verdict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_naming_another_peer_than_the_certificate_is_refused() {
    let agent = TestAgent::new();
    let (mut near, served) = agent.serve_to(self::agent("nas2"));
    let hello = Request::Hello {
        version: PROTOCOL_VERSION,
        newest: None,
        client: "s1".into(),
        fence: Some(lease()),
    };
    frame::write(&mut near, &hello).await.unwrap();
    let reason = refusal(&mut near).await;
    assert!(reason.contains("certificate is agent nas2's"), "{reason}");
    outcome(served).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_cannot_act_as_a_scheduler() {
    let agent = TestAgent::new();
    let folder = agent.folder();
    let mut nas2 = session_as(&agent, self::agent("nas2"), Some(lease()), &folder)
        .await
        .unwrap();
    let run = run_to(&folder, "nas2", "127.0.0.1:1");
    let answer = nas2.call(&run).await.unwrap();
    assert!(
        failed(&answer).message.contains("only a scheduler"),
        "{answer:?}"
    );

    let mut nas2 = session_as(&agent, self::agent("nas2"), None, &folder)
        .await
        .unwrap();
    let watch = Request::Watch { path: folder };
    let answer = nas2.call(&watch).await.unwrap();
    assert!(
        failed(&answer).message.contains("only a scheduler"),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_serves_only_the_peers_its_lists_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = ServedRoot {
        path: dir.path().to_path_buf(),
        read: Some(vec!["reader".into()]),
        write: Some(vec!["s1".into()]),
        handover: Some(vec![]),
    };
    let agent = TestAgent::serving(root, dir);
    let folder = agent.folder();

    let stranger = session_as(&agent, scheduler("s9"), Some(lease()), &folder).await;
    let refused = stranger
        .err()
        .expect("an unlisted scheduler opened the root");
    assert_eq!(failed(&refused).kind, ErrorKind::PermissionDenied);
    let nas2 = session_as(&agent, self::agent("nas2"), Some(lease()), &folder).await;
    assert!(
        nas2.is_err(),
        "an agent not on the hand-over list opened the root"
    );

    let mut reader = session_as(&agent, scheduler("reader"), Some(lease()), &folder)
        .await
        .unwrap();
    let answer = reader.call(&make_dir("made", 0o755)).await.unwrap();
    assert_eq!(failed(&answer).kind, ErrorKind::PermissionDenied);
    assert!(!agent.root.path().join("made").exists());

    let mut writer = session_as(&agent, scheduler("s1"), Some(lease()), &folder)
        .await
        .unwrap();
    assert_eq!(
        writer.call(&make_dir("made", 0o755)).await.unwrap(),
        Response::Done
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_a_lease_is_refused() {
    let agent = TestAgent::new();
    let mut s1 = session_as(&agent, scheduler("s1"), None, &agent.folder())
        .await
        .unwrap();
    let answer = s1.call(&make_dir("made", 0o755)).await.unwrap();
    assert!(
        failed(&answer).message.contains("without a lease"),
        "{answer:?}"
    );
    send_file(&mut s1, "file", b"data").await;
    let verdict = s1.receive().await.unwrap();
    assert!(
        format!("{verdict:?}").contains("without a lease"),
        "{verdict:?}"
    );
    // Reading needs no lease.
    let stat = Request::Stat {
        path: "made".into(),
    };
    assert_eq!(s1.call(&stat).await.unwrap(), Response::Stat(None));
    assert!(!agent.root.path().join("made").exists());
    assert!(!agent.root.path().join("file").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_epoch_from_an_agent_does_not_shut_the_scheduler_out() {
    let agent = TestAgent::new();
    let folder = agent.folder();
    let forged = Fence {
        epoch: i64::MAX,
        ..lease()
    };
    let mut nas2 = session_as(&agent, self::agent("nas2"), Some(forged), &folder)
        .await
        .unwrap();
    assert_eq!(
        nas2.call(&make_dir("by-nas2", 0o755)).await.unwrap(),
        Response::Done
    );

    let mut s1 = session_as(&agent, scheduler("s1"), Some(lease()), &folder)
        .await
        .expect("the scheduler was shut out by an agent's forged epoch");
    assert_eq!(
        s1.call(&make_dir("by-s1", 0o755)).await.unwrap(),
        Response::Done
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_symlinks_lead_nowhere_outside_the_root() {
    let agent = TestAgent::new();
    let outside = outside();
    let (mut s1, _served) = agent.client().await;
    let mut answers = Vec::new();
    let mut call = async |request: Request| {
        let answer = s1.call(&request).await.unwrap();
        answers.push(answer.clone());
        answer
    };

    // Duplicate onto a link: would overwrite the link's target.
    call(make_symlink("out", &outside.path().join("victim"))).await;
    let state = Request::WriteState {
        name: "payload".into(),
        bytes: b"written by the peer".to_vec(),
    };
    call(state).await;
    let duplicate = Request::Duplicate {
        from: ".ferry/payload".into(),
        to: "out".into(),
        check: None,
    };
    call(duplicate).await;
    // Duplicate from a link: would copy the secret in, to be read back.
    call(make_symlink("in", &outside.path().join("secret"))).await;
    let duplicate = Request::Duplicate {
        from: "in".into(),
        to: "copied".into(),
        check: None,
    };
    call(duplicate).await;
    call(Request::ReadState {
        name: "copied".into(),
    })
    .await;
    call(Request::Hash {
        path: "copied".into(),
    })
    .await;
    // ReadState through a link in the state folder.
    call(make_symlink(".ferry/leak", &outside.path().join("secret"))).await;
    call(Request::ReadState {
        name: "leak".into(),
    })
    .await;
    call(Request::ReadStatePart {
        name: "leak".into(),
        from: 0,
    })
    .await;
    // MakeDir over a link to a folder: would chmod the folder outside.
    call(make_symlink("door", outside.path())).await;
    call(make_dir("door", 0o7777)).await;
    call(make_dir("door/inside", 0o755)).await;

    assert_untouched(outside.path());
    assert!(!leaks(&answers), "{answers:#?}");
    let door = std::fs::symlink_metadata(agent.root.path().join("door")).unwrap();
    assert!(
        door.is_dir(),
        "the link in the way of a folder is replaced by one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_session_swapping_the_first_ones_folder_for_a_link_gains_nothing() {
    let agent = TestAgent::new();
    let outside = outside();
    let sub = agent.root.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let sub_text = sub.display().to_string();
    let mut first = session_as(&agent, scheduler("s1"), Some(lease()), &sub_text)
        .await
        .unwrap();

    // Another session (or a share user) moves the folder away and puts a link in its place.
    std::fs::rename(&sub, agent.root.path().join("moved")).unwrap();
    symlink(outside.path(), &sub).unwrap();

    send_file(&mut first, "pwned", b"payload").await;
    let verdict = verdict_of_last_file(&mut first).await;
    let scan = Request::Scan {
        paths: None,
        include: vec![],
        exclude: vec![],
    };
    let listed = first.call(&scan).await.unwrap();

    assert_untouched(outside.path());
    assert!(!format!("{listed:?}").contains("secret"), "{listed:?}");
    assert!(!format!("{verdict:?}").contains("Failed"), "{verdict:?}");
    assert!(agent.root.path().join("moved/pwned").exists());
    // Opened anew, the link is refused.
    let again = session_as(&agent, scheduler("s1"), Some(lease()), &sub_text).await;
    assert_eq!(failed(&again.err().unwrap()).kind, ErrorKind::Outside);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setuid_and_setgid_bits_a_peer_sends_are_dropped() {
    let agent = TestAgent::new();
    let (mut s1, _served) = agent.client().await;
    let [mut write, data, end] = file_requests("tool", b"#!/bin/sh\n");
    let Request::WriteFile { entry, .. } = &mut write else {
        unreachable!()
    };
    *entry = Entry::file(entry.size, entry.mtime, 0o6755);
    for request in [write, data, end] {
        s1.send(&request).await.unwrap();
    }
    let verdict = verdict_of_last_file(&mut s1).await;
    assert!(
        matches!(verdict, Response::Verdict { error: None, .. }),
        "{verdict:?}"
    );
    let mode = std::fs::metadata(agent.root.path().join("tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
}

/// `cap_setuid+ep` as the kernel stores it (`vfs_cap_data`, revision 2, effective).
const CAP_SETUID: [u8; 20] = [
    1, 0, 0, 2, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn xattr(name: &str, value: &[u8]) -> Xattr {
    Xattr {
        name: name.into(),
        value: value.to_vec(),
    }
}

/// The names of the attributes of `rel` in the agent's root.
fn xattr_names(agent: &TestAgent, rel: &str) -> Vec<String> {
    let root = ferry_engine::beneath::Root::open(agent.root.path(), Path::new(""), false).unwrap();
    let xattrs = root.xattrs(Path::new(rel)).unwrap();
    xattrs
        .iter()
        .map(|x| String::from_utf8_lossy(&x.name).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_capabilities_a_peer_sends_are_dropped() {
    let agent = TestAgent::new();
    let (mut s1, _served) = agent.client().await;
    let [mut write, data, end] = file_requests("tool", b"#!/bin/sh\n");
    let Request::WriteFile { xattrs, .. } = &mut write else {
        unreachable!()
    };
    let capability = xattr("security.capability", &CAP_SETUID);
    *xattrs = Some(vec![capability.clone(), xattr("user.origin", b"nas1")]);
    for request in [write, data, end] {
        s1.send(&request).await.unwrap();
    }
    let verdict = verdict_of_last_file(&mut s1).await;
    assert!(
        matches!(verdict, Response::Verdict { error: None, .. }),
        "{verdict:?}"
    );
    assert_eq!(xattr_names(&agent, "tool"), ["user.origin"]);

    let set = Request::SetMeta {
        path: "tool".into(),
        entry: file_entry(10),
        xattrs: Some(vec![capability]),
        keep: Keep::default(),
    };
    assert_eq!(s1.call(&set).await.unwrap(), Response::Done);
    assert_eq!(xattr_names(&agent, "tool"), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gets_fifos_and_sockets_made_but_never_a_device() {
    let agent = TestAgent::new();
    let (mut s1, _served) = agent.client().await;
    let special = |path: &str, node, device| Request::MakeSpecial {
        path: path.into(),
        entry: Entry::special(node, device, Mtime::at(0), 0o666),
    };
    // 8:0, the first SCSI disk.
    let disk = special("disk", Node::BlockDevice, 8 << 8);
    let answer = s1.call(&disk).await.unwrap();
    assert!(
        matches!(&answer, Response::Failed(e) if e.kind == ErrorKind::PermissionDenied),
        "{answer:?}"
    );
    assert!(std::fs::symlink_metadata(agent.root.path().join("disk")).is_err());
    let fifo = special("fifo", Node::Fifo, 0);
    assert_eq!(s1.call(&fifo).await.unwrap(), Response::Done);
    let made = std::fs::symlink_metadata(agent.root.path().join("fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&made.file_type()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_batch_ends_its_session_before_it_is_held() {
    let agent = TestAgent::new();
    let (mut near, served) = raw_session(&agent).await;
    let pings = vec![Request::Ping { nonce: 0 }; MAX_BATCH + 1];
    frame::write(&mut near, &Request::Batch(pings))
        .await
        .unwrap();
    let ended = outcome(served).await;
    assert!(format!("{ended:?}").contains("more than 4096"), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_size_a_peer_chose_is_checked_before_the_file_is_read() {
    let agent = TestAgent::new();
    std::fs::write(agent.root.path().join("big"), vec![7u8; 100_000]).unwrap();
    let (mut s1, _served) = agent.client().await;
    for block_size in [0, u32::MAX] {
        let base = ferry_engine::delta::Signature {
            block_size,
            file_size: 100_000,
            strong_len: 2,
            sums: vec![0; 6],
        };
        let read = Request::ReadFile {
            path: "big".into(),
            base: Some(base),
        };
        let answer = s1.call(&read).await.unwrap();
        assert!(failed(&answer).message.contains("block size"), "{answer:?}");
    }
    // The session lives on.
    assert_eq!(
        s1.call(&Request::Ping { nonce: 3 }).await.unwrap(),
        Response::Pong { nonce: 3 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_may_hold_only_so_many_watches() {
    let agent = TestAgent::new();
    let limit = agent.agent.config.limits.max_watches_per_peer;
    let folder = agent.folder();
    let mut watching = Vec::new();
    for _ in 0..limit {
        let mut s1 = session_as(&agent, scheduler("s1"), None, &folder)
            .await
            .unwrap();
        let answer = s1
            .call(&Request::Watch {
                path: folder.clone(),
            })
            .await
            .unwrap();
        assert_eq!(answer, Response::Done);
        watching.push(s1);
    }
    let mut s1 = session_as(&agent, scheduler("s1"), None, &folder)
        .await
        .unwrap();
    let answer = s1
        .call(&Request::Watch {
            path: folder.clone(),
        })
        .await
        .unwrap();
    assert!(
        failed(&answer).message.contains("as many as it may"),
        "{answer:?}"
    );
    // Another scheduler is not held back by s1's watches.
    let mut s2 = session_as(&agent, scheduler("s2"), None, &folder)
        .await
        .unwrap();
    let answer = s2.call(&Request::Watch { path: folder }).await.unwrap();
    assert_eq!(answer, Response::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_unexpected_request_is_not_echoed_back_or_logged_whole() {
    let agent = TestAgent::new();
    let (mut near, served) = agent.serve();
    let huge = Request::WriteState {
        name: "x".into(),
        bytes: vec![0xff; 1 << 20],
    };
    frame::write(&mut near, &huge).await.unwrap();
    let reason = refusal(&mut near).await;
    assert!(reason.len() < 400, "a refusal of {} bytes", reason.len());
    outcome(served).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_pushes_only_to_the_agents_this_one_lists_as_peers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(ServedRoot::open_to_all(dir.path().to_path_buf()));
    config.peers.insert("nas2".into(), "127.0.0.1:1".into());
    let agent = TestAgent::configured(config, dir);
    let folder = agent.folder();
    let (mut s1, _served) = agent.client().await;
    let run = run_to(&folder, "intranet-db", "127.0.0.1:5432");
    let answer = s1.call(&run).await.unwrap();
    let refusal = failed(&answer);
    assert_eq!(refusal.kind, ErrorKind::PermissionDenied, "{answer:?}");
    assert!(
        refusal.message.contains("not among this agent's peers"),
        "{answer:?}"
    );
}

/// A state file written in parts lands whole or not at all: parts out of order, or a session
/// that ends before the last part, leave the state before in place and nothing beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_written_in_parts_lands_whole_or_not_at_all() {
    let agent = TestAgent::new();
    let state = agent.root.path().join(".ferry/sync-docs.json");
    let part = |from: u64, bytes: &[u8], last: bool| Request::WriteStatePart {
        name: "sync-docs.json".into(),
        from,
        bytes: bytes.to_vec(),
        last,
    };
    let (mut s1, _served) = agent.client().await;
    for request in [part(0, b"the ", false), part(4, b"one before", true)] {
        assert_eq!(s1.call(&request).await.unwrap(), Response::Done);
    }
    assert_eq!(std::fs::read(&state).unwrap(), b"the one before");

    // A part that skips bytes, and one of a write never begun, are refused.
    assert_eq!(
        s1.call(&part(0, b"half", false)).await.unwrap(),
        Response::Done
    );
    for late in [part(9, b"gap", true), part(4, b" after", true)] {
        let refused = s1.call(&late).await.unwrap();
        assert!(matches!(refused, Response::Failed(_)), "{refused:?}");
    }
    // A session that ends before its last part.
    assert_eq!(
        s1.call(&part(0, b"cut off", false)).await.unwrap(),
        Response::Done
    );
    drop(s1);
    let (mut s2, _served) = agent.client().await;
    let asked = Request::ReadStatePart {
        name: "sync-docs.json".into(),
        from: 4,
    };
    let read = s2.call(&asked).await.unwrap();
    let Response::StatePart {
        bytes: Some(rest),
        size: 14,
    } = read
    else {
        panic!("{read:?}");
    };
    assert_eq!(rest.as_slice(), b"one before");
    // Give the abandoned writer a moment to remove its temporary file.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let beside: Vec<_> = std::fs::read_dir(state.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["sync-docs.json"], "nothing left beside the state");
}
