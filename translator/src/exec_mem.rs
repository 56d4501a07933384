//! Executable memory for the code cache, never writable and executable at once.
//!
//! The cache is one anonymous mapping. Pages are writable while the translator
//! emits or patches code and are sealed read+execute before translated code runs
//! again (`seal`). Sealing is batched: everything written between two entries into
//! translated code costs one `mprotect` per dirty run of pages.
//!
//! This is one of the two modules of the crate with `unsafe` code (the other is
//! `world`, which calls into the cache).

use rustix::mm::{self, MapFlags, MprotectFlags, ProtFlags};
use thiserror::Error;

const PAGE: usize = 4096;

/// Errors from host memory management.
#[derive(Debug, Error)]
pub enum ExecMemError {
    #[error("cannot map {size} bytes for the code cache: {source}")]
    Map { size: usize, source: rustix::io::Errno },
    #[error("cannot change protection of the code cache: {0}")]
    Protect(rustix::io::Errno),
}

/// A fixed-size region of host memory holding generated code.
pub struct ExecMem {
    base: *mut u8,
    size: usize,
    /// Page-index ranges [start, end) currently writable (not executable).
    writable: Vec<(usize, usize)>,
}

// SAFETY: ExecMem owns its mapping exclusively; the raw pointer is only an address.
unsafe impl Send for ExecMem {}

impl ExecMem {
    /// Maps `size` bytes (rounded up to pages), initially writable.
    pub fn new(size: usize) -> Result<Self, ExecMemError> {
        let size = size.div_ceil(PAGE) * PAGE;
        // SAFETY: a fresh anonymous private mapping at an address the kernel picks
        // cannot alias any Rust object.
        let base = unsafe {
            mm::mmap_anonymous(
                core::ptr::null_mut(),
                size,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|source| ExecMemError::Map { size, source })?;
        Ok(Self { base: base.cast(), size, writable: vec![(0, size / PAGE)] })
    }

    /// Host address of the first byte.
    pub fn base(&self) -> u64 {
        self.base as u64
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether `addr` lies inside the region.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base() && addr < self.base() + self.size as u64
    }

    /// Copies `bytes` to `offset`, making the touched pages writable first.
    ///
    /// # Panics
    /// If the range lies outside the region (a translator bug, never guest input).
    pub fn write(&mut self, offset: usize, bytes: &[u8]) -> Result<(), ExecMemError> {
        let end = offset.checked_add(bytes.len()).filter(|&e| e <= self.size);
        let end = end.expect("code cache write out of range");
        if bytes.is_empty() {
            return Ok(());
        }
        self.make_writable(offset / PAGE, end.div_ceil(PAGE))?;
        // SAFETY: the range was bounds-checked above and is writable now; no Rust
        // reference into the cache exists (the cache is only ever accessed by copies
        // and by executing it).
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(offset), bytes.len()) };
        Ok(())
    }

    fn make_writable(&mut self, first: usize, end: usize) -> Result<(), ExecMemError> {
        let mut page = first;
        while page < end {
            if let Some(&(_, e)) = self.writable.iter().find(|&&(s, e)| s <= page && page < e) {
                page = e;
                continue;
            }
            let run_end = self.writable.iter().map(|&(s, _)| s).filter(|&s| s > page).min().unwrap_or(end).min(end);
            self.protect(page, run_end, MprotectFlags::READ | MprotectFlags::WRITE)?;
            self.writable.push((page, run_end));
            page = run_end;
        }
        Ok(())
    }

    /// Makes every writable page read+execute. Call before running translated code.
    pub fn seal(&mut self) -> Result<(), ExecMemError> {
        let runs = core::mem::take(&mut self.writable);
        for (s, e) in runs {
            self.protect(s, e, MprotectFlags::READ | MprotectFlags::EXEC)?;
        }
        Ok(())
    }

    /// Whether any page is writable (so `seal` has work to do).
    pub fn is_sealed(&self) -> bool {
        self.writable.is_empty()
    }

    fn protect(&self, first: usize, end: usize, flags: MprotectFlags) -> Result<(), ExecMemError> {
        // SAFETY: the page range lies within our own mapping; changing its protection
        // affects no Rust object.
        unsafe { mm::mprotect(self.base.add(first * PAGE).cast(), (end - first) * PAGE, flags) }
            .map_err(ExecMemError::Protect)
    }
}

impl Drop for ExecMem {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and nothing refers to it after drop.
        let _ = unsafe { mm::munmap(self.base.cast(), self.size) };
    }
}

/// A page whose readability translated code polls at every unit entry: revoking
/// it (`PROT_NONE`) makes the next unit entry fault, which the VMM turns into an
/// exit. Cheaper than a flag test, and it leaves the guest's flags alone.
pub struct PollPage {
    addr: usize,
}

impl PollPage {
    /// Maps the page, readable.
    pub fn new() -> Result<Self, ExecMemError> {
        // SAFETY: fresh anonymous mapping, aliases nothing.
        let p = unsafe {
            mm::mmap_anonymous(core::ptr::null_mut(), PAGE, ProtFlags::READ, MapFlags::PRIVATE)
        }
        .map_err(|source| ExecMemError::Map { size: PAGE, source })?;
        Ok(Self { addr: p as usize })
    }

    /// Host address of the page.
    pub fn addr(&self) -> u64 {
        self.addr as u64
    }

    /// A handle that can revoke the page from another thread or a signal handler.
    pub fn handle(&self) -> PollHandle {
        PollHandle { addr: self.addr }
    }

    /// Makes the page readable again after the exit it caused was handled.
    pub fn rearm(&self) {
        self.handle().set(true);
    }
}

impl Drop for PollPage {
    fn drop(&mut self) {
        // SAFETY: we own the page; handles must not outlive the VM (documented on PollHandle).
        let _ = unsafe { mm::munmap(self.addr as *mut _, PAGE) };
    }
}

/// Requests an exit from translated code (async-signal-safe: one `mprotect`).
/// A handle used after its VM is gone changes the protection of whatever is
/// mapped there; keep handles no longer than the VM.
#[derive(Clone, Copy, Debug)]
pub struct PollHandle {
    addr: usize,
}

impl PollHandle {
    /// Makes translated code exit at its next unit entry.
    pub fn request_exit(&self) {
        self.set(false);
    }

    fn set(&self, readable: bool) {
        let flags = if readable { MprotectFlags::READ } else { MprotectFlags::empty() };
        // SAFETY: the page is our own poll page, never referenced by Rust code.
        let _ = unsafe { mm::mprotect(self.addr as *mut _, PAGE, flags) };
    }
}
