//! A plan as it is held: its actions, and apart from them the most numerous and plainest kind,
//! the copies of source entries to paths where a destination holds nothing, as one bit a
//! source entry. A first copy of a million files would otherwise hold a million actions of
//! 72 bytes beside the source's tree they borrow from; it holds 125 KiB of bits.

use std::cmp::Ordering;
use std::iter::Peekable;
use std::path::Path;

use super::{Action, Op, Phase};
use crate::tree::{Entry, Tree};

pub(in crate::run) struct Plan<'t> {
    pub(in crate::run) actions: Vec<Action<'t>>,
    pub(in crate::run) fresh: Fresh<'t>,
}

impl<'t> From<Vec<Action<'t>>> for Plan<'t> {
    fn from(actions: Vec<Action<'t>>) -> Self {
        Self {
            actions,
            fresh: Fresh::default(),
        }
    }
}

impl<'t> Plan<'t> {
    /// The path of every action that adds or removes a name in its folder (changing the
    /// folder's time), the fresh copies' among them.
    pub(in crate::run) fn folder_changes(&self) -> impl Iterator<Item = &Path> + '_ {
        let named = (self.actions.iter())
            .filter(|a| a.op.changes_folder())
            .map(|a| &*a.path);
        named.chain(self.fresh.entries().map(|(path, _)| path))
    }

    /// Every action, in the order a run takes them (see [`execution_order`]).
    pub(in crate::run) fn into_ordered(mut self) -> Ordered<'t> {
        self.actions.sort_unstable_by(execution_order);
        Ordered {
            actions: self.actions.into_iter(),
            fresh: self.fresh.into_actions().peekable(),
        }
    }
}

/// The order a run takes actions in: phase by phase; folders removed deepest first and
/// everything else parents first; replicas in the job's order.
pub(in crate::run) fn execution_order(a: &Action, b: &Action) -> Ordering {
    let by_path = if a.phase() == Phase::RemoveFolders {
        b.path.cmp(&a.path)
    } else {
        a.path.cmp(&b.path)
    };
    (a.phase().cmp(&b.phase()))
        .then(by_path)
        .then(a.replica.cmp(&b.replica))
}

/// A plan's actions in order: the sorted ones with the fresh copies merged in.
pub(in crate::run) struct Ordered<'t> {
    actions: std::vec::IntoIter<Action<'t>>,
    fresh: Peekable<FreshActions<'t>>,
}

impl<'t> Ordered<'t> {
    /// The actions not taken yet, fresh copies aside.
    pub(in crate::run) fn pending(&self) -> &[Action<'t>] {
        self.actions.as_slice()
    }
}

impl<'t> Iterator for Ordered<'t> {
    type Item = Action<'t>;

    fn next(&mut self) -> Option<Action<'t>> {
        let fresh_first = match (self.actions.as_slice().first(), self.fresh.peek()) {
            (Some(action), Some(fresh)) => execution_order(fresh, action) == Ordering::Less,
            (None, _) => true,
            (Some(_), None) => false,
        };
        match fresh_first {
            true => self.fresh.next(),
            false => self.actions.next(),
        }
    }
}

/// Source entries copied to a destination that holds nothing at their paths.
#[derive(Default)]
pub(in crate::run) struct Fresh<'t> {
    replica: usize,
    source: Option<&'t Tree>,
    /// A bit a source entry, by its place in the tree.
    bits: Vec<u64>,
}

impl<'t> Fresh<'t> {
    /// None yet, of `source`'s entries to destination `replica`.
    pub(in crate::run) fn new(replica: usize, source: &'t Tree) -> Self {
        Self {
            replica,
            source: Some(source),
            bits: vec![0; source.len().div_ceil(64)],
        }
    }

    /// The destination the copies go to.
    pub(in crate::run) fn replica(&self) -> usize {
        self.replica
    }

    /// Adds the source's entry at place `i`.
    pub(in crate::run) fn insert(&mut self, i: usize) {
        self.bits[i / 64] |= 1 << (i % 64);
    }

    pub(in crate::run) fn contains(&self, path: &Path) -> bool {
        self.place(path)
            .is_some_and(|i| self.bits[i / 64] & (1 << (i % 64)) != 0)
    }

    /// Takes the copy of `path` out, if it was in.
    pub(in crate::run) fn remove(&mut self, path: &Path) -> bool {
        let found = self.contains(path);
        if let Some(i) = self.place(path).filter(|_| found) {
            self.bits[i / 64] &= !(1 << (i % 64));
        }
        found
    }

    /// Takes out the copies of the entries `pick` chooses, as actions.
    pub(in crate::run) fn take(&mut self, pick: impl Fn(&Entry) -> bool) -> Vec<Action<'t>> {
        let picked: Vec<(&'t Path, &'t Entry)> =
            self.entries().filter(|(_, entry)| pick(entry)).collect();
        for (path, _) in &picked {
            self.remove(path);
        }
        (picked.into_iter())
            .map(|(path, entry)| copy(self.replica, path, entry))
            .collect()
    }

    fn place(&self, path: &Path) -> Option<usize> {
        self.source?.position(path)
    }

    /// The entries copied, in path order.
    pub(in crate::run) fn entries(&self) -> impl Iterator<Item = (&'t Path, &'t Entry)> + '_ {
        let source = self.source;
        set_bits(&self.bits).map(move |i| source.expect("bits are set only with a source").at(i))
    }

    fn into_actions(self) -> FreshActions<'t> {
        let (replica, source) = (self.replica, self.source);
        let places = set_bits(self.bits);
        Box::new(places.map(move |i| {
            let (path, entry) = source.expect("bits are set only with a source").at(i);
            copy(replica, path, entry)
        }))
    }
}

type FreshActions<'t> = Box<dyn Iterator<Item = Action<'t>> + 't>;

fn copy<'t>(replica: usize, path: &'t Path, entry: &'t Entry) -> Action<'t> {
    Action {
        replica,
        path: path.into(),
        op: Op::Copy {
            from: 0,
            entry,
            replaces: false,
        },
    }
}

/// The places of the bits set in `words`, borrowed or owned, in order.
fn set_bits<W: AsRef<[u64]>>(words: W) -> impl Iterator<Item = usize> {
    (0..words.as_ref().len()).flat_map(move |w| bits_of(w, words.as_ref()[w]))
}

/// The places of the bits set in `word`, the `w`th.
fn bits_of(w: usize, mut word: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let bit = (word != 0).then(|| word.trailing_zeros() as usize)?;
        word &= word - 1;
        Some(w * 64 + bit)
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::tree::Mtime;

    fn file(size: u64) -> Entry {
        Entry::file(size, Mtime::at(1), 0o644)
    }

    #[test]
    fn fresh_copies_run_among_the_other_actions_in_the_order_a_run_takes_them() {
        let names = ["a", "a/new", "a/old", "b", "c", "c/deep/new", "d"];
        let source: Tree = (names.iter())
            .map(|n| {
                let entry = if n.contains('.') || n.contains("new") {
                    file(1)
                } else {
                    Entry::dir(Mtime::at(1), 0o644)
                };
                (PathBuf::from(n), entry)
            })
            .collect();
        let folder = Entry::dir(Mtime::at(1), 0o644);
        let mut fresh = Fresh::new(1, &source);
        for path in ["a/new", "c/deep/new", "d"] {
            fresh.insert(source.position(Path::new(path)).unwrap());
        }
        assert!(fresh.remove(Path::new("d")) && !fresh.remove(Path::new("d")));
        assert!(fresh.contains(Path::new("a/new")) && !fresh.contains(Path::new("b")));
        let act = |path: &'static str, op| Action {
            replica: 1,
            path: Path::new(path).into(),
            op,
        };
        let copy = |entry| Op::Copy {
            from: 0,
            entry,
            replaces: true,
        };
        let plan = Plan {
            actions: vec![
                act(
                    "a",
                    Op::SetMtime {
                        mtime: folder.mtime,
                    },
                ),
                act("b", copy(&folder)),
                act("a/old", Op::Remove { entry: &folder }),
                act("c", copy(&folder)),
            ],
            fresh,
        };
        let folders: Vec<&Path> = plan.folder_changes().collect();
        assert_eq!(folders.len(), 5, "{folders:?}");

        let order: Vec<(PathBuf, Phase)> = (plan.into_ordered())
            .map(|a| (a.path.to_path_buf(), a.phase()))
            .collect();

        let want = [
            ("a/old", Phase::RemoveFolders),
            ("a/new", Phase::Write),
            ("b", Phase::Write),
            ("c", Phase::Write),
            ("c/deep/new", Phase::Write),
            ("a", Phase::SetTimes),
        ];
        let want: Vec<(PathBuf, Phase)> = want.iter().map(|(p, f)| (p.into(), *f)).collect();
        assert_eq!(order, want);
    }

    #[test]
    fn fresh_copies_taken_out_are_actions_and_no_longer_fresh() {
        let source: Tree = (["x", "y", "z"].iter())
            .enumerate()
            .map(|(i, n)| (PathBuf::from(n), file(i as u64)))
            .collect();
        let mut fresh = Fresh::new(2, &source);
        (0..3).for_each(|i| fresh.insert(i));

        let taken = fresh.take(|entry| entry.size != 1);

        let paths: Vec<&Path> = taken.iter().map(|a| &*a.path).collect();
        assert_eq!(paths, [Path::new("x"), Path::new("z")]);
        assert!(taken.iter().all(|a| a.replica == 2));
        let left: Vec<&Path> = fresh.entries().map(|(path, _)| path).collect();
        assert_eq!(left, [Path::new("y")]);
    }
}
