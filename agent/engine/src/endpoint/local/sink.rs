//! A file being received into a local replica: written under a temporary name beside its
//! target, checked against the sender's hash, given its owner, mode, attributes and mtime, and
//! handed over as [`Staged`] to be made durable and renamed into place.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use super::output::Output;
use super::{LocalEndpoint, Staged, settable_owner, to_filetime};
use crate::beneath::{self, Folder, Root};
use crate::delta::{DeltaError, Encoded, Op, Rebuild};
use crate::endpoint::{EndpointError, Failure, FileSink, Result};
use crate::meta::{Owner, Xattrs};
use crate::tree::{Entry, Expected, file_mode};

/// The process's umask, as the kernel reports it (`None` if it does not): a file created with
/// its mode needs no `chmod` unless the umask took some of it.
static UMASK: LazyLock<Option<u32>> = LazyLock::new(|| {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
});

/// How much of a file is written between two early write-backs.
pub(super) const WRITEBACK_EVERY: u64 = 16 << 20;

/// A file being written to a temporary name beside its target.
pub struct LocalSink<'a> {
    pub(super) endpoint: &'a LocalEndpoint,
    pub(super) root: Arc<Root>,
    /// The folder it is written in, under the name `temp`.
    pub(super) folder: Arc<Folder>,
    pub(super) rel: PathBuf,
    pub(super) entry: Entry,
    pub(super) temp: OsString,
    pub(super) expected: Option<Expected>,
    pub(super) xattrs: Option<Xattrs>,
    pub(super) rebuild: Option<Rebuild<BufWriter<Output>>>,
    pub(super) committed: bool,
    /// The temporary file again, to start its write-back to disk early from another thread:
    /// the flush before the rename then has little left to do.
    pub(super) writeback: Option<File>,
    pub(super) flushing: Option<std::thread::JoinHandle<()>>,
    pub(super) flushed_at: u64,
}

impl LocalSink<'_> {
    fn fail(&self, e: DeltaError) -> EndpointError {
        let error = self.endpoint.err("write", &self.rel);
        match e {
            DeltaError::Io(e) => error(e),
            bad => error(io::Error::new(io::ErrorKind::InvalidData, bad.to_string()))
                .meaning(Failure::BadDelta),
        }
    }
}

impl FileSink for LocalSink<'_> {
    fn write(&mut self, op: Op) -> Result<()> {
        let rebuild = self.rebuild.as_mut().expect("written before commit");
        let pushed = rebuild.push(&op);
        let written = rebuild.written;
        pushed.map_err(|e| self.fail(e))?;
        let idle = self.flushing.as_ref().is_none_or(|f| f.is_finished());
        if written - self.flushed_at >= WRITEBACK_EVERY && idle {
            self.flushed_at = written;
            if let Some(file) = self.writeback.as_ref().and_then(|f| f.try_clone().ok()) {
                self.flushing = Some(std::thread::spawn(move || drop(file.sync_data())));
            }
        }
        Ok(())
    }

    /// Finished, the file waits under its temporary name for its batch to be made durable
    /// and put in place (see [`Endpoint::publish_committed`]).
    fn commit(self: Box<Self>, sent: &Encoded) -> Result<u64> {
        let endpoint = self.endpoint;
        let staged = self.finish(sent, false)?;
        let size = staged.size();
        endpoint.batches().push(staged);
        Ok(size)
    }
}

impl LocalSink<'_> {
    /// Checks the file against the sender's hash and gives it its mode and mtime, still under
    /// its temporary name; it is renamed into place by [`Staged::publish`] once it is on disk:
    /// after its own fsync (`sync`), or with its batch ([`Staged::publish_batch`]).
    pub fn finish(mut self, sent: &Encoded, sync: bool) -> Result<Staged> {
        if let Some(flushing) = self.flushing.take() {
            let _ = flushing.join();
        }
        let rebuild = self.rebuild.take().expect("finished once");
        let size = rebuild.written;
        let out = rebuild.finish(&sent.hash).map_err(|e| self.fail(e))?;
        let entry = &self.entry;
        let finished = (|| {
            let file = (out.into_inner())
                .map_err(io::IntoInnerError::into_error)?
                .finish()?;
            if let Some(owner) = settable_owner(entry) {
                give_owner(&file, owner)?;
            }
            // The file was created with its mode, less what the umask took.
            let mode = file_mode(entry.mode());
            if UMASK.is_none_or(|umask| mode & umask != 0) {
                file.set_permissions(fs::Permissions::from_mode(mode))?;
            }
            if let Some(xattrs) = &self.xattrs {
                beneath::set_file_xattrs(&file, xattrs)?;
            }
            filetime::set_file_handle_times(&file, None, Some(to_filetime(entry.mtime)))?;
            if sync {
                file.sync_all()?;
            }
            Ok(())
        })();
        finished.map_err(self.endpoint.err("write", &self.rel))?;
        self.committed = true;
        let (temp, target) = (self.temp.clone(), self.rel.clone());
        Ok(Staged::new(
            (self.root.clone(), self.folder.clone()),
            (temp, target),
            self.expected.take(),
            size,
        ))
    }
}

/// Gives `file` `owner` unless it has it already: most files a root agent receives are
/// root's, as it makes them, and a change of owner costs a journal transaction and an event
/// to every watch of the folder.
fn give_owner(file: &File, owner: Owner) -> io::Result<()> {
    let stat = rustix::fs::fstat(file)?;
    if (stat.st_uid, stat.st_gid) != (owner.uid, owner.gid) {
        rustix::fs::fchown(file, Some(owner.uid()), Some(owner.gid()))?;
    }
    Ok(())
}

impl Drop for LocalSink<'_> {
    /// Not committed (an error, a halt, a dropped connection): the temporary file goes.
    fn drop(&mut self) {
        if !self.committed {
            let _ = self.folder.remove_file(&self.temp);
        }
    }
}
