//! A monitor's files still being written wait until they settle. A log or a download that grows
//! for a minute would otherwise be copied whole after every write the watch reports: a 200 MiB
//! file appended in 100 steps cost 9.9 GiB of writes at the destination. Each changed path waits
//! until it has been quiet for a time that grows with the size it had when last copied (a
//! writer is assumed to keep up [`WRITE_RATE`]), so a small file goes at once and a large one
//! once its writer pauses; a path that never stops changing still goes every
//! [`LONGEST_DEFERRAL`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

/// The pace a file being written is assumed to grow at: a file of this many bytes waits for a
/// second of quiet.
const WRITE_RATE: f64 = (32 << 20) as f64;
/// The longest quiet a file waits for, however large.
const LONGEST_QUIET: Duration = Duration::from_secs(10);
/// How long a path that keeps changing is held back at most.
const LONGEST_DEFERRAL: Duration = Duration::from_secs(60);
/// Files smaller than this go at once (their quiet would be a few milliseconds): only larger
/// ones have their sizes remembered.
pub const SETTLING_SIZE: u64 = 1 << 20;
/// Sizes remembered at most; past it they are all forgotten (those files go at once on their
/// next change, and are remembered again once copied).
const MAX_SIZES: usize = 10_000;

/// Paths changed and not synced yet, and the sizes of large files last copied.
#[derive(Debug, Default)]
pub struct Settling {
    waiting: HashMap<PathBuf, Changing>,
    sizes: HashMap<PathBuf, u64>,
}

#[derive(Debug, Clone, Copy)]
struct Changing {
    first: Instant,
    last: Instant,
}

impl Settling {
    /// `paths` changed at `now`.
    pub fn changed(&mut self, paths: Vec<PathBuf>, now: Instant) {
        for path in paths {
            let changing = self.waiting.entry(path).or_insert(Changing {
                first: now,
                last: now,
            });
            changing.last = now;
        }
    }

    /// Files of at least [`SETTLING_SIZE`] bytes were copied, at these sizes.
    pub fn copied(&mut self, sizes: Vec<(PathBuf, u64)>) {
        if self.sizes.len() + sizes.len() > MAX_SIZES {
            self.sizes.clear();
        }
        self.sizes.extend(sizes);
    }

    /// The paths whose wait is over at `now`; they no longer wait.
    pub fn take_due(&mut self, now: Instant) -> Vec<PathBuf> {
        let due: Vec<PathBuf> = (self.waiting.iter())
            .filter(|(path, changing)| self.due_at(path, changing) <= now)
            .map(|(path, _)| path.clone())
            .collect();
        for path in &due {
            self.waiting.remove(path);
        }
        due
    }

    /// When the next waiting path is due; `None` when none waits.
    pub fn next_due(&self) -> Option<Instant> {
        (self.waiting.iter())
            .map(|(path, changing)| self.due_at(path, changing))
            .min()
    }

    fn due_at(&self, path: &PathBuf, changing: &Changing) -> Instant {
        let size = self.sizes.get(path).copied().unwrap_or(0);
        let quiet = Duration::from_secs_f64(size as f64 / WRITE_RATE).min(LONGEST_QUIET);
        (changing.last + quiet).min(changing.first + LONGEST_DEFERRAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(names: &[&str]) -> Vec<PathBuf> {
        names.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn a_small_or_unknown_file_goes_at_once() {
        let mut settling = Settling::default();
        let now = Instant::now();
        settling.changed(paths(&["new.txt", "dir"]), now);
        let mut due = settling.take_due(now);
        due.sort();
        assert_eq!(due, paths(&["dir", "new.txt"]));
        assert_eq!(settling.next_due(), None);
    }

    #[test]
    fn a_large_file_waits_for_a_quiet_time_that_grows_with_its_size() {
        let mut settling = Settling::default();
        let start = Instant::now();
        settling.copied(vec![
            ("big.log".into(), 64 << 20),
            ("huge.iso".into(), 8 << 30),
        ]);
        settling.changed(paths(&["big.log", "huge.iso"]), start);
        // 64 MiB at 32 MiB/s: two seconds of quiet.
        assert_eq!(settling.next_due(), Some(start + Duration::from_secs(2)));
        let step = Duration::from_secs(1);
        assert!(settling.take_due(start + step).is_empty());
        // Written again: the wait starts over.
        settling.changed(paths(&["big.log"]), start + step);
        assert!(settling.take_due(start + 2 * step).is_empty());
        assert_eq!(settling.take_due(start + 3 * step), paths(&["big.log"]));
        // However large, a file waits at most LONGEST_QUIET of quiet.
        assert_eq!(settling.next_due(), Some(start + LONGEST_QUIET));
    }

    #[test]
    fn a_file_that_never_stops_changing_still_goes_every_longest_deferral() {
        let mut settling = Settling::default();
        let start = Instant::now();
        settling.copied(vec![("busy.log".into(), 1 << 30)]);
        let mut now = start;
        while now < start + LONGEST_DEFERRAL {
            settling.changed(paths(&["busy.log"]), now);
            assert!(settling.take_due(now).is_empty());
            now += Duration::from_secs(1);
        }
        assert_eq!(settling.take_due(now), paths(&["busy.log"]));
    }
}
