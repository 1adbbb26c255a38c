//! Delta transfer, rsync's algorithm: the side that has an old version of a file sends a
//! [`Signature`] (a weak rolling checksum and a short strong hash per block); the side with the
//! new version finds those blocks in it at any offset ([`encode`]) and sends only block
//! references and the literal bytes between them; the old side rebuilds the new file
//! ([`Rebuild`]) and checks its BLAKE3 hash before anything is renamed into place.
//!
//! Both sides stream: the new version is read through a window of a few hundred KiB and the
//! rebuild writes as ops arrive, so memory does not grow with the file.
//!
//! The strong hash is BLAKE3 truncated to as few bytes as make a false match unlikely for the
//! file's size (rsync's own rule, 2 to 16 bytes), which keeps signatures as small as rsync's. A
//! false match is still possible, and is caught by the whole-file hash: the caller then sends
//! the file whole.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

/// rsync's bounds for the block size (protocol 30): at least 700 bytes, at most 128 KiB.
const MIN_BLOCK: u32 = 700;
const MAX_BLOCK: u32 = 128 * 1024;
/// Literal runs longer than this are split, so no single op is huge.
pub const MAX_LITERAL: usize = 128 * 1024;
/// How much of the new version is read at once.
const READ_CHUNK: usize = 256 * 1024;
const WEAK_LEN: usize = 4;
const MAX_STRONG_LEN: u8 = 16;

thread_local! {
    static SCRATCH: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
}

/// The blocks of the old version of a file, packed: per block the weak checksum (4 bytes, little
/// endian) then `strong_len` bytes of its BLAKE3 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub block_size: u32,
    pub file_size: u64,
    pub strong_len: u8,
    #[serde(with = "serde_bytes")]
    pub sums: Vec<u8>,
}

impl Signature {
    /// Checks a signature another party made: a block size within rsync's bounds, a strong
    /// sum no longer than ours, and one sum per block of the file, exactly. A peer's block size
    /// decides how much a reader holds in memory, and one of 0 would divide by zero.
    pub fn check(&self) -> Result<(), DeltaError> {
        check_block_size(self.block_size)?;
        let width = WEAK_LEN + usize::from(self.strong_len);
        let blocks = self.file_size.div_ceil(u64::from(self.block_size));
        let fits = (1..=MAX_STRONG_LEN).contains(&self.strong_len)
            && self.sums.len().is_multiple_of(width)
            && self.blocks() as u64 == blocks;
        if fits {
            Ok(())
        } else {
            Err(DeltaError::BadSignature(format!(
                "{} bytes of sums of {}-byte strong hashes for {blocks} blocks",
                self.sums.len(),
                self.strong_len
            )))
        }
    }

    pub fn blocks(&self) -> usize {
        self.sums.len() / (WEAK_LEN + usize::from(self.strong_len))
    }

    fn sum(&self, block: usize) -> (u32, &[u8]) {
        let width = WEAK_LEN + usize::from(self.strong_len);
        let sum = &self.sums[block * width..(block + 1) * width];
        let weak = u32::from_le_bytes(sum[..WEAK_LEN].try_into().expect("4 bytes"));
        (weak, &sum[WEAK_LEN..])
    }

    fn strong(&self, bytes: &[u8]) -> [u8; MAX_STRONG_LEN as usize] {
        let hash = blake3::hash(bytes);
        hash.as_bytes()[..usize::from(MAX_STRONG_LEN)]
            .try_into()
            .expect("16 of 32 bytes")
    }

    fn matches(&self, block: usize, weak: u32, strong: &[u8]) -> bool {
        let (w, s) = self.sum(block);
        w == weak && s == &strong[..s.len()]
    }
}

/// One step in rebuilding the new version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Copy `count` blocks of the old version, starting with block `first`: an unchanged
    /// stretch of any length costs one op.
    Blocks { first: u32, count: u32 },
    /// Bytes the old version does not have.
    Literal(Vec<u8>),
}

impl Op {
    /// Bytes of file data this op carries (block references carry none).
    pub fn literal_len(&self) -> usize {
        match self {
            Op::Literal(bytes) => bytes.len(),
            Op::Blocks { .. } => 0,
        }
    }
}

/// What [`encode`] read: the new version's size and BLAKE3 hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    pub size: u64,
    pub hash: blake3::Hash,
}

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the delta names block {block}, but the old version has {blocks}")]
    NoSuchBlock { block: u32, blocks: u64 },
    #[error("the rebuilt file does not match the new version's BLAKE3 hash")]
    HashMismatch,
    #[error("a signature that does not describe a file: {0}")]
    BadSignature(String),
}

fn invalid(e: DeltaError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Checks a block size another party chose, against rsync's bounds.
pub fn check_block_size(block_size: u32) -> Result<(), DeltaError> {
    if (MIN_BLOCK..=MAX_BLOCK).contains(&block_size) {
        return Ok(());
    }
    Err(DeltaError::BadSignature(format!(
        "a block size of {block_size} bytes, outside {MIN_BLOCK}..={MAX_BLOCK}"
    )))
}

/// About the square root of the file size, as rsync picks it, in multiples of 8.
pub fn block_size_for(file_size: u64) -> u32 {
    let root = (file_size as f64).sqrt() as u64;
    let rounded = (root / 8 * 8).clamp(u64::from(MIN_BLOCK), u64::from(MAX_BLOCK));
    rounded as u32
}

/// rsync's strong-sum length: enough bits that a false block match across the whole file is
/// unlikely (10 bits of margin), never under 2 bytes. The whole-file hash catches the rest.
pub fn strong_len_for(file_size: u64, block_size: u32) -> u8 {
    let log2 = |n: u64| 63 - n.max(1).leading_zeros() as i64;
    let bits = 10 + 2 * log2(file_size) - log2(u64::from(block_size));
    let bytes = (bits + 1 - 32 + 7) / 8;
    bytes.clamp(2, i64::from(MAX_STRONG_LEN)) as u8
}

/// Reads the old version and returns its signature.
pub fn signature(old: &mut impl Read, file_size: u64) -> io::Result<Signature> {
    let block_size = block_size_for(file_size);
    let strong_len = strong_len_for(file_size, block_size);
    let blocks = file_size.div_ceil(u64::from(block_size)) as usize;
    let mut sig = Signature {
        block_size,
        file_size,
        strong_len,
        sums: Vec::with_capacity(blocks * (WEAK_LEN + usize::from(strong_len))),
    };
    let mut buf = vec![0u8; block_size as usize];
    let mut read = 0;
    loop {
        let n = read_full(old, &mut buf)?;
        if n == 0 {
            break;
        }
        read += n as u64;
        sig.sums
            .extend_from_slice(&Rolling::new(&buf[..n]).value().to_le_bytes());
        let strong = sig.strong(&buf[..n]);
        sig.sums
            .extend_from_slice(&strong[..usize::from(strong_len)]);
        if n < buf.len() {
            break;
        }
    }
    // The file changed size while it was read: describe what was actually there.
    sig.file_size = read;
    Ok(sig)
}

/// Streams `new` as ops against `base` (the whole file as literals when there is none), calling
/// `emit` for each op, and returns what was read.
pub fn encode(
    new: &mut dyn Read,
    base: Option<&Signature>,
    emit: &mut dyn FnMut(Op) -> io::Result<()>,
) -> io::Result<Encoded> {
    if let Some(base) = base {
        base.check().map_err(invalid)?;
    }
    let mut input = HashingReader {
        inner: new,
        hasher: blake3::Hasher::new(),
        size: 0,
    };
    match base.filter(|sig| sig.blocks() > 0) {
        Some(sig) => Matcher::new(sig).run(&mut input, emit)?,
        None => SCRATCH.with_borrow_mut(|scratch| {
            // Read into one zeroed buffer per thread and copy out what was read: a fresh
            // zeroed chunk per read would cost a 128 KiB memset for every small file.
            let scratch = scratch.get_or_insert_with(|| vec![0u8; MAX_LITERAL]);
            loop {
                let n = read_full(&mut input, scratch)?;
                if n > 0 {
                    emit(Op::Literal(scratch[..n].to_vec()))?;
                }
                // A short read met the end: asking again would only read nothing.
                if n < scratch.len() {
                    return Ok::<_, io::Error>(());
                }
            }
        })?,
    }
    Ok(Encoded {
        size: input.size,
        hash: input.hasher.finalize(),
    })
}

struct HashingReader<'a> {
    inner: &'a mut dyn Read,
    hasher: blake3::Hasher,
    size: u64,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// The rolling search for the old version's blocks in the new one, over a sliding window.
struct Matcher<'a> {
    sig: &'a Signature,
    by_weak: HashMap<u32, Vec<u32>>,
    size: usize,
    /// Unsent bytes of the new version: `buf[..at]` is pending literal data, `buf[at..]` the
    /// window and what follows it.
    buf: Vec<u8>,
    at: usize,
    eof: bool,
    /// Matched blocks not sent yet, while they keep following each other.
    run: Option<(u32, u32)>,
}

impl<'a> Matcher<'a> {
    fn new(sig: &'a Signature) -> Self {
        let full_blocks = (sig.file_size / u64::from(sig.block_size)) as usize;
        let mut by_weak: HashMap<u32, Vec<u32>> = HashMap::new();
        for block in 0..full_blocks.min(sig.blocks()) {
            by_weak
                .entry(sig.sum(block).0)
                .or_default()
                .push(block as u32);
        }
        Self {
            sig,
            by_weak,
            size: sig.block_size as usize,
            buf: Vec::with_capacity(MAX_LITERAL + READ_CHUNK),
            at: 0,
            eof: false,
            run: None,
        }
    }

    fn run(
        mut self,
        input: &mut dyn Read,
        emit: &mut dyn FnMut(Op) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut rolling: Option<Rolling> = None;
        loop {
            // One byte past the window, to roll into.
            self.fill(input, self.at + self.size + 1)?;
            if self.buf.len() - self.at < self.size {
                break;
            }
            let window = &self.buf[self.at..self.at + self.size];
            let weak = rolling.get_or_insert_with(|| Rolling::new(window)).value();
            if let Some(block) = self.find(weak, window) {
                self.flush_literal(emit)?;
                self.push_block(block, emit)?;
                self.buf.drain(..self.size);
                rolling = None;
            } else if self.at + self.size < self.buf.len() {
                let (out, into) = (self.buf[self.at], self.buf[self.at + self.size]);
                rolling.as_mut().expect("set above").roll(out, into);
                self.at += 1;
                if self.at >= MAX_LITERAL {
                    self.flush_literal(emit)?;
                }
            } else {
                break;
            }
        }
        self.finish(emit)
    }

    fn find(&self, weak: u32, window: &[u8]) -> Option<u32> {
        let candidates = self.by_weak.get(&weak)?;
        let strong = self.sig.strong(window);
        candidates
            .iter()
            .copied()
            .find(|&b| self.sig.matches(b as usize, weak, &strong))
    }

    /// Reads until `buf` holds `want` bytes or the input ends.
    fn fill(&mut self, input: &mut dyn Read, want: usize) -> io::Result<()> {
        while self.buf.len() < want && !self.eof {
            let start = self.buf.len();
            self.buf.resize(start + READ_CHUNK, 0);
            let n = read_full(input, &mut self.buf[start..])?;
            self.buf.truncate(start + n);
            self.eof = n == 0;
        }
        Ok(())
    }

    fn push_block(
        &mut self,
        block: u32,
        emit: &mut dyn FnMut(Op) -> io::Result<()>,
    ) -> io::Result<()> {
        match &mut self.run {
            Some((first, count)) if *first + *count == block => *count += 1,
            _ => {
                self.flush_run(emit)?;
                self.run = Some((block, 1));
            }
        }
        Ok(())
    }

    fn flush_run(&mut self, emit: &mut dyn FnMut(Op) -> io::Result<()>) -> io::Result<()> {
        match self.run.take() {
            Some((first, count)) => emit(Op::Blocks { first, count }),
            None => Ok(()),
        }
    }

    fn flush_literal(&mut self, emit: &mut dyn FnMut(Op) -> io::Result<()>) -> io::Result<()> {
        if self.at > 0 {
            self.flush_run(emit)?;
            emit(Op::Literal(self.buf.drain(..self.at).collect()))?;
            self.at = 0;
        }
        Ok(())
    }

    /// What is left is shorter than a block; it may still end with the old version's short
    /// last block.
    fn finish(mut self, emit: &mut dyn FnMut(Op) -> io::Result<()>) -> io::Result<()> {
        let short = (self.sig.file_size % u64::from(self.sig.block_size)) as usize;
        let last = self.sig.blocks() - 1;
        if short > 0 && self.buf.len() >= short {
            let end = &self.buf[self.buf.len() - short..];
            let weak = Rolling::new(end).value();
            if self.sig.matches(last, weak, &self.sig.strong(end)) {
                self.at = self.buf.len() - short;
                self.flush_literal(emit)?;
                self.push_block(last as u32, emit)?;
                return self.flush_run(emit);
            }
        }
        self.flush_run(emit)?;
        for chunk in self.buf.chunks(MAX_LITERAL) {
            emit(Op::Literal(chunk.to_vec()))?;
        }
        Ok(())
    }
}

/// Rebuilds a new version op by op from the old version `old` (read by offset) into `out`,
/// hashing as it goes.
pub struct Rebuild<W> {
    old: Option<File>,
    block_size: u32,
    old_size: u64,
    out: W,
    hasher: blake3::Hasher,
    buf: Vec<u8>,
    pub written: u64,
}

impl<W: Write> Rebuild<W> {
    /// `old` and `block_size` describe the base the delta was made against, if any.
    pub fn new(old: Option<File>, block_size: u32, out: W) -> io::Result<Self> {
        let old_size = match &old {
            Some(file) => {
                check_block_size(block_size).map_err(invalid)?;
                file.metadata()?.len()
            }
            None => 0,
        };
        Ok(Self {
            old,
            block_size,
            old_size,
            out,
            hasher: blake3::Hasher::new(),
            buf: Vec::new(),
            written: 0,
        })
    }

    pub fn push(&mut self, op: &Op) -> Result<(), DeltaError> {
        match op {
            Op::Literal(bytes) => self.put(bytes),
            Op::Blocks { first, count } => {
                for block in (0..*count).map(|i| first.saturating_add(i)) {
                    self.copy_block(block)?;
                }
                Ok(())
            }
        }
    }

    fn copy_block(&mut self, block: u32) -> Result<(), DeltaError> {
        let offset = u64::from(block) * u64::from(self.block_size);
        let old = self.old.as_ref().filter(|_| offset < self.old_size);
        let Some(old) = old else {
            return Err(DeltaError::NoSuchBlock {
                block,
                blocks: self.old_size.div_ceil(u64::from(self.block_size.max(1))),
            });
        };
        let len = u64::from(self.block_size).min(self.old_size - offset) as usize;
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len, 0);
        old.read_exact_at(&mut buf, offset)?;
        let put = self.put(&buf);
        self.buf = buf;
        put
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), DeltaError> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Checks the result against the sender's hash and hands back the output.
    pub fn finish(self, expected: &blake3::Hash) -> Result<W, DeltaError> {
        if &self.hasher.finalize() != expected {
            return Err(DeltaError::HashMismatch);
        }
        Ok(self.out)
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(input: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// rsync's rolling checksum over a window: `a` is the sum of the bytes, `b` the sum of the
/// running sums, both modulo 2^16; sliding the window by one byte is O(1).
struct Rolling {
    a: u32,
    b: u32,
    len: u32,
}

impl Rolling {
    fn new(window: &[u8]) -> Self {
        let (mut a, mut b) = (0u32, 0u32);
        for &byte in window {
            a = a.wrapping_add(u32::from(byte));
            b = b.wrapping_add(a);
        }
        Self {
            a: a & 0xffff,
            b: b & 0xffff,
            len: window.len() as u32,
        }
    }

    fn roll(&mut self, out: u8, into: u8) {
        self.a = self
            .a
            .wrapping_sub(u32::from(out))
            .wrapping_add(u32::from(into))
            & 0xffff;
        self.b = self
            .b
            .wrapping_sub(self.len.wrapping_mul(u32::from(out)))
            .wrapping_add(self.a)
            & 0xffff;
    }

    fn value(&self) -> u32 {
        (self.b << 16) | self.a
    }
}

#[cfg(test)]
mod tests;
