//! Writing a received file's bytes, with holes where the source has them.

use std::fs::File;
use std::io;

/// Where a received file's bytes go: straight into it, or for a file with holes at the
/// source, with a hole for each block of zeros (as `rsync -S` writes), so a sparse file does
/// not take its whole size on disk at the destination.
pub(super) struct Output {
    file: File,
    sparse: bool,
    /// Bytes written or skipped so far.
    at: u64,
    /// The last block was a hole: the file's size is set at the end.
    ends_in_hole: bool,
}

/// The unit of holes: a file system block.
const HOLE: usize = 4096;

impl Output {
    pub(super) fn new(file: File, sparse: bool) -> Self {
        Self {
            file,
            sparse,
            at: 0,
            ends_in_hole: false,
        }
    }

    pub(super) fn finish(self) -> io::Result<File> {
        if self.ends_in_hole {
            self.file.set_len(self.at)?;
        }
        Ok(self.file)
    }
}

impl io::Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.sparse {
            return self.file.write(buf);
        }
        for block in buf.chunks(HOLE) {
            self.ends_in_hole = block.iter().all(|b| *b == 0);
            if !self.ends_in_hole {
                std::os::unix::fs::FileExt::write_all_at(&self.file, block, self.at)?;
            }
            self.at += block.len() as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
