//! Connecting to an agent: TCP with TCP_NODELAY, mutual TLS, the `Hello` handshake, then
//! frames in sealed records ([`crate::seal`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::frame::{self, FrameError};
use crate::link::LinkMeter;
use crate::protocol::{Fence, PROTOCOL_VERSION, Request, Response};
use crate::seal::{Sealed, Side};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach agent {agent} at {address}: {source}")]
    Connect {
        agent: String,
        address: String,
        source: std::io::Error,
    },
    #[error(
        "agent {agent}: TLS handshake failed ({source}); are both certificates from the same `ferry ca`?"
    )]
    Tls {
        agent: String,
        source: std::io::Error,
    },
    #[error("agent {agent} refused the session: {reason}")]
    Refused { agent: String, reason: String },
    #[error("agent {agent}: {source}")]
    Frame { agent: String, source: FrameError },
}

/// Turns on TCP keep-alive probes: a session that waits quietly (a watch on a folder nobody
/// changes, a long run's progress) learns within about a minute that its peer's machine
/// crashed or the network between them went, instead of waiting forever.
pub fn keep_alive(tcp: &TcpStream) {
    let probes = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&probes) {
        tracing::warn!(error = %e, "could not turn on TCP keep-alive");
    }
}

/// How to reach an agent, and as whom.
#[derive(Clone)]
pub struct Dial {
    pub agent: String,
    pub address: String,
    /// The connecting side's certificate name.
    pub client: String,
    pub tls: Arc<ClientConfig>,
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dial")
            .field("agent", &self.agent)
            .field("address", &self.address)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// An open, authenticated session with an agent.
pub struct Session {
    stream: Sealed<TcpStream>,
    /// Whether file data sent on `stream` goes compressed.
    link: LinkMeter,
    pub agent: String,
    pub software: String,
    pub roots: Vec<String>,
    /// Bytes sent and received on the wire, frames and all.
    wire: Arc<AtomicU64>,
}

impl Session {
    /// Connects as `dial` says, working for the lease `fence` if any; the agent's certificate
    /// must carry its name. Bytes on the wire are added to `wire`.
    pub async fn connect(
        dial: &Dial,
        fence: Option<Fence>,
        wire: Arc<AtomicU64>,
    ) -> Result<Self, ClientError> {
        let agent = &dial.agent;
        let connect_error = |source| ClientError::Connect {
            agent: agent.clone(),
            address: dial.address.clone(),
            source,
        };
        let tcp = TcpStream::connect(&dial.address)
            .await
            .map_err(connect_error)?;
        tcp.set_nodelay(true).map_err(connect_error)?;
        keep_alive(&tcp);
        let link = LinkMeter::new(&tcp);
        let name = ServerName::try_from(agent.clone())
            .map_err(|e| connect_error(std::io::Error::other(e)))?;
        let mut tls = TlsConnector::from(dial.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|source| ClientError::Tls {
                agent: agent.clone(),
                source,
            })?;
        let frame_error = |source| ClientError::Frame {
            agent: agent.clone(),
            source,
        };
        // The handshake goes over TLS itself, so that peers of different versions still
        // understand each other's refusal; what follows goes in sealed records.
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            client: dial.client.clone(),
            fence,
        };
        let sent = frame::write(&mut tls, &hello).await.map_err(frame_error)?;
        let (response, received) = frame::read_counted(&mut tls).await.map_err(frame_error)?;
        wire.fetch_add((sent + received) as u64, Ordering::Relaxed);
        let (software, roots, name) = match response {
            Response::Welcome {
                agent: name,
                software,
                roots,
                ..
            } => (software, roots, name),
            Response::Refused { reason } => {
                return Err(ClientError::Refused {
                    agent: agent.clone(),
                    reason,
                });
            }
            other => {
                let wanted = format!("{other:?} instead of Welcome");
                return Err(frame_error(FrameError::Unexpected(wanted)));
            }
        };
        let (tcp, connection) = tls.into_inner();
        let stream = Sealed::new(tcp, &connection, Side::Client)
            .map_err(|e| frame_error(FrameError::Io(e)))?;
        Ok(Self {
            stream,
            link,
            agent: name,
            software,
            roots,
            wire,
        })
    }

    pub fn unexpected(&self, got: &Response, wanted: &str) -> ClientError {
        ClientError::Frame {
            agent: self.agent.clone(),
            source: FrameError::Unexpected(format!("{got:?} instead of {wanted}")),
        }
    }

    fn frame_error(&self, source: FrameError) -> ClientError {
        ClientError::Frame {
            agent: self.agent.clone(),
            source,
        }
    }

    /// Sends a request; it leaves when this side next waits for an answer ([`Self::receive`]).
    pub async fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let data = self.link.data();
        let sent = frame::write_buffered(&mut self.stream, request, data)
            .await
            .map_err(|e| self.frame_error(e))?;
        self.wire.fetch_add(sent as u64, Ordering::Relaxed);
        Ok(())
    }

    pub async fn receive(&mut self) -> Result<Response, ClientError> {
        self.stream
            .flush()
            .await
            .map_err(|e| self.frame_error(e.into()))?;
        let (response, size) = frame::read_counted(&mut self.stream)
            .await
            .map_err(|e| self.frame_error(e))?;
        self.wire.fetch_add(size as u64, Ordering::Relaxed);
        Ok(response)
    }

    /// One request, one response.
    pub async fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        self.send(request).await?;
        self.receive().await
    }

    /// One request-response round trip; returns how long it took.
    pub async fn ping(&mut self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        let nonce = started.elapsed().as_nanos() as u64 ^ 0x5eed;
        match self.call(&Request::Ping { nonce }).await? {
            Response::Pong { nonce: echoed } if echoed == nonce => Ok(started.elapsed()),
            other => Err(self.unexpected(&other, "Pong")),
        }
    }

    /// Separate halves, to send keep-alives while a long answer streams in.
    pub fn split(self) -> (SessionReader, SessionWriter) {
        let (read, write) = tokio::io::split(self.stream);
        let reader = SessionReader {
            read,
            agent: self.agent.clone(),
        };
        let writer = SessionWriter {
            write,
            agent: self.agent,
        };
        (reader, writer)
    }
}

pub struct SessionReader {
    read: ReadHalf<Sealed<TcpStream>>,
    pub agent: String,
}

impl SessionReader {
    pub async fn receive(&mut self) -> Result<Response, ClientError> {
        frame::read(&mut self.read)
            .await
            .map_err(|source| ClientError::Frame {
                agent: self.agent.clone(),
                source,
            })
    }
}

pub struct SessionWriter {
    write: WriteHalf<Sealed<TcpStream>>,
    pub agent: String,
}

impl SessionWriter {
    pub async fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        frame::write(&mut self.write, request)
            .await
            .map(drop)
            .map_err(|source| ClientError::Frame {
                agent: self.agent.clone(),
                source,
            })
    }
}
