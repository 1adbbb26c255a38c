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

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::base::{self, BaseError};

pub use crate::endpoint::Scope;
use crate::endpoint::{Endpoint, EndpointError, Failure};
pub use crate::fence::Halt;
use crate::filter::Filter;
use crate::locks::JobLocks;
use crate::meta::Keep;
use crate::tree::{Kind, Mtime, Node, Tree, check_parents};

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
    /// With `Some`, a full run of a job whose replicas all keep a change journal looks only
    /// at what changed since its last run, and scans everything at least this often
    /// ([`journal`]); with `None`, every full run scans everything.
    pub full_scan_every: Option<std::time::Duration>,
}

/// What a job may destroy, and what it keeps of what it replaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guards {
    /// A run that would delete more files than this at any replica deletes nothing and fails.
    pub max_deletes: Option<u64>,
    /// Mirror only: a folder (relative to each destination) that receives the files a run
    /// deletes or overwrites there, under the run's date, instead of destroying them.
    pub versions: Option<PathBuf>,
    /// Mirror and copy: files whose size and time agree are compared by content too, and
    /// copied when it differs (`rsync --checksum`).
    #[serde(default)]
    pub checksum: bool,
    /// The metadata the replicas keep beyond content, mode and times.
    #[serde(default)]
    pub keep: Keep,
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
    /// Something a run leaves alone on purpose (a FIFO, a socket, a device), and why.
    Skipped {
        at: String,
        #[serde(with = "crate::raw_path")]
        path: PathBuf,
        why: String,
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
    let (mut base, ready) = match spec.rule {
        Rule::Sync => {
            // The base is in the source, read through it once it is prepared (a remote one
            // has no session before).
            prepare_replicas(spec, &replicas[..1], halt, Missing::Create(|_| false), 0)?;
            (base::load(replicas[0], &spec.name).map_err(base_err)?, 1)
        }
        Rule::Mirror | Rule::Copy => (Tree::new(), 0),
    };
    // A sync replica that vanished (an unmounted disk) must not read as "everything deleted":
    // its root is only created on the first run, before anything was agreed.
    let create_missing = |i: usize| i > 0 && base.is_empty();
    let missing = Missing::Create(create_missing);
    let present = prepare_replicas(spec, &replicas, halt, missing, ready)?;
    let journal = (spec.full_scan_every)
        .filter(|_| scope == Scope::Full)
        .and_then(|every| journal::consult(spec, &replicas, every));
    let journaled = journal.as_ref().and_then(Consulted::scope);
    let scope = journaled.map_or(scope, |changed| normalise(&changed));
    let (mut trees, mut twins) = scan_replicas(spec, &replicas, &present, &scope)?;
    let scope = if scope != Scope::Full && names_elsewhere(spec, &trees[0]) {
        // Another name of a changed file may lie outside the scope: only a full scan finds
        // it, and a destination that kept it as a link must not keep its old content.
        (trees, twins) = scan_replicas(spec, &replicas, &present, &Scope::Full)?;
        Scope::Full
    } else {
        scope
    };
    let mut owners = owner_maps(spec, &replicas, &trees)?;
    if let Some(alike) = &twins
        && !owners.read_as_themselves(&replicas, (0, 1), &alike.owners)
    {
        // Files alike by number are not alike by name: each needs its owner set.
        (trees, twins) = (scan_prepared(spec, &replicas, &present, &scope)?, None);
        owners = owner_maps(spec, &replicas, &trees)?;
    }
    let keep_specials = spec.guards.keep.specials && spec.rule != Rule::Sync;
    skip_special_files(&replicas, &mut trees, keep_specials, on_event);
    report_unkept(spec, &replicas, on_event);
    if let Some(versions) = &spec.guards.versions {
        for tree in &mut trees {
            tree.retain(|path, _| !path.starts_with(versions));
        }
    }
    let alike = twins.as_ref().is_some_and(|twins| twins.count > 0);
    let found: Vec<bool> = trees.iter().map(|tree| !tree.is_empty() || alike).collect();
    if scope == Scope::Full {
        refuse_vanished(spec, &replicas, &found, &base)?;
    }
    if let Some(journal) = journal.as_ref().filter(|_| scope == Scope::Full) {
        journal.check(spec, &replicas, &trees, &base);
    }
    if spec.rule == Rule::Sync {
        // Every replica's owners as the source numbers them: the sync compares them, and its
        // base keeps them so.
        for (r, tree) in trees.iter_mut().enumerate().skip(1) {
            for entry in tree.values_mut() {
                entry.set_owner(entry.owner().map(|owner| owners.map(r, 0, owner)));
            }
        }
    }
    let planned = (spec.rule == Rule::Sync).then_some(trees.as_slice());
    let mut exec = Executor::new(spec, &replicas, (halt, on_event), owners, planned);
    match spec.rule {
        Rule::Mirror | Rule::Copy => one_way(spec, &mut exec, &trees)?,
        Rule::Sync => {
            let scoped = base::within(&mut base, &scope);
            let agreed = sync(spec, &mut exec, &trees, &scoped)?;
            base::merge(&mut base, &scope, agreed);
            base::save(replicas[0], &spec.name, &base).map_err(base_err)?;
        }
    }
    if scope == Scope::Full {
        let holds_files = match spec.rule {
            Rule::Mirror => vec![found[0]],
            Rule::Sync => vec![!base.is_empty(); replicas.len()],
            Rule::Copy => vec![],
        };
        mark_replicas(&replicas, &holds_files);
        if spec.rule != Rule::Sync {
            exec.match_roots();
        }
    }
    if let Some(journal) = journal.filter(|_| exec.summary.failures == 0) {
        journal.save(replicas[0], &spec.name, scope == Scope::Full);
    }
    let wire_after: u64 = replicas.iter().map(|r| r.wire_bytes()).sum();
    exec.summary.bytes_sent += wire_after - wire_before;
    Ok(exec.summary)
}

/// How a scan treats a replica's missing root folder.
#[derive(Clone, Copy)]
enum Missing<F> {
    /// Creates it where `F` says so (a run).
    Create(F),
    /// Takes a missing destination as empty, creating nothing (a preview).
    Empty,
}

/// Prepares every replica at the same time (a remote one mostly waits on its agent); which
/// are there to scan (a preview takes a missing destination as empty). The source's failure
/// or a destination's fails the run. The first `ready` were prepared before, and are left so.
fn prepare_replicas<F: Fn(usize) -> bool + Copy + Send + Sync>(
    spec: &JobSpec,
    replicas: &[&dyn Endpoint],
    halt: &Halt,
    missing: Missing<F>,
    ready: usize,
) -> Result<Vec<bool>, EngineError> {
    on_each(spec, replicas, |i, replica| {
        let fence = halt.presented_fence();
        if i < ready {
            return Ok(true);
        }
        match missing {
            Missing::Create(create) => replica.prepare(create(i), fence.as_ref()).map(|()| true),
            Missing::Empty => match replica.prepare(false, fence.as_ref()) {
                Err(e) if i > 0 && e.source.kind() == io::ErrorKind::NotFound => Ok(false),
                prepared => prepared.map(|()| true),
            },
        }
    })
}

/// Scans the replicas [`prepare_replicas`] found, in step where the run allows it (see
/// [`in_step`]): the trees, and what was found alike and left out of them.
fn scan_replicas(
    spec: &JobSpec,
    replicas: &[&dyn Endpoint],
    present: &[bool],
    scope: &Scope,
) -> Result<(Vec<Tree>, Option<in_step::Twins>), EngineError> {
    if in_step::applies(spec) && present.iter().all(|p| *p) {
        if let Some(found) = in_step::scan(spec, replicas, scope)? {
            return Ok((found.trees, Some(found.twins)));
        }
        tracing::warn!(
            job = spec.name,
            "a scan came out of order; scanning again whole"
        );
    }
    Ok((scan_prepared(spec, replicas, present, scope)?, None))
}

/// Scans the replicas [`prepare_replicas`] found, at the same time; the others are empty.
fn scan_prepared(
    spec: &JobSpec,
    replicas: &[&dyn Endpoint],
    present: &[bool],
    scope: &Scope,
) -> Result<Vec<Tree>, EngineError> {
    on_each(spec, replicas, |i, replica| match present[i] {
        true => (replica.scan(scope, &spec.filter)).and_then(|tree| checked(replica, tree, scope)),
        false => Ok(Tree::new()),
    })
}

/// `work` done for every replica, each on a thread of its own.
fn on_each<T: Send>(
    spec: &JobSpec,
    replicas: &[&dyn Endpoint],
    work: impl Fn(usize, &dyn Endpoint) -> Result<T, EndpointError> + Sync,
) -> Result<Vec<T>, EngineError> {
    let work = &work;
    let done: Vec<_> = std::thread::scope(|threads| {
        let running: Vec<_> = (replicas.iter().enumerate())
            .map(|(i, replica)| threads.spawn(move || work(i, *replica)))
            .collect();
        running
            .into_iter()
            .map(|thread| thread.join().expect("a replica's thread panicked"))
            .collect()
    });
    (done.into_iter().enumerate())
        .map(|(i, result)| result.map_err(|source| replica_error(spec, i, source)))
        .collect()
}

/// `source`, a failure at replica `i` of `spec`, as the run reports it.
fn replica_error(spec: &JobSpec, i: usize, source: EndpointError) -> EngineError {
    let job = spec.name.clone();
    match i {
        0 => EngineError::Source { job, source },
        _ => EngineError::Destination { job, source },
    }
}

/// Leaves FIFOs, sockets and devices out of every replica's tree, each with a warning event,
/// unless the job keeps them (`keep`): ferry never opens one (a FIFO would block a reader).
fn skip_special_files(
    replicas: &[&dyn Endpoint],
    trees: &mut [Tree],
    keep: bool,
    on_event: &mut dyn FnMut(Event),
) {
    for (replica, tree) in replicas.iter().zip(trees) {
        tree.retain(|path, entry| {
            let Kind::Special(node) = entry.kind() else {
                return true;
            };
            if keep && node != Node::Unknown {
                return true;
            }
            on_event(Event::Skipped {
                at: replica.display(),
                path: path.to_path_buf(),
                why: format!(
                    "{}: ferry syncs files, folders and symlinks, and never opens one \
                     (a job made with --specials makes one of the same kind)",
                    node.describe()
                ),
            });
            false
        });
    }
}

/// Says, once per run and replica written to, what the job keeps that the replica cannot
/// (owners, where its writer is not root; whatever an agent says it lacks).
fn report_unkept(spec: &JobSpec, replicas: &[&dyn Endpoint], on_event: &mut dyn FnMut(Event)) {
    let written = match spec.rule {
        Rule::Sync => replicas,
        Rule::Mirror | Rule::Copy => &replicas[1..],
    };
    let wanted = spec.guards.keep;
    for replica in written {
        let can = replica.capabilities().keeps;
        let unkept: Vec<&str> = [
            (wanted.owner && !can.owner, "owners and groups"),
            (wanted.acls && !can.acls, "ACLs"),
            (wanted.xattrs && !can.xattrs, "extended attributes"),
            (wanted.hard_links && !can.hard_links, "hard links"),
            (wanted.specials && !can.specials, "special files"),
        ]
        .into_iter()
        .filter_map(|(unkept, what)| unkept.then_some(what))
        .collect();
        if !unkept.is_empty() {
            on_event(Event::Skipped {
                at: replica.display(),
                path: PathBuf::new(),
                why: format!(
                    "{} are not kept there: its writer cannot set them (owners need root)",
                    unkept.join(", ")
                ),
            });
        }
    }
}

/// How owners read from one replica to another: by name when the job keeps owners, not by
/// number, and some replica is on another machine (see [`owners`]).
fn owner_maps(
    spec: &JobSpec,
    replicas: &[&dyn Endpoint],
    trees: &[Tree],
) -> Result<OwnerMaps, EngineError> {
    let keep = spec.guards.keep;
    let elsewhere = replicas.iter().any(|r| r.capabilities().across_network);
    if !keep.owner || keep.numeric_ids || !elsewhere {
        return Ok(OwnerMaps::default());
    }
    let travel: Vec<usize> = match spec.rule {
        Rule::Sync => (0..replicas.len()).collect(),
        Rule::Mirror | Rule::Copy => vec![0],
    };
    OwnerMaps::ask(replicas, trees, &travel).map_err(|(r, source)| match r {
        0 => EngineError::Source {
            job: spec.name.clone(),
            source,
        },
        _ => EngineError::Destination {
            job: spec.name.clone(),
            source,
        },
    })
}

/// Whether a mirror or a copy that keeps hard links scanned a file with more than one name.
fn names_elsewhere(spec: &JobSpec, source: &Tree) -> bool {
    spec.rule != Rule::Sync
        && spec.guards.keep.hard_links
        && source.values().any(|entry| entry.link().is_some())
}

/// `tree`, once it is known to list nothing under a non-folder (see [`check_parents`]).
fn checked(replica: &dyn Endpoint, tree: Tree, scope: &Scope) -> Result<Tree, EndpointError> {
    match check_parents(&tree, *scope == Scope::Full) {
        Ok(()) => Ok(tree),
        Err(why) => {
            let refused = io::Error::new(io::ErrorKind::InvalidData, format!("{why}; refused"));
            Err(EndpointError::new("scan", replica.display(), refused).meaning(Failure::Outside))
        }
    }
}

/// Mirror and copy: each destination is planned against the source, then brought in line.
fn one_way(spec: &JobSpec, exec: &mut Executor, trees: &[Tree]) -> Result<(), EngineError> {
    let plans = plan_destinations(spec, exec, trees);
    for plan in &plans {
        guard_deletes(spec, exec.replicas, &plan.actions)?;
    }
    let stamp = utc_stamp(now_secs());
    for plan in plans {
        let plan = finish_plan(spec, exec, plan, &stamp);
        exec.execute(plan)?;
    }
    Ok(())
}

/// Mirror and copy: what each destination needs to match the source.
fn plan_destinations<'t>(spec: &JobSpec, exec: &Executor, trees: &'t [Tree]) -> Vec<Plan<'t>> {
    let differ = match spec.guards.checksum {
        true => exec.content_differs(trees),
        false => vec![HashSet::new(); trees.len() - 1],
    };
    let mut plans: Vec<Plan> = (1..trees.len())
        .map(|d| {
            let keep = exec.keeps(exec.replicas[d]);
            let owner_there = |owner| exec.owners.map(0, d, owner);
            let trees = (&trees[0], &trees[d]);
            plan_one_way(spec.rule, trees, d, &differ[d - 1], (keep, &owner_there))
        })
        .collect();
    retime_unlisted(exec.replicas[0], &trees[0], &mut plans);
    plans
}

/// A destination's plan once the deletions are allowed: moved files taken from where they
/// were, and (a mirror keeping versions) what is deleted or overwritten kept first.
fn finish_plan<'t>(spec: &JobSpec, exec: &Executor, plan: Plan<'t>, stamp: &str) -> Plan<'t> {
    let mut plan = exec.find_moves(plan);
    if let Some(folder) = spec
        .guards
        .versions
        .as_ref()
        .filter(|_| spec.rule == Rule::Mirror)
    {
        keep_versions(&mut plan.actions, &folder.join(stamp));
    }
    plan
}

/// The sync rule over `base` (the last agreed tree, within the run's scope): every replica
/// is planned against every other; returns the tree they now agree on.
fn sync(
    spec: &JobSpec,
    exec: &mut Executor,
    trees: &[Tree],
    base: &Tree,
) -> Result<Tree, EngineError> {
    let hashes = exec.hashes_to_compare(trees, base);
    let keep = (exec.replicas.iter()).fold(spec.guards.keep, |keep, r| keep.and(exec.keeps(*r)));
    let SyncPlan {
        actions, agreed, ..
    } = plan_sync((trees, base), keep, |a, b, path| {
        let hash = |r: usize| hashes.get(&(r, path.to_path_buf()));
        hash(a).is_some_and(|x| hash(b) == Some(x))
    });
    guard_deletes(spec, exec.replicas, &actions)?;
    let plan = exec.find_moves(Plan::from(actions));
    exec.execute(plan)?;
    // A run that outlived its lease must not write the base either: a stale base would bring
    // deleted files back.
    exec.stop_if_halted()?;
    Ok(unless_failed(agreed, &exec.failed, base))
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
fn keep_versions<'t>(actions: &mut Vec<Action<'t>>, versions: &Path) {
    let doomed: Vec<(usize, Cow<'t, Path>)> = actions
        .iter()
        .filter(|a| match &a.op {
            Op::Remove { entry } => entry.kind() == Kind::File,
            Op::Copy {
                entry, replaces, ..
            } => entry.kind() == Kind::File && *replaces,
            Op::HardLink { replaces, .. } => *replaces,
            _ => false,
        })
        .map(|a| (a.replica, a.path.clone()))
        .collect();
    for (replica, path) in doomed {
        actions.push(Action {
            replica,
            path: path.clone(),
            op: Op::KeepVersion {
                to: versions.join(&*path),
            },
        });
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Fails when a replica that should hold files scans empty (`found[i]`: whether replica
/// `i`'s scan found anything) and was never marked by ferry.
fn refuse_vanished(
    spec: &JobSpec,
    replicas: &[&dyn Endpoint],
    found: &[bool],
    base: &Tree,
) -> Result<(), EngineError> {
    let unmarked_empty =
        |i: usize| !found[i] && !matches!(replicas[i].read_state(MARKER), Ok(Some(_)));
    let vanished = match spec.rule {
        Rule::Mirror if found[1..].iter().any(|found| *found) => {
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
/// Folders a plan writes or removes in that its scan did not list (the replica root, and under
/// a scoped run the folders above its paths) change their time too: it is asked of the source
/// once per folder and set again after the writes, as for the folders the scan listed.
fn retime_unlisted(source: &dyn Endpoint, src: &Tree, plans: &mut [Plan]) {
    let mut times: HashMap<PathBuf, Option<Mtime>> = HashMap::new();
    for (d, plan) in plans.iter_mut().enumerate() {
        let replica = d + 1;
        let timed: HashSet<&Path> = (plan.actions.iter())
            .filter(|a| matches!(a.op, Op::SetMtime { .. }))
            .map(|a| &*a.path)
            .collect();
        let unlisted: BTreeSet<PathBuf> = (plan.folder_changes())
            .filter_map(Path::parent)
            .filter(|dir| !src.contains_key(*dir) && !timed.contains(*dir))
            .map(Path::to_path_buf)
            .collect();
        for dir in unlisted {
            let mtime = *times.entry(dir.clone()).or_insert_with(|| {
                let found = source.stat(&dir).ok().flatten();
                found
                    .filter(|entry| entry.is_dir())
                    .map(|entry| entry.mtime)
            });
            if let Some(mtime) = mtime {
                plan.actions.push(Action {
                    replica,
                    path: dir.into(),
                    op: Op::SetMtime { mtime },
                });
            }
        }
    }
}

fn mark_replicas(replicas: &[&dyn Endpoint], holds_files: &[bool]) {
    for (replica, _) in replicas
        .iter()
        .zip(holds_files)
        .filter(|(_, holds)| **holds)
    {
        if !matches!(replica.read_state(MARKER), Ok(Some(_)))
            && let Err(e) = replica.write_state_bytes(MARKER, b"ferry synced this folder\n")
        {
            tracing::debug!(replica = replica.display(), error = %e, "could not mark replica");
        }
    }
}

/// Serialises runs of the same job in this process (a monitor and a schedule may share one).
fn job_lock(job: &str) -> Arc<Mutex<()>> {
    static LOCKS: JobLocks<Mutex<()>> = JobLocks::new();
    LOCKS.get(job)
}

/// Drops duplicate and nested paths: `a` covers `a/b`.
fn normalise(scope: &Scope) -> Scope {
    match scope {
        Scope::Full => Scope::Full,
        Scope::Paths(paths) if paths.iter().any(|p| p.as_os_str().is_empty()) => Scope::Full,
        Scope::Paths(paths) => {
            // In path order, whatever lies under a path comes right after it.
            let unique: BTreeSet<&PathBuf> = paths.iter().collect();
            let mut kept: Vec<PathBuf> = Vec::with_capacity(unique.len());
            for path in unique {
                if !kept.last().is_some_and(|above| path.starts_with(above)) {
                    kept.push(path.clone());
                }
            }
            Scope::Paths(kept)
        }
    }
}

mod execute;
mod in_step;
mod journal;
mod moves;
mod owners;
mod plan;
mod preview;

pub use preview::{Planned, preview};

use execute::Executor;
use journal::Consulted;
use owners::OwnerMaps;
use plan::{Action, Op, Plan, SyncPlan, plan_one_way, plan_sync, unless_failed, utc_stamp};

#[cfg(test)]
mod tests;
