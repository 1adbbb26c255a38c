//! The messages between a scheduler (or another agent) and an agent, after the TLS handshake:
//! the client says `Hello` with its protocol version, the agent answers `Welcome` (or
//! `Refused` and closes), then requests and responses alternate. Documented in
//! docs/PROTOCOL.md; new fields are added, never renamed (frames use named fields).

use serde::{Deserialize, Serialize};

/// Bumped when a message changes meaning; peers with another version are refused by name.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Hello { version: u32, client: String },
    Ping { nonce: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Welcome {
        version: u32,
        agent: String,
        software: String,
        roots: Vec<String>,
    },
    Pong {
        nonce: u64,
    },
    /// Why the agent closes the connection.
    Refused {
        reason: String,
    },
}
