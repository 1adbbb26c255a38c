//! Delta transfer, rsync's algorithm: the side that has an old version of a file sends a
//! [`Signature`] (a weak rolling checksum and a strong hash per block); the side with the new
//! version finds those blocks in it at any offset ([`delta`]) and sends only block references
//! and the literal bytes between them; the old side rebuilds the new file ([`apply`]) and checks
//! its BLAKE3 hash before anything is renamed into place.
//!
//! The strong hash is BLAKE3 truncated to 16 bytes (rsync uses MD4/MD5); a block match is only
//! trusted after both hashes agree, and the whole result is verified anyway.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

use serde::{Deserialize, Serialize};

/// rsync's bounds for the block size (protocol 30): at least 700 bytes, at most 128 KiB.
const MIN_BLOCK: u32 = 700;
const MAX_BLOCK: u32 = 128 * 1024;
/// Literal runs longer than this are split, so no single op is huge.
const MAX_LITERAL: usize = 64 * 1024;

/// The blocks of the old version of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub block_size: u32,
    pub file_size: u64,
    pub blocks: Vec<BlockSignature>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSignature {
    pub weak: u32,
    pub strong: [u8; 16],
}

/// How to build the new version from the old one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub ops: Vec<Op>,
    pub result_size: u64,
    /// BLAKE3 of the new version, checked after applying.
    pub result_hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Copy block `n` of the old version.
    Block(u32),
    /// Bytes the old version does not have.
    Literal(Vec<u8>),
}

impl Delta {
    /// Bytes of literal data: what must cross the wire besides the block references.
    pub fn literal_bytes(&self) -> u64 {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Literal(bytes) => bytes.len() as u64,
                Op::Block(_) => 0,
            })
            .sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("reading or writing: {0}")]
    Io(#[from] io::Error),
    #[error("the delta names block {block}, but the old version has {blocks}")]
    NoSuchBlock { block: u32, blocks: usize },
    #[error("the rebuilt file does not match the new version's BLAKE3 hash")]
    HashMismatch,
}

/// About the square root of the file size, as rsync picks it, in multiples of 8.
pub fn block_size_for(file_size: u64) -> u32 {
    let root = (file_size as f64).sqrt() as u64;
    let rounded = (root / 8 * 8).clamp(u64::from(MIN_BLOCK), u64::from(MAX_BLOCK));
    rounded as u32
}

/// Reads the old version and returns its signature.
pub fn signature(old: &mut impl Read, file_size: u64) -> io::Result<Signature> {
    let block_size = block_size_for(file_size);
    let mut blocks = Vec::with_capacity(file_size.div_ceil(u64::from(block_size)) as usize);
    let mut buf = vec![0u8; block_size as usize];
    loop {
        let n = read_full(old, &mut buf)?;
        if n == 0 {
            break;
        }
        blocks.push(BlockSignature {
            weak: Rolling::new(&buf[..n]).value(),
            strong: strong(&buf[..n]),
        });
        if n < buf.len() {
            break;
        }
    }
    Ok(Signature {
        block_size,
        file_size,
        blocks,
    })
}

/// Finds the old version's blocks in `new` and returns the ops that rebuild it.
pub fn delta(sig: &Signature, new: &[u8]) -> Delta {
    let size = sig.block_size as usize;
    let full_blocks = (sig.file_size / u64::from(sig.block_size)) as usize;
    let mut by_weak: HashMap<u32, Vec<u32>> = HashMap::new();
    for (i, block) in sig.blocks.iter().enumerate().take(full_blocks) {
        by_weak.entry(block.weak).or_default().push(i as u32);
    }
    let mut ops = Vec::new();
    let mut literal_from = 0;
    let mut at = 0;
    let mut rolling = (new.len() >= size).then(|| Rolling::new(&new[..size]));
    while let Some(window) = rolling.as_mut() {
        let found = by_weak.get(&window.value()).and_then(|candidates| {
            let digest = strong(&new[at..at + size]);
            candidates
                .iter()
                .copied()
                .find(|&b| sig.blocks[b as usize].strong == digest)
        });
        if let Some(block) = found {
            push_literal(&mut ops, &new[literal_from..at]);
            ops.push(Op::Block(block));
            at += size;
            literal_from = at;
            rolling = (new.len() - at >= size).then(|| Rolling::new(&new[at..at + size]));
        } else if at + size < new.len() {
            window.roll(new[at], new[at + size]);
            at += 1;
        } else {
            rolling = None;
        }
    }
    push_tail(&mut ops, sig, &new[literal_from..]);
    Delta {
        ops,
        result_size: new.len() as u64,
        result_hash: *blake3::hash(new).as_bytes(),
    }
}

/// The old version's last block when it is shorter than the others: it can only match the end.
fn push_tail(ops: &mut Vec<Op>, sig: &Signature, tail: &[u8]) {
    let short = sig.file_size % u64::from(sig.block_size);
    if short > 0 && tail.len() as u64 >= short {
        let last = sig.blocks.len() - 1;
        let (head, end) = tail.split_at(tail.len() - short as usize);
        let block = &sig.blocks[last];
        if Rolling::new(end).value() == block.weak && strong(end) == block.strong {
            push_literal(ops, head);
            ops.push(Op::Block(last as u32));
            return;
        }
    }
    push_literal(ops, tail);
}

fn push_literal(ops: &mut Vec<Op>, bytes: &[u8]) {
    for chunk in bytes.chunks(MAX_LITERAL) {
        ops.push(Op::Literal(chunk.to_vec()));
    }
}

/// Rebuilds the new version from `old` and `delta` into `out`, verifying its hash. On an
/// error, what was written to `out` must be thrown away.
pub fn apply(
    old: &mut (impl Read + Seek),
    sig: &Signature,
    delta: &Delta,
    out: &mut impl Write,
) -> Result<(), DeltaError> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; sig.block_size as usize];
    for op in &delta.ops {
        let bytes: &[u8] = match op {
            Op::Literal(bytes) => bytes,
            Op::Block(block) => {
                if *block as usize >= sig.blocks.len() {
                    return Err(DeltaError::NoSuchBlock {
                        block: *block,
                        blocks: sig.blocks.len(),
                    });
                }
                let offset = u64::from(*block) * u64::from(sig.block_size);
                old.seek(SeekFrom::Start(offset))?;
                let n = read_full(old, &mut buf)?;
                &buf[..n]
            }
        };
        hasher.update(bytes);
        out.write_all(bytes)?;
    }
    if hasher.finalize().as_bytes() != &delta.result_hash {
        return Err(DeltaError::HashMismatch);
    }
    Ok(())
}

fn strong(bytes: &[u8]) -> [u8; 16] {
    let hash = blake3::hash(bytes);
    hash.as_bytes()[..16].try_into().expect("16 of 32 bytes")
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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
