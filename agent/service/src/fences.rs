//! The highest lease epoch this agent has seen per resource, kept across restarts: a write
//! under a lower one comes from a scheduler that has lost the lease since, and is refused.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferry_engine::Fence;

/// The highest lease epoch seen per resource.
pub struct Fences {
    highest: Mutex<HashMap<String, i64>>,
    file: Option<PathBuf>,
}

impl Fences {
    /// Loads the fences kept in `dir`, if any.
    pub fn load(dir: Option<&Path>) -> io::Result<Self> {
        let file = dir.map(|d| d.join("fences.json"));
        let highest = match &file {
            Some(path) => match std::fs::read(path) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
                Err(e) => return Err(e),
            },
            None => HashMap::new(),
        };
        Ok(Self {
            highest: Mutex::new(highest),
            file,
        })
    }

    /// Admits work under `fence` unless a newer epoch of its resource has been seen.
    pub fn admit(&self, fence: &Fence) -> Result<(), String> {
        let mut highest = self.highest.lock().unwrap_or_else(|p| p.into_inner());
        let seen = highest.get(&fence.resource).copied();
        match seen {
            Some(seen) if seen > fence.epoch => Err(format!(
                "stale lease: {} epoch {} is older than epoch {seen}, which another scheduler \
                 holds now; this scheduler lost the lease and must not write",
                fence.resource, fence.epoch
            )),
            Some(seen) if seen == fence.epoch => Ok(()),
            _ => {
                highest.insert(fence.resource.clone(), fence.epoch);
                if let Some(path) = &self.file
                    && let Err(e) = save_json(path, &*highest)
                {
                    tracing::warn!(path = %path.display(), error = %e, "could not save the fences");
                }
                Ok(())
            }
        }
    }
}

/// Writes `value` to `path` crash-safely (temporary file, fsync, rename).
fn save_json(path: &Path, value: &impl serde::Serialize) -> io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(&serde_json::to_vec(value).map_err(io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(temp, path)
}
