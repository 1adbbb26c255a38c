//! The byte stream under a session. In use it is TLS over TCP (rustls's own records, TCP
//! keep-alive on); in tests, any in-memory pipe: sessions are written against [`Stream`], not
//! against a socket type.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader, BufStream};
use tokio::net::TcpStream;

/// Frames gathered before they go to TLS: many small frames then leave as a few full records
/// and packets. The caller flushes before it waits for the peer.
const WRITE_BUFFER: usize = 256 * 1024;
/// Encrypted bytes TLS may hold for the socket: a whole write buffer, so that it leaves in one
/// system call, as a burst. (rustls's default, 64 KiB, spreads it over four: more calls, and
/// data in flight more of the time, which [`crate::link`] would read as a busy link.)
pub const TLS_SEND_BUFFER: usize = WRITE_BUFFER;
/// Bytes read ahead: a batch of small requests is taken in a few reads.
const READ_BUFFER: usize = 64 * 1024;

/// Bytes read from the socket at once, below TLS: rustls asks for 4 KiB at a time, which on a
/// busy connection would cost several system calls per 16 KiB record.
const SOCKET_READ_AHEAD: usize = 256 * 1024;

/// Anything a session can run over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A session's stream, buffered both ways. Its buffered reads are cancel-safe
/// (`AsyncBufReadExt::fill_buf`), so a side can wait for the peer and for work of its own at once.
pub type Connection = BufStream<Box<dyn Stream>>;

pub fn buffered(stream: impl Stream + 'static) -> Connection {
    BufStream::with_capacity(READ_BUFFER, WRITE_BUFFER, Box::new(stream))
}

/// A connected socket with reads buffered, for TLS to run over.
pub fn socket(tcp: TcpStream) -> BufReader<TcpStream> {
    BufReader::with_capacity(SOCKET_READ_AHEAD, tcp)
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
