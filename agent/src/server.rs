//! `ferry-agent run`: serves authenticated connections. Each connection is its own task; a
//! peer without a valid certificate, a malformed, oversized or unexpected frame, or another
//! protocol version closes that connection with a logged reason, and the agent goes on
//! serving everyone else.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::frame::{self, FrameError};
use crate::protocol::{PROTOCOL_VERSION, Request, Response};

/// What an agent serves.
#[derive(Clone)]
pub struct AgentConfig {
    pub name: String,
    pub roots: Vec<PathBuf>,
    pub tls: Arc<ServerConfig>,
}

/// Serves `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, config: AgentConfig, shutdown: impl Future<Output = ()>) {
    let acceptor = TlsAcceptor::from(config.tls.clone());
    let config = Arc::new(config);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // rsync's daemon loses ~40 ms per round trip without it.
                    let _ = stream.set_nodelay(true);
                    let (acceptor, config) = (acceptor.clone(), config.clone());
                    tokio::spawn(async move {
                        match acceptor.accept(stream).await {
                            Ok(tls) => {
                                if let Err(e) = session(tls, &config).await {
                                    log_end(peer, &e);
                                }
                            }
                            Err(e) => tracing::warn!(%peer, error = %e, "refused connection: TLS handshake failed"),
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accepting a connection failed"),
            },
        }
    }
}

fn log_end(peer: SocketAddr, error: &FrameError) {
    match error {
        FrameError::Closed => tracing::debug!(%peer, "connection closed"),
        other => tracing::warn!(%peer, error = %other, "closed connection"),
    }
}

async fn session(
    mut tls: impl AsyncRead + AsyncWrite + Unpin,
    config: &AgentConfig,
) -> Result<(), FrameError> {
    match frame::read::<Request>(&mut tls).await? {
        Request::Hello { version, client } if version == PROTOCOL_VERSION => {
            tracing::info!(client, "session started");
            let roots = config
                .roots
                .iter()
                .map(|r| r.display().to_string())
                .collect();
            let software = env!("CARGO_PKG_VERSION").to_owned();
            let welcome = Response::Welcome {
                version: PROTOCOL_VERSION,
                agent: config.name.clone(),
                software,
                roots,
            };
            frame::write(&mut tls, &welcome).await?;
        }
        Request::Hello { version, client } => {
            let reason = format!(
                "protocol version {version} from {client}; this agent speaks {PROTOCOL_VERSION}"
            );
            return refuse(&mut tls, reason).await;
        }
        other => return refuse(&mut tls, format!("expected Hello first, got {other:?}")).await,
    }
    loop {
        let response = match frame::read::<Request>(&mut tls).await? {
            Request::Ping { nonce } => Response::Pong { nonce },
            Request::Hello { .. } => return Err(FrameError::Unexpected("a second Hello".into())),
        };
        frame::write(&mut tls, &response).await?;
    }
}

/// Tells the peer why the session ends, then ends it.
async fn refuse(tls: &mut (impl AsyncWrite + Unpin), reason: String) -> Result<(), FrameError> {
    frame::write(
        tls,
        &Response::Refused {
            reason: reason.clone(),
        },
    )
    .await?;
    Err(FrameError::Unexpected(reason))
}
