//! The bench's data: small and large files from a seeded generator, and the 1 % change between re-syncs.

use super::*;

/// A deterministic generator, so every run of the benchmark syncs the same data.
pub(crate) struct Noise(pub(crate) u64);

impl Noise {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Text-like bytes: words from a small vocabulary, as documents and logs compress.
    pub(crate) fn text(&mut self, len: usize) -> Vec<u8> {
        const WORDS: [&str; 16] = [
            "replica",
            "schedule",
            "monitor",
            "lease",
            "agent",
            "delta",
            "block",
            "folder",
            "invoice",
            "customer",
            "2026-11-22",
            "total",
            "status",
            "ok",
            "error",
            "report",
        ];
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            let n = self.next();
            out.extend_from_slice(WORDS[(n % 16) as usize].as_bytes());
            out.push(if n.is_multiple_of(11) { b'\n' } else { b' ' });
        }
        out.truncate(len);
        out
    }
}

pub(crate) fn small_file(noise: &mut Noise, i: usize) -> Vec<u8> {
    let len = 1024 + (noise.next() % (15 * 1024)) as usize;
    if i.is_multiple_of(2) {
        noise.text(len)
    } else {
        noise.bytes(len)
    }
}

/// Small file `i`: 100 folders, each holding text and incompressible files in turn, as real
/// folders mix documents with images and archives.
pub(crate) fn small_path(root: &Path, i: usize) -> PathBuf {
    root.join(format!("d{:03}", i / 2 % 100))
        .join(format!("f{i:05}.dat"))
}

pub(crate) fn make_small_files(root: &Path) -> Result<()> {
    let mut noise = Noise(0x5eed);
    for i in 0..SMALL_FILES {
        let path = small_path(root, i);
        fs::create_dir_all(path.parent().context("a folder")?)?;
        fs::write(path, small_file(&mut noise, i))?;
    }
    Ok(())
}

pub(crate) fn make_large_files(root: &Path) -> Result<()> {
    fs::create_dir_all(root)?;
    let mut noise = Noise(0x1a7e);
    for i in 0..LARGE_FILES {
        let mut file = fs::File::create(root.join(format!("large{i}.bin")))?;
        for _ in 0..LARGE_SIZE / (1 << 20) {
            file.write_all(&noise.bytes(1 << 20))?;
        }
    }
    Ok(())
}

/// Changes 1 % of the small files (40 edited in place, 20 renamed, 20 deleted, 20 new) and
/// rewrites 4 MiB in the middle of one large file; `round` picks different files each time.
pub(crate) fn change_one_percent(src: &Path, round: usize) -> Result<()> {
    let mut noise = Noise(0xc4a9 + round as u64);
    let small = src.join("small");
    let path = |i: usize| small_path(&small, i);
    let pick = |k: usize| (round * 997 + k * 101) % SMALL_FILES;
    for k in 0..100 {
        let i = pick(k);
        let file = path(i);
        if !file.exists() {
            continue;
        }
        match k {
            0..40 => {
                let mut f = fs::OpenOptions::new().write(true).open(&file)?;
                let len = f.metadata()?.len();
                f.seek(SeekFrom::Start(len / 2))?;
                f.write_all(b"edited")?;
            }
            40..60 => fs::rename(&file, file.with_extension(format!("moved{round}")))?,
            60..80 => fs::remove_file(&file)?,
            _ => fs::write(
                file.with_extension(format!("new{round}")),
                small_file(&mut noise, k),
            )?,
        }
    }
    let mut large = fs::OpenOptions::new().write(true).open(
        src.join("large")
            .join(format!("large{}.bin", round % LARGE_FILES)),
    )?;
    large.seek(SeekFrom::Start((LARGE_SIZE / 2) as u64))?;
    large.write_all(&noise.bytes(4 << 20))?;
    Ok(())
}
