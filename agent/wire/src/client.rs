//! Connecting to an agent: TCP with TCP_NODELAY, mutual TLS, the `Hello` handshake, then
//! frames. [`Session::start`] runs the handshake over any [`Stream`], so the session is tested
//! over in-memory pipes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::frame::{self, Data, FrameError};
use crate::link::LinkMeter;
use crate::protocol::{Fence, OLDEST_PROTOCOL, PROTOCOL_VERSION, Request, Response, brief};
use crate::transport::{self, Connection, Stream};
use ferry_engine::meta::Keep;

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
    #[error("agent {agent}: no session: the run did not prepare this replica")]
    NoSession { agent: String },
    #[error(transparent)]
    WrongContext(#[from] crate::blocking::WrongContext),
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

/// Opens sessions with one agent, for the lease given (if any), counting their bytes in the
/// counter given: over TCP and TLS in use ([`Dial::connector`]), over any other [`Stream`] in
/// tests.
pub type Connector = Arc<
    dyn Fn(
            Option<Fence>,
            Arc<AtomicU64>,
        ) -> Pin<Box<dyn Future<Output = Result<Session, ClientError>> + Send>>
        + Send
        + Sync,
>;

impl Dial {
    /// Connects over TCP and TLS as this dial says.
    pub fn connector(&self) -> Connector {
        let dial = self.clone();
        Arc::new(move |fence, wire| {
            let dial = dial.clone();
            Box::pin(async move { Session::connect(&dial, fence, wire).await })
        })
    }
}

/// An open, authenticated session with an agent.
pub struct Session {
    stream: Connection,
    /// Whether file data sent on `stream` goes compressed; `None` when it is not a socket.
    link: Option<LinkMeter>,
    /// The protocol version agreed on (the agent's answer to our range).
    pub protocol: u32,
    pub agent: String,
    pub software: String,
    pub roots: Vec<String>,
    /// The metadata the agent keeps (see [`Keep`]).
    pub keeps: Keep,
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
        transport::keep_alive(&tcp);
        let link = LinkMeter::new(&tcp);
        let name = ServerName::try_from(agent.clone())
            .map_err(|e| connect_error(std::io::Error::other(e)))?;
        let mut tls = TlsConnector::from(dial.tls.clone())
            .connect(name, transport::socket(tcp))
            .await
            .map_err(|source| ClientError::Tls {
                agent: agent.clone(),
                source,
            })?;
        tls.get_mut()
            .1
            .set_buffer_limit(Some(transport::TLS_SEND_BUFFER));
        let mut session = Self::start(tls, &dial.client, fence, agent, wire).await?;
        session.link = Some(link);
        Ok(session)
    }

    /// Says `Hello` over `stream` as `client` (working for the lease `fence`, if any) to the
    /// agent named `agent`, and waits for its `Welcome`.
    pub async fn start(
        stream: impl Stream + 'static,
        client: &str,
        fence: Option<Fence>,
        agent: &str,
        wire: Arc<AtomicU64>,
    ) -> Result<Self, ClientError> {
        let mut stream = transport::buffered(stream);
        let frame_error = |source| ClientError::Frame {
            agent: agent.to_owned(),
            source,
        };
        let hello = Request::Hello {
            version: OLDEST_PROTOCOL,
            newest: Some(PROTOCOL_VERSION),
            client: client.to_owned(),
            fence,
        };
        let sent = frame::write(&mut stream, &hello)
            .await
            .map_err(frame_error)?;
        let (response, received) = frame::read_counted(&mut stream)
            .await
            .map_err(frame_error)?;
        wire.fetch_add((sent + received) as u64, Ordering::Relaxed);
        match response {
            Response::Welcome { version, .. }
                if !(OLDEST_PROTOCOL..=PROTOCOL_VERSION).contains(&version) =>
            {
                let wanted = format!(
                    "Welcome in protocol {version}, which this side does not speak \
                     ({OLDEST_PROTOCOL} to {PROTOCOL_VERSION})"
                );
                Err(frame_error(FrameError::Unexpected(wanted)))
            }
            Response::Welcome {
                version,
                agent: name,
                software,
                roots,
                keeps,
            } => Ok(Self {
                stream,
                link: None,
                protocol: version,
                agent: name,
                software,
                roots,
                keeps,
                wire,
            }),
            Response::Refused { reason } => Err(ClientError::Refused {
                agent: agent.to_owned(),
                reason,
            }),
            other => {
                let wanted = format!("{} instead of Welcome", brief(&other));
                Err(frame_error(FrameError::Unexpected(wanted)))
            }
        }
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
        let data = self.link.as_mut().map_or(Data::Raw, LinkMeter::data);
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
    read: ReadHalf<Connection>,
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
    write: WriteHalf<Connection>,
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
