//! Full runs that look only at what changed. When every replica of a job keeps a change
//! journal ([`crate::journal`]), a full run asks each what changed since the job's last
//! successful run and scans those paths alone: a quiet night costs a few hundred bytes, not a
//! walk of the share. The journals' marks are kept beside the sync base, in the source's
//! `.ferry` folder, and only a run that synced everything it saw moves them, so a path that
//! failed is looked at again. A full scan at least every `full_scan_every` checks the journals:
//! whatever it finds that they did not report is logged, and that run syncs it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{JobSpec, Rule, now_secs};
use crate::endpoint::{Endpoint, Scope};
use crate::journal::{Journaled, Mark};
use crate::tree::{self, Entry, Tree};

/// Where the replicas' journals stood when a job's run began.
#[derive(Debug, Serialize, Deserialize)]
struct Marks {
    /// The job as it was defined: a new filter or another replica needs a full scan.
    definition: String,
    /// When a full scan last looked at everything (Unix seconds).
    checked_at: i64,
    replicas: BTreeMap<String, Mark>,
}

/// What the journals said at the start of a full run.
pub(super) struct Consulted {
    now: Marks,
    /// Every path changed at any replica since the job's marks, when every journal could say.
    changed: Option<BTreeSet<PathBuf>>,
    /// A full scan is due, to check the journals.
    check_due: bool,
}

/// Asks every replica's journal what changed since the job's last successful run; `None`
/// when some replica keeps none (or could not answer): the run then scans everything and
/// keeps no marks.
pub(super) fn consult(
    spec: &JobSpec,
    replicas: &[&dyn Endpoint],
    full_scan_every: Duration,
) -> Option<Consulted> {
    let definition = definition(spec);
    let previous = load(replicas[0], &spec.name).filter(|marks| marks.definition == definition);
    let mut now = BTreeMap::new();
    let mut changed = Some(BTreeSet::new());
    for replica in replicas {
        let display = replica.display();
        let mark = previous.as_ref().and_then(|p| p.replicas.get(&display));
        let answer = match replica.changes_since(mark) {
            Ok(Journaled::At { now, changed }) => (now, changed),
            Ok(Journaled::Unjournaled) => return None,
            Err(e) => {
                tracing::debug!(job = spec.name, error = %e, "a change journal did not answer");
                return None;
            }
        };
        match (answer.1, &mut changed) {
            (Some(paths), Some(all)) => all.extend(paths),
            _ => changed = None,
        }
        now.insert(display, answer.0);
    }
    let checked_at = previous.as_ref().map_or(0, |p| p.checked_at);
    let every = i64::try_from(full_scan_every.as_secs()).unwrap_or(i64::MAX);
    Some(Consulted {
        now: Marks {
            definition,
            checked_at,
            replicas: now,
        },
        changed,
        check_due: now_secs() >= checked_at.saturating_add(every),
    })
}

impl Consulted {
    /// The paths a full run needs to look at, unless it must scan everything.
    pub(super) fn scope(&self) -> Option<Scope> {
        match (&self.changed, self.check_due) {
            (Some(paths), false) => Some(Scope::Paths(paths.iter().cloned().collect())),
            _ => None,
        }
    }

    /// After a full scan that checks the journals: logs the paths where a replica differs
    /// from what the job last agreed (the source, or the sync base) though no journal
    /// reported a change there. The run itself syncs them.
    pub(super) fn check(
        &self,
        spec: &JobSpec,
        replicas: &[&dyn Endpoint],
        trees: &[Tree],
        base: &Tree,
    ) {
        let Some(changed) = self.changed.as_ref().filter(|_| self.check_due) else {
            return;
        };
        for (replica, path) in unreported(spec.rule, trees, base, changed) {
            tracing::warn!(
                job = spec.name,
                replica = replicas[replica].display(),
                path = %path.display(),
                "a full scan found a change the change journal did not report (written \
                 through a memory map, or on a file system the watcher cannot see); this run \
                 syncs it"
            );
        }
    }

    /// Keeps the marks for the next run: only after a run that synced everything it looked
    /// at, so whatever failed is looked at again.
    pub(super) fn save(mut self, source: &dyn Endpoint, job: &str, scanned_everything: bool) {
        if scanned_everything {
            self.now.checked_at = now_secs();
        }
        let bytes = serde_json::to_vec(&self.now).expect("marks always serialise");
        if let Err(e) = source.write_state_bytes(&state_name(job), &bytes) {
            tracing::debug!(job, error = %e, "could not keep the change journal's marks");
        }
    }
}

fn load(source: &dyn Endpoint, job: &str) -> Option<Marks> {
    let bytes = source.read_state_bytes(&state_name(job)).ok()??;
    serde_json::from_slice(&bytes).ok()
}

fn state_name(job: &str) -> String {
    crate::base::state_name(job).replacen("sync-", "journal-", 1)
}

/// The parts of a job's definition that decide what a run looks at and how it compares.
fn definition(spec: &JobSpec) -> String {
    let replicas: Vec<String> = std::iter::once(&spec.source)
        .chain(&spec.destinations)
        .map(|r| r.display())
        .collect();
    format!(
        "{} {replicas:?} {:?} {:?}",
        spec.rule,
        spec.filter.patterns(),
        spec.guards
    )
}

/// Replica and path of each difference from what the job last agreed that `changed` does
/// not cover: a path covers itself, what lies under it and the folders above it.
fn unreported(
    rule: Rule,
    trees: &[Tree],
    base: &Tree,
    changed: &BTreeSet<PathBuf>,
) -> Vec<(usize, PathBuf)> {
    let pairs: Vec<(usize, &Tree, &Tree)> = match rule {
        Rule::Mirror | Rule::Copy => (1..trees.len())
            .map(|d| (d, &trees[0], &trees[d]))
            .collect(),
        Rule::Sync => (0..trees.len()).map(|r| (r, base, &trees[r])).collect(),
    };
    let mut found = Vec::new();
    for (replica, agreed, tree) in pairs {
        // The copy rule leaves what only a destination holds alone.
        let looked_at =
            tree::pairs(agreed, tree).filter(|(_, a, _)| a.is_some() || rule != Rule::Copy);
        found.extend(
            looked_at
                .filter(|(path, a, t)| differs(*a, *t) && !covered(changed, path))
                .map(|(path, _, _)| (replica, path.to_path_buf())),
        );
    }
    found
}

fn covered(changed: &BTreeSet<PathBuf>, path: &Path) -> bool {
    path.ancestors().any(|above| changed.contains(above))
        || (changed.range(path.to_path_buf()..))
            .next()
            .is_some_and(|c| c.starts_with(path))
}

/// Whether two states of a path differ in what any rule acts on (a folder's time aside).
fn differs(a: Option<&Entry>, b: Option<&Entry>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            a.kind() != b.kind() || (!a.is_dir() && (a.size != b.size || a.mtime != b.mtime))
        }
        (None, None) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Mtime;

    fn file(size: u64) -> Entry {
        Entry::file(size, Mtime::at(1), 0o644)
    }

    #[test]
    fn a_difference_is_reported_unless_a_change_covers_it() {
        let source: Tree = [("a/b".into(), file(1)), ("c".into(), file(2))].into();
        let destination: Tree = [("a/b".into(), file(9)), ("c".into(), file(3))].into();
        let trees = [source, destination];
        let changed = |paths: &[&str]| paths.iter().map(PathBuf::from).collect();
        let none = unreported(Rule::Mirror, &trees, &Tree::new(), &changed(&["a", "c"]));
        assert!(none.is_empty(), "{none:?}");
        let under = unreported(
            Rule::Mirror,
            &trees,
            &Tree::new(),
            &changed(&["a/b/x", "c"]),
        );
        assert!(
            under.is_empty(),
            "a change below a path covers it: {under:?}"
        );
        let missed = unreported(Rule::Mirror, &trees, &Tree::new(), &changed(&["a-z", "c"]));
        assert_eq!(missed, vec![(1, PathBuf::from("a/b"))]);
    }

    #[test]
    fn a_copy_leaves_extras_at_the_destination_alone() {
        let trees = [Tree::new(), [("extra".into(), file(1))].into()];
        let found = unreported(Rule::Copy, &trees, &Tree::new(), &BTreeSet::new());
        assert!(found.is_empty(), "{found:?}");
        let found = unreported(Rule::Mirror, &trees, &Tree::new(), &BTreeSet::new());
        assert_eq!(found, vec![(1, PathBuf::from("extra"))]);
    }
}
