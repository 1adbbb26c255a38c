//! Agents: `ferry ca` certificates, `ferry-agent run` as a process, `ferry agent add|test`, and
//! what an agent refuses (plain TCP, a certificate from another CA) while it goes on serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ferry_tests::harness::{Backend, Env, Run, TestAgent};

/// `ferry agent test nas1` as the scheduler `s1`, whose certificate is in `tls`.
fn test_nas1(env: &Env, tls: &std::path::Path) -> Run {
    let tls = tls.to_str().unwrap();
    let args = [
        "--output",
        "json",
        "agent",
        "test",
        "nas1",
        "--tls-dir",
        tls,
        "--as",
        "s1",
    ];
    env.ferry(&args)
}

#[test]
fn an_agent_serves_authenticated_peers_and_refuses_the_rest() {
    let env = Env::new(Backend::Sqlite);
    let (tls, other) = (env.path("tls"), env.path("other-ca"));
    let root = env.path("srv");
    std::fs::create_dir_all(&root).unwrap();
    let dir = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    assert_eq!(env.tls_folder(&["nas1"], &["s1"]), tls);
    env.ferry(&["ca", "init", "--dir", &dir(&other)]).ok();
    let intruder = ["ca", "issue", "--dir", &dir(&other), "--role", "scheduler"];
    env.ferry(&[&intruder[..], &["intruder"]].concat()).ok();
    // The intruder knows our CA (so it trusts the agent) but its own certificate is not ours.
    std::fs::copy(tls.join("ca.pem"), other.join("ca.pem")).unwrap();

    let agent = TestAgent::start(&env, "nas1", &[&root], &tls);
    env.ferry(&["agent", "add", "nas1", "--address", &agent.address])
        .ok();
    let test = || test_nas1(&env, &tls);
    let report = test().ok().json();
    assert_eq!(report["name"], "nas1");
    assert_eq!(report["reachable"], true);
    assert_eq!(report["roots"][0], root.to_str().unwrap());
    assert!(
        report["round_trip_ms"]
            .as_f64()
            .is_some_and(|ms| ms < 1000.0),
        "{report}"
    );

    // Plain TCP: the agent closes the connection.
    let mut plain = TcpStream::connect(&agent.address).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    let answered = plain.read(&mut buf).unwrap_or(0);
    assert!(answered < buf.len(), "a plain client got a conversation");
    agent.wait_for_log("TLS handshake failed", Duration::from_secs(5));

    // A certificate from another CA: refused, with a message that says what to check.
    let refused = env.ferry(&[
        "agent",
        "test",
        "nas1",
        "--tls-dir",
        &dir(&other),
        "--as",
        "intruder",
    ]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("nas1"), "{}", refused.stderr);

    // ... and the agent goes on serving everyone else.
    assert_eq!(test().ok().json()["name"], "nas1");
    let agent_list = || {
        let args = [
            "--output",
            "json",
            "agent",
            "list",
            "--tls-dir",
            &dir(&tls),
            "--as",
            "s1",
        ];
        env.ferry(&args).ok().json()
    };
    let list = agent_list();
    assert_eq!(list[0]["reachable"], true, "{list:#}");
    assert!(list[0]["software"].is_string(), "{list:#}");
    drop(agent);
    let list = agent_list();
    assert_eq!(list[0]["reachable"], false, "{list:#}");
    assert!(
        list[0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach agent nas1"),
        "{list:#}"
    );
    let unknown = env.ferry(&[
        "agent",
        "test",
        "nas9",
        "--tls-dir",
        &dir(&tls),
        "--as",
        "s1",
    ]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
}

/// A peer with a valid certificate whose TLS records do not open after the handshake (the
/// stream altered on its way): the agent closes that connection with the reason, uses nothing
/// of it, and goes on serving everyone else.
#[test]
fn a_record_that_does_not_open_closes_that_session_only() {
    use ferry_wire::frame;
    use ferry_wire::protocol::{PROTOCOL_VERSION, Request, Response};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let env = Env::new(Backend::Sqlite);
    let tls = env.path("tls");
    let root = env.path("srv");
    std::fs::create_dir_all(&root).unwrap();
    assert_eq!(env.tls_folder(&["nas1"], &["s1"]), tls);
    let agent = TestAgent::start(&env, "nas1", &[&root], &tls);
    env.ferry(&["agent", "add", "nas1", "--address", &agent.address])
        .ok();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answered = runtime.block_on(async {
        let config = ferry_wire::tls::client_config(&tls, "s1").unwrap();
        let tcp = tokio::net::TcpStream::connect(&agent.address)
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("nas1").unwrap();
        let mut session = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            newest: None,
            client: "s1".into(),
            fence: None,
        };
        frame::write(&mut session, &hello).await.unwrap();
        let welcome: Response = frame::read(&mut session).await.unwrap();
        assert!(matches!(welcome, Response::Welcome { .. }), "{welcome:?}");
        // Where a request belongs: a well-formed TLS 1.3 application-data record whose
        // authentication tag is wrong.
        let (mut tcp, _) = session.into_inner();
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 48];
        record.extend_from_slice(&[0x5a; 48]);
        tcp.write_all(&record).await.unwrap();
        // At most a TLS alert comes back, never an answer: then the agent hangs up.
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut back))
            .await
            .expect("the agent neither answered nor hung up")
            .ok();
        back
    });
    assert!(
        answered.len() < 64
            && answered
                .first()
                .is_none_or(|&kind| kind == 0x15 || kind == 0x17),
        "the agent answered a record that did not open: {answered:?}"
    );
    agent.wait_for_log("closed connection", Duration::from_secs(5));
    assert_eq!(test_nas1(&env, &tls).ok().json()["reachable"], true);
}
