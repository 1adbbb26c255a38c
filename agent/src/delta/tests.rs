use std::io::Cursor;

use super::*;
use crate::test_noise as noise;

/// Signs `old`, diffs `new` against it, applies the delta, and checks the result.
fn round_trip(old: &[u8], new: &[u8]) -> Delta {
    let sig = signature(&mut Cursor::new(old), old.len() as u64).unwrap();
    let delta = delta(&sig, new);
    let mut rebuilt = Vec::new();
    apply(&mut Cursor::new(old), &sig, &delta, &mut rebuilt).unwrap();
    assert_eq!(
        rebuilt,
        new,
        "old {} bytes, new {} bytes",
        old.len(),
        new.len()
    );
    delta
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
    let delta = round_trip(&old, &new);
    let block = u64::from(block_size_for(old.len() as u64));
    assert!(
        delta.literal_bytes() <= 2 * block,
        "{} literal bytes, block {block}",
        delta.literal_bytes()
    );
}

#[test]
fn a_shift_by_one_byte_still_finds_the_blocks() {
    let old = noise(9, 200_000);
    let mut new = vec![0xAB];
    new.extend(&old);
    let delta = round_trip(&old, &new);
    assert!(
        delta.literal_bytes() < 1000,
        "{} literal bytes",
        delta.literal_bytes()
    );
}

#[test]
fn the_short_last_block_matches_at_the_end() {
    let old = noise(11, 10_000 + 123);
    let mut new = noise(12, 50);
    new.extend(&old);
    let delta = round_trip(&old, &new);
    assert_eq!(delta.literal_bytes(), 50);
}

#[test]
fn a_wrong_result_is_caught() {
    let old = noise(5, 20_000);
    let sig = signature(&mut Cursor::new(&old), old.len() as u64).unwrap();
    let mut delta = delta(&sig, &old);
    delta.ops.push(Op::Literal(b"tampered".to_vec()));
    let err = apply(&mut Cursor::new(&old), &sig, &delta, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, DeltaError::HashMismatch));
    delta.ops = vec![Op::Block(9999)];
    let err = apply(&mut Cursor::new(&old), &sig, &delta, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, DeltaError::NoSuchBlock { block: 9999, .. }));
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
