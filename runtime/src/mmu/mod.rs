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
//! is mapped read-only wherever it is mapped. A write to it runs alone in a
//! transient unit with the page writable; the page is then compared with its old
//! contents and only the mappings whose walks used a changed entry are dropped
//! (and the code pages reached through it leave the space's code map, which the
//! translated code's page checks read). A store that keeps doing this is
//! retranslated into a callout that writes through the emulator (`emulate::traced`),
//! which reports the changed entries without a fault.
//!
//! Address spaces: the shadow state of the last few CR3 values is kept, each with
//! its own pair of views. A CR3 write to a cached space swaps its views in (the GS
//! base of translated code follows) instead of refilling them page by page. That
//! stays correct because tracing is global: a frame is traced while any cached
//! space's walks used it, so a write to another space's page table (a fork
//! copying entries, an exit tearing them down) drops that space's dependent
//! mappings as precisely as the current one's. Changes of CR0.PG/WP or
//! CR4.PSE/PGE still drop everything.
//!
//! Each space's bookkeeping (its mappings, reverse maps, dependencies on guest
//! entries, traced frames, large pages) and the operations on it alone are
//! `bt86_shadow_mmu::space`'s (`SpaceMaps`, `IdleSpace`); this module is the
//! engine glue: faults, walks through guest RAM, CR3 switches, the cache of
//! spaces, tracing across spaces, the code map, adaptive stores.

mod handover;

use crate::cpu::{cr0, sreg};
use crate::memory::GuestRam;
use crate::vm::{Vm, VmError};
use bt86_shadow_mmu::walk::{self, Access, PagingMode, PhysMem, WalkError};
use bt86_shadow_mmu::code_map::{CodeMap, Source};
use bt86_shadow_mmu::space::{pick_view, IdleSpace, LargeMapping, Mapping, Place, SpaceKey, SpaceMaps, VOID_FRAME};
use bt86_shadow_mmu::View;
use hashbrown::{HashMap, HashSet};
use std::collections::BTreeMap;

const CR4_PSE: u32 = 1 << 4;
const CR4_PGE: u32 = 1 << 7;
/// Address spaces whose shadow state is kept (the current one included).
pub(crate) const MAX_SPACES: usize = 8;
/// Mappings kept over all cached spaces at most: each one may be a host VMA, and a
/// process has at most 65,530 of those by default (`vm.max_map_count`).
const MAX_CACHED_MAPPINGS: usize = 24_000;
/// Writes to a traced frame with no page walk through it in between after which
/// it is no longer traced: the guest is rebuilding or tearing down that table
/// (a fork copying it, an exit clearing it), and following each store would
/// cost more than dropping what depends on it once.
const UNTRACE_AFTER: u32 = 64;

/// Shadow-paging state of a VM.
#[derive(Default)]
pub(crate) struct Shadow {
    /// The current address space's maps (its views are `Vm::view`/`user_view`).
    maps: SpaceMaps,
    /// Cached spaces that are not current, least recently used first.
    idle: Vec<IdleSpace>,
    /// Emptied views kept for reuse.
    spare_views: Vec<(View, View)>,
    /// A traced frame being written by a transient instruction, and its contents
    /// before: compared afterwards to find the entries that changed.
    pub pending_trace: Option<(u32, Box<[u8; 4096]>)>,
    pub hidden_faults: u64,
    pub true_faults: u64,
    pub trace_faults: u64,
    /// Page-table writes made by `TracedWrite` callouts (no fault).
    pub adaptive_writes: u64,
    /// Tracing faults per guest eip, to pick instructions for adaptive translation.
    pub trace_counts: HashMap<u32, u32>,
    pub cr3_switches: u64,
    /// CR3 switches to a space whose shadow state was cached.
    pub space_hits: u64,
    /// Cached spaces dropped to make room.
    pub space_evictions: u64,
    /// Times the current space's mappings were all dropped to stay under the limit.
    pub space_drops: u64,
    pub view_flushes: u64,
    /// invlpg executed (tracing keeps the shadow coherent; see `retargeted`).
    pub invlpgs: u64,
    /// Pages mapped by a hidden fault next to the one that faulted.
    pub prefetched: u64,
    /// The last true fault on a not-present PTE: the handler's store that makes
    /// the entry present maps the page at once (`map_when_present`).
    awaiting_present: Option<AwaitingPresent>,
    /// Pages mapped that way.
    pub mapped_on_present: u64,
    /// Mappings a store dropped by changing their entry to another present
    /// value, newest last: the guest's invlpg of the page maps it again
    /// (`remap_retargeted`).
    retargeted: Vec<Retargeted>,
    /// Pages mapped that way.
    pub mapped_at_invlpg: u64,
    /// The last page mapped again at an invlpg, and whether the guest
    /// invalidated it since it was last mapped (`armed`): a guest that retargets
    /// an entry, invlpgs and uses the page, over and over, has it mapped through
    /// the new entry at the store itself (one host call, no park).
    eager: Option<Eager>,
    /// Pages mapped that way.
    pub mapped_at_store: u64,
    /// 4 MiB guest pages mapped whole.
    pub large_maps: u64,
    /// Switches where a space took the kernel view of the one before (`handover`).
    pub kernel_handovers: u64,
    /// Writes to each traced frame since a walk last went through it.
    trace_burst: HashMap<u32, u32>,
    /// Frames no longer traced because of a burst of writes.
    pub untraced_frames: u64,
    /// Emulated writes (adaptive or not) that hit a traced frame, ever.
    pub table_write_hits: u64,
    /// Consecutive writes per adaptive store that missed every traced frame.
    pub adaptive_misses: HashMap<u32, u32>,
    /// Adaptive stores made plain again once (bounded: cleared when large).
    pub made_plain: HashSet<u32>,
    /// Void pages mapped into the identity view (paging off), oldest first.
    void_pages: std::collections::VecDeque<u32>,
    /// Frame → how many cached spaces trace it (the union of their `traced`
    /// sets, ordered for range queries over a large page).
    traced_count: BTreeMap<u32, u32>,
    /// What translated code's page checks read.
    code: CodeMap,
}

impl Shadow {
    /// Pages mapped in all cached spaces' views right now.
    pub fn mappings_live(&self) -> usize {
        self.maps.host_mappings() + self.idle.iter().map(|s| s.maps.host_mappings()).sum::<usize>()
    }

    /// Whether `frame` holds a page directory or page table any cached space uses.
    /// The guest frame the current space's `user` or kernel view maps at
    /// `linear`, and whether the guest allows writes through it: a translation
    /// the shadow keeps coherent with the guest's tables (A, and D where
    /// writable, are set). None: not mapped, or mapped to memory that does not
    /// exist.
    pub(crate) fn cached_frame(&self, linear: u32, user: bool) -> Option<(u32, bool)> {
        let maps = &self.maps;
        let (frame, writable) = match maps.mappings.get(&(user, linear & !0xfff)) {
            Some(m) => (m.frame, m.writable),
            None => {
                let l = maps.large.get(&(user, linear & !0x3f_ffff))?;
                (l.frame0.checked_add((linear >> 12) & 0x3ff)?, l.writable)
            }
        };
        (frame != VOID_FRAME).then_some((frame, writable))
    }

    /// Whether a #PF handler's return may map a page (`Vm::map_awaited`).
    pub(crate) fn awaits_present(&self) -> bool {
        self.awaiting_present.is_some()
    }

    pub fn is_traced(&self, frame: u32) -> bool {
        self.traced_count.contains_key(&frame)
    }

    /// One more space traces `frame`.
    fn count_trace(&mut self, frame: u32) {
        *self.traced_count.entry(frame).or_insert(0) += 1;
    }

    /// One space fewer traces each of `frames`.
    fn uncount_traces(&mut self, frames: impl IntoIterator<Item = u32>) {
        for f in frames {
            if let Some(n) = self.traced_count.get_mut(&f) {
                *n -= 1;
                if *n == 0 {
                    self.traced_count.remove(&f);
                }
            }
        }
    }

    /// Host calls made by the views of idle and spare spaces.
    pub fn idle_view_calls(&self) -> bt86_shadow_mmu::view::ViewCalls {
        let views = self.idle.iter().flat_map(|s| [&s.view, &s.user_view]).chain(self.spare_views.iter().flat_map(|(a, b)| [a, b]));
        views.fold(Default::default(), |mut acc: bt86_shadow_mmu::view::ViewCalls, v| {
            acc.maps += v.calls.maps;
            acc.unmaps += v.calls.unmaps;
            acc.protects += v.calls.protects;
            acc
        })
    }


    /// Address spaces cached (the current one included).
    pub fn spaces_cached(&self) -> usize {
        1 + self.idle.len()
    }

}

/// Guest-physical memory for the page walk (RAM only; the A and D bits are written
/// through the RAM alias).
pub(crate) struct RamPhys<'a>(pub &'a GuestRam);

impl PhysMem for RamPhys<'_> {
    /// A page table past the end of RAM reads as all ones (the empty bus).
    fn read_u32(&mut self, phys: u32) -> Option<u32> {
        let mut b = [0u8; 4];
        self.0.read_or_ones(phys, &mut b);
        Some(u32::from_le_bytes(b))
    }

    fn write_u32(&mut self, phys: u32, v: u32) -> bool {
        self.0.write_or_drop(phys, &v.to_le_bytes());
        true
    }
}

/// A true #PF at `linear` on a not-present entry at `pte` in space `space`.
#[derive(Clone, Copy, Debug)]
struct AwaitingPresent {
    pte: u32,
    linear: u32,
    user_view: bool,
    /// The access that faulted was a write.
    write: bool,
    space: (u32, u32, u32),
}

/// A mapping dropped because a store changed the guest entry `entry` it went
/// through to another present value, in space `space`.
#[derive(Clone, Copy, Debug)]
struct Retargeted {
    place: Place,
    entry: u32,
    space: (u32, u32, u32),
}

/// See `Shadow::eager`.
#[derive(Clone, Copy, Debug)]
struct Eager {
    target: Retargeted,
    armed: bool,
}

/// Guest-physical memory for a walk that must not change anything: a walk that
/// would set an A or D bit fails instead.
struct PeekPhys<'a>(&'a GuestRam);

impl PhysMem for PeekPhys<'_> {
    fn read_u32(&mut self, phys: u32) -> Option<u32> {
        RamPhys(self.0).read_u32(phys)
    }

    fn write_u32(&mut self, _phys: u32, _v: u32) -> bool {
        false
    }
}

/// Guest-physical memory for a walk that only tells what it would do: its A and
/// D bit writes go nowhere.
struct DryPhys<'a>(&'a GuestRam);

impl PhysMem for DryPhys<'_> {
    fn read_u32(&mut self, phys: u32) -> Option<u32> {
        RamPhys(self.0).read_u32(phys)
    }

    fn write_u32(&mut self, _phys: u32, _v: u32) -> bool {
        true
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

    /// The code map translated code's page checks read now
    /// (`VcpuCtx::code_map`): the current space's, for the current privilege.
    pub(crate) fn code_map_address(&mut self) -> u64 {
        let user = self.cpu.cpl() == 3;
        self.shadow.code.top_address(self.cpu.cr3 >> 12, user)
    }

    /// The GS base translated code must use: the user view at CPL 3 with paging.
    pub(crate) fn current_view_base(&self) -> u64 {
        if self.paging() && self.cpu.seg[sreg::CS].selector & 3 == 3 {
            self.user_view.base()
        } else {
            self.view.base()
        }
    }

    /// Drops every shadow mapping and translation of every cached space; without
    /// paging the kernel view maps RAM one to one again.
    pub(crate) fn shadow_flush(&mut self) -> Result<(), VmError> {
        self.view.unmap_all()?;
        self.user_view.unmap_all()?;
        for mut idle in core::mem::take(&mut self.shadow.idle) {
            idle.view.unmap_all()?;
            idle.user_view.unmap_all()?;
            self.shadow.spare_views.push((idle.view, idle.user_view));
        }
        self.shadow.maps = SpaceMaps::default();
        self.shadow.traced_count.clear();
        self.shadow.code.reset();
        self.shadow.pending_trace = None;
        self.shadow.void_pages.clear();
        self.shadow.view_flushes += 1;
        self.tr.flush();
        self.tr.set_page_checks(self.paging());
        self.protected.clear();
        if !self.paging() {
            self.view.map_identity(self.ram.fd(), self.ram.size())?;
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
            self.switch_space((before.1, wp(before)), (after.1, wp(after)))?;
        }
        Ok(())
    }

    /// CR3 or CR0.WP changed with paging on and the other paging controls
    /// unchanged: make `new`'s cached shadow state current, or start it empty
    /// (dropping the least recently used space if the cache is full).
    fn switch_space(&mut self, old: SpaceKey, new: SpaceKey) -> Result<(), VmError> {
        self.shadow.cr3_switches += 1;
        let mut handed = None;
        let incoming = match self.shadow.idle.iter().position(|s| s.key == new) {
            Some(i) => {
                self.shadow.space_hits += 1;
                self.shadow.idle.remove(i)
            }
            None => {
                if self.shadow.idle.len() + 1 >= MAX_SPACES {
                    self.evict_idle_space()?;
                }
                let (view, user_view) = match self.shadow.spare_views.pop() {
                    Some(pair) => pair,
                    None => (View::reserve()?, View::reserve()?),
                };
                let mut space = IdleSpace { key: new, view, user_view, maps: SpaceMaps::default() };
                handed = self.hand_over_kernel_view(old, &mut space)?;
                space
            }
        };
        let outgoing = IdleSpace {
            key: old,
            view: core::mem::replace(&mut self.view, incoming.view),
            user_view: core::mem::replace(&mut self.user_view, incoming.user_view),
            maps: core::mem::replace(&mut self.shadow.maps, incoming.maps),
        };
        self.shadow.idle.push(outgoing);
        // A frame no space traced before may be mapped writable somewhere.
        for frame in handed.into_iter().flatten() {
            self.protect_frame(frame, false)?;
        }
        while self.shadow.mappings_live() > MAX_CACHED_MAPPINGS && !self.shadow.idle.is_empty() {
            self.evict_idle_space()?;
        }
        Ok(())
    }

    /// Drops the least recently used idle space. Frames only it traced are no
    /// longer traced; where other spaces map them read-only, the next write takes
    /// a hidden fault that maps them as the guest allows.
    fn evict_idle_space(&mut self) -> Result<(), VmError> {
        let gone = self.shadow.idle.remove(0);
        self.retire_space(gone)
    }

    /// Drops cached space `gone`: its views go back to the spares, and frames only
    /// it traced become writable where the guest allows.
    fn retire_space(&mut self, mut gone: IdleSpace) -> Result<(), VmError> {
        gone.view.unmap_all()?;
        gone.user_view.unmap_all()?;
        self.shadow.spare_views.push((gone.view, gone.user_view));
        self.shadow.space_evictions += 1;
        self.release_traces(gone.maps.traced.into_iter().collect())
    }

    /// Sets the host protection of every mapping of `frame` in every cached space:
    /// read-only, or (`writable`) what the guest allows unless the frame holds
    /// translated code or a page table.
    pub(crate) fn protect_frame(&mut self, frame: u32, writable: bool) -> Result<(), VmError> {
        if !self.paging() {
            self.view.set_writable(frame << 12, writable)?;
            return Ok(());
        }
        let writable = writable && !self.protected.contains(&frame) && !self.shadow.is_traced(frame);
        self.shadow.maps.protect(&mut self.view, &mut self.user_view, frame, writable)?;
        for idle in &mut self.shadow.idle {
            idle.maps.protect(&mut idle.view, &mut idle.user_view, frame, writable)?;
        }
        Ok(())
    }

    /// Code at linear `page` is reached through walk `t` in the current space:
    /// trace its tables (kept traced while the space is cached) and enter the
    /// page in the code map, so units on it pass their page checks here.
    pub(crate) fn note_code_page(&mut self, page: u32, t: &walk::Translation) -> Result<(), VmError> {
        self.trace_tables(t)?;
        let maps = &mut self.shadow.maps;
        for table in [Some(t.pde_addr), t.pte_addr].into_iter().flatten() {
            if maps.code_tables.insert(table >> 12) {
                maps.count_dep_key(table & !0xfff);
            }
        }
        let source = match (t.large, t.pte_addr) {
            (Some(base), _) => Source::Large(base >> 12),
            (None, Some(pte)) => Source::Table(pte >> 12),
            (None, None) => return Ok(()),
        };
        self.shadow.code.note(self.cpu.cr3 >> 12, page, source, t.phys_page >> 12, t.user);
        Ok(())
    }

    /// Starts tracing the page-table frames a walk used.
    fn trace_tables(&mut self, t: &walk::Translation) -> Result<(), VmError> {
        for table in [Some(t.pde_addr), t.pte_addr].into_iter().flatten() {
            let f = table >> 12;
            self.shadow.trace_burst.remove(&f);
            if !self.shadow.maps.traced.contains(&f) {
                let known = self.shadow.is_traced(f);
                self.shadow.maps.traced.insert(f);
                self.shadow.count_trace(f);
                if !known {
                    self.protect_frame(f, false)?;
                }
            }
        }
        Ok(())
    }

    /// With paging off: maps the void page at `linear` (memory that does not
    /// exist). At most `MAX_VOID_PAGES` stay mapped, so a guest sweeping the
    /// address space cannot exhaust the host's mapping count.
    pub(crate) fn map_void_identity(&mut self, linear: u32) -> Result<(), VmError> {
        const MAX_VOID_PAGES: usize = 256;
        let page = linear & !0xfff;
        self.view.map_void(page, self.ram.fd(), self.ram.void_offset(), true)?;
        self.shadow.void_pages.push_back(page);
        if self.shadow.void_pages.len() > MAX_VOID_PAGES {
            if let Some(old) = self.shadow.void_pages.pop_front() {
                self.view.unmap(old, 0x1000)?;
            }
        }
        Ok(())
    }

    /// Keeps the host mappings of all cached spaces below `MAX_CACHED_MAPPINGS`
    /// (each may be a host VMA, and their number is limited): idle spaces go first;
    /// if the current one alone is too big, its mappings are dropped (they refill on
    /// demand; translations do not depend on them).
    fn bound_mappings(&mut self) -> Result<(), VmError> {
        while self.shadow.mappings_live() >= MAX_CACHED_MAPPINGS && !self.shadow.idle.is_empty() {
            self.evict_idle_space()?;
        }
        if self.shadow.maps.host_mappings() >= MAX_CACHED_MAPPINGS {
            self.view.unmap_all()?;
            self.user_view.unmap_all()?;
            let maps = &mut self.shadow.maps;
            maps.mappings.clear();
            maps.rmap.clear();
            maps.deps.clear();
            maps.large.clear();
            maps.large_deps.clear();
            maps.large_rmap.clear();
            // Only the code tables and the hot table stay, and their tracing.
            maps.dep_frames.clear();
            let tables: Vec<u32> = maps.code_tables.iter().copied().chain(maps.hot_table).collect();
            for table in tables {
                maps.count_dep_key(table << 12);
            }
            let gone: Vec<u32> = maps.traced.iter().copied().filter(|f| !maps.dep_frames.contains_key(f)).collect();
            for f in &gone {
                maps.traced.remove(f);
            }
            self.release_traces(gone)?;
            self.shadow.space_drops += 1;
        }
        Ok(())
    }

    /// A host fault at guest linear `linear` in the user or kernel view, with
    /// paging on.
    pub(crate) fn paging_fault(&mut self, linear: u32, write: bool, user_view: bool) -> Result<FaultAction, VmError> {
        self.bound_mappings()?;
        let access = Access { write, user: user_view, fetch: false };
        let t = match walk::walk(&mut RamPhys(&self.ram), &self.paging_mode(), linear, access) {
            Ok(t) => t,
            Err(WalkError::PageFault { error_code }) => {
                self.cpu.cr2 = linear;
                self.shadow.true_faults += 1;
                self.await_present(linear, user_view, write);
                return Ok(FaultAction::PageFault(error_code));
            }
            Err(WalkError::NoRam { .. }) => return Ok(FaultAction::NoRam),
        };
        self.trace_tables(&t)?;
        if !self.ram.contains(t.phys_page, 0x1000) {
            // The guest maps memory that does not exist: the empty bus.
            let m = Mapping { frame: VOID_FRAME, writable: t.writable && t.dirty };
            self.shadow.hidden_faults += 1;
            self.map_shadow(user_view, linear, m, m.writable, [Some(t.pde_addr), t.pte_addr])?;
            return Ok(FaultAction::Retry);
        }
        let frame = t.phys_page >> 12;
        let code = self.protected.contains(&frame);
        let traced = self.shadow.is_traced(frame);
        let deps = [Some(t.pde_addr), t.pte_addr];
        let guest_writable = t.writable && t.dirty;
        if write && code && !traced {
            // Self-modifying code: drop the frame's translations; the page stays
            // writable until code is translated from it again.
            self.stats.smc_faults += 1;
            self.tr.invalidate_frame(frame)?;
            self.protected.remove(&frame);
            self.map_shadow(user_view, linear, Mapping { frame, writable: guest_writable }, true, deps)?;
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
            self.map_shadow(user_view, linear, Mapping { frame, writable: guest_writable }, true, deps)?;
            return Ok(FaultAction::WriteThrough { traced: true });
        }
        self.shadow.hidden_faults += 1;
        if let Some(base) = t.large {
            return self.map_large(user_view, linear, base, guest_writable, t.pde_addr);
        }
        let host_writable = guest_writable && !code && !traced;
        self.map_shadow(user_view, linear, Mapping { frame, writable: guest_writable }, host_writable, deps)?;
        if t.pte_addr.is_some() {
            self.prefetch_neighbours(linear, user_view)?;
        }
        Ok(FaultAction::Retry)
    }

    /// A hidden fault in a 4 MiB guest page: maps all of it (as far as RAM goes)
    /// with as few host mappings as the read-only frames inside allow (code and
    /// page tables), so a space touching the kernel's direct map takes one fault
    /// per 4 MiB instead of one per page.
    fn map_large(&mut self, user_view: bool, linear: u32, base: u32, guest_writable: bool, pde: u32) -> Result<FaultAction, VmError> {
        let region = linear & !0x3f_ffff;
        let frame0 = base >> 12;
        let ram_frames = self.ram.size() >> 12;
        let count = ram_frames.saturating_sub(frame0).min(1024);
        if count == 0 {
            return Ok(FaultAction::NoRam);
        }
        // Read-only frames inside, in order.
        let range = frame0..frame0 + count;
        let mut fixed: Vec<u32> = self.protected.range(range.clone()).copied().collect();
        fixed.extend(self.shadow.traced_count.range(range).map(|(&f, _)| f));
        fixed.sort_unstable();
        fixed.dedup();
        let view = pick_view(&mut self.view, &mut self.user_view, user_view);
        let mut runs = 0u32;
        let mut run = |first: u32, n: u32, writable: bool| -> Result<(), VmError> {
            if n > 0 {
                view.map_pages(region + ((first - frame0) << 12), self.ram.fd(), first << 12, n, writable)?;
                runs += 1;
            }
            Ok(())
        };
        if guest_writable {
            // Alternate writable runs and read-only runs; consecutive read-only
            // frames (kernel text is thousands of them) share one host mapping.
            let mut at = frame0;
            let mut i = 0;
            while i < fixed.len() {
                let first = fixed[i];
                let mut n = 1;
                while i + (n as usize) < fixed.len() && fixed[i + n as usize] == first + n {
                    n += 1;
                }
                run(at, first - at, true)?;
                run(first, n, false)?;
                at = first + n;
                i += n as usize;
            }
            run(at, frame0 + count - at, true)?;
        } else {
            run(frame0, count, false)?;
        }
        let place = (user_view, region);
        let maps = &mut self.shadow.maps;
        maps.record_large(place, LargeMapping { frame0, writable: guest_writable, runs }, pde);
        self.shadow.large_maps += 1;
        Ok(FaultAction::Retry)
    }

    /// After a hidden fault at `linear`: maps the other pages of its aligned
    /// 64 KiB group that the same page table already grants, so a process
    /// touching neighbouring pages takes one fault, not sixteen. Only entries
    /// whose A bit is already set are taken: setting it ourselves would show the
    /// guest an access that never happened. Runs of consecutive frames with the
    /// same protection become one host mapping.
    fn prefetch_neighbours(&mut self, linear: u32, user_view: bool) -> Result<(), VmError> {
        const GROUP: u32 = 16;
        let first = linear & !(GROUP * 0x1000 - 1);
        let mode = self.paging_mode();
        let access = Access { write: false, user: user_view, fetch: false };
        let mut run: Option<(u32, u32, u32, bool)> = None; // (linear, frame, pages, host writable)
        for i in 0..GROUP {
            let l = first + i * 0x1000;
            let next = if self.shadow.maps.mappings.contains_key(&(user_view, l)) {
                None
            } else {
                walk::walk(&mut PeekPhys(&self.ram), &mode, l, access)
                    .ok()
                    .filter(|t| t.pte_addr.is_some() && self.ram.contains(t.phys_page, 0x1000))
            };
            let Some(t) = next else {
                self.flush_prefetch_run(user_view, run.take())?;
                continue;
            };
            let frame = t.phys_page >> 12;
            let guest_writable = t.writable && t.dirty;
            let host = guest_writable && !self.protected.contains(&frame) && !self.shadow.is_traced(frame);
            let maps = &mut self.shadow.maps;
            maps.mappings.insert((user_view, l), Mapping { frame, writable: guest_writable });
            maps.rmap.entry(frame).or_default().push((user_view, l));
            for entry in [Some(t.pde_addr), t.pte_addr].into_iter().flatten() {
                maps.add_dep(entry, (user_view, l));
            }
            self.shadow.prefetched += 1;
            run = match run {
                Some((rl, rf, n, w)) if rf + n == frame && w == host => Some((rl, rf, n + 1, w)),
                other => {
                    self.flush_prefetch_run(user_view, other)?;
                    Some((l, frame, 1, host))
                }
            };
        }
        self.flush_prefetch_run(user_view, run)
    }

    fn flush_prefetch_run(&mut self, user_view: bool, run: Option<(u32, u32, u32, bool)>) -> Result<(), VmError> {
        let Some((linear, frame, pages, writable)) = run else { return Ok(()) };
        let view = pick_view(&mut self.view, &mut self.user_view, user_view);
        view.map_pages(linear, self.ram.fd(), frame << 12, pages, writable)?;
        Ok(())
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
        if self.shadow.is_traced(frame) {
            self.protect_frame(frame, false)?;
        }
        self.count_table_write(frame)
    }

    /// One more write to traced `frame`; a burst of them ends its tracing.
    pub(crate) fn count_table_write(&mut self, frame: u32) -> Result<(), VmError> {
        let n = self.shadow.trace_burst.entry(frame).or_insert(0);
        *n += 1;
        if *n >= UNTRACE_AFTER {
            self.untrace(frame)?;
        }
        Ok(())
    }

    /// Stops tracing `frame`: drops everything that depended on any of its
    /// entries in every cached space, and lets the guest write it freely. The
    /// next walk through it traces it again.
    fn untrace(&mut self, frame: u32) -> Result<(), VmError> {
        self.shadow.trace_burst.remove(&frame);
        self.drop_entries((0..1024).map(|i| (frame << 12) + 4 * i))?;
        self.shadow.maps.traced.remove(&frame);
        for idle in &mut self.shadow.idle {
            idle.maps.traced.remove(&frame);
        }
        self.shadow.traced_count.remove(&frame);
        self.shadow.code.frame_untraced(frame);
        self.shadow.untraced_frames += 1;
        self.protect_frame(frame, true)
    }

    /// The guest PDE/PTE at physical `entry` changed: in every cached space, drop
    /// the shadow mappings its walks produced, and forget in the space's code map
    /// the code pages reached through it (their units' page checks fail until the
    /// VMM walks them again). Translations stay: they are keyed by frame.
    pub(crate) fn entry_changed(&mut self, entry: u32) -> Result<(), VmError> {
        let value = RamPhys(&self.ram).read_u32(entry & !3).unwrap_or(0);
        self.shadow.code.entry_changed(entry & !3, value);
        if let Some(place) = self.eager_place(entry & !3, value) {
            // Forgotten first, the page keeps its host mapping through the drop;
            // mapped over at once through the new entry (or unmapped after all).
            self.shadow.maps.forget(place);
            self.drop_entries(core::iter::once(entry & !3))?;
            if self.map_through(place.0, place.1, entry & !3)? {
                self.shadow.mapped_at_store += 1;
            } else {
                pick_view(&mut self.view, &mut self.user_view, place.0).park(place.1)?;
            }
            return Ok(());
        }
        self.note_retargeted(entry & !3, value);
        self.drop_entries(core::iter::once(entry & !3))?;
        self.map_when_present(entry & !3)
    }

    /// The page a store to `entry` (now `value`) retargets, if it is to be
    /// mapped at once (`Shadow::eager`); disarms it.
    fn eager_place(&mut self, entry: u32, value: u32) -> Option<Place> {
        let e = self.shadow.eager.as_mut().filter(|e| e.armed && e.target.entry == entry)?;
        let place = e.target.place;
        let space = e.target.space;
        e.armed = false;
        let m = self.shadow.maps.mappings.get(&place)?;
        (value & 1 != 0 && m.frame != value >> 12 && space == address_space_key(&self.cpu)).then_some(place)
    }

    /// Before the mappings through `entry` go: if the entry stays present with
    /// another frame behind it (or with its A bit set: not an OS clearing A to
    /// see whether the page gets used), remembers the few 4 KiB mappings of the
    /// current space it had, for the guest's invlpg of them to map them again.
    fn note_retargeted(&mut self, entry: u32, value: u32) {
        const MAX_RETARGETED: usize = 8;
        if value & 1 == 0 || !self.paging() {
            return;
        }
        let maps = &self.shadow.maps;
        let Some(places) = maps.deps.get(&entry).filter(|l| l.len() <= 2) else { return };
        let space = address_space_key(&self.cpu);
        for &place in places {
            let Some(m) = maps.mappings.get(&place) else { continue };
            if m.frame == value >> 12 && value & walk::PTE_A == 0 {
                continue;
            }
            let list = &mut self.shadow.retargeted;
            list.retain(|r| r.place != place);
            if list.len() >= MAX_RETARGETED {
                list.remove(0);
            }
            list.push(Retargeted { place, entry, space });
        }
    }

    /// The guest's invlpg of linear `page`: if a store retargeted its mapping
    /// (`note_retargeted`), maps it again as it is now, so the access that
    /// follows does not take a hidden fault.
    pub(crate) fn remap_retargeted(&mut self, linear: u32) -> Result<(), VmError> {
        let page = linear & !0xfff;
        if let Some(e) = self.shadow.eager.as_mut().filter(|e| e.target.place.1 == page) {
            e.armed = true;
        }
        if !self.shadow.retargeted.iter().any(|r| r.place.1 == page) {
            return Ok(());
        }
        let space = address_space_key(&self.cpu);
        let mut hits = Vec::new();
        self.shadow.retargeted.retain(|r| {
            if r.place.1 == page {
                hits.push(*r);
            }
            r.place.1 != page
        });
        for r in hits.into_iter().filter(|r| r.space == space) {
            if self.map_through(r.place.0, page, r.entry)? {
                self.shadow.mapped_at_invlpg += 1;
                self.shadow.eager = Some(Eager { target: r, armed: true });
            }
        }
        Ok(())
    }

    /// After a true #PF, remembers the page-table entry of the access: the
    /// guest's handler will most likely make it present (or, after a protection
    /// fault such as copy-on-write, point it at a writable page) and return to
    /// the same access.
    fn await_present(&mut self, linear: u32, user_view: bool, write: bool) {
        self.shadow.awaiting_present = None;
        let pde_addr = (self.cpu.cr3 & 0xffff_f000) | ((linear >> 22) * 4);
        let Some(pde) = RamPhys(&self.ram).read_u32(pde_addr) else { return };
        let large = pde & (1 << 7) != 0 && self.cpu.cr4 & CR4_PSE != 0;
        if pde & 1 == 0 || large {
            return;
        }
        let pte = (pde & 0xffff_f000) | (((linear >> 12) & 0x3ff) * 4);
        let space = address_space_key(&self.cpu);
        self.shadow.awaiting_present = Some(AwaitingPresent { pte, linear, user_view, write, space });
    }

    /// The store that makes the awaited entry present maps its page, so the
    /// access the handler returns to does not fault a second time (a host
    /// signal, 7 µs here).
    fn map_when_present(&mut self, entry: u32) -> Result<(), VmError> {
        if self.shadow.awaiting_present.is_some_and(|a| a.pte == entry) {
            self.map_awaited()?;
        }
        Ok(())
    }

    /// If the entry of the last true fault is present now, maps its page (the
    /// store that made it present, or the handler's iret, which sees a store to
    /// an untraced table too). The walk is the one the retried access would make,
    /// as a read at the fault's privilege, setting the A bits as it goes (a walk
    /// the hardware could make speculatively; only when the translation is valid
    /// for the access that faulted, a write included). Read-only unless D is set
    /// already: the retried write takes the usual fault that sets D.
    pub(crate) fn map_awaited(&mut self) -> Result<(), VmError> {
        let Some(a) = self.shadow.awaiting_present else { return Ok(()) };
        if a.space != address_space_key(&self.cpu) {
            self.shadow.awaiting_present = None;
            return Ok(());
        }
        if RamPhys(&self.ram).read_u32(a.pte).is_none_or(|pte| pte & 1 == 0) {
            // Not yet: the handler may still be on its way.
            return Ok(());
        }
        self.shadow.awaiting_present = None;
        if a.write {
            // Mapped for the read walk (D stays clear), but only if the write
            // being retried is allowed now: a walk that faults sets no A bit.
            let access = Access { write: true, user: a.user_view, fetch: false };
            if walk::walk(&mut DryPhys(&self.ram), &self.paging_mode(), a.linear, access).is_err() {
                return Ok(());
            }
        }
        if !self.map_through(a.user_view, a.linear, a.pte)? {
            return Ok(());
        }
        self.shadow.mapped_on_present += 1;
        Ok(())
    }

    /// Maps the 4 KiB page at `linear` in the user or kernel view ahead of an
    /// access the guest is about to make, if a read at that privilege would walk
    /// through guest entry `entry` (PDE or PTE) and reach RAM; whether it did. The
    /// walk sets the A bits as the access would (a walk that fails sets none); the
    /// page is mapped as a hidden fault would map it (read-only until D is set,
    /// read-only if it holds code or page tables, dependent on its PDE and PTE).
    fn map_through(&mut self, user_view: bool, linear: u32, entry: u32) -> Result<bool, VmError> {
        if self.shadow.maps.mappings.contains_key(&(user_view, linear & !0xfff)) {
            return Ok(false);
        }
        let access = Access { write: false, user: user_view, fetch: false };
        let mode = self.paging_mode();
        // A dry run first: a translation that is not for us here (a large page,
        // another entry, no RAM) must not have its A bits set on our account.
        let usable = |t: &walk::Translation| {
            t.pte_addr.is_some()
                && (t.pte_addr == Some(entry) || t.pde_addr == entry)
                && self.ram.contains(t.phys_page, 0x1000)
        };
        if !walk::walk(&mut DryPhys(&self.ram), &mode, linear, access).is_ok_and(|t| usable(&t)) {
            return Ok(false);
        }
        let Ok(t) = walk::walk(&mut RamPhys(&self.ram), &mode, linear, access) else { return Ok(false) };
        self.trace_tables(&t)?;
        let frame = t.phys_page >> 12;
        let guest_writable = t.writable && t.dirty;
        let host_writable = guest_writable && !self.protected.contains(&frame) && !self.shadow.is_traced(frame);
        let deps = [Some(t.pde_addr), t.pte_addr];
        self.map_shadow(user_view, linear, Mapping { frame, writable: guest_writable }, host_writable, deps)?;
        if let Some(pte) = t.pte_addr {
            self.shadow.maps.set_hot_table(pte >> 12);
            let untraced = core::mem::take(&mut self.shadow.maps.untraced);
            self.release_traces(untraced)?;
        }
        Ok(true)
    }

    fn drop_entries(&mut self, entries: impl Iterator<Item = u32>) -> Result<(), VmError> {
        let entries: Vec<u32> = entries.collect();
        self.evict_rewritten_spaces(&entries)?;
        self.shadow.maps.drop_entries(&mut self.view, &mut self.user_view, &entries)?;
        let mut untraced = core::mem::take(&mut self.shadow.maps.untraced);
        for idle in &mut self.shadow.idle {
            idle.maps.drop_entries(&mut idle.view, &mut idle.user_view, &entries)?;
            untraced.append(&mut idle.maps.untraced);
        }
        self.release_traces(untraced)
    }

    /// A cached space whose page directory the guest rewrites is gone (an OS
    /// reuses the frame of a dead process's page directory): drop it whole now,
    /// rather than follow each write, and stop tracing what only it traced.
    fn evict_rewritten_spaces(&mut self, entries: &[u32]) -> Result<(), VmError> {
        while let Some(i) = self.shadow.idle.iter().position(|s| entries.iter().any(|e| e >> 12 == s.key.0 >> 12)) {
            let gone = self.shadow.idle.remove(i);
            self.retire_space(gone)?;
        }
        Ok(())
    }

    /// Spaces stopped tracing `frames`: those no space traces any more become
    /// writable again where the guest allows it.
    fn release_traces(&mut self, frames: Vec<u32>) -> Result<(), VmError> {
        self.shadow.uncount_traces(frames.iter().copied());
        for f in frames {
            if !self.shadow.is_traced(f) {
                self.shadow.trace_burst.remove(&f);
                self.shadow.code.frame_untraced(f);
                self.protect_frame(f, true)?;
            }
        }
        Ok(())
    }

    fn map_shadow(
        &mut self,
        user_view: bool,
        linear: u32,
        m: Mapping,
        host_writable: bool,
        deps: [Option<u32>; 2],
    ) -> Result<(), VmError> {
        let place = (user_view, linear & !0xfff);
        let maps = &mut self.shadow.maps;
        if maps.mappings.get(&place).is_some_and(|old| old.frame != m.frame) {
            // The new mapping replaces the old one on the host (MAP_FIXED).
            maps.forget(place);
        }
        let view = pick_view(&mut self.view, &mut self.user_view, user_view);
        if m.frame == VOID_FRAME {
            view.map_void(place.1, self.ram.fd(), self.ram.void_offset(), host_writable)?;
        } else {
            view.map_page(place.1, self.ram.fd(), m.frame << 12, host_writable)?;
        }
        maps.record(place, m, deps.into_iter().flatten());
        Ok(())
    }
}

/// Mapped views need this to be `Send` with the VM.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<View>();
};
