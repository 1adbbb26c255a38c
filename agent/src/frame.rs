//! Frames on the wire between schedulers and agents: a 4-byte big-endian length, then a
//! MessagePack body with named fields (so a newer peer's added fields do not break an older
//! one). A frame over the size limit, a truncated one or a body that does not decode is an
//! error for that connection only, never a panic.
//!
//! Bodies worth it are zstd-compressed: the length's top bit says so. Compression is skipped
//! for small bodies and for bodies it would not shrink (already-compressed file data), so it
//! costs nothing where it does not pay.

use std::cell::RefCell;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame accepted, compressed or not: a delta's literal chunks and file data travel
/// in pieces well below it.
pub const MAX_FRAME: u32 = 8 * 1024 * 1024;
/// Set in the length prefix when the body is zstd-compressed.
const COMPRESSED: u32 = 1 << 31;
/// Bodies shorter than this go as they are: the saving would not pay for the work.
const MIN_COMPRESS: usize = 512;
/// zstd's fastest level: it passes over incompressible data about twice as fast as the
/// default (3), which sends only about 1 % less of the bench's mixed small files.
const ZSTD_LEVEL: i32 = 1;
/// How much of a large body is tried first to see whether compressing it pays.
const PROBE: usize = 16 * 1024;
/// The trial takes its bytes from this many places spread over the body: a batch of small
/// files whose first ones are incompressible may still be well worth compressing.
const PROBE_SLICES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(u32),
    #[error("malformed frame: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    #[error("malformed compressed frame: {0}")]
    Decompress(std::io::Error),
    #[error("cannot encode a frame: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// `body`, compressed when that makes it at least 1/16 smaller. A large body is first judged
/// by a sample of it, so already-compressed data costs one small trial, not a full pass.
fn maybe_compress(body: Vec<u8>) -> (Vec<u8>, bool) {
    if body.len() < MIN_COMPRESS {
        return (body, false);
    }
    if body.len() > 4 * PROBE {
        let probe = compress(&probe_sample(&body));
        if probe.is_none_or(|probe| probe.len() >= PROBE - PROBE / 16) {
            return (body, false);
        }
    }
    match compress(&body) {
        Some(small) if small.len() < body.len() - body.len() / 16 => (small, true),
        _ => (body, false),
    }
}

/// `PROBE` bytes of `body`, in slices from its start to its end.
fn probe_sample(body: &[u8]) -> Vec<u8> {
    let (slice, step) = (PROBE / PROBE_SLICES, body.len() / PROBE_SLICES);
    let mut sample = Vec::with_capacity(PROBE);
    for start in (0..PROBE_SLICES).map(|k| k * step) {
        sample.extend_from_slice(&body[start..start + slice]);
    }
    sample
}

fn compress(data: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|slot| {
        let compressor = match slot {
            Some(c) => c,
            None => slot.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()?),
        };
        compressor.compress(data).ok()
    })
}

/// Encodes `message` as one frame (length prefix included).
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let (prefix, body) = encode_parts(message)?;
    Ok([&prefix[..], &body].concat())
}

/// A frame's length prefix and body, apart: a large body is written as it is, not copied
/// behind its prefix first.
fn encode_parts<T: Serialize>(message: &T) -> Result<([u8; 4], Vec<u8>), FrameError> {
    let (body, compressed) = maybe_compress(rmp_serde::to_vec_named(message)?);
    let len = u32::try_from(body.len()).ok().filter(|&n| n <= MAX_FRAME);
    let len = len.ok_or(FrameError::TooLarge(
        u32::try_from(body.len()).unwrap_or(u32::MAX),
    ))?;
    let prefix = if compressed { len | COMPRESSED } else { len };
    Ok((prefix.to_be_bytes(), body))
}

/// The body's length from a prefix, checked against the limit, and whether it is compressed.
fn body_len(prefix: [u8; 4]) -> Result<(usize, bool), FrameError> {
    let prefix = u32::from_be_bytes(prefix);
    let len = prefix & !COMPRESSED;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok((len as usize, prefix & COMPRESSED != 0))
}

fn decode_body<T: DeserializeOwned>(body: &[u8], compressed: bool) -> Result<T, FrameError> {
    if !compressed {
        return Ok(rmp_serde::from_slice(body)?);
    }
    let plain = DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new().map_err(FrameError::Decompress)?),
        };
        // The limit also bounds a decompression bomb.
        decompressor
            .decompress(body, MAX_FRAME as usize)
            .map_err(FrameError::Decompress)
    })?;
    Ok(rmp_serde::from_slice(&plain)?)
}

/// Decodes one frame from the start of `bytes`: the message and how many bytes it used, or
/// `None` when `bytes` does not hold a whole frame yet.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(prefix) = bytes.get(..4) else {
        return Ok(None);
    };
    let (len, compressed) = body_len(prefix.try_into().expect("4 bytes"))?;
    let end = 4 + len;
    let Some(body) = bytes.get(4..end) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body, compressed)?, end)))
}

/// Writes one frame and flushes it; returns the bytes it took on the wire.
pub async fn write<T: Serialize>(
    out: &mut (impl AsyncWrite + Unpin),
    message: &T,
) -> Result<usize, FrameError> {
    let sent = write_buffered(out, message).await?;
    // TLS (and any buffer) keeps what the socket did not take at once; without a flush it
    // waits for the next write, which may never come while this side waits for an answer.
    out.flush().await?;
    Ok(sent)
}

/// Writes one frame into `out`'s buffer: many small frames then leave in a few packets. The
/// caller flushes before it waits for the peer.
pub async fn write_buffered<T: Serialize>(
    out: &mut (impl AsyncWrite + Unpin),
    message: &T,
) -> Result<usize, FrameError> {
    let (prefix, body) = encode_parts(message)?;
    out.write_all(&prefix).await?;
    out.write_all(&body).await?;
    Ok(prefix.len() + body.len())
}

/// Reads one frame; the length is checked before any of the body is read or allocated.
pub async fn read<T: DeserializeOwned>(
    input: &mut (impl AsyncRead + Unpin),
) -> Result<T, FrameError> {
    read_counted(input).await.map(|(message, _)| message)
}

/// Reads one frame and says how many bytes it took on the wire.
pub async fn read_counted<T: DeserializeOwned>(
    input: &mut (impl AsyncRead + Unpin),
) -> Result<(T, usize), FrameError> {
    let mut prefix = [0u8; 4];
    match input.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let (len, compressed) = body_len(prefix)?;
    // Read into spare capacity: zeroing a large body first would cost a pass over it.
    let mut body = Vec::with_capacity(len);
    (&mut *input)
        .take(len as u64)
        .read_to_end(&mut body)
        .await?;
    if body.len() < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok((decode_body(&body, compressed)?, 4 + len))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::test_noise as noise;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Message {
        Hello { version: u32, name: String },
        Data(#[serde(with = "serde_bytes")] Vec<u8>),
    }

    #[derive(Debug, PartialEq, Deserialize)]
    enum OlderMessage {
        Hello { version: u32 },
    }

    #[tokio::test]
    async fn frames_round_trip_over_a_stream() {
        let messages = [
            Message::Hello {
                version: 1,
                name: "nas".into(),
            },
            Message::Data(noise(1, 100_000)),
        ];
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let sent = messages.clone();
        let writer = tokio::spawn(async move {
            for m in &sent {
                write(&mut a, m).await.unwrap();
            }
        });
        for expected in &messages {
            assert_eq!(&read::<Message>(&mut b).await.unwrap(), expected);
        }
        writer.await.unwrap();
        assert!(matches!(
            read::<Message>(&mut b).await,
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn an_older_peer_ignores_added_fields() {
        let frame = encode(&Message::Hello {
            version: 2,
            name: "new field".into(),
        })
        .unwrap();
        let (old, used) = decode::<OlderMessage>(&frame).unwrap().unwrap();
        assert_eq!(old, OlderMessage::Hello { version: 2 });
        assert_eq!(used, frame.len());
    }

    #[test]
    fn compressible_bodies_shrink_and_random_ones_go_as_they_are() {
        let text = Message::Data(b"the same line again and again\n".repeat(1000));
        let frame = encode(&text).unwrap();
        assert!(frame.len() < 2000, "{} bytes", frame.len());
        assert_eq!(decode::<Message>(&frame).unwrap().unwrap().0, text);
        let random = Message::Data(noise(7, 50_000));
        let frame = encode(&random).unwrap();
        assert_eq!(frame[0] & 0x80, 0, "not compressed");
        assert_eq!(decode::<Message>(&frame).unwrap().unwrap().0, random);
    }

    #[test]
    fn a_batch_that_starts_incompressible_is_still_compressed() {
        // As a batch of small files may be: a few already-compressed ones first, then text
        // and more compressed data taking turns.
        let mut body = noise(3, 24 * 1024);
        for seed in 0..12 {
            body.extend(b"status ok, report sent\n".repeat(8 * 1024 / 23));
            body.extend(noise(seed + 10, 8 * 1024));
        }
        let batch = Message::Data(body);
        let frame = encode(&batch).unwrap();
        assert_eq!(frame[0] & 0x80, 0x80, "compressed");
        let raw = rmp_serde::to_vec_named(&batch).unwrap().len();
        assert!(frame.len() < raw * 3 / 4, "{} of {raw} bytes", frame.len());
        assert_eq!(decode::<Message>(&frame).unwrap().unwrap().0, batch);
    }

    #[test]
    fn a_compression_bomb_is_refused() {
        let huge = vec![0u8; MAX_FRAME as usize + 1];
        let body = zstd::bulk::compress(&huge, 1).unwrap();
        let mut frame = ((body.len() as u32) | COMPRESSED).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        assert!(matches!(
            decode::<Message>(&frame),
            Err(FrameError::Decompress(_))
        ));
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_the_body() {
        let mut frame = (MAX_FRAME + 1).to_be_bytes().to_vec();
        frame.extend_from_slice(b"tiny");
        assert!(matches!(
            decode::<Message>(&frame),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn random_and_truncated_input_never_panics() {
        let good = encode(&Message::Hello {
            version: 1,
            name: "agent".into(),
        })
        .unwrap();
        for cut in 0..good.len() {
            assert!(
                matches!(decode::<Message>(&good[..cut]), Ok(None)),
                "a truncated frame is incomplete, not wrong"
            );
        }
        for seed in 0..20_000u64 {
            let mut bytes = noise(seed, (seed % 64) as usize);
            if seed % 3 == 0 && bytes.len() >= 4 {
                // A plausible length, so the body decoder sees garbage too.
                let body_len = (bytes.len() - 4) as u32;
                bytes[..4].copy_from_slice(&body_len.to_be_bytes());
            }
            let _ = decode::<Message>(&bytes);
        }
        let mut flipped = good.clone();
        for i in 4..flipped.len() {
            flipped[i] ^= 0xFF;
            let _ = decode::<Message>(&flipped);
            flipped[i] ^= 0xFF;
        }
    }
}
