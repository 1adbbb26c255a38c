//! Bytes on the wire between agents: file data compressed where the link is slow, edits sent
//! as deltas, and a delta that fails its check sent again whole.

use super::*;

/// Runs a job of 8 MiB of log files between the site's agents: its bytes and bytes sent.
fn sync_logs(site: &Site) -> (u64, u64) {
    let (src, dst) = site.job("logs", "mirror", &[]);
    for day in 0..8 {
        fs::write(src.join(format!("day{day}.log")), log_text(1 << 20, day)).unwrap();
    }
    let run = site.run("logs");
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(differences(&src, &dst, "mirror"), "");
    let bytes = |field: &str| run[field].as_u64().unwrap();
    (bytes("bytes_total"), bytes("bytes_sent"))
}

#[test]
fn file_data_goes_compressed_over_a_slow_link_and_raw_over_loopback() {
    let (total, sent) = sync_logs(&Site::new());
    assert!(
        sent >= total,
        "loopback is faster than the compressor, yet {sent} bytes carried {total}"
    );
    let Some(link) = SlowLink::new("40mbit") else {
        return;
    };
    let mut env = Env::new(Backend::Sqlite);
    env.network = Some(link);
    let (total, sent) = sync_logs(&Site::on(env));
    // The first 100 ms go raw, before the link is measured.
    assert!(
        sent < total / 2,
        "over 40 Mbit/s, {sent} bytes carried {total} bytes of text"
    );
}

#[test]
fn many_edited_files_each_go_as_a_delta() {
    let site = Site::new();
    let (src, dst) = site.job("edited", "mirror", &[]);
    // More files than the signatures asked for ahead (64), so the window refills.
    let files = 150;
    for i in 0..files {
        fs::write(src.join(format!("{i:03}.bin")), noise(64 * 1024)).unwrap();
    }
    assert_eq!(site.run("edited")["state"], "succeeded");
    for i in 0..files {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .open(src.join(format!("{i:03}.bin")))
            .unwrap();
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(30_000)).unwrap();
        file.write_all(b"edit").unwrap();
    }
    let run = site.run("edited");
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["files_copied"], files, "{run:#}");
    assert_eq!(differences(&src, &dst, "mirror"), "");
    // Whole, they would be 9.6 MB; as deltas, a block and the signatures' overhead each.
    let sent = run["bytes_sent"].as_u64().unwrap();
    assert!(
        sent < files * 8 * 1024,
        "{sent} bytes for 150 edits: {run:#}"
    );
}

#[test]
fn a_delta_that_does_not_rebuild_the_file_is_sent_again_whole() {
    let site = Site::new();
    let (src, dst) = site.job("collided", "mirror", &[]);
    let old = false_match_base();
    fs::write(src.join("f.bin"), &old).unwrap();
    assert_eq!(site.run("collided")["state"], "succeeded");
    // A new version whose first block the old one's signature cannot tell from its own: the
    // delta says "old block 0", which rebuilds the old bytes, and the whole-file hash refuses.
    let new = false_match_of(&old);
    fs::write(src.join("f.bin"), &new).unwrap();
    let run = site.run("collided");
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["files_copied"], 1, "{run:#}");
    assert_eq!(fs::read(dst.join("f.bin")).unwrap(), new);
    assert_eq!(differences(&src, &dst, "mirror"), "");
}

/// Two blocks of text: no byte is within 2 of either end of its range, so any may move by 2.
fn false_match_base() -> Vec<u8> {
    log_text(1400, 7)
}

/// `old` with its first block changed so that its signature entry stays the same. Adding 1, -2
/// and 1 to three bytes in a row keeps both of rsync's running sums; the strong hash is only 2
/// bytes long for a file this small, so among 2^20 such changes one matches it too.
fn false_match_of(old: &[u8]) -> Vec<u8> {
    let signature =
        |bytes: &[u8]| ferry_engine::delta::signature(&mut &bytes[..], bytes.len() as u64).unwrap();
    let wanted = signature(old);
    assert_eq!((wanted.block_size, wanted.strong_len), (700, 2));
    let first_block = &old[..700];
    let entry = signature(first_block).sums;
    let found = (1u32..1 << 20).find_map(|n| {
        let mut block = first_block.to_vec();
        for bit in (0..20).filter(|bit| n & 1 << bit != 0) {
            let at = bit * 3;
            block[at] += 1;
            block[at + 1] -= 2;
            block[at + 2] += 1;
        }
        (signature(&block).sums == entry).then_some(block)
    });
    let block = found.expect("no false match among 2^20 candidates: is the strong hash longer?");
    let new = [&block[..], &old[700..]].concat();
    let width = 4 + usize::from(wanted.strong_len);
    assert_eq!(signature(&new).sums[..width], wanted.sums[..width]);
    new
}
