use super::*;

use std::sync::mpsc;
use std::time::Duration;

/// 24 folders of 4 folders of 6 files, a symlink and an empty folder in each, and a folder
/// the filter leaves out: 24 + 24 * 4 * (1 + 6 + 2) = 888 entries admitted.
fn share() -> tempfile::TempDir {
    let share = tempfile::tempdir().unwrap();
    for top in 0..24 {
        for sub in 0..4 {
            let folder = share.path().join(format!("top{top:02}/sub{sub}"));
            std::fs::create_dir_all(folder.join("empty")).unwrap();
            std::os::unix::fs::symlink("../elsewhere", folder.join("link")).unwrap();
            for file in 0..6 {
                std::fs::write(
                    folder.join(format!("f{file}")),
                    format!("{top}-{sub}-{file}"),
                )
                .unwrap();
            }
        }
        std::fs::create_dir_all(share.path().join(format!("top{top:02}/cache/deep"))).unwrap();
    }
    share
}

fn walked(share: &Path, pace: Pace) -> Result<Vec<(PathBuf, Entry)>> {
    let replica = LocalEndpoint::new(share);
    let root = replica.root()?;
    let filter = Filter::new(&[], &["cache/".into()]).unwrap();
    let mut seen = Vec::new();
    let mut each = |path: &Path, entry: Entry| {
        seen.push((path.to_path_buf(), entry));
        Ok(())
    };
    replica.walk(&root, Path::new(""), &filter, (pace, &mut each))?;
    Ok(seen)
}

#[test]
fn workers_walking_ahead_hand_on_what_one_walker_does_in_a_trees_order() {
    let share = share();
    let alone = walked(
        share.path(),
        Pace {
            workers: 0,
            ahead: 0,
        },
    )
    .unwrap();
    assert_eq!(alone.len(), 888, "every entry the filter admits");
    assert!(
        alone.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "a tree's order, each path once"
    );
    assert!(alone.iter().all(|(path, _)| !path.ends_with("cache")));
    // Workers held back after a single entry ahead, and free to list everything ahead.
    for ahead in [1, 1 << 16] {
        let together = walked(share.path(), Pace { workers: 3, ahead }).unwrap();
        assert_eq!(together, alone, "3 workers, {ahead} entries ahead");
    }
}

/// The taker of the entries fails (an agent whose scheduler hung up): the walk ends with its
/// error, and the workers with it, rather than listing the rest of the share or waiting.
#[test]
fn a_walk_ends_with_its_workers_when_the_taker_fails() {
    let share = share();
    let (done, finished) = mpsc::channel();
    let path = share.path().to_path_buf();
    std::thread::spawn(move || {
        let replica = LocalEndpoint::new(&path);
        let root = replica.root().unwrap();
        let mut taken = 0;
        let mut each = |path: &Path, _: Entry| {
            taken += 1;
            match taken {
                100 => Err(replica.err("send", path)(io::Error::other("hung up"))),
                _ => Ok(()),
            }
        };
        let pace = Pace {
            workers: 3,
            ahead: 8,
        };
        let walked = replica.walk(&root, Path::new(""), &Filter::default(), (pace, &mut each));
        done.send((walked.map_err(|e| e.to_string()), taken))
            .unwrap();
    });
    let (walked, taken) =
        (finished.recv_timeout(Duration::from_secs(60))).expect("the walk ended within a minute");
    assert!(walked.unwrap_err().contains("hung up"));
    assert_eq!(taken, 100, "nothing handed on after the failure");
}
