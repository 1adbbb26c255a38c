//! Sessions over in-memory pipes: the real session code on one end, a client (or a peer
//! writing raw bytes) on the other.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use ferry_engine::Scope;
use ferry_engine::endpoint::{Endpoint, LocalEndpoint};
use ferry_engine::filter::Filter;
use ferry_engine::tree::{Entry, Mtime};
use ferry_wire::client::{ClientError, Dial, Session as Client};
use ferry_wire::frame::{self, Attached, FrameError};
use ferry_wire::protocol::{DataOp, OLDEST_PROTOCOL, PROTOCOL_VERSION, Request, Response};
use ferry_wire::remote::RemoteEndpoint;
use ferry_wire::transport;

use ferry_engine::Fence;
use ferry_wire::identity::{Peer, Role};

use super::run;
use crate::config::{Limits, ServedRoot};
use crate::fences::Fences;
use crate::serve::{Agent, AgentConfig};

/// A TLS configuration with no identity: sessions in memory never use it.
pub(super) fn unused_tls() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.3")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Arc::new(config)
}

/// An agent serving one temporary folder, and sessions with it over in-memory pipes.
pub(super) struct TestAgent {
    pub(super) agent: Arc<Agent>,
    pub(super) root: tempfile::TempDir,
    stopping: watch::Sender<bool>,
}

impl TestAgent {
    pub(super) fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        Self::serving(ServedRoot::open_to_all(root.path().to_path_buf()), root)
    }

    /// An agent serving `root` (whose folder is `dir`) as configured there.
    pub(super) fn serving(root: ServedRoot, dir: tempfile::TempDir) -> Self {
        Self::configured(config(root), dir)
    }

    /// An agent as `config` says, serving the folder `dir`.
    pub(super) fn configured(config: AgentConfig, dir: tempfile::TempDir) -> Self {
        let agent = Arc::new(Agent::new(config, Fences::load(None, &[]).unwrap()));
        Self {
            agent,
            root: dir,
            stopping: watch::channel(false).0,
        }
    }

    pub(super) fn folder(&self) -> String {
        self.root.path().display().to_string()
    }

    /// Starts a session with scheduler s1; returns the peer's end of the pipe and the
    /// session's outcome.
    pub(super) fn serve(&self) -> (DuplexStream, JoinHandle<Result<(), FrameError>>) {
        self.serve_to(scheduler("s1"))
    }

    /// Starts a session with `peer`, as its certificate would name it.
    pub(super) fn serve_to(
        &self,
        peer: Peer,
    ) -> (DuplexStream, JoinHandle<Result<(), FrameError>>) {
        let (near, far) = tokio::io::duplex(1 << 20);
        let (agent, stop) = (self.agent.clone(), self.stopping.subscribe());
        let served =
            tokio::spawn(
                async move { run(transport::buffered(far), None, &agent, peer, stop).await },
            );
        (near, served)
    }

    /// A client session of scheduler s1, under a lease, with the folder open.
    pub(super) async fn client(&self) -> (Client, JoinHandle<Result<(), FrameError>>) {
        let (near, served) = self.serve();
        let mut client = Client::start(near, "s1", Some(lease()), "nas1", Arc::default())
            .await
            .unwrap();
        let open = Request::Open {
            path: self.folder(),
            create: false,
        };
        assert_eq!(client.call(&open).await.unwrap(), Response::Done);
        (client, served)
    }
}

/// Agent nas1's configuration, serving `root` and nothing else.
pub(super) fn config(root: ServedRoot) -> AgentConfig {
    AgentConfig {
        name: "nas1".into(),
        roots: vec![root],
        peers: Default::default(),
        limits: Limits::default(),
        client_tls: unused_tls(),
        state_dir: None,
        full_scan_every: None,
    }
}

pub(super) fn scheduler(name: &str) -> Peer {
    Peer {
        name: name.into(),
        role: Role::Scheduler,
    }
}

/// The lease the test sessions work under.
pub(super) fn lease() -> Fence {
    // Confirmed: the database vouches for it, as for a scheduler that reaches it.
    Fence {
        confirmed: true,
        ..Fence::new("job:docs", 1)
    }
}

pub(super) fn file_entry(size: u64) -> Entry {
    let mtime = Mtime {
        secs: 2_000_000_000,
        nanos: 0,
    };
    Entry::file(size, mtime, 0o644)
}

/// The requests that send `bytes` as the whole file `name`.
pub(super) fn file_requests(name: &str, bytes: &[u8]) -> [Request; 3] {
    let write = Request::WriteFile {
        path: name.into(),
        entry: file_entry(bytes.len() as u64),
        block_size: None,
        expected: None,
        xattrs: None,
    };
    let ops = vec![DataOp::Literal(Attached::new(bytes.to_vec()))];
    let hash = blake3::hash(bytes).as_bytes().to_vec();
    [write, Request::Data { ops }, Request::DataEnd { hash }]
}

/// Sends `bytes` as the whole file `name`, without waiting for its verdict.
pub(super) async fn send_file(client: &mut Client, name: &str, bytes: &[u8]) {
    for request in file_requests(name, bytes) {
        client.send(&request).await.unwrap();
    }
}

/// A session opened by hand over the raw pipe, for peers that misbehave.
pub(super) async fn raw_session(
    agent: &TestAgent,
) -> (DuplexStream, JoinHandle<Result<(), FrameError>>) {
    let (mut near, served) = agent.serve();
    let hello = Request::Hello {
        version: PROTOCOL_VERSION,
        newest: None,
        client: "s1".into(),
        fence: Some(lease()),
    };
    frame::write(&mut near, &hello).await.unwrap();
    let welcome: Response = frame::read(&mut near).await.unwrap();
    assert!(matches!(welcome, Response::Welcome { .. }), "{welcome:?}");
    let open = Request::Open {
        path: agent.folder(),
        create: false,
    };
    frame::write(&mut near, &open).await.unwrap();
    assert_eq!(
        frame::read::<Response>(&mut near).await.unwrap(),
        Response::Done
    );
    (near, served)
}

/// The reason of the `Refused` the agent answers.
pub(super) async fn refusal(near: &mut DuplexStream) -> String {
    match frame::read(near).await.unwrap() {
        Response::Refused { reason } => reason,
        other => panic!("{other:?} instead of Refused"),
    }
}

pub(super) async fn outcome(served: JoinHandle<Result<(), FrameError>>) -> Result<(), FrameError> {
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the session neither ended nor hung up")
        .expect("the session panicked")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_whole_is_put_in_place_and_its_verdict_comes_before_the_next_answer() {
    let agent = TestAgent::new();
    let (mut client, _served) = agent.client().await;
    send_file(&mut client, "report.txt", b"quarterly numbers\n").await;
    client.send(&Request::Ping { nonce: 7 }).await.unwrap();
    let verdict = client.receive().await.unwrap();
    assert_eq!(
        verdict,
        Response::Verdict {
            bytes: 18,
            error: None
        }
    );
    assert_eq!(client.receive().await.unwrap(), Response::Pong { nonce: 7 });
    let written = std::fs::read(agent.root.path().join("report.txt")).unwrap();
    assert_eq!(written, b"quarterly numbers\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_before_hello_is_refused_with_the_reason() {
    let agent = TestAgent::new();
    let (mut near, served) = agent.serve();
    frame::write(&mut near, &Request::Ping { nonce: 1 })
        .await
        .unwrap();
    let reason = refusal(&mut near).await;
    assert!(reason.contains("expected Hello first"), "{reason}");
    outcome(served).await.unwrap();
}

/// What the agent answers a `Hello` from `s1` speaking protocols `oldest` to `newest`.
async fn answer_to_hello(oldest: u32, newest: Option<u32>) -> Response {
    let agent = TestAgent::new();
    let (mut near, _served) = agent.serve();
    let hello = Request::Hello {
        version: oldest,
        newest,
        client: "s1".into(),
        fence: None,
    };
    frame::write(&mut near, &hello).await.unwrap();
    frame::read(&mut near).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_one_protocol_behind_is_served_in_its_version_and_a_newer_one_in_ours() {
    // A client of the previous release says only its version.
    let answer = answer_to_hello(OLDEST_PROTOCOL, None).await;
    assert!(
        matches!(answer, Response::Welcome { version, .. } if version == OLDEST_PROTOCOL),
        "{answer:?}"
    );
    // A client of a later release says its range; the newest both speak is ours.
    let answer = answer_to_hello(OLDEST_PROTOCOL, Some(PROTOCOL_VERSION + 2)).await;
    assert!(
        matches!(answer, Response::Welcome { version, .. } if version == PROTOCOL_VERSION),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_range_that_misses_ours_is_refused_by_number() {
    let ours = format!("speaks versions {OLDEST_PROTOCOL} to {PROTOCOL_VERSION}");
    for (oldest, newest) in [
        (OLDEST_PROTOCOL - 1, None),
        (PROTOCOL_VERSION + 1, Some(PROTOCOL_VERSION + 3)),
    ] {
        match answer_to_hello(oldest, newest).await {
            Response::Refused { reason } => assert!(reason.contains(&ours), "{reason}"),
            other => panic!("{other:?} instead of Refused"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_handshake_ends_that_session_with_an_error() {
    let agent = TestAgent::new();
    let (mut near, served) = raw_session(&agent).await;
    // A plausible length, then bytes that are no message.
    near.write_all(&[0, 0, 0, 12]).await.unwrap();
    near.write_all(&[0xc1; 12]).await.unwrap();
    let ended = outcome(served).await;
    assert!(matches!(ended, Err(FrameError::Malformed(_))), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_mid_frame_ends_the_session_and_its_checked_files_stay() {
    let agent = TestAgent::new();
    let (mut near, served) = raw_session(&agent).await;
    for request in file_requests("kept.txt", b"checked before the peer went") {
        frame::write(&mut near, &request).await.unwrap();
    }
    // Half of a frame, then the peer is gone.
    let request = frame::encode(&Request::Ping { nonce: 3 }, frame::Data::Raw).unwrap();
    near.write_all(&request[..request.len() / 2]).await.unwrap();
    drop(near);
    let ended = outcome(served).await;
    assert!(
        matches!(&ended, Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof),
        "{ended:?}"
    );
    let kept = std::fs::read(agent.root.path().join("kept.txt")).unwrap();
    assert_eq!(kept, b"checked before the peer went");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_inside_a_batch_is_refused() {
    let agent = TestAgent::new();
    let (mut client, served) = agent.client().await;
    let nested = Request::Batch(vec![Request::Batch(vec![Request::Ping { nonce: 1 }])]);
    client.send(&nested).await.unwrap();
    assert!(client.receive().await.is_err(), "the session ends");
    let ended = outcome(served).await;
    assert!(
        matches!(&ended, Err(FrameError::Unexpected(m)) if m.contains("batch inside a batch")),
        "{ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_agent_ends_an_idle_session_after_putting_its_files_in_place() {
    let agent = TestAgent::new();
    let (mut near, served) = raw_session(&agent).await;
    for request in file_requests("late.txt", b"sent just before the stop") {
        frame::write(&mut near, &request).await.unwrap();
    }
    // Give the session time to take the file in before the stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    agent.stopping.send(true).unwrap();
    outcome(served).await.unwrap();
    assert_eq!(
        frame::read::<Response>(&mut near).await.unwrap(),
        Response::Verdict {
            bytes: 25,
            error: None
        }
    );
    let kept = std::fs::read(agent.root.path().join("late.txt")).unwrap();
    assert_eq!(kept, b"sent just before the stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_told_something_else_than_welcome_fails_with_what_it_got() {
    let (near, mut far) = tokio::io::duplex(1 << 16);
    let agent = tokio::spawn(async move {
        let _hello: Request = frame::read(&mut far).await.unwrap();
        frame::write(&mut far, &Response::Pong { nonce: 0 })
            .await
            .unwrap();
    });
    let started = Client::start(near, "s1", None, "nas1", Arc::default()).await;
    assert!(
        matches!(&started, Err(ClientError::Frame { source: FrameError::Unexpected(m), .. }) if m.contains("Pong")),
        "{:?}",
        started.err()
    );
    agent.await.unwrap();
}

/// The remote endpoint and the agent's session, end to end in memory: the engine mirrors a
/// local folder into the agent's folder through them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_mirrors_into_an_agent_through_a_remote_endpoint_in_memory() {
    let agent = TestAgent::new();
    let source = tempfile::tempdir().unwrap();
    std::fs::create_dir(source.path().join("docs")).unwrap();
    for i in 0..300 {
        let text = format!("file {i}\n").repeat(i + 1);
        std::fs::write(source.path().join(format!("docs/{i}.txt")), text).unwrap();
    }
    let shared = Arc::new(agent);
    let destination = remote_endpoint(&shared);
    let spec = ferry_engine::JobSpec {
        name: "docs".into(),
        rule: ferry_engine::Rule::Mirror,
        source: Arc::new(LocalEndpoint::new(source.path())),
        destinations: vec![Arc::new(destination)],
        filter: Filter::default(),
        guards: Default::default(),
        full_scan_every: None,
    };
    let summary = ferry_wire::blocking::spawn(move || {
        let halt = ferry_engine::Halt::fenced(lease());
        ferry_engine::run::run(&spec, &Scope::Full, &halt, &mut |_| {})
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(summary.files_copied, 300);
    assert_eq!(summary.failures, 0, "{:?}", summary.first_failure);
    let replica = LocalEndpoint::new(shared.root.path());
    let copied = replica.scan(&Scope::Full, &Filter::default()).unwrap();
    assert_eq!(copied.len(), 301, "the folder and its 300 files");
    let last = std::fs::read_to_string(shared.root.path().join("docs/299.txt")).unwrap();
    assert_eq!(last, "file 299\n".repeat(300));
}

/// A `RemoteEndpoint` on `agent`'s folder, each of its sessions served in memory.
fn remote_endpoint(agent: &Arc<TestAgent>) -> RemoteEndpoint {
    let serving = agent.clone();
    let connect: ferry_wire::client::Connector = Arc::new(move |fence, wire| {
        let serving = serving.clone();
        Box::pin(async move {
            let (near, _served) = serving.serve();
            Client::start(near, "s1", fence, "nas1", wire).await
        })
    });
    let dial = Dial {
        agent: "nas1".into(),
        address: "in memory".into(),
        client: "s1".into(),
        tls: unused_tls(),
    };
    let runtime = tokio::runtime::Handle::current();
    RemoteEndpoint::with_connector(dial, connect, agent.folder(), runtime)
}

/// The agent sends a scan's entries while it walks, in frames of a few thousand: a scan of
/// more than one frame arrives whole, as the folder holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_streamed_in_frames_lists_what_the_folder_holds() {
    let agent = Arc::new(TestAgent::new());
    for (folder, files) in [("a", 2_000), ("a.b", 500), ("b", 2_000)] {
        let folder = agent.root.path().join(folder);
        std::fs::create_dir(&folder).unwrap();
        for i in 0..files {
            std::fs::write(folder.join(i.to_string()), i.to_string()).unwrap();
        }
    }
    let remote = remote_endpoint(&agent);
    let listed = ferry_wire::blocking::spawn(move || {
        remote.prepare(false, Some(&lease()))?;
        remote.scan(&Scope::Full, &Filter::default())
    })
    .await
    .unwrap()
    .unwrap();
    let here = LocalEndpoint::new(agent.root.path());
    assert_eq!(listed.len(), 4_503, "three folders and their files");
    assert_eq!(listed, here.scan(&Scope::Full, &Filter::default()).unwrap());
}

/// A sync job whose source is on an agent, run where the scheduler is, keeps its base in the
/// source's `.ferry` folder through the session. Past 60,000 files the base is larger than a
/// frame: it travels in parts (protocol 14), and the next run reads it back, which is how it
/// knows that a file missing at the destination was deleted there and is not new at the
/// source. Here the paths are long, so 2,200 files make a base of over 8 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_base_larger_than_a_frame_is_kept_on_the_agent_and_read_back() {
    let agent = Arc::new(TestAgent::new());
    let names = deep_files(agent.root.path());
    let destination = tempfile::tempdir().unwrap();
    let remote: Arc<dyn Endpoint> = Arc::new(remote_endpoint(&agent));
    let spec = job(ferry_engine::Rule::Sync, remote, destination.path());
    let first = run_job(&spec).await;
    assert_eq!(first.files_copied, 2_200, "{:?}", first.first_failure);
    let base = agent.root.path().join(".ferry/sync-docs.json");
    let size = std::fs::metadata(&base).unwrap().len();
    assert!(size > frame::MAX_FRAME as u64, "the base is {size} bytes");

    std::fs::remove_file(destination.path().join(&names[7])).unwrap();
    let second = run_job(&spec).await;
    assert_eq!(second.failures, 0, "{:?}", second.first_failure);
    assert_eq!((second.files_copied, second.files_deleted), (0, 1));
    assert!(
        !agent.root.path().join(&names[7]).exists(),
        "deleted at the source too"
    );
}

/// Paths of 4 KiB, the longest a scan lists, sent to an agent and scanned there: scans and
/// requests sent without waiting go in frames sized by what they carry, not by their count
/// alone, so none is over the limit (2,200 entries or removals of such paths are 9 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_with_the_longest_paths_are_mirrored_to_an_agent_and_removed_there() {
    let agent = Arc::new(TestAgent::new());
    let source = tempfile::tempdir().unwrap();
    let names = deep_files(source.path());
    let deep = names[0].parent().unwrap();
    let here: Arc<dyn Endpoint> = Arc::new(LocalEndpoint::new(source.path()));
    let mut spec = job(ferry_engine::Rule::Mirror, here, agent.root.path());
    spec.destinations = vec![Arc::new(remote_endpoint(&agent))];
    let copied = run_job(&spec).await;
    assert_eq!(copied.failures, 0, "{:?}", copied.first_failure);
    assert_eq!(copied.files_copied, 2_200);
    let there = agent.root.path().join(deep);
    assert_eq!(std::fs::read_dir(&there).unwrap().count(), 2_200);

    std::fs::remove_dir_all(source.path().join(deep)).unwrap();
    std::fs::create_dir_all(source.path().join(deep)).unwrap();
    let removed = run_job(&spec).await;
    assert_eq!(removed.failures, 0, "{:?}", removed.first_failure);
    assert_eq!(removed.files_deleted, 2_200);
    assert_eq!(std::fs::read_dir(&there).unwrap().count(), 0);
}

/// 2,200 files in `root`, each at a path of 3,969 bytes: 15 folders of 250-byte names.
fn deep_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let deep: std::path::PathBuf = (0..15).map(|i| format!("{i:0>250}")).collect();
    std::fs::create_dir_all(root.join(&deep)).unwrap();
    let names: Vec<_> = (0..2_200)
        .map(|i| deep.join(format!("{i:0>200}")))
        .collect();
    for name in &names {
        std::fs::write(root.join(name), "x").unwrap();
    }
    names
}

/// Job "docs" under `rule` from `source` to the local folder `destination`.
fn job(
    rule: ferry_engine::Rule,
    source: Arc<dyn Endpoint>,
    destination: &std::path::Path,
) -> ferry_engine::JobSpec {
    ferry_engine::JobSpec {
        name: "docs".into(),
        rule,
        source,
        destinations: vec![Arc::new(LocalEndpoint::new(destination))],
        filter: Filter::default(),
        guards: Default::default(),
        full_scan_every: None,
    }
}

/// One full run of `spec` under the test lease.
async fn run_job(spec: &ferry_engine::JobSpec) -> ferry_engine::Summary {
    let spec = spec.clone();
    ferry_wire::blocking::spawn(move || {
        let halt = ferry_engine::Halt::fenced(lease());
        ferry_engine::run::run(&spec, &Scope::Full, &halt, &mut |_| {})
    })
    .await
    .unwrap()
    .unwrap()
}
