//! A received file, finished and durable under its temporary name, waiting for its rename into
//! place ([`Staged::publish`]); one that is dropped unpublished is removed.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Result, endpoint_error, still_holds_in};
use crate::beneath::{Folder, Root};
use crate::tree::Expected;

/// A finished file under its temporary name, waiting to be renamed into place. Dropped
/// unpublished, it is removed.
pub struct Staged {
    root: Arc<Root>,
    /// The folder it was made in, where it goes into place.
    folder: Arc<Folder>,
    /// Its temporary name there.
    temp: OsString,
    target: PathBuf,
    expected: Option<Expected>,
    size: u64,
    published: bool,
}

impl Staged {
    /// The file named `temp` in `folder`, `size` bytes, to be renamed to `target` (a path in
    /// the replica, in that folder) while it holds `expected`.
    pub(super) fn new(
        (root, folder): (Arc<Root>, Arc<Folder>),
        (temp, target): (OsString, PathBuf),
        expected: Option<Expected>,
        size: u64,
    ) -> Self {
        Self {
            root,
            folder,
            temp,
            target,
            expected,
            size,
            published: false,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where it goes, relative to its replica.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Makes every file of `batch` durable with one flush of their file system (`syncfs`),
    /// then renames each into place: each one's size, or why it is not in place, in order.
    pub fn publish_batch(batch: Vec<Staged>) -> Vec<Result<u64>> {
        let flushed = batch.first().map_or(Ok(()), |file| file.root.flush_all());
        batch
            .into_iter()
            .map(|file| match &flushed {
                Ok(()) => file.publish(),
                Err(e) => {
                    let full = file.root.path().join(&file.target);
                    let error = io::Error::new(e.kind(), format!("flush to disk: {e}"));
                    Err(endpoint_error("write", full, error))
                }
            })
            .collect()
    }

    /// Renames the file over its target, if the target still holds what was expected; returns
    /// its size.
    pub fn publish(mut self) -> Result<u64> {
        self.published = true;
        let renamed = self
            .still_expected()
            .and_then(|()| self.folder.rename(&self.temp, self.name()));
        match renamed {
            Ok(()) => Ok(self.size),
            Err(e) => {
                let _ = self.folder.remove_file(&self.temp);
                let full = self.root.path().join(&self.target);
                Err(endpoint_error("write", full, e))
            }
        }
    }

    fn still_expected(&self) -> io::Result<()> {
        still_holds_in(&self.folder, self.name(), self.expected.as_ref())
    }

    /// Its name in its folder.
    fn name(&self) -> &OsStr {
        self.target.file_name().expect("a received file has a name")
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.published {
            let _ = self.folder.remove_file(&self.temp);
        }
    }
}
