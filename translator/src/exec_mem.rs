//! Executable memory for the code cache, never writable and executable at once.
//!
//! The cache is one memfd mapped twice: a read+execute view that translated code
//! runs from (every host address in the cache is in this view), and a read+write
//! view the translator writes through. No page is ever both writable and
//! executable, and emitting, chaining and unchaining code never change page
//! protections: on this machine an `mprotect` of executable memory costs a TLB
//! shootdown to every CPU the process ran on (the alarm thread's too). x86 keeps
//! instruction fetch coherent with stores through another mapping of the same
//! physical page; the jumps of the world switch separate each write from the
//! execution of what it wrote.
//!
//! This is one of the two modules of the crate with `unsafe` code (the other is
//! `world`, which calls into the cache).

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::mm::{self, MapFlags, MprotectFlags, ProtFlags};
use std::os::fd::OwnedFd;
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
    /// The read+execute view: where code runs and what every cache address names.
    exec: *mut u8,
    /// The read+write view of the same memory, for the translator.
    write: *mut u8,
    size: usize,
    _fd: OwnedFd,
}

// SAFETY: ExecMem owns its mappings exclusively; the raw pointers are only addresses.
unsafe impl Send for ExecMem {}

impl ExecMem {
    /// Creates a cache of `size` bytes (rounded up to pages).
    pub fn new(size: usize) -> Result<Self, ExecMemError> {
        let size = size.div_ceil(PAGE) * PAGE;
        let err = |source| ExecMemError::Map { size, source };
        let fd = memfd_create("bt86-code-cache", MemfdFlags::CLOEXEC).map_err(err)?;
        ftruncate(&fd, size as u64).map_err(err)?;
        let map = |prot| {
            // SAFETY: a fresh shared mapping of our own memfd at an address the kernel
            // picks cannot alias any Rust object.
            unsafe { mm::mmap(core::ptr::null_mut(), size, prot, MapFlags::SHARED, &fd, 0) }
        };
        let write = map(ProtFlags::READ | ProtFlags::WRITE).map_err(err)?;
        let exec = match map(ProtFlags::READ | ProtFlags::EXEC) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: `write` was mapped just above with this size and is unused.
                let _ = unsafe { mm::munmap(write, size) };
                return Err(err(e));
            }
        };
        Ok(Self { exec: exec.cast(), write: write.cast(), size, _fd: fd })
    }

    /// Host address of the first byte (in the executable view).
    pub fn base(&self) -> u64 {
        self.exec as u64
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether `addr` lies inside the executable view.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base() && addr < self.base() + self.size as u64
    }

    /// Copies `bytes` to `offset` (through the writable view).
    ///
    /// # Panics
    /// If the range lies outside the region (a translator bug, never guest input).
    pub fn write(&mut self, offset: usize, bytes: &[u8]) -> Result<(), ExecMemError> {
        let end = offset.checked_add(bytes.len()).filter(|&e| e <= self.size);
        end.expect("code cache write out of range");
        // SAFETY: the range was bounds-checked above and the writable view is mapped
        // read-write for our lifetime; no Rust reference into the cache exists (it is
        // only ever accessed by copies and by executing it).
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.write.add(offset), bytes.len()) };
        Ok(())
    }
}

impl Drop for ExecMem {
    fn drop(&mut self) {
        // SAFETY: we own both mappings and nothing refers to them after drop.
        unsafe {
            let _ = mm::munmap(self.exec.cast(), self.size);
            let _ = mm::munmap(self.write.cast(), self.size);
        }
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
