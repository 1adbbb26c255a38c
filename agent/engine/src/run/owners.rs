//! Owners by name, as rsync keeps them without `--numeric-ids`: a file of `alice` at one
//! replica belongs to `alice` at the others, whatever number each machine gives her, and so do
//! the ACL entries naming her. A user or group a machine does not know by name keeps its number.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use crate::endpoint::{Endpoint, EndpointError};
use crate::meta::{Accounts, Named, Owner};
use crate::tree::Tree;

/// How each replica's owner numbers read at every other replica. By default (the job keeps
/// numbers, or every replica is on this machine) every number reads as itself.
#[derive(Debug, Default)]
pub(super) struct OwnerMaps {
    by_name: bool,
    known: Mutex<Known>,
}

/// What the replicas said of their users and groups so far.
#[derive(Debug, Default)]
struct Known {
    /// Per replica: names by number, of the numbers asked about.
    names: Vec<Accounts>,
    /// Per replica: numbers by name, of the names asked about.
    ids: Vec<HashMap<(Named, String), u32>>,
    /// Per replica: what it was asked already (a number or a name it does not know is not
    /// asked again).
    asked_ids: Vec<HashSet<(Named, u32)>>,
    asked_names: Vec<HashSet<(Named, String)>>,
}

/// The users and groups `owners` name, once each, in order.
fn ids_of(owners: impl Iterator<Item = Owner>) -> Vec<(Named, u32)> {
    // Inserted one at a time: a `BTreeSet` collected from an iterator gathers every item
    // first, 16 MiB for the owners of a million files, for the few a share has.
    let mut ids = BTreeSet::new();
    let mut last = None;
    for owner in owners.filter(|owner| last.replace(*owner) != Some(*owner)) {
        ids.insert((Named::User, owner.uid));
        ids.insert((Named::Group, owner.gid));
    }
    ids.into_iter().collect()
}

impl OwnerMaps {
    /// Owners by name between `replicas`: the replicas `from`, whose trees' owners travel, are
    /// asked for the names of those owners, and every replica for the numbers of those names.
    pub(super) fn ask(
        replicas: &[&dyn Endpoint],
        trees: &[Tree],
        from: &[usize],
    ) -> Result<Self, (usize, EndpointError)> {
        let known = Known {
            names: vec![Accounts::default(); replicas.len()],
            ids: vec![HashMap::new(); replicas.len()],
            asked_ids: vec![HashSet::new(); replicas.len()],
            asked_names: vec![HashSet::new(); replicas.len()],
        };
        let maps = Self {
            by_name: true,
            known: Mutex::new(known),
        };
        for &r in from {
            let ids = ids_of(trees[r].values().filter_map(|entry| entry.owner()));
            for to in 0..replicas.len() {
                maps.learn(replicas, (r, to), &ids)?;
            }
        }
        Ok(maps)
    }

    /// Whether each of `owners` (numbers at replica `from`) reads as itself at `to`, asking
    /// what is not known yet; on a failure to ask, false (nothing is taken as alike then).
    pub(super) fn read_as_themselves(
        &self,
        replicas: &[&dyn Endpoint],
        (from, to): (usize, usize),
        owners: &HashSet<Owner>,
    ) -> bool {
        if !self.by_name || owners.is_empty() {
            return true;
        }
        let ids = ids_of(owners.iter().copied());
        self.learn(replicas, (from, to), &ids).is_ok()
            && owners.iter().all(|o| self.map(from, to, *o) == *o)
    }

    /// Asks what is not known yet of `ids` (numbers at replica `from`): their names at
    /// `from`, then those names' numbers at `to`.
    pub(super) fn learn(
        &self,
        replicas: &[&dyn Endpoint],
        (from, to): (usize, usize),
        ids: &[(Named, u32)],
    ) -> Result<(), (usize, EndpointError)> {
        if !self.by_name {
            return Ok(());
        }
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let new_ids: Vec<(Named, u32)> = (ids.iter().copied())
            .filter(|id| known.asked_ids[from].insert(*id))
            .collect();
        if !new_ids.is_empty() {
            let (uids, gids) = split(&new_ids);
            let names = (replicas[from].account_names(&uids, &gids)).map_err(|e| (from, e))?;
            known.names[from].users.extend(names.users);
            known.names[from].groups.extend(names.groups);
        }
        let names: Vec<(Named, String)> = (ids.iter())
            .filter_map(|&(named, id)| known.name(from, named, id).map(|n| (named, n.to_owned())))
            .collect();
        let new_names: Vec<(Named, String)> = (names.into_iter())
            .filter(|name| known.asked_names[to].insert(name.clone()))
            .collect();
        if !new_names.is_empty() {
            let (users, groups) = split(&new_names);
            let ids = (replicas[to].account_ids(&users, &groups)).map_err(|e| (to, e))?;
            let users = ids.users.into_iter().map(|(id, n)| ((Named::User, n), id));
            let groups = ids
                .groups
                .into_iter()
                .map(|(id, n)| ((Named::Group, n), id));
            known.ids[to].extend(users.chain(groups));
        }
        Ok(())
    }

    /// `owner` of an entry at replica `from`, as replica `to` numbers it.
    pub(super) fn map(&self, from: usize, to: usize, owner: Owner) -> Owner {
        Owner {
            uid: self.renumber(from, to, Named::User, owner.uid),
            gid: self.renumber(from, to, Named::Group, owner.gid),
        }
    }

    /// The user or group numbered `id` at replica `from`, as replica `to` numbers it (see
    /// [`OwnerMaps::learn`]).
    pub(super) fn renumber(&self, from: usize, to: usize, named: Named, id: u32) -> u32 {
        if !self.by_name {
            return id;
        }
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let name = known.name(from, named, id);
        let there = name.and_then(|name| known.ids.get(to)?.get(&(named, name.to_owned())));
        there.copied().unwrap_or(id)
    }

    /// Whether owners travel by name at all.
    pub(super) fn by_name(&self) -> bool {
        self.by_name
    }
}

impl Known {
    fn name(&self, replica: usize, named: Named, id: u32) -> Option<&str> {
        let names = self.names.get(replica)?;
        let of = match named {
            Named::User => &names.users,
            Named::Group => &names.groups,
        };
        of.get(&id).map(String::as_str)
    }
}

/// Users' and groups' items of `items`, apart.
fn split<T: Clone>(items: &[(Named, T)]) -> (Vec<T>, Vec<T>) {
    let of = |kind: Named| {
        (items.iter())
            .filter(|(named, _)| *named == kind)
            .map(|(_, item)| item.clone())
            .collect()
    };
    (of(Named::User), of(Named::Group))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::LocalEndpoint;
    use crate::tree::{Entry, Mtime};

    fn owner(uid: u32, gid: u32) -> Owner {
        Owner { uid, gid }
    }

    #[test]
    fn each_user_and_group_is_asked_about_once_whatever_the_order_of_their_files() {
        let owners = [(7, 1), (7, 1), (3, 1), (7, 2), (3, 1), (7, 1)];
        let ids = ids_of(owners.into_iter().map(|(uid, gid)| owner(uid, gid)));
        let mut expected = vec![
            (Named::User, 3),
            (Named::User, 7),
            (Named::Group, 1),
            (Named::Group, 2),
        ];
        expected.sort();
        assert_eq!(ids, expected);
    }

    #[test]
    fn owners_travel_by_name_and_those_without_one_by_number() {
        let mut names = Accounts::default();
        names.users.insert(1000, "alice".into());
        names.groups.insert(100, "users".into());
        let known = Known {
            names: vec![names, Accounts::default()],
            ids: vec![
                HashMap::new(),
                HashMap::from([
                    ((Named::User, "alice".into()), 2000),
                    ((Named::Group, "users".into()), 500),
                ]),
            ],
            ..Known::default()
        };
        let maps = OwnerMaps {
            by_name: true,
            known: Mutex::new(known),
        };
        assert_eq!(maps.map(0, 1, owner(1000, 100)), owner(2000, 500));
        assert_eq!(maps.map(0, 1, owner(1001, 7)), owner(1001, 7));
        let numbers = OwnerMaps::default();
        assert_eq!(numbers.map(0, 1, owner(1000, 100)), owner(1000, 100));
    }

    #[test]
    fn a_machine_is_asked_for_the_names_of_its_owners_and_the_numbers_of_names() {
        let dir = tempfile::tempdir().unwrap();
        let here = LocalEndpoint::new(dir.path());
        let mut entry = Entry::file(0, Mtime::at(0), 0o644);
        entry.set_owner(Some(owner(0, 0)));
        let tree = Tree::from([("f".into(), entry)]);
        let replicas: [&dyn Endpoint; 2] = [&here, &here];
        let maps = OwnerMaps::ask(&replicas, &[tree, Tree::new()], &[0]).unwrap();
        let known = maps.known.lock().unwrap();
        assert_eq!(known.name(0, Named::User, 0), Some("root"));
        drop(known);
        assert_eq!(maps.map(0, 1, owner(0, 0)), owner(0, 0));
    }
}
