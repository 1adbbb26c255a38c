//! Content hashes the engine asks replicas for: to turn a new file into a local duplicate of
//! one the same replica deletes (a rename or move costs no file bytes), to tell the sync
//! planner whether two changed files hold the same bytes, and, with `--checksum`, which files
//! that look unchanged are not.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use super::execute::{Executor, Hashes};
use super::plan::{Action, Op, Plan};
use crate::endpoint::Changes;
use crate::tree::{self, Entry, Kind, Tree, Union, same};

impl Executor<'_> {
    /// Per destination (`trees[1..]`), the files that look like the source's (same size and
    /// time) but hold other bytes: `--checksum` copies them. Every replica's hashes are asked
    /// at once, the source's once for all destinations; a file that cannot be read on one side
    /// counts as different.
    pub(super) fn content_differs(&self, trees: &[Tree]) -> Vec<HashSet<PathBuf>> {
        let src = &trees[0];
        let alike: Vec<BTreeSet<PathBuf>> = (trees[1..].iter())
            .map(|dst| {
                (tree::pairs(src, dst))
                    .filter(|(_, s, t)| match (s, t) {
                        (Some(s), Some(t)) => s.kind() == Kind::File && s.looks_unchanged(t),
                        _ => false,
                    })
                    .map(|(path, _, _)| path.to_path_buf())
                    .collect()
            })
            .collect();
        let mut wanted: HashMap<usize, BTreeSet<PathBuf>> = HashMap::new();
        for (i, paths) in alike.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
            wanted.entry(0).or_default().extend(paths.iter().cloned());
            wanted.insert(i + 1, paths.clone());
        }
        let hashes = self.fetch_hashes(wanted);
        (alike.into_iter().enumerate())
            .map(|(i, paths)| {
                let differs = |path: &PathBuf| {
                    let at_source = hashes.get(&(0, path.clone()));
                    at_source.is_none() || at_source != hashes.get(&(i + 1, path.clone()))
                };
                paths.into_iter().filter(differs).collect()
            })
            .collect()
    }

    /// Turns the copy of a new file into a local duplicate when the same replica deletes a file
    /// of the same size and content in this run: another replica renamed or moved it. Only
    /// pays across a network, where it saves the file's bytes for two local reads.
    pub(super) fn find_moves<'t>(&self, mut plan: Plan<'t>) -> Plan<'t> {
        let mut removed: HashMap<(usize, u64), Vec<PathBuf>> = HashMap::new();
        for action in &plan.actions {
            if let Op::Remove { entry } = &action.op
                && entry.kind() == Kind::File
                && entry.size > 0
            {
                removed
                    .entry((action.replica, entry.size))
                    .or_default()
                    .push(action.path.to_path_buf());
            }
        }
        if removed.is_empty() {
            return plan;
        }
        // The fresh copies that could be moves become actions of their own.
        let d = plan.fresh.replica();
        let could_be_moved = plan
            .fresh
            .take(|entry| entry.kind() == Kind::File && removed.contains_key(&(d, entry.size)));
        plan.actions.extend(could_be_moved);
        let actions = &mut plan.actions;
        let hashes = self.hashes_for_moves(actions, &removed);
        for action in actions.iter_mut() {
            let Some((from, candidates)) = self.move_candidates(action, &removed) else {
                continue;
            };
            let Some(content) = hashes.get(&(from, action.path.to_path_buf())) else {
                continue;
            };
            let same = candidates
                .iter()
                .find(|old| hashes.get(&(action.replica, old.to_path_buf())) == Some(content));
            if let (Some(old), Op::Copy { entry, .. }) = (same, &action.op) {
                action.op = Op::LinkFrom {
                    from: old.clone(),
                    entry,
                };
            }
        }
        plan
    }

    /// Every hash [`Self::find_moves`] compares, asked of each replica at once: across a
    /// network one by one they would cost a round trip each. A file that cannot be read has
    /// none (it is copied, not moved).
    pub(super) fn hashes_for_moves(
        &self,
        actions: &[Action],
        removed: &HashMap<(usize, u64), Vec<PathBuf>>,
    ) -> Hashes {
        let mut wanted: HashMap<usize, BTreeSet<PathBuf>> = HashMap::new();
        for action in actions {
            if let Some((from, candidates)) = self.move_candidates(action, removed) {
                wanted
                    .entry(from)
                    .or_default()
                    .insert(action.path.to_path_buf());
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
    pub(super) fn hashes_to_compare(&self, trees: &[Tree], base: &Tree) -> Hashes {
        let mut wanted: HashMap<usize, BTreeSet<PathBuf>> = HashMap::new();
        // The replicas' trees and, last, the base.
        let mut union = Union::new(trees.iter().chain([base]));
        let mut states = Vec::with_capacity(trees.len() + 1);
        while let Some(path) = union.next_into(&mut states) {
            let was = states.pop().flatten();
            let changed: Vec<(usize, &Entry)> = (states.iter().enumerate())
                .filter_map(|(r, state)| state.map(|entry| (r, entry)))
                .filter(|(_, entry)| entry.kind() == Kind::File && !same(Some(entry), was))
                .collect();
            for (r, entry) in &changed {
                let alike = |(other, them): &(usize, &Entry)| {
                    other != r && them.size == entry.size && them.mtime != entry.mtime
                };
                if changed.iter().any(alike) {
                    wanted.entry(*r).or_default().insert(path.to_path_buf());
                }
            }
        }
        self.fetch_hashes(wanted)
    }

    /// The hashes of files on several replicas, each replica asked once; a file that cannot
    /// be read has none.
    pub(super) fn fetch_hashes(&self, wanted: HashMap<usize, BTreeSet<PathBuf>>) -> Hashes {
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
    /// and the files of its size the run deletes there (each may be it, moved). Under the sync
    /// rule, only where the replica checks a move still holds when it makes it.
    pub(super) fn move_candidates<'r>(
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
        let remote = self.replicas[*from].capabilities().across_network
            || self.replicas[action.replica].capabilities().across_network;
        let checked =
            self.planned.is_none() || self.replicas[action.replica].capabilities().checks_moves;
        let candidates = removed
            .get(&(action.replica, entry.size))
            .filter(|_| remote && checked)?;
        Some((*from, candidates))
    }
}
