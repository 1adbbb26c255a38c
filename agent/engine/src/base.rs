//! A sync job's memory: the tree all replicas agreed on after the last run. Without it a file
//! missing on one side could be a new file elsewhere or a deletion here; with it, the side that
//! differs from the base is the side that changed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::endpoint::{Endpoint, EndpointError, Scope};
use crate::tree::{Entry, Tree, is_listable};

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

pub fn load(replica: &dyn Endpoint, job: &str) -> Result<Tree, BaseError> {
    let name = state_name(job);
    match replica.read_state(&name)? {
        None => Ok(Tree::new()),
        Some(bytes) => {
            let damaged = |source| BaseError::Damaged {
                name: name.clone(),
                replica: replica.display(),
                source,
            };
            let keyed: BTreeMap<String, Entry> = serde_json::from_slice(&bytes).map_err(damaged)?;
            let paths: Vec<(PathBuf, Entry)> = keyed
                .into_iter()
                .map(|(key, e)| (path_of(key), e))
                .collect();
            // The file is in the replica, where a share user may write: it names nothing a
            // scan could not list.
            match paths.iter().find(|(path, _)| !is_listable(path)) {
                Some((path, _)) => {
                    let why = format!("it names {:.80}, which no scan lists", path.display());
                    Err(damaged(serde::de::Error::custom(why)))
                }
                None => Ok(paths.into_iter().collect()),
            }
        }
    }
}

pub fn save(replica: &dyn Endpoint, job: &str, base: &Tree) -> Result<(), BaseError> {
    let keyed: BTreeMap<String, &Entry> = base.iter().map(|(p, e)| (key_of(p), e)).collect();
    let bytes = serde_json::to_vec(&keyed).expect("string keys always serialise");
    replica.write_state(&state_name(job), &bytes)?;
    Ok(())
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

/// The part of `base` a scan of `scope` covers.
pub fn within(base: &Tree, scope: &Scope) -> Tree {
    match scope {
        Scope::Full => base.clone(),
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
                .write_state(&state_name("job"), forged.as_bytes())
                .unwrap();
            let loaded = load(&replica, "job");
            assert!(
                matches!(loaded, Err(BaseError::Damaged { .. })),
                "{loaded:?}"
            );
        }
    }
}
