//! A sync job's memory: the tree all replicas agreed on after the last run. Without it a file
//! missing on one side could be a new file elsewhere or a deletion here; with it, the side that
//! differs from the base is the side that changed.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde::{Serialize, Serializer};

use crate::endpoint::{Endpoint, EndpointError, Scope};
use crate::tree::{Entry, Tree, TreeBuilder, is_listable};

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error(transparent)]
    Io(#[from] EndpointError),
    #[error(
        "the sync state {name} in {replica} is damaged ({source}); move it aside to start over"
    )]
    Damaged {
        name: String,
        replica: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The state file's name inside the replica's `.ferry` folder.
pub fn state_name(job: &str) -> String {
    let safe: String = job
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("sync-{safe}.json")
}

/// The base of `job` kept in `replica`, read as it comes: never whole in memory beside the tree.
pub fn load(replica: &dyn Endpoint, job: &str) -> Result<Tree, BaseError> {
    let name = state_name(job);
    let Some(reader) = replica.read_state(&name)? else {
        return Ok(Tree::new());
    };
    let reader = io::BufReader::with_capacity(STREAMED, reader);
    let Keyed(base) = serde_json::from_reader(reader).map_err(|source| match source.is_io() {
        true => {
            let path = format!("{}/.ferry/{name}", replica.display());
            BaseError::Io(EndpointError::carried("read state", path, source.into()))
        }
        false => BaseError::Damaged {
            name: name.clone(),
            replica: replica.display(),
            source,
        },
    })?;
    Ok(base)
}

/// Keeps `base` as the base of `job` in `replica`, written as it is serialised.
pub fn save(replica: &dyn Endpoint, job: &str, base: &Tree) -> Result<(), BaseError> {
    replica.write_state(&state_name(job), &mut |out| {
        serde_json::to_writer(out, &Keyed(base)).map_err(io::Error::from)
    })?;
    Ok(())
}

/// How much of a state file is read at a time.
const STREAMED: usize = 1 << 20;

/// A base as its state file holds it: one JSON object from each path's key (see [`key_of`]) to
/// its entry, read and written an entry at a time. Gathered into a map first, a million-file
/// job's base would be held twice more, every path copied into a key.
struct Keyed<T>(T);

impl Serialize for Keyed<&Tree> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(path, entry)| (key_of(path), entry)))
    }
}

impl<'de> Deserialize<'de> for Keyed<Tree> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(KeyedVisitor).map(Keyed)
    }
}

struct KeyedVisitor;

impl<'de> Visitor<'de> for KeyedVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object from paths to entries")
    }

    /// Keys in any order (a file written before bases were saved in a tree's order holds them
    /// in text order); of a key named twice, the last.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut base = TreeBuilder::default();
        while let Some((key, entry)) = map.next_entry::<String, Entry>()? {
            let path = path_of(key);
            // The file is in the replica, where a share user may write: it names nothing a
            // scan could not list.
            if !is_listable(&path) {
                let why = format!("it names {:.80}, which no scan lists", path.display());
                return Err(de::Error::custom(why));
            }
            base.push(&path, entry);
        }
        Ok(base.build())
    }
}

/// Marks a key holding the hex of a name that is not UTF-8: no path contains a NUL byte, so
/// the mark cannot be mistaken for a name.
const RAW_KEY: char = '\0';

/// A JSON object key for a path: the path itself when it is UTF-8, its bytes in hex otherwise.
fn key_of(path: &Path) -> String {
    match path.to_str() {
        Some(text) => text.to_owned(),
        None => std::iter::once(RAW_KEY.to_string())
            .chain(
                path.as_os_str()
                    .as_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}")),
            )
            .collect(),
    }
}

fn path_of(key: String) -> PathBuf {
    let Some(hex) = key.strip_prefix(RAW_KEY) else {
        return PathBuf::from(key);
    };
    let bytes = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    PathBuf::from(OsString::from_vec(bytes))
}

/// The part of `base` a scan of `scope` covers: all of it, taken out of `base` (a run merges
/// what it agreed on back), for a full scan.
pub fn within(base: &mut Tree, scope: &Scope) -> Tree {
    match scope {
        Scope::Full => std::mem::take(base),
        Scope::Paths(paths) => base
            .iter()
            .filter(|(path, _)| paths.iter().any(|p| path.starts_with(p)))
            .map(|(path, entry)| (path.to_path_buf(), entry.clone()))
            .collect(),
    }
}

/// Replaces the scoped part of `base` with `agreed`.
pub fn merge(base: &mut Tree, scope: &Scope, agreed: Tree) {
    match scope {
        Scope::Full => *base = agreed,
        Scope::Paths(paths) => {
            base.retain(|path, _| !paths.iter().any(|p| path.starts_with(p)));
            base.extend(agreed);
        }
    }
}

/// True when `path` lies in a scope's paths: used to drop nested duplicates.
pub fn covered_by(path: &Path, others: &[std::path::PathBuf]) -> bool {
    others
        .iter()
        .any(|o| o.as_path() != path && path.starts_with(o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Mtime;

    #[test]
    fn keys_keep_names_that_are_not_utf8_and_leave_the_others_as_they_were() {
        let latin1 = PathBuf::from(OsString::from_vec(b"caf\xe9/menu.txt".to_vec()));
        let key = key_of(&latin1);
        assert!(key.starts_with(RAW_KEY), "{key:?}");
        assert_eq!(path_of(key), latin1);
        let plain = Path::new("café/menu.txt");
        assert_eq!(key_of(plain), "café/menu.txt");
        assert_eq!(path_of(key_of(plain)), plain);
    }

    #[test]
    fn a_base_reads_back_as_it_was_saved_whatever_the_order_of_its_keys() {
        let folder = tempfile::tempdir().unwrap();
        let replica = crate::endpoint::LocalEndpoint::new(folder.path());
        replica.prepare(false, None).unwrap();
        let mtime = Mtime {
            secs: 1_700_000_000,
            nanos: 5,
        };
        let file = |size| Entry::file(size, mtime, 0o644);
        let latin1 = PathBuf::from(OsString::from_vec(b"a/caf\xe9".to_vec()));
        // In a tree's order "a/b" comes before "a b"; in text order, after it.
        let base = Tree::from([
            (PathBuf::from("a"), Entry::folder(0o755)),
            (PathBuf::from("a/b"), file(1)),
            (latin1, file(2)),
            (PathBuf::from("a b"), file(3)),
        ]);
        save(&replica, "job", &base).unwrap();
        let loaded = load(&replica, "job").unwrap();
        assert!(loaded.iter().eq(base.iter()));

        let in_text_order: serde_json::Value = serde_json::from_slice(
            &replica
                .read_state_bytes(&state_name("job"))
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        let text = serde_json::to_vec(&in_text_order).unwrap();
        let written = String::from_utf8_lossy(&text);
        assert!(
            written.find("\"a b\"") < written.find("\"a/b\""),
            "{written}"
        );
        replica
            .write_state_bytes(&state_name("job"), &text)
            .unwrap();
        assert!(load(&replica, "job").unwrap().iter().eq(base.iter()));
    }

    /// The state file sits in the replica's `.ferry` folder, where a share user may write: a
    /// path in it longer than any scan lists, or one that leaves the folder, makes it damaged.
    #[test]
    fn a_state_file_naming_a_path_no_scan_could_list_is_damaged() {
        let folder = tempfile::tempdir().unwrap();
        let replica = crate::endpoint::LocalEndpoint::new(folder.path());
        replica.prepare(false, None).unwrap();
        let entry = serde_json::to_string(&Entry::folder(0o755)).unwrap();
        for path in ["d/".repeat(9 << 20), "../outside".into(), "/etc".into()] {
            let forged = format!("{{\"{path}\":{entry}}}");
            replica
                .write_state_bytes(&state_name("job"), forged.as_bytes())
                .unwrap();
            let loaded = load(&replica, "job");
            assert!(
                matches!(loaded, Err(BaseError::Damaged { .. })),
                "{loaded:?}"
            );
        }
    }

    /// A state file is written as it is produced: one whose producing fails midway (a disk
    /// full, a broken connection) is not put in place, and the one before stays whole.
    #[test]
    fn a_state_file_whose_writing_fails_leaves_the_one_before() {
        let folder = tempfile::tempdir().unwrap();
        let replica = crate::endpoint::LocalEndpoint::new(folder.path());
        replica.prepare(false, None).unwrap();
        replica.write_state_bytes("s", b"the one before").unwrap();
        let failed = replica.write_state("s", &mut |out| {
            out.write_all(&[b'x'; 3 << 20])?;
            Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"))
        });
        let error = failed.unwrap_err();
        assert_eq!(error.source.kind(), io::ErrorKind::StorageFull, "{error}");
        let kept = replica.read_state_bytes("s").unwrap().unwrap();
        assert_eq!(kept, b"the one before");
        let beside = std::fs::read_dir(folder.path().join(".ferry"))
            .unwrap()
            .count();
        assert_eq!(beside, 1, "no temporary file is left");
    }
}
