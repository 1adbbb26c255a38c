//! The sync engine: compares replicas, plans the operations a rule calls for, and carries them
//! out through [`Endpoint`]s, reporting each step as an [`Event`].
//!
//! Rules: **mirror** makes every destination identical to the source (extras deleted), **copy**
//! brings new and changed files across and deletes nothing, **sync** lets changes and deletions
//! flow every way, telling a deletion from a new file by the tree all replicas agreed on last
//! time ([`crate::base`]); when two replicas changed a file differently the newer one wins and
//! the other is kept beside it as a conflict copy.
//!
//! A failure on one path is reported and the run goes on; the sync base keeps that path's old
//! state so the next run retries it instead of mistaking the stale copy for a change.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::base::{self, BaseError};
use crate::delta::Signature;
pub use crate::endpoint::Scope;
use crate::endpoint::{Endpoint, EndpointError};
pub use crate::fence::Halt;
use crate::filter::Filter;
use crate::tree::{Entry, Expected, Kind, Mtime, Tree, same};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    Mirror,
    Copy,
    Sync,
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mirror" => Ok(Rule::Mirror),
            "copy" => Ok(Rule::Copy),
            "sync" => Ok(Rule::Sync),
            other => Err(format!("unknown rule {other:?}: use mirror, copy or sync")),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Mirror => "mirror",
            Rule::Copy => "copy",
            Rule::Sync => "sync",
        })
    }
}

/// Everything the engine needs to run one job.
#[derive(Clone)]
pub struct JobSpec {
    pub name: String,
    pub rule: Rule,
    pub source: Arc<dyn Endpoint>,
    pub destinations: Vec<Arc<dyn Endpoint>>,
    pub filter: Filter,
    /// Guards on what a run may destroy.
    pub guards: Guards,
}

/// What a job may destroy, and what it keeps of what it replaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guards {
    /// A run that would delete more files than this at any replica deletes nothing and fails.
    pub max_deletes: Option<u64>,
    /// Mirror only: a folder (relative to each destination) that receives the files a run
    /// deletes or overwrites there, under the run's date, instead of destroying them.
    pub versions: Option<PathBuf>,
}

impl fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let destinations: Vec<String> = self.destinations.iter().map(|d| d.display()).collect();
        f.debug_struct("JobSpec")
            .field("name", &self.name)
            .field("rule", &self.rule)
            .field("source", &self.source.display())
            .field("destinations", &destinations)
            .finish_non_exhaustive()
    }
}

/// One thing the engine did, for the run's event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Copied {
        to: String,
        #[serde(with = "crate::raw_path")]
        path: PathBuf,
        bytes: u64,
    },
    Deleted {
        at: String,
        #[serde(with = "crate::raw_path")]
        path: PathBuf,
    },
    Conflict {
        at: String,
        #[serde(with = "crate::raw_path")]
        path: PathBuf,
        #[serde(with = "crate::raw_path")]
        kept_as: PathBuf,
    },
    Failed {
        #[serde(with = "crate::raw_path")]
        path: PathBuf,
        error: String,
    },
}

/// What a run did, in the counters `runs` records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub files_copied: u64,
    /// Old versions moved into the job's versions folder.
    pub versions_kept: u64,
    pub files_deleted: u64,
    pub dirs_created: u64,
    pub conflicts: u64,
    /// Logical bytes of the files written.
    pub bytes_total: u64,
    /// Bytes that crossed from source to destination (all of them, for local folders).
    pub bytes_sent: u64,
    pub failures: u64,
    /// The first failure, to show beside the counts.
    pub first_failure: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("job {job}: source {source}")]
    Source {
        job: String,
        #[source]
        source: EndpointError,
    },
    #[error("job {job}: destination {source}")]
    Destination {
        job: String,
        #[source]
        source: EndpointError,
    },
    #[error("job {job}: {source}")]
    Base {
        job: String,
        #[source]
        source: BaseError,
    },
    #[error(
        "job {job}: {replica} is empty and carries no mark of an earlier ferry run, while {why}; \
         refusing to treat that as everything deleted (an unmounted disk looks the same). If it \
         is empty on purpose, create the file {replica}/.ferry/{MARKER} and run again"
    )]
    Vanished {
        job: String,
        replica: String,
        why: &'static str,
    },
    #[error("job {job}: cancelled")]
    Cancelled { job: String },
    #[error(
        "job {job}: the run would delete {count} files in {replica}, over the job's limit of \
         {max} (max_deletes); nothing was deleted. If that is intended, raise the limit or run \
         with a larger --max-deletes once"
    )]
    TooManyDeletes {
        job: String,
        replica: String,
        count: usize,
        max: u64,
    },
    #[error("job {job}: on agent {agent}: {message}")]
    Agent {
        job: String,
        agent: String,
        message: String,
    },
}

/// A file in a replica's `.ferry` folder saying ferry has synced it before: an empty replica
/// without it is more likely an unmounted disk than a folder emptied on purpose.
pub const MARKER: &str = "replica";

/// Runs `spec` over `scope` and returns what it did. Per-path failures are counted in the
/// summary; an unusable source or destination root fails the whole run before anything is
/// written (an unreadable source must never make a mirror delete everything).
pub fn run(
    spec: &JobSpec,
    scope: &Scope,
    halt: &Halt,
    on_event: &mut dyn FnMut(Event),
) -> Result<Summary, EngineError> {
    let lock = job_lock(&spec.name);
    let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let scope = normalise(scope);
    let replicas: Vec<&dyn Endpoint> = std::iter::once(spec.source.as_ref())
        .chain(spec.destinations.iter().map(|d| d.as_ref()))
        .collect();
    let wire_before: u64 = replicas.iter().map(|r| r.wire_bytes()).sum();
    let job = || spec.name.clone();
    let base_err = |source| EngineError::Base { job: job(), source };
    let mut base = match spec.rule {
        Rule::Sync => base::load(replicas[0], &spec.name).map_err(base_err)?,
        Rule::Mirror | Rule::Copy => Tree::new(),
    };
    // A sync replica that vanished (an unmounted disk) must not read as "everything deleted":
    // its root is only created on the first run, before anything was agreed.
    let create_missing = |i: usize| i > 0 && base.is_empty();
    // Replicas are scanned at the same time: a remote one mostly waits on its agent.
    let scans: Vec<_> = std::thread::scope(|threads| {
        let running: Vec<_> = replicas
            .iter()
            .enumerate()
            .map(|(i, replica)| {
                let (scope, create) = (&scope, create_missing(i));
                threads.spawn(move || {
                    replica
                        .prepare(create, halt.fence())
                        .and_then(|()| replica.scan(scope, &spec.filter))
                })
            })
            .collect();
        running
            .into_iter()
            .map(|scan| scan.join().expect("a scan panicked"))
            .collect()
    });
    let mut trees = Vec::with_capacity(replicas.len());
    for (i, scanned) in scans.into_iter().enumerate() {
        trees.push(scanned.map_err(|source| match i {
            0 => EngineError::Source { job: job(), source },
            _ => EngineError::Destination { job: job(), source },
        })?);
    }
    if let Some(versions) = &spec.guards.versions {
        for tree in &mut trees {
            tree.retain(|path, _| !path.starts_with(versions));
        }
    }
    if scope == Scope::Full {
        refuse_vanished(spec, &replicas, &trees, &base)?;
    }
    let mut exec = Executor {
        replicas: &replicas,
        halt,
        on_event,
        summary: Summary::default(),
        failed: HashSet::new(),
        failed_at: HashSet::new(),
        planned: (spec.rule == Rule::Sync).then_some(trees.as_slice()),
        left: HashMap::new(),
        deltas: HashMap::new(),
        job: &spec.name,
    };
    match spec.rule {
        Rule::Mirror | Rule::Copy => {
            let plans: Vec<Vec<Action>> = (1..trees.len())
                .map(|d| plan_one_way(spec.rule, &trees[0], &trees[d], d))
                .collect();
            for actions in &plans {
                guard_deletes(spec, &replicas, actions)?;
            }
            let stamp = chrono_like_stamp(now_secs());
            for actions in plans {
                let actions = exec.find_moves(actions);
                let actions = match &spec.guards.versions {
                    Some(folder) if spec.rule == Rule::Mirror => {
                        keep_versions(actions, &folder.join(&stamp))
                    }
                    _ => actions,
                };
                exec.execute(actions)?;
            }
        }
        Rule::Sync => {
            let scoped = base::within(&base, &scope);
            let hashes = exec.hashes_to_compare(&trees, &scoped);
            let SyncPlan { actions, agreed } = plan_sync(&trees, &scoped, |a, b, path| {
                let hash = |r: usize| hashes.get(&(r, path.to_path_buf()));
                hash(a).is_some_and(|x| hash(b) == Some(x))
            });
            guard_deletes(spec, &replicas, &actions)?;
            exec.execute(actions)?;
            // A run that outlived its lease must not write the base either: a stale base
            // would bring deleted files back.
            exec.stop_if_halted()?;
            let agreed = unless_failed(agreed, &exec.failed, &scoped);
            base::merge(&mut base, &scope, agreed);
            base::save(replicas[0], &spec.name, &base).map_err(base_err)?;
        }
    }
    if scope == Scope::Full {
        let holds_files = match spec.rule {
            Rule::Mirror => vec![!trees[0].is_empty()],
            Rule::Sync => vec![!base.is_empty(); replicas.len()],
            Rule::Copy => vec![],
        };
        mark_replicas(&replicas, &holds_files);
    }
    let wire_after: u64 = replicas.iter().map(|r| r.wire_bytes()).sum();
    exec.summary.bytes_sent += wire_after - wire_before;
    Ok(exec.summary)
}

/// Fails before anything is deleted when the plan deletes more files at one replica than the
/// job allows.
fn guard_deletes(
    spec: &JobSpec,
    replicas: &[&dyn Endpoint],
    actions: &[Action],
) -> Result<(), EngineError> {
    let Some(max) = spec.guards.max_deletes else {
        return Ok(());
    };
    let mut per_replica = vec![0usize; replicas.len()];
    for action in actions {
        if matches!(&action.op, Op::Remove { entry } if !entry.is_dir()) {
            per_replica[action.replica] += 1;
        }
    }
    match per_replica
        .iter()
        .enumerate()
        .find(|(_, n)| **n as u64 > max)
    {
        Some((replica, &count)) => Err(EngineError::TooManyDeletes {
            job: spec.name.clone(),
            replica: replicas[replica].display(),
            count,
            max,
        }),
        None => Ok(()),
    }
}

/// Before a file at the destination is deleted or overwritten, keeps it as
/// `versions/PATH` (the run's dated versions folder).
fn keep_versions(mut actions: Vec<Action>, versions: &Path) -> Vec<Action> {
    let doomed: Vec<(usize, PathBuf)> = actions
        .iter()
        .filter(|a| match &a.op {
            Op::Remove { entry } => entry.kind == Kind::File,
            Op::Copy {
                entry, replaces, ..
            } => entry.kind == Kind::File && *replaces,
            _ => false,
        })
        .map(|a| (a.replica, a.path.clone()))
        .collect();
    for (replica, path) in doomed {
        actions.push(Action {
            replica,
            path: path.clone(),
            op: Op::KeepVersion {
                to: versions.join(&path),
            },
        });
    }
    actions
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Fails when a replica that should hold files scans empty and was never marked by ferry.
fn refuse_vanished(
    spec: &JobSpec,
    replicas: &[&dyn Endpoint],
    trees: &[Tree],
    base: &Tree,
) -> Result<(), EngineError> {
    let unmarked_empty =
        |i: usize| trees[i].is_empty() && !matches!(replicas[i].read_state(MARKER), Ok(Some(_)));
    let vanished = match spec.rule {
        Rule::Mirror if trees[1..].iter().any(|t| !t.is_empty()) => {
            unmarked_empty(0).then_some((0, "the destinations hold files a mirror would delete"))
        }
        Rule::Sync if !base.is_empty() => (0..replicas.len())
            .find(|&i| unmarked_empty(i))
            .map(|i| (i, "the last sync agreed on files there")),
        _ => None,
    };
    match vanished {
        Some((i, why)) => Err(EngineError::Vanished {
            job: spec.name.clone(),
            replica: replicas[i].display(),
            why,
        }),
        None => Ok(()),
    }
}

/// Marks the replicas a later run must find again (`holds_files[i]` for replica `i`): the
/// source of a mirror, every replica of a sync. Best effort: a read-only source goes without.
fn mark_replicas(replicas: &[&dyn Endpoint], holds_files: &[bool]) {
    for (replica, _) in replicas
        .iter()
        .zip(holds_files)
        .filter(|(_, holds)| **holds)
    {
        if !matches!(replica.read_state(MARKER), Ok(Some(_)))
            && let Err(e) = replica.write_state(MARKER, b"ferry synced this folder\n")
        {
            tracing::debug!(replica = replica.display(), error = %e, "could not mark replica");
        }
    }
}

/// Serialises runs of the same job in this process (a monitor and a schedule may share one).
fn job_lock(job: &str) -> Arc<Mutex<()>> {
    static LOCKS: Mutex<Option<HashMap<String, Arc<Mutex<()>>>>> = Mutex::new(None);
    let mut locks = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    locks
        .get_or_insert_with(HashMap::new)
        .entry(job.to_owned())
        .or_default()
        .clone()
}

/// Drops duplicate and nested paths: `a` covers `a/b`.
fn normalise(scope: &Scope) -> Scope {
    match scope {
        Scope::Full => Scope::Full,
        Scope::Paths(paths) if paths.iter().any(|p| p.as_os_str().is_empty()) => Scope::Full,
        Scope::Paths(paths) => {
            let unique: BTreeSet<&PathBuf> = paths.iter().collect();
            let list: Vec<PathBuf> = unique.iter().map(|p| (*p).clone()).collect();
            Scope::Paths(
                list.iter()
                    .filter(|p| !base::covered_by(p, &list))
                    .cloned()
                    .collect(),
            )
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// Write the entry (file, link or folder) found at replica `from`.
    Copy {
        from: usize,
        entry: Entry,
        /// The target held a file when planned: worth a delta against it.
        replaces: bool,
    },
    Remove {
        entry: Entry,
    },
    /// Move a losing version aside to `to` before the winner is written over it.
    KeepAside {
        to: PathBuf,
    },
    /// Keep the file as `to` in the versions folder before it is deleted or overwritten.
    KeepVersion {
        to: PathBuf,
    },
    /// Take the file's content from `from` on the same replica, which holds the same bytes
    /// (the source renamed or moved it): no file data crosses.
    LinkFrom {
        from: PathBuf,
        entry: Entry,
    },
    SetMtime {
        mtime: Mtime,
    },
    /// Report a path that cannot be handled automatically.
    Refuse {
        reason: String,
    },
}

/// The phase in which files and folders are written.
const COPY_PHASE: u8 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Action {
    replica: usize,
    path: PathBuf,
    op: Op,
}

impl Action {
    /// Execution phase: file removals, then folder removals deepest first, then conflict
    /// copies, then writes parents first, then folder times (writes change them).
    fn phase(&self) -> u8 {
        match &self.op {
            Op::Refuse { .. } => 0,
            Op::KeepVersion { .. } | Op::LinkFrom { .. } => 1,
            Op::Remove { entry } if !entry.is_dir() => 2,
            Op::Remove { .. } => 3,
            Op::KeepAside { .. } => 4,
            Op::Copy { .. } => COPY_PHASE,
            Op::SetMtime { .. } => 6,
        }
    }
}

fn plan_one_way(rule: Rule, src: &Tree, dst: &Tree, d: usize) -> Vec<Action> {
    let mut actions = Vec::new();
    let act = |path: &Path, op| Action {
        replica: d,
        path: path.to_path_buf(),
        op,
    };
    for (path, s) in src {
        let copy = || Op::Copy {
            from: 0,
            entry: s.clone(),
            replaces: dst.get(path).is_some_and(|t| t.kind == Kind::File),
        };
        match dst.get(path) {
            None => actions.push(act(path, copy())),
            Some(t) if s.looks_unchanged(t) => {
                if s.is_dir() && s.mtime != t.mtime {
                    actions.push(act(path, Op::SetMtime { mtime: s.mtime }));
                }
            }
            Some(t) if t.is_dir() != s.is_dir() && rule == Rule::Copy => {
                let reason = format!(
                    "is a {} at the destination but a {} at the source, and the copy rule deletes nothing",
                    kind_name(&t.kind),
                    kind_name(&s.kind)
                );
                actions.push(act(path, Op::Refuse { reason }));
            }
            Some(t) => {
                if t.is_dir() != s.is_dir() {
                    actions.push(act(path, Op::Remove { entry: t.clone() }));
                }
                actions.push(act(path, copy()));
                if s.is_dir() {
                    actions.push(act(path, Op::SetMtime { mtime: s.mtime }));
                }
            }
        }
        if s.is_dir() && !dst.contains_key(path) {
            actions.push(act(path, Op::SetMtime { mtime: s.mtime }));
        }
    }
    if rule == Rule::Mirror {
        for (path, t) in dst.iter().filter(|(path, _)| !src.contains_key(*path)) {
            actions.push(act(path, Op::Remove { entry: t.clone() }));
        }
    }
    // Writing or removing inside a folder changes its time: set it again afterwards.
    let timed: HashSet<PathBuf> = actions
        .iter()
        .filter(|a| matches!(a.op, Op::SetMtime { .. }))
        .map(|a| a.path.clone())
        .collect();
    let touched: BTreeSet<&Path> = actions
        .iter()
        .filter(|a| matches!(a.op, Op::Copy { .. } | Op::Remove { .. }))
        .filter_map(|a| a.path.parent())
        .filter(|parent| !parent.as_os_str().is_empty() && !timed.contains(*parent))
        .collect();
    let retimed: Vec<Action> = touched
        .into_iter()
        .filter_map(|dir| src.get(dir).filter(|s| s.is_dir()).map(|s| (dir, s.mtime)))
        .map(|(dir, mtime)| act(dir, Op::SetMtime { mtime }))
        .collect();
    actions.extend(retimed);
    actions
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::File => "file",
        Kind::Dir => "folder",
        Kind::Symlink { .. } => "link",
    }
}

struct SyncPlan {
    actions: Vec<Action>,
    /// The tree every replica holds once all actions succeed.
    agreed: Tree,
}

/// The new base: what was agreed, except that a path whose action failed keeps its old state,
/// so the next run sees the change again rather than taking the stale replica for a new change.
fn unless_failed(mut agreed: Tree, failed: &HashSet<PathBuf>, old: &Tree) -> Tree {
    for path in failed {
        match old.get(path) {
            Some(entry) => agreed.insert(path.clone(), entry.clone()),
            None => agreed.remove(path),
        };
    }
    agreed
}

/// Plans a multi-way sync. `same_content(a, b, path)` compares a path's file contents on two
/// replicas; it is only asked when both changed to the same size.
fn plan_sync(
    trees: &[Tree],
    base: &Tree,
    mut same_content: impl FnMut(usize, usize, &Path) -> bool,
) -> SyncPlan {
    let mut plan = SyncPlan {
        actions: Vec::new(),
        agreed: Tree::new(),
    };
    let paths: BTreeSet<&PathBuf> = trees
        .iter()
        .flat_map(|t| t.keys())
        .chain(base.keys())
        .collect();
    for path in paths {
        let states: Vec<Option<&Entry>> = trees.iter().map(|t| t.get(path)).collect();
        let was = base.get(path);
        let changed: Vec<usize> = (0..states.len())
            .filter(|&i| !same(states[i], was))
            .collect();
        let Some(&first) = changed.first() else {
            if let Some(entry) = was {
                plan.agreed.insert(path.clone(), entry.clone());
            }
            continue;
        };
        let mut equivalent = |a: usize, b: usize| match (states[a], states[b]) {
            (Some(x), Some(y))
                if x.kind == Kind::File && y.kind == Kind::File && x.size == y.size =>
            {
                x.mtime == y.mtime || same_content(a, b, path)
            }
            (x, y) => same(x, y),
        };
        let winner = changed
            .iter()
            .copied()
            .filter(|&i| states[i].is_some())
            .max_by_key(|&i| states[i].map(|e| e.mtime))
            .unwrap_or(first);
        let losers: Vec<usize> = changed
            .iter()
            .copied()
            .filter(|&i| !equivalent(i, winner))
            .collect();
        let target = states[winner];
        if losers
            .iter()
            .any(|&i| states[i].is_some_and(|e| e.is_dir() != target.is_some_and(Entry::is_dir)))
        {
            plan.actions.push(Action {
                replica: winner,
                path: path.clone(),
                op: Op::Refuse {
                    reason: "is a folder on one side and a file on another; rename one of them"
                        .into(),
                },
            });
            if let Some(entry) = was {
                plan.agreed.insert(path.clone(), entry.clone());
            }
            continue;
        }
        for (r, state) in states.iter().enumerate() {
            let Some(target) = target else {
                if let Some(entry) = state {
                    plan.actions.push(Action {
                        replica: r,
                        path: path.clone(),
                        op: Op::Remove {
                            entry: (*entry).clone(),
                        },
                    });
                }
                continue;
            };
            if r == winner {
                continue;
            }
            if losers.contains(&r) && state.is_some() {
                keep_aside(&mut plan, trees.len(), r, path, state.unwrap());
            } else if state.is_some_and(|s| {
                // A replica that did not change since the last run just holds the old
                // version: the new one goes as a delta, as rsync would send it, rather than
                // after reading both files whole to compare them.
                changed.contains(&r)
                    && equivalent(r, winner)
                    && s.mtime != target.mtime
                    && !s.is_dir()
            }) {
                plan.actions.push(Action {
                    replica: r,
                    path: path.clone(),
                    op: Op::SetMtime {
                        mtime: target.mtime,
                    },
                });
                continue;
            } else if state.is_some_and(|s| same(Some(s), Some(target))) {
                continue;
            }
            if let Some(s) = state.filter(|s| s.is_dir() != target.is_dir()) {
                plan.actions.push(Action {
                    replica: r,
                    path: path.clone(),
                    op: Op::Remove { entry: s.clone() },
                });
            }
            plan.actions.push(Action {
                replica: r,
                path: path.clone(),
                op: Op::Copy {
                    from: winner,
                    entry: target.clone(),
                    replaces: state.is_some_and(|s| s.kind == Kind::File) && !losers.contains(&r),
                },
            });
        }
        if let Some(target) = target {
            plan.agreed.insert(path.clone(), target.clone());
        }
    }
    plan
}

/// Moves replica `r`'s losing version of `path` aside and plans its copy to every replica.
fn keep_aside(plan: &mut SyncPlan, replicas: usize, r: usize, path: &Path, entry: &Entry) {
    let aside = conflict_name(path, entry.mtime, r);
    plan.actions.push(Action {
        replica: r,
        path: path.to_path_buf(),
        op: Op::KeepAside { to: aside.clone() },
    });
    for other in (0..replicas).filter(|&o| o != r) {
        plan.actions.push(Action {
            replica: other,
            path: aside.clone(),
            op: Op::Copy {
                from: r,
                entry: entry.clone(),
                replaces: false,
            },
        });
    }
    plan.agreed.insert(aside, entry.clone());
}

/// `report.txt` → `report.ferry-conflict-20261122-083000-r1.txt`: dated by the losing version
/// and naming its replica, so two losers of one conflict never take the same name.
fn conflict_name(path: &Path, mtime: Mtime, replica: usize) -> PathBuf {
    let stamp = format!("{}-r{replica}", chrono_like_stamp(mtime.secs));
    // Built from the name's bytes, not its text: two names in another encoding than UTF-8
    // must not come out as the same lossy name.
    let mut name = path.file_stem().unwrap_or_default().to_os_string();
    name.push(format!(".ferry-conflict-{stamp}"));
    if let Some(ext) = path.extension() {
        name.push(".");
        name.push(ext);
    }
    path.with_file_name(name)
}

/// UTC `YYYYMMDD-HHMMSS` without a date library (civil-from-days, Howard Hinnant).
fn chrono_like_stamp(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Where a copy lands, and under the sync rule what must still be there (see [`Expected`]).
struct Target<'p> {
    path: &'p Path,
    expected: Option<Expected>,
}

struct Executor<'a> {
    replicas: &'a [&'a dyn Endpoint],
    halt: &'a Halt,
    on_event: &'a mut dyn FnMut(Event),
    summary: Summary,
    /// Paths with at least one failed action in this run.
    failed: HashSet<PathBuf>,
    /// Where an action failed: later actions there are skipped (a failed move-aside must not be
    /// followed by writing the winner over the only copy of the loser).
    failed_at: HashSet<(usize, PathBuf)>,
    /// For a sync, what each replica held when planned: before the first write or removal at a
    /// path, the path must still hold it, or someone changed it during the run and the action
    /// waits for the next run (which sees the change) instead of destroying it.
    planned: Option<&'a [Tree]>,
    /// What this run left at a place it changed (nothing, after a move-aside or a removal):
    /// a later action there checks against this instead of the scan.
    left: HashMap<(usize, PathBuf), Option<Entry>>,
    /// Files sent to a remote replica as a delta, by replica and path, until their verdicts
    /// settle: one that did not rebuild is sent again whole then.
    deltas: HashMap<(usize, PathBuf), Resend>,
    job: &'a str,
}

/// Content hashes by replica and path.
type Hashes = HashMap<(usize, PathBuf), blake3::Hash>;

/// What sending a file again whole needs.
struct Resend {
    from: usize,
    entry: Entry,
    expected: Option<Expected>,
}

impl Executor<'_> {
    fn execute(&mut self, mut actions: Vec<Action>) -> Result<(), EngineError> {
        actions.sort_by(|a, b| {
            let order = a.phase().cmp(&b.phase());
            // Folders are removed deepest first; everything else parents first.
            let by_path = if a.phase() == 3 {
                b.path.cmp(&a.path)
            } else {
                a.path.cmp(&b.path)
            };
            order.then(by_path)
        });
        let mut replaced = self.replaced_files(&actions);
        let mut phase = None;
        for action in actions {
            self.stop_if_halted()?;
            // What a phase sent without waiting is settled before the next phase starts: a
            // file whose removal failed is not replaced by a folder, say.
            if phase.is_some_and(|p| p != action.phase()) {
                self.settle();
            }
            if phase != Some(action.phase()) && action.phase() == COPY_PHASE {
                for (r, paths) in replaced.drain() {
                    self.replicas[r].expect_signatures(paths);
                }
            }
            phase = Some(action.phase());
            let at = (action.replica, action.path.clone());
            if self.failed_at.contains(&at) {
                continue;
            }
            match self.verify(&action).and_then(|()| self.apply(&action)) {
                Ok(()) => {
                    if matches!(action.op, Op::Remove { .. } | Op::KeepAside { .. }) {
                        self.left.insert(at, None);
                    }
                }
                Err(error) => self.failed_there(at, error),
            }
        }
        self.settle();
        Ok(())
    }

    /// Per replica, the files the copy phase replaces, in order: their signatures are asked
    /// for then (see [`Endpoint::expect_signatures`]).
    fn replaced_files(&self, actions: &[Action]) -> HashMap<usize, Vec<PathBuf>> {
        let mut replaced: HashMap<usize, Vec<PathBuf>> = HashMap::new();
        for action in actions {
            if let Op::Copy {
                entry,
                replaces: true,
                ..
            } = &action.op
                && entry.kind == Kind::File
            {
                replaced
                    .entry(action.replica)
                    .or_default()
                    .push(action.path.clone());
            }
        }
        replaced
    }

    /// Turns the copy of a new file into a local duplicate when the same replica deletes a file
    /// of the same size and content in this run: the source renamed or moved it. Only pays
    /// across a network, where it saves the file's bytes for two local reads.
    fn find_moves(&self, mut actions: Vec<Action>) -> Vec<Action> {
        let mut removed: HashMap<(usize, u64), Vec<PathBuf>> = HashMap::new();
        for action in &actions {
            if let Op::Remove { entry } = &action.op
                && entry.kind == Kind::File
                && entry.size > 0
            {
                removed
                    .entry((action.replica, entry.size))
                    .or_default()
                    .push(action.path.clone());
            }
        }
        if removed.is_empty() {
            return actions;
        }
        let hashes = self.hashes_for_moves(&actions, &removed);
        for action in &mut actions {
            let Some((from, candidates)) = self.move_candidates(action, &removed) else {
                continue;
            };
            let Some(content) = hashes.get(&(from, action.path.clone())) else {
                continue;
            };
            let same = candidates
                .iter()
                .find(|old| hashes.get(&(action.replica, old.to_path_buf())) == Some(content));
            if let (Some(old), Op::Copy { entry, .. }) = (same, &action.op) {
                action.op = Op::LinkFrom {
                    from: old.clone(),
                    entry: entry.clone(),
                };
            }
        }
        actions
    }

    /// Every hash [`Self::find_moves`] compares, asked of each replica at once: across a
    /// network one by one they would cost a round trip each. A file that cannot be read has
    /// none (it is copied, not moved).
    fn hashes_for_moves(
        &self,
        actions: &[Action],
        removed: &HashMap<(usize, u64), Vec<PathBuf>>,
    ) -> Hashes {
        let mut wanted: HashMap<usize, BTreeSet<PathBuf>> = HashMap::new();
        for action in actions {
            if let Some((from, candidates)) = self.move_candidates(action, removed) {
                wanted.entry(from).or_default().insert(action.path.clone());
                wanted
                    .entry(action.replica)
                    .or_default()
                    .extend(candidates.iter().cloned());
            }
        }
        self.fetch_hashes(wanted)
    }

    /// The hashes the sync planner may compare (see [`plan_sync`]), asked of each replica at
    /// once: files of one size but different times at a path where two or more replicas
    /// changed since the last run (a first sync, say, of copies whose times were not kept).
    fn hashes_to_compare(&self, trees: &[Tree], base: &Tree) -> Hashes {
        let mut wanted: HashMap<usize, BTreeSet<PathBuf>> = HashMap::new();
        // Each path held by two replicas or more (a comparison needs two), taken once from the
        // first tree that has it: no set of every path is built, as the planner builds one.
        let paths = (trees.iter().enumerate())
            .flat_map(|(t, tree)| tree.keys().map(move |path| (t, path)))
            .filter(|&(t, path)| !trees[..t].iter().any(|earlier| earlier.contains_key(path)))
            .filter(|&(t, path)| trees[t + 1..].iter().any(|later| later.contains_key(path)));
        for (_, path) in paths {
            let was = base.get(path);
            let changed: Vec<(usize, &Entry)> = (trees.iter().enumerate())
                .filter_map(|(r, tree)| tree.get(path).map(|entry| (r, entry)))
                .filter(|(_, entry)| entry.kind == Kind::File && !same(Some(entry), was))
                .collect();
            for (r, entry) in &changed {
                let alike = |(other, them): &(usize, &Entry)| {
                    other != r && them.size == entry.size && them.mtime != entry.mtime
                };
                if changed.iter().any(alike) {
                    wanted.entry(*r).or_default().insert(path.clone());
                }
            }
        }
        self.fetch_hashes(wanted)
    }

    /// The hashes of files on several replicas, each replica asked once; a file that cannot
    /// be read has none.
    fn fetch_hashes(&self, wanted: HashMap<usize, BTreeSet<PathBuf>>) -> Hashes {
        let mut hashes = HashMap::new();
        for (replica, paths) in wanted {
            let paths: Vec<PathBuf> = paths.into_iter().collect();
            let found = self.replicas[replica].hashes(&paths);
            for (path, hash) in paths.into_iter().zip(found) {
                if let Ok(hash) = hash {
                    hashes.insert((replica, path), hash);
                }
            }
        }
        hashes
    }

    /// For the copy of a file new at its replica, across a network: the replica it comes from,
    /// and the files of its size the run deletes there (each may be it, moved).
    fn move_candidates<'r>(
        &self,
        action: &Action,
        removed: &'r HashMap<(usize, u64), Vec<PathBuf>>,
    ) -> Option<(usize, &'r [PathBuf])> {
        let Op::Copy {
            from,
            entry,
            replaces: false,
        } = &action.op
        else {
            return None;
        };
        let remote = self.replicas[*from].is_remote() || self.replicas[action.replica].is_remote();
        let candidates = removed
            .get(&(action.replica, entry.size))
            .filter(|_| remote)?;
        Some((*from, candidates))
    }

    /// Collects what the replicas did without making the run wait: a file that failed after
    /// all is counted and reported as failed, a removal as done or failed. A delta that did not
    /// rebuild is sent again whole, and settled in turn.
    fn settle(&mut self) {
        loop {
            let resends = self.settle_once();
            if resends.is_empty() {
                return;
            }
            for ((r, path), resend) in resends {
                tracing::debug!(path = %path.display(), "delta did not rebuild; sending whole");
                let target = Target {
                    path: &path,
                    expected: resend.expected,
                };
                let (from, to) = (self.replicas[resend.from], self.replicas[r]);
                if let Err(e) = self.transfer(from, to, &target, &resend.entry, None) {
                    self.write_failed((r, path), e.to_string());
                }
            }
        }
    }

    /// Settles every replica once; returns the deltas that did not rebuild.
    fn settle_once(&mut self) -> Vec<((usize, PathBuf), Resend)> {
        let mut deltas = std::mem::take(&mut self.deltas);
        let mut resends = Vec::new();
        for r in 0..self.replicas.len() {
            let replica = self.replicas[r];
            let settled = replica.settle();
            for (path, error) in settled.failed_writes {
                let at = (r, path);
                match deltas.remove(&at).filter(|_| error.is_bad_delta()) {
                    Some(resend) => resends.push((at, resend)),
                    None => self.write_failed(at, error.to_string()),
                }
            }
            for (path, error) in settled.failed_dirs {
                self.summary.dirs_created = self.summary.dirs_created.saturating_sub(1);
                self.failed_there((r, path), error.to_string());
            }
            for (path, error) in settled.failed_changes {
                // A move that failed fails its time too: the file is reported once.
                if !self.failed_at.contains(&(r, path.clone())) {
                    self.failed_there((r, path), error.to_string());
                }
            }
            for (path, removed) in settled.removals {
                match removed {
                    Ok(removed) => self.removed(replica, path, removed),
                    Err(error) => self.failed_there((r, path), error.to_string()),
                }
            }
        }
        resends
    }

    /// A file counted as copied failed after all.
    fn write_failed(&mut self, at: (usize, PathBuf), error: String) {
        self.summary.files_copied = self.summary.files_copied.saturating_sub(1);
        self.failed_there(at, error);
    }

    /// An action at a replica's path failed: later ones there are skipped.
    fn failed_there(&mut self, at: (usize, PathBuf), error: String) {
        self.fail(&at.1, error);
        self.failed_at.insert(at);
    }

    /// Counts and reports a file's removal, if there was anything to remove.
    fn removed(&mut self, replica: &dyn Endpoint, path: PathBuf, removed: bool) {
        if removed {
            self.summary.files_deleted += 1;
            (self.on_event)(Event::Deleted {
                at: replica.display(),
                path,
            });
        }
    }

    fn stop_if_halted(&self) -> Result<(), EngineError> {
        if self.halt.is_halted() {
            return Err(EngineError::Cancelled {
                job: self.job.to_owned(),
            });
        }
        Ok(())
    }

    /// Under the sync rule, what `action`'s path must hold before the action changes it: what
    /// the scan saw, or what this run left there.
    fn expected(&self, action: &Action) -> Option<Expected> {
        let planned = self.planned?;
        let entry = match self.left.get(&(action.replica, action.path.clone())) {
            Some(left) => left.clone(),
            None => planned[action.replica].get(&action.path).cloned(),
        };
        Some(Expected { entry })
    }

    /// Fails an action whose target changed since the scan (see `planned`). A file's or a
    /// folder's copy and a removal are checked by their replica instead, where the path is
    /// (see [`Expected`]): across a network that costs no round trip each.
    fn verify(&self, action: &Action) -> Result<(), String> {
        let checked_here = match &action.op {
            Op::Copy { entry, .. } => matches!(entry.kind, Kind::Symlink { .. }),
            Op::KeepAside { .. } => true,
            _ => false,
        };
        if !checked_here {
            return Ok(());
        }
        let Some(expected) = self.expected(action) else {
            return Ok(());
        };
        let replica = self.replicas[action.replica];
        let now = replica.stat(&action.path).map_err(|e| e.to_string())?;
        if expected.is_met_by(now.as_ref()) {
            Ok(())
        } else {
            Err(format!(
                "{} changed in {} during the sync; it is synced again on the next run",
                action.path.display(),
                replica.display()
            ))
        }
    }

    fn apply(&mut self, action: &Action) -> Result<(), String> {
        let replica = self.replicas[action.replica];
        let path = &action.path;
        match &action.op {
            Op::Refuse { reason } => return Err(format!("{} {reason}", path.display())),
            Op::Copy {
                from,
                entry,
                replaces,
            } => {
                let target = Target {
                    path,
                    expected: self.expected(action),
                };
                self.copy(*from, replica, &target, entry, *replaces)
                    .map_err(|e| e.to_string())?;
                // Its verdict, which says whether a delta rebuilt, comes when it settles.
                if *replaces && entry.kind == Kind::File && replica.is_remote() {
                    let resend = Resend {
                        from: *from,
                        entry: entry.clone(),
                        expected: target.expected,
                    };
                    self.deltas.insert((action.replica, path.clone()), resend);
                }
            }
            Op::Remove { entry } if entry.is_dir() => {
                let expected = self.expected(action);
                replica
                    .remove(path, entry, expected.as_ref())
                    .map_err(|e| e.to_string())?;
            }
            // Files go without waiting where that saves a round trip each; their outcomes
            // are collected before the next phase (see `execute`).
            Op::Remove { entry } => {
                let expected = self.expected(action);
                if let Some(removed) = replica
                    .remove_later(path, entry, expected.as_ref())
                    .map_err(|e| e.to_string())?
                {
                    self.removed(replica, path.clone(), removed);
                }
            }
            Op::KeepAside { to } => {
                replica.rename(path, to).map_err(|e| e.to_string())?;
                self.summary.conflicts += 1;
                (self.on_event)(Event::Conflict {
                    at: replica.display(),
                    path: path.clone(),
                    kept_as: to.clone(),
                });
            }
            Op::SetMtime { mtime } => replica
                .set_mtime_later(path, *mtime)
                .map_err(|e| e.to_string())?,
            Op::LinkFrom { from, entry } => {
                replica
                    .duplicate_later(from, path)
                    .map_err(|e| e.to_string())?;
                // A moved file usually keeps its time; setting it anyway costs less than
                // asking, as it goes without waiting.
                replica
                    .set_mtime_later(path, entry.mtime)
                    .map_err(|e| e.to_string())?;
                self.summary.files_copied += 1;
                self.summary.bytes_total += entry.size;
                (self.on_event)(Event::Copied {
                    to: replica.display(),
                    path: path.clone(),
                    bytes: entry.size,
                });
            }
            Op::KeepVersion { to } => {
                replica.duplicate(path, to).map_err(|e| e.to_string())?;
                self.summary.versions_kept += 1;
            }
        }
        Ok(())
    }

    fn copy(
        &mut self,
        from: usize,
        to: &dyn Endpoint,
        target: &Target,
        entry: &Entry,
        replaces: bool,
    ) -> Result<(), EndpointError> {
        let path = target.path;
        match entry.kind {
            Kind::Dir => {
                to.make_dir_later(path, entry, target.expected.as_ref())?;
                self.summary.dirs_created += 1;
                return Ok(());
            }
            Kind::Symlink { .. } => to.make_symlink(path, entry)?,
            Kind::File => {
                let bytes = self.copy_file(self.replicas[from], to, target, entry, replaces)?;
                self.summary.bytes_total += bytes;
            }
        }
        self.summary.files_copied += 1;
        (self.on_event)(Event::Copied {
            to: to.display(),
            path: path.to_path_buf(),
            bytes: entry.size,
        });
        Ok(())
    }

    /// Copies a file's content, as a delta against what the destination holds when either side
    /// is across a network. A delta that does not rebuild the file (a false block match, or a
    /// destination changed meanwhile) is retried whole: at once here, or when its verdict
    /// settles for a remote destination (see `deltas`).
    fn copy_file(
        &mut self,
        from: &dyn Endpoint,
        to: &dyn Endpoint,
        target: &Target,
        entry: &Entry,
        replaces: bool,
    ) -> Result<u64, EndpointError> {
        let path = target.path;
        let local = !from.is_remote() && !to.is_remote();
        let base = match replaces && !local {
            true => to.signature(path)?,
            false => None,
        };
        let written = match self.transfer(from, to, target, entry, base.as_ref()) {
            Err(e) if base.is_some() && e.is_bad_delta() => {
                tracing::debug!(path = %path.display(), error = %e, "delta failed; sending whole");
                self.transfer(from, to, target, entry, None)?
            }
            other => other?,
        };
        if local {
            self.summary.bytes_sent += written;
        }
        Ok(written)
    }

    /// Streams one file from `from` into `to`, stopping mid-file once halted.
    fn transfer(
        &self,
        from: &dyn Endpoint,
        to: &dyn Endpoint,
        target: &Target,
        entry: &Entry,
        base: Option<&Signature>,
    ) -> Result<u64, EndpointError> {
        let path = target.path;
        let block_size = base.map(|s| s.block_size);
        let mut sink = to.receive_file(path, entry, block_size, target.expected.as_ref())?;
        let mut sink_error = None;
        let sent = from.send_file(path, base, &mut |op| {
            if self.halt.is_halted() {
                return Err(io::Error::other(
                    "halted: the lease for this work is no longer held",
                ));
            }
            sink.write(op).map_err(|e| {
                let message = e.to_string();
                sink_error = Some(e);
                io::Error::other(message)
            })
        });
        let sent = match (sent, sink_error) {
            (_, Some(e)) => return Err(e),
            (sent, None) => sent?,
        };
        // Checked once more after the last byte: a copy that outlived its lease must not be
        // renamed into place.
        if self.halt.is_halted() {
            return Err(EndpointError::new(
                "write",
                to.display(),
                io::Error::other("halted: the lease for this work is no longer held"),
            ));
        }
        sink.commit(&sent)
    }

    fn fail(&mut self, path: &Path, error: String) {
        self.summary.failures += 1;
        self.summary
            .first_failure
            .get_or_insert_with(|| error.clone());
        self.failed.insert(path.to_path_buf());
        (self.on_event)(Event::Failed {
            path: path.to_path_buf(),
            error,
        });
    }
}

#[cfg(test)]
mod tests;
