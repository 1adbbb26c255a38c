//! Which folders a peer may name: an absolute path inside one of the agent's roots.
//!
//! The check here is by name only; the folder itself is then opened beneath its root's handle,
//! never through a symlink ([`ferry_engine::beneath`]), so a symlink inside a root cannot lead a
//! peer out of it, whenever it was planted.

use std::path::{Component, Path, PathBuf};

use ferry_engine::endpoint::LocalEndpoint;

use crate::config::ServedRoot;

/// The replica at `path` (from a peer), which must be an absolute path inside one of `roots`,
/// and the root it is in.
pub fn replica<'a>(
    roots: &'a [ServedRoot],
    path: &str,
) -> Result<(LocalEndpoint, &'a ServedRoot), String> {
    let (root, anchor, path) = locate(roots, path)?;
    Ok((LocalEndpoint::beneath(anchor, path), root))
}

/// The root `path` lies in, that root's path as matched, and `path` itself, checked by name:
/// absolute, plain names only, inside a root as configured or as its symlinks resolve.
pub fn locate<'a>(
    roots: &'a [ServedRoot],
    path: &str,
) -> Result<(&'a ServedRoot, PathBuf, PathBuf), String> {
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
    let as_configured = roots.iter().map(|root| (root, root.path.clone()));
    let resolved = roots
        .iter()
        .filter_map(|root| Some((root, root.path.canonicalize().ok()?)));
    as_configured
        .chain(resolved)
        .find(|(_, anchor)| requested.starts_with(anchor))
        .map(|(root, anchor)| (root, anchor, requested.to_path_buf()))
        .ok_or_else(|| {
            let served: Vec<String> = roots.iter().map(|r| r.path.display().to_string()).collect();
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
        let roots = [ServedRoot::open_to_all("/srv/share".into())];
        let (_, anchor, path) = locate(&roots, "/srv/share/docs").unwrap();
        assert_eq!(anchor, Path::new("/srv/share"));
        assert_eq!(path, Path::new("/srv/share/docs"));
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
