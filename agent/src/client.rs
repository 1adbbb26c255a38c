//! Connecting to an agent: TCP with TCP_NODELAY, mutual TLS, and the `Hello` handshake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::frame::{self, FrameError};
use crate::protocol::{PROTOCOL_VERSION, Request, Response};

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

/// An open, authenticated session with an agent.
pub struct Session {
    stream: TlsStream<TcpStream>,
    pub agent: String,
    pub software: String,
    pub roots: Vec<String>,
}

impl Session {
    /// Connects to `agent` at `address` as `client`; the agent's certificate must carry its name.
    pub async fn connect(
        agent: &str,
        address: &str,
        client: &str,
        tls: Arc<ClientConfig>,
    ) -> Result<Self, ClientError> {
        let connect_error = |source| ClientError::Connect {
            agent: agent.into(),
            address: address.into(),
            source,
        };
        let tcp = TcpStream::connect(address).await.map_err(connect_error)?;
        tcp.set_nodelay(true).map_err(connect_error)?;
        let name = ServerName::try_from(agent.to_owned())
            .map_err(|e| connect_error(std::io::Error::other(e)))?;
        let mut stream = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|source| ClientError::Tls {
                agent: agent.into(),
                source,
            })?;
        let frame_error = |source| ClientError::Frame {
            agent: agent.into(),
            source,
        };
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            client: client.into(),
        };
        frame::write(&mut stream, &hello)
            .await
            .map_err(frame_error)?;
        match frame::read::<Response>(&mut stream)
            .await
            .map_err(frame_error)?
        {
            Response::Welcome {
                agent: name,
                software,
                roots,
                ..
            } => Ok(Self {
                stream,
                agent: name,
                software,
                roots,
            }),
            Response::Refused { reason } => Err(ClientError::Refused {
                agent: agent.into(),
                reason,
            }),
            other => Err(frame_error(FrameError::Unexpected(format!(
                "{other:?} instead of Welcome"
            )))),
        }
    }

    /// One request-response round trip; returns how long it took.
    pub async fn ping(&mut self) -> Result<Duration, ClientError> {
        let frame_error = |source| ClientError::Frame {
            agent: self.agent.clone(),
            source,
        };
        let started = Instant::now();
        let nonce = started.elapsed().as_nanos() as u64 ^ 0x5eed;
        frame::write(&mut self.stream, &Request::Ping { nonce })
            .await
            .map_err(frame_error)?;
        match frame::read::<Response>(&mut self.stream)
            .await
            .map_err(frame_error)?
        {
            Response::Pong { nonce: echoed } if echoed == nonce => Ok(started.elapsed()),
            other => Err(frame_error(FrameError::Unexpected(format!(
                "{other:?} instead of Pong"
            )))),
        }
    }
}
