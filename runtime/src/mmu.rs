//! Guest paging through host mappings (the engine's side of the shadow MMU).
//!
//! With CR0.PG set, the kernel view (CPL 0–2) and the user view (CPL 3) start
//! empty and fill on demand: a host fault in a view is walked through the guest's
//! page tables; if the guest allows the access, the page is mapped and the
//! instruction retried (a *hidden* fault); if not, the guest gets #PF with CR2 and
//! the error code (a *true* fault). The user view only ever receives pages the
//! walk allowed at CPL 3, so user code cannot reach a supervisor page.
//!
//! Accessed and dirty bits: the walk sets A; a page is mapped read-only until its
//! D bit is set, and the first write faults, sets D and remaps it writable.
//!
//! Tracing: every frame that held a page directory or page table used by a walk
//! is mapped read-only wherever it is mapped. A write to it (or to a frame holding
//! translated code) runs alone in a transient unit with the page writable, then
//! every shadow mapping and translation is dropped, since any of them may depend
//! on the entry written. CR3 writes, INVLPG and changes of CR0.PG/WP or
//! CR4.PSE/PGE drop them too.
//!
//! This first version is deliberately simple and correct: it drops everything on
//! those events. Keeping shadow state across CR3 switches, dropping only the
//! mappings that depended on a written entry, and adaptive translation of
//! page-table writes are the next steps.

use crate::cpu::{cr0, sreg};
use crate::memory::GuestRam;
use crate::vm::{Vm, VmError};
use bt86_shadow_mmu::walk::{self, Access, PagingMode, PhysMem, WalkError};
use bt86_shadow_mmu::View;
use hashbrown::{HashMap, HashSet};

const CR4_PSE: u32 = 1 << 4;
const CR4_PGE: u32 = 1 << 7;

/// Shadow-paging state of a VM.
#[derive(Default)]
pub(crate) struct Shadow {
    /// Frame → the (user view?, linear page) places it is mapped, for protection.
    rmap: HashMap<u32, Vec<(bool, u32)>>,
    /// (user view?, linear page) → the frame mapped there.
    mappings: HashMap<(bool, u32), u32>,
    /// Physical address of a guest PDE or PTE → the mappings whose walk used it.
    deps: HashMap<u32, Vec<(bool, u32)>>,
    /// A traced frame being written by a transient instruction, and its contents
    /// before: compared afterwards to find the entries that changed.
    pub pending_trace: Option<(u32, Box<[u8; 4096]>)>,
    /// Frames holding page directories or page tables in use.
    traced: HashSet<u32>,
    pub hidden_faults: u64,
    pub true_faults: u64,
    pub trace_faults: u64,
    /// Page-table writes made by `TracedWrite` callouts (no fault).
    pub adaptive_writes: u64,
    /// Tracing faults per guest eip, to pick instructions for adaptive translation.
    pub trace_counts: HashMap<u32, u32>,
    pub cr3_switches: u64,
    pub view_flushes: u64,
}

impl Shadow {
    /// Pages mapped in the views right now.
    pub fn mappings_live(&self) -> usize {
        self.mappings.len()
    }

    /// Whether `frame` holds a page directory or page table in use.
    pub fn is_traced(&self, frame: u32) -> bool {
        self.traced.contains(&frame)
    }
}

/// Guest-physical memory for the page walk (RAM only; the A and D bits are written
/// through the RAM alias).
pub(crate) struct RamPhys<'a>(pub &'a GuestRam);

impl PhysMem for RamPhys<'_> {
    fn read_u32(&mut self, phys: u32) -> Option<u32> {
        self.0.read_u32(phys).ok()
    }

    fn write_u32(&mut self, phys: u32, v: u32) -> bool {
        self.0.write_u32(phys, v).is_ok()
    }
}

/// The translation state translated code and shadow mappings depend on.
pub(crate) fn address_space_key(cpu: &crate::cpu::Cpu) -> (u32, u32, u32) {
    (cpu.cr0 & (cr0::PG | cr0::WP), cpu.cr3 & 0xffff_f000, cpu.cr4 & (CR4_PSE | CR4_PGE))
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

    /// The GS base translated code must use: the user view at CPL 3 with paging.
    pub(crate) fn current_view_base(&self) -> u64 {
        if self.paging() && self.cpu.seg[sreg::CS].selector & 3 == 3 {
            self.user_view.base()
        } else {
            self.view.base()
        }
    }

    /// Translates a linear address for the VMM's own use (code fetch, emulated
    /// instructions): supervisor access unless `user`.
    pub(crate) fn translate_linear(&self, linear: u32, write: bool, user: bool) -> Result<u32, WalkError> {
        if !self.paging() {
            return Ok(linear);
        }
        let access = Access { write, user, fetch: false };
        let t = walk::walk(&mut RamPhys(&self.ram), &self.paging_mode(), linear, access)?;
        Ok(t.phys_page | (linear & 0xfff))
    }

    /// Drops every shadow mapping and translation; without paging the kernel view
    /// maps RAM one to one again.
    pub(crate) fn shadow_flush(&mut self) -> Result<(), VmError> {
        self.view.unmap_all()?;
        self.user_view.unmap_all()?;
        self.shadow.rmap.clear();
        self.shadow.mappings.clear();
        self.shadow.deps.clear();
        self.shadow.traced.clear();
        self.shadow.pending_trace = None;
        self.shadow.view_flushes += 1;
        self.tr.flush();
        self.protected.clear();
        if !self.paging() {
            self.view.map_identity(self.ram.fd(), self.ram.size())?;
        }
        Ok(())
    }

    /// Write-protects (or unprotects) every mapping of `frame`.
    pub(crate) fn protect_frame(&mut self, frame: u32, writable: bool) -> Result<(), VmError> {
        if !self.paging() {
            self.view.set_writable(frame << 12, writable)?;
            return Ok(());
        }
        if let Some(places) = self.shadow.rmap.get(&frame) {
            for &(user, linear) in places {
                let view = if user { &mut self.user_view } else { &mut self.view };
                view.protect_page(linear, writable)?;
            }
        }
        Ok(())
    }

    /// A host fault at guest linear `linear` in the user or kernel view, with
    /// paging on.
    pub(crate) fn paging_fault(&mut self, linear: u32, write: bool, user_view: bool) -> Result<FaultAction, VmError> {
        let access = Access { write, user: user_view, fetch: false };
        let t = match walk::walk(&mut RamPhys(&self.ram), &self.paging_mode(), linear, access) {
            Ok(t) => t,
            Err(WalkError::PageFault { error_code }) => {
                self.cpu.cr2 = linear;
                self.shadow.true_faults += 1;
                return Ok(FaultAction::PageFault(error_code));
            }
            Err(WalkError::NoRam { .. }) => return Ok(FaultAction::NoRam),
        };
        for table in [Some(t.pde_addr), t.pte_addr].into_iter().flatten() {
            let f = table >> 12;
            if self.shadow.traced.insert(f) {
                self.protect_frame(f, false)?;
            }
        }
        if !self.ram.contains(t.phys_page, 0x1000) {
            // The guest maps memory that does not exist (no MMIO devices yet).
            return Ok(FaultAction::NoRam);
        }
        let frame = t.phys_page >> 12;
        let code = self.protected.contains(&frame);
        let traced = self.shadow.traced.contains(&frame);
        let deps = [Some(t.pde_addr), t.pte_addr];
        if write && code && !traced {
            // Self-modifying code: drop the frame's translations; the page stays
            // writable until code is translated from it again.
            self.stats.smc_faults += 1;
            self.tr.invalidate_frame(frame)?;
            self.protected.remove(&frame);
            self.map_shadow(user_view, linear, frame, true, deps)?;
            self.protect_frame(frame, true)?;
            return Ok(FaultAction::WriteThrough { traced: false });
        }
        if write && traced {
            // A write to a page table in use: let this one instruction write, then
            // compare the page with its old contents (`finish_trace`).
            self.shadow.trace_faults += 1;
            if code {
                self.tr.invalidate_frame(frame)?;
                self.protected.remove(&frame);
            }
            let mut before = Box::new([0u8; 4096]);
            self.ram.read(frame << 12, &mut before[..]).map_err(|e| VmError::Internal(e.to_string()))?;
            self.shadow.pending_trace = Some((frame, before));
            self.map_shadow(user_view, linear, frame, true, deps)?;
            return Ok(FaultAction::WriteThrough { traced: true });
        }
        self.shadow.hidden_faults += 1;
        let writable = t.writable && t.dirty && !code && !traced;
        self.map_shadow(user_view, linear, frame, writable, deps)?;
        Ok(FaultAction::Retry)
    }

    /// After a transient write to a traced frame: drop what depended on the
    /// entries that changed, and protect the frame again.
    pub(crate) fn finish_trace(&mut self) -> Result<(), VmError> {
        let Some((frame, before)) = self.shadow.pending_trace.take() else { return Ok(()) };
        let mut after = [0u8; 4096];
        self.ram.read(frame << 12, &mut after).map_err(|e| VmError::Internal(e.to_string()))?;
        for (i, (a, b)) in before.chunks_exact(4).zip(after.chunks_exact(4)).enumerate() {
            if a != b {
                self.entry_changed((frame << 12) + 4 * u32::try_from(i).unwrap_or(0))?;
            }
        }
        if self.shadow.traced.contains(&frame) {
            self.protect_frame(frame, false)?;
        }
        Ok(())
    }

    /// The guest PDE/PTE at physical `entry` changed: drop the shadow mappings its
    /// walks produced and the translations on those linear pages.
    pub(crate) fn entry_changed(&mut self, entry: u32) -> Result<(), VmError> {
        let Some(places) = self.shadow.deps.remove(&(entry & !3)) else { return Ok(()) };
        for (user, linear) in places {
            self.unmap_shadow(user, linear)?;
            self.tr.invalidate_linear(linear, 0x1000)?;
        }
        Ok(())
    }

    /// INVLPG: drop the shadow mappings and translations of the 4 MiB region around
    /// `linear` (it may be a large page) in both views.
    pub(crate) fn invlpg(&mut self, linear: u32) -> Result<(), VmError> {
        let region = linear & 0xffc0_0000;
        let hit: Vec<(bool, u32)> =
            self.shadow.mappings.keys().filter(|&&(_, l)| l & 0xffc0_0000 == region).copied().collect();
        for (user, l) in hit {
            self.unmap_shadow(user, l)?;
        }
        self.tr.invalidate_linear(region, 0x40_0000)?;
        Ok(())
    }

    fn unmap_shadow(&mut self, user_view: bool, linear: u32) -> Result<(), VmError> {
        let Some(frame) = self.shadow.mappings.remove(&(user_view, linear)) else { return Ok(()) };
        if let Some(places) = self.shadow.rmap.get_mut(&frame) {
            places.retain(|&p| p != (user_view, linear));
        }
        let view = if user_view { &mut self.user_view } else { &mut self.view };
        view.unmap(linear, 0x1000)?;
        Ok(())
    }

    fn map_shadow(
        &mut self,
        user_view: bool,
        linear: u32,
        frame: u32,
        writable: bool,
        deps: [Option<u32>; 2],
    ) -> Result<(), VmError> {
        let place = (user_view, linear & !0xfff);
        if let Some(old) = self.shadow.mappings.get(&place).copied() {
            if old != frame {
                self.unmap_shadow(user_view, place.1)?;
            }
        }
        let view = if user_view { &mut self.user_view } else { &mut self.view };
        view.map_page(linear, self.ram.fd(), frame << 12, writable)?;
        self.shadow.mappings.insert(place, frame);
        let places = self.shadow.rmap.entry(frame).or_default();
        if !places.contains(&place) {
            places.push(place);
        }
        for entry in deps.into_iter().flatten() {
            let list = self.shadow.deps.entry(entry).or_default();
            if !list.contains(&place) {
                list.push(place);
            }
        }
        Ok(())
    }
}

/// Mapped views need this to be `Send` with the VM.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<View>();
};
