//! Guest paging: the engine's glue to the shadow MMU.
//!
//! The policy (hidden and true faults, tracing of page tables across all cached
//! address spaces, the cache of spaces, adaptive-store counts) is
//! `bt86_shadow_mmu::shadow`'s; it sees the guest through `GuestMemory`, which
//! guest RAM implements here, and a `Guest` made per call from the CPU's paging
//! controls and the frames holding translated code. What stays here needs the
//! VM: the translator (invalidating a frame a write reaches, flushing, page
//! checks), CR2 and the GS base, and turning paging control changes into a
//! flush or a space switch.

use crate::cpu::{cr0, sreg};
use crate::memory::GuestRam;
use crate::vm::{Vm, VmError};
use bt86_shadow_mmu::guest::{Guest, GuestMemory};
use bt86_shadow_mmu::shadow::{Fault, Shadow};
use bt86_shadow_mmu::walk::{self, PagingMode};
use std::os::fd::BorrowedFd;

pub(crate) use bt86_shadow_mmu::shadow::MAX_SPACES;
pub(crate) use bt86_shadow_mmu::RamPhys;

const CR4_PSE: u32 = 1 << 4;
const CR4_PGE: u32 = 1 << 7;

impl GuestMemory for GuestRam {
    #[inline]
    fn size(&self) -> u32 {
        GuestRam::size(self)
    }

    #[inline]
    fn fd(&self) -> BorrowedFd<'_> {
        GuestRam::fd(self)
    }

    #[inline]
    fn void_offset(&self) -> u32 {
        GuestRam::void_offset(self)
    }

    #[inline]
    fn read_or_ones(&self, phys: u32, buf: &mut [u8]) {
        GuestRam::read_or_ones(self, phys, buf);
    }

    #[inline]
    fn write_or_drop(&self, phys: u32, data: &[u8]) {
        GuestRam::write_or_drop(self, phys, data);
    }

    fn read(&self, phys: u32, buf: &mut [u8]) -> bool {
        GuestRam::read(self, phys, buf).is_ok()
    }
}

/// The paging controls shadow mappings depend on: CR0.PG/WP, CR3's page
/// directory, CR4.PSE. (CR4.PGE only decides what a TLB flush keeps, and the
/// shadow never holds stale entries: tracing keeps it coherent.)
pub(crate) fn address_space_key(cpu: &crate::cpu::Cpu) -> (u32, u32, u32) {
    (cpu.cr0 & (cr0::PG | cr0::WP), cpu.cr3 & 0xffff_f000, cpu.cr4 & CR4_PSE)
}

/// What a fault in a view becomes.
pub(crate) enum FaultAction {
    /// Mapped (or remapped): retry the instruction.
    Retry,
    /// Run the instruction alone with the page writable (`traced`: a page-table
    /// write, to be diffed afterwards).
    WriteThrough { traced: bool },
    /// A guest page fault: raise #PF with this error code (CR2 is set).
    PageFault(u32),
    /// No RAM behind the guest's mapping.
    NoRam,
}

impl Vm {
    /// Whether the guest has paging on.
    pub(crate) fn paging(&self) -> bool {
        self.cpu.cr0 & cr0::PG != 0
    }

    pub(crate) fn paging_mode(&self) -> PagingMode {
        PagingMode {
            cr3: self.cpu.cr3,
            wp: self.cpu.cr0 & cr0::WP != 0,
            pse: self.cpu.cr4 & CR4_PSE != 0,
            pge: self.cpu.cr4 & CR4_PGE != 0,
        }
    }

    /// The shadow, and the guest as its policy sees it now.
    fn shadow_parts(&mut self) -> (&mut Shadow, Guest<'_>) {
        let g = Guest {
            ram: &self.ram,
            code: &self.protected,
            mode: self.paging_mode(),
            paging: self.paging(),
            space: address_space_key(&self.cpu),
        };
        (&mut self.shadow, g)
    }

    /// The code map translated code's page checks read now
    /// (`VcpuCtx::code_map`): the current space's, for the current privilege.
    pub(crate) fn code_map_address(&mut self) -> u64 {
        let user = self.cpu.cpl() == 3;
        self.shadow.code_map_address(self.cpu.cr3 >> 12, user)
    }

    /// The GS base translated code must use: the user view at CPL 3 with paging.
    pub(crate) fn current_view_base(&self) -> u64 {
        if self.paging() && self.cpu.seg[sreg::CS].selector & 3 == 3 {
            self.shadow.user_view.base()
        } else {
            self.shadow.view.base()
        }
    }

    /// Drops every shadow mapping and translation of every cached space; without
    /// paging the kernel view maps RAM one to one again.
    pub(crate) fn shadow_flush(&mut self) -> Result<(), VmError> {
        self.shadow.flush()?;
        self.tr.flush();
        self.tr.set_page_checks(self.paging());
        self.protected.clear();
        if !self.paging() {
            self.shadow.view.map_identity(self.ram.fd(), self.ram.size())?;
        }
        Ok(())
    }

    /// Turns paging on with the page directory at `cr3` (for set-ups made by the
    /// VMM itself, such as snippets).
    pub(crate) fn enable_paging(&mut self, cr3: u32) -> Result<(), VmError> {
        self.cpu.cr3 = cr3;
        self.cpu.cr0 |= cr0::PG;
        self.shadow_flush()
    }

    /// The paging controls went from `before` to `after` (`address_space_key`).
    /// Turning paging on or off starts everything over; a change of CR4.PSE reads
    /// every page directory differently, so every mapping goes; a change of CR3 or
    /// CR0.WP switches to that space's cached shadow state.
    pub(crate) fn paging_controls_changed(&mut self, before: (u32, u32, u32), after: (u32, u32, u32)) -> Result<(), VmError> {
        let pg = |k: (u32, u32, u32)| k.0 & cr0::PG != 0;
        let wp = |k: (u32, u32, u32)| k.0 & cr0::WP != 0;
        if pg(before) != pg(after) {
            self.shadow.cr3_switches += u64::from(after.1 != before.1);
            return self.shadow_flush();
        }
        if !pg(after) {
            return Ok(());
        }
        if before.2 != after.2 {
            // Every page directory reads differently: start over.
            return self.shadow_flush();
        }
        if (before.1, wp(before)) != (after.1, wp(after)) {
            let (shadow, g) = self.shadow_parts();
            shadow.switch_space(&g, (before.1, wp(before)), (after.1, wp(after)))?;
        }
        Ok(())
    }

    /// Sets the host protection of every mapping of `frame` in every cached space:
    /// read-only, or (`writable`) what the guest allows unless the frame holds
    /// translated code or a page table.
    pub(crate) fn protect_frame(&mut self, frame: u32, writable: bool) -> Result<(), VmError> {
        let (shadow, g) = self.shadow_parts();
        Ok(shadow.protect_frame(&g, frame, writable)?)
    }

    /// Code at linear `page` is reached through walk `t` in the current space
    /// (`Shadow::note_code_page`).
    pub(crate) fn note_code_page(&mut self, page: u32, t: &walk::Translation) -> Result<(), VmError> {
        let (shadow, g) = self.shadow_parts();
        Ok(shadow.note_code_page(&g, page, t)?)
    }

    /// With paging off: maps the void page at `linear` (`Shadow::map_void_identity`).
    pub(crate) fn map_void_identity(&mut self, linear: u32) -> Result<(), VmError> {
        Ok(self.shadow.map_void_identity(&self.ram, linear)?)
    }

    /// After a transient write to a traced frame (`Shadow::finish_trace`).
    pub(crate) fn finish_trace(&mut self) -> Result<(), VmError> {
        let (shadow, g) = self.shadow_parts();
        Ok(shadow.finish_trace(&g)?)
    }

    /// One more write to traced `frame` (`Shadow::count_table_write`).
    pub(crate) fn count_table_write(&mut self, frame: u32) -> Result<(), VmError> {
        let (shadow, g) = self.shadow_parts();
        Ok(shadow.count_table_write(&g, frame)?)
    }

    /// The guest PDE/PTE at physical `entry` changed (`Shadow::entry_changed`).
    pub(crate) fn entry_changed(&mut self, entry: u32) -> Result<(), VmError> {
        let (shadow, g) = self.shadow_parts();
        Ok(shadow.entry_changed(&g, entry)?)
    }

    /// The guest's invlpg of linear `page` (`Shadow::remap_retargeted`).
    pub(crate) fn remap_retargeted(&mut self, linear: u32) -> Result<(), VmError> {
        let (shadow, g) = self.shadow_parts();
        Ok(shadow.remap_retargeted(&g, linear)?)
    }

    /// Maps the page of the last true fault if its entry is present now
    /// (`Shadow::map_awaited`).
    pub(crate) fn map_awaited(&mut self) -> Result<(), VmError> {
        let (shadow, g) = self.shadow_parts();
        Ok(shadow.map_awaited(&g)?)
    }

    /// A host fault at guest linear `linear` in the user or kernel view, with
    /// paging on: the shadow's decision, with CR2 set for a true fault and the
    /// frame's translations dropped before a write reaches translated code.
    pub(crate) fn paging_fault(&mut self, linear: u32, write: bool, user_view: bool) -> Result<FaultAction, VmError> {
        let (shadow, g) = self.shadow_parts();
        match shadow.fault(&g, linear, write, user_view)? {
            Fault::Retry => Ok(FaultAction::Retry),
            Fault::NoRam => Ok(FaultAction::NoRam),
            Fault::PageFault(error_code) => {
                self.cpu.cr2 = linear;
                Ok(FaultAction::PageFault(error_code))
            }
            Fault::Write(w) => {
                if !w.traced {
                    // Self-modifying code: the page stays writable until code is
                    // translated from it again.
                    self.stats.smc_faults += 1;
                }
                if w.code {
                    self.tr.invalidate_frame(w.frame)?;
                    self.protected.remove(&w.frame);
                }
                let (shadow, g) = self.shadow_parts();
                shadow.write_through(&g, w)?;
                Ok(FaultAction::WriteThrough { traced: w.traced })
            }
        }
    }
}
