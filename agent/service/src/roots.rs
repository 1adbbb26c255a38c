//! Which folders a peer may name: an absolute path inside one of the agent's roots.
//!
//! The check here is by name only; the folder itself is then opened beneath its root's handle,
//! never through a symlink ([`ferry_engine::beneath`]), so a symlink inside a root cannot lead a
//! peer out of it, whenever it was planted.

use std::path::{Component, Path, PathBuf};

use ferry_engine::endpoint::LocalEndpoint;

/// The replica at `path` (from a peer), which must be an absolute path inside one of `roots`.
pub fn replica(roots: &[PathBuf], path: &str) -> Result<LocalEndpoint, String> {
    let (root, path) = locate(roots, path)?;
    Ok(LocalEndpoint::beneath(root, path))
}

/// The root `path` lies in, and `path` itself, checked by name: absolute, plain names only,
/// inside a root as configured or as its symlinks resolve.
pub fn locate(roots: &[PathBuf], path: &str) -> Result<(PathBuf, PathBuf), String> {
    let requested = Path::new(path);
    if !requested.is_absolute() {
        return Err(format!("{path} is not an absolute path"));
    }
    if requested
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "{path} contains '..' or '.'; name the folder directly"
        ));
    }
    let as_configured = roots.iter().cloned();
    let resolved = roots.iter().filter_map(|root| root.canonicalize().ok());
    as_configured
        .chain(resolved)
        .find(|root| requested.starts_with(root))
        .map(|root| (root, requested.to_path_buf()))
        .ok_or_else(|| {
            let served: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
            format!(
                "{path} is outside the folders this agent serves ({}); add it with --root",
                served.join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_plain_paths_inside_a_root_are_located() {
        let roots = [PathBuf::from("/srv/share")];
        let (root, path) = locate(&roots, "/srv/share/docs").unwrap();
        assert_eq!(
            (root.as_path(), path.as_path()),
            (Path::new("/srv/share"), Path::new("/srv/share/docs"))
        );
        for refused in [
            "srv/share/docs",
            "/srv/share/../etc",
            "/srv/shared",
            "/srv",
            "/etc",
        ] {
            assert!(locate(&roots, refused).is_err(), "{refused}");
        }
    }
}
