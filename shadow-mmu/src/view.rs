//! A view: a 4 GiB range of host address space that mirrors one guest linear
//! address space. Host address `base + linear` maps the memfd page of the guest
//! frame behind `linear`. Translated code reaches guest memory as
//! `%gs:(32-bit address)` with GS base = `base`, so it cannot address anything
//! outside the range.
//!
//! Layout of the reservation:
//! `[guard below: 64 KiB][view: 4 GiB][wrap alias: 64 KiB][guard]`. A multi-byte
//! access at 0xffff_fffe runs past the end of the view; the *wrap alias* maps the
//! same frames as linear 0..64 KiB there, so such an access sees the guest's
//! wrap-around without emulation. String instructions biased by the view base can
//! step below it by one element; that lands in the lower guard and faults.
//!
//! All `unsafe` code of the crate is in this module: mapping and protecting pages
//! of a reservation that this type owns exclusively.

use crate::mirror::{pages_of, Backing, Mirror};
use rustix::mm::{self, MapFlags, MprotectFlags, ProtFlags};
use std::os::fd::BorrowedFd;
use thiserror::Error;

const PAGE: u64 = 4096;
const FOUR_GIB: u64 = 1 << 32;
/// Size of the guard below the view and of the wrap alias above it.
pub const GUARD_BYTES: u64 = 64 * 1024;
const TAIL_GUARD: u64 = 1 << 20;

/// Host mapping failures.
#[derive(Debug, Error)]
pub enum ViewError {
    #[error("cannot reserve host address space for a view: {0}")]
    Reserve(rustix::io::Errno),
    #[error("cannot map guest memory into a view at linear {linear:#x}: {source}")]
    Map { linear: u64, source: rustix::io::Errno },
    #[error("cannot change protection in a view at linear {linear:#x}: {source}")]
    Protect { linear: u64, source: rustix::io::Errno },
}

/// One guest address space at one privilege, realized in host page tables.
pub struct View {
    reservation: *mut u8,
    len: usize,
    /// Guest RAM size mapped (identity views).
    ram: u64,
    /// Host calls made: maps, unmaps, protection changes.
    pub calls: ViewCalls,
    /// What the low 4 GiB hold, for a copy in another process (direct execution).
    mirror: Mirror,
}

/// Host calls a view made (each one a system call, and a TLB flush for unmaps
/// and protection changes).
#[derive(Clone, Copy, Debug, Default)]
pub struct ViewCalls {
    pub maps: u64,
    pub unmaps: u64,
    pub protects: u64,
}

// SAFETY: the view owns its reservation; the pointer is only an address, and all
// changes to the mappings go through `&mut self`.
unsafe impl Send for View {}

impl View {
    /// Reserves an empty view (every page inaccessible).
    pub fn reserve() -> Result<Self, ViewError> {
        let len = usize::try_from(GUARD_BYTES + FOUR_GIB + GUARD_BYTES + TAIL_GUARD).expect("64-bit host");
        // SAFETY: a fresh PROT_NONE reservation at a kernel-chosen address aliases no
        // Rust object.
        let p = unsafe {
            mm::mmap_anonymous(core::ptr::null_mut(), len, ProtFlags::empty(), MapFlags::PRIVATE | MapFlags::NORESERVE)
        }
        .map_err(ViewError::Reserve)?;
        Ok(Self { reservation: p.cast(), len, ram: 0, calls: ViewCalls::default(), mirror: Mirror::default() })
    }

    /// What the view's low 4 GiB hold and what changed there (see `mirror`).
    pub fn mirror_mut(&mut self) -> &mut Mirror {
        &mut self.mirror
    }

    /// An identity for this view's reservation (its address), stable while it lives.
    pub fn id(&self) -> u64 {
        self.reservation as u64
    }

    /// Host address of guest linear address 0 (the GS base for translated code).
    pub fn base(&self) -> u64 {
        self.reservation as u64 + GUARD_BYTES
    }

    /// The guest linear address a host address corresponds to, if it lies in the
    /// view or its wrap alias (the alias folds back onto linear 0..64 KiB).
    pub fn linear_of(&self, host: u64) -> Option<u32> {
        let off = host.checked_sub(self.base())?;
        if off < FOUR_GIB {
            u32::try_from(off).ok()
        } else if off < FOUR_GIB + GUARD_BYTES {
            u32::try_from(off - FOUR_GIB).ok()
        } else {
            None
        }
    }

    /// For a host address in the guards around the view (an access that a
    /// string instruction's 64-bit pointer carried below linear 0 or past the
    /// wrap alias): the linear address it means, wrapped at 4 GiB.
    pub fn wrapped_linear_of(&self, host: u64) -> Option<u32> {
        if !self.owns(host) || self.linear_of(host).is_some() {
            return None;
        }
        #[allow(clippy::cast_possible_truncation)]
        Some(host.wrapping_sub(self.base()) as u32)
    }

    /// Whether a host address is anywhere in the reservation (guards included).
    pub fn owns(&self, host: u64) -> bool {
        let start = self.reservation as u64;
        host >= start && host < start + self.len as u64
    }

    /// Maps guest-physical memory one to one: linear = physical (paging off).
    pub fn map_identity(&mut self, ram: BorrowedFd<'_>, ram_bytes: u32) -> Result<(), ViewError> {
        let ram_bytes = u64::from(ram_bytes) & !(PAGE - 1);
        self.map(0, ram, 0, ram_bytes, true)?;
        let alias = ram_bytes.min(GUARD_BYTES);
        self.map(FOUR_GIB, ram, 0, alias, true)?;
        self.ram = ram_bytes;
        Ok(())
    }

    fn map(&mut self, linear: u64, fd: BorrowedFd<'_>, offset: u64, len: u64, writable: bool) -> Result<(), ViewError> {
        if len == 0 {
            return Ok(());
        }
        let prot = if writable { ProtFlags::READ | ProtFlags::WRITE } else { ProtFlags::READ };
        self.calls.maps += 1;
        let addr = self.base() + linear;
        assert!(linear + len <= FOUR_GIB + GUARD_BYTES, "mapping outside the view");
        // SAFETY: the range lies inside our reservation (asserted above), which no
        // Rust object occupies; MAP_FIXED replaces only our own mappings.
        unsafe {
            mm::mmap(
                addr as *mut _,
                usize::try_from(len).expect("64-bit host"),
                prot,
                MapFlags::SHARED | MapFlags::FIXED,
                fd,
                offset,
            )
        }
        .map_err(|source| ViewError::Map { linear, source })?;
        if let Some((first, pages)) = pages_of(linear, len) {
            self.mirror.map(first, pages, Backing { offset, writable, private: false });
        }
        Ok(())
    }

    /// Maps the guest-physical page at `phys` (memfd offset) at linear page
    /// `linear` (and into the wrap alias for the first 64 KiB): a shadow PTE.
    pub fn map_page(&mut self, linear: u32, ram: BorrowedFd<'_>, phys: u32, writable: bool) -> Result<(), ViewError> {
        self.map_pages(linear, ram, phys, 1, writable)
    }

    /// Maps `count` consecutive guest-physical pages from `phys` at consecutive
    /// linear pages from `linear` with one host mapping (clipped at 4 GiB).
    pub fn map_pages(&mut self, linear: u32, ram: BorrowedFd<'_>, phys: u32, count: u32, writable: bool) -> Result<(), ViewError> {
        let linear = u64::from(linear) & !(PAGE - 1);
        let phys = u64::from(phys) & !(PAGE - 1);
        let len = (u64::from(count) * PAGE).min(FOUR_GIB - linear);
        self.map(linear, ram, phys, len, writable)?;
        if linear < GUARD_BYTES {
            self.map(FOUR_GIB + linear, ram, phys, len.min(GUARD_BYTES - linear), writable)?;
        }
        Ok(())
    }

    /// Maps a private copy-on-write image of the page at memfd offset `offset` at
    /// linear page `linear`: the void page for guest accesses to memory that does
    /// not exist (reads see all ones; writes change only this view's copy).
    pub fn map_void(&mut self, linear: u32, fd: BorrowedFd<'_>, offset: u32, writable: bool) -> Result<(), ViewError> {
        let prot = if writable { ProtFlags::READ | ProtFlags::WRITE } else { ProtFlags::READ };
        let linear = u64::from(linear) & !(PAGE - 1);
        let mut targets = vec![linear];
        if linear < GUARD_BYTES {
            targets.push(FOUR_GIB + linear);
        }
        for l in targets {
            // SAFETY: the page lies inside our reservation, which no Rust object
            // occupies; MAP_FIXED replaces only our own mapping there.
            unsafe {
                mm::mmap(
                    (self.base() + l) as *mut _,
                    PAGE as usize,
                    prot,
                    MapFlags::PRIVATE | MapFlags::FIXED,
                    fd,
                    u64::from(offset),
                )
            }
            .map_err(|source| ViewError::Map { linear: l, source })?;
        }
        if let Some((first, pages)) = pages_of(linear, PAGE) {
            self.mirror.map(first, pages, Backing { offset: u64::from(offset), writable, private: true });
        }
        Ok(())
    }

    /// Makes `len` bytes from linear `start` inaccessible again (dropping shadow
    /// PTEs), and their image in the wrap alias.
    pub fn unmap(&mut self, start: u32, len: u64) -> Result<(), ViewError> {
        let start = u64::from(start) & !(PAGE - 1);
        let len = len.min(FOUR_GIB - start).div_ceil(PAGE) * PAGE;
        self.reserve_range(start, len)?;
        if start < GUARD_BYTES {
            let alias_len = len.min(GUARD_BYTES - start);
            self.reserve_range(FOUR_GIB + start, alias_len)?;
        }
        Ok(())
    }

    /// Drops every mapping: the view is empty again.
    pub fn unmap_all(&mut self) -> Result<(), ViewError> {
        self.reserve_range(0, FOUR_GIB + GUARD_BYTES)?;
        self.mirror.reset();
        self.ram = 0;
        Ok(())
    }

    /// Changes the host protection of a mapped linear page (read-only for tracing
    /// and for pages whose dirty bit is still clear).
    pub fn protect_page(&mut self, linear: u32, writable: bool) -> Result<(), ViewError> {
        let linear = u64::from(linear) & !(PAGE - 1);
        let prot = if writable { MprotectFlags::READ | MprotectFlags::WRITE } else { MprotectFlags::READ };
        let mut targets = vec![linear];
        if linear < GUARD_BYTES {
            targets.push(FOUR_GIB + linear);
        }
        for l in targets {
            self.calls.protects += 1;
            // SAFETY: the page lies inside our reservation; the caller maps it first.
            unsafe { mm::mprotect((self.base() + l) as *mut _, PAGE as usize, prot) }
                .map_err(|source| ViewError::Protect { linear: l, source })?;
        }
        if let Some((first, pages)) = pages_of(linear, PAGE) {
            self.mirror.protect(first, pages, writable);
        }
        Ok(())
    }

    fn reserve_range(&mut self, linear: u64, len: u64) -> Result<(), ViewError> {
        if len == 0 {
            return Ok(());
        }
        assert!(linear + len <= FOUR_GIB + GUARD_BYTES, "range outside the view");
        self.calls.unmaps += 1;
        // SAFETY: the range lies inside our reservation; replacing it with a fresh
        // PROT_NONE anonymous mapping affects no Rust object.
        unsafe {
            mm::mmap_anonymous(
                (self.base() + linear) as *mut _,
                usize::try_from(len).expect("64-bit host"),
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE,
            )
        }
        .map_err(|source| ViewError::Map { linear, source })?;
        if let Some((first, pages)) = pages_of(linear, len) {
            self.mirror.unmap(first, pages);
        }
        Ok(())
    }

    /// Write-protects (or unprotects) the page at guest linear `page` of the
    /// identity-mapped RAM (paging off). Pages outside mapped RAM are left alone.
    pub fn set_writable(&mut self, page: u32, writable: bool) -> Result<(), ViewError> {
        if u64::from(page) & !(PAGE - 1) >= self.ram {
            return Ok(());
        }
        self.protect_page(page, writable)
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: we own the whole reservation; nothing refers to it after drop.
        let _ = unsafe { mm::munmap(self.reservation.cast(), self.len) };
    }
}
