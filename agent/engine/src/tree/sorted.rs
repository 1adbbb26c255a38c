//! [`Tree`]: a scan's entries as one list sorted by path, beside one buffer holding every
//! path's bytes. A `BTreeMap<PathBuf, Entry>` takes a node slot and an allocation of its own
//! per path (about 175 bytes an entry at a million files) and can only be built at once from a
//! second copy of its entries; this takes the entry and its path's bytes plus 8, and grows in
//! place as a scan hands it entries in order.

use std::cmp::Ordering;
use std::ffi::OsStr;
use std::fmt;
use std::ops::Index;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::Entry;
use crate::memory;

/// Entries keyed by path relative to the replica's root, in `Path`'s order (component by
/// component), so a folder always comes right before everything inside it.
#[derive(Clone, Default)]
pub struct Tree {
    /// The paths' bytes, each slot's at its own place. Bytes of paths removed stay
    /// until the tree is rebuilt: a run removes few.
    names: Vec<u8>,
    slots: Vec<Slot>,
}

#[derive(Clone)]
struct Slot {
    /// Where its path's bytes start in `names`, shifted left by `LEN_BITS`, beside their
    /// length: one word instead of two.
    place: u64,
    entry: Entry,
}

/// Bits of a slot's `place` that hold its path's length: 16 MiB, above any path a scan finds
/// (`PATH_MAX` is 4 KiB) or a frame holds (8 MiB). The other 40 address 1 TiB of path bytes.
const LEN_BITS: u32 = 24;

/// A slot's path in `names`; a free function so that it can borrow `names` while the slots
/// are borrowed mutably.
fn path_in<'a>(names: &'a [u8], slot: &Slot) -> &'a Path {
    let at = (slot.place >> LEN_BITS) as usize;
    let len = (slot.place & ((1 << LEN_BITS) - 1)) as usize;
    Path::new(OsStr::from_bytes(&names[at..at + len]))
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn path_of(&self, slot: &Slot) -> &Path {
        path_in(&self.names, slot)
    }

    /// Where `path` is (`Ok`) or would go (`Err`).
    fn find(&self, path: &Path) -> Result<usize, usize> {
        (self.slots).binary_search_by(|slot| self.path_of(slot).cmp(path))
    }

    /// The place of `path` among the entries, in order.
    pub fn position(&self, path: &Path) -> Option<usize> {
        self.find(path).ok()
    }

    /// The entry at place `i`, in order.
    pub fn at(&self, i: usize) -> (&Path, &Entry) {
        let slot = &self.slots[i];
        (self.path_of(slot), &slot.entry)
    }

    pub fn get(&self, path: impl AsRef<Path>) -> Option<&Entry> {
        self.get_key_value(path).map(|(_, entry)| entry)
    }

    pub fn get_key_value(&self, path: impl AsRef<Path>) -> Option<(&Path, &Entry)> {
        let slot = &self.slots[self.find(path.as_ref()).ok()?];
        Some((self.path_of(slot), &slot.entry))
    }

    pub fn contains_key(&self, path: impl AsRef<Path>) -> bool {
        self.find(path.as_ref()).is_ok()
    }

    /// Adds the entry at `path`, returning the one it replaces. In order (after every path
    /// held), it is added at the end; elsewhere the entries after it move, so a tree built
    /// out of order is built with `collect` instead.
    pub fn insert(&mut self, path: impl AsRef<Path>, entry: Entry) -> Option<Entry> {
        let path = path.as_ref();
        let at = match self.slots.last() {
            Some(last) if self.path_of(last) >= path => self.find(path),
            _ => Err(self.slots.len()),
        };
        match at {
            Ok(i) => Some(std::mem::replace(&mut self.slots[i].entry, entry)),
            Err(i) => {
                let slot = self.store(path, entry);
                self.slots.insert(i, slot);
                None
            }
        }
    }

    /// A slot for `entry` with `path`'s bytes added to the buffer.
    fn store(&mut self, path: &Path, entry: Entry) -> Slot {
        let bytes = path.as_os_str().as_bytes();
        assert!(bytes.len() < 1 << LEN_BITS, "a path is shorter than 16 MiB");
        let place = (self.names.len() as u64) << LEN_BITS | bytes.len() as u64;
        self.names.extend_from_slice(bytes);
        Slot { place, entry }
    }

    pub fn remove(&mut self, path: impl AsRef<Path>) -> Option<Entry> {
        let i = self.find(path.as_ref()).ok()?;
        Some(self.slots.remove(i).entry)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Path, &mut Entry) -> bool) {
        let names = &self.names;
        (self.slots).retain_mut(|slot| keep(path_in(names, slot), &mut slot.entry));
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter {
            names: &self.names,
            slots: self.slots.iter(),
        }
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &Path> + Clone {
        self.iter().map(|(path, _)| path)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Entry> + Clone {
        self.slots.iter().map(|slot| &slot.entry)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.slots.iter_mut().map(|slot| &mut slot.entry)
    }

    /// The entries after `path`, in order (those inside it first, if it is a folder).
    pub fn after(&self, path: &Path) -> Iter<'_> {
        let from = match self.find(path) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        Iter {
            names: &self.names,
            slots: self.slots[from..].iter(),
        }
    }

    /// The entries inside the folder `path`, in order.
    pub fn inside<'a>(&'a self, path: &'a Path) -> impl Iterator<Item = (&'a Path, &'a Entry)> {
        self.after(path)
            .take_while(move |(p, _)| p.starts_with(path))
    }

    /// Adds every entry of `more`, replacing those at the same paths: merged in one pass, so
    /// a journaled run's few hundred paths go into a million-entry base at the cost of one
    /// copy of it, not one per path.
    pub fn extend(&mut self, more: impl IntoIterator<Item = (PathBuf, Entry)>) {
        let more: Tree = more.into_iter().collect();
        if more.is_empty() {
            return;
        }
        let old = std::mem::take(self);
        let mut building = Builder::with_capacity(old.len() + more.len());
        let (mut a, mut b) = (
            old.slots.into_iter().peekable(),
            more.slots.into_iter().peekable(),
        );
        loop {
            let order = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => path_in(&old.names, x).cmp(path_in(&more.names, y)),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => break,
            };
            // Slots move across as they are, each path's bytes copied once.
            let (names, slot) = match order {
                Ordering::Less => (&old.names, a.next()),
                Ordering::Equal => (&more.names, a.next().and(b.next())),
                Ordering::Greater => (&more.names, b.next()),
            };
            let slot = slot.expect("a slot was peeked");
            building.push(path_in(names, &slot), slot.entry);
        }
        *self = building.build();
    }
}

/// Builds a [`Tree`] from entries in any order: in order (as a scan hands them over) they
/// are simply added; otherwise they are sorted once at the end, the last of a path kept.
pub struct Builder {
    tree: Tree,
    in_order: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl Builder {
    pub fn with_capacity(entries: usize) -> Self {
        let tree = Tree {
            names: memory::mapped_vec(0),
            slots: memory::mapped_vec(entries),
        };
        Self {
            tree,
            in_order: true,
        }
    }

    pub fn push(&mut self, path: &Path, entry: Entry) {
        let tree = &mut self.tree;
        if let Some(last) = tree.slots.last() {
            self.in_order &= tree.path_of(last) < path;
        }
        let slot = tree.store(path, entry);
        tree.slots.push(slot);
    }

    /// Entries pushed so far, less those dropped.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The entry at place `i`, in the order pushed.
    pub fn get(&self, i: usize) -> (&Path, &Entry) {
        self.tree.at(i)
    }

    /// Drops the entries at places `at` (ascending), moving the rest down, their paths' bytes
    /// too: a builder whose entries are dropped as fast as they are pushed stays as small as
    /// what it holds at once. A builder only appends, so its paths' bytes lie in its slots'
    /// order.
    pub fn drop_at(&mut self, at: &[usize]) {
        let Some(&first) = at.first() else {
            return;
        };
        let tree = &mut self.tree;
        let mut dropped = at.iter().copied().peekable();
        let (mut slots_to, mut names_to) = (first, (tree.slots[first].place >> LEN_BITS) as usize);
        for i in first..tree.slots.len() {
            if dropped.next_if_eq(&i).is_some() {
                continue;
            }
            let len = (tree.slots[i].place & ((1 << LEN_BITS) - 1)) as usize;
            let from = (tree.slots[i].place >> LEN_BITS) as usize;
            tree.names.copy_within(from..from + len, names_to);
            tree.slots[i].place = (names_to as u64) << LEN_BITS | len as u64;
            tree.slots.swap(slots_to, i);
            (slots_to, names_to) = (slots_to + 1, names_to + len);
        }
        tree.slots.truncate(slots_to);
        tree.names.truncate(names_to);
    }

    pub fn build(self) -> Tree {
        let mut tree = self.tree;
        if !self.in_order {
            let names = &tree.names;
            // Stable: of two entries at one path, the later one stays last.
            tree.slots
                .sort_by(|a, b| path_in(names, a).cmp(path_in(names, b)));
            let mut kept: Vec<Slot> = Vec::with_capacity(tree.slots.len());
            for slot in tree.slots.drain(..) {
                match kept.last_mut() {
                    Some(last) if path_in(names, last) == path_in(names, &slot) => *last = slot,
                    _ => kept.push(slot),
                }
            }
            tree.slots = kept;
        }
        tree.names.shrink_to_fit();
        tree.slots.shrink_to_fit();
        tree
    }
}

impl FromIterator<(PathBuf, Entry)> for Tree {
    fn from_iter<I: IntoIterator<Item = (PathBuf, Entry)>>(entries: I) -> Self {
        let mut building = Builder::default();
        for (path, entry) in entries {
            building.push(&path, entry);
        }
        building.build()
    }
}

impl<const N: usize> From<[(PathBuf, Entry); N]> for Tree {
    fn from(entries: [(PathBuf, Entry); N]) -> Self {
        entries.into_iter().collect()
    }
}

/// A tree's entries in order, borrowed.
#[derive(Clone)]
pub struct Iter<'a> {
    names: &'a [u8],
    slots: std::slice::Iter<'a, Slot>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a Path, &'a Entry);

    fn next(&mut self) -> Option<Self::Item> {
        let slot = self.slots.next()?;
        Some((path_in(self.names, slot), &slot.entry))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.slots.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let slot = self.slots.next_back()?;
        Some((path_in(self.names, slot), &slot.entry))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Tree {
    type Item = (&'a Path, &'a Entry);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// A tree's entries in order, taken.
pub struct IntoIter {
    names: Vec<u8>,
    slots: std::vec::IntoIter<Slot>,
}

impl Iterator for IntoIter {
    type Item = (PathBuf, Entry);

    fn next(&mut self) -> Option<Self::Item> {
        let slot = self.slots.next()?;
        Some((path_in(&self.names, &slot).to_path_buf(), slot.entry))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.slots.size_hint()
    }
}

impl IntoIterator for Tree {
    type Item = (PathBuf, Entry);
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        IntoIter {
            names: self.names,
            slots: self.slots.into_iter(),
        }
    }
}

impl Index<&Path> for Tree {
    type Output = Entry;

    fn index(&self, path: &Path) -> &Entry {
        self.get(path).expect("no entry at that path")
    }
}

impl PartialEq for Tree {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Tree {}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Mtime;

    fn file(size: u64) -> Entry {
        Entry::file(size, Mtime::at(0), 0o644)
    }

    fn paths(tree: &Tree) -> Vec<&str> {
        tree.keys().map(|p| p.to_str().unwrap()).collect()
    }

    #[test]
    fn paths_keep_path_order_whatever_order_they_come_in() {
        let names = ["a.b", "a/x", "a", "b", "a/x/y", "a-b"];
        let tree: Tree = (names.iter())
            .map(|n| (PathBuf::from(n), file(1)))
            .collect();
        let mut want: Vec<&Path> = names.iter().map(Path::new).collect();
        want.sort();
        assert_eq!(tree.keys().collect::<Vec<_>>(), want);
        assert_eq!(paths(&tree), ["a", "a/x", "a/x/y", "a-b", "a.b", "b"]);
    }

    #[test]
    fn the_last_entry_given_for_a_path_is_kept() {
        let entries = [("b", 1), ("a", 2), ("b", 3)];
        let tree: Tree = (entries.iter())
            .map(|(n, s)| (PathBuf::from(n), file(*s)))
            .collect();
        assert_eq!(tree.len(), 2);
        assert_eq!(tree.get("b").map(|e| e.size), Some(3));
    }

    #[test]
    fn inserts_and_removals_anywhere_keep_lookups_right() {
        let mut tree = Tree::new();
        for name in ["m", "z", "a", "q"] {
            assert_eq!(tree.insert(name, file(1)), None);
        }
        assert_eq!(tree.insert("q", file(2)).map(|e| e.size), Some(1));
        assert_eq!(tree.remove("m").map(|e| e.size), Some(1));
        assert_eq!(tree.remove("m"), None);
        assert_eq!(paths(&tree), ["a", "q", "z"]);
        assert_eq!(tree["q".as_ref()].size, 2);
        assert!(!tree.contains_key("m") && tree.contains_key("z"));
    }

    #[test]
    fn extending_merges_and_replaces() {
        let mut base: Tree = (["a", "c", "e"].iter())
            .map(|n| (n.into(), file(1)))
            .collect();
        base.extend([("d".into(), file(2)), ("c".into(), file(3))]);
        assert_eq!(paths(&base), ["a", "c", "d", "e"]);
        assert_eq!(base.get("c").map(|e| e.size), Some(3));
    }

    #[test]
    fn after_a_folder_come_its_contents_then_what_follows() {
        let tree: Tree = (["a", "a/1", "a/2", "ab", "b"].iter())
            .map(|n| (n.into(), file(1)))
            .collect();
        let after: Vec<&Path> = tree.after(Path::new("a")).map(|(p, _)| p).collect();
        assert_eq!(after, ["a/1", "a/2", "ab", "b"].map(Path::new));
        assert_eq!(tree.after(Path::new("aa")).count(), 2, "ab and b");
    }

    #[test]
    fn entries_dropped_from_a_builder_leave_the_others_whole() {
        let mut building = Builder::default();
        for (i, name) in ["a", "a/long-name", "b", "c", "cc/d", "e"]
            .iter()
            .enumerate()
        {
            building.push(Path::new(name), file(i as u64));
        }
        building.drop_at(&[1, 3]);
        building.push(Path::new("f"), file(9));
        building.drop_at(&[0]);
        assert_eq!(building.len(), 4);
        assert_eq!(building.get(0), (Path::new("b"), &file(2)));
        let tree = building.build();
        assert_eq!(paths(&tree), ["b", "cc/d", "e", "f"]);
        let sizes: Vec<u64> = tree.values().map(|e| e.size).collect();
        assert_eq!(sizes, [2, 4, 5, 9]);
        assert_eq!(
            tree.names.len(),
            "bcc/def".len(),
            "the dropped paths' bytes are gone"
        );
    }

    #[test]
    fn retain_sees_each_path_with_its_entry() {
        let mut tree: Tree = (["a", "b", "c"].iter())
            .map(|n| (n.into(), file(1)))
            .collect();
        tree.retain(|path, entry| {
            entry.size = 5;
            path != Path::new("b")
        });
        assert_eq!(paths(&tree), ["a", "c"]);
        assert!(tree.values().all(|e| e.size == 5));
    }
}
