//! What a replica keeps of an entry beyond its bytes, mode and time, as `rsync -aHAXS` does:
//! its owner, its POSIX ACLs and other extended attributes, which of its names are one file
//! (hard links), and whether it has holes. A scan reports each as a small fact ([`Meta`]); the
//! attributes' values travel only when a replica must set them ([`Xattrs`]).

use std::collections::BTreeMap;
use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

/// A digest of attributes: 64 bits of a BLAKE3 hash, never 0, so an absent one costs no
/// room beside it (a scan holds one `Meta` a file).
pub type Digest = std::num::NonZeroU64;

/// The facts a scan reports beside an entry's kind, size, time and mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    /// Who owns it, by number; `None` where not known (an entry from an older peer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// A digest of its POSIX ACLs (access and default); `None` without any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl: Option<Digest>,
    /// A digest of its other extended attributes; `None` without any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xattrs: Option<Digest>,
    /// For a file with more than one name: a number shared by all its names in this replica
    /// (from its device and inode, see [`link_id`]), so a run keeps them one file.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "link_from_wire"
    )]
    pub link: Option<NonZeroU64>,
    /// A file with holes (fewer blocks allocated than its size needs): written with holes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sparse: bool,
}

/// An owner and a group, by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub fn uid(&self) -> rustix::fs::Uid {
        rustix::fs::Uid::from_raw(self.uid)
    }

    pub fn gid(&self) -> rustix::fs::Gid {
        rustix::fs::Gid::from_raw(self.gid)
    }
}

/// Which metadata a job keeps: all of it unless turned off. A replica that cannot set some of
/// it (owners, where its writer is not root) keeps what it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Keep {
    pub owner: bool,
    pub acls: bool,
    pub xattrs: bool,
    pub hard_links: bool,
    /// FIFOs, sockets and devices are made at the destinations (off by default: skipped).
    pub specials: bool,
    /// Owners keep their numbers (`rsync --numeric-ids`) instead of their names: by default a
    /// file of `alice` belongs to `alice` at the destination, whatever number each machine
    /// gives her, and a name the destination does not know keeps its number.
    pub numeric_ids: bool,
}

impl Default for Keep {
    fn default() -> Self {
        Self {
            owner: true,
            acls: true,
            xattrs: true,
            hard_links: true,
            specials: false,
            numeric_ids: false,
        }
    }
}

impl Keep {
    /// Whether the attribute `name` is one this job keeps.
    pub fn keeps(&self, name: &[u8]) -> bool {
        match Class::of(name) {
            Class::Acl => self.acls,
            Class::Other => self.xattrs,
            Class::Never => false,
        }
    }

    /// What both keep.
    pub fn and(self, other: Keep) -> Keep {
        Keep {
            owner: self.owner && other.owner,
            acls: self.acls && other.acls,
            xattrs: self.xattrs && other.xattrs,
            hard_links: self.hard_links && other.hard_links,
            specials: self.specials && other.specials,
            numeric_ids: self.numeric_ids || other.numeric_ids,
        }
    }

    /// Whether setting `meta` needs the attributes' values, not only the facts in [`Meta`].
    pub fn needs_values(&self, meta: &Meta) -> bool {
        (self.acls && meta.acl.is_some()) || (self.xattrs && meta.xattrs.is_some())
    }
}

/// Users and groups by number, with their names, as one machine knows them: what keeping
/// owners by name asks of each replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounts {
    pub users: BTreeMap<u32, String>,
    pub groups: BTreeMap<u32, String>,
}

/// Users or groups a peer may ask about at once.
pub const MAX_ACCOUNTS: usize = 65_536;

/// What kind of attribute a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// `system.posix_acl_access` and `system.posix_acl_default`: the ACLs.
    Acl,
    /// `user.`, `security.`, `trusted.` (Samba's `security.NTACL` and `user.DOSATTRIB`).
    Other,
    /// The rest of `system.` belongs to the file system itself (NFSv4 ACLs, say), which a
    /// replica on another one cannot take. `security.capability` gives a program privileges
    /// when run, as a setuid bit does, and is dropped for the same reason: a share user's
    /// program must not become a privileged one at the destination. `trusted.ferry.` marks
    /// are the agent's own (which state folder last served a root): copied, or written by a
    /// peer, they would vouch for another agent's state.
    Never,
}

impl Class {
    fn of(name: &[u8]) -> Class {
        match name {
            b"system.posix_acl_access" | b"system.posix_acl_default" => Class::Acl,
            b"security.capability" => Class::Never,
            _ if name.starts_with(b"trusted.ferry.") => Class::Never,
            _ if name.starts_with(b"system.") => Class::Never,
            _ => Class::Other,
        }
    }
}

/// Whether an attribute is ever written to a replica, whatever a job or a peer asks.
pub fn writable(name: &[u8]) -> bool {
    Class::of(name) != Class::Never
}

/// One extended attribute (an ACL is one too).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Xattr {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// An entry's extended attributes, sorted by name.
pub type Xattrs = Vec<Xattr>;

/// Linux's limits: a name of at most 255 bytes, a value of at most 64 KiB.
pub const MAX_NAME: usize = 255;
pub const MAX_VALUE: usize = 64 << 10;
/// Attributes on one entry, at most (a peer's list is refused beyond it).
pub const MAX_COUNT: usize = 1024;

/// Checks a list of attributes from a peer before any is set.
pub fn check(xattrs: &[Xattr]) -> Result<(), String> {
    if xattrs.len() > MAX_COUNT {
        return Err(format!(
            "{} extended attributes, over the limit of {MAX_COUNT}",
            xattrs.len()
        ));
    }
    for xattr in xattrs {
        let shown = String::from_utf8_lossy(&xattr.name);
        if xattr.name.is_empty() || xattr.name.len() > MAX_NAME || xattr.name.contains(&0) {
            return Err(format!("extended attribute name {shown:?} is not valid"));
        }
        if xattr.value.len() > MAX_VALUE {
            return Err(format!(
                "extended attribute {shown} holds {} bytes, over the limit of {MAX_VALUE}",
                xattr.value.len()
            ));
        }
    }
    Ok(())
}

/// The digests a scan reports of `xattrs` (sorted by name): ACLs apart from the rest. An ACL
/// is digested with the names `name_of` gives the users and groups it names, where it gives
/// one: two machines that number alice differently agree on an ACL that names her.
pub fn digests(
    xattrs: &[Xattr],
    name_of: &dyn Fn(Named, u32) -> Option<String>,
) -> (Option<Digest>, Option<Digest>) {
    // Most entries have none: no hasher is made for them (a scan does this for every entry).
    let digest = |class: Class| {
        let mut of_class = xattrs
            .iter()
            .filter(|x| Class::of(&x.name) == class)
            .peekable();
        of_class.peek()?;
        let mut hasher = blake3::Hasher::new();
        for xattr in of_class {
            let value = match class {
                Class::Acl => acl_by_name(&xattr.value, name_of),
                _ => xattr.value.clone(),
            };
            hasher.update(&(xattr.name.len() as u64).to_le_bytes());
            hasher.update(&xattr.name);
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(&value);
        }
        let hash = hasher.finalize();
        let bits = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        Some(Digest::new(bits).unwrap_or(Digest::MIN))
    };
    (digest(Class::Acl), digest(Class::Other))
}

/// Whether an ACL entry names a user or a group (by number in the ACL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Named {
    User,
    Group,
}

/// Linux's form of a POSIX ACL in an attribute: version 2, then entries of tag, permissions
/// and id, 8 bytes each, little-endian; the id means something for named users and groups.
const ACL_VERSION: u32 = 2;
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

/// The entries of an ACL attribute's value as (tag, permissions, id); `None` if it is not one.
fn acl_entries(value: &[u8]) -> Option<impl Iterator<Item = (u16, u16, u32)> + '_> {
    let (version, entries) = value.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*version) != ACL_VERSION || !entries.len().is_multiple_of(8) {
        return None;
    }
    Some(entries.chunks_exact(8).map(|e| {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        (tag, perm, u32::from_le_bytes([e[4], e[5], e[6], e[7]]))
    }))
}

fn named(tag: u16) -> Option<Named> {
    match tag {
        ACL_USER => Some(Named::User),
        ACL_GROUP => Some(Named::Group),
        _ => None,
    }
}

/// Whether an attribute is an ACL.
pub fn is_acl(name: &[u8]) -> bool {
    Class::of(name) == Class::Acl
}

/// The users and groups an ACL attribute's value names, by number.
pub fn acl_ids(value: &[u8]) -> Vec<(Named, u32)> {
    let Some(entries) = acl_entries(value) else {
        return Vec::new();
    };
    entries
        .filter_map(|(tag, _, id)| named(tag).map(|named| (named, id)))
        .collect()
}

/// The ACL with each named user and group numbered by `renumber`; another value as it is.
pub fn renumber_acl(value: &[u8], renumber: &dyn Fn(Named, u32) -> u32) -> Vec<u8> {
    let Some(entries) = acl_entries(value) else {
        return value.to_vec();
    };
    let mut out = ACL_VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        let id = named(tag).map_or(id, |named| renumber(named, id));
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// The ACL as digested: each named user or group by name where it has one.
fn acl_by_name(value: &[u8], name_of: &dyn Fn(Named, u32) -> Option<String>) -> Vec<u8> {
    let Some(entries) = acl_entries(value) else {
        return value.to_vec();
    };
    let mut out = Vec::with_capacity(value.len());
    for (tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        match named(tag).and_then(|named| name_of(named, id)) {
            Some(name) => {
                out.push(b'n');
                out.extend_from_slice(&(name.len() as u32).to_le_bytes());
                out.extend_from_slice(name.as_bytes());
            }
            None => {
                out.push(b'#');
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
    }
    out
}

/// The number that marks the names of one file: its device and inode, mixed; never 0 (which
/// reads as `u64::MAX`), so an entry holds it in 8 bytes.
pub fn link_id(dev: u64, ino: u64) -> NonZeroU64 {
    NonZeroU64::new(dev.rotate_left(32) ^ ino).unwrap_or(NonZeroU64::MAX)
}

/// A link number as a peer or a state file wrote it: one from before they were never 0 may be.
fn link_from_wire<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<NonZeroU64>, D::Error> {
    let link = Option::<u64>::deserialize(deserializer)?;
    Ok(link.map(|n| NonZeroU64::new(n).unwrap_or(NonZeroU64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_number_of_0_from_an_older_peer_reads_as_the_largest() {
        let read = |json: &str| serde_json::from_str::<Meta>(json).unwrap().link;
        assert_eq!(read(r#"{"link":0}"#), Some(NonZeroU64::MAX));
        assert_eq!(read(r#"{"link":7}"#), NonZeroU64::new(7));
        assert_eq!(read("{}"), None);
        let written = Meta {
            link: NonZeroU64::new(7),
            ..Meta::default()
        };
        assert_eq!(serde_json::to_string(&written).unwrap(), r#"{"link":7}"#);
        assert_eq!(link_id(1 << 32, 1), NonZeroU64::MAX, "1 rotated is 1 << 32");
    }

    fn xattr(name: &str, value: &str) -> Xattr {
        Xattr {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn acls_and_other_attributes_have_digests_of_their_own() {
        let acl = xattr("system.posix_acl_access", "a");
        let user = xattr("user.comment", "x");
        let nameless = |_, _| None;
        let (a1, x1) = digests(&[acl.clone(), user.clone()], &nameless);
        let (a2, x2) = digests(std::slice::from_ref(&acl), &nameless);
        assert_eq!(a1, a2);
        assert!(x1.is_some() && x2.is_none());
        let (_, x3) = digests(&[acl, xattr("user.comment", "y")], &nameless);
        assert_ne!(x1, x3, "a changed value changes the digest");
        assert_eq!(digests(&[], &nameless), (None, None));
    }

    /// `setfacl -m u:ID:rw,g:GID:r`'s access ACL, as Linux stores it.
    fn acl_naming(uid: u32, gid: u32) -> Vec<u8> {
        let entries: [(u16, u16, u32); 6] = [
            (0x01, 6, u32::MAX),
            (ACL_USER, 6, uid),
            (0x04, 4, u32::MAX),
            (ACL_GROUP, 4, gid),
            (0x10, 6, u32::MAX),
            (0x20, 4, u32::MAX),
        ];
        let mut value = ACL_VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            value.extend_from_slice(&tag.to_le_bytes());
            value.extend_from_slice(&perm.to_le_bytes());
            value.extend_from_slice(&id.to_le_bytes());
        }
        value
    }

    #[test]
    fn an_acl_naming_one_user_by_two_numbers_digests_alike_on_two_machines() {
        let here = |named, id| match (named, id) {
            (Named::User, 1500) => Some("alice".to_owned()),
            (Named::Group, 1600) => Some("staff".to_owned()),
            _ => None,
        };
        let there = |named, id| match (named, id) {
            (Named::User, 2500) => Some("alice".to_owned()),
            (Named::Group, 2600) => Some("staff".to_owned()),
            _ => None,
        };
        let acl = |uid, gid| Xattr {
            name: b"system.posix_acl_access".to_vec(),
            value: acl_naming(uid, gid),
        };
        let (ours, _) = digests(&[acl(1500, 1600)], &here);
        assert_eq!(ours, digests(&[acl(2500, 2600)], &there).0);
        assert_ne!(ours, digests(&[acl(2500, 2601)], &there).0);
        assert_eq!(
            acl_ids(&acl_naming(1500, 1600)),
            [(Named::User, 1500), (Named::Group, 1600)]
        );
        let renumbered = renumber_acl(&acl_naming(1500, 1600), &|named, id| match named {
            Named::User => id + 1000,
            Named::Group => id + 1000,
        });
        assert_eq!(renumbered, acl_naming(2500, 2600));
        assert_eq!(renumber_acl(b"not an acl", &|_, id| id), b"not an acl");
    }

    #[test]
    fn a_job_keeps_the_classes_it_asks_for_and_never_the_file_systems_own() {
        let keep = Keep {
            acls: false,
            ..Keep::default()
        };
        assert!(!keep.keeps(b"system.posix_acl_default"));
        assert!(keep.keeps(b"security.NTACL"));
        assert!(!Keep::default().keeps(b"system.nfs4_acl"));
        assert!(!Keep::default().keeps(b"security.capability"));
        assert!(!Keep::default().keeps(b"trusted.ferry.state"));
        assert!(!writable(b"trusted.ferry.state"));
    }

    #[test]
    fn a_peers_list_is_checked_before_use() {
        assert!(check(&[xattr("user.a", "b")]).is_ok());
        assert!(check(&[xattr("", "b")]).is_err());
        assert!(check(&[xattr("user.\0", "b")]).is_err());
        let big = Xattr {
            name: b"user.big".to_vec(),
            value: vec![0; MAX_VALUE + 1],
        };
        assert!(check(&[big]).is_err());
        assert!(check(&vec![xattr("user.a", ""); MAX_COUNT + 1]).is_err());
    }
}
