//! ferry's agent protocol, and everything that speaks it from the calling side.
//!
//! It owns the messages ([`protocol`]) and their framing ([`frame`]), mutual TLS ([`tls`]),
//! the client session ([`client`]), a folder on an agent as an engine endpoint ([`remote`]),
//! the hand-over of a whole run to an agent ([`handoff`]) and folder watches, local or on an
//! agent ([`watch`]). [`blocking`] is the one place where the engine's blocking calls wait on
//! the network's async tasks.
//!
//! It knows no policy: who may do what, which lease is current and what to run when belong to
//! the agent service and the scheduler, which both sit above this crate. It never touches the
//! database.

pub mod blocking;
pub mod client;
pub mod frame;
pub mod handoff;
pub mod identity;
pub mod link;
pub mod observe;
pub mod protocol;
pub mod remote;
pub mod tls;
pub mod transport;
pub mod watch;
