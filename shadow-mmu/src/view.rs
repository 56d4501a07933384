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
use std::os::fd::{AsRawFd, BorrowedFd};
use thiserror::Error;

const PAGE: u64 = 4096;
const FOUR_GIB: u64 = 1 << 32;
/// Size of the guard below the view and of the wrap alias above it.
pub const GUARD_BYTES: u64 = 64 * 1024;
const TAIL_GUARD: u64 = 1 << 20;
/// Parked pages kept at most (each may be a host VMA of its own).
const MAX_PARKED: usize = 64;

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
    /// Pages made inaccessible with their host mapping kept (`park`), oldest
    /// first: (linear, memfd, offset).
    parked: Vec<(u64, i32, u64)>,
    /// The file of the last shared mapping made (a view maps one guest-RAM memfd).
    shared_fd: i32,
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
        Ok(Self {
            reservation: p.cast(),
            len,
            ram: 0,
            calls: ViewCalls::default(),
            mirror: Mirror::default(),
            parked: Vec::new(),
            shared_fd: -1,
        })
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
        if len == PAGE && self.unpark(linear, fd.as_raw_fd(), offset, writable)? {
            return Ok(());
        }
        self.drop_parked(linear, len);
        self.shared_fd = fd.as_raw_fd();
        let prot = if writable { ProtFlags::READ | ProtFlags::WRITE } else { ProtFlags::READ };
        // One page is mapped because it is about to be used: fill its host page
        // table entry now, rather than take a host page fault on the first access.
        let populate = if len == PAGE { MapFlags::POPULATE } else { MapFlags::empty() };
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
                MapFlags::SHARED | MapFlags::FIXED | populate,
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
        self.drop_parked(linear, PAGE);
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

    /// Makes the page at `linear` inaccessible, as `unmap` does, but keeps its host
    /// mapping (PROT_NONE): if the same guest frame is mapped there again (a
    /// guest making an entry present again, or retargeting it and back), that is
    /// one mprotect instead of an mmap here and another there (measured here: 3.5k
    /// against 11–13k cycles for the pair, with the host page fault the mmap
    /// leaves). Pages that do not map shared guest RAM, and those with an image
    /// in the wrap alias, are unmapped.
    pub fn park(&mut self, linear: u32) -> Result<(), ViewError> {
        let page = u64::from(linear) & !(PAGE - 1);
        let backing = self.mirror.backing_of(linear >> 12);
        let Some(b) = backing.filter(|b| !b.private && page >= GUARD_BYTES && self.shared_fd >= 0) else {
            return self.unmap(linear, PAGE);
        };
        if self.parked.len() >= MAX_PARKED {
            let (oldest, ..) = self.parked.remove(0);
            self.reserve_range(oldest, PAGE)?;
        }
        self.calls.protects += 1;
        // SAFETY: the page lies inside our reservation and is mapped (its mirror
        // has a backing for it); PROT_NONE affects no Rust object.
        unsafe { mm::mprotect((self.base() + page) as *mut _, PAGE as usize, MprotectFlags::empty()) }
            .map_err(|source| ViewError::Protect { linear: page, source })?;
        self.mirror.unmap(linear >> 12, 1);
        self.parked.push((page, self.shared_fd, b.offset));
        Ok(())
    }

    /// If `linear` was parked with memfd `fd` at `offset`, makes it accessible
    /// again with one mprotect; whether it did.
    fn unpark(&mut self, linear: u64, fd: i32, offset: u64, writable: bool) -> Result<bool, ViewError> {
        let Some(i) = self.parked.iter().position(|&(l, f, o)| l == linear && f == fd && o == offset) else {
            return Ok(false);
        };
        self.parked.remove(i);
        let prot = if writable { MprotectFlags::READ | MprotectFlags::WRITE } else { MprotectFlags::READ };
        self.calls.protects += 1;
        // SAFETY: the page lies inside our reservation and still maps `fd` at
        // `offset` (parked, nothing mapped over it since).
        unsafe { mm::mprotect((self.base() + linear) as *mut _, PAGE as usize, prot) }
            .map_err(|source| ViewError::Protect { linear, source })?;
        if let Some((first, pages)) = pages_of(linear, PAGE) {
            self.mirror.map(first, pages, Backing { offset, writable, private: false });
        }
        Ok(true)
    }

    /// Forgets the parked pages in a range about to be mapped or unmapped over.
    fn drop_parked(&mut self, linear: u64, len: u64) {
        if !self.parked.is_empty() {
            self.parked.retain(|&(l, ..)| l < linear || l >= linear + len);
        }
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
        self.drop_parked(linear, len);
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
    use std::os::fd::AsFd;

    /// A parked page is gone from the mirror; mapping the same frame there again
    /// is one mprotect, another frame an mmap over it; a parked page unmapped
    /// with its neighbours stays unmapped (not brought back by a later map).
    #[test]
    fn parked_page_comes_back_with_one_protect() {
        let fd = memfd_create("view-test", MemfdFlags::CLOEXEC).expect("memfd");
        ftruncate(&fd, 0x10_0000).expect("size");
        let mut v = View::reserve().expect("view");
        let page = 0x40_1000u32;
        v.map_page(page, fd.as_fd(), 0x5000, false).expect("map");
        v.park(page).expect("park");
        assert_eq!(v.mirror.backing_of(page >> 12), None, "parked: inaccessible");
        let before = v.calls;
        v.map_page(page, fd.as_fd(), 0x5000, true).expect("map again");
        assert_eq!((v.calls.maps, v.calls.protects), (before.maps, before.protects + 1), "one mprotect");
        let b = v.mirror.backing_of(page >> 12).expect("mapped");
        assert_eq!((b.offset, b.writable, b.private), (0x5000, true, false));
        v.park(page).expect("park");
        let before = v.calls;
        v.map_page(page, fd.as_fd(), 0x6000, false).expect("another frame");
        assert_eq!(v.calls.maps, before.maps + 1, "another frame: mapped over");
        assert_eq!(v.mirror.backing_of(page >> 12).map(|b| b.offset), Some(0x6000));
        v.park(page).expect("park");
        v.unmap(page - 0x1000, 0x3000).expect("unmap");
        let before = v.calls;
        v.map_page(page, fd.as_fd(), 0x6000, false).expect("map after unmap");
        assert_eq!(v.calls.maps, before.maps + 1, "no longer parked: a real mapping");
        // Pages with an image in the wrap alias are unmapped, not parked.
        v.map_page(0x1000, fd.as_fd(), 0x5000, false).expect("low map");
        v.park(0x1000).expect("park low");
        assert!(v.parked.is_empty(), "{:?}", v.parked);
    }

    /// At most `MAX_PARKED` pages stay parked; the oldest are unmapped.
    #[test]
    fn parked_pages_are_bounded() {
        let fd = memfd_create("view-test", MemfdFlags::CLOEXEC).expect("memfd");
        ftruncate(&fd, 0x10_0000).expect("size");
        let mut v = View::reserve().expect("view");
        for i in 0..(MAX_PARKED as u32 + 10) {
            let page = 0x100_0000 + i * 0x1000;
            v.map_page(page, fd.as_fd(), 0x1000 * (i % 16), false).expect("map");
            v.park(page).expect("park");
        }
        assert_eq!(v.parked.len(), MAX_PARKED);
        assert_eq!(v.parked[0].0, 0x100_0000 + 10 * 0x1000, "the oldest went");
    }
}
