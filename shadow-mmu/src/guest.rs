//! What the shadow's policy needs of the guest: its RAM ([`GuestMemory`], a small
//! trait the VMM implements for its memory), and, per call, the frames holding
//! translated code and the paging controls ([`Guest`]).
//!
//! The trait keeps this crate free of the VMM: the policy reads page tables and
//! sets A/D bits through it, and maps RAM into views by its memfd.

use crate::walk::{PagingMode, PhysMem};
use std::collections::BTreeSet;
use std::os::fd::BorrowedFd;

/// Guest-physical memory: one memfd of `size` bytes, plus a void page past it.
pub trait GuestMemory {
    /// RAM size in bytes.
    fn size(&self) -> u32;
    /// The memfd views map pages of.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Memfd offset of the void page (all ones: what an empty bus reads).
    fn void_offset(&self) -> u32;
    /// Copies RAM at `phys` into `buf`, all ones where there is no RAM.
    fn read_or_ones(&self, phys: u32, buf: &mut [u8]);
    /// Writes `data` at `phys`; what falls outside RAM goes nowhere.
    fn write_or_drop(&self, phys: u32, data: &[u8]);
    /// Copies RAM at `phys` into `buf`; false if any of it is not RAM.
    fn read(&self, phys: u32, buf: &mut [u8]) -> bool;

    /// Whether `[phys, phys + len)` lies inside RAM (no wrap-around at 4 GiB).
    #[inline]
    fn contains(&self, phys: u32, len: usize) -> bool {
        u64::try_from(len)
            .ok()
            .and_then(|len| u64::from(phys).checked_add(len))
            .is_some_and(|end| end <= u64::from(self.size()))
    }
}

/// The guest as one call of the shadow's policy sees it.
pub struct Guest<'a> {
    pub ram: &'a dyn GuestMemory,
    /// Frames holding translated code: mapped read-only, so that a write
    /// reaches the VMM (ordered: a large page asks for those inside it).
    pub code: &'a BTreeSet<u32>,
    /// The paging controls the walks use.
    pub mode: PagingMode,
    /// CR0.PG.
    pub paging: bool,
    /// The current address space's key: CR0.PG/WP, CR3's page directory,
    /// CR4.PSE (`address_space_key` in the VMM): what a remembered mapping is
    /// valid for.
    pub space: (u32, u32, u32),
}

/// Guest-physical memory for the page walk: the A and D bits are written to RAM.
pub struct RamPhys<'a, M: ?Sized>(pub &'a M);

impl<M: GuestMemory + ?Sized> PhysMem for RamPhys<'_, M> {
    /// A page table past the end of RAM reads as all ones (the empty bus).
    #[inline]
    fn read_u32(&mut self, phys: u32) -> Option<u32> {
        let mut b = [0u8; 4];
        self.0.read_or_ones(phys, &mut b);
        Some(u32::from_le_bytes(b))
    }

    #[inline]
    fn write_u32(&mut self, phys: u32, v: u32) -> bool {
        self.0.write_or_drop(phys, &v.to_le_bytes());
        true
    }
}

/// Guest-physical memory for a walk that must not change anything: a walk that
/// would set an A or D bit fails instead.
pub struct PeekPhys<'a, M: ?Sized>(pub &'a M);

impl<M: GuestMemory + ?Sized> PhysMem for PeekPhys<'_, M> {
    fn read_u32(&mut self, phys: u32) -> Option<u32> {
        RamPhys(self.0).read_u32(phys)
    }

    fn write_u32(&mut self, _phys: u32, _v: u32) -> bool {
        false
    }
}

/// Guest-physical memory for a walk that only tells what it would do: its A and
/// D bit writes go nowhere.
pub struct DryPhys<'a, M: ?Sized>(pub &'a M);

impl<M: GuestMemory + ?Sized> PhysMem for DryPhys<'_, M> {
    fn read_u32(&mut self, phys: u32) -> Option<u32> {
        RamPhys(self.0).read_u32(phys)
    }

    fn write_u32(&mut self, _phys: u32, _v: u32) -> bool {
        true
    }
}
