//! Which folders a peer may name: an absolute path inside one of the agent's roots.

use std::path::{Component, Path, PathBuf};

/// Checks that `path` (from a peer) is an absolute path inside one of `roots`, symlinks
/// resolved, and returns it resolved. The part that does not exist yet must be plain names.
pub fn resolve_root(roots: &[PathBuf], path: &str) -> Result<PathBuf, String> {
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
    let mut existing = requested;
    let mut missing = Vec::new();
    let resolved = loop {
        match existing.canonicalize() {
            Ok(resolved) => break resolved,
            Err(_) => {
                missing.push(existing.file_name().unwrap_or_default());
                existing = existing.parent().unwrap_or(Path::new("/"));
            }
        }
    };
    let resolved: PathBuf = std::iter::once(resolved.as_os_str())
        .chain(missing.into_iter().rev())
        .collect();
    let inside = roots
        .iter()
        .filter_map(|root| root.canonicalize().ok())
        .any(|root| resolved.starts_with(root));
    if inside {
        Ok(resolved)
    } else {
        let served: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        Err(format!(
            "{path} is outside the folders this agent serves ({}); add it with --root",
            served.join(", ")
        ))
    }
}
