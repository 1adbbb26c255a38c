//! `ferry-agent run`: accepts authenticated connections and runs each as its own session on
//! a blocking thread (file work blocks; a file server has few peers at once). A peer without a
//! valid certificate, a malformed, oversized or unexpected frame, or another protocol version
//! closes that connection with a logged reason, and the agent goes on serving everyone else.
//! A graceful stop ends idle sessions at once and waits for busy ones up to a deadline.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use ferry_wire::frame::FrameError;
use ferry_wire::link::LinkMeter;
use ferry_wire::transport;

use crate::fences::Fences;
use crate::session;

/// How long a stopping agent waits for its sessions to finish what they are doing.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// A pause after a failed accept (out of descriptors, say): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What an agent serves.
pub struct AgentConfig {
    pub name: String,
    pub roots: Vec<PathBuf>,
    /// For connecting to other agents when running a job handed to this one.
    pub client_tls: Arc<ClientConfig>,
    /// Where the fences are kept across restarts; in memory only without one.
    pub state_dir: Option<PathBuf>,
}

/// What every session of this agent shares.
pub struct Agent {
    pub config: AgentConfig,
    pub fences: Arc<Fences>,
}

/// Serves `listener` to peers that present a certificate `tls` accepts until `shutdown`
/// completes, then drains the sessions.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let fences = Arc::new(Fences::load(config.state_dir.as_deref())?);
    let agent = Arc::new(Agent { config, fences });
    let (stopping, stop) = watch::channel(false);
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let connection = connect(stream, peer, acceptor.clone(), agent.clone(), stop.clone());
                    sessions.spawn(connection);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    let _ = stopping.send(true);
    drain(sessions).await;
    Ok(())
}

/// Waits for the sessions to end, up to the deadline.
async fn drain(mut sessions: JoinSet<()>) {
    let all_ended = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_DEADLINE, all_ended)
        .await
        .is_err()
    {
        tracing::warn!(
            sessions = sessions.len(),
            "sessions still busy at the stop deadline; leaving them"
        );
    }
}

/// Authenticates one connection and runs its session.
async fn connect(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    agent: Arc<Agent>,
    stop: watch::Receiver<bool>,
) {
    // rsync's daemon loses ~40 ms per round trip without it.
    let _ = stream.set_nodelay(true);
    transport::keep_alive(&stream);
    let link = LinkMeter::new(&stream);
    let mut tls = match acceptor.accept(transport::socket(stream)).await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "refused connection: TLS handshake failed");
            return;
        }
    };
    tls.get_mut()
        .1
        .set_buffer_limit(Some(transport::TLS_SEND_BUFFER));
    let handle = tokio::runtime::Handle::current();
    let stream = transport::buffered(tls);
    let served = tokio::task::spawn_blocking(move || {
        handle.block_on(session::run(stream, Some(link), &agent, stop))
    });
    if let Ok(Err(e)) = served.await {
        log_end(peer, &e);
    }
}

fn log_end(peer: SocketAddr, error: &FrameError) {
    match error {
        FrameError::Closed => tracing::debug!(%peer, "connection closed"),
        other => tracing::warn!(%peer, error = %other, "closed connection"),
    }
}
