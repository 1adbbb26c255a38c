//! A recursive inotify watch of one root, read on its journal's own thread.
//!
//! Ours rather than a general watcher's, for three things a journal needs: a narrow mask (no
//! event for a read, which on a busy share is most of them), the names of ferry's temporary
//! files dropped before they cost an allocation (a copy into the root makes six events a file
//! under them), and the instants at which the kernel's queue was seen empty: every change
//! made before such an instant is recorded, which is what a journal kept on disk can promise.

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

use ferry_engine::filter::TEMP_PREFIX;

use super::{MAX_TRACKED, Reach};

/// What a change records: everything a sync compares, and entries made, removed or renamed.
const MASK: WatchFlags = WatchFlags::ATTRIB
    .union(WatchFlags::CLOSE_WRITE)
    .union(WatchFlags::CREATE)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF)
    .union(WatchFlags::DONT_FOLLOW)
    .union(WatchFlags::EXCL_UNLINK)
    .union(WatchFlags::ONLYDIR);

/// How many changed paths one read returns at most, so a flood is recorded as it comes.
const READ_AT_MOST: usize = 16_384;

/// A path a catch-up found changed: an entry, or a folder whose entries changed (one may have
/// been removed, so all of it is looked at, the job's own folder too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Found {
    pub path: PathBuf,
    pub reach: Reach,
}

/// What a catch-up walk found changed, bounded: past `most` entries it notes each folder
/// with a change in it as all of it (`Reach::Everything`) instead, as the journal would fold
/// them anyway. A walk after a flood (a million files copied in while the queue overflowed)
/// then holds a path a folder, not one a file: 70 MiB less at a million.
struct Caught {
    found: Vec<Found>,
    most: usize,
    by_folder: bool,
}

impl Caught {
    fn at_most(most: usize) -> Self {
        Self {
            found: Vec::new(),
            most,
            by_folder: false,
        }
    }

    fn note(&mut self, path: PathBuf, reach: Reach) {
        if !self.by_folder && self.found.len() < self.most {
            self.found.push(Found { path, reach });
            return;
        }
        if !self.by_folder {
            self.by_folder = true;
            for Found { path, .. } in std::mem::take(&mut self.found) {
                self.note_folder_of(&path);
            }
        }
        self.note_folder_of(&path);
    }

    /// Notes all of the folder `path` is in. A walk lists a folder's entries one after
    /// another, so one note a folder (a folder noted twice is harmless).
    fn note_folder_of(&mut self, path: &Path) {
        let folder = path.parent().unwrap_or(Path::new(""));
        if self.found.last().is_some_and(|last| last.path == folder) {
            return;
        }
        self.found.push(Found {
            path: folder.to_path_buf(),
            reach: Reach::Everything,
        });
    }
}

/// What one read of the watch came to.
#[derive(Debug)]
pub(super) enum Read {
    /// These paths (relative to the root) changed; `drained`: every change made before this
    /// instant is among what the watch has returned.
    Changed {
        paths: Vec<PathBuf>,
        drained: Option<SystemTime>,
    },
    /// The kernel dropped events (its queue overflowed).
    Lost,
    /// The watch no longer covers the root, for the reason given.
    Ended(String),
}

pub(super) struct Watch {
    fd: OwnedFd,
    root: PathBuf,
    root_wd: i32,
    /// The folder (relative to the root) each watch descriptor watches.
    folders: HashMap<i32, PathBuf>,
    buffer: Vec<MaybeUninit<u8>>,
}

impl Watch {
    /// Watches every folder under `root`. With `since`, also catches up: returns what changed
    /// at or after that instant, by the change times the walk sees.
    pub fn place(root: &Path, since: Option<SystemTime>) -> io::Result<(Self, Vec<Found>)> {
        let fd = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)?;
        let root_wd = inotify::add_watch(&fd, root, MASK)?;
        let mut watch = Self {
            fd,
            root: root.to_path_buf(),
            root_wd,
            folders: HashMap::from([(root_wd, PathBuf::new())]),
            buffer: vec![MaybeUninit::uninit(); 64 * 1024],
        };
        let mut found = Caught::at_most(MAX_TRACKED);
        let root_changed = std::fs::symlink_metadata(root).map(|m| changed_at(&m))?;
        if since.is_some_and(|since| root_changed >= since) {
            found.note(PathBuf::new(), Reach::Entries);
        }
        watch.add_below(Path::new(""), since, &mut found)?;
        Ok((watch, found.found))
    }

    /// Watches the folders below `top` (itself watched already), walking them; with `since`,
    /// notes in `found` each entry whose change time is at or after it.
    fn add_below(
        &mut self,
        top: &Path,
        since: Option<SystemTime>,
        found: &mut Caught,
    ) -> io::Result<()> {
        let mut pending = vec![top.to_path_buf()];
        while let Some(folder) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(self.root.join(&folder)) else {
                continue; // gone meanwhile: its parent's events say so
            };
            for entry in entries.flatten() {
                let rel = folder.join(entry.file_name());
                let is_folder = entry.file_type().is_ok_and(|t| t.is_dir());
                if let Some(since) = since
                    && entry.metadata().is_ok_and(|m| changed_at(&m) >= since)
                {
                    let reach = match is_folder {
                        true => Reach::Entries,
                        false => Reach::Itself,
                    };
                    found.note(rel.clone(), reach);
                }
                if is_folder && self.add(&rel)? {
                    pending.push(rel);
                }
            }
        }
        Ok(())
    }

    /// Watches the folder `rel`; false when it is gone (or no longer a folder).
    fn add(&mut self, rel: &Path) -> io::Result<bool> {
        match inotify::add_watch(&self.fd, self.root.join(rel), MASK) {
            Ok(wd) => {
                self.folders.insert(wd, rel.to_path_buf());
                Ok(true)
            }
            Err(Errno::NOENT | Errno::NOTDIR | Errno::ACCESS) => Ok(false),
            Err(Errno::NOSPC) => Err(io::Error::other(
                "out of inotify watches: raise fs.inotify.max_user_watches (sysctl)",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Stops watching `rel` and every folder below it (moved out of the root, or elsewhere in
    /// it, where it is walked again).
    fn remove_below(&mut self, rel: &Path) {
        let below: Vec<i32> = (self.folders.iter())
            .filter(|(_, folder)| folder.starts_with(rel))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in below {
            self.folders.remove(&wd);
            let _ = inotify::remove_watch(&self.fd, wd);
        }
    }

    /// Waits up to `timeout` for changes, then reads what the kernel has queued.
    pub fn read(&mut self, timeout: Duration, hurry: &impl AsFd) -> Read {
        let timeout = Timespec::try_from(timeout).ok();
        let mut ready = [
            PollFd::new(&self.fd, PollFlags::IN),
            PollFd::new(hurry, PollFlags::IN),
        ];
        match poll(&mut ready, timeout.as_ref()) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Read::Ended(format!("cannot wait for changes: {e}")),
        }
        if !ready[1].revents().is_empty() {
            // Taken: the question that nudged is answered by this read.
            let _ = rustix::io::read(hurry, &mut [0u8; 8]);
        }
        let mut events = Events::default();
        let mut reader = inotify::Reader::new(self.fd.as_fd(), &mut self.buffer);
        let mut before = SystemTime::now();
        let drained = loop {
            // Only between the reads of the kernel's queue: what the reader holds would be lost.
            if reader.is_buffer_empty() {
                if events.paths.len() >= READ_AT_MOST {
                    break None;
                }
                before = SystemTime::now();
            }
            let event = match reader.next() {
                Ok(event) => event,
                Err(Errno::AGAIN) => break Some(before),
                Err(Errno::INTR) => continue,
                Err(e) => return Read::Ended(format!("cannot read changes: {e}")),
            };
            if let Some(ended) = events.take(&event, &self.folders, self.root_wd) {
                return ended;
            }
        };
        for wd in &events.unwatched {
            self.folders.remove(wd);
        }
        for moved_away in &events.folders_gone {
            self.remove_below(moved_away);
        }
        for new in &events.folders_new {
            if let Err(e) = self
                .add(new)
                .and_then(|_| self.add_below(new, None, &mut Caught::at_most(0)))
            {
                return Read::Ended(e.to_string());
            }
        }
        // A new folder's contents were made before its watch: it is named again once watched,
        // so a run that began meanwhile looks at all of it next time.
        let mut paths = events.paths;
        paths.extend(events.folders_new);
        Read::Changed { paths, drained }
    }
}

/// What the events of one read name.
#[derive(Default)]
struct Events {
    paths: Vec<PathBuf>,
    folders_new: Vec<PathBuf>,
    folders_gone: Vec<PathBuf>,
    /// Watches the kernel removed (their folder was).
    unwatched: Vec<i32>,
}

impl Events {
    /// Takes one event in; `Some` when it ends the watch.
    fn take(
        &mut self,
        event: &inotify::Event<'_>,
        folders: &HashMap<i32, PathBuf>,
        root_wd: i32,
    ) -> Option<Read> {
        let flags = event.events();
        if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
            return Some(Read::Lost);
        }
        if flags.contains(ReadFlags::UNMOUNT) {
            return Some(Read::Ended("the root's file system was unmounted".into()));
        }
        if event.wd() == root_wd
            && flags.intersects(ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF | ReadFlags::IGNORED)
        {
            return Some(Read::Ended("the root was moved or removed".into()));
        }
        if flags.contains(ReadFlags::IGNORED) {
            self.unwatched.push(event.wd());
        }
        // An event of a folder about itself is also its parent's, by name.
        let (Some(name), Some(folder)) = (event.file_name(), folders.get(&event.wd())) else {
            return None;
        };
        let name = std::ffi::OsStr::from_bytes(name.to_bytes());
        if name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
            return None;
        }
        let path = folder.join(name);
        if flags.contains(ReadFlags::ISDIR) {
            if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                self.folders_new.push(path.clone());
            } else if flags.contains(ReadFlags::MOVED_FROM) {
                self.folders_gone.push(path.clone());
            }
        }
        self.paths.push(path);
        None
    }
}

/// When the entry last changed (its inode's change time).
pub(super) fn changed_at(meta: &std::fs::Metadata) -> SystemTime {
    let since_epoch = Duration::new(
        meta.ctime().max(0).unsigned_abs(),
        meta.ctime_nsec().clamp(0, 999_999_999) as u32,
    );
    SystemTime::UNIX_EPOCH + since_epoch
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A nudge no one gives.
    fn no_hurry() -> OwnedFd {
        rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK).unwrap()
    }

    /// Reads until the queue is empty; every path named, sorted and deduplicated.
    fn drain(watch: &mut Watch) -> Vec<PathBuf> {
        let mut all = Vec::new();
        loop {
            match watch.read(Duration::from_millis(50), &no_hurry()) {
                Read::Changed { paths, drained } => {
                    let done = paths.is_empty() && drained.is_some();
                    all.extend(paths);
                    if done {
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        all.sort();
        all.dedup();
        all
    }

    fn paths(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn changes_are_named_by_their_paths_and_ferrys_temporary_files_not_at_all() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("a/b")).unwrap();
        let (mut watch, found) = Watch::place(root.path(), None).unwrap();
        assert!(found.is_empty());
        fs::write(root.path().join("a/b/new.txt"), "x").unwrap();
        fs::write(root.path().join("a/.ferry-tmp.123"), "x").unwrap();
        fs::rename(
            root.path().join("a/.ferry-tmp.123"),
            root.path().join("a/done"),
        )
        .unwrap();
        let before = std::time::Instant::now();
        assert_eq!(drain(&mut watch), paths(&["a/b/new.txt", "a/done"]));
        assert!(before.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_folder_made_or_moved_is_watched_under_its_new_name() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("old/inner")).unwrap();
        let (mut watch, _) = Watch::place(root.path(), None).unwrap();
        fs::create_dir_all(root.path().join("made/deep")).unwrap();
        fs::rename(root.path().join("old"), root.path().join("new")).unwrap();
        drain(&mut watch);
        fs::write(root.path().join("made/deep/f"), "x").unwrap();
        fs::write(root.path().join("new/inner/g"), "x").unwrap();
        assert_eq!(drain(&mut watch), paths(&["made/deep/f", "new/inner/g"]));
        let mut watched: Vec<&PathBuf> = watch.folders.values().collect();
        watched.sort();
        assert_eq!(
            watched,
            ["", "made", "made/deep", "new", "new/inner"].map(Path::new)
        );
        // Folders removed are no longer held.
        fs::remove_dir_all(root.path().join("made")).unwrap();
        drain(&mut watch);
        assert_eq!(watch.folders.len(), 3);
    }

    #[test]
    fn catching_up_finds_what_changed_since_and_the_folders_that_lost_an_entry() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("keep/sub")).unwrap();
        fs::create_dir_all(root.path().join("lose")).unwrap();
        fs::write(root.path().join("keep/old"), "x").unwrap();
        fs::write(root.path().join("lose/gone"), "x").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let since = SystemTime::now();
        std::thread::sleep(Duration::from_millis(50));
        fs::write(root.path().join("keep/sub/new"), "x").unwrap();
        fs::remove_file(root.path().join("lose/gone")).unwrap();
        let (_watch, mut found) = Watch::place(root.path(), Some(since)).unwrap();
        found.sort_by(|a, b| a.path.cmp(&b.path));
        let expected = [("keep/sub", true), ("keep/sub/new", false), ("lose", true)];
        let expected: Vec<Found> = (expected.iter())
            .map(|(path, folder)| Found {
                path: path.into(),
                reach: match folder {
                    true => Reach::Entries,
                    false => Reach::Itself,
                },
            })
            .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn the_root_removed_ends_the_watch() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("root");
        fs::create_dir(&root).unwrap();
        let (mut watch, _) = Watch::place(&root, None).unwrap();
        fs::rename(&root, parent.path().join("elsewhere")).unwrap();
        assert!(matches!(
            watch.read(Duration::from_secs(1), &no_hurry()),
            Read::Ended(_)
        ));
    }

    #[test]
    fn a_catch_up_past_its_bound_notes_the_folders_changed_in() {
        let mut caught = Caught::at_most(3);
        for path in ["a/1", "a/2", "b/1", "b/2", "b/c", "d"] {
            caught.note(path.into(), Reach::Itself);
        }
        let noted: Vec<(&str, Reach)> = (caught.found.iter())
            .map(|f| (f.path.to_str().unwrap(), f.reach))
            .collect();
        let all = Reach::Everything;
        assert_eq!(noted, [("a", all), ("b", all), ("", all)]);
    }
}
