//! Trees walked together in path order: each path once, with what each tree holds there. A
//! merge costs a comparison or two a step, where looking each path of one tree up in another
//! costs a binary search, twenty `Path` comparisons at a million entries; and it needs no set
//! of all the trees' paths.

use std::iter::Peekable;
use std::path::Path;

use super::sorted::Iter;
use super::{Entry, Tree};

/// Several trees' paths, in order.
pub struct Union<'a> {
    cursors: Vec<Peekable<Iter<'a>>>,
}

impl<'a> Union<'a> {
    pub fn new(trees: impl IntoIterator<Item = &'a Tree>) -> Self {
        let cursors = trees.into_iter().map(|tree| tree.iter().peekable());
        Self {
            cursors: cursors.collect(),
        }
    }

    /// The next path any of the trees holds, `None` after the last; `states` then holds what
    /// each tree holds there, in the order the trees were given.
    pub fn next_into(&mut self, states: &mut Vec<Option<&'a Entry>>) -> Option<&'a Path> {
        let next = (self.cursors.iter_mut()).filter_map(|cursor| cursor.peek().map(|(p, _)| *p));
        let path = next.min()?;
        states.clear();
        states.extend(self.cursors.iter_mut().map(|cursor| {
            let here = cursor.next_if(|(p, _)| *p == path);
            here.map(|(_, entry)| entry)
        }));
        Some(path)
    }
}

/// The paths of `a` and `b`, in order, with what each holds there.
pub fn pairs<'a>(
    a: &'a Tree,
    b: &'a Tree,
) -> impl Iterator<Item = (&'a Path, Option<&'a Entry>, Option<&'a Entry>)> {
    let mut union = Union::new([a, b]);
    let mut states = Vec::with_capacity(2);
    std::iter::from_fn(move || {
        let path = union.next_into(&mut states)?;
        Some((path, states[0], states[1]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use crate::tree::Mtime;

    fn tree(paths: &[&str], size: u64) -> Tree {
        let entry = |size| Entry::file(size, Mtime::at(0), 0o644);
        (paths.iter())
            .map(|p| (PathBuf::from(p), entry(size)))
            .collect()
    }

    #[test]
    fn trees_walked_together_give_each_path_once_in_order_with_each_trees_entry() {
        let (a, b, c) = (
            tree(&["a", "a/x", "b.txt", "d"], 1),
            tree(&["a", "a-b", "a/x", "c"], 2),
            tree(&["a.b", "d"], 3),
        );
        let mut union = Union::new([&a, &b, &c]);
        let mut states = Vec::new();
        let mut seen = Vec::new();
        while let Some(path) = union.next_into(&mut states) {
            let sizes: Vec<Option<u64>> = states.iter().map(|s| s.map(|e| e.size)).collect();
            seen.push((path.to_str().unwrap(), sizes));
        }
        let want = [
            ("a", vec![Some(1), Some(2), None]),
            ("a/x", vec![Some(1), Some(2), None]),
            ("a-b", vec![None, Some(2), None]),
            ("a.b", vec![None, None, Some(3)]),
            ("b.txt", vec![Some(1), None, None]),
            ("c", vec![None, Some(2), None]),
            ("d", vec![Some(1), None, Some(3)]),
        ];
        assert_eq!(seen, want);
        let empty = Tree::new();
        let pairs: Vec<&Path> = pairs(&a, &empty).map(|(p, _, _)| p).collect();
        assert_eq!(pairs, a.keys().collect::<Vec<_>>());
    }
}
