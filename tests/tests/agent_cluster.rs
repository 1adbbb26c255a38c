//! An agent in an active/passive cluster, as file servers run it: one agent name and
//! certificate, the served folder and the agent's state folder on the clustered disk, and the
//! cluster's address moving to the passive node. Here the nodes are two `ferry-agent run`
//! processes on 127.0.0.2 and 127.0.0.3, and the address is a host name the scheduler looks up
//! in an `/etc/hosts` of the test's own, pointed at one node and then the other.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_engine::tree::Entry;
use ferry_tests::harness::{Backend, Env, TestAgent, TestScheduler, snapshot, wait_until};
use ferry_wire::client::{Dial, Session};
use ferry_wire::protocol::{Fence, Request, Response};
use serde_json::Value;

const CLUSTER_NAME: &str = "nas1.cluster.test";
const NODES: [&str; 2] = ["127.0.0.2", "127.0.0.3"];

/// A port free on both nodes' addresses.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind((NODES[0], 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if TcpListener::bind((NODES[1], port)).is_ok() {
            return port;
        }
    }
}

/// The cluster's disk: the served folder and the agent's state folder, seen by whichever
/// node is active.
struct ClusterDisk {
    share: PathBuf,
    state: PathBuf,
}

impl ClusterDisk {
    fn new(env: &Env) -> Self {
        let disk = env.path("cluster-disk");
        let disk = Self {
            share: disk.join("share"),
            state: disk.join("ferry-agent"),
        };
        fs::create_dir_all(&disk.share).unwrap();
        disk
    }

    /// Node `node` (0 or 1) running as the cluster's agent `nas1` on `port`, with the state
    /// folder `state`.
    fn start(&self, env: &Env, tls: &Path, node: usize, port: u16, state: &Path) -> TestAgent {
        let listen = format!("{}:{port}", NODES[node]);
        let extra = ["--state-dir", state.to_str().unwrap()];
        TestAgent::start_at_with(env, "nas1", &[&self.share], tls, &listen, &extra)
    }
}

fn text(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

fn holds(path: &Path, content: &str) -> bool {
    fs::read_to_string(path).is_ok_and(|text| text == content)
}

#[test]
fn the_work_goes_on_through_an_agent_cluster_failover() {
    let env = Env::new(Backend::Sqlite);
    let tls = env.tls_folder(&["nas1", "nas2"], &["s1"]);
    let disk = ClusterDisk::new(&env);
    let port = free_port();
    let active = disk.start(&env, &tls, 0, port, &disk.state);
    let srv2 = env.path("srv2");
    fs::create_dir_all(&srv2).unwrap();
    let nas2 = TestAgent::start(&env, "nas2", &[&srv2], &tls);

    // The scheduler finds the cluster by its name, as it would through DNS.
    let (hosts, resolv) = (env.path("hosts"), env.path("resolv.conf"));
    let point_cluster_at = |node: usize| {
        fs::write(
            &hosts,
            format!("127.0.0.1 localhost\n{} {CLUSTER_NAME}\n", NODES[node]),
        )
        .unwrap()
    };
    point_cluster_at(0);
    // A name missing from the hosts file goes to a resolver that is not there: never out.
    fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    let cluster_address = format!("{CLUSTER_NAME}:{port}");
    env.ferry(&["agent", "add", "nas1", "--address", &cluster_address])
        .ok();
    env.ferry(&["agent", "add", "nas2", "--address", &nas2.address])
        .ok();
    let files = [(&*hosts, "/etc/hosts"), (&*resolv, "/etc/resolv.conf")];
    let scheduler = TestScheduler::start_seeing(&env, "s1", &["--tls-dir", &text(&tls)], &files);

    // A monitor from the cluster's share to nas2, and a schedule with one large file.
    let (live, live_copy) = (disk.share.join("live"), srv2.join("live"));
    fs::create_dir_all(&live).unwrap();
    fs::write(live.join("before.txt"), "there before the failover").unwrap();
    let (large, large_copy) = (disk.share.join("large"), srv2.join("large"));
    fs::create_dir_all(&large).unwrap();
    let size = 256u64 << 20;
    let mut urandom = fs::File::open("/dev/urandom").unwrap();
    let mut file = fs::File::create(large.join("large.bin")).unwrap();
    std::io::copy(&mut std::io::Read::take(&mut urandom, size), &mut file).unwrap();
    drop(file);
    for (name, from, to) in [("live", &live, &live_copy), ("large", &large, &large_copy)] {
        let (from, to) = (format!("nas1:{}", text(from)), format!("nas2:{}", text(to)));
        let job = [
            "job", "add", name, "--rule", "mirror", "--from", &from, "--to", &to,
        ];
        env.ferry(&job).ok();
    }
    env.ferry(&[
        "monitor",
        "add",
        "live",
        "--job",
        "live",
        "--debounce",
        "20ms",
    ])
    .ok();
    let schedule = [
        "schedule",
        "add",
        "large",
        "--job",
        "large",
        "--cron",
        "0 0 1 1 *",
        "--retries",
        "10",
        "--retry-delay",
        "1s",
    ];
    env.ferry(&schedule).ok();
    assert!(
        wait_until(Duration::from_secs(30), || holds(
            &live_copy.join("before.txt"),
            "there before the failover"
        )),
        "the monitor never replicated through the active node"
    );

    // The schedule's run is under way through the active node when the node dies.
    env.ferry(&["schedule", "run", "large"]).ok();
    let transferring = wait_until(Duration::from_secs(60), || {
        fs::read_dir(&large_copy).is_ok_and(|entries| {
            (entries.flatten()).any(|e| e.file_name().to_string_lossy().starts_with(".ferry-tmp."))
        })
    });
    assert!(transferring, "the large file's transfer never started");
    active.kill();
    fs::write(live.join("during.txt"), "written during the switch").unwrap();

    // The cluster moves its address and starts the agent on the passive node, on the same
    // disk.
    point_cluster_at(1);
    let passive = disk.start(&env, &tls, 1, port, &disk.state);
    let up = Instant::now();
    let replicated = wait_until(Duration::from_secs(10), || {
        holds(&live_copy.join("during.txt"), "written during the switch")
    });
    assert!(
        replicated,
        "a file written during the switch was not replicated within 10 s of the passive node \
         coming up ({:?}); scheduler log:\n{}",
        up.elapsed(),
        scheduler.log()
    );
    eprintln!(
        "replicated {:?} after the passive node came up",
        up.elapsed()
    );
    fs::write(live.join("after.txt"), "written on the passive node").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || holds(
            &live_copy.join("after.txt"),
            "written on the passive node"
        )),
        "the monitor does not watch the passive node"
    );

    let completed = wait_until(Duration::from_secs(120), || {
        (large_copy.join("large.bin").metadata()).is_ok_and(|m| m.len() == size)
    });
    assert!(completed, "the interrupted run was never completed");
    assert_eq!(
        fs::read(large.join("large.bin")).unwrap(),
        fs::read(large_copy.join("large.bin")).unwrap()
    );
    assert_eq!(snapshot(&live), snapshot(&live_copy));
    let runs: Value = env
        .ferry(&["--output", "json", "runs", "--job", "large"])
        .ok()
        .json();
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs:#}");
    assert_eq!(runs[0]["state"], "succeeded", "{runs:#}");
    assert!(runs[0]["attempt"].as_i64().unwrap() >= 2, "{runs:#}");

    // The passive node took over the state folder as the active node left it: it vouched for
    // its records, and the leases went on at their epochs.
    let log = passive.log_since_start();
    assert!(!log.contains("was not the last to serve"), "{log}");
    assert!(log.contains("session started"), "{log}");
}

/// Speaks to the cluster's agent as scheduler s1 would.
struct Peer {
    runtime: tokio::runtime::Runtime,
    tls: Arc<rustls::ClientConfig>,
}

impl Peer {
    fn new(tls: &Path) -> Self {
        Self {
            runtime: tokio::runtime::Runtime::new().unwrap(),
            tls: ferry_wire::tls::client_config(tls, "s1").unwrap(),
        }
    }

    /// Makes folder `name` in `folder` on the agent at `address`, under `fence`: `Ok` once
    /// done, the agent's refusal otherwise.
    fn make_dir(
        &self,
        address: &str,
        fence: Fence,
        folder: &Path,
        name: &str,
    ) -> Result<(), String> {
        let dial = Dial {
            agent: "nas1".into(),
            address: address.into(),
            client: "s1".into(),
            tls: self.tls.clone(),
        };
        self.runtime.block_on(async {
            let mut session = (Session::connect(&dial, Some(fence), Arc::default()).await)
                .map_err(|e| e.to_string())?;
            let open = Request::Open {
                path: text(folder),
                create: true,
            };
            let mkdir = Request::MakeDir {
                path: name.into(),
                entry: Entry::folder(0o755),
                expected: None,
            };
            for request in [open, mkdir] {
                match session.call(&request).await.map_err(|e| e.to_string())? {
                    Response::Done => {}
                    other => return Err(format!("{other:?}")),
                }
            }
            Ok(())
        })
    }
}

/// A lease as a scheduler presents it: `confirmed` while its renewals reach the database.
fn lease(epoch: i64, confirmed: bool) -> Fence {
    Fence {
        confirmed,
        ..Fence::new("job:docs", epoch)
    }
}

/// The passive node's own state folder, left behind when the active node took over, knows
/// only an older epoch. A scheduler that lost the lease since (cut off from its database, so it
/// cannot confirm it) must not get to write through the passive node when it comes up.
#[test]
fn a_passive_node_with_a_state_folder_left_behind_admits_only_leases_the_database_confirms() {
    let env = Env::new(Backend::Sqlite);
    let tls = env.tls_folder(&["nas1"], &["s1"]);
    let disk = ClusterDisk::new(&env);
    let folder = disk.share.join("docs");
    let (node_a_state, node_b_state) = (env.path("node-a-state"), env.path("node-b-state"));
    let port = free_port();
    let peer = Peer::new(&tls);
    let address = |node: usize| format!("{}:{port}", NODES[node]);

    // Node B served the share a while ago, under epoch 2.
    let node_b = disk.start(&env, &tls, 1, port, &node_b_state);
    peer.make_dir(&address(1), lease(2, true), &folder, "epoch-2")
        .unwrap();
    node_b.kill();
    // Node A took over with its own state folder; the lease moved on to epoch 5.
    let node_a = disk.start(&env, &tls, 0, port, &node_a_state);
    peer.make_dir(&address(0), lease(5, true), &folder, "epoch-5")
        .unwrap();
    node_a.kill();

    // The cluster fails back to node B, whose folder still says epoch 2.
    let node_b = disk.start(&env, &tls, 1, port, &node_b_state);
    assert!(
        node_b
            .log_since_start()
            .contains("was not the last to serve")
    );
    let stale = peer.make_dir(&address(1), lease(4, false), &folder, "stale");
    let refusal = stale.expect_err("a stale holder wrote through a node that forgot the lease");
    assert!(refusal.contains("not confirmed"), "{refusal}");
    assert!(refusal.contains(&text(&node_b_state)), "{refusal}");
    assert!(!folder.join("stale").exists());

    // The current holder confirms its lease and writes; from then on the record vouches.
    peer.make_dir(&address(1), lease(5, true), &folder, "confirmed")
        .unwrap();
    peer.make_dir(&address(1), lease(5, false), &folder, "vouched")
        .unwrap();
    let stale = peer.make_dir(&address(1), lease(4, true), &folder, "stale");
    assert!(stale.is_err_and(|e| e.contains("stale lease")));
    node_b.kill();

    // With the state folder on the clustered disk instead, the node taking over vouches for
    // what the other one saw.
    let shared = disk.state.clone();
    let node_a = disk.start(&env, &tls, 0, port, &shared);
    peer.make_dir(&address(0), lease(7, true), &folder, "epoch-7")
        .unwrap();
    node_a.kill();
    let node_b = disk.start(&env, &tls, 1, port, &shared);
    let stale = peer.make_dir(&address(1), lease(6, false), &folder, "stale");
    assert!(stale.is_err_and(|e| e.contains("stale lease")));
    peer.make_dir(&address(1), lease(7, false), &folder, "epoch-7-again")
        .unwrap();
    assert!(
        !node_b
            .log_since_start()
            .contains("was not the last to serve")
    );
    assert!(!folder.join("stale").exists());
}
