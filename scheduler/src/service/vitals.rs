//! What a scheduler tells those who watch it: `/healthz` (its loop turns), `/readyz` (it is
//! registered and its database answers), systemd's watchdog, and the gauges of what it holds.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_wire::observe::Probe;

/// A loop that has not turned for this many heartbeats is stuck: a tick waits on the database
/// for less than a lease TTL, and nothing else in it blocks for long.
const STUCK_AFTER_HEARTBEATS: u32 = 10;

pub struct Vitals {
    stuck_after: Duration,
    state: Mutex<State>,
}

struct State {
    last_tick: Instant,
    /// Why the scheduler cannot take work now, if it cannot.
    unready: Option<String>,
}

impl Vitals {
    pub fn new(heartbeat: Duration) -> Self {
        Self {
            stuck_after: (heartbeat * STUCK_AFTER_HEARTBEATS).max(Duration::from_secs(30)),
            state: Mutex::new(State {
                last_tick: Instant::now(),
                unready: Some("starting".into()),
            }),
        }
    }

    /// Records one turn of the service loop and whether the database answered in it; pets
    /// systemd's watchdog, since the loop turns (a database outage is no reason to restart).
    pub fn ticked(&self, database_reachable: bool, leases: usize, jobs: usize) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.last_tick = Instant::now();
        state.unready = (!database_reachable).then(|| "the database does not answer".to_owned());
        metrics::gauge!("ferry_database_up").set(f64::from(u8::from(database_reachable)));
        metrics::gauge!("ferry_leases_held").set(leases as f64);
        metrics::gauge!("ferry_jobs_held").set(jobs as f64);
        ferry_wire::observe::notify_watchdog();
    }

    pub fn stopping(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.unready = Some("stopping".into());
        ferry_wire::observe::notify_stopping();
    }
}

impl Probe for Vitals {
    fn live(&self) -> Result<(), String> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let idle = state.last_tick.elapsed();
        if idle > self.stuck_after {
            return Err(format!(
                "the service loop has not turned for {} s",
                idle.as_secs()
            ));
        }
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        self.live()?;
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.unready.clone().map_or(Ok(()), Err)
    }
}
