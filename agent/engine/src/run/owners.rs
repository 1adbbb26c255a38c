//! Owners by name, as rsync keeps them without `--numeric-ids`: a file of `alice` at one
//! replica belongs to `alice` at the others, whatever number each machine gives her. A user or
//! group a machine does not know by name keeps its number. ACL entries keep their numbers.

use std::collections::{BTreeSet, HashMap};

use crate::endpoint::{Endpoint, EndpointError};
use crate::meta::{Accounts, Owner};
use crate::tree::Tree;

/// How each replica's owner numbers read at every other replica.
#[derive(Debug, Default)]
pub(super) struct OwnerMaps {
    /// Per replica: the names of the owners and groups in its tree (empty: numbers kept).
    names: Vec<Accounts>,
    /// Per replica: the numbers of those names there, by name.
    users: Vec<HashMap<String, u32>>,
    groups: Vec<HashMap<String, u32>>,
}

impl OwnerMaps {
    /// Asks the replicas `from` whose trees' owners travel for the names of those owners, and
    /// every replica for the numbers of the names: two calls per replica.
    pub(super) fn ask(
        replicas: &[&dyn Endpoint],
        trees: &[Tree],
        from: &[usize],
    ) -> Result<Self, (usize, EndpointError)> {
        let mut names = vec![Accounts::default(); replicas.len()];
        for &r in from {
            let owners = trees[r].values().filter_map(|entry| entry.meta.owner);
            let (uids, gids): (BTreeSet<u32>, BTreeSet<u32>) =
                owners.map(|owner| (owner.uid, owner.gid)).unzip();
            let (uids, gids): (Vec<u32>, Vec<u32>) =
                (uids.into_iter().collect(), gids.into_iter().collect());
            names[r] = (replicas[r].account_names(&uids, &gids)).map_err(|e| (r, e))?;
        }
        let users: BTreeSet<String> = names
            .iter()
            .flat_map(|a| a.users.values().cloned())
            .collect();
        let groups: BTreeSet<String> = names
            .iter()
            .flat_map(|a| a.groups.values().cloned())
            .collect();
        let (users, groups): (Vec<String>, Vec<String>) =
            (users.into_iter().collect(), groups.into_iter().collect());
        let mut maps = Self {
            names,
            ..Self::default()
        };
        for (r, replica) in replicas.iter().enumerate() {
            let ids = match users.is_empty() && groups.is_empty() {
                true => Accounts::default(),
                false => (replica.account_ids(&users, &groups)).map_err(|e| (r, e))?,
            };
            maps.users
                .push(ids.users.into_iter().map(|(id, name)| (name, id)).collect());
            maps.groups.push(
                ids.groups
                    .into_iter()
                    .map(|(id, name)| (name, id))
                    .collect(),
            );
        }
        Ok(maps)
    }

    /// `owner` of an entry at replica `from`, as replica `to` numbers it.
    pub(super) fn map(&self, from: usize, to: usize, owner: Owner) -> Owner {
        let (Some(names), Some(users), Some(groups)) = (
            self.names.get(from),
            self.users.get(to),
            self.groups.get(to),
        ) else {
            return owner;
        };
        let uid = names.users.get(&owner.uid).and_then(|name| users.get(name));
        let gid = names
            .groups
            .get(&owner.gid)
            .and_then(|name| groups.get(name));
        Owner {
            uid: uid.copied().unwrap_or(owner.uid),
            gid: gid.copied().unwrap_or(owner.gid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::LocalEndpoint;
    use crate::tree::{Entry, Kind, Meta, Mtime};

    fn owner(uid: u32, gid: u32) -> Owner {
        Owner { uid, gid }
    }

    #[test]
    fn owners_travel_by_name_and_those_without_one_by_number() {
        let mut names = Accounts::default();
        names.users.insert(1000, "alice".into());
        names.groups.insert(100, "users".into());
        let maps = OwnerMaps {
            names: vec![names, Accounts::default()],
            users: vec![HashMap::new(), HashMap::from([("alice".into(), 2000)])],
            groups: vec![HashMap::new(), HashMap::from([("users".into(), 500)])],
        };
        assert_eq!(maps.map(0, 1, owner(1000, 100)), owner(2000, 500));
        assert_eq!(maps.map(0, 1, owner(1001, 7)), owner(1001, 7));
        assert_eq!(
            OwnerMaps::default().map(0, 1, owner(1000, 100)),
            owner(1000, 100)
        );
    }

    #[test]
    fn a_machine_is_asked_for_the_names_of_its_owners_and_the_numbers_of_names() {
        let dir = tempfile::tempdir().unwrap();
        let here = LocalEndpoint::new(dir.path());
        let entry = Entry {
            kind: Kind::File,
            size: 0,
            mtime: Mtime { secs: 0, nanos: 0 },
            mode: 0o644,
            meta: Meta {
                owner: Some(owner(0, 0)),
                ..Meta::default()
            },
        };
        let tree = Tree::from([("f".into(), entry)]);
        let replicas: [&dyn Endpoint; 2] = [&here, &here];
        let maps = OwnerMaps::ask(&replicas, &[tree, Tree::new()], &[0]).unwrap();
        assert_eq!(
            maps.names[0].users.get(&0).map(String::as_str),
            Some("root")
        );
        assert_eq!(maps.map(0, 1, owner(0, 0)), owner(0, 0));
    }
}
