use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

use super::*;
use crate::test_noise as noise;

const ONE: [u8; 32] = [1; 32];
const TWO: [u8; 32] = [2; 32];

/// Seals `messages` as one record each, as a client would send them.
async fn sealed_records(messages: &[&[u8]]) -> Vec<u8> {
    let mut sender = Sealed::with_secrets(Vec::new(), &ONE, &TWO);
    for message in messages {
        sender.write_all(message).await.unwrap();
        sender.flush().await.unwrap();
    }
    sender.inner
}

/// Reads all of `wire` as the agent would.
async fn open_all(wire: &[u8]) -> io::Result<Vec<u8>> {
    let mut receiver = Sealed::with_secrets(wire, &TWO, &ONE);
    let mut read = Vec::new();
    receiver.read_to_end(&mut read).await.map(|_| read)
}

fn record_len(wire: &[u8]) -> usize {
    LEN + u32::from_be_bytes(wire[..LEN].try_into().unwrap()) as usize
}

#[tokio::test]
async fn what_is_written_is_read_back_whole_across_records_and_short_reads() {
    let (a, b) = duplex(4096);
    let mut writer = Sealed::with_secrets(a, &ONE, &TWO);
    let mut reader = Sealed::with_secrets(b, &TWO, &ONE);
    let data = noise(7, 3 * MAX_RECORD + 12_345);
    let sent = data.clone();
    let writing = tokio::spawn(async move {
        let sizes = noise(8, 64);
        let mut rest = &sent[..];
        for (i, size) in sizes.iter().cycle().enumerate() {
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(usize::from(*size) * 997 + 1);
            writer.write_all(&rest[..n]).await.unwrap();
            rest = &rest[n..];
            if i % 3 == 0 {
                writer.flush().await.unwrap();
            }
        }
        writer.shutdown().await.unwrap();
    });
    let mut read = Vec::new();
    reader.read_to_end(&mut read).await.unwrap();
    writing.await.unwrap();
    assert_eq!(read.len(), data.len());
    assert!(read == data, "the bytes read differ from those written");
}

#[tokio::test]
async fn an_altered_byte_anywhere_in_a_record_is_refused() {
    let wire = sealed_records(&[b"remove /srv/share/report.pdf"]).await;
    assert_eq!(
        open_all(&wire).await.unwrap(),
        b"remove /srv/share/report.pdf"
    );
    for at in [0, LEN, LEN + 7, wire.len() - 1] {
        let mut altered = wire.clone();
        altered[at] ^= 0x20;
        let error = open_all(&altered).await.unwrap_err();
        assert_eq!(
            error.kind(),
            io::ErrorKind::InvalidData,
            "byte {at}: {error}"
        );
    }
}

#[tokio::test]
async fn records_replayed_dropped_or_reordered_are_refused() {
    let wire = sealed_records(&[b"first", b"second", b"third"]).await;
    let first = record_len(&wire);
    let second = first + record_len(&wire[first..]);
    let (one, two, three) = (&wire[..first], &wire[first..second], &wire[second..]);
    assert_eq!(open_all(&wire).await.unwrap(), b"firstsecondthird");
    for (case, records) in [
        ("replayed", [one, one, two].concat()),
        ("dropped", [one, three].concat()),
        ("reordered", [two, one, three].concat()),
    ] {
        let error = open_all(&records).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{case}: {error}");
    }
}

#[tokio::test]
async fn a_record_reflected_back_or_from_another_session_is_refused() {
    let wire = sealed_records(&[b"hello"]).await;
    let mut reflected = Sealed::with_secrets(&wire[..], &ONE, &TWO);
    let mut other_session = Sealed::with_secrets(&wire[..], &TWO, &[3; 32]);
    for receiver in [&mut reflected, &mut other_session] {
        let error = receiver.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }
}

#[tokio::test]
async fn a_connection_cut_inside_a_record_is_an_error_but_one_cut_between_records_is_the_end() {
    let wire = sealed_records(&[b"one", b"two"]).await;
    let first = record_len(&wire);
    assert_eq!(open_all(&wire[..first]).await.unwrap(), b"one");
    for cut in [2, first + 2, first + LEN + 1, wire.len() - 1] {
        let error = open_all(&wire[..cut]).await.unwrap_err();
        assert_eq!(
            error.kind(),
            io::ErrorKind::UnexpectedEof,
            "cut at {cut}: {error}"
        );
    }
}

#[tokio::test]
async fn an_impossible_record_length_is_refused_before_its_body_is_read() {
    for len in [0, TAG as u32 - 1, (MAX_RECORD + TAG + 1) as u32, u32::MAX] {
        let error = open_all(&len.to_be_bytes()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "length {len}");
        assert!(
            error.to_string().contains(&format!("{len} bytes")),
            "{error}"
        );
    }
}

#[tokio::test]
async fn keys_change_every_generation_and_both_ends_change_together() {
    let messages: Vec<Vec<u8>> = (0..7u8).map(|i| vec![i; 100]).collect();
    let mut sender = Sealed::with_secrets(Vec::new(), &ONE, &TWO);
    sender.send.records_per_key = 2;
    for message in &messages {
        sender.write_all(message).await.unwrap();
        sender.flush().await.unwrap();
    }
    let wire = sender.inner;
    let receive = |records_per_key| {
        let mut receiver = Sealed::with_secrets(&wire[..], &TWO, &ONE);
        receiver.receive.records_per_key = records_per_key;
        async move {
            let mut read = Vec::new();
            receiver.read_to_end(&mut read).await.map(|_| read)
        }
    };
    assert_eq!(receive(2).await.unwrap(), messages.concat());
    // A receiver still on the first key opens the first two records, not the third.
    let error = receive(4).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
}
