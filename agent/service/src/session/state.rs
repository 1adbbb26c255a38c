//! State files in parts (protocol 14): a sync job's base, about 136 bytes a file, outgrows a
//! frame past 60,000 files, so a peer reads and writes it a part at a time.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, mpsc};
use std::thread;

use serde_bytes::ByteBuf;

use ferry_engine::endpoint::{Endpoint, EndpointError, LocalEndpoint};
use ferry_wire::protocol::{Response, STATE_PART};

/// The largest state file a peer may write: the base of a hundred million files.
const MAX_STATE: u64 = 16 << 30;

/// At most [`STATE_PART`] bytes of state `name` from byte `from`, with the file's size.
pub(super) fn read_part(
    replica: &LocalEndpoint,
    name: &str,
    from: u64,
) -> Result<Response, EndpointError> {
    let Some(mut file) = replica.state_file(name)? else {
        return Ok(Response::StatePart {
            bytes: None,
            size: 0,
        });
    };
    let failed = |e| EndpointError::new("read state", place(replica, name), e);
    let size = file.metadata().map_err(failed)?.len();
    file.seek(SeekFrom::Start(from)).map_err(failed)?;
    let mut bytes = Vec::with_capacity(STATE_PART.min(size.saturating_sub(from) as usize));
    (file.take(STATE_PART as u64))
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    Ok(Response::StatePart {
        bytes: Some(ByteBuf::from(bytes)),
        size,
    })
}

/// The state file a peer is writing in parts, if any: its parts go to a thread that writes
/// it as the replica writes any state file, so it lands whole and durable on the last part,
/// or not at all (a session that ends first leaves the one before in place).
#[derive(Default)]
pub(super) struct StateWrites(Option<Staged>);

struct Staged {
    name: String,
    /// Bytes taken so far: where the next part starts.
    taken: u64,
    parts: mpsc::SyncSender<Part>,
    writer: thread::JoinHandle<Result<(), EndpointError>>,
}

enum Part {
    Bytes(Vec<u8>),
    End,
}

impl StateWrites {
    pub(super) fn write_part(
        &mut self,
        replica: &Arc<LocalEndpoint>,
        name: String,
        from: u64,
        bytes: Vec<u8>,
        last: bool,
    ) -> Result<Response, EndpointError> {
        if from == 0 {
            self.0 = Some(Staged::begin(replica.clone(), name.clone()));
        }
        let len = bytes.len() as u64;
        let Some(staged) = (self.0.take()).filter(|s| s.name == name && s.taken == from) else {
            return Err(refused(replica, &name, "a part of it came out of order"));
        };
        if staged.taken + len > MAX_STATE {
            return Err(refused(replica, &name, "it is larger than 16 GiB"));
        }
        let staged = staged.take(bytes)?;
        match last {
            true => staged.finish().map(|()| Response::Done),
            false => {
                self.0 = Some(staged);
                Ok(Response::Done)
            }
        }
    }
}

impl Staged {
    fn begin(replica: Arc<LocalEndpoint>, name: String) -> Self {
        // Two parts queued at most: a peer sending faster than the disk takes them waits.
        let (parts, queued) = mpsc::sync_channel(2);
        let written = name.clone();
        let writer = thread::spawn(move || {
            replica.write_state(&written, &mut |out| {
                for part in &queued {
                    match part {
                        Part::Bytes(bytes) => out.write_all(&bytes)?,
                        Part::End => return Ok(()),
                    }
                }
                let why = "the peer stopped before the last part";
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, why))
            })
        });
        Self {
            name,
            taken: 0,
            parts,
            writer,
        }
    }

    fn take(mut self, bytes: Vec<u8>) -> Result<Self, EndpointError> {
        self.taken += bytes.len() as u64;
        match self.parts.send(Part::Bytes(bytes)) {
            Ok(()) => Ok(self),
            // The writer stopped: it says why.
            Err(_) => Err(self
                .outcome()
                .expect_err("a writer stops early only on an error")),
        }
    }

    fn finish(self) -> Result<(), EndpointError> {
        let _ = self.parts.send(Part::End);
        self.outcome()
    }

    fn outcome(self) -> Result<(), EndpointError> {
        drop(self.parts);
        self.writer.join().expect("a state file's writer panicked")
    }
}

fn refused(replica: &LocalEndpoint, name: &str, why: &str) -> EndpointError {
    let why = format!("{why}; it is not written, and the one before stays");
    let refused = io::Error::new(io::ErrorKind::InvalidInput, why);
    EndpointError::new("write state", place(replica, name), refused)
}

/// State `name` of `replica`, as users name it in messages.
fn place(replica: &LocalEndpoint, name: &str) -> String {
    format!("{}/.ferry/{name}", replica.display())
}
