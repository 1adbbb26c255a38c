//! Record protection for a session once TLS has authenticated both ends.
//!
//! TLS 1.3 carries at most 16 KiB in a record, so its 22 bytes of header and tag cost 0.13 %
//! of a large file's bytes on the wire, several times what rsync's whole protocol costs. As
//! QUIC does, ferry keeps TLS for the handshake (certificates, key agreement) and protects the
//! frames that follow `Welcome` itself, in records of up to [`MAX_RECORD`] bytes:
//!
//! - a record is a 4-byte big-endian length, then that many bytes of AES-256-GCM ciphertext
//!   and its 16-byte tag; the length is the tag's associated data;
//! - each direction has its own secret, exported from the TLS session (RFC 8446 §7.5), so no
//!   record can be reflected back; a record's nonce is its number in its direction, so none
//!   can be replayed, dropped or reordered without the next one failing to open;
//! - keys change every [`RECORDS_PER_KEY`] records (HKDF-Expand of the secret with the key's
//!   number), which keeps each key far inside AES-GCM's safe limit (TLS 1.3's 2^24.5 records
//!   of 16 KiB).
//!
//! A record that does not open ends the connection with the reason; nothing in it is used.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most plaintext a record carries: large enough that the 20 bytes around it cost
/// under 0.01 %, small enough that the receiver starts on a frame while the rest is in flight.
pub const MAX_RECORD: usize = 256 * 1024;
const LEN: usize = 4;
const TAG: usize = 16;
/// Records under one key: at most 256 GiB, a quarter of what TLS 1.3 allows an AES-GCM key.
const RECORDS_PER_KEY: u64 = 1 << 20;
/// How much is read from the connection at once, at least: several small records per call.
const READ_AHEAD: usize = 64 * 1024;
const EXPORTER_LABEL: &[u8] = b"EXPORTER-ferry-records";
const KEY_INFO: &[u8] = b"ferry record key";

/// Which end of the session this is: each sends under its own secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Agent,
}

/// A connection whose frames travel in sealed records. It buffers both ways: written bytes
/// leave, sealed, when a record is full or on `flush`.
pub struct Sealed<S> {
    inner: S,
    send: Direction,
    receive: Direction,
    /// Room for the length, then the plaintext of the next record.
    pending: Vec<u8>,
    /// The sealed record being written, and how much of it has gone.
    outgoing: Vec<u8>,
    written: usize,
    /// Bytes read from the connection: the opened plaintext not yet handed out
    /// (`incoming[plain]`), then what follows it, not opened yet (`incoming[raw]`).
    incoming: Vec<u8>,
    plain: Range<usize>,
    raw: Range<usize>,
}

impl<S> Sealed<S> {
    /// Seals `inner` with keys exported from the TLS session that authenticated it; both ends
    /// must switch at the same frame.
    pub fn new<D>(inner: S, tls: &rustls::ConnectionCommon<D>, side: Side) -> io::Result<Self> {
        let export = |context: &[u8]| {
            tls.export_keying_material([0u8; 32], EXPORTER_LABEL, Some(context))
                .map_err(io::Error::other)
        };
        let (to_agent, to_client) = (export(b"to agent")?, export(b"to client")?);
        Ok(match side {
            Side::Client => Self::with_secrets(inner, &to_agent, &to_client),
            Side::Agent => Self::with_secrets(inner, &to_client, &to_agent),
        })
    }

    fn with_secrets(inner: S, send: &[u8; 32], receive: &[u8; 32]) -> Self {
        Self {
            inner,
            send: Direction::new(send, RECORDS_PER_KEY),
            receive: Direction::new(receive, RECORDS_PER_KEY),
            pending: vec![0; LEN],
            outgoing: Vec::new(),
            written: 0,
            incoming: Vec::new(),
            plain: 0..0,
            raw: 0..0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether bytes from the peer are here, read but not handed out yet.
    pub fn has_buffered_input(&self) -> bool {
        !self.plain.is_empty() || !self.raw.is_empty()
    }

    fn pending_len(&self) -> usize {
        self.pending.len() - LEN
    }

    /// Turns the pending plaintext into the outgoing record.
    fn seal_pending(&mut self) -> io::Result<()> {
        let header = ((self.pending_len() + TAG) as u32).to_be_bytes();
        self.pending[..LEN].copy_from_slice(&header);
        let (key, nonce) = self.send.next()?;
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut self.pending[LEN..])
            .map_err(|_| io::Error::other("sealing a record failed"))?;
        self.pending.extend_from_slice(tag.as_ref());
        std::mem::swap(&mut self.pending, &mut self.outgoing);
        self.pending.clear();
        self.pending.resize(LEN, 0);
        self.written = 0;
        Ok(())
    }

    /// Opens the next record if all of it has arrived; returns where its plaintext is.
    fn open_next(&mut self) -> io::Result<Option<Range<usize>>> {
        let Some(len) = self.next_record_len()? else {
            return Ok(None);
        };
        let start = self.raw.start;
        if self.raw.len() < LEN + len {
            return Ok(None);
        }
        let header: [u8; LEN] = self.incoming[start..start + LEN]
            .try_into()
            .expect("4 bytes");
        let body = start + LEN..start + LEN + len;
        let (key, nonce) = self.receive.next()?;
        key.open_in_place(nonce, Aad::from(header), &mut self.incoming[body.clone()])
            .map_err(|_| {
                invalid(
                    "a record failed authentication: altered, out of order, or not from this session",
                )
            })?;
        self.raw.start = body.end;
        Ok(Some(body.start..body.end - TAG))
    }

    /// The length of the record at the start of the unopened bytes, once its header is here;
    /// refused before anything is allocated for it if no record can be that long.
    fn next_record_len(&self) -> io::Result<Option<usize>> {
        if self.raw.len() < LEN {
            return Ok(None);
        }
        let header = &self.incoming[self.raw.start..self.raw.start + LEN];
        let len = u32::from_be_bytes(header.try_into().expect("4 bytes")) as usize;
        if !(TAG..=MAX_RECORD + TAG).contains(&len) {
            return Err(invalid(&format!(
                "a record of {len} bytes (at most {} and at least {TAG})",
                MAX_RECORD + TAG
            )));
        }
        Ok(Some(len))
    }

    /// Makes room after the unopened bytes for at least the rest of the next record.
    fn make_room(&mut self) -> io::Result<()> {
        let needed = LEN + self.next_record_len()?.unwrap_or(0);
        if self.raw.start + needed.max(READ_AHEAD) > self.incoming.len() {
            self.incoming.copy_within(self.raw.clone(), 0);
            self.raw = 0..self.raw.len();
        }
        let size = needed.max(READ_AHEAD);
        if self.incoming.len() < size {
            self.incoming.resize(size, 0);
        }
        Ok(())
    }
}

impl<S: AsyncWrite + Unpin> Sealed<S> {
    /// Seals what is pending, once the record before it is out, and writes it all.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.written < self.outgoing.len() {
                let out = &self.outgoing[self.written..];
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, out))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                continue;
            }
            if self.pending_len() == 0 {
                return Poll::Ready(Ok(()));
            }
            self.seal_pending()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sealed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending_len() == MAX_RECORD {
            ready!(this.poll_send_pending(cx))?;
        }
        let n = buf.len().min(MAX_RECORD - this.pending_len());
        this.pending.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sealed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = buf.remaining().min(this.plain.len());
                let from = this.plain.start;
                buf.put_slice(&this.incoming[from..from + n]);
                this.plain.start += n;
                return Poll::Ready(Ok(()));
            }
            if let Some(plain) = this.open_next()? {
                this.plain = plain;
                continue;
            }
            this.make_room()?;
            let end = this.raw.end;
            let mut space = ReadBuf::new(&mut this.incoming[end..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut space))?;
            let read = space.filled().len();
            if read == 0 {
                return Poll::Ready(match this.raw.is_empty() {
                    true => Ok(()),
                    false => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed in the middle of a record",
                    )),
                });
            }
            this.raw.end += read;
        }
    }
}

fn invalid(reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.to_owned())
}

/// One direction's secret, current key and record count.
struct Direction {
    secret: hkdf::Prk,
    key: LessSafeKey,
    records: u64,
    records_per_key: u64,
}

impl Direction {
    fn new(secret: &[u8; 32], records_per_key: u64) -> Self {
        let secret = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, secret);
        let key = key_for(&secret, 0);
        Self {
            secret,
            key,
            records: 0,
            records_per_key,
        }
    }

    /// The key and nonce of the next record: its number, under the key of its generation.
    fn next(&mut self) -> io::Result<(&LessSafeKey, Nonce)> {
        let number = self.records;
        if number > 0 && number.is_multiple_of(self.records_per_key) {
            self.key = key_for(&self.secret, number / self.records_per_key);
        }
        self.records = number
            .checked_add(1)
            .ok_or_else(|| io::Error::other("this session has sealed all the records it may"))?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[NONCE_LEN - 8..].copy_from_slice(&number.to_be_bytes());
        Ok((&self.key, Nonce::assume_unique_for_key(nonce)))
    }
}

fn key_for(secret: &hkdf::Prk, generation: u64) -> LessSafeKey {
    let generation = generation.to_be_bytes();
    let info = [KEY_INFO, &generation];
    let okm = secret
        .expand(&info, &AES_256_GCM)
        .expect("a 32-byte key is well within HKDF's output limit");
    LessSafeKey::new(UnboundKey::from(okm))
}

#[cfg(test)]
mod tests;
