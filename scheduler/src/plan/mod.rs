//! Planning and running work: cron firing and misfires, validation of definitions, sync runs
//! and their records, and real-time monitors.

pub mod cron;
pub mod definitions;
pub mod firing;
pub mod monitor;
pub mod run;
