//! Planning: what each rule makes of the replicas' trees, as [`Action`]s in [`Phase`]s. Pure
//! functions of the trees (and, for the sync rule, of the base and content comparisons): no
//! endpoint is called here.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use super::Rule;

mod fresh;

use crate::meta::{Keep, Owner};
use crate::tree::{self, Entry, Kind, Mtime, Tree, Union, same};
pub(super) use fresh::{Fresh, Plan};

/// An action's op. The entries and paths it names are borrowed from the scans' trees (`'t`):
/// a plan of a million copies would otherwise hold a second copy of the source's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op<'t> {
    /// Write the entry (file, link or folder) found at replica `from`.
    Copy {
        from: usize,
        entry: &'t Entry,
        /// The target held a file when planned: worth a delta against it.
        replaces: bool,
    },
    Remove {
        entry: &'t Entry,
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
        entry: &'t Entry,
    },
    SetMtime {
        mtime: Mtime,
    },
    /// Give the entry what it has at replica `from` beyond its content (a `chmod`, `chown`,
    /// `setfacl` or `setfattr` there), no bytes sent; with `values`, its extended attributes
    /// too, read from `from`.
    SetMeta {
        from: usize,
        entry: &'t Entry,
        values: bool,
    },
    /// Make the file another name of the file at `from` on the same replica (a hard link at
    /// the source), after `from` is written: no file data crosses.
    HardLink {
        from: &'t Path,
        entry: &'t Entry,
        /// The target held a file when planned (kept as a version first, if the job keeps
        /// versions).
        replaces: bool,
    },
    /// Report a path that cannot be handled automatically.
    Refuse {
        reason: String,
    },
}

/// When an action runs. Phases run in this order, and what one phase sent without waiting
/// settles before the next starts: a file whose removal failed is not replaced by a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    /// Paths that cannot be handled automatically are reported first.
    Refuse,
    /// Old versions kept and moved files taken, before anything is removed or overwritten.
    KeepOld,
    RemoveFiles,
    /// Deepest first, once their files are gone.
    RemoveFolders,
    /// Losing versions moved aside before the winners are written over them.
    KeepAside,
    /// Files, links and folders, parents first.
    Write,
    /// Other names of files written (hard links), once those are in place.
    Link,
    /// Folder times last: the writes change them.
    SetTimes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Action<'t> {
    pub(super) replica: usize,
    /// Borrowed from a tree, but for the names a plan makes up (conflict copies, folders above
    /// a scoped run's paths).
    pub(super) path: Cow<'t, Path>,
    pub(super) op: Op<'t>,
}

// A plan holds an action for every path it changes: a million for a million-file copy.
const _: () = assert!(std::mem::size_of::<Action>() <= 72);

impl Action<'_> {
    pub(super) fn phase(&self) -> Phase {
        match &self.op {
            Op::Refuse { .. } => Phase::Refuse,
            Op::KeepVersion { .. } | Op::LinkFrom { .. } => Phase::KeepOld,
            Op::Remove { entry } if !entry.is_dir() => Phase::RemoveFiles,
            Op::Remove { .. } => Phase::RemoveFolders,
            Op::KeepAside { .. } => Phase::KeepAside,
            Op::Copy { .. } => Phase::Write,
            Op::HardLink { .. } => Phase::Link,
            Op::SetMtime { .. } | Op::SetMeta { .. } => Phase::SetTimes,
        }
    }
}

/// Plans destination `d` of a mirror or a copy; `differ` holds the files that look unchanged
/// but whose content differs (asked for with `--checksum`), `keep` the metadata kept there,
/// and `owner_there` reads a source owner as the destination numbers it.
pub(super) fn plan_one_way<'t>(
    rule: Rule,
    (src, dst): (&'t Tree, &'t Tree),
    d: usize,
    differ: &HashSet<PathBuf>,
    (keep, owner_there): (Keep, &dyn Fn(Owner) -> Owner),
) -> Plan<'t> {
    let mut actions = crate::memory::mapped_vec(0);
    let mut fresh = Fresh::new(d, src);
    let act = |path: &'t Path, op| action(d, path, op);
    // The place in `src` of the next source entry.
    let mut place = 0;
    for (path, s, t) in tree::pairs(src, dst) {
        let Some(s) = s else {
            if let Some(t) = t.filter(|_| rule == Rule::Mirror) {
                actions.push(act(path, Op::Remove { entry: t }));
            }
            continue;
        };
        place += 1;
        let copy = || Op::Copy {
            from: 0,
            entry: s,
            replaces: t.is_some_and(|t| t.kind() == Kind::File),
        };
        match t {
            None if !s.is_dir() => fresh.insert(place - 1),
            None => {
                actions.push(act(path, copy()));
                actions.push(act(path, Op::SetMtime { mtime: s.mtime }));
            }
            Some(t) if s.looks_unchanged(t) && !differ.contains(path) => {
                if s.is_dir() && s.mtime != t.mtime {
                    actions.push(act(path, Op::SetMtime { mtime: s.mtime }));
                }
                if let Some(op) = meta_change(s, t, keep, owner_there) {
                    actions.push(act(path, op));
                }
            }
            Some(t) if t.is_dir() != s.is_dir() && rule == Rule::Copy => {
                let reason = format!(
                    "is a {} at the destination but a {} at the source, and the copy rule deletes nothing",
                    kind_name(t.kind()),
                    kind_name(s.kind())
                );
                actions.push(act(path, Op::Refuse { reason }));
            }
            Some(t) => {
                if t.is_dir() != s.is_dir() {
                    actions.push(act(path, Op::Remove { entry: t }));
                }
                actions.push(act(path, copy()));
                if s.is_dir() {
                    actions.push(act(path, Op::SetMtime { mtime: s.mtime }));
                }
            }
        }
    }
    let mut plan = Plan { actions, fresh };
    if keep.hard_links {
        keep_hard_links((src, dst), d, &mut plan);
    }
    // Writing or removing inside a folder changes its time: set it again afterwards.
    let timed: HashSet<&Path> = (plan.actions.iter())
        .filter(|a| matches!(a.op, Op::SetMtime { .. }))
        .map(|a| &*a.path)
        .collect();
    let retimed: Vec<Action> = changed_folders(&plan)
        .into_iter()
        .filter(|dir| !timed.contains(dir))
        .filter_map(|dir| src.get_key_value(dir).filter(|(_, s)| s.is_dir()))
        .map(|(dir, s)| act(dir, Op::SetMtime { mtime: s.mtime }))
        .collect();
    plan.actions.extend(retimed);
    plan
}

/// The folders a plan adds names to or removes names from, the replica's root aside.
pub(super) fn changed_folders<'p>(plan: &'p Plan) -> BTreeSet<&'p Path> {
    let mut folders = BTreeSet::new();
    let mut last = None;
    for parent in plan.folder_changes().filter_map(Path::parent) {
        // Most paths share their folder with the one before.
        if last != Some(parent) && !parent.as_os_str().is_empty() {
            folders.insert(parent);
            last = Some(parent);
        }
    }
    folders
}

impl Op<'_> {
    /// Whether the op adds or removes a name in the folder it is in (changing its time).
    pub(super) fn changes_folder(&self) -> bool {
        matches!(
            self,
            Op::Copy { .. } | Op::Remove { .. } | Op::LinkFrom { .. } | Op::HardLink { .. }
        )
    }
}

/// What gives `t` (at a destination) what `s` (at the source) has beyond its content: its
/// mode, and the owner (read as the destination numbers it, `owner_there`) and attributes
/// `keep` covers; nothing when they agree.
pub(super) fn meta_change<'t>(
    s: &'t Entry,
    t: &Entry,
    keep: Keep,
    owner_there: &dyn Fn(Owner) -> Owner,
) -> Option<Op<'t>> {
    let mode = s.kept_mode() != t.mode() && s.kind() != Kind::Symlink;
    let owner = keep.owner
        && s.meta()
            .owner
            .is_some_and(|o| Some(owner_there(o)) != t.owner());
    let values = (keep.acls && s.acl() != t.acl()) || (keep.xattrs && s.xattrs() != t.xattrs());
    (mode || owner || values).then_some(Op::SetMeta {
        from: 0,
        entry: s,
        values,
    })
}

/// Keeps the names of one source file one file at the destination (`rsync -H`): its first
/// name is written as planned, and every other is made a link to it, unless it already is
/// one; no file data crosses for them.
fn keep_hard_links<'t>((src, dst): (&'t Tree, &Tree), d: usize, plan: &mut Plan<'t>) {
    let mut names: HashMap<NonZeroU64, Vec<&Path>> = HashMap::new();
    for (path, s) in src {
        if let Some(link) = s.link().filter(|_| s.kind() == Kind::File) {
            names.entry(link).or_default().push(path);
        }
    }
    let groups: Vec<&Vec<&Path>> = names.values().filter(|names| names.len() > 1).collect();
    if groups.is_empty() {
        return;
    }
    // Only a group's first name matters here: a set of every path written would take about
    // 36 bytes a file copied.
    let firsts: HashSet<&Path> = groups.iter().map(|names| names[0]).collect();
    let written: HashSet<&Path> = (plan.actions.iter())
        .filter(|a| matches!(a.op, Op::Copy { .. }) && firsts.contains(&*a.path))
        .map(|a| &*a.path)
        .chain(
            firsts
                .iter()
                .copied()
                .filter(|first| plan.fresh.contains(first)),
        )
        .collect();
    let mut links = Vec::new();
    for names in groups {
        let first = names[0];
        let first_there = dst.get(first).and_then(|t| t.link());
        for other in &names[1..] {
            let there = dst.get(*other);
            let linked = !written.contains(first)
                && first_there.is_some()
                && there.and_then(|t| t.link()) == first_there;
            if !linked {
                let op = Op::HardLink {
                    from: first,
                    entry: &src[*other],
                    replaces: there.is_some_and(|t| t.kind() == Kind::File),
                };
                links.push(action(d, *other, op));
            }
        }
    }
    let relinked: HashSet<&Path> = links.iter().map(|a| &*a.path).collect();
    plan.actions.retain(|a| {
        !(relinked.contains(&*a.path) && matches!(a.op, Op::Copy { .. } | Op::SetMeta { .. }))
    });
    for path in relinked {
        plan.fresh.remove(path);
    }
    plan.actions.extend(links);
}

pub(super) fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::File => "file",
        Kind::Dir => "folder",
        Kind::Symlink => "link",
        Kind::Special(_) => "special file",
    }
}

pub(super) struct SyncPlan<'t> {
    pub(super) actions: Vec<Action<'t>>,
    /// The tree every replica holds once all actions succeed.
    pub(super) agreed: Tree,
    /// The conflict copies made while planning, added to `agreed` at the end: `agreed` grows
    /// in path order, and a copy's name comes before the path it is made for.
    asides: BTreeMap<PathBuf, Entry>,
}

/// The new base: what was agreed, except that a path whose action failed keeps its old state,
/// so the next run sees the change again rather than taking the stale replica for a new change.
pub(super) fn unless_failed(mut agreed: Tree, failed: &HashSet<PathBuf>, old: &Tree) -> Tree {
    if failed.is_empty() {
        return agreed;
    }
    agreed.retain(|path, _| !failed.contains(path));
    let kept = failed
        .iter()
        .filter_map(|path| Some((path.clone(), old.get(path)?.clone())));
    agreed.extend(kept);
    agreed
}

/// Plans a multi-way sync. `same_content(a, b, path)` compares a path's file contents on two
/// replicas; it is only asked when both changed to the same size.
pub(super) fn plan_sync<'t>(
    (trees, base): (&'t [Tree], &'t Tree),
    keep: Keep,
    mut same_content: impl FnMut(usize, usize, &Path) -> bool,
) -> SyncPlan<'t> {
    let mut plan = SyncPlan {
        actions: Vec::new(),
        agreed: Tree::new(),
        asides: BTreeMap::new(),
    };
    // The replicas' trees and, last, the base.
    let mut union = Union::new(trees.iter().chain([base]));
    let mut states = Vec::with_capacity(trees.len() + 1);
    while let Some(path) = union.next_into(&mut states) {
        let was = states.pop().flatten();
        let seen = Seen { trees, base };
        plan_path(
            &mut plan,
            (seen, keep),
            (path, was),
            &states,
            &mut same_content,
        );
    }
    let asides = std::mem::take(&mut plan.asides);
    plan.agreed.extend(asides);
    plan
}

/// Plans one path of a sync from what each replica holds there (`states`) and what they
/// agreed on last time (`was`): the newest change wins; a different change elsewhere is a
/// conflict, kept aside as a conflict copy.
fn plan_path<'t>(
    plan: &mut SyncPlan<'t>,
    (seen, keep): (Seen<'t>, Keep),
    (path, was): (&'t Path, Option<&'t Entry>),
    states: &[Option<&'t Entry>],
    same_content: &mut impl FnMut(usize, usize, &Path) -> bool,
) {
    let trees = seen.trees;
    let changed: Vec<usize> = (0..states.len())
        .filter(|&i| !same(states[i], was))
        .collect();
    let Some(&first) = changed.first() else {
        if let Some(entry) = was {
            let agreed = agree_on_meta(plan, path, states, entry, keep);
            plan.agreed.insert(path, agreed);
        }
        return;
    };
    let newest = (changed.iter().copied())
        .filter(|&i| states[i].is_some())
        .max_by_key(|&i| states[i].map(|e| e.mtime))
        .unwrap_or(first);
    let winner = seen
        .folder_over_file(path, states, newest)
        .unwrap_or(newest);
    let mut equivalent = |a: usize, b: usize| match (states[a], states[b]) {
        (Some(x), Some(y))
            if x.kind() == Kind::File && y.kind() == Kind::File && x.size == y.size =>
        {
            x.mtime == y.mtime || same_content(a, b, path)
        }
        (x, y) => same(x, y),
    };
    // Whether each replica changed to what the winner holds; the others that changed lose.
    let like_winner: Vec<bool> = (0..states.len())
        .map(|r| changed.contains(&r) && equivalent(r, winner))
        .collect();
    let losers: Vec<usize> = (changed.iter().copied())
        .filter(|&i| !like_winner[i])
        .collect();
    let Some(target) = states[winner] else {
        // Deleted where it won: removed everywhere.
        for (r, entry) in states.iter().enumerate() {
            if let Some(entry) = entry {
                plan.actions.push(action(r, path, Op::Remove { entry }));
            }
        }
        return;
    };
    let winning = Winning {
        path,
        trees,
        winner,
        target,
    };
    for (r, state) in states.iter().enumerate().filter(|(r, _)| *r != winner) {
        winning.bring(plan, r, *state, like_winner[r], losers.contains(&r));
    }
    plan.agreed.insert(path, target.clone());
}

/// What a sync's replicas hold now, and what they agreed on last time.
#[derive(Clone, Copy)]
struct Seen<'a> {
    trees: &'a [Tree],
    base: &'a Tree,
}

impl Seen<'_> {
    /// A folder on one replica where the newest change put a file (or a link) on another: the
    /// folder wins when it is new or anything under it changed, so that nothing written in it
    /// is lost; the file is kept aside as a conflict copy. (Letting the file win would remove a
    /// folder that is not empty, and every run after would fail the same way.) Returns the
    /// replica whose folder wins, if one must.
    fn folder_over_file(
        &self,
        path: &Path,
        states: &[Option<&Entry>],
        newest: usize,
    ) -> Option<usize> {
        if states[newest].is_none_or(Entry::is_dir) {
            return None;
        }
        (0..states.len())
            .filter(|&r| states[r].is_some_and(Entry::is_dir))
            .filter(|&r| !same(states[r], self.base.get(path)) || self.changed_under(r, path))
            .max_by_key(|&r| states[r].map(|e| e.mtime))
    }

    /// Whether anything under the folder `path` of replica `r` differs from what was agreed.
    fn changed_under(&self, r: usize, path: &Path) -> bool {
        let tree = &self.trees[r];
        tree.inside(path).count() != self.base.inside(path).count()
            || (tree.inside(path)).any(|(p, now)| !same(Some(now), self.base.get(p)))
    }
}

fn action<'t>(replica: usize, path: impl Into<Cow<'t, Path>>, op: Op<'t>) -> Action<'t> {
    Action {
        replica,
        path: path.into(),
        op,
    }
}

/// A path whose content nobody changed since `was`: the first replica that changed what else
/// it holds there (a chmod, chown, setfacl or setfattr) gives that to the others; returns the
/// entry now agreed on. A base from before metadata was kept knows no owner: where replicas
/// then differ they are left as they are, and what they all agree on is what the base learns.
fn agree_on_meta<'t>(
    plan: &mut SyncPlan<'t>,
    path: &'t Path,
    states: &[Option<&'t Entry>],
    was: &Entry,
    keep: Keep,
) -> Entry {
    let unmapped = |owner| owner;
    let differs = |a: &Entry, b: &Entry| meta_change(a, b, keep, &unmapped).is_some();
    let present: Vec<(usize, &Entry)> = (states.iter().enumerate())
        .filter_map(|(r, state)| state.map(|entry| (r, entry)))
        .collect();
    let Some(&(_, first)) = present.first() else {
        return was.clone();
    };
    if was.owner().is_none() {
        let agree = present.iter().all(|(_, entry)| !differs(first, entry));
        return if agree { first.clone() } else { was.clone() };
    }
    let Some(&(winner, target)) = present.iter().find(|(_, entry)| differs(entry, was)) else {
        return was.clone();
    };
    for &(r, entry) in present.iter().filter(|(r, _)| *r != winner) {
        if let Some(Op::SetMeta { entry, values, .. }) = meta_change(target, entry, keep, &unmapped)
        {
            let from = winner;
            plan.actions.push(action(
                r,
                path,
                Op::SetMeta {
                    from,
                    entry,
                    values,
                },
            ));
        }
    }
    target.clone()
}

/// The version of a path that won a sync, to bring every other replica to.
struct Winning<'a> {
    path: &'a Path,
    /// What every replica holds: a conflict copy's name must be free in all of them.
    trees: &'a [Tree],
    winner: usize,
    target: &'a Entry,
}

impl<'t> Winning<'t> {
    /// Plans replica `r`, which holds `state`, to hold the winning version; a `loser`'s own
    /// version is kept aside first.
    fn bring(
        &self,
        plan: &mut SyncPlan<'t>,
        r: usize,
        state: Option<&'t Entry>,
        like_winner: bool,
        loser: bool,
    ) {
        let (path, target) = (self.path, self.target);
        if let Some(losing) = state.filter(|_| loser) {
            keep_aside(plan, self.trees, r, path, losing);
        } else if state.is_some_and(|s| like_winner && s.mtime != target.mtime && !s.is_dir()) {
            // Changed to the same content under another time: only the time changes. A
            // replica that did not change since the last run just holds the old version: the
            // new one goes to it as a delta, as rsync would send it, rather than after reading
            // both files whole to compare them.
            let op = Op::SetMtime {
                mtime: target.mtime,
            };
            plan.actions.push(action(r, path, op));
            return;
        } else if state.is_some_and(|s| same(Some(s), Some(target))) {
            return;
        }
        // A loser's version is already aside; anything else of the other kind goes.
        if let Some(s) = state.filter(|s| s.is_dir() != target.is_dir() && !loser) {
            plan.actions.push(action(r, path, Op::Remove { entry: s }));
        }
        let op = Op::Copy {
            from: self.winner,
            entry: target,
            replaces: state.is_some_and(|s| s.kind() == Kind::File) && !loser,
        };
        plan.actions.push(action(r, path, op));
    }
}

/// Moves replica `r`'s losing version of `path` aside and plans its copy to every replica.
pub(super) fn keep_aside<'t>(
    plan: &mut SyncPlan<'t>,
    trees: &[Tree],
    r: usize,
    path: &'t Path,
    entry: &'t Entry,
) {
    let replicas = trees.len();
    let taken = |name: &Path| {
        plan.asides.contains_key(name) || trees.iter().any(|tree| tree.contains_key(name))
    };
    let aside = free_conflict_name(path, entry.mtime, r, taken);
    let to = aside.clone();
    plan.actions.push(action(r, path, Op::KeepAside { to }));
    for other in (0..replicas).filter(|&o| o != r) {
        let op = Op::Copy {
            from: r,
            entry,
            replaces: false,
        };
        plan.actions.push(action(other, aside.clone(), op));
    }
    plan.asides.insert(aside, entry.clone());
}

/// The longest file name most file systems take, in bytes.
const NAME_MAX: usize = 255;

/// `report.txt` → `report.ferry-conflict-20261122-083000-r1.txt`: dated by the losing version
/// and naming its replica, so two losers of one conflict never take the same name; made unique
/// where it is taken (`taken`: by a file of any replica, or by another conflict copy of this
/// run) with `-2`, `-3`, …, and shortened to fit `NAME_MAX`. So a conflict copy never replaces
/// a file, and never fails for its name's length. Built from the name's bytes, not its text:
/// two names in another encoding than UTF-8 must not come out as the same lossy name.
pub(super) fn free_conflict_name(
    path: &Path,
    mtime: Mtime,
    replica: usize,
    taken: impl Fn(&Path) -> bool,
) -> PathBuf {
    let stamp = format!("{}-r{replica}", utc_stamp(mtime.secs));
    (1..)
        .map(|n| match n {
            1 => stamped(path, &stamp),
            n => stamped(path, &format!("{stamp}-{n}")),
        })
        .find(|name| !taken(name))
        .expect("some number is free")
}

/// `path` with `.ferry-conflict-STAMP` before its extension, its stem shortened (at a
/// character boundary, when it is UTF-8) so that the name fits `NAME_MAX`.
fn stamped(path: &Path, stamp: &str) -> PathBuf {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let stem = path.file_stem().unwrap_or_default().as_bytes();
    let mut tail = format!(".ferry-conflict-{stamp}").into_bytes();
    if let Some(ext) = path.extension() {
        tail.push(b'.');
        tail.extend_from_slice(ext.as_bytes());
    }
    let room = NAME_MAX.saturating_sub(tail.len());
    let mut keep = stem.len().min(room);
    if let Ok(text) = std::str::from_utf8(stem) {
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
    }
    let mut name = stem[..keep].to_vec();
    name.extend_from_slice(&tail);
    path.with_file_name(std::ffi::OsString::from_vec(name))
}

/// UTC `YYYYMMDD-HHMMSS` without a date library (civil-from-days, Howard Hinnant).
pub(super) fn utc_stamp(secs: i64) -> String {
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
