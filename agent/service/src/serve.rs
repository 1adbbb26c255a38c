//! `ferry-agent run`: accepts authenticated connections and runs each as its own session on
//! a blocking thread (file work blocks; a file server has few peers at once). A peer without a
//! valid certificate, a malformed, oversized or unexpected frame, or another protocol version
//! closes that connection with a logged reason, and the agent goes on serving everyone else.
//! Connections are capped in all and per address, and a handshake that does not finish in
//! time is dropped, so idle sockets cannot use up the agent. A graceful stop ends idle
//! sessions at once and waits for busy ones up to a deadline.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use ferry_wire::frame::FrameError;
use ferry_wire::identity::{self, Peer};
use ferry_wire::link::LinkMeter;
use ferry_wire::transport;

use ferry_engine::endpoint::LocalEndpoint;

use crate::config::{Limits, ServedRoot};
use crate::fences::Fences;
use crate::journal::Journals;
use crate::{roots, session};

/// How long a stopping agent waits for its sessions to finish what they are doing.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// A pause after a failed accept (out of descriptors, say): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What an agent serves, and to whom.
pub struct AgentConfig {
    pub name: String,
    pub roots: Vec<ServedRoot>,
    /// The agents a run handed over here may push to, by name, and their addresses; empty:
    /// the addresses the scheduler's order names (each checked by its certificate's name).
    pub peers: BTreeMap<String, String>,
    pub limits: Limits,
    /// For connecting to other agents when running a job handed to this one.
    pub client_tls: Arc<ClientConfig>,
    /// Where the fences are kept across restarts; in memory only without one.
    pub state_dir: Option<PathBuf>,
    /// How often a run handed over here scans everything although the change journals could
    /// say what changed; `None`: it always scans everything.
    pub full_scan_every: Option<Duration>,
}

/// What every session of this agent shares.
pub struct Agent {
    pub config: AgentConfig,
    pub fences: Arc<Fences>,
    /// Folder watches open now, per peer name.
    pub watches: Counts<String>,
    /// The served roots' change journals (none in tests that serve sessions alone).
    pub journals: Journals,
}

impl Agent {
    pub fn new(config: AgentConfig, fences: Fences) -> Self {
        Self {
            config,
            fences: Arc::new(fences),
            watches: Counts::default(),
            journals: Journals::default(),
        }
    }

    /// The replica at `path` (from a peer), inside one of the served roots (see
    /// [`roots::replica`]), with that root's change journal; and the root.
    pub fn replica(&self, path: &str) -> Result<(LocalEndpoint, &ServedRoot), String> {
        let (replica, root) = roots::replica(&self.config.roots, path)?;
        match self.journals.of(&root.path) {
            Some(journal) => Ok((replica.journaled(journal), root)),
            None => Ok((replica, root)),
        }
    }
}

/// Things open now, counted per key, each released when its [`Held`] drops.
pub struct Counts<K> {
    open: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Self {
            open: Arc::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Counts<K> {
    /// One more for `key`, unless it has `limit` already; `None` then.
    pub fn take(&self, key: &K, limit: usize) -> Option<Held<K>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key.clone()).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Held {
            open: self.open.clone(),
            key: key.clone(),
        })
    }

    pub fn total(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.values().sum()
    }
}

/// One of the things [`Counts`] counts, released when dropped.
pub struct Held<K: std::hash::Hash + Eq> {
    open: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: std::hash::Hash + Eq> Drop for Held<K> {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
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
    let fences = Fences::load(config.state_dir.as_deref(), &served_paths(&config))?;
    let journals = match config.full_scan_every {
        Some(_) => Journals::start(&config.roots, config.state_dir.as_deref()),
        None => Journals::default(),
    };
    let agent = Arc::new(Agent {
        journals,
        ..Agent::new(config, fences)
    });
    let connections = Counts::<IpAddr>::default();
    let give_back = GiveBack::default();
    let (stopping, stop) = watch::channel(false);
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => give_back.soon(),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(held) = admit(&connections, peer, &agent.config.limits) else {
                        continue;
                    };
                    let connection = connect(stream, peer, acceptor.clone(), agent.clone(), stop.clone());
                    sessions.spawn(async move {
                        connection.await;
                        drop(held);
                    });
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

/// Gives the memory sessions freed (a large scan's trees) back to the kernel a moment after
/// they end, once for a burst of ends; a monitor's watch, open for days, does not hold it up.
#[derive(Default)]
struct GiveBack {
    pending: Arc<AtomicBool>,
}

impl GiveBack {
    const AFTER: Duration = Duration::from_millis(200);

    fn soon(&self) {
        if self.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let pending = self.pending.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Self::AFTER).await;
            pending.store(false, Ordering::Release);
            let _ = tokio::task::spawn_blocking(ferry_engine::memory::give_back_freed).await;
        });
    }
}

/// Counts a new connection from `peer` in, or refuses it (by dropping it) when the agent or
/// that address has as many as the limits allow.
fn admit(connections: &Counts<IpAddr>, peer: SocketAddr, limits: &Limits) -> Option<Held<IpAddr>> {
    if connections.total() >= limits.max_connections {
        tracing::warn!(%peer, limit = limits.max_connections, "refused a connection: the agent has as many as it takes");
        refused("connection_limit");
        return None;
    }
    let held = connections.take(&peer.ip(), limits.max_connections_per_address);
    if held.is_none() {
        tracing::warn!(%peer, limit = limits.max_connections_per_address, "refused a connection: that address has as many as it may");
        refused("connection_limit");
    }
    held
}

/// Counts a refusal at `/metrics`, by a reason of a few fixed kinds.
pub(crate) fn refused(reason: &'static str) {
    metrics::counter!("ferry_agent_refusals_total", "reason" => reason).increment(1);
}

/// The folders served, as configured.
fn served_paths(config: &AgentConfig) -> Vec<PathBuf> {
    config.roots.iter().map(|root| root.path.clone()).collect()
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
    let deadline = agent.config.limits.handshake_deadline();
    let accepted = tokio::time::timeout(deadline, acceptor.accept(transport::socket(stream)));
    let mut tls = match accepted.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "refused connection: TLS handshake failed");
            refused("tls");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "refused connection: no TLS handshake within {deadline:?}");
            refused("tls");
            return;
        }
    };
    let identity = match certified(&tls) {
        Ok(identity) => identity,
        Err(why) => {
            tracing::warn!(%peer, why, "refused connection: its certificate names no ferry peer");
            refused("certificate");
            return;
        }
    };
    tls.get_mut()
        .1
        .set_buffer_limit(Some(transport::TLS_SEND_BUFFER));
    let handle = tokio::runtime::Handle::current();
    let stream = transport::buffered(tls);
    let served = tokio::task::spawn_blocking(move || {
        handle.block_on(session::run(stream, Some(link), &agent, identity, stop))
    });
    metrics::gauge!("ferry_agent_sessions").increment(1.0);
    let ended = served.await;
    metrics::gauge!("ferry_agent_sessions").decrement(1.0);
    if let Ok(Err(e)) = ended {
        log_end(peer, &e);
    }
}

/// Who the peer of an accepted connection is, by the certificate it presented.
fn certified<IO>(tls: &tokio_rustls::server::TlsStream<IO>) -> Result<Peer, String> {
    let certificate = (tls.get_ref().1.peer_certificates())
        .and_then(|chain| chain.first())
        .ok_or("no certificate")?;
    identity::of(certificate)
}

fn log_end(peer: SocketAddr, error: &FrameError) {
    match error {
        FrameError::Closed => tracing::debug!(%peer, "connection closed"),
        other => tracing::warn!(%peer, error = %other, "closed connection"),
    }
}
