//! What a mirror or a copy would do, without doing it (`ferry job dry-run`): the replicas are
//! scanned and the run planned exactly as a run plans it, then the plan is listed instead of
//! carried out. Nothing is written, not even a missing destination folder (it counts as
//! empty). The sync rule's plan depends on its base, which only a run may move: it has no
//! preview.

use std::path::PathBuf;

use serde::Serialize;

use super::plan::{Action, Op, utc_stamp};
use super::{
    EngineError, Executor, JobSpec, Missing, Rule, finish_plan, now_secs, owner_maps,
    plan_destinations, prepare_replicas, refuse_vanished, scan_prepared, skip_special_files,
};
use crate::endpoint::{Endpoint, Scope};
use crate::fence::Halt;
use crate::tree::{Kind, Tree};

/// One thing a run would do at one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// The replica it would change (`/backup/docs`, `nas2:/srv/docs`).
    pub at: String,
    #[serde(with = "crate::raw_path")]
    pub path: PathBuf,
    /// `copy`, `update`, `make folder`, `link`, `delete`, `delete folder`, `keep version`,
    /// `take moved file`, `set metadata`, `set time`, or `refuse: WHY`.
    pub what: String,
    /// Bytes a copy or an update writes there (before delta transfer saves any).
    pub bytes: u64,
}

/// The actions a run of `spec` (mirror or copy) would take now, destination by destination,
/// in the order a run takes them. A run that would stop (a vanished source, too many
/// deletions) is listed all the same; the caller compares the deletions with the job's guard.
pub fn preview(spec: &JobSpec, halt: &Halt) -> Result<Vec<Planned>, EngineError> {
    assert!(spec.rule != Rule::Sync, "the sync rule has no preview");
    let replicas: Vec<&dyn Endpoint> = std::iter::once(spec.source.as_ref())
        .chain(spec.destinations.iter().map(|d| d.as_ref()))
        .collect();
    let missing = Missing::<fn(usize) -> bool>::Empty;
    let present = prepare_replicas(spec, &replicas, halt, missing, 0)?;
    let mut trees = scan_prepared(spec, &replicas, &present, &Scope::Full)?;
    let mut ignore = |_| {};
    let keep_specials = spec.guards.keep.specials;
    skip_special_files(&replicas, &mut trees, keep_specials, &mut ignore);
    if let Some(versions) = &spec.guards.versions {
        for tree in &mut trees {
            tree.retain(|path, _| !path.starts_with(versions));
        }
    }
    let found: Vec<bool> = trees.iter().map(|tree| !tree.is_empty()).collect();
    refuse_vanished(spec, &replicas, &found, &Tree::new())?;
    // A destination that is not there cannot be asked how it numbers owners: everything
    // would be copied there anyway, with owners as a run maps them then.
    let owners = owner_maps(spec, &replicas, &trees).or_else(|e| {
        match trees[1..].iter().any(Tree::is_empty) {
            true => Ok(Default::default()),
            false => Err(e),
        }
    })?;
    let mut ignore = |_| {};
    let exec = Executor::new(spec, &replicas, (halt, &mut ignore), owners, None);
    let stamp = utc_stamp(now_secs());
    let mut planned = Vec::new();
    for plan in plan_destinations(spec, &exec, &trees) {
        let plan = finish_plan(spec, &exec, plan, &stamp);
        planned.extend(
            plan.into_ordered()
                .map(|a| describe(&a, replicas[a.replica])),
        );
    }
    Ok(planned)
}

fn describe(action: &Action, at: &dyn Endpoint) -> Planned {
    let (what, bytes) = match &action.op {
        Op::Copy { entry, .. } if entry.kind() == Kind::Dir => ("make folder".into(), 0),
        Op::Copy {
            entry, replaces, ..
        } => {
            let what = if *replaces { "update" } else { "copy" };
            (what.into(), entry.size)
        }
        Op::Remove { entry } if entry.kind() == Kind::Dir => ("delete folder".into(), 0),
        Op::Remove { .. } => ("delete".into(), 0),
        Op::KeepAside { to } => (format!("move aside to {}", to.display()), 0),
        Op::KeepVersion { to } => (format!("keep version as {}", to.display()), 0),
        Op::LinkFrom { from, .. } => (format!("take moved file from {}", from.display()), 0),
        Op::SetMtime { .. } => ("set time".into(), 0),
        Op::SetMeta { .. } => ("set metadata".into(), 0),
        Op::HardLink { from, .. } => (format!("link to {}", from.display()), 0),
        Op::Refuse { reason } => (format!("refuse: {reason}"), 0),
    };
    Planned {
        at: at.display(),
        path: action.path.to_path_buf(),
        what,
        bytes,
    }
}
