use std::io::{Cursor, Seek};

use super::*;
use crate::testing::noise;

/// Signs `old`, encodes `new` against it, rebuilds, checks the result, and returns the ops.
fn round_trip(old: &[u8], new: &[u8]) -> Vec<Op> {
    let sig = signature(&mut Cursor::new(old), old.len() as u64).unwrap();
    let mut ops = Vec::new();
    let encoded = encode(&mut Cursor::new(new), Some(&sig), &mut |op| {
        ops.push(op);
        Ok(())
    })
    .unwrap();
    assert_eq!(encoded.size, new.len() as u64);
    let rebuilt = rebuild(old, sig.block_size, &ops, &encoded.hash).unwrap();
    assert_eq!(
        rebuilt,
        new,
        "old {} bytes, new {} bytes",
        old.len(),
        new.len()
    );
    ops
}

fn rebuild(
    old: &[u8],
    block_size: u32,
    ops: &[Op],
    hash: &blake3::Hash,
) -> Result<Vec<u8>, DeltaError> {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(old).unwrap();
    file.rewind().unwrap();
    let mut rebuild = Rebuild::new(Some(file), block_size, Vec::new())?;
    for op in ops {
        rebuild.push(op)?;
    }
    rebuild.finish(hash)
}

fn literal_bytes(ops: &[Op]) -> u64 {
    ops.iter().map(|op| op.literal_len() as u64).sum()
}

#[test]
fn every_kind_of_edit_round_trips() {
    for (seed, len) in [
        (1, 0),
        (2, 1),
        (3, 699),
        (4, 700),
        (5, 701),
        (6, 10_000),
        (7, 123_457),
        (8, 1_000_003),
    ] {
        let old = noise(seed, len);
        let mut cases: Vec<Vec<u8>> = vec![old.clone(), Vec::new(), noise(seed + 100, len)];
        let mut inserted = old.clone();
        inserted.splice(len / 2..len / 2, noise(seed + 200, 333));
        cases.push(inserted);
        let mut removed = old.clone();
        removed.drain(len / 3..(len / 3 + 500).min(len));
        cases.push(removed);
        let mut appended = old.clone();
        appended.extend(noise(seed + 300, 1000));
        cases.push(appended);
        let mut prepended = noise(seed + 400, 17);
        prepended.extend(&old);
        cases.push(prepended);
        for new in cases {
            round_trip(&old, &new);
        }
    }
}

#[test]
fn a_small_edit_in_a_large_file_sends_a_few_blocks() {
    let old = noise(42, 4 << 20);
    let mut new = old.clone();
    new[2_000_000..2_000_010].copy_from_slice(b"0123456789");
    let ops = round_trip(&old, &new);
    let block = u64::from(block_size_for(old.len() as u64));
    assert!(
        literal_bytes(&ops) <= 2 * block,
        "{} literal bytes, block {block}",
        literal_bytes(&ops)
    );
}

#[test]
fn a_long_new_stretch_streams_in_bounded_literals() {
    let old = noise(13, 1 << 20);
    let mut new = old.clone();
    new.splice(100_000..100_000, noise(14, 3 << 20));
    let ops = round_trip(&old, &new);
    assert!(ops.iter().all(|op| op.literal_len() <= MAX_LITERAL));
    assert!(
        literal_bytes(&ops) < (3 << 20) + 2 * 1024 * 2,
        "{}",
        literal_bytes(&ops)
    );
}

#[test]
fn an_unchanged_stretch_is_one_op() {
    let old = noise(31, 1 << 20);
    let mut new = old.clone();
    new[500_000] ^= 1;
    let ops = round_trip(&old, &new);
    assert!(ops.len() <= 3, "{} ops", ops.len());
}

#[test]
fn a_shift_by_one_byte_still_finds_the_blocks() {
    let old = noise(9, 200_000);
    let mut new = vec![0xAB];
    new.extend(&old);
    let ops = round_trip(&old, &new);
    assert!(
        literal_bytes(&ops) < 1000,
        "{} literal bytes",
        literal_bytes(&ops)
    );
}

#[test]
fn the_short_last_block_matches_at_the_end() {
    let old = noise(11, 10_000 + 123);
    let mut new = noise(12, 50);
    new.extend(&old);
    let ops = round_trip(&old, &new);
    assert_eq!(literal_bytes(&ops), 50);
}

#[test]
fn without_a_base_the_file_goes_whole() {
    let new = noise(15, 300_000);
    let mut ops = Vec::new();
    let encoded = encode(&mut Cursor::new(&new), None, &mut |op| {
        ops.push(op);
        Ok(())
    })
    .unwrap();
    assert_eq!(literal_bytes(&ops), 300_000);
    assert_eq!(rebuild(&[], 700, &ops, &encoded.hash).unwrap(), new);
}

#[test]
fn a_wrong_result_is_caught() {
    let old = noise(5, 20_000);
    let mut ops = round_trip(&old, &old);
    let hash = blake3::hash(&old);
    let block = block_size_for(old.len() as u64);
    ops.push(Op::Literal(b"tampered".to_vec()));
    let err = rebuild(&old, block, &ops, &hash).unwrap_err();
    assert!(matches!(err, DeltaError::HashMismatch));
    let far = Op::Blocks {
        first: 9999,
        count: 1,
    };
    let err = rebuild(&old, block, &[far], &hash).unwrap_err();
    assert!(
        matches!(err, DeltaError::NoSuchBlock { block: 9999, .. }),
        "{err}"
    );
}

#[test]
fn signatures_are_as_small_as_rsyncs() {
    // rsync 3 sends 4 + 3 bytes per block for a 100 MiB file, 4 + 2 for a small one.
    assert_eq!(strong_len_for(100 << 20, block_size_for(100 << 20)), 3);
    assert_eq!(strong_len_for(10_000, 700), 2);
    assert_eq!(strong_len_for(1 << 40, MAX_BLOCK), 6);
    let old = noise(21, 1 << 20);
    let sig = signature(&mut Cursor::new(&old), old.len() as u64).unwrap();
    assert_eq!(sig.blocks(), (1 << 20) / 1024);
    assert_eq!(
        sig.sums.len(),
        sig.blocks() * (4 + usize::from(sig.strong_len))
    );
}

#[test]
fn rolling_equals_recomputing() {
    let data = noise(3, 5000);
    let mut rolling = Rolling::new(&data[..1000]);
    for start in 1..4000 {
        rolling.roll(data[start - 1], data[start + 999]);
        assert_eq!(
            rolling.value(),
            Rolling::new(&data[start..start + 1000]).value(),
            "at {start}"
        );
    }
}

#[test]
fn block_sizes_follow_the_square_root() {
    assert_eq!(block_size_for(0), 700);
    assert_eq!(block_size_for(1 << 20), 1024);
    assert_eq!(block_size_for(1 << 40), 128 * 1024);
}

#[test]
fn signatures_and_block_sizes_a_peer_chose_are_checked_before_use() {
    let new = crate::testing::noise(7, 50_000);
    let good = signature(&mut &new[..], new.len() as u64).unwrap();
    let mut refused = Vec::new();
    for block_size in [0, 1, 699, 128 * 1024 + 1, u32::MAX] {
        refused.push(Signature {
            block_size,
            ..good.clone()
        });
    }
    refused.push(Signature {
        strong_len: 0,
        ..good.clone()
    });
    refused.push(Signature {
        strong_len: 200,
        ..good.clone()
    });
    refused.push(Signature {
        file_size: u64::MAX,
        ..good.clone()
    });
    let mut short = good.clone();
    short.sums.pop();
    refused.push(short);
    for sig in refused {
        let encoded = encode(&mut &new[..], Some(&sig), &mut |_| Ok(()));
        let e = encoded.expect_err(&format!("{sig:?} was used"));
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    }
    encode(&mut &new[..], Some(&good), &mut |_| Ok(())).unwrap();

    let old = tempfile::tempfile().unwrap();
    for block_size in [0, u32::MAX] {
        let rebuild = Rebuild::new(Some(old.try_clone().unwrap()), block_size, Vec::new());
        assert!(rebuild.is_err(), "a block size of {block_size} was taken");
    }
}
