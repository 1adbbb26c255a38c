//! A mirror's or a copy's source and destination scanned in step, each entry found alike at
//! both left out of both trees as it arrives. A run that looks at a million files that barely
//! changed would otherwise hold two trees of a million entries, about 80 bytes each, to plan
//! a few hundred actions; in step it holds what differs and a window of the faster scan.
//!
//! Left out is only what a plan would do nothing with: a file or a symlink whose entry is the
//! same in every fact at both (kind, size, time, mode, owner, attributes' digests), that is not
//! one of several names of a file, and whose mode a copy would keep as it is. Folders stay, as
//! the checks of the trees' parents and the folders' times need them. Whatever the planner
//! still needs of what was left out (how many, and its owners, which a job keeping owners by
//! name must find read as themselves at the destination) is kept beside the trees.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::{EngineError, JobSpec, checked, on_each, replica_error};
use crate::endpoint::{Endpoint, Scope};
use crate::meta::Owner;
use crate::tree::{Entry, Kind, Tree, TreeBuilder};

/// How many entries the source's scan may hold ahead of the destination's before it waits.
const AHEAD: usize = 16_384;
/// How many entries left out gather before they leave the source's tree at once.
const DROP_EVERY: usize = 4_096;

/// What a scan in step found.
pub(super) struct InStep {
    /// The source's and the destination's trees, less the entries alike at both.
    pub(super) trees: Vec<Tree>,
    pub(super) twins: Twins,
}

/// The entries found alike at both replicas, left out of both trees.
#[derive(Debug, Default)]
pub(super) struct Twins {
    pub(super) count: u64,
    /// Their owners, as both replicas number them.
    pub(super) owners: HashSet<Owner>,
}

/// Whether a run of `spec` may scan its replicas in step: a mirror or a copy to one
/// destination that compares files by their quick check alone (`--checksum` compares the
/// content of files alike, so it needs them).
pub(super) fn applies(spec: &JobSpec) -> bool {
    spec.rule != super::Rule::Sync && spec.destinations.len() == 1 && !spec.guards.checksum
}

/// Scans the source and the destination of `replicas` in step (see the module). `None` when a
/// scan handed its entries out of order: what was left out then cannot be trusted, and the
/// caller scans again whole.
pub(super) fn scan(
    spec: &JobSpec,
    replicas: &[&dyn Endpoint],
    scope: &Scope,
) -> Result<Option<InStep>, EngineError> {
    let step = Step::default();
    on_each(spec, replicas, |side, replica| {
        let _finished = Finished { step: &step, side };
        replica.scan_each(scope, &spec.filter, &mut |path, entry| {
            match side {
                SOURCE => step.source_found(path, entry),
                _ => step.destination_found(path, entry),
            }
            Ok(())
        })
    })?;
    let mut sides = step.sides.into_inner().unwrap_or_else(|p| p.into_inner());
    if sides.disorder {
        return Ok(None);
    }
    sides.drop_twins();
    let built = [sides.source, sides.destination].map(TreeBuilder::build);
    let mut trees = Vec::with_capacity(2);
    for (i, tree) in built.into_iter().enumerate() {
        let tree = checked(replicas[i], tree, scope).map_err(|e| replica_error(spec, i, e))?;
        trees.push(tree);
    }
    Ok(Some(InStep {
        trees,
        twins: sides.twins,
    }))
}

const SOURCE: usize = 0;
const DESTINATION: usize = 1;

#[derive(Default)]
struct Step {
    sides: Mutex<Sides>,
    moved: Condvar,
}

#[derive(Default)]
struct Sides {
    source: TreeBuilder,
    destination: TreeBuilder,
    /// The last path each scan handed over.
    last: [Option<PathBuf>; 2],
    done: [bool; 2],
    waiting: [bool; 2],
    /// The first source entry the destination's scan has not passed yet.
    cursor: usize,
    /// Places of source entries before `cursor` found alike at the destination, to drop.
    found_alike: Vec<usize>,
    twins: Twins,
    /// A scan handed an entry at or before the one before it.
    disorder: bool,
}

impl Step {
    fn lock(&self) -> MutexGuard<'_, Sides> {
        self.sides.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, mut sides: MutexGuard<'a, Sides>, side: usize) -> MutexGuard<'a, Sides> {
        sides.waiting[side] = true;
        let mut sides = self.moved.wait(sides).unwrap_or_else(|p| p.into_inner());
        sides.waiting[side] = false;
        sides
    }

    /// Wakes `side` if it waits: a wake-up is a system call, and most entries need none.
    fn wake(&self, sides: &Sides, side: usize) {
        if sides.waiting[side] {
            self.moved.notify_all();
        }
    }

    /// The sides, locked, to take `side`'s next entry, at `path`; `None` once a scan handed
    /// one out of order (the other side woken to see it).
    fn admit(&self, side: usize, path: &Path) -> Option<MutexGuard<'_, Sides>> {
        let mut sides = self.lock();
        if sides.disorder {
            return None;
        }
        if !sides.in_order(side, path) {
            self.moved.notify_all();
            return None;
        }
        Some(sides)
    }

    fn source_found(&self, path: &Path, entry: Entry) {
        let Some(mut sides) = self.admit(SOURCE, path) else {
            return;
        };
        while sides.source.len() - sides.cursor >= AHEAD && !sides.done[DESTINATION] {
            sides = self.wait(sides, SOURCE);
            if sides.disorder {
                return;
            }
        }
        sides.source.push(path, entry);
        self.wake(&sides, DESTINATION);
    }

    fn destination_found(&self, path: &Path, entry: Entry) {
        let Some(mut sides) = self.admit(DESTINATION, path) else {
            return;
        };
        // Until the source's scan has passed `path`, it may still find it.
        while !sides.passed(path) {
            self.wake(&sides, SOURCE);
            sides = self.wait(sides, DESTINATION);
            if sides.disorder {
                return;
            }
        }
        if sides.is_twin(path, &entry) {
            let cursor = sides.cursor;
            sides.found_alike.push(cursor);
            sides.cursor += 1;
            sides.twins.count += 1;
            sides.twins.owners.extend(entry.owner());
            if sides.found_alike.len() >= DROP_EVERY {
                sides.drop_twins();
            }
        } else {
            sides.destination.push(path, entry);
        }
        self.wake(&sides, SOURCE);
    }

    fn finish(&self, side: usize) {
        let mut sides = self.lock();
        sides.done[side] = true;
        self.moved.notify_all();
    }
}

impl Sides {
    /// Notes `path` as the last `side` handed over; false (and the scan in disorder) when it
    /// does not come after the one before.
    fn in_order(&mut self, side: usize, path: &Path) -> bool {
        if self.last[side].as_deref().is_some_and(|last| last >= path) {
            self.disorder = true;
            return false;
        }
        let last = self.last[side].get_or_insert_with(PathBuf::new);
        last.clear();
        last.push(path);
        true
    }

    /// Moves the cursor past the source's entries before `path`; whether the source's scan
    /// has handed over everything up to `path`.
    fn passed(&mut self, path: &Path) -> bool {
        while self.cursor < self.source.len() && self.source.get(self.cursor).0 < path {
            self.cursor += 1;
        }
        self.done[SOURCE]
            || self.last[SOURCE]
                .as_deref()
                .is_some_and(|last| last >= path)
    }

    /// Whether the destination's `entry` at `path` is one a plan does nothing with: the
    /// source's entry under the cursor, alike in every fact (see the module).
    fn is_twin(&self, path: &Path, entry: &Entry) -> bool {
        let leavable = match entry.kind() {
            Kind::File => entry.kept_mode() == entry.mode(),
            Kind::Symlink => true,
            Kind::Dir | Kind::Special(_) => false,
        };
        leavable
            && entry.link().is_none()
            && self.cursor < self.source.len()
            && self.source.get(self.cursor) == (path, entry)
    }

    fn drop_twins(&mut self) {
        self.source.drop_at(&self.found_alike);
        self.cursor -= self.found_alike.len();
        self.found_alike.clear();
    }
}

/// Marks a side's scan done however it ends, so the other never waits for it in vain.
struct Finished<'a> {
    step: &'a Step,
    side: usize,
}

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.step.finish(self.side);
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use filetime::{FileTime, set_file_mtime};
    use tempfile::TempDir;

    use super::*;
    use crate::endpoint::LocalEndpoint;
    use crate::filter::Filter;
    use crate::run::Rule;

    /// More than the source may run ahead, and several drops' worth.
    const ALIKE: usize = AHEAD + 2 * DROP_EVERY + 7;

    fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        set_file_mtime(&path, FileTime::from_unix_time(1_700_000_000, 0)).unwrap();
    }

    fn keys(tree: &Tree) -> Vec<&str> {
        tree.keys().map(|p| p.to_str().unwrap()).collect()
    }

    #[test]
    fn entries_alike_at_both_replicas_are_left_out_of_both_trees_and_nothing_else() {
        let dir = TempDir::new().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        for root in [&src, &dst] {
            for i in 0..ALIKE {
                write(root, &format!("many/{:03}/f{i:05}", i / 1000), "alike");
            }
            write(root, "a-changed.txt", "same size");
            std::os::unix::fs::symlink("many", root.join("link")).unwrap();
            let time = FileTime::from_unix_time(1_700_000_000, 0);
            filetime::set_symlink_file_times(root.join("link"), time, time).unwrap();
            write(root, "setuid", "a mode no copy keeps");
            fs::set_permissions(root.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
        }
        write(&src, "b-only-at-the-source.txt", "new");
        write(&dst, "c-only-at-the-destination.txt", "extra");
        write(&dst, "a-changed.txt", "SAME SIZE");
        set_file_mtime(dst.join("a-changed.txt"), FileTime::from_unix_time(9, 0)).unwrap();
        fs::hard_link(dst.join("many/000/f00000"), dst.join("many/000/f00000-too")).unwrap();
        let endpoint = |p: &PathBuf| Arc::new(LocalEndpoint::new(p)) as Arc<dyn Endpoint>;
        let spec = JobSpec {
            name: "job".into(),
            rule: Rule::Mirror,
            source: endpoint(&src),
            destinations: vec![endpoint(&dst)],
            filter: Filter::default(),
            guards: Default::default(),
            full_scan_every: None,
        };
        let replicas = [spec.source.as_ref(), spec.destinations[0].as_ref()];
        for replica in replicas {
            replica.prepare(false, None).unwrap();
        }

        let found = scan(&spec, &replicas, &Scope::Full)
            .unwrap()
            .expect("in order");

        let folders = std::iter::once("many".to_string())
            .chain((0..=ALIKE / 1000).map(|k| format!("many/{k:03}")));
        let with_folders = |paths: &[&str]| {
            let mut paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
            paths.extend(folders.clone());
            paths.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
            paths
        };
        // The hard-linked file differs by its link, the setuid one by what a copy keeps.
        let src_want = [
            "a-changed.txt",
            "b-only-at-the-source.txt",
            "many/000/f00000",
            "setuid",
        ];
        let dst_want = [
            "a-changed.txt",
            "c-only-at-the-destination.txt",
            "many/000/f00000",
            "many/000/f00000-too",
            "setuid",
        ];
        assert_eq!(keys(&found.trees[0]), with_folders(&src_want));
        assert_eq!(keys(&found.trees[1]), with_folders(&dst_want));
        // All the files alike but the hard-linked one, and the symlink.
        assert_eq!(found.twins.count, ALIKE as u64);
        let me = Owner {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        };
        assert_eq!(found.twins.owners, HashSet::from([me]));
    }
}
