//! Attacks on real `ferry-agent` and `ferry` processes, as the security review tried them:
//! sockets held open without a word, more of them than the agent has descriptors, and job rows
//! naming folders a scheduler must not touch. (Attacks by peers that hold a certificate are
//! tested on the agent's sessions in memory, in `agent/service/src/session/attacks.rs`.)

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_tests::harness::{Backend, Env, TestAgent, wait_until};

/// An agent on `root` whose handshakes must finish within a second, and which may hold no
/// more than `open_files` descriptors.
fn impatient_agent(env: &Env, root: &Path, tls: &Path, open_files: u32) -> TestAgent {
    let config = env.path("agent.toml");
    let limits = "[limits]\nhandshake_seconds = 1\nmax_connections_per_address = 10000\n";
    std::fs::write(&config, limits).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let extra = ["--config", config.as_str()];
    TestAgent::start_with(env, "nas1", &[root], tls, &extra, Some(open_files))
}

/// Whether the agent hung up on `socket` within `within` (a read sees the end, or an error).
fn hung_up(socket: &mut TcpStream, within: Duration) -> bool {
    socket.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    match socket.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn silent_sockets_beyond_the_agents_descriptors_are_dropped_and_a_good_client_is_served() {
    let env = Env::new(Backend::Sqlite);
    let root = env.path("srv");
    std::fs::create_dir_all(&root).unwrap();
    let tls = env.tls_folder(&["nas1"], &["s1"]);
    let agent = impatient_agent(&env, &root, &tls, 64);
    env.ferry(&["agent", "add", "nas1", "--address", &agent.address])
        .ok();
    let log_before = agent.log().len();

    // Twice as many silent sockets as the agent has descriptors: it runs out of them.
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..128)
        .map(|_| TcpStream::connect(&agent.address).unwrap())
        .collect();

    // Every one is dropped, the first within the handshake deadline, the rest as descriptors
    // come free.
    let dropped = (silent.iter_mut())
        .map(|socket| hung_up(socket, Duration::from_secs(30)))
        .filter(|&dropped| dropped)
        .count();
    assert_eq!(dropped, silent.len(), "silent sockets held open");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "dropping them took {took:?}"
    );

    // The agent serves a good client, and did not flood its log meanwhile.
    let tls_dir = tls.to_str().unwrap();
    let test = ["agent", "test", "nas1", "--tls-dir", tls_dir, "--as", "s1"];
    let served = wait_until(Duration::from_secs(20), || env.ferry(&test).code == 0);
    assert!(served, "a good client was not served:\n{}", agent.log());
    let logged = agent.log().len() - log_before;
    assert!(
        logged < 1 << 20,
        "{logged} bytes of log for {} sockets",
        silent.len()
    );
}

#[test]
fn a_peer_that_finishes_tls_but_never_says_hello_is_dropped() {
    let env = Env::new(Backend::Sqlite);
    let root = env.path("srv");
    std::fs::create_dir_all(&root).unwrap();
    let tls = env.tls_folder(&["nas1"], &["s1"]);
    let agent = impatient_agent(&env, &root, &tls, 1024);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let waited = runtime.block_on(async {
        use tokio::io::AsyncReadExt;
        let config: Arc<_> = ferry_wire::tls::client_config(&tls, "s1").unwrap();
        let tcp = tokio::net::TcpStream::connect(&agent.address)
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("nas1").unwrap();
        let mut session = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let read = session.read_to_end(&mut rest);
        // The end of the stream, or a reset: either way, the agent hung up.
        let _ = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the agent kept a silent peer");
        started.elapsed()
    });
    assert!(waited < Duration::from_secs(5), "dropped after {waited:?}");
    agent.wait_for_log("no Hello within", Duration::from_secs(5));
}

/// The review's attack: whoever can write job rows points a job at a folder the scheduler's
/// host holds dear. A scheduler touches only the folders it was allowed.
#[test]
fn a_job_naming_a_local_folder_outside_the_allowed_ones_touches_nothing() {
    use ferry_tests::harness::TestScheduler;

    let env = Env::new(Backend::Sqlite);
    let (allowed, precious) = (env.path("allowed"), env.path("precious"));
    std::fs::create_dir_all(allowed.join("src")).unwrap();
    std::fs::write(allowed.join("src/one.txt"), "one").unwrap();
    std::fs::create_dir_all(&precious).unwrap();
    for name in ["a", "b", "c"] {
        std::fs::write(precious.join(name), "keep me").unwrap();
    }
    let text = |p: &Path| p.to_str().unwrap().to_owned();
    let allow = text(&allowed);
    let _scheduler = TestScheduler::start(&env, "s1", &["--allow", &allow]);

    let (from, to) = (text(&allowed.join("src")), text(&precious));
    let job = [
        "job", "add", "steal", "--rule", "mirror", "--from", &from, "--to", &to,
    ];
    env.ferry(&job).ok();
    let yearly = [
        "schedule",
        "add",
        "steal",
        "--job",
        "steal",
        "--cron",
        "0 0 1 1 *",
    ];
    env.ferry(&yearly).ok();
    env.ferry(&["schedule", "run", "steal"]).ok();

    let problem = || env.sql_text("SELECT last_error FROM schedules WHERE name = 'steal'");
    let reported = wait_until(Duration::from_secs(20), || problem().is_some());
    let problem = problem().unwrap_or_default();
    assert!(reported, "no problem reported");
    assert!(
        problem.contains("outside the folders this scheduler may use") && problem.contains(&to),
        "{problem}"
    );
    for name in ["a", "b", "c"] {
        let kept = std::fs::read_to_string(precious.join(name)).unwrap();
        assert_eq!(kept, "keep me", "{name} was touched");
    }
    let runs = env.sql_text("SELECT CAST(count(*) AS TEXT) FROM runs");
    assert_eq!(runs.as_deref(), Some("0"), "a run started");
}
