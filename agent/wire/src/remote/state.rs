//! A replica's state files over a session. A sync job's base is about 136 bytes a file, so a
//! share past 60,000 files has one larger than a frame: an agent that speaks protocol 14 takes
//! and gives it in parts of [`STATE_PART`] bytes; an older one whole, as far as a frame holds.

use std::io::{self, Read, Write};
use std::path::Path;

use ferry_engine::endpoint::{Result, WriteState};

use super::RemoteEndpoint;
use crate::protocol::{Request, Response, STATE_PART, STATE_PARTS};

impl RemoteEndpoint {
    /// Whether the session speaks protocol `version` or later.
    pub(super) fn speaks(&self, version: u32) -> bool {
        (self.session().as_ref()).is_some_and(|link| link.session.protocol >= version)
    }

    pub(super) fn read_state_from(&self, name: &str) -> Result<Option<Box<dyn Read + '_>>> {
        if !self.speaks(STATE_PARTS) {
            let request = Request::ReadState { name: name.into() };
            return match self.call("read state", Path::new(name), request)? {
                Response::State(bytes) => {
                    Ok(bytes.map(|b| Box::new(io::Cursor::new(b.into_vec())) as Box<dyn Read>))
                }
                other => Err(self.unexpected("read state", Path::new(name), &other)),
            };
        }
        let mut parts = Parts {
            endpoint: self,
            name: name.to_owned(),
            part: io::Cursor::new(Vec::new()),
            read: 0,
            size: None,
        };
        match parts.next_part()? {
            true => Ok(Some(Box::new(parts))),
            false => Ok(None),
        }
    }

    pub(super) fn write_state_to(&self, name: &str, produce: &mut WriteState) -> Result<()> {
        let place = || self.place(Path::new(name));
        if !self.speaks(STATE_PARTS) {
            let mut bytes = Vec::new();
            produce(&mut bytes).map_err(|e| self.error("write state", Path::new(name), e))?;
            if bytes.len() > WHOLE_STATE {
                return Err(self.too_large_for(name, bytes.len()));
            }
            let request = Request::WriteState {
                name: name.into(),
                bytes,
            };
            return self.expect_done("write state", Path::new(name), request);
        }
        let mut out = io::BufWriter::with_capacity(
            STATE_PART,
            PartsOut {
                endpoint: self,
                name,
                sent: 0,
            },
        );
        let produced = produce(&mut out).and_then(|()| out.flush());
        let carried = |e| ferry_engine::endpoint::EndpointError::carried("write state", place(), e);
        produced.map_err(carried)?;
        let mut out = out.into_inner().map_err(|e| carried(e.into_error()))?;
        out.send(Vec::new(), true)
    }
}

/// The largest state file an agent before protocol 14 takes: what a frame holds, less its
/// message's other fields.
const WHOLE_STATE: usize = crate::frame::MAX_FRAME as usize - 4096;

impl RemoteEndpoint {
    fn too_large_for(&self, name: &str, size: usize) -> ferry_engine::endpoint::EndpointError {
        let why = format!(
            "a state file of {size} bytes is larger than agent {} takes in one frame: an \
             agent of protocol {STATE_PARTS} or later (this release) takes it in parts; \
             upgrade ferry-agent there",
            self.dial.agent
        );
        let error = io::Error::new(io::ErrorKind::InvalidInput, why);
        self.error("write state", Path::new(name), error)
    }
}

/// A state file read a part at a time.
struct Parts<'a> {
    endpoint: &'a RemoteEndpoint,
    name: String,
    part: io::Cursor<Vec<u8>>,
    /// Bytes asked for so far.
    read: u64,
    /// The file's size, as its first part said.
    size: Option<u64>,
}

impl Parts<'_> {
    /// Asks for the next part: `false` when there is no such file.
    fn next_part(&mut self) -> Result<bool> {
        let (op, rel) = ("read state", Path::new(&self.name));
        let request = Request::ReadStatePart {
            name: self.name.clone(),
            from: self.read,
        };
        let (bytes, size) = match self.endpoint.call(op, rel, request)? {
            Response::StatePart { bytes: None, .. } => return Ok(false),
            Response::StatePart {
                bytes: Some(bytes),
                size,
            } => (bytes.into_vec(), size),
            other => return Err(self.endpoint.unexpected(op, rel, &other)),
        };
        let past_end = self.read + bytes.len() as u64 > size;
        if *self.size.get_or_insert(size) != size || past_end || bytes.len() > STATE_PART {
            let why = "the state file changed while it was read, or the agent sent more of it \
                       than it holds";
            let error = io::Error::new(io::ErrorKind::InvalidData, why);
            return Err(self.endpoint.error(op, rel, error));
        }
        self.read += bytes.len() as u64;
        self.part = io::Cursor::new(bytes);
        Ok(true)
    }
}

impl Read for Parts<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.part.read(buf)?;
            if n > 0 || buf.is_empty() || Some(self.read) == self.size {
                return Ok(n);
            }
            match self.next_part() {
                Ok(true) if self.part.get_ref().is_empty() => {
                    let short = "the agent sent an empty part of a state file before its end";
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, short));
                }
                Ok(true) => {}
                Ok(false) => return Err(io::ErrorKind::NotFound.into()),
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }
}

/// A state file written a part at a time, behind a buffer of one part.
struct PartsOut<'a> {
    endpoint: &'a RemoteEndpoint,
    name: &'a str,
    sent: u64,
}

impl PartsOut<'_> {
    fn send(&mut self, bytes: Vec<u8>, last: bool) -> Result<()> {
        let len = bytes.len() as u64;
        let request = Request::WriteStatePart {
            name: self.name.into(),
            from: self.sent,
            bytes,
            last,
        };
        (self.endpoint).expect_done("write state", Path::new(self.name), request)?;
        self.sent += len;
        Ok(())
    }
}

impl Write for PartsOut<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let part = &bytes[..bytes.len().min(STATE_PART)];
        self.send(part.to_vec(), false).map_err(io::Error::other)?;
        Ok(part.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
