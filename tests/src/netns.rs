//! A slow network of a test's own: a network namespace whose loopback is held to a given rate
//! (`tc` token bucket), for processes that must see a WAN-like link rather than loopback's
//! gigabytes per second. Needs root and iproute2, as the machine running the tests has.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// A network namespace with a rate-limited loopback, deleted on drop.
pub struct SlowLink {
    pub namespace: String,
}

impl SlowLink {
    /// A namespace whose loopback carries `rate` (`tc` syntax: `40mbit`). `None` (after a loud
    /// skip message) when one cannot be made here; under `CI=true` that is a test failure.
    pub fn new(rate: &str) -> Option<Self> {
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let link = Self {
            namespace: format!("ferry-test-{}-{n}", std::process::id()),
        };
        match link.set_up(rate) {
            Ok(()) => Some(link),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("a rate-limited network namespace is required under CI: {e:#}")
            }
            Err(e) => {
                eprintln!(
                    "\n!!!!! SKIPPING a slow-link test: {e:#}\n!!!!! it needs root and iproute2\n"
                );
                None
            }
        }
    }

    fn set_up(&self, rate: &str) -> Result<()> {
        let ns = self.namespace.as_str();
        ip(&["netns", "add", ns])?;
        // Loopback's 64 KiB frames would not fit the token bucket's burst.
        ip(&["-n", ns, "link", "set", "lo", "mtu", "1500", "up"])?;
        let tbf = ["qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate];
        run(
            "ip",
            &[
                &["netns", "exec", ns, "tc"],
                &tbf[..],
                &["burst", "32kb", "latency", "50ms"],
            ]
            .concat(),
        )
    }

    /// `program`, to be run inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(program);
        command
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.namespace]);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
