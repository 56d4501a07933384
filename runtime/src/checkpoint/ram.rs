//! Guest RAM in a checkpoint: only the pages that are not all zeros, in runs of
//! consecutive pages, each run compressed with LZ4 (block format).
//!
//! The memfd behind guest RAM is sparse, so the capture asks it where data lies
//! (`SEEK_DATA`/`SEEK_HOLE`) and reads only those ranges: a 3 GiB guest that
//! touched 10 MiB costs 10 MiB of reading, not 3 GiB. Pages there that hold only
//! zeros are left out too. A restore writes the runs into a new, zeroed RAM.

use super::CheckpointError;
use crate::memory::{GuestRam, PAGE_SIZE};
use rustix::fs::SeekFrom;
use serde::{Deserialize, Serialize};

/// Pages in one run at most (1 MiB): bounds the memory a run needs either way.
const MAX_RUN_PAGES: u32 = 256;
const PAGE: usize = PAGE_SIZE as usize;
static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

/// Guest RAM: its size and its non-zero pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RamImage {
    /// RAM size in bytes.
    pub size: u32,
    pub runs: Vec<PageRun>,
}

/// `pages` consecutive non-zero pages from frame `first_frame`, LZ4-compressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PageRun {
    pub first_frame: u32,
    pub pages: u32,
    #[serde(with = "super::bytes::vec")]
    pub lz4: Vec<u8>,
}

impl RamImage {
    /// Pages stored.
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| u64::from(r.pages)).sum()
    }
}

/// Byte ranges of the memfd that may hold data, in RAM (`[start, end)`, page-aligned);
/// all of RAM if the file system cannot tell.
fn data_ranges(ram: &GuestRam) -> Vec<(u64, u64)> {
    let size = u64::from(ram.size());
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < size {
        let start = match rustix::fs::seek(ram.fd(), SeekFrom::Data(at)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return vec![(0, size)],
        };
        if start >= size {
            break;
        }
        let end = match rustix::fs::seek(ram.fd(), SeekFrom::Hole(start)) {
            Ok(e) => e.min(size),
            Err(_) => return vec![(0, size)],
        };
        let page = u64::from(PAGE_SIZE);
        let (start, end) = (start / page * page, end.div_ceil(page) * page);
        if end <= at {
            break;
        }
        out.push((start, end.min(size)));
        at = end;
    }
    out
}

/// Collects consecutive non-zero pages and compresses them run by run.
#[derive(Default)]
struct Runs {
    runs: Vec<PageRun>,
    first_frame: u32,
    pending: Vec<u8>,
}

impl Runs {
    fn push(&mut self, frame: u32, page: &[u8]) {
        let pages = u32::try_from(self.pending.len() / PAGE).unwrap_or(u32::MAX);
        if pages > 0 && (frame != self.first_frame + pages || pages >= MAX_RUN_PAGES) {
            self.flush();
        }
        if self.pending.is_empty() {
            self.first_frame = frame;
        }
        self.pending.extend_from_slice(page);
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pages = u32::try_from(self.pending.len() / PAGE).unwrap_or(u32::MAX);
        let lz4 = lz4_flex::block::compress(&self.pending);
        self.runs.push(PageRun { first_frame: self.first_frame, pages, lz4 });
        self.pending.clear();
    }
}

/// The non-zero pages of `ram`.
pub(crate) fn capture(ram: &GuestRam) -> Result<RamImage, CheckpointError> {
    let mut runs = Runs::default();
    let mut page = vec![0u8; PAGE];
    for (start, end) in data_ranges(ram) {
        let mut at = start;
        while at < end {
            let phys = u32::try_from(at).map_err(|_| CheckpointError::Internal(format!("RAM offset {at:#x}")))?;
            ram.read(phys, &mut page).map_err(|e| CheckpointError::Internal(format!("reading guest RAM: {e}")))?;
            if page[..] != ZERO_PAGE[..] {
                runs.push(phys / PAGE_SIZE, &page);
            }
            at += u64::from(PAGE_SIZE);
        }
    }
    runs.flush();
    Ok(RamImage { size: ram.size(), runs: runs.runs })
}

/// Writes the image's pages into `ram` (fresh, all zeros, of the image's size).
pub(crate) fn restore(ram: &GuestRam, image: &RamImage) -> Result<(), CheckpointError> {
    let frames = image.size / PAGE_SIZE;
    let mut buf = Vec::new();
    for run in &image.runs {
        let fits = run.pages > 0 && run.pages <= MAX_RUN_PAGES && run.first_frame.checked_add(run.pages).is_some_and(|end| end <= frames);
        if !fits {
            return Err(CheckpointError::Corrupt(format!(
                "a run of {} RAM pages at frame {:#x} lies outside the guest's {} pages",
                run.pages, run.first_frame, frames
            )));
        }
        let len = run.pages as usize * PAGE;
        buf.resize(len, 0);
        match lz4_flex::block::decompress_into(&run.lz4, &mut buf) {
            Ok(n) if n == len => {}
            _ => {
                return Err(CheckpointError::Corrupt(format!("the RAM pages at frame {:#x} do not decompress", run.first_frame)));
            }
        }
        ram.write(run.first_frame * PAGE_SIZE, &buf)
            .map_err(|e| CheckpointError::Internal(format!("writing guest RAM: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_non_zero_pages_are_kept_and_come_back() {
        let ram = GuestRam::new(8 << 20).unwrap();
        ram.write(0x1000, b"first").unwrap();
        ram.write(0x2ffc, &[1, 2, 3, 4]).unwrap();
        ram.write(0x3000, &[5]).unwrap();
        ram.write(0x7f_f000, b"last page").unwrap();
        // Touched but zero: not stored.
        ram.write(0x10_0000, &[0; 4096]).unwrap();
        // A long run of non-zero pages is split.
        ram.fill(0x20_0000, 300 * PAGE, 0xab).unwrap();
        let img = capture(&ram).unwrap();
        assert_eq!(img.pages(), 4 + 300);
        assert_eq!(img.runs[0].first_frame, 1);
        assert_eq!(img.runs[0].pages, 3);
        assert!(img.runs.iter().all(|r| r.pages <= MAX_RUN_PAGES));
        let compressed: usize = img.runs.iter().map(|r| r.lz4.len()).sum();
        assert!(compressed < 64 * 1024, "{compressed} bytes");

        let back = GuestRam::new(8 << 20).unwrap();
        restore(&back, &img).unwrap();
        let mut a = vec![0u8; 8 << 20];
        let mut b = vec![0u8; 8 << 20];
        ram.read(0, &mut a).unwrap();
        back.read(0, &mut b).unwrap();
        assert!(a == b, "RAM differs after the round trip");
    }

    #[test]
    fn runs_outside_ram_or_garbled_are_corrupt() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let outside = RamImage { size: 1 << 20, runs: vec![PageRun { first_frame: 255, pages: 2, lz4: vec![0] }] };
        assert!(matches!(restore(&ram, &outside), Err(CheckpointError::Corrupt(_))));
        let garbled = RamImage { size: 1 << 20, runs: vec![PageRun { first_frame: 1, pages: 1, lz4: vec![0xff; 20] }] };
        assert!(matches!(restore(&ram, &garbled), Err(CheckpointError::Corrupt(_))));
    }
}
