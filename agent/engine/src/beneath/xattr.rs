//! Extended attributes (ACLs among them) beneath a root. Their calls have no `*at` form, so an
//! entry is named through its folder's handle in `/proc/self/fd`, the folder being one opened
//! beneath the root, and the `l*` calls never follow the last name: no path a share user
//! controls is resolved.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use rustix::fs::XattrFlags;
use rustix::io::Errno;

use crate::meta::{self, Xattr, Xattrs};

/// The entry the calls reach.
pub(super) enum Target<'a> {
    /// The open file or folder itself.
    Itself(BorrowedFd<'a>),
    /// `name` in the open folder.
    In(PathBuf),
    /// `name` in the thread's working folder (see `beneath::with_own_cwd`).
    Here(&'a OsStr),
}

impl<'a> Target<'a> {
    pub(super) fn named(folder: BorrowedFd<'_>, name: &OsStr) -> Target<'a> {
        let mut path = format!("/proc/self/fd/{}/", folder.as_raw_fd()).into_bytes();
        path.extend_from_slice(name.as_bytes());
        Target::In(PathBuf::from(OsString::from_vec(path)))
    }

    fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            Target::Itself(fd) => rustix::fs::flistxattr(fd, buf),
            Target::In(path) => rustix::fs::llistxattr(path, buf),
            Target::Here(name) => rustix::fs::llistxattr(*name, buf),
        }
    }

    fn get(&self, name: &OsStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            Target::Itself(fd) => rustix::fs::fgetxattr(fd, name, buf),
            Target::In(path) => rustix::fs::lgetxattr(path, name, buf),
            Target::Here(here) => rustix::fs::lgetxattr(*here, name, buf),
        }
    }

    fn set(&self, name: &OsStr, value: &[u8]) -> rustix::io::Result<()> {
        match self {
            Target::Itself(fd) => rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty()),
            Target::In(path) => rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()),
            Target::Here(here) => rustix::fs::lsetxattr(*here, name, value, XattrFlags::empty()),
        }
    }

    fn remove(&self, name: &OsStr) -> rustix::io::Result<()> {
        match self {
            Target::Itself(fd) => rustix::fs::fremovexattr(fd, name),
            Target::In(path) => rustix::fs::lremovexattr(path, name),
            Target::Here(here) => rustix::fs::lremovexattr(*here, name),
        }
    }
}

/// The entry's attributes, sorted by name; none where the file system keeps none.
pub(super) fn read(target: &Target) -> io::Result<Xattrs> {
    let names = match sized(|buf| target.list(buf)) {
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        names => names?,
    };
    let mut xattrs = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        match sized(|buf| target.get(OsStr::from_bytes(name), buf)) {
            Ok(value) => xattrs.push(Xattr {
                name: name.to_vec(),
                value,
            }),
            // Removed since it was listed.
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    xattrs.sort();
    Ok(xattrs)
}

/// Sets `xattrs` on the entry and removes the other attributes that `kept` covers. An
/// attribute that already holds its value is not written again.
pub(super) fn write(
    target: &Target,
    xattrs: &[Xattr],
    kept: &dyn Fn(&[u8]) -> bool,
) -> io::Result<()> {
    let now = read(target)?;
    for old in now.iter().filter(|old| kept(&old.name)) {
        if !xattrs.iter().any(|x| x.name == old.name) {
            target.remove(OsStr::from_bytes(&old.name))?;
        }
    }
    for xattr in xattrs.iter().filter(|x| meta::writable(&x.name)) {
        if !now.contains(xattr) {
            target.set(OsStr::from_bytes(&xattr.name), &xattr.value)?;
        }
    }
    Ok(())
}

/// Runs a call that fills a buffer, with one large enough for the answer: most entries have
/// no attributes, so the first try is small and on the stack.
fn sized(call: impl Fn(&mut [u8]) -> rustix::io::Result<usize>) -> rustix::io::Result<Vec<u8>> {
    let mut small = [0u8; 256];
    match call(&mut small) {
        Ok(len) => return Ok(small[..len].to_vec()),
        Err(Errno::RANGE) => {}
        Err(e) => return Err(e),
    }
    // Linux's limit for a list of names and for one value alike.
    let mut large = vec![0u8; 64 << 10];
    let len = call(&mut large)?;
    large.truncate(len);
    Ok(large)
}
