//! The agent's change journal: one per served root, fed by a recursive inotify watch
//! ([`inotify`]), telling a run which paths changed since its last one
//! ([`ferry_engine::journal`]).
//!
//! A journal answers a mark only for an interval it can vouch for. When its watch stops (the
//! kernel's queue overflowed, the agent restarted) it catches up: a walk takes every entry
//! whose change time is after the last instant the journal knew itself complete, and the
//! journal keeps its identity, so the marks it gave still hold. With a state folder it keeps
//! itself on disk for that ([`kept`]). It takes a new identity instead, which makes the next
//! runs scan everything, when it cannot catch up: the root, or a mount at or below it,
//! changed; a file system whose change times it cannot rely on; a clock gone back; a kept
//! file it cannot read. A root on a network file system (or with one mounted below it), whose
//! changes made elsewhere no watch sees, has no journal at all.

mod ground;
mod inotify;
mod kept;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use ferry_engine::journal::{ChangeJournal, Journaled, Mark};

use crate::config::ServedRoot;
use ground::{Ground, Identity};
use inotify::{Found, Read, Watch};
use kept::Kept;

/// Paths a journal holds at most: past it, it forgets them and answers no mark from before,
/// so a flood of changes cannot make the agent hold memory without bound.
pub(super) const MAX_TRACKED: usize = 250_000;
/// Paths an answer names at most, and their bytes: past either, scanning everything costs
/// about as much (and the answer must fit a frame).
const MAX_ANSWER: usize = 50_000;
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// How long a read of the watch waits, so a restart asked for is seen soon.
const POLL: Duration = Duration::from_secs(1);
/// How soon a root that cannot be watched is tried again.
const RETRY: Duration = Duration::from_secs(10);
/// How long a watch whose queue overflowed waits before it starts over: a flood of changes
/// (a large copy into the root) would otherwise make it walk the tree again and again.
const AFTER_OVERFLOW: Duration = Duration::from_secs(2);
/// How often a journal with news is kept on disk, and how often one without.
const SAVE_EVERY: Duration = Duration::from_secs(30);
const SAVE_QUIET_EVERY: Duration = Duration::from_secs(600);
/// Generations reserved on disk at a time: no mark handed out may name one above them.
const RESERVE: u64 = 1 << 20;
/// A catch-up starts this much before the instant the journal knew itself complete: a write
/// stamps the change time as it begins and queues its event as it ends, and one call may write
/// gigabytes, or wait behind a slow disk (change times also come from a coarse clock). What a
/// longer write changed is found by the periodic full scan.
const SLACK: Duration = Duration::from_secs(10);
/// How long a question waits for a journal that is catching up.
const START_WAIT: Duration = Duration::from_secs(60);
/// How long changes gather after a read before the next, unless a question waits: a flood
/// read as it comes woke the watch for every few events, and each wake-up costs the writer
/// too (most of the journal's CPU while a million files are copied into its root). The
/// kernel queues 16,384 events by default, a few times what the fastest local copy makes in
/// this time.
const GATHER: Duration = Duration::from_millis(10);
/// How long a question waits for the watch to read what was queued before it.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// The journals of the served roots, by the root's path as configured.
#[derive(Default)]
pub struct Journals {
    by_root: HashMap<PathBuf, Arc<RootJournal>>,
}

impl Journals {
    /// Starts watching every root, each on a thread of its own; with `state_dir`, each
    /// journal is kept there and takes up where it left off.
    pub fn start(roots: &[ServedRoot], state_dir: Option<&Path>) -> Self {
        let by_root = (roots.iter())
            .map(|root| {
                let file = state_dir.map(|dir| kept::file_for(dir, &root.path));
                let journal = Arc::new(RootJournal::new(root.path.clone(), file));
                let kept = journal.clone();
                std::thread::Builder::new()
                    .name("journal".into())
                    .spawn(move || keep(&kept))
                    .expect("starting a journal thread");
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
    /// Where it is kept, with a state folder.
    file: Option<PathBuf>,
    state: Mutex<State>,
    /// Wakes questions waiting for the journal to start.
    started: Condvar,
    /// Wakes questions waiting for the watch to read what was queued before them.
    caught_up: Condvar,
    /// A question's nudge to the watch (an eventfd): read now, do not let changes gather.
    hurry: OwnedFd,
    /// Asks the watch to start over (the root, or the mounts below it, changed).
    restart: AtomicBool,
    /// One save at a time, each of the state as it is then: a later save never holds less.
    /// Taken before `state`.
    saving: Mutex<()>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Placing its watch, or catching up: a question waits.
    #[default]
    Starting,
    Running,
    /// Not watching: every run scans everything.
    Off,
}

#[derive(Debug, Default)]
struct State {
    phase: Phase,
    /// The journal's identity: marks of another are not answered.
    id: String,
    /// The generation changes are recorded under now; each answer moves it on, so a change
    /// recorded after an answer is newer than the mark it gave.
    generation: u64,
    /// Marks older than this cannot be answered (what came before was forgotten).
    floor: u64,
    /// Kept on disk: no mark handed out names a generation above it.
    reserved: u64,
    /// Each changed path (relative to the root), and its latest change.
    changed: HashMap<PathBuf, Change>,
    /// Every change made before this instant is in `changed`.
    drained: Option<SystemTime>,
    /// What the watch began over.
    ground: Ground,
    /// Changed since last kept.
    dirty: bool,
    /// A watch is being read: a question can wait for it to catch up.
    following: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Change {
    generation: u64,
    reach: Reach,
}

/// What a recorded path stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(super) enum Reach {
    /// The entry itself (a folder with what is below it, as a run's scope takes a folder).
    Itself,
    /// A folder whose entries changed unseen (one may have gone): all of it is looked at, and
    /// a job whose own folder it is scans everything.
    Entries,
    /// Anything at or below it: paths below it folded into it when the journal grew too
    /// long; a job at or below it scans everything.
    Everything,
}

/// Where a journal left off, to take up from.
struct Resume {
    id: String,
    floor: u64,
    reserved: u64,
    drained: SystemTime,
    changed: HashMap<PathBuf, Change>,
}

impl RootJournal {
    fn new(root: PathBuf, file: Option<PathBuf>) -> Self {
        Self {
            root,
            file,
            state: Mutex::default(),
            started: Condvar::new(),
            caught_up: Condvar::new(),
            hurry: rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
            )
            .expect("an eventfd for the change journal"),
            restart: AtomicBool::new(false),
            saving: Mutex::default(),
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

    /// The journal kept on disk, if it can be taken up: same root, same ground, file
    /// systems whose change times tell what changed since, a clock not gone back.
    fn restore(&self) -> Option<Resume> {
        let file = self.file.as_ref()?;
        let ground = Ground::of(&self.root);
        let kept = kept::load(file, &self.root).and_then(|kept| {
            let kept = kept.ok_or_else(String::new)?;
            let drained = UNIX_EPOCH + Duration::from_nanos(kept.drained);
            if kept.ground != ground.lasting() {
                return Err("the root, or what is mounted at or below it, changed".into());
            }
            if !ground.keeps_change_times() {
                return Err("its file system's change times cannot tell what changed".into());
            }
            if drained > SystemTime::now() {
                return Err("the clock is behind the time it was kept".into());
            }
            Ok((kept, drained))
        });
        let (kept, drained) = match kept {
            Ok(kept) => kept,
            Err(why) if why.is_empty() => return None,
            Err(why) => {
                tracing::warn!(
                    root = %self.root.display(),
                    file = %file.display(),
                    why,
                    "the change journal kept for this root does not match it: it starts over, \
                     and the next run of each job there scans everything"
                );
                return None;
            }
        };
        let (id, floor, reserved) = (kept.id.clone(), kept.floor, kept.reserved);
        let changed = (kept.into_changed())
            .map(|(path, generation, reach)| (path, Change { generation, reach }))
            .collect();
        Some(Resume {
            id,
            floor,
            reserved,
            drained,
            changed,
        })
    }

    /// A watch began over `ground`, taking up from `resume` (with what it `found` changed
    /// since) or afresh: what came before cannot be answered for.
    fn begin(&self, ground: Ground, resume: Option<Resume>, found: Vec<Found>) {
        let one_at_a_time = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.state();
        let resumed = resume.is_some();
        match resume {
            Some(resume) => {
                state.id = resume.id;
                state.floor = resume.floor;
                state.changed = resume.changed;
                state.drained = Some(resume.drained);
                state.generation = state.generation.max(resume.reserved + 1);
            }
            None => {
                state.id = uuid::Uuid::new_v4().to_string();
                state.changed.clear();
                state.drained = None;
                state.floor = state.generation;
            }
        }
        let caught_up = found.len();
        for found in found {
            state.note(found.path, found.reach);
        }
        state.fold_if_long(&self.root);
        state.ground = ground;
        state.reserved = state.generation + RESERVE;
        let kept = state.take_to_keep(&self.root);
        drop(state);
        // No mark leaves before the generations it may name are reserved on disk; without
        // that, the kept file (its older reservation) must not be taken up again.
        if let Some(kept) = kept
            && self.file.is_some()
            && !self.write(&kept)
            && resumed
        {
            let mut state = self.state();
            state.id = uuid::Uuid::new_v4().to_string();
            state.floor = state.generation;
        }
        drop(one_at_a_time);
        self.state().phase = Phase::Running;
        self.started.notify_all();
        self.gauge().set(1.0);
        tracing::info!(root = %self.root.display(), resumed, caught_up, "change journal started");
    }

    /// The watch stopped, for `reason` (a metric's label) as `why` says; where to take up from
    /// when it can.
    fn end(&self, (reason, why): (&'static str, String)) -> Option<Resume> {
        let mut state = self.state();
        state.phase = Phase::Starting;
        self.gauge().set(0.0);
        metrics::counter!("ferry_agent_journal_restarts_total", "reason" => reason).increment(1);
        let drained = state.drained.filter(|_| reason == "overflow");
        let Some(drained) = drained.filter(|_| state.ground.keeps_change_times()) else {
            tracing::warn!(root = %self.root.display(), why, "change journal stopped; it starts over");
            return None;
        };
        tracing::warn!(root = %self.root.display(), why, "change journal stopped; catching up");
        Some(Resume {
            id: state.id.clone(),
            floor: state.floor,
            reserved: state.reserved,
            drained,
            changed: std::mem::take(&mut state.changed),
        })
    }

    /// No watch runs: every run scans everything until one does.
    fn off(&self) {
        self.state().phase = Phase::Off;
        self.started.notify_all();
        self.gauge().set(0.0);
    }

    fn record(&self, paths: Vec<PathBuf>, drained: Option<SystemTime>) {
        let mut state = self.state();
        state.dirty |= !paths.is_empty();
        for path in paths {
            state.note(path, Reach::Itself);
        }
        if drained.is_some() {
            state.drained = drained;
            self.caught_up.notify_all();
        }
        state.fold_if_long(&self.root);
    }

    /// Lets changes gather for a moment, unless a question nudges the watch (see [`GATHER`]).
    fn gather(&self) {
        let mut nudged = [rustix::event::PollFd::new(
            &self.hurry,
            rustix::event::PollFlags::IN,
        )];
        let moment = rustix::event::Timespec::try_from(GATHER).ok();
        let _ = rustix::event::poll(&mut nudged, moment.as_ref());
    }

    /// Waits, a moment at most, until the watch has read every change queued before now: an
    /// answer then names each change made before the question, not only those the watch
    /// happened to have read.
    fn catch_up<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        if !state.following {
            return state;
        }
        let asked = SystemTime::now();
        let _ = rustix::io::write(&self.hurry, &1u64.to_ne_bytes());
        let behind = |s: &mut State| s.following && s.drained.is_none_or(|d| d < asked);
        (self.caught_up)
            .wait_timeout_while(state, CATCH_UP_WAIT, behind)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    /// Records what the watch reads until it stops; why it stopped.
    fn follow(&self, watch: &mut Watch) -> (&'static str, String) {
        let why = self.read_on(watch);
        self.state().following = false;
        self.caught_up.notify_all();
        why
    }

    fn read_on(&self, watch: &mut Watch) -> (&'static str, String) {
        let mut saved: Option<Instant> = None;
        loop {
            if self.restart.swap(false, Ordering::Relaxed) {
                return ("moved", "the root or a mount moved".into());
            }
            match watch.read(POLL, &self.hurry) {
                Read::Changed { paths, drained } => {
                    let emptied = drained.is_some();
                    self.record(paths, drained);
                    if emptied {
                        self.gather();
                    }
                }
                Read::Lost => {
                    let why = "the watcher lost events (the kernel's queue overflowed)";
                    return ("overflow", why.into());
                }
                Read::Ended(why) => return ("ended", why),
            }
            let dirty = self.state().dirty;
            let every = if dirty { SAVE_EVERY } else { SAVE_QUIET_EVERY };
            // Kept or not, the next try is a turn later: tried again at every read, a journal
            // that cannot be kept (no state folder, a full disk) copied all its paths each time,
            // most of a core during a flood.
            if saved.is_none_or(|at| at.elapsed() >= every) {
                self.save();
                saved = Some(Instant::now());
            }
        }
    }

    /// Keeps the journal on disk, as it is now, if it is complete up to some instant; whether
    /// there was anything to keep.
    fn save(&self) -> bool {
        if self.file.is_none() {
            return false;
        }
        let _one_at_a_time = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let kept = {
            let mut state = self.state();
            let running = state.phase == Phase::Running;
            running.then(|| state.take_to_keep(&self.root)).flatten()
        };
        kept.is_some_and(|kept| self.write(&kept))
    }

    /// Writes `kept` where the journal is kept (under `saving`); whether it was written.
    fn write(&self, kept: &Kept) -> bool {
        let Some(file) = &self.file else { return false };
        let written = kept::save(file, kept);
        if let Err(e) = &written {
            tracing::warn!(
                file = %file.display(),
                error = %e,
                "cannot keep the change journal: after a restart of the agent, each job there \
                 scans everything once"
            );
        }
        written.is_ok()
    }
}

impl State {
    fn note(&mut self, path: PathBuf, reach: Reach) {
        let generation = self.generation;
        (self.changed.entry(path))
            .and_modify(|was| {
                *was = Change {
                    generation,
                    reach: was.reach.max(reach),
                }
            })
            .or_insert(Change { generation, reach });
    }

    /// Past `MAX_TRACKED` paths, folds the deepest into their folders (as far as needed to
    /// halve them), so the journal stays bounded and still answers the marks it gave; with
    /// nothing left to fold, forgets them all, and answers no mark from before.
    fn fold_if_long(&mut self, root: &Path) {
        if self.changed.len() <= MAX_TRACKED {
            return;
        }
        while self.changed.len() > MAX_TRACKED / 2 {
            let deepest = (self.changed.keys()).map(|p| p.components().count()).max();
            let deepest = deepest.unwrap_or(0);
            if deepest <= 1 {
                self.changed.clear();
                self.floor = self.generation;
                tracing::info!(
                    root = %root.display(),
                    "over {MAX_TRACKED} paths changed at the top of the root: the change \
                     journal forgets them, and the next run of each job there scans everything"
                );
                return;
            }
            for (path, change) in std::mem::take(&mut self.changed) {
                let (path, change) = match path.components().count() == deepest {
                    true => (
                        folder_of(&path),
                        Change {
                            reach: Reach::Everything,
                            ..change
                        },
                    ),
                    false => (path, change),
                };
                let merged = (self.changed.get(&path)).map_or(change, |was| Change {
                    generation: was.generation.max(change.generation),
                    reach: was.reach.max(change.reach),
                });
                self.changed.insert(path, merged);
            }
        }
        tracing::debug!(root = %root.display(), kept = self.changed.len(), "change journal folded into folders");
    }

    /// What to keep on disk, when the journal knows an instant it is complete up to.
    fn take_to_keep(&mut self, root: &Path) -> Option<Kept> {
        let drained = self.drained?;
        let nanos = drained.duration_since(UNIX_EPOCH).ok()?.as_nanos();
        let numbers = (self.floor, self.reserved, u64::try_from(nanos).ok()?);
        let mut kept = Kept::new(root, self.ground.lasting(), self.id.clone(), numbers);
        for (path, change) in &self.changed {
            kept.push(path, change.generation, change.reach);
        }
        self.dirty = false;
        Some(kept)
    }
}

impl ChangeJournal for RootJournal {
    /// A mark names the journal as seen from `folder`: the journal's identity and the folder's,
    /// so a folder replaced meanwhile (renamed away, another put in its place) is scanned whole.
    fn changes_since(&self, folder: &Path, mark: Option<&Mark>) -> Journaled {
        let ground = Ground::of(&self.root);
        let mut state = self.state();
        if state.phase == Phase::Running && ground != state.ground {
            state.phase = Phase::Off;
            self.restart.store(true, Ordering::Relaxed);
            tracing::info!(
                root = %self.root.display(),
                "the root, or what is mounted at or below it, changed; watching again"
            );
        }
        let (state, _) = (self.started)
            .wait_timeout_while(state, START_WAIT, |s| s.phase == Phase::Starting)
            .unwrap_or_else(|p| p.into_inner());
        let mut state = self.catch_up(state);
        let seen_from = Identity::of(&self.root.join(folder));
        let Some(seen_from) = seen_from.filter(|_| state.phase == Phase::Running) else {
            return Journaled::Unjournaled;
        };
        let now = Mark {
            journal: format!("{} {seen_from}", state.id),
            generation: state.generation,
        };
        state.generation += 1;
        let reserve = state.generation > state.reserved;
        if reserve {
            state.reserved = state.generation + RESERVE;
        }
        let since = (mark.filter(|mark| mark.journal == now.journal))
            .map(|mark| mark.generation)
            .filter(|since| (state.floor..now.generation).contains(since));
        let changed = since.and_then(|since| changed_inside(&state.changed, folder, since));
        let news = state.dirty;
        drop(state);
        // Before the mark leaves: after a restart no generation it names is used again, and
        // what a restart catches up on starts from about now.
        if reserve || news {
            self.save();
        }
        Journaled::At { now, changed }
    }
}

/// The paths in `folder` (made relative to it) changed after generation `since`; `None` when
/// there are more than an answer holds, or the journal cannot name them (the folder's own
/// entries changed unseen, or changes at or above it were folded together).
fn changed_inside(
    changed: &HashMap<PathBuf, Change>,
    folder: &Path,
    since: u64,
) -> Option<Vec<PathBuf>> {
    let mut paths = Vec::new();
    let mut bytes = 0;
    for (path, change) in changed.iter().filter(|(_, c)| c.generation > since) {
        let Ok(inside) = path.strip_prefix(folder) else {
            match change.reach == Reach::Everything && folder.starts_with(path) {
                true => return None,
                false => continue,
            }
        };
        if inside.as_os_str().is_empty() {
            match change.reach {
                Reach::Itself => continue,
                Reach::Entries | Reach::Everything => return None,
            }
        }
        bytes += inside.as_os_str().len();
        if paths.len() == MAX_ANSWER || bytes > MAX_ANSWER_BYTES {
            return None;
        }
        paths.push(inside.to_path_buf());
    }
    Some(paths)
}

/// The folder `path` is in (the root's own entries: the root, "").
fn folder_of(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new("")).to_path_buf()
}

/// Keeps `journal`'s watch running for the agent's lifetime.
fn keep(journal: &RootJournal) {
    let mut resume = journal.restore();
    loop {
        let ground = Ground::of(&journal.root);
        if let Some(mount) = ground.unwatchable() {
            journal.off();
            tracing::info!(
                root = %journal.root.display(),
                mount = %mount.path.display(),
                kind = mount.kind,
                "no change journal: changes on this file system can be made where no watch sees them"
            );
            resume = None;
            std::thread::sleep(RETRY * 6);
            continue;
        }
        let resume_now = resume.take().filter(|_| ground.keeps_change_times());
        let since =
            (resume_now.as_ref()).map(|r| r.drained.checked_sub(SLACK).unwrap_or(UNIX_EPOCH));
        let (mut watch, found) = match Watch::place(&journal.root, since) {
            Ok(placed) => placed,
            Err(e) => {
                journal.off();
                let root = journal.root.display();
                match e.kind() {
                    std::io::ErrorKind::NotFound => tracing::debug!(%root, "no root to watch yet"),
                    _ => {
                        tracing::warn!(%root, error = %e, "cannot watch the root; runs there scan everything")
                    }
                }
                resume = resume_now;
                std::thread::sleep(RETRY);
                continue;
            }
        };
        // Before questions are let in: the first one waits for the watch too.
        journal.state().following = true;
        journal.begin(ground, resume_now, found);
        let why = journal.follow(&mut watch);
        resume = journal.end(why);
        drop(watch);
        std::thread::sleep(AFTER_OVERFLOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal over a new folder holding `docs/`, whose watch has begun.
    fn journal() -> (tempfile::TempDir, RootJournal) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("docs")).unwrap();
        let journal = RootJournal::new(root.path().to_path_buf(), None);
        journal.begin(Ground::of(root.path()), None, Vec::new());
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
        journal.record(vec!["docs/a".into()], None);
        let (mark, _) = answer(&journal, "docs", None);
        journal.record(vec!["docs/b".into(), "other/c".into()], None);
        let (now, changed) = answer(&journal, "docs", Some(&mark));
        assert_eq!(changed, Some(vec![PathBuf::from("b")]));
        assert!(now.generation > mark.generation);
        // A change recorded after the answer is newer than the mark it gave.
        journal.record(vec!["docs/d".into()], None);
        let (_, changed) = answer(&journal, "docs", Some(&now));
        assert_eq!(changed, Some(vec![PathBuf::from("d")]));
    }

    #[test]
    fn an_answer_names_a_change_made_right_before_the_question() {
        let root = tempfile::tempdir().unwrap();
        let journal = Arc::new(RootJournal::new(root.path().to_path_buf(), None));
        let watched = journal.clone();
        std::thread::spawn(move || keep(&watched));
        let (mut mark, _) = answer(&journal, "", None);
        for i in 0..50 {
            let name = format!("f{i}");
            std::fs::write(root.path().join(&name), "x").unwrap();
            let (now, changed) = answer(&journal, "", Some(&mark));
            assert_eq!(changed, Some(vec![PathBuf::from(&name)]), "change {i}");
            mark = now;
        }
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
        journal.end(("test", "a test".into()));
        journal.off();
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

    #[test]
    fn a_journal_with_nowhere_to_be_kept_does_not_gather_its_paths_to_keep() {
        let (root, journal) = journal();
        journal.begin(Ground::of(root.path()), None, Vec::new());
        journal.record(vec!["docs/recorded".into()], Some(SystemTime::now()));
        assert!(!journal.save(), "no state folder: nothing kept");
        assert!(journal.state().dirty, "the changes are still to keep");
    }

    #[test]
    fn a_journal_kept_on_disk_answers_its_marks_after_a_restart() {
        let (root, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::create_dir(root.path().join("docs")).unwrap();
        let file = kept::file_for(state.path(), root.path());
        let journal = RootJournal::new(root.path().to_path_buf(), Some(file.clone()));
        journal.begin(Ground::of(root.path()), None, Vec::new());
        let (mark, _) = answer(&journal, "docs", None);
        journal.record(vec!["docs/recorded".into()], Some(SystemTime::now()));
        journal.save();
        drop(journal);

        let again = RootJournal::new(root.path().to_path_buf(), Some(file));
        let resume = again.restore().expect("taken up");
        let found = Found {
            path: "docs/while-down".into(),
            reach: Reach::Itself,
        };
        again.begin(Ground::of(root.path()), Some(resume), vec![found]);
        let (now, changed) = answer(&again, "docs", Some(&mark));
        let mut changed = changed.expect("the old mark is answered");
        changed.sort();
        assert_eq!(changed, [PathBuf::from("recorded"), "while-down".into()]);
        assert!(now.generation > mark.generation);
        // A mark from a life the file does not know of (a file restored from a backup).
        let ahead = Mark {
            generation: now.generation + 10,
            ..now
        };
        assert_eq!(answer(&again, "docs", Some(&ahead)).1, None);
    }

    #[test]
    fn a_folder_whose_own_entries_changed_unseen_is_scanned_whole() {
        let (_root, journal) = journal();
        let (mark, _) = answer(&journal, "docs", None);
        journal.state().note("docs/inner".into(), Reach::Entries);
        assert_eq!(
            answer(&journal, "docs", Some(&mark)).1,
            Some(vec![PathBuf::from("inner")])
        );
        let (mark, _) = answer(&journal, "docs", None);
        journal.state().note("docs".into(), Reach::Itself);
        assert_eq!(answer(&journal, "docs", Some(&mark)).1, Some(Vec::new()));
        journal.state().note("docs".into(), Reach::Entries);
        assert_eq!(answer(&journal, "docs", Some(&mark)).1, None);
    }

    #[test]
    fn a_long_journal_folds_its_paths_into_folders_and_still_answers() {
        let (root, journal) = journal();
        std::fs::create_dir(root.path().join("other")).unwrap();
        let (in_docs, _) = answer(&journal, "docs", None);
        let (in_other, _) = answer(&journal, "other", None);
        let many = (0..=MAX_TRACKED).map(|i| PathBuf::from(format!("docs/d{}/f{i}", i % 100)));
        journal.record(many.collect(), None);
        journal.record(vec!["other/kept".into()], None);
        let held = journal.state().changed.len();
        assert!(held <= MAX_TRACKED / 2, "{held} paths held");
        let (_, changed) = answer(&journal, "docs", Some(&in_docs));
        let changed = changed.expect("answered");
        assert_eq!(changed.len(), 100, "one path a folder");
        assert!(changed.contains(&PathBuf::from("d7")));
        let (_, changed) = answer(&journal, "other", Some(&in_other));
        assert_eq!(changed, Some(vec![PathBuf::from("kept")]));
        // Folded above a job's folder: that job cannot be told what changed.
        std::fs::create_dir(root.path().join("docs/d7")).unwrap();
        let (in_d7, _) = answer(&journal, "docs/d7", None);
        journal.state().note("docs".into(), Reach::Everything);
        assert_eq!(answer(&journal, "docs/d7", Some(&in_d7)).1, None);
    }
}
