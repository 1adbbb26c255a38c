//! Execution: carries out a plan's actions phase by phase through the endpoints, checking the
//! halt before each, settling what was sent without waiting at the end of each phase, and
//! resending whole the deltas that did not rebuild.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use super::owners::OwnerMaps;
use super::plan::{Action, Op, Phase, Plan, meta_change};
use super::{EngineError, Event, Summary};
use crate::delta::Signature;
use crate::endpoint::{Changes, Endpoint, EndpointError, Failure, Incoming, MoveCheck};
use crate::fence::Halt;
use crate::meta::{self, Keep, Named, Xattrs};
use crate::tree::{Entry, Expected, Kind, Tree};

/// Where a copy lands, and under the sync rule what must still be there (see [`Expected`]).
pub(super) struct Target<'p> {
    path: &'p Path,
    expected: Option<Expected>,
}

pub(super) struct Executor<'a> {
    pub(super) replicas: &'a [&'a dyn Endpoint],
    pub(super) halt: &'a Halt,
    pub(super) on_event: &'a mut dyn FnMut(Event),
    pub(super) summary: Summary,
    /// Paths with at least one failed action in this run.
    pub(super) failed: HashSet<PathBuf>,
    /// Where an action failed: later actions there are skipped (a failed move-aside must not be
    /// followed by writing the winner over the only copy of the loser).
    pub(super) failed_at: HashSet<(usize, PathBuf)>,
    /// For a sync, what each replica held when planned: before the first write or removal at a
    /// path, the path must still hold it, or someone changed it during the run and the action
    /// waits for the next run (which sees the change) instead of destroying it.
    pub(super) planned: Option<&'a [Tree]>,
    /// What this run left at a place it changed (nothing, after a move-aside or a removal):
    /// a later action there checks against this instead of the scan.
    pub(super) left: HashMap<(usize, PathBuf), Option<Entry>>,
    /// Files sent to a remote replica as a delta, by replica and path, until their verdicts
    /// settle: one that did not rebuild is sent again whole then.
    pub(super) deltas: HashMap<(usize, PathBuf), Resend>,
    pub(super) job: &'a str,
    /// The metadata the job keeps; each replica keeps what it can of it (see [`Self::keeps`]).
    pub(super) keep: Keep,
    /// How owners read from one replica to another. Planned entries' owners are numbered as
    /// the source (replica 0) numbers them: a sync's trees are read so before planning.
    pub(super) owners: OwnerMaps,
}

impl<'a> Executor<'a> {
    /// An executor for `spec` over `replicas` (in the job's order), with owners read through
    /// `owners`; under the sync rule, `planned` holds what each replica held when planned.
    pub(super) fn new(
        spec: &'a super::JobSpec,
        replicas: &'a [&'a dyn Endpoint],
        (halt, on_event): (&'a Halt, &'a mut dyn FnMut(Event)),
        owners: OwnerMaps,
        planned: Option<&'a [Tree]>,
    ) -> Self {
        Self {
            replicas,
            halt,
            on_event,
            summary: Summary::default(),
            failed: HashSet::new(),
            failed_at: HashSet::new(),
            planned,
            left: HashMap::new(),
            deltas: HashMap::new(),
            job: &spec.name,
            keep: spec.guards.keep,
            owners,
        }
    }
}

/// Content hashes by replica and path.
pub(super) type Hashes = HashMap<(usize, PathBuf), blake3::Hash>;

/// What sending a file again whole needs.
pub(super) struct Resend {
    from: usize,
    entry: Entry,
    expected: Option<Expected>,
    xattrs: Option<Xattrs>,
}

impl Executor<'_> {
    pub(super) fn execute(&mut self, plan: Plan) -> Result<(), EngineError> {
        let actions = plan.into_ordered();
        let mut replaced = self.replaced_files(actions.pending());
        let mut phase = None;
        let mut skipped: HashMap<(usize, PathBuf), u64> = HashMap::new();
        for action in actions {
            self.stop_if_halted()?;
            // What a phase sent without waiting is settled before the next phase starts: a
            // file whose removal failed is not replaced by a folder, say.
            if phase.is_some_and(|p| p != action.phase()) {
                self.settle();
            }
            if phase != Some(action.phase()) && action.phase() == Phase::Write {
                for (r, paths) in replaced.drain() {
                    self.replicas[r].expect_signatures(paths);
                }
            }
            phase = Some(action.phase());
            if let Some(failed) = self.failed_at_or_above(action.replica, &action.path) {
                if failed != *action.path {
                    *skipped.entry((action.replica, failed)).or_default() += 1;
                }
                continue;
            }
            let at = (action.replica, action.path.to_path_buf());
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
        for ((_, folder), count) in skipped {
            let why = format!("{count} entries under it were skipped: it failed, see above");
            self.fail(&folder, why);
        }
        Ok(())
    }

    /// The path at `at`, or the folder above it, where an action of this run failed: nothing
    /// more is done there or below (a folder that could not be made, or that is refused as a
    /// symlink, must not receive its files some other way).
    fn failed_at_or_above(&self, replica: usize, path: &Path) -> Option<PathBuf> {
        if self.failed_at.is_empty() {
            return None;
        }
        path.ancestors()
            .take_while(|a| !a.as_os_str().is_empty())
            .find(|a| self.failed_at.contains(&(replica, a.to_path_buf())))
            .map(Path::to_path_buf)
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
                && entry.kind() == Kind::File
            {
                replaced
                    .entry(action.replica)
                    .or_default()
                    .push(action.path.to_path_buf());
            }
        }
        replaced
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
                let xattrs = resend.xattrs.as_ref();
                if let Err(e) = self.transfer((from, to), &target, (&resend.entry, xattrs), None) {
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

    /// A file that went away at replica `from` since the scan: reported as such, not as a
    /// failure; under the sync rule the path keeps its old agreed state, so the next run sees
    /// what took its place.
    fn vanished(&mut self, from: usize, path: &Path) {
        self.failed.insert(path.to_path_buf());
        (self.on_event)(Event::Skipped {
            at: self.replicas[from].display(),
            path: path.to_path_buf(),
            why: "it went away during the sync; the next run sees what took its place".into(),
        });
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

    pub(super) fn stop_if_halted(&self) -> Result<(), EngineError> {
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
        self.expected_at(action.replica, &action.path)
    }

    /// Notes the folders above `path` that a duplicate made at `replica` (it makes the ones
    /// missing), so the sync rule's later checks expect them there.
    fn folders_made_for(&mut self, replica: usize, path: &Path) {
        let Some(planned) = self.planned else {
            return;
        };
        let folders = path
            .ancestors()
            .skip(1)
            .take_while(|a| !a.as_os_str().is_empty());
        for folder in folders {
            let at = (replica, folder.to_path_buf());
            if planned[replica].contains_key(folder) || self.left.contains_key(&at) {
                break;
            }
            // Only its kind is compared: any folder meets it.
            self.left.insert(at, Some(Entry::folder(0o755)));
        }
    }

    /// What `path` at `replica` must still hold, under the sync rule: what the scan saw, or
    /// what this run left there.
    fn expected_at(&self, replica: usize, path: &Path) -> Option<Expected> {
        let planned = self.planned?;
        let entry = match self.left.get(&(replica, path.to_path_buf())) {
            Some(left) => left.clone(),
            None => planned[replica].get(path).cloned(),
        };
        Some(Expected { entry })
    }

    /// Fails an action whose target changed since the scan (see `planned`). A file's or a
    /// folder's copy and a removal are checked by their replica instead, where the path is
    /// (see [`Expected`]): across a network that costs no round trip each.
    fn verify(&self, action: &Action) -> Result<(), String> {
        let checked_here = match &action.op {
            Op::Copy { entry, .. } => entry.kind() == Kind::Symlink,
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
                let xattrs = match self.copy((*from, action.replica), &target, entry, *replaces) {
                    Err(e) if e.failure == Failure::Vanished => {
                        self.vanished(*from, path);
                        return Ok(());
                    }
                    copied => copied.map_err(|e| e.to_string())?,
                };
                // Its verdict, which says whether a delta rebuilt, comes when it settles.
                if *replaces && entry.kind() == Kind::File && replica.capabilities().across_network
                {
                    let resend = Resend {
                        from: *from,
                        entry: self.as_kept(entry, action.replica),
                        expected: target.expected,
                        xattrs,
                    };
                    self.deltas
                        .insert((action.replica, path.to_path_buf()), resend);
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
                    self.removed(replica, path.to_path_buf(), removed);
                }
            }
            Op::KeepAside { to } => {
                replica.rename(path, to).map_err(|e| e.to_string())?;
                self.summary.conflicts += 1;
                (self.on_event)(Event::Conflict {
                    at: replica.display(),
                    path: path.to_path_buf(),
                    kept_as: to.clone(),
                });
            }
            Op::SetMtime { mtime } => replica
                .set_mtime_later(path, *mtime)
                .map_err(|e| e.to_string())?,
            Op::SetMeta {
                from,
                entry,
                values,
            } => {
                self.set_meta((*from, *values), action.replica, path, entry)
                    .map_err(|e| e.to_string())?;
            }
            Op::HardLink { from, .. } => {
                replica
                    .duplicate_later(from, path, None)
                    .map_err(|e| e.to_string())?;
                self.summary.files_copied += 1;
                (self.on_event)(Event::Copied {
                    to: replica.display(),
                    path: path.to_path_buf(),
                    bytes: 0,
                });
            }
            Op::LinkFrom { from, entry } => {
                // Under the sync rule either file may have changed since the scan.
                let check = (self.expected_at(action.replica, from))
                    .zip(self.expected(action))
                    .map(|(from, to)| MoveCheck { from, to });
                replica
                    .duplicate_later(from, path, check.as_ref())
                    .map_err(|e| e.to_string())?;
                self.folders_made_for(action.replica, path);
                // A moved file usually keeps its time; setting it anyway costs less than
                // asking, as it goes without waiting.
                replica
                    .set_mtime_later(path, entry.mtime)
                    .map_err(|e| e.to_string())?;
                self.summary.files_copied += 1;
                self.summary.bytes_total += entry.size;
                (self.on_event)(Event::Copied {
                    to: replica.display(),
                    path: path.to_path_buf(),
                    bytes: entry.size,
                });
            }
            Op::KeepVersion { to } => {
                replica
                    .duplicate(path, to, None)
                    .map_err(|e| e.to_string())?;
                self.summary.versions_kept += 1;
            }
        }
        Ok(())
    }

    /// Writes `entry` from replica `from` at `target` in `to`, with the metadata `to` keeps;
    /// returns the extended attributes it was given, if any.
    fn copy(
        &mut self,
        (from, to_index): (usize, usize),
        target: &Target,
        entry: &Entry,
        replaces: bool,
    ) -> Result<Option<Xattrs>, EndpointError> {
        let path = target.path;
        let to = self.replicas[to_index];
        let keep = self.keeps(to);
        let entry = &self.as_kept(entry, to_index);
        let xattrs = match keep.needs_values(&entry.meta()) {
            true => Some(self.xattrs_for(path, (from, to_index))?),
            false => None,
        };
        match entry.kind() {
            Kind::Dir => {
                to.make_dir_later(path, entry, target.expected.as_ref())?;
                self.summary.dirs_created += 1;
                if let Some(xattrs) = &xattrs {
                    to.set_meta_later(path, entry, Some(xattrs), keep)?;
                }
                return Ok(xattrs);
            }
            Kind::Symlink => {
                to.make_symlink(path, entry)?;
                if let Some(xattrs) = &xattrs {
                    to.set_meta_later(path, entry, Some(xattrs), keep)?;
                }
            }
            Kind::File => {
                let source = (self.replicas[from], to);
                let bytes = self.copy_file(source, target, (entry, xattrs.as_ref()), replaces)?;
                self.summary.bytes_total += bytes;
            }
            // Left out after the scan unless the job keeps them (see `skip_special_files`).
            Kind::Special(_) => to.make_special(path, entry)?,
        }
        self.summary.files_copied += 1;
        (self.on_event)(Event::Copied {
            to: to.display(),
            path: path.to_path_buf(),
            bytes: entry.size,
        });
        Ok(xattrs)
    }

    /// Gives the entry at `path` in `to` what `entry` (at `from`) has beyond its content, with
    /// its extended attributes read from `from` when `values` (see [`Op::SetMeta`]).
    fn set_meta(
        &self,
        (from, values): (usize, bool),
        to: usize,
        path: &Path,
        entry: &Entry,
    ) -> Result<(), EndpointError> {
        let xattrs = match values {
            true => Some(self.xattrs_for(path, (from, to))?),
            false => None,
        };
        let entry = self.as_kept(entry, to);
        let to = self.replicas[to];
        to.set_meta_later(path, &entry, xattrs.as_ref(), self.keeps(to))
    }

    /// Gives every destination's root folder what the source's has, last (ferry's own mark
    /// in `.ferry/` may have changed its time), as rsync does for the top folder: its time,
    /// mode, and the owner and attributes kept. Best effort: the root is the administrator's.
    pub(super) fn match_roots(&self) {
        let root = Path::new("");
        let Ok(Some(source)) = self.replicas[0].stat(root) else {
            return;
        };
        for (r, &replica) in self.replicas.iter().enumerate().skip(1) {
            let Ok(Some(now)) = replica.stat(root) else {
                continue;
            };
            let mut failed = Vec::new();
            let keep = self.keeps(replica);
            let owner_there = |owner| self.owners.map(0, r, owner);
            if let Some(Op::SetMeta { values, .. }) = meta_change(&source, &now, keep, &owner_there)
            {
                failed.extend(self.set_meta((0, values), r, root, &source).err());
            }
            if now.mtime != source.mtime {
                failed.extend(replica.set_mtime(root, source.mtime).err());
            }
            failed.extend(replica.settle().failed_changes.into_iter().map(|(_, e)| e));
            for e in failed {
                tracing::debug!(replica = replica.display(), error = %e, "could not match the root folder");
            }
        }
    }

    /// The extended attributes of `path` at replica `from`, their ACLs naming each user and
    /// group as replica `to` numbers it (see [`OwnerMaps`]).
    fn xattrs_for(&self, path: &Path, (from, to): (usize, usize)) -> Result<Xattrs, EndpointError> {
        let xattrs = self.replicas[from].xattrs(path)?;
        if !self.owners.by_name() {
            return Ok(xattrs);
        }
        let acls = || xattrs.iter().filter(|x| meta::is_acl(&x.name));
        let ids: Vec<(Named, u32)> = acls().flat_map(|x| meta::acl_ids(&x.value)).collect();
        if ids.is_empty() {
            return Ok(xattrs);
        }
        (self.owners)
            .learn(self.replicas, (from, to), &ids)
            .map_err(|(_, e)| e)?;
        let renumber = |named, id| self.owners.renumber(from, to, named, id);
        Ok(xattrs
            .into_iter()
            .map(|mut xattr| {
                if meta::is_acl(&xattr.name) {
                    xattr.value = meta::renumber_acl(&xattr.value, &renumber);
                }
                xattr
            })
            .collect())
    }

    /// What `to` keeps of the metadata the job keeps.
    pub(super) fn keeps(&self, to: &dyn Endpoint) -> Keep {
        self.keep.and(to.capabilities().keeps)
    }

    /// A planned `entry` as replica `to` writes it: its owner numbered as there, or none
    /// where the owner is not kept there.
    fn as_kept(&self, entry: &Entry, to: usize) -> Entry {
        let mut entry = entry.clone();
        entry.set_owner(match self.keeps(self.replicas[to]).owner {
            true => entry.owner().map(|owner| self.owners.map(0, to, owner)),
            false => None,
        });
        entry
    }

    /// Copies a file's content, as a delta against what the destination holds when either side
    /// is across a network. A delta that does not rebuild the file (a false block match, or a
    /// destination changed meanwhile) is retried whole: at once here, or when its verdict
    /// settles for a remote destination (see `deltas`).
    fn copy_file(
        &mut self,
        (from, to): (&dyn Endpoint, &dyn Endpoint),
        target: &Target,
        file: (&Entry, Option<&Xattrs>),
        replaces: bool,
    ) -> Result<u64, EndpointError> {
        let path = target.path;
        let local = !from.capabilities().across_network && !to.capabilities().across_network;
        let base = match replaces && !local {
            true => to.signature(path)?,
            false => None,
        };
        let written = match self.transfer((from, to), target, file, base.as_ref()) {
            Err(e) if base.is_some() && e.is_bad_delta() => {
                tracing::debug!(path = %path.display(), error = %e, "delta failed; sending whole");
                self.transfer((from, to), target, file, None)?
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
        (from, to): (&dyn Endpoint, &dyn Endpoint),
        target: &Target,
        (entry, xattrs): (&Entry, Option<&Xattrs>),
        base: Option<&Signature>,
    ) -> Result<u64, EndpointError> {
        let path = target.path;
        let block_size = base.map(|s| s.block_size);
        let incoming = Incoming {
            entry,
            block_size,
            expected: target.expected.as_ref(),
            xattrs,
        };
        let mut sink = to.receive_file(path, &incoming)?;
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
