//! A sync job's memory: the tree all replicas agreed on after the last run. Without it a file
//! missing on one side could be a new file elsewhere or a deletion here; with it, the side that
//! differs from the base is the side that changed.

use std::path::Path;

use crate::endpoint::{Endpoint, EndpointError, Scope};
use crate::tree::Tree;

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
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|source| BaseError::Damaged {
            name,
            replica: replica.display(),
            source,
        }),
    }
}

pub fn save(replica: &dyn Endpoint, job: &str, base: &Tree) -> Result<(), BaseError> {
    let bytes = serde_json::to_vec(base).expect("a tree always serialises");
    replica.write_state(&state_name(job), &bytes)?;
    Ok(())
}

/// The part of `base` a scan of `scope` covers.
pub fn within(base: &Tree, scope: &Scope) -> Tree {
    match scope {
        Scope::Full => base.clone(),
        Scope::Paths(paths) => base
            .iter()
            .filter(|(path, _)| paths.iter().any(|p| path.starts_with(p)))
            .map(|(path, entry)| (path.clone(), entry.clone()))
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
