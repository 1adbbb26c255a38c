use std::ffi::OsStr;
use std::num::NonZeroU64;
use std::os::unix::ffi::OsStrExt;

use super::*;

fn samples() -> Vec<Entry> {
    let mtime = Mtime {
        secs: 1_700_000_000,
        nanos: 5,
    };
    let file = Entry::file(5, mtime, 0o4644).with_meta(Meta {
        owner: Some(Owner {
            uid: 1000,
            gid: 100,
        }),
        acl: NonZeroU64::new(7),
        xattrs: NonZeroU64::new(9),
        link: NonZeroU64::new(3),
        sparse: true,
    });
    let link = Entry::symlink(OsStr::from_bytes(b"a/\xff").into(), mtime, 0o777);
    let before_1970 = Mtime {
        secs: -1,
        nanos: 999_999_999,
    };
    let device = Entry::special(Node::BlockDevice, 0x0801, before_1970, 0o660).with_meta(Meta {
        owner: Some(Owner { uid: 0, gid: 6 }),
        ..Meta::default()
    });
    vec![file, Entry::folder(0o755), link, device]
}

#[test]
fn an_entry_is_written_as_older_agents_write_and_read_it() {
    for (entry, (json, packed)) in samples().into_iter().zip(WRITTEN) {
        assert_eq!(serde_json::to_string(&entry).unwrap(), json);
        assert_eq!(serde_json::from_str::<Entry>(json).unwrap(), entry);
        assert_eq!(hex(&rmp_serde::to_vec_named(&entry).unwrap()), packed);
        let bytes = unhex(packed);
        assert_eq!(rmp_serde::from_slice::<Entry>(&bytes).unwrap(), entry);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// As this version's agents wrote them (JSON in a sync job's base; MessagePack in frames).
const WRITTEN: [(&str, &str); 4] = [
    (
        r#"{"kind":"File","size":5,"mtime":{"secs":1700000000,"nanos":5},"mode":2468,"meta":{"owner":{"uid":1000,"gid":100},"acl":7,"xattrs":9,"link":3,"sparse":true}}"#,
        "85a46b696e64a446696c65a473697a6505a56d74696d6582a473656373ce6553f100a56e616e6f7305a46d6f6465cd09a4a46d65746185a56f776e657282a3756964cd03e8a367696464a361636c07a678617474727309a46c696e6b03a6737061727365c3",
    ),
    (
        r#"{"kind":"Dir","size":0,"mtime":{"secs":0,"nanos":0},"mode":493,"meta":{}}"#,
        "85a46b696e64a3446972a473697a6500a56d74696d6582a47365637300a56e616e6f7300a46d6f6465cd01eda46d65746180",
    ),
    (
        r#"{"kind":{"Symlink":{"target":[97,47,255]}},"size":0,"mtime":{"secs":1700000000,"nanos":5},"mode":511,"meta":{}}"#,
        "85a46b696e6481a753796d6c696e6b81a6746172676574c403612fffa473697a6500a56d74696d6582a473656373ce6553f100a56e616e6f7305a46d6f6465cd01ffa46d65746180",
    ),
    (
        r#"{"kind":{"Special":{"node":"BlockDevice","device":2049}},"size":0,"mtime":{"secs":-1,"nanos":999999999},"mode":432,"meta":{"owner":{"uid":0,"gid":6}}}"#,
        "85a46b696e6481a75370656369616c82a46e6f6465ab426c6f636b446576696365a6646576696365cd0801a473697a6500a56d74696d6582a473656373ffa56e616e6f73ce3b9ac9ffa46d6f6465cd01b0a46d65746181a56f776e657282a375696400a367696406",
    ),
];

#[test]
fn an_entry_gives_back_each_fact_it_was_made_with() {
    let [file, folder, link, device] = samples().try_into().unwrap();
    assert_eq!(
        (file.kind(), file.size, file.mode()),
        (Kind::File, 5, 0o4644)
    );
    assert_eq!(file.kept_mode(), 0o644, "setuid and setgid are dropped");
    let meta = file.meta();
    assert_eq!(
        meta.owner,
        Some(Owner {
            uid: 1000,
            gid: 100
        })
    );
    assert_eq!(
        (meta.acl, meta.xattrs),
        (NonZeroU64::new(7), NonZeroU64::new(9))
    );
    assert_eq!((meta.link, meta.sparse), (NonZeroU64::new(3), true));
    assert_eq!((file.target(), file.device()), (None, 0));

    assert_eq!(
        (folder.kind(), folder.mode(), folder.owner()),
        (Kind::Dir, 0o755, None)
    );
    assert_eq!(folder.meta(), Meta::default());

    assert_eq!(link.kind(), Kind::Symlink);
    assert_eq!(link.target(), Some(Path::new(OsStr::from_bytes(b"a/\xff"))));

    assert_eq!(device.kind(), Kind::Special(Node::BlockDevice));
    assert_eq!((device.device(), device.mode()), (0x0801, 0o660));
    assert_eq!(device.owner(), Some(Owner { uid: 0, gid: 6 }));
    assert_eq!({ device.mtime.secs }, -1);
    for node in Node::ALL {
        assert_eq!(
            Entry::special(node, 0, Mtime::at(0), 0).kind(),
            Kind::Special(node)
        );
    }
}

#[test]
fn entries_with_the_same_facts_are_equal_however_they_came_by_them() {
    let plain = Entry::file(5, Mtime::at(1), 0o644);
    let mut linked_then_not = plain.clone().with_meta(Meta {
        owner: Some(Owner { uid: 7, gid: 7 }),
        link: NonZeroU64::new(9),
        ..Meta::default()
    });
    assert_ne!(linked_then_not, plain);
    linked_then_not.set_meta(Meta::default());
    assert_eq!(linked_then_not, plain);
    assert!(
        Entry::symlink("a".into(), Mtime::at(1), 0o777).looks_unchanged(&Entry::symlink(
            "a".into(),
            Mtime::at(2),
            0o777
        ))
    );
    assert!(
        !Entry::symlink("a".into(), Mtime::at(1), 0o777).looks_unchanged(&Entry::symlink(
            "b".into(),
            Mtime::at(1),
            0o777
        ))
    );
    let disk = |number| Entry::special(Node::BlockDevice, number, Mtime::at(1), 0o660);
    assert!(disk(1).looks_unchanged(&disk(1)) && !disk(1).looks_unchanged(&disk(2)));
}

#[test]
fn mode_bits_beyond_the_permissions_from_a_peer_are_dropped() {
    let json = r#"{"kind":"File","size":1,"mtime":{"secs":0,"nanos":0},"mode":33188}"#;
    let read: Entry = serde_json::from_str(json).unwrap();
    assert_eq!(
        (read.kind(), read.mode()),
        (Kind::File, 0o644),
        "0o100644 is a file's st_mode"
    );
}
