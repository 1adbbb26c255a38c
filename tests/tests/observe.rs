//! What an admin's monitoring sees: `/metrics`, `/healthz` and `/readyz` on schedulers and
//! agents (`--metrics-listen`), with values that move when runs happen, when a scheduler is
//! killed and when an agent refuses a peer.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ferry_tests::harness::{Backend, Env, TestAgent, TestScheduler, wait_until};

/// `GET path` on `address`: the status code and the body.
fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("the metrics port answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    (code, body.to_owned())
}

/// The value of the series `series` (name and labels, as printed) at `address`, 0 if absent.
fn value(address: &str, series: &str) -> f64 {
    let (_, body) = get(address, "/metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The address a process's log says its metrics port is bound to.
fn metrics_address(log: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains("serving /metrics"))
        .unwrap_or_else(|| panic!("no metrics port in the log:\n{log}"));
    let at = line.find("address=").expect("an address") + "address=".len();
    line[at..].split_whitespace().next().unwrap().to_owned()
}

fn scheduler_with_metrics(env: &Env, name: &str) -> (TestScheduler, String) {
    let scheduler = TestScheduler::start(env, name, &["--metrics-listen", "127.0.0.1:0"]);
    let address = metrics_address(&scheduler.log());
    (scheduler, address)
}

#[test]
fn scheduler_metrics_move_with_runs_and_failovers() {
    let env = Env::new(Backend::Sqlite);
    let (src, dst) = (env.path("src"), env.path("dst"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "twelve bytes").unwrap();
    env.add_job("j", "mirror", (&src, &dst), &[]);
    let yearly = ["--cron", "0 0 1 1 *", "--prefer", "s1"];
    env.ferry(&[&["schedule", "add", "s", "--job", "j"][..], &yearly].concat())
        .ok();
    let (s1, at1) = scheduler_with_metrics(&env, "s1");
    let (_s2, at2) = scheduler_with_metrics(&env, "s2");
    assert!(wait_until(Duration::from_secs(10), || value(
        &at1,
        "ferry_leases_held"
    ) == 1.0));

    env.ferry(&["schedule", "run", "s", "--wait"]).ok();
    let succeeded = r#"ferry_runs_total{job="j",state="succeeded"}"#;
    assert_eq!(value(&at1, succeeded), 1.0);
    assert_eq!(value(&at1, r#"ferry_files_copied_total{job="j"}"#), 1.0);
    assert_eq!(value(&at1, r#"ferry_bytes_copied_total{job="j"}"#), 12.0);
    assert_eq!(value(&at1, "ferry_database_up"), 1.0);
    assert_eq!(get(&at1, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(&at1, "/readyz"), (200, "ok\n".into()));
    assert_eq!(get(&at1, "/nothing").0, 404);
    assert_eq!(value(&at2, "ferry_leases_held"), 0.0);

    s1.kill();
    let failovers = r#"ferry_failovers_total{kind="schedule"}"#;
    assert!(
        wait_until(Duration::from_secs(10), || value(&at2, failovers) == 1.0),
        "s2 took the schedule of the killed s1 over:\n{}",
        get(&at2, "/metrics").1
    );
    assert_eq!(value(&at2, "ferry_leases_held"), 1.0);
    assert_eq!(
        value(&at2, r#"ferry_lease_claims_total{kind="schedule"}"#),
        1.0
    );
}

#[test]
fn an_agent_counts_its_sessions_and_refusals_and_is_ready_while_its_roots_are_there() {
    let env = Env::new(Backend::Sqlite);
    let tls = env.tls_folder(&["nas1"], &["s1"]);
    let root = env.path("srv");
    fs::create_dir_all(&root).unwrap();
    let extra = ["--metrics-listen", "127.0.0.1:0"];
    let agent = TestAgent::start_with(&env, "nas1", &[&root], &tls, &extra, None);
    assert!(wait_until(Duration::from_secs(10), || agent
        .log()
        .contains("serving /metrics")));
    let at = metrics_address(&agent.log());
    assert_eq!(get(&at, "/readyz"), (200, "ok\n".into()));

    env.ferry(&["agent", "add", "nas1", "--address", &agent.address])
        .ok();
    let tls_dir = tls.to_str().unwrap();
    env.ferry(&["agent", "test", "nas1", "--tls-dir", tls_dir, "--as", "s1"])
        .ok();
    let sessions = r#"ferry_agent_sessions_total{role="scheduler"}"#;
    assert!(wait_until(Duration::from_secs(5), || value(&at, sessions) == 1.0));

    let mut stranger = TcpStream::connect(&agent.address).unwrap();
    stranger.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = stranger.read_to_end(&mut rest);
    let refused = r#"ferry_agent_refusals_total{reason="tls"}"#;
    assert!(wait_until(Duration::from_secs(5), || value(&at, refused) == 1.0));

    fs::remove_dir(&root).unwrap();
    // Roots are looked at every few seconds, off the answering threads.
    assert!(wait_until(Duration::from_secs(15), || get(&at, "/readyz")
        .0
        == 503));
    let (_, why) = get(&at, "/readyz");
    assert!(why.contains("is not reachable"), "{why}");
    assert_eq!(get(&at, "/healthz").0, 200);
}
