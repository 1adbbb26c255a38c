//! docker-compose.yml's topology as real processes on this machine: PostgreSQL, two schedulers
//! and two agents started with the commands of their services, certificates from `ferry ca`,
//! then the walkthrough in the file's header run command by command, as an admin would.
//!
//! What a container gives them is given here too: each node's host name is what Docker would
//! give it (its `hostname:`, else an id; a UTS namespace), and its volumes are folders of the
//! test (`/tls`, `/srv`, `/state` in a command name them). Agents listen on ports of their own
//! on 127.0.0.1 instead of 9033.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_tests::harness::{Backend, Env, binary, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const COMPOSE: &str = include_str!("../../docker-compose.yml");

/// The `command:` of service `name` (a flow sequence of strings, which is JSON).
fn service_command(name: &str) -> Vec<String> {
    let service = COMPOSE
        .find(&format!("\n  {name}:\n"))
        .unwrap_or_else(|| panic!("no service {name} in docker-compose.yml"));
    let rest = &COMPOSE[service..];
    let start = rest.find("command: [").expect("a command") + "command: ".len();
    let end = start + rest[start..].find(']').expect("the command's end") + 1;
    serde_json::from_str(&rest[start..end].replace('\n', " ")).expect("a JSON array")
}

/// The host name a container of service `name` has: its `hostname:`, or else, as Docker
/// gives it, the container's id.
fn service_hostname(name: &str) -> String {
    let header = format!("  {name}:");
    let mut block = (COMPOSE.lines())
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("   "));
    let hostname = block.find_map(|l| l.trim().strip_prefix("hostname: "));
    hostname.map_or_else(|| "4f2a9c1e7b3d".to_owned(), str::to_owned)
}

/// The walkthrough's commands: (service, command line) for each `docker compose exec`.
fn walkthrough() -> Vec<(String, String)> {
    let lines = COMPOSE.lines().take_while(|l| l.starts_with('#'));
    lines
        .filter_map(|l| {
            l.trim_start_matches('#')
                .trim()
                .strip_prefix("docker compose exec ")
        })
        .map(|l| {
            let (service, command) = l.split_once(' ').unwrap();
            (service.to_owned(), command.to_owned())
        })
        .collect()
}

/// One service's container, as far as ferry can tell: a host name and volumes.
struct Node {
    name: String,
    hostname: String,
    volumes: Vec<(&'static str, PathBuf)>,
}

impl Node {
    fn new(env: &Env, name: &str, volumes: &[&'static str]) -> Self {
        let volumes = volumes
            .iter()
            .map(|&at| {
                let dir = env.path(&format!("{name}{}", at.replace('/', "-")));
                fs::create_dir_all(&dir).unwrap();
                (at, dir)
            })
            .collect();
        Self {
            name: name.into(),
            hostname: service_hostname(name),
            volumes,
        }
    }

    fn volume(&self, at: &str) -> &Path {
        &self.volumes.iter().find(|(v, _)| *v == at).unwrap().1
    }

    /// `word` with this node's volume paths (and other agents' roots, `agent-2:/srv…`) made
    /// real, and the agents' compose addresses made theirs here.
    fn place(
        &self,
        word: &str,
        addresses: &HashMap<String, String>,
        roots: &HashMap<String, PathBuf>,
    ) -> String {
        if let Some(address) = addresses.get(word) {
            return address.clone();
        }
        if let Some((agent, path)) = word.split_once(':')
            && let Some(root) = roots.get(agent)
            && let Some(rest) = path.strip_prefix("/srv")
        {
            return format!("{agent}:{}{rest}", root.display());
        }
        for (at, dir) in &self.volumes {
            if let Some(rest) = word.strip_prefix(at)
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{}{rest}", dir.display());
            }
        }
        word.replace("0.0.0.0:9033", "127.0.0.1:0")
            .replace("0.0.0.0:9034", "127.0.0.1:0")
    }

    /// `program args…` as this node runs it: under its host name, with FERRY_DB set.
    fn command(&self, db: &str, program: &Path, args: &[String]) -> Command {
        let mut command = Command::new("unshare");
        command
            .args(["--uts", "sh", "-c", "hostname \"$0\" && exec \"$@\""])
            .arg(&self.hostname)
            .arg(program)
            .args(args)
            .env("FERRY_DB", db)
            .env("FERRY_LOG", "info");
        command
    }
}

struct Running(Vec<(String, Child)>);

impl Running {
    fn stop(&mut self, name: &str) {
        let (_, child) = self.0.iter_mut().find(|(n, _)| n == name).unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn the_compose_walkthrough_works_as_written_on_real_processes() {
    if ferry_tests::pg::shared().is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "PostgreSQL must run under CI"
        );
        eprintln!("SKIPPED: PostgreSQL is not available");
        return;
    }
    let env = Env::new(Backend::Postgres);
    let ferry = binary("ferry");
    let ca = env.path("ca");
    let run_ferry = |args: &[&str]| {
        let out = Command::new(&ferry).args(args).output().unwrap();
        assert!(out.status.success(), "ferry {args:?}: {out:?}");
    };
    // What the `ca` service does: one CA, each node's certificate in the node's own folder.
    let nodes = [
        Node::new(&env, "scheduler-a", &["/tls"]),
        Node::new(&env, "scheduler-b", &["/tls"]),
        Node::new(&env, "agent-1", &["/tls", "/srv", "/state"]),
        Node::new(&env, "agent-2", &["/tls", "/srv", "/state"]),
    ];
    run_ferry(&["ca", "init", "--dir", ca.to_str().unwrap()]);
    for node in &nodes {
        let role = if node.name.starts_with("agent") {
            "agent"
        } else {
            "scheduler"
        };
        let out = node.volume("/tls").to_str().unwrap();
        let ca = ca.to_str().unwrap();
        run_ferry(&[
            "ca", "issue", "--dir", ca, "--out", out, "--role", role, &node.name, "--host",
            &node.name,
        ]);
    }

    let (no_addresses, roots): (HashMap<String, String>, HashMap<String, PathBuf>) = (
        HashMap::new(),
        nodes[2..]
            .iter()
            .map(|n| (n.name.clone(), n.volume("/srv").to_owned()))
            .collect(),
    );
    let mut running = Running(Vec::new());
    let mut addresses = HashMap::new();
    for node in &nodes {
        let (program, log) = match node.name.starts_with("agent") {
            true => (
                binary("ferry-agent"),
                env.path(&format!("{}.log", node.name)),
            ),
            false => (ferry.clone(), env.path(&format!("{}.log", node.name))),
        };
        let args: Vec<String> = service_command(&node.name)
            .iter()
            .map(|w| node.place(w, &no_addresses, &roots))
            .collect();
        let log_file = fs::File::create(&log).unwrap();
        let child = node
            .command(&env.db, &program, &args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        running.0.push((node.name.clone(), child));
        let ready = if node.name.starts_with("agent") {
            "listening"
        } else {
            "registered"
        };
        assert!(
            wait_until(Duration::from_secs(20), || fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(ready)),
            "{} did not start:\n{}",
            node.name,
            fs::read_to_string(&log).unwrap_or_default()
        );
        if node.name.starts_with("agent") {
            let text = fs::read_to_string(&log).unwrap();
            let line = text.lines().find(|l| l.contains("listening")).unwrap();
            let address = line.split("address=").nth(1).unwrap().trim().to_owned();
            addresses.insert(format!("{}:9033", node.name), address);
        }
    }

    let by_name: HashMap<&str, &Node> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut printed = HashMap::new();
    for (service, line) in walkthrough() {
        let node = by_name[service.as_str()];
        let words: Vec<String> = (line.split_whitespace())
            .map(|w| node.place(w, &addresses, &roots))
            .collect();
        let (program, args) = match words[0].as_str() {
            "ferry" => (ferry.clone(), &words[1..]),
            other => (PathBuf::from(other), &words[1..]),
        };
        let out = node.command(&env.db, &program, args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{service}: {line}\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        printed.insert(line, stdout);
    }
    let list = &printed["ferry agent list --tls-dir /tls"];
    assert_eq!(
        list.matches(" yes ").count(),
        2,
        "both agents reachable:\n{list}"
    );

    // "Files put in agent-1's /srv/docs appear in agent-2's."
    let (docs1, docs2) = (roots["agent-1"].join("docs"), roots["agent-2"].join("docs"));
    fs::write(docs1.join("hello.txt"), "from agent-1").unwrap();
    let arrived = |name: &str| fs::read_to_string(docs2.join(name)).is_ok();
    assert!(wait_until(Duration::from_secs(20), || arrived("hello.txt")));

    // "Stop scheduler-a and scheduler-b takes its work over within seconds."
    running.stop("scheduler-a");
    fs::write(docs1.join("after.txt"), "while scheduler-a is stopped").unwrap();
    assert!(wait_until(Duration::from_secs(20), || arrived("after.txt")));
    assert_eq!(env.holder("docs-live").as_deref(), Some("scheduler-b"));
}
