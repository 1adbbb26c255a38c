//! The group `million` (`bash bench/million.sh [ROUNDS]`): a million small files, ferry's two
//! agents against `rsync --daemon`. The agents stay up across a round's runs, as in
//! production, so their change journals carry from one run to the next; each rsync run starts
//! its daemon afresh (it keeps nothing between runs either way). Cases: the initial copy, the
//! re-sync right after it (ferry's destination journal reports everything the copy wrote), a
//! re-sync with nothing changed, one after 0.1 % of the files were edited, and one that looks
//! at every file with nothing in the page cache, as after a reboot or on a share too large to
//! stay cached (ferry: a job its journals know nothing of).

use super::*;

const FILES: usize = 1_000_000;
const PER_FOLDER: usize = 1_000;

const CASES: [&str; 6] = [
    "initial copy, 1,000,000 small files (64 B-1 KiB, 1,000 folders)",
    "initial copy, until on disk (rsync: then `sync`; ferry's copy is durable as it ends)",
    "re-sync right after the copy",
    "re-sync, nothing changed",
    "re-sync, 0.1 % changed (1,000 files edited)",
    "re-sync, nothing changed, every file looked at from a cold cache",
];

/// Where the data set and the copies' file systems live: `$FERRY_BENCH_DIR`, by default
/// /var/tmp/ferry-bench.
fn work_dir() -> PathBuf {
    std::env::var_os("FERRY_BENCH_DIR")
        .map_or_else(|| PathBuf::from("/var/tmp/ferry-bench"), PathBuf::from)
}

/// The data set: generated once into the work folder and kept between runs; writing a million
/// files takes minutes.
fn data_set() -> Result<PathBuf> {
    let root = work_dir().join(format!("small-{FILES}"));
    if root.is_dir() {
        return Ok(root);
    }
    let partial = root.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    eprintln!("generating {FILES} files in {}", root.display());
    let mut noise = Noise(0x0111);
    for i in 0..FILES {
        let path = file_path(&partial, i);
        if i % PER_FOLDER == 0 {
            fs::create_dir_all(path.parent().context("a folder")?)?;
        }
        let len = 64 + (noise.next() % 960) as usize;
        fs::write(path, noise.text(len))?;
    }
    fs::rename(&partial, &root)?;
    Ok(root)
}

/// A fresh ext4 file system mounted at a folder until dropped (a loop device over a sparse
/// image in the work folder): each tool copies onto one with no history, so none pays for
/// another's million inodes (ext4 slows as it fills, and for minutes after mass deletions).
struct FreshFs {
    image: PathBuf,
    at: PathBuf,
}

impl FreshFs {
    fn mount(at: &Path) -> Result<Self> {
        fs::create_dir_all(at)?;
        let image = work_dir().join("copy.img");
        let _ = fs::remove_file(&image);
        fs::File::create(&image)?.set_len(8 << 30)?;
        let fresh = Self {
            image,
            at: at.to_path_buf(),
        };
        let inodes = (FILES + FILES / 10).to_string();
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-N", &inodes])
            .arg(&fresh.image)
            .status()?;
        let mounted = made.success()
            && (Command::new("mount").args(["-o", "loop"]))
                .arg(&fresh.image)
                .arg(at)
                .status()?
                .success();
        if !mounted {
            bail!(
                "cannot make and mount a file system at {} (needs root)",
                at.display()
            );
        }
        Ok(fresh)
    }
}

impl Drop for FreshFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
        let _ = fs::remove_file(&self.image);
    }
}

fn file_path(root: &Path, i: usize) -> PathBuf {
    root.join(format!("d{:04}", i / PER_FOLDER))
        .join(format!("f{:03}.txt", i % PER_FOLDER))
}

/// Reads every file of the data set, so that a tool's copy finds it in the page cache however
/// the run before it left the cache (the cold case empties it).
fn warm(root: &Path) -> Result<()> {
    for i in 0..FILES {
        fs::read(file_path(root, i))?;
    }
    Ok(())
}

/// Writes what is dirty and empties the page cache, so the next run reads every folder and
/// inode from the disk.
fn drop_caches() -> Result<()> {
    Command::new("sync").status()?;
    fs::write("/proc/sys/vm/drop_caches", "3")?;
    Ok(())
}

/// Appends a line to one file in a thousand; `turn` picks other files each time.
fn change_a_thousandth(root: &Path, turn: usize) -> Result<()> {
    for k in 0..FILES / 1000 {
        let path = file_path(root, k * 1000 + turn * 7 % 1000);
        let mut file = fs::OpenOptions::new().append(true).open(path)?;
        file.write_all(b"edited\n")?;
    }
    Ok(())
}

impl Bench {
    /// Every case for every tool, `rounds` times; each round copies into a new folder.
    pub(crate) fn million(&self, rounds: usize) -> Result<Vec<(&'static str, CaseSamples)>> {
        let source = data_set()?;
        let mut cases: Vec<CaseSamples> = (0..CASES.len())
            .map(|_| self.tools.iter().map(|t| (*t, vec![])).collect())
            .collect();
        for r in 1..=rounds {
            for turn in round_order(self.tools.len(), r) {
                let tool = self.tools[turn];
                warm(&source)?;
                let fresh = FreshFs::mount(&self.dst[tool as usize].join(format!("fs-{r}")))?;
                let to = format!("fs-{r}/million");
                let change = || change_a_thousandth(&source, r * self.tools.len() + turn);
                let samples = match tool {
                    Tool::Ferry => self.million_ferry(&source, &to, change)?,
                    rsync => self.million_rsync(&source, &to, rsync, change)?,
                };
                for (case, sample) in samples.into_iter().enumerate() {
                    eprintln!("round {r} {}, {}: {sample:?}", tool.label(), CASES[case]);
                    cases[case][turn].1.push(sample);
                }
                self.check_replica(tool, &source, &to)?;
                drop(fresh);
            }
        }
        Ok(CASES.into_iter().zip(cases).collect())
    }

    fn million_ferry(
        &self,
        source: &Path,
        to: &str,
        change: impl Fn() -> Result<()>,
    ) -> Result<Vec<Sample>> {
        let pair = Pair::start(self, source, Tool::Ferry)?;
        let target = self.dst[Tool::Ferry as usize].join(to);
        let run_job = |job| {
            Command::new("sync").status()?;
            self.ferry_on(&pair, source, &target, (Tool::Ferry, job))
        };
        let run = || run_job("bench");
        let copy = run()?;
        let durable = copy;
        // The copy's flood of changes may have overflowed the destination's watch.
        pair.wait_for_journals()?;
        let after_copy = run()?;
        let quiet = run()?;
        change()?;
        let changed = run()?;
        drop_caches()?;
        let cold = run_job("bench-cold")?;
        Ok(vec![copy, durable, after_copy, quiet, changed, cold])
    }

    fn million_rsync(
        &self,
        source: &Path,
        to: &str,
        tool: Tool,
        change: impl Fn() -> Result<()>,
    ) -> Result<Vec<Sample>> {
        let run = || {
            Command::new("sync").status()?;
            self.rsync(source, to, tool)
        };
        let copy = run()?;
        let flushing = Instant::now();
        Command::new("sync").status()?;
        let durable = Sample {
            wall: copy.wall + flushing.elapsed(),
            ..copy
        };
        let (after_copy, quiet) = (run()?, run()?);
        change()?;
        let changed = run()?;
        drop_caches()?;
        Ok(vec![copy, durable, after_copy, quiet, changed, run()?])
    }

    /// Fails unless `tool`'s copy `to` is identical to `source` (by size and time: comparing
    /// a million files' content would take longer than the benchmark).
    fn check_replica(&self, tool: Tool, source: &Path, to: &str) -> Result<()> {
        let replica = self.dst[tool as usize].join(to);
        let out = Command::new("rsync")
            .args(["-an", "--delete", "--itemize-changes", "--exclude=.ferry"])
            .arg(format!("{}/", source.display()))
            .arg(format!("{}/", replica.display()))
            .output()?;
        let differences = String::from_utf8_lossy(&out.stdout);
        let real: Vec<&str> = (differences.lines())
            .filter(|l| *l != ".d..t...... ./")
            .take(10)
            .collect();
        if !out.status.success() || !real.is_empty() {
            bail!("{} left differences: {real:?}", tool.label());
        }
        Ok(())
    }
}

pub(crate) fn write_million_results(rounds: usize, rows: &[(&str, CaseSamples)]) -> Result<()> {
    let intro = format!(
        "`bash bench/million.sh {rounds}` on {}, {}: the same agents, rsync daemon (`-aHAX \
         --numeric-ids --delete`) and counting relay as above, over loopback, each tool's \
         copy on a fresh ext4 file system of its own (a loop device), \
         {rounds} rounds, median (min-max). The agents stay up through a round, as in production, so their \
         change journals carry from run to run; memory is each run's own peak (both ends' \
         peak resident set, reset before the run, added up, and the larger of the two: \
         100 bytes a file is 95 MiB), CPU each run's own.",
        today(),
        machine(),
    );
    let outro = "The run right after the copy looks at everything, as rsync does every time: \
                 the destination's journal reports the copy's million new paths (folded into \
                 their 1,000 folders: a journal holds 250,000 paths at most), and a mirror's \
                 two scans run in step, leaving out of both trees what is alike at both. From then on a \
                 run asks both journals what changed since the last one and looks at that \
                 alone. The memory of those runs is what the agents hold between runs (their \
                 journals among it). The cold run comes after the page cache is emptied \
                 (`/proc/sys/vm/drop_caches`), and for ferry under a job its journals know \
                 nothing of: both tools read every folder and inode of both sides from the \
                 disk, ferry's agents on several threads each.";
    let title = "A million files: ferry agent to agent vs rsync daemon";
    write_section("sync-million", title, &intro, rows, outro)
}
