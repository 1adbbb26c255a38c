//! A lock per job name, for runs of one job that must take turns within a process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// A lock of type `L` per job. Only jobs with a run going or waiting are kept: a lock nobody
/// holds is dropped, so the map stays as small as the number of jobs running at once.
pub struct JobLocks<L>(Mutex<Option<HashMap<String, Weak<L>>>>);

impl<L: Default> Default for JobLocks<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: Default> JobLocks<L> {
    pub const fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// The lock of `job`: the same one for every run of it going or waiting.
    pub fn get(&self, job: &str) -> Arc<L> {
        let mut locks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let locks = locks.get_or_insert_with(HashMap::new);
        if let Some(lock) = locks.get(job).and_then(Weak::upgrade) {
            return lock;
        }
        locks.retain(|_, lock| lock.strong_count() > 0);
        let lock = Arc::new(L::default());
        locks.insert(job.to_owned(), Arc::downgrade(&lock));
        lock
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let locks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        locks.as_ref().map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_locks_of_jobs_no_longer_running_are_forgotten() {
        let locks: JobLocks<Mutex<()>> = JobLocks::new();
        let running = locks.get("running");
        for i in 0..1000 {
            drop(locks.get(&format!("finished-{i}")));
        }
        assert!(
            Arc::ptr_eq(&running, &locks.get("running")),
            "one lock per job"
        );
        assert!(locks.len() <= 2, "{} locks kept", locks.len());
    }
}
