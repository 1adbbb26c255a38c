//! Frames on the wire between schedulers and agents: a 4-byte big-endian length, then the
//! body. The body is the message, MessagePack with named fields (so a newer peer's added
//! fields do not break an older one), and after it the file data the message carries
//! ([`Attached`] fields, listed by its [`Framed`] impl), if any, set apart so that each part is compressed or not on its own
//! terms. A frame over the size limit, a truncated one or a body that does not decode is an
//! error for that connection only, never a panic.
//!
//! The message is zstd-compressed whenever that shrinks it: names, sizes and times shrink well
//! and cost little to compress. File data is compressed only when the caller says the link is
//! worth it ([`crate::link`]) and a sample of it shrinks: on a link faster than the
//! compressor, raw data arrives sooner. A frame without file data is laid out as in earlier
//! versions, so the handshake of mismatched versions still ends with a clear refusal.

use std::cell::RefCell;
use std::ops::Range;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame accepted, compressed or not, and the largest either part may decompress
/// to: a delta's literal chunks and file data travel in pieces well below it.
pub const MAX_FRAME: u32 = 8 * 1024 * 1024;
/// Set in the length prefix when the message is zstd-compressed.
const HEADER_COMPRESSED: u32 = 1 << 31;
/// Set in the length prefix when file data follows the message: the body then starts with the
/// message's length.
const SPLIT: u32 = 1 << 30;
/// Set in the length prefix when the file data is zstd-compressed.
const PAYLOAD_COMPRESSED: u32 = 1 << 29;
const FLAGS: u32 = HEADER_COMPRESSED | SPLIT | PAYLOAD_COMPRESSED;
/// The length of the message, ahead of it in a body with file data.
const HEADER_LEN: usize = 4;
/// Parts shorter than this go as they are: the saving would not pay for the work.
const MIN_COMPRESS: usize = 512;
/// zstd's fastest level: it passes over incompressible data about twice as fast as the
/// default (3), which sends only about 1 % less of the bench's mixed small files.
const ZSTD_LEVEL: i32 = 1;
/// How much of a large payload is tried first to see whether compressing it pays.
const PROBE: usize = 16 * 1024;
/// The trial takes its bytes from this many places spread over the payload: a batch of small
/// files whose first ones are incompressible may still be well worth compressing.
const PROBE_SLICES: usize = 16;

/// Whether a frame's file data may be compressed (the message around it always may).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// When a sample of it shrinks: the link is slower than the compressor.
    Compress,
    /// Never: the link is faster than the compressor, or nothing is known of it.
    Raw,
}

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
    #[error("malformed frame: {0}")]
    Layout(&'static str),
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

/// File bytes a message carries. In a frame the message's MessagePack holds only their length
/// and the bytes follow the message in the frame's payload, so that each part is compressed
/// or not on its own terms; the message's [`Framed`] impl says where its attachments are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    bytes: Vec<u8>,
    /// Bytes a decoded message still awaits from its frame's payload: 0 once
    /// [`decode_body`] has filled them in, and always 0 in a message built to be sent.
    missing: usize,
}

impl Attached {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self { bytes, missing: 0 }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl Serialize for Attached {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.bytes.len() as u64)
    }
}

impl<'de> serde::Deserialize<'de> for Attached {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let len = u64::deserialize(deserializer)?;
        let missing = usize::try_from(len)
            .ok()
            .filter(|&len| len <= MAX_FRAME as usize)
            .ok_or_else(|| D::Error::custom("file data longer than a frame"))?;
        Ok(Self {
            bytes: Vec::new(),
            missing,
        })
    }
}

/// A message that can travel in a frame: its MessagePack, and the file bytes it carries in
/// the frame's payload, in the order [`Framed::attachments`] lists them.
pub trait Framed: Serialize + DeserializeOwned {
    /// The message's file bytes, in the order its MessagePack names their lengths.
    fn attachments(&self) -> Vec<&Attached> {
        Vec::new()
    }

    /// The same, to fill in after decoding.
    fn attachments_mut(&mut self) -> Vec<&mut Attached> {
        Vec::new()
    }
}

/// `part`, compressed when that makes it at least 1/16 smaller. A large part is first judged
/// by a sample of it, so already-compressed data costs one small trial, not a full pass.
fn maybe_compress(part: Vec<u8>) -> (Vec<u8>, bool) {
    if part.len() < MIN_COMPRESS {
        return (part, false);
    }
    if part.len() > 4 * PROBE {
        let probe = compress(&probe_sample(&part));
        if probe.is_none_or(|probe| probe.len() >= PROBE - PROBE / 16) {
            return (part, false);
        }
    }
    match compress(&part) {
        Some(small) if small.len() < part.len() - part.len() / 16 => (small, true),
        _ => (part, false),
    }
}

/// `PROBE` bytes of `part`, in slices from its start to its end.
fn probe_sample(part: &[u8]) -> Vec<u8> {
    let (slice, step) = (PROBE / PROBE_SLICES, part.len() / PROBE_SLICES);
    let mut sample = Vec::with_capacity(PROBE);
    for start in (0..PROBE_SLICES).map(|k| k * step) {
        sample.extend_from_slice(&part[start..start + slice]);
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

fn decompress(part: &[u8]) -> Result<Vec<u8>, FrameError> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new().map_err(FrameError::Decompress)?),
        };
        // The limit also bounds a decompression bomb.
        decompressor
            .decompress(part, MAX_FRAME as usize)
            .map_err(FrameError::Decompress)
    })
}

/// Encodes `message` as one frame (length prefix included).
pub fn encode<T: Framed>(message: &T, data: Data) -> Result<Vec<u8>, FrameError> {
    let (head, payload) = encode_parts(message, data)?;
    Ok([head, payload].concat())
}

/// The message's header and payload, apart.
fn split<T: Framed>(message: &T) -> Result<(Vec<u8>, Vec<u8>), FrameError> {
    let header = rmp_serde::to_vec_named(message)?;
    let attachments = message.attachments();
    let mut payload = Vec::with_capacity(attachments.iter().map(|a| a.len()).sum());
    for attached in attachments {
        payload.extend_from_slice(&attached.bytes);
    }
    Ok((header, payload))
}

/// A frame as its head (length prefix, the message and its length) and its payload: the
/// payload, possibly megabytes of file data, is written as it is, not copied behind the head.
fn encode_parts<T: Framed>(message: &T, data: Data) -> Result<(Vec<u8>, Vec<u8>), FrameError> {
    let (header, payload) = split(message)?;
    let (header, header_compressed) = maybe_compress(header);
    let (payload, payload_compressed) = match data {
        Data::Compress => maybe_compress(payload),
        Data::Raw => (payload, false),
    };
    let is_split = !payload.is_empty();
    let header_len = if is_split { HEADER_LEN } else { 0 };
    let len = header_len + header.len() + payload.len();
    let len = u32::try_from(len)
        .ok()
        .filter(|&n| n <= MAX_FRAME)
        .ok_or(FrameError::TooLarge(u32::try_from(len).unwrap_or(u32::MAX)))?;
    let flags = [
        (header_compressed, HEADER_COMPRESSED),
        (is_split, SPLIT),
        (payload_compressed, PAYLOAD_COMPRESSED),
    ];
    let prefix = flags.iter().fold(
        len,
        |prefix, &(on, flag)| if on { prefix | flag } else { prefix },
    );
    let mut head = Vec::with_capacity(4 + header_len + header.len());
    head.extend_from_slice(&prefix.to_be_bytes());
    if is_split {
        head.extend_from_slice(&(header.len() as u32).to_be_bytes());
    }
    head.extend_from_slice(&header);
    Ok((head, payload))
}

/// The body's length from a prefix, checked against the limit, and its flags.
fn body_len(prefix: [u8; 4]) -> Result<(usize, u32), FrameError> {
    let prefix = u32::from_be_bytes(prefix);
    let len = prefix & !FLAGS;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok((len as usize, prefix & FLAGS))
}

/// Where the message lies in a body; the file data follows it.
fn header_range(body: &[u8], flags: u32) -> Result<Range<usize>, FrameError> {
    if flags & SPLIT == 0 {
        return Ok(0..body.len());
    }
    body.get(..HEADER_LEN)
        .map(|len| HEADER_LEN + u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize)
        .filter(|&end| end <= body.len())
        .map(|end| HEADER_LEN..end)
        .ok_or(FrameError::Layout("message longer than the frame"))
}

fn decode_body<T: Framed>(body: Vec<u8>, flags: u32) -> Result<T, FrameError> {
    let range = header_range(&body, flags)?;
    let start = range.end;
    let header = match flags & HEADER_COMPRESSED {
        0 => body[range].to_vec(),
        _ => decompress(&body[range])?,
    };
    let (body, start) = match flags & PAYLOAD_COMPRESSED {
        0 => (body, start),
        _ => (decompress(&body[start..])?, 0),
    };
    let mut message: T = rmp_serde::from_slice(&header)?;
    let mut at = start;
    for attached in message.attachments_mut() {
        let bytes = at
            .checked_add(attached.missing)
            .and_then(|end| body.get(at..end))
            .ok_or(FrameError::Layout("file data past the end of the payload"))?;
        attached.bytes = bytes.to_vec();
        at += std::mem::take(&mut attached.missing);
    }
    match at == body.len() {
        true => Ok(message),
        false => Err(FrameError::Layout(
            "file data the message does not account for",
        )),
    }
}

/// Decodes one frame from the start of `bytes`: the message and how many bytes it used, or
/// `None` when `bytes` does not hold a whole frame yet.
pub fn decode<T: Framed>(bytes: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(prefix) = bytes.get(..4) else {
        return Ok(None);
    };
    let (len, flags) = body_len(prefix.try_into().expect("4 bytes"))?;
    let end = 4 + len;
    let Some(body) = bytes.get(4..end) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body.to_vec(), flags)?, end)))
}

/// Writes one frame of a message without file data and flushes it; returns the bytes it
/// took on the wire.
pub async fn write<T: Framed>(
    out: &mut (impl AsyncWrite + Unpin),
    message: &T,
) -> Result<usize, FrameError> {
    let sent = write_buffered(out, message, Data::Raw).await?;
    // TLS (and any buffer) keeps what the socket did not take at once; without a flush it
    // waits for the next write, which may never come while this side waits for an answer.
    out.flush().await?;
    Ok(sent)
}

/// Writes one frame into `out`'s buffer: many small frames then leave in a few packets. The
/// caller flushes before it waits for the peer.
pub async fn write_buffered<T: Framed>(
    out: &mut (impl AsyncWrite + Unpin),
    message: &T,
    data: Data,
) -> Result<usize, FrameError> {
    let (head, payload) = encode_parts(message, data)?;
    out.write_all(&head).await?;
    out.write_all(&payload).await?;
    Ok(head.len() + payload.len())
}

/// Reads one frame; the length is checked before any of the body is read or allocated.
pub async fn read<T: Framed>(input: &mut (impl AsyncRead + Unpin)) -> Result<T, FrameError> {
    read_counted(input).await.map(|(message, _)| message)
}

/// Reads one frame and says how many bytes it took on the wire.
pub async fn read_counted<T: Framed>(
    input: &mut (impl AsyncRead + Unpin),
) -> Result<(T, usize), FrameError> {
    let mut prefix = [0u8; 4];
    match input.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let (len, flags) = body_len(prefix)?;
    // Read into spare capacity: zeroing a large body first would cost a pass over it.
    let mut body = Vec::with_capacity(len);
    (&mut *input)
        .take(len as u64)
        .read_to_end(&mut body)
        .await?;
    if body.len() < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok((decode_body(body, flags)?, 4 + len))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use ferry_engine::testing::noise;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Message {
        Hello { version: u32, name: String },
        Data(Attached),
        Files(Vec<File>),
    }

    impl Framed for Message {
        fn attachments(&self) -> Vec<&Attached> {
            match self {
                Message::Hello { .. } => vec![],
                Message::Data(data) => vec![data],
                Message::Files(files) => files.iter().map(|f| &f.data).collect(),
            }
        }

        fn attachments_mut(&mut self) -> Vec<&mut Attached> {
            match self {
                Message::Hello { .. } => vec![],
                Message::Data(data) => vec![data],
                Message::Files(files) => files.iter_mut().map(|f| &mut f.data).collect(),
            }
        }
    }

    fn data_message(bytes: Vec<u8>) -> Message {
        Message::Data(Attached::new(bytes))
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct File {
        name: String,
        data: Attached,
    }

    fn file(name: &str, data: Vec<u8>) -> File {
        File {
            name: name.into(),
            data: Attached::new(data),
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum OlderMessage {
        Hello { version: u32 },
    }

    impl Framed for OlderMessage {}

    const HEADER_FLAG: u8 = 0x80;
    const SPLIT_FLAG: u8 = 0x40;
    const PAYLOAD_FLAG: u8 = 0x20;

    fn round_trip(message: &Message, data: Data) -> Vec<u8> {
        let frame = encode(message, data).unwrap();
        let (decoded, used) = decode::<Message>(&frame).unwrap().unwrap();
        assert_eq!(&decoded, message);
        assert_eq!(used, frame.len());
        frame
    }

    #[tokio::test]
    async fn frames_round_trip_over_a_stream() {
        let messages = [
            Message::Hello {
                version: 1,
                name: "nas".into(),
            },
            data_message(noise(1, 100_000)),
            Message::Files(vec![
                file("a", b"text ".repeat(300)),
                file("b", Vec::new()),
                file("c", noise(2, 5000)),
            ]),
        ];
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let sent = messages.clone();
        let writer = tokio::spawn(async move {
            for (m, data) in sent.iter().zip([Data::Raw, Data::Compress, Data::Compress]) {
                write_buffered(&mut a, m, data).await.unwrap();
            }
            a.flush().await.unwrap();
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
        let frame = encode(
            &Message::Hello {
                version: 2,
                name: "new field".into(),
            },
            Data::Compress,
        )
        .unwrap();
        let (old, used) = decode::<OlderMessage>(&frame).unwrap().unwrap();
        assert_eq!(old, OlderMessage::Hello { version: 2 });
        assert_eq!(used, frame.len());
        // Without file data the body is the bare message, as before protocol 5: a peer of
        // another version reads a `Hello` and answers with a clear refusal.
        assert_eq!(frame[0], 0);
        let bare: OlderMessage = rmp_serde::from_slice(&frame[4..]).unwrap();
        assert_eq!(bare, OlderMessage::Hello { version: 2 });
    }

    #[test]
    fn file_data_is_compressed_only_where_the_link_is_worth_it_and_it_shrinks() {
        let text = data_message(b"the same line again and again\n".repeat(1000));
        let frame = round_trip(&text, Data::Compress);
        assert_eq!(frame[0] & PAYLOAD_FLAG, PAYLOAD_FLAG);
        assert!(frame.len() < 2000, "{} bytes", frame.len());
        let frame = round_trip(&text, Data::Raw);
        assert_eq!(frame[0] & PAYLOAD_FLAG, 0);
        assert!(frame.len() > 30_000, "{} bytes", frame.len());
        let random = data_message(noise(7, 50_000));
        let frame = round_trip(&random, Data::Compress);
        assert_eq!(frame[0] & PAYLOAD_FLAG, 0, "not compressed");
    }

    #[test]
    fn names_are_compressed_even_when_file_data_goes_raw() {
        let files = (0..200)
            .map(|i| file(&format!("reports/2026/day{i:03}.csv"), noise(i, 100)))
            .collect();
        let frame = round_trip(&Message::Files(files), Data::Raw);
        assert_eq!(frame[0] & (HEADER_FLAG | PAYLOAD_FLAG), HEADER_FLAG);
        assert_eq!(frame[0] & SPLIT_FLAG, SPLIT_FLAG);
        // 20,000 bytes of file data, raw, and 200 names of 25 bytes that shrink to far less.
        assert!(frame.len() < 22_000, "{} bytes", frame.len());
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
        let raw = body.len();
        let frame = round_trip(&data_message(body), Data::Compress);
        assert_eq!(frame[0] & PAYLOAD_FLAG, PAYLOAD_FLAG, "compressed");
        assert!(frame.len() < raw * 3 / 4, "{} of {raw} bytes", frame.len());
    }

    /// A frame with file data, of the given message and payload parts, flags and all.
    fn frame_of(header: &[u8], payload: &[u8], flags: u32) -> Vec<u8> {
        let len = (HEADER_LEN + header.len() + payload.len()) as u32;
        let mut frame = (len | SPLIT | flags).to_be_bytes().to_vec();
        frame.extend_from_slice(&(header.len() as u32).to_be_bytes());
        frame.extend_from_slice(header);
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn file_data_that_does_not_match_the_header_is_refused() {
        let (header, _) = split(&data_message(Vec::new())).unwrap();
        // The header says 0 bytes of data; the payload holds 3.
        let frame = frame_of(&header, b"xyz", 0);
        assert!(matches!(
            decode::<Message>(&frame),
            Err(FrameError::Layout(_))
        ));
        let (header, _) = split(&data_message(vec![1; 10])).unwrap();
        // The header says 10 bytes; the payload holds 3.
        let frame = frame_of(&header, b"xyz", 0);
        assert!(matches!(
            decode::<Message>(&frame),
            Err(FrameError::Layout("file data past the end of the payload"))
        ));
        let mut frame = frame_of(&header, b"xyz", 0);
        frame[4..8].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(
            decode::<Message>(&frame),
            Err(FrameError::Layout(_))
        ));
    }

    #[test]
    fn a_compression_bomb_is_refused() {
        let bomb = zstd::bulk::compress(&vec![0u8; MAX_FRAME as usize + 1], 1).unwrap();
        let (header, _) = split(&data_message(Vec::new())).unwrap();
        for frame in [
            frame_of(&bomb, b"", HEADER_COMPRESSED),
            frame_of(&header, &bomb, PAYLOAD_COMPRESSED),
        ] {
            assert!(matches!(
                decode::<Message>(&frame),
                Err(FrameError::Decompress(_))
            ));
        }
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
        let good = encode(
            &Message::Files(vec![file("agent", b"data ".repeat(200))]),
            Data::Compress,
        )
        .unwrap();
        for cut in 0..good.len() {
            assert!(
                matches!(decode::<Message>(&good[..cut]), Ok(None)),
                "a truncated frame is incomplete, not wrong"
            );
        }
        for seed in 0..20_000u64 {
            let mut bytes = noise(seed, (seed % 64) as usize);
            if seed % 3 == 0 && bytes.len() >= 8 {
                // A plausible length and header length, so the decoders see garbage too.
                let body_len = (bytes.len() - 4) as u32 | (seed as u32 % 4) << 30;
                bytes[..4].copy_from_slice(&body_len.to_be_bytes());
                let header_len = (seed % (bytes.len() as u64 - 7)) as u32;
                bytes[4..8].copy_from_slice(&header_len.to_be_bytes());
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
