//! Planning and running work: cron firing and misfires, validation of definitions, sync runs
//! and their records, and real-time monitors.

pub mod cron;
pub mod definitions;
pub mod firing;
pub mod hooks;
pub mod monitor;
pub mod run;
pub mod settle;

use std::sync::{Arc, Mutex};

/// What keeps a schedule or monitor from working right now (a missing source folder, say), as
/// reported by its running work; the service shows it as the row's `last_error`.
#[derive(Debug, Clone, Default)]
pub struct ProblemSlot(Arc<Mutex<Option<String>>>);

impl ProblemSlot {
    pub fn set(&self, problem: Option<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
