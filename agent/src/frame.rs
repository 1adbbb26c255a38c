//! Frames on the wire between schedulers and agents: a 4-byte big-endian length, then a
//! MessagePack body with named fields (so a newer peer's added fields do not break an older
//! one). A frame over the size limit, a truncated one or a body that does not decode is an
//! error for that connection only, never a panic.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame accepted: a delta's literal chunks and file data travel in pieces below it.
pub const MAX_FRAME: u32 = 8 * 1024 * 1024;

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
    #[error("cannot encode a frame: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

/// Encodes `message` as one frame (length prefix included).
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let body = rmp_serde::to_vec_named(message)?;
    let len = u32::try_from(body.len()).ok().filter(|&n| n <= MAX_FRAME);
    let len = len.ok_or(FrameError::TooLarge(
        u32::try_from(body.len()).unwrap_or(u32::MAX),
    ))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Decodes one frame from the start of `bytes`: the message and how many bytes it used, or
/// `None` when `bytes` does not hold a whole frame yet.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(prefix) = bytes.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes"));
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let end = 4 + len as usize;
    let Some(body) = bytes.get(4..end) else {
        return Ok(None);
    };
    Ok(Some((rmp_serde::from_slice(body)?, end)))
}

pub async fn write<T: Serialize>(
    out: &mut (impl AsyncWrite + Unpin),
    message: &T,
) -> Result<(), FrameError> {
    out.write_all(&encode(message)?).await?;
    Ok(())
}

/// Reads one frame; the length is checked before any of the body is read or allocated.
pub async fn read<T: DeserializeOwned>(
    input: &mut (impl AsyncRead + Unpin),
) -> Result<T, FrameError> {
    let mut prefix = [0u8; 4];
    match input.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(prefix);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    input.read_exact(&mut body).await?;
    Ok(rmp_serde::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::test_noise as noise;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Message {
        Hello { version: u32, name: String },
        Data(Vec<u8>),
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
