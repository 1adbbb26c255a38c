//! The messages between a scheduler (or another agent) and an agent, after the TLS handshake:
//! the client says `Hello` with its protocol version (and the lease it works for, if any), the
//! agent answers `Welcome` (or `Refused` and closes), then requests and responses alternate,
//! except that a file's data travels as a stream of `Data` frames without an answer for each.
//! Documented in docs/PROTOCOL.md; new fields are added, never renamed (frames use named
//! fields).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use ferry_engine::Fence;
use ferry_engine::delta::{Op, Signature};
use ferry_engine::endpoint::MoveCheck;
use ferry_engine::journal::Mark;
use ferry_engine::meta::{Accounts, Keep, Xattrs};
use ferry_engine::tree::{Entry, Expected, Mtime};
use ferry_engine::{Event, Guards, Rule, Summary};

use crate::frame::{Attached, Framed};

/// The newest protocol this build speaks. Bumped when a message changes meaning.
pub const PROTOCOL_VERSION: u32 = 14;
/// The first protocol whose `Duplicate` takes a `check` (an older agent would ignore it).
pub const CHECKED_MOVES: u32 = 12;
/// The first protocol with `ChangesSince`: an older agent keeps no change journal.
pub const JOURNALS: u32 = 13;
/// The first protocol with `ReadStatePart` and `WriteStatePart`: an older agent reads and
/// writes a state file in one frame, so a sync job's base over 8 MiB (about 60,000 files)
/// cannot be kept there.
pub const STATE_PARTS: u32 = 14;
/// The most of a state file one `ReadStatePart` or `WriteStatePart` carries.
pub const STATE_PART: usize = 4 << 20;
/// The oldest protocol this build still speaks: a peer one release behind works with it, so
/// agents and schedulers can be upgraded one machine at a time. Older peers are refused by
/// number.
pub const OLDEST_PROTOCOL: u32 = 10;

/// The version a session speaks: the newest both ends know, if their ranges meet. A client
/// says the oldest it speaks in `Hello.version` (what agents before protocol 11 compare with
/// their own) and the newest in `Hello.newest`.
pub fn agree(client_oldest: u32, client_newest: u32) -> Option<u32> {
    let version = client_newest.min(PROTOCOL_VERSION);
    (version >= client_oldest.max(OLDEST_PROTOCOL)).then_some(version)
}

/// Messages in one `Batch`, and ops in one `Data`, at most. A frame is bounded in bytes, but a
/// few compressed bytes of tiny messages would otherwise decode into millions of them, held in
/// memory at once.
pub const MAX_BATCH: usize = 4096;

/// One step in rebuilding a file, as it travels: a literal's bytes go in the frame's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataOp {
    /// Copy `count` blocks of the old version, starting with block `first`.
    Blocks { first: u32, count: u32 },
    /// Bytes the old version does not have.
    Literal(Attached),
}

impl From<Op> for DataOp {
    fn from(op: Op) -> Self {
        match op {
            Op::Blocks { first, count } => DataOp::Blocks { first, count },
            Op::Literal(bytes) => DataOp::Literal(Attached::new(bytes)),
        }
    }
}

impl From<DataOp> for Op {
    fn from(op: DataOp) -> Self {
        match op {
            DataOp::Blocks { first, count } => Op::Blocks { first, count },
            DataOp::Literal(bytes) => Op::Literal(bytes.into_bytes()),
        }
    }
}

impl DataOp {
    /// Bytes of file data this op carries (block references carry none).
    pub fn literal_len(&self) -> usize {
        match self {
            DataOp::Literal(bytes) => bytes.len(),
            DataOp::Blocks { .. } => 0,
        }
    }
}

/// The attachments of a list of ops, in order.
fn literals(ops: &[DataOp]) -> impl Iterator<Item = &Attached> {
    ops.iter().filter_map(|op| match op {
        DataOp::Literal(bytes) => Some(bytes),
        DataOp::Blocks { .. } => None,
    })
}

fn literals_mut(ops: &mut [DataOp]) -> impl Iterator<Item = &mut Attached> {
    ops.iter_mut().filter_map(|op| match op {
        DataOp::Literal(bytes) => Some(bytes),
        DataOp::Blocks { .. } => None,
    })
}

impl Framed for Request {
    fn attachments(&self) -> Vec<&Attached> {
        match self {
            Request::Data { ops } => literals(ops).collect(),
            Request::Batch(requests) => requests.iter().flat_map(|r| r.attachments()).collect(),
            _ => Vec::new(),
        }
    }

    fn attachments_mut(&mut self) -> Vec<&mut Attached> {
        match self {
            Request::Data { ops } => literals_mut(ops).collect(),
            Request::Batch(requests) => (requests.iter_mut())
                .flat_map(|r| r.attachments_mut())
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl Framed for Response {
    fn attachments(&self) -> Vec<&Attached> {
        match self {
            Response::Data { ops } => literals(ops).collect(),
            Response::Batch(responses) => responses.iter().flat_map(|r| r.attachments()).collect(),
            _ => Vec::new(),
        }
    }

    fn attachments_mut(&mut self) -> Vec<&mut Attached> {
        match self {
            Response::Data { ops } => literals_mut(ops).collect(),
            Response::Batch(responses) => (responses.iter_mut())
                .flat_map(|r| r.attachments_mut())
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A replica named on the wire: a folder on an agent, reached at `address`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFolder {
    pub agent: String,
    pub address: String,
    /// An absolute path inside one of the agent's roots.
    pub path: String,
}

/// A whole run handed to the agent that holds the job's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOrder {
    pub job: String,
    pub rule: Rule,
    /// The source folder, on the agent that receives the order.
    pub source: String,
    pub destinations: Vec<RemoteFolder>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    #[serde(default)]
    pub guards: Guards,
    /// Paths to sync (relative to the job's folders); `None` for everything.
    #[serde(default, with = "ferry_engine::raw_path::optional_list")]
    pub paths: Option<Vec<PathBuf>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Hello {
        /// The oldest protocol the client speaks.
        version: u32,
        /// The newest it speaks (absent before protocol 11: `version` only).
        #[serde(default)]
        newest: Option<u32>,
        client: String,
        #[serde(default)]
        fence: Option<Fence>,
    },
    Ping {
        nonce: u64,
    },
    /// Makes `path` (absolute, inside one of the agent's roots) this session's folder; every
    /// path below is relative to it. Fails unless it is a folder, creating it first if asked.
    Open {
        path: String,
        create: bool,
    },
    /// Answered by `Scanned` frames, the last with `more: false`.
    Scan {
        #[serde(default, with = "ferry_engine::raw_path::optional_list")]
        paths: Option<Vec<PathBuf>>,
        include: Vec<String>,
        exclude: Vec<String>,
    },
    Stat {
        #[serde(with = "ferry_engine::raw_path")]
        path: PathBuf,
    },
    Signature {
        #[serde(with = "ferry_engine::raw_path")]
        path: PathBuf,
    },
    /// Answered by `Data` frames (the file as a delta against `base`, whole without one), then
    /// `DataEnd`.
    ReadFile {
        #[serde(with = "ferry_engine::raw_path")]
        path: PathBuf,
        base: Option<Signature>,
    },
    /// Followed by `Data` frames and one `DataEnd`. Every file gets a `Verdict` once its batch
    /// is durable; a delta (`block_size` set: that of the signature it was made against) that
    /// did not rebuild the file fails with `InvalidData`, and its sender sends it whole.
    WriteFile {
        #[serde(with = "ferry_engine::raw_path")]
        path: PathBuf,
        entry: Entry,
        block_size: Option<u32>,
        /// Under the sync rule: what `path` must still hold when the file is renamed into
        /// place; the file fails (and `path` is left as it is) otherwise.
        #[serde(default)]
        expected: Option<Expected>,
        /// Its extended attributes (ACLs among them), set before it is renamed into place;
        /// checked against the limits in `ferry_engine::meta` first.
        #[serde(default)]
        xattrs: Option<Xattrs>,
    },
    Data {
        #[serde(deserialize_with = "at_most")]
        ops: Vec<DataOp>,
    },
    DataEnd {
        #[serde(with = "serde_bytes")]
        hash: Vec<u8>,
    },
    /// Under the sync rule `expected` is what `path` must still hold (as for `WriteFile`).
    MakeDir {
        #[serde(with = "ferry_engine::raw_path")]
        path: PathBuf,
        entry: Entry,
        #[serde(default)]
        expected: Option<Expected>,
    },
    MakeSymlink {
        #[serde(with = "ferry_engine::raw_path")]
        path: PathBuf,
        entry: Entry,
    },
    /// A FIFO or a socket (for a job that keeps special files). An agent never makes a
    /// device for a peer: only a job on its own folders may.
    MakeSpecial {
        #[serde(with = "ferry_engine::raw_path")]
        path: PathBuf,
        entry: Entry,
    },
    /// Under the sync rule `expected` is what `path` must still hold (as for `WriteFile`).
    Remove {
        #[serde(with = "ferry_engine::raw_path")]
        path: PathBuf,
        entry: Entry,
        #[serde(default)]
        expected: Option<Expected>,
    },
    Rename {
        #[serde(with = "ferry_engine::raw_path")]
        from: PathBuf,
        #[serde(with = "ferry_engine::raw_path")]
        to: PathBuf,
    },
    SetMtime {
        #[serde(with = "ferry_engine::raw_path")]
        path: PathBuf,
        mtime: Mtime,
    },
    /// `entry`'s mode and owner for the entry at `path` and, with `xattrs`, its extended
    /// attributes that `keep` covers (a `chmod`, `chown`, `setfacl`, `setfattr`).
    SetMeta {
        #[serde(with = "ferry_engine::raw_path")]
        path: PathBuf,
        entry: Entry,
        #[serde(default)]
        xattrs: Option<Xattrs>,
        #[serde(default)]
        keep: Keep,
    },
    /// The names the agent's machine gives these users and groups (those it knows): answered
    /// by `Accounts`. At most `ferry_engine::meta::MAX_ACCOUNTS` of each.
    AccountNames {
        uids: Vec<u32>,
        gids: Vec<u32>,
    },
    /// The numbers the agent's machine gives these users and groups (those it knows): answered
    /// by `Accounts`. At most `ferry_engine::meta::MAX_ACCOUNTS` of each.
    AccountIds {
        users: Vec<String>,
        groups: Vec<String>,
    },
    /// The extended attributes of the entry at `path`: answered by `Xattrs`.
    ReadXattrs {
        #[serde(with = "ferry_engine::raw_path")]
        path: PathBuf,
    },
    /// A hard link (or copy) of `from` as `to`, making `to`'s folders; with a `check`, only
    /// while both paths hold what it expects (protocol 12).
    Duplicate {
        #[serde(with = "ferry_engine::raw_path")]
        from: PathBuf,
        #[serde(with = "ferry_engine::raw_path")]
        to: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        check: Option<MoveCheck>,
    },
    Hash {
        #[serde(with = "ferry_engine::raw_path")]
        path: PathBuf,
    },
    ReadState {
        name: String,
    },
    /// What the open folder's change journal says changed since `mark`: answered by
    /// `Journal`.
    ChangesSince {
        mark: Option<Mark>,
    },
    WriteState {
        name: String,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// At most [`STATE_PART`] bytes of state `name` from byte `from`: answered by `StatePart`
    /// (protocol 14).
    ReadStatePart {
        name: String,
        from: u64,
    },
    /// The bytes of state `name` from byte `from`, each part answered by `Done` (protocol 14).
    /// A part from 0 begins the file anew; the `last` puts it in place, durable, replacing the
    /// one before; until then that one stays, and parts whose session ends go nowhere.
    WriteStatePart {
        name: String,
        from: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        last: bool,
    },
    /// Runs a job whose source is on this agent; answered by `Progress` frames, then `RunDone`
    /// or `Failed`. While it runs the client sends `KeepAlive` (or `Cancel`); a run whose
    /// keep-alive lapses, or whose client disconnects, stops before its next write.
    RunJob {
        order: JobOrder,
        valid_for_ms: u64,
    },
    KeepAlive {
        valid_for_ms: u64,
    },
    Cancel,
    /// Watches a folder under a root for changes: answered by `Done` once the watch is in
    /// place (every later change is reported), then by `Changed` and `Lost` frames until the
    /// client disconnects; the session ends with it. Changes nothing, so needs no fence.
    Watch {
        path: String,
    },
    /// Several requests in one frame (small files' writes, say), taken in order as if each
    /// had come alone. Not nested.
    Batch(#[serde(deserialize_with = "at_most")] Vec<Request>),
}

impl Request {
    /// About the bytes this request adds to a frame, counting what grows with the files it
    /// names: their data, paths, links' targets and attributes. What keeps a `Batch` of many,
    /// sent without waiting, under a frame's size: 4,096 requests of 64 bytes each, as small
    /// files' writes are, or far fewer that name paths of 4 KiB.
    pub fn weight(&self) -> usize {
        let path = |p: &PathBuf| p.as_os_str().len();
        let entry = |e: &Entry| e.target().map_or(0, |t| t.as_os_str().len());
        let expected = |e: &Option<Expected>| {
            let seen = e.as_ref().and_then(|e| e.entry.as_ref());
            seen.map_or(0, entry)
        };
        let xattrs = |x: &Option<Xattrs>| {
            let each = |x: &ferry_engine::meta::Xattr| x.name.len() + x.value.len();
            x.iter().flatten().map(each).sum::<usize>()
        };
        let grows = match self {
            Request::Data { ops } => ops.iter().map(|op| op.literal_len() + 8).sum(),
            Request::WriteFile {
                path: p,
                entry: e,
                expected: x,
                xattrs: a,
                ..
            } => path(p) + entry(e) + expected(x) + xattrs(a),
            Request::MakeDir {
                path: p,
                entry: e,
                expected: x,
            }
            | Request::Remove {
                path: p,
                entry: e,
                expected: x,
            } => path(p) + entry(e) + expected(x),
            Request::SetMeta {
                path: p,
                entry: e,
                xattrs: a,
                ..
            } => path(p) + entry(e) + xattrs(a),
            Request::MakeSymlink { path: p, entry: e }
            | Request::MakeSpecial { path: p, entry: e } => path(p) + entry(e),
            Request::Rename { from, to } | Request::Duplicate { from, to, .. } => {
                path(from) + path(to)
            }
            Request::Stat { path: p }
            | Request::Signature { path: p }
            | Request::SetMtime { path: p, .. }
            | Request::Hash { path: p }
            | Request::ReadXattrs { path: p } => path(p),
            _ => 0,
        };
        64 + grows
    }

    /// Whether this request changes files, and so must carry a current fence.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Request::Open { create: true, .. }
                | Request::WriteFile { .. }
                | Request::MakeDir { .. }
                | Request::MakeSymlink { .. }
                | Request::MakeSpecial { .. }
                | Request::Remove { .. }
                | Request::Rename { .. }
                | Request::SetMtime { .. }
                | Request::SetMeta { .. }
                | Request::Duplicate { .. }
                | Request::WriteState { .. }
                | Request::WriteStatePart { .. }
                | Request::RunJob { .. }
        )
    }
}

/// An error from the agent, kept apart enough to rebuild an [`std::io::Error`] of the same kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// What was being done: "write", "open folder", ….
    pub op: String,
    /// The path as the agent sees it.
    pub path: String,
    pub message: String,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    NotFound,
    PermissionDenied,
    StorageFull,
    /// A delta rebuilt into something else than the sender's file: send it whole.
    InvalidData,
    /// A write under a lease epoch older than one the agent has seen.
    StaleEpoch,
    /// A path outside the agent's roots.
    Outside,
    /// A file that went away since it was scanned (normal churn, not a failure).
    Vanished,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Welcome {
        /// The protocol the session speaks from now on.
        version: u32,
        agent: String,
        software: String,
        roots: Vec<String>,
        /// The metadata the agent can keep: no owners unless it runs as root.
        #[serde(default)]
        keeps: Keep,
    },
    Pong {
        nonce: u64,
    },
    /// Why the agent closes the connection.
    Refused {
        reason: String,
    },
    Failed(WireError),
    /// A request without a result succeeded.
    Done,
    Scanned {
        #[serde(with = "ferry_engine::raw_path::entries")]
        entries: Vec<(PathBuf, Entry)>,
        more: bool,
    },
    // Boxed: an entry is the largest answer, and most answers are small.
    Stat(Option<Box<Entry>>),
    Signature(Option<Signature>),
    Data {
        #[serde(deserialize_with = "at_most")]
        ops: Vec<DataOp>,
    },
    DataEnd {
        #[serde(with = "serde_bytes")]
        hash: Vec<u8>,
        size: u64,
    },
    /// The outcome of a file once its batch is durable and renamed into place (in the order
    /// the files were sent), which may come before or after the answers to later requests.
    Verdict {
        bytes: u64,
        error: Option<WireError>,
    },
    Removed(bool),
    Xattrs(Xattrs),
    Accounts(Accounts),
    Hash(#[serde(with = "serde_bytes")] Vec<u8>),
    State(Option<serde_bytes::ByteBuf>),
    /// Part of a state file, and the whole file's size; `bytes: None` when there is none.
    StatePart {
        bytes: Option<serde_bytes::ByteBuf>,
        size: u64,
    },
    /// Where the open folder's change journal stands (`None`: it keeps none) and the paths
    /// changed since the mark asked about (`None`: it cannot tell; scan everything).
    Journal {
        now: Option<Mark>,
        #[serde(default, with = "ferry_engine::raw_path::optional_list")]
        changed: Option<Vec<PathBuf>>,
    },
    Progress(Event),
    RunDone {
        summary: Summary,
    },
    /// Paths (relative to the watched folder) that changed, during a `Watch`.
    Changed {
        #[serde(with = "ferry_engine::raw_path::list")]
        paths: Vec<PathBuf>,
    },
    /// The watcher lost events (its queue overflowed, say): only a full rescan is safe.
    Lost {
        reason: String,
    },
    /// Several answers in one frame (a published batch's verdicts), taken in order as if each
    /// had come alone. Not nested.
    Batch(#[serde(deserialize_with = "at_most")] Vec<Response>),
}

/// At most [`BRIEF_LIMIT`] characters of a message's debug form, for a log line or an error:
/// a peer's message can be as large as a frame, and printing it whole would let a few bytes
/// on the wire become megabytes of log.
pub fn brief(message: &impl std::fmt::Debug) -> String {
    use std::fmt::Write;
    let mut out = Capped(String::new());
    if write!(out, "{message:?}").is_err() {
        out.0.push('…');
    }
    out.0
}

/// See [`brief`].
pub const BRIEF_LIMIT: usize = 160;

struct Capped(String);

impl std::fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = BRIEF_LIMIT.saturating_sub(self.0.len());
        if s.len() <= room {
            self.0.push_str(s);
            return Ok(());
        }
        let cut = (0..=room)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        self.0.push_str(&s[..cut]);
        Err(std::fmt::Error)
    }
}

/// A list of at most [`MAX_BATCH`] items, refused as soon as it has one more.
fn at_most<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct AtMost<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for AtMost<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {MAX_BATCH} items")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_BATCH));
            while let Some(item) = seq.next_element()? {
                if items.len() == MAX_BATCH {
                    return Err(serde::de::Error::custom(format!(
                        "a list of more than {MAX_BATCH} items"
                    )));
                }
                items.push(item);
            }
            Ok(items)
        }
    }

    deserializer.deserialize_seq(AtMost(std::marker::PhantomData))
}
