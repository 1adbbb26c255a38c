//! A remote endpoint against a scripted agent over an in-memory pipe: what it makes of an
//! agent that answers out of order, sends garbage, or stops mid-frame.

use std::sync::Arc;
use std::time::Duration;

use ferry_engine::endpoint::{Endpoint, Failure};
use ferry_engine::filter::Filter;
use tokio::io::{AsyncWriteExt, DuplexStream};

use super::RemoteEndpoint;
use crate::blocking;
use crate::client::{Connector, Dial, Session};
use crate::frame;
use crate::protocol::{OLDEST_PROTOCOL, PROTOCOL_VERSION, Request, Response};

/// What the scripted agent does after its `Welcome`, for each request in turn.
#[derive(Clone)]
enum Step {
    Answer(Response),
    /// Bytes that are not a frame, then nothing more.
    Garbage,
    /// The first half of a frame, then the connection closes.
    HalfFrame,
}

/// Plays `steps` to the requests of one session, as an agent named `nas1` would, one release
/// behind: it speaks the oldest protocol this build does, and compares `Hello.version` with
/// it as such agents do.
async fn agent(mut stream: DuplexStream, steps: Vec<Step>) {
    let hello: Request = frame::read(&mut stream).await.unwrap();
    assert!(
        matches!(
            hello,
            Request::Hello {
                version: OLDEST_PROTOCOL,
                newest: Some(PROTOCOL_VERSION),
                ..
            }
        ),
        "{hello:?}"
    );
    let welcome = Response::Welcome {
        version: OLDEST_PROTOCOL,
        agent: "nas1".into(),
        software: "test".into(),
        roots: vec!["/srv".into()],
        keeps: Default::default(),
    };
    frame::write(&mut stream, &welcome).await.unwrap();
    for step in steps {
        let Ok(_request) = frame::read::<Request>(&mut stream).await else {
            return;
        };
        let last = !matches!(step, Step::Answer(_));
        let bytes = match step {
            Step::Answer(response) => frame::encode(&response, frame::Data::Raw).unwrap(),
            Step::Garbage => vec![0, 0, 0, 9, 0xc1, 0xc1, 0xc1],
            Step::HalfFrame => {
                let whole = frame::encode(&Response::Done, frame::Data::Raw).unwrap();
                whole[..whole.len() / 2].to_vec()
            }
        };
        stream.write_all(&bytes).await.unwrap();
        if last {
            return;
        }
    }
}

/// An endpoint on `/srv/docs` whose every session meets an agent playing `steps`.
fn endpoint(steps: Vec<Step>) -> RemoteEndpoint {
    let connect: Connector = Arc::new(move |fence, wire| {
        let steps = steps.clone();
        Box::pin(async move {
            let (near, far) = tokio::io::duplex(1 << 16);
            tokio::spawn(agent(far, steps));
            Session::start(near, "s1", fence, "nas1", wire).await
        })
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let dial = Dial {
        agent: "nas1".into(),
        address: "in memory".into(),
        client: "s1".into(),
        tls: Arc::new(tls),
    };
    RemoteEndpoint::with_connector(
        dial,
        connect,
        "/srv/docs",
        tokio::runtime::Handle::current(),
    )
}

/// Runs `call` on the engine's side of the boundary, within a few seconds.
async fn on_engine_thread<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::time::timeout(Duration::from_secs(10), blocking::spawn(call))
        .await
        .expect("the call neither answered nor failed")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_one_protocol_behind_is_spoken_to_in_its_version() {
    let (near, far) = tokio::io::duplex(1 << 16);
    tokio::spawn(agent(far, vec![]));
    let wire = Arc::default();
    let session = Session::start(near, "s1", None, "nas1", wire)
        .await
        .unwrap();
    assert_eq!(session.protocol, OLDEST_PROTOCOL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_out_of_order_fails_the_call_and_names_the_agent() {
    let remote = endpoint(vec![Step::Answer(Response::Pong { nonce: 1 })]);
    let error = on_engine_thread(move || remote.prepare(false, None))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("nas1:/srv/docs"), "{message}");
    assert!(message.contains("Pong"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_agent_fails_the_call_as_unreachable() {
    let remote = endpoint(vec![Step::Garbage]);
    let error = on_engine_thread(move || remote.prepare(false, None))
        .await
        .unwrap_err();
    assert_eq!(error.failure, Failure::Unreachable, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_stops_mid_frame_fails_the_scan_and_the_next_run_reconnects() {
    let remote = Arc::new(endpoint(vec![
        Step::Answer(Response::Done),
        Step::HalfFrame,
    ]));
    let scanning = remote.clone();
    let scanned = on_engine_thread(move || {
        scanning.prepare(false, None)?;
        scanning.scan(&ferry_engine::Scope::Full, &Filter::default())
    })
    .await;
    let error = scanned.unwrap_err();
    assert_eq!(error.failure, Failure::Unreachable, "{error}");
    // The broken session is dropped: a call now says so instead of reading a stale stream.
    let after = on_engine_thread(move || remote.stat(std::path::Path::new("a"))).await;
    assert!(after.unwrap_err().to_string().contains("no session"));
}

#[tokio::test]
async fn a_call_from_an_async_task_is_an_error_not_a_panic() {
    let remote = endpoint(vec![Step::Answer(Response::Done)]);
    let error = remote.prepare(false, None).unwrap_err();
    assert!(error.to_string().contains("async task"), "{error}");
}

/// An agent lists a path no scan of a folder could: one leaving it, or one longer than
/// `PATH_MAX` (nothing in the folder can be opened by it). The scan fails as reaching
/// outside, naming the path by its start only, and nothing it sent is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_listing_a_path_no_folder_holds_fails_as_outside() {
    let long: std::path::PathBuf = std::iter::repeat_n("x".repeat(200), 30).collect();
    for path in [std::path::PathBuf::from("a/../../etc"), long] {
        let entries = vec![(path.clone(), ferry_engine::tree::Entry::folder(0o755))];
        let remote = endpoint(vec![
            Step::Answer(Response::Done),
            Step::Answer(Response::Scanned {
                entries,
                more: false,
            }),
        ]);
        let scanned = on_engine_thread(move || {
            remote.prepare(false, None)?;
            remote.scan(&ferry_engine::Scope::Full, &Filter::default())
        })
        .await;
        let error = scanned.unwrap_err();
        assert_eq!(
            error.failure,
            Failure::Outside,
            "{}: {error}",
            path.display()
        );
        assert!(error.to_string().len() < 600, "named by its start: {error}");
    }
}

/// An agent one release behind takes a state file in one frame: a small one goes whole, as
/// that agent expects; one larger than a frame is refused before it is sent, saying which
/// agent to upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_for_an_agent_before_parts_goes_whole_or_says_to_upgrade_it() {
    let remote = Arc::new(endpoint(vec![
        Step::Answer(Response::Done),
        Step::Answer(Response::Done),
    ]));
    let writing = remote.clone();
    on_engine_thread(move || {
        writing.prepare(false, None)?;
        writing.write_state_bytes("sync-docs.json", b"{}")
    })
    .await
    .unwrap();
    let error = on_engine_thread(move || {
        remote.write_state("sync-docs.json", &mut |out| {
            out.write_all(&vec![b' '; 9 << 20])
        })
    })
    .await
    .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("upgrade ferry-agent"), "{message}");
    assert!(message.contains("nas1"), "{message}");
}
