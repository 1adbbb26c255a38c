//! The agent's change journal: one per served root, fed by a recursive file watch, telling a
//! run which paths changed since its last one ([`ferry_engine::journal`]).
//!
//! The journal is trusted only for an interval its watch ran through unbroken: each time the
//! watch (re)starts (the agent started, the event queue overflowed, the mounts below the root
//! changed) the journal takes a new identity, and a mark from before it is answered with "I
//! cannot tell", which makes the run scan everything. A root on a network file system (or with
//! one mounted below it), whose changes made elsewhere no watch sees, has no journal at all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::Notify;

use ferry_engine::journal::{ChangeJournal, Journaled, Mark};
use ferry_wire::watch::{Batch, FolderWatch, WatchRoot};

use crate::config::ServedRoot;

/// Paths a journal holds at most: past it, it starts over (and the next runs scan
/// everything), so a flood of changes cannot make the agent hold memory without bound.
const MAX_TRACKED: usize = 250_000;
/// Paths an answer names at most, and their bytes: past either, scanning everything costs
/// about as much (and the answer must fit a frame).
const MAX_ANSWER: usize = 50_000;
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// How long a watch gathers changes before recording them.
const COALESCE: Duration = Duration::from_millis(20);
/// How soon a root that cannot be watched is tried again.
const RETRY: Duration = Duration::from_secs(10);
/// How long a watch whose queue overflowed waits before it starts over: a flood of changes
/// (a large copy into the root) would otherwise make it walk the tree again and again.
const AFTER_OVERFLOW: Duration = Duration::from_secs(2);

/// File systems whose changes can be made where no watch here sees them.
const UNWATCHABLE: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "ceph",
    "glusterfs",
    "lustre",
    "afs",
    "gpfs",
    "ocfs2",
    "gfs2",
    "beegfs",
    "davfs",
    "virtiofs",
];

/// The journals of the served roots, by the root's path as configured.
#[derive(Default)]
pub struct Journals {
    by_root: HashMap<PathBuf, Arc<RootJournal>>,
}

impl Journals {
    /// Starts watching every root, each on a task of its own (on the current runtime).
    pub fn start(roots: &[ServedRoot]) -> Self {
        let by_root = (roots.iter())
            .map(|root| {
                let journal = Arc::new(RootJournal::new(root.path.clone()));
                tokio::spawn(keep(journal.clone()));
                (root.path.clone(), journal)
            })
            .collect();
        Self { by_root }
    }

    /// The journal of the root configured as `root`, if it keeps one.
    pub fn of(&self, root: &Path) -> Option<Arc<dyn ChangeJournal>> {
        let journal = self.by_root.get(root)?.clone();
        Some(journal)
    }
}

/// One root's journal.
#[derive(Debug)]
pub struct RootJournal {
    root: PathBuf,
    state: Mutex<State>,
    /// Wakes the watch to start over (the mounts below the root changed).
    restart: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// The running watch's identity; `None` while nothing is watched.
    id: Option<String>,
    /// The generation changes are recorded under now; each answer moves it on, so a change
    /// recorded after an answer is newer than the mark it gave.
    generation: u64,
    /// Each changed path (relative to the root) and the generation of its latest change.
    changed: HashMap<PathBuf, u64>,
    /// What the watch began over.
    ground: Ground,
}

impl RootJournal {
    fn new(root: PathBuf) -> Self {
        Self {
            root,
            state: Mutex::default(),
            restart: Notify::new(),
        }
    }

    /// Whether the journal answers now, at `/metrics`: 0 while every run there scans whole.
    fn gauge(&self) -> metrics::Gauge {
        let root = self.root.display().to_string();
        metrics::gauge!("ferry_agent_journal_running", "root" => root)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A watch began (or began again) over `ground`: what came before cannot be answered for.
    fn begin(&self, ground: Ground) {
        let mut state = self.state();
        state.id = Some(uuid::Uuid::new_v4().to_string());
        state.changed.clear();
        state.ground = ground;
        self.gauge().set(1.0);
        tracing::info!(root = %self.root.display(), "change journal started");
    }

    /// The watch stopped, for `reason` (a metric's label) as `why` says.
    fn end(&self, (reason, why): (&'static str, &str)) {
        let mut state = self.state();
        state.id = None;
        state.changed.clear();
        self.gauge().set(0.0);
        metrics::counter!("ferry_agent_journal_restarts_total", "reason" => reason).increment(1);
        tracing::warn!(root = %self.root.display(), why, "change journal stopped; runs scan everything");
    }

    fn record(&self, paths: Vec<PathBuf>) {
        let mut state = self.state();
        let generation = state.generation;
        for path in paths {
            state.changed.insert(path, generation);
        }
        if state.changed.len() > MAX_TRACKED {
            state.id = Some(uuid::Uuid::new_v4().to_string());
            state.changed.clear();
            tracing::info!(
                root = %self.root.display(),
                "over {MAX_TRACKED} paths changed: the change journal starts over"
            );
        }
    }
}

impl ChangeJournal for RootJournal {
    /// A mark names the journal as seen from `folder`: the watch's identity and the folder's,
    /// so a folder replaced meanwhile (renamed away, another put in its place) is scanned whole.
    fn changes_since(&self, folder: &Path, mark: Option<&Mark>) -> Journaled {
        let ground = Ground::of(&self.root);
        let mut state = self.state();
        if state.id.is_some() && ground != state.ground {
            state.id = None;
            self.restart.notify_one();
            tracing::info!(
                root = %self.root.display(),
                "the root, or what is mounted at or below it, changed; watching again"
            );
        }
        let (Some(id), Some(seen_from)) = (&state.id, Identity::of(&self.root.join(folder))) else {
            return Journaled::Unjournaled;
        };
        let now = Mark {
            journal: format!("{id} {seen_from}"),
            generation: state.generation,
        };
        state.generation += 1;
        let since = mark
            .filter(|mark| mark.journal == now.journal)
            .map(|mark| mark.generation);
        let changed = since.and_then(|since| changed_inside(&state.changed, folder, since));
        Journaled::At { now, changed }
    }
}

/// The paths in `folder` (made relative to it) changed after generation `since`; `None` when
/// there are more than an answer holds.
fn changed_inside(
    changed: &HashMap<PathBuf, u64>,
    folder: &Path,
    since: u64,
) -> Option<Vec<PathBuf>> {
    let mut paths = Vec::new();
    let mut bytes = 0;
    let inside = (changed.iter())
        .filter(|(_, generation)| **generation > since)
        .filter_map(|(path, _)| path.strip_prefix(folder).ok())
        .filter(|rel| !rel.as_os_str().is_empty());
    for path in inside {
        bytes += path.as_os_str().len();
        if paths.len() == MAX_ANSWER || bytes > MAX_ANSWER_BYTES {
            return None;
        }
        paths.push(path.to_path_buf());
    }
    Some(paths)
}

/// Keeps `journal`'s watch running for the agent's lifetime.
async fn keep(journal: Arc<RootJournal>) {
    loop {
        let ground = Ground::of(&journal.root);
        let unwatchable = (ground.mounts.iter()).find(|m| UNWATCHABLE.contains(&m.kind.as_str()));
        if let Some(mount) = unwatchable {
            tracing::info!(
                root = %journal.root.display(),
                mount = %mount.path.display(),
                kind = mount.kind,
                "no change journal: changes on this file system can be made where no watch sees them"
            );
            tokio::time::sleep(RETRY * 6).await;
            continue;
        }
        let root = [WatchRoot::Local(journal.root.clone())];
        // Placing the watch walks the whole tree: not on a thread that serves sessions.
        let opened = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(FolderWatch::open(&root))
        });
        let mut watch = match opened {
            Ok(watch) => watch,
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch a root yet");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        journal.begin(ground);
        let why = loop {
            let batch = tokio::select! {
                batch = watch.next_batch(COALESCE) => batch,
                () = journal.restart.notified() => break ("moved", "the root or a mount moved"),
            };
            match batch {
                Some(Batch::Paths(paths)) => journal.record(paths),
                Some(Batch::Rescan) => break ("overflow", "the watcher lost events"),
                Some(Batch::Broken(_)) | None => break ("ended", "the watch ended"),
            }
        };
        journal.end(why);
        drop(watch);
        tokio::time::sleep(AFTER_OVERFLOW).await;
    }
}

/// What a watch began over: the root folder itself and the mounts at and below it. A root
/// replaced or a mount come or gone means the watch no longer sees everything.
#[derive(Debug, Default, PartialEq, Eq)]
struct Ground {
    root: Option<Identity>,
    mounts: Vec<Mount>,
}

impl Ground {
    fn of(root: &Path) -> Self {
        Self {
            root: Identity::of(root),
            mounts: mounts_at(root),
        }
    }
}

/// Which folder a path names: its inode, and its birth time (a freed inode number is soon
/// given to a new folder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    device: u64,
    inode: u64,
    born: Option<Duration>,
}

impl Identity {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path).ok()?;
        let born = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        Some(Self {
            device: meta.dev(),
            inode: meta.ino(),
            born,
        })
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let born = self.born.map_or(0, |b| b.as_nanos());
        write!(f, "{}.{}.{born}", self.device, self.inode)
    }
}

/// A mount at or below a root: where, and what file system.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    id: String,
    path: PathBuf,
    kind: String,
}

/// The mounts at and below `root` (and the one holding it), from `/proc/self/mountinfo`.
fn mounts_at(root: &Path) -> Vec<Mount> {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let all: Vec<Mount> = table.lines().filter_map(parse_mount).collect();
    let holding = (all.iter())
        .filter(|m| root.starts_with(&m.path))
        .max_by_key(|m| m.path.as_os_str().len())
        .cloned();
    let mut mounts: Vec<Mount> = (all.into_iter())
        .filter(|m| m.path.starts_with(&root) && m.path != root)
        .chain(holding)
        .collect();
    mounts.sort_by(|a, b| (&a.path, &a.id).cmp(&(&b.path, &b.id)));
    mounts
}

/// One line of `mountinfo`: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - TYPE SOURCE ...`.
fn parse_mount(line: &str) -> Option<Mount> {
    let mut fields = line.split(' ');
    let id = fields.next()?.to_owned();
    let path = unescape(fields.nth(3)?);
    let kind = fields.skip_while(|f| *f != "-").nth(1)?.to_owned();
    Some(Mount { id, path, kind })
}

/// A mount point as `mountinfo` writes it, with `\040` for a space and so on.
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let text = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mountinfo_line_gives_its_mount_point_and_file_system() {
        let line = "36 35 98:0 /mnt1 /srv/my\\040share rw,noatime master:1 - nfs4 host:/x rw";
        let mount = parse_mount(line).unwrap();
        assert_eq!(mount.id, "36");
        assert_eq!(mount.path, Path::new("/srv/my share"));
        assert_eq!(mount.kind, "nfs4");
    }

    /// A journal over a new folder holding `docs/`, whose watch has begun.
    fn journal() -> (tempfile::TempDir, RootJournal) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("docs")).unwrap();
        let journal = RootJournal::new(root.path().to_path_buf());
        journal.begin(Ground::of(root.path()));
        (root, journal)
    }

    fn answer(
        journal: &RootJournal,
        folder: &str,
        mark: Option<&Mark>,
    ) -> (Mark, Option<Vec<PathBuf>>) {
        match journal.changes_since(Path::new(folder), mark) {
            Journaled::At { now, changed } => (now, changed),
            Journaled::Unjournaled => panic!("no journal"),
        }
    }

    #[test]
    fn an_answer_names_what_changed_after_the_mark_inside_the_folder() {
        let (_root, journal) = journal();
        journal.record(vec!["docs/a".into()]);
        let (mark, _) = answer(&journal, "docs", None);
        journal.record(vec!["docs/b".into(), "other/c".into()]);
        let (now, changed) = answer(&journal, "docs", Some(&mark));
        assert_eq!(changed, Some(vec![PathBuf::from("b")]));
        assert!(now.generation > mark.generation);
        // A change recorded after the answer is newer than the mark it gave.
        journal.record(vec!["docs/d".into()]);
        let (_, changed) = answer(&journal, "docs", Some(&now));
        assert_eq!(changed, Some(vec![PathBuf::from("d")]));
    }

    #[test]
    fn a_folder_replaced_another_journals_mark_or_none_cannot_be_answered() {
        let (root, journal) = journal();
        let (mark, changed) = answer(&journal, "docs", None);
        assert_eq!(changed, None);
        let other = Mark {
            journal: "another".into(),
            ..mark.clone()
        };
        assert_eq!(answer(&journal, "docs", Some(&other)).1, None);
        let docs = root.path().join("docs");
        std::fs::rename(&docs, root.path().join("docs.old")).unwrap();
        std::fs::create_dir(&docs).unwrap();
        assert_eq!(answer(&journal, "docs", Some(&mark)).1, None);
        journal.end(("test", "a test"));
        let answer = journal.changes_since(Path::new("docs"), None);
        assert_eq!(answer, Journaled::Unjournaled);
    }

    #[test]
    fn a_root_replaced_stops_the_journal() {
        let (root, journal) = journal();
        let moved = root.path().with_extension("moved");
        std::fs::rename(root.path(), &moved).unwrap();
        std::fs::create_dir_all(root.path().join("docs")).unwrap();
        let answer = journal.changes_since(Path::new("docs"), None);
        assert_eq!(answer, Journaled::Unjournaled);
        std::fs::remove_dir_all(moved).unwrap();
    }
}
