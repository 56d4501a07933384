//! Tracing: the frames of page directories and page tables walks used are kept
//! read-only in every cached space; a write to one drops, in every space, only
//! the mappings whose walks used a changed entry. A frame written in a burst is
//! no longer traced, and the pages a guest's #PF handler or invlpg is about to
//! use are mapped ahead (`map_through`).

use super::{Shadow, ShadowError};
use crate::code_map::Source;
use crate::guest::{DryPhys, Guest, RamPhys};
use crate::space::{pick_view, Mapping, Place};
use crate::view::ViewError;
use crate::walk::{self, Access, PhysMem};

/// Writes to a traced frame with no page walk through it in between after which
/// it is no longer traced: the guest is rebuilding or tearing down that table
/// (a fork copying it, an exit clearing it), and following each store would
/// cost more than dropping what depends on it once.
pub(crate) const UNTRACE_AFTER: u32 = 64;

/// A true #PF at `linear` on a not-present entry at `pte` in space `space`.
#[derive(Clone, Copy, Debug)]
pub(super) struct AwaitingPresent {
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
pub(super) struct Retargeted {
    place: Place,
    entry: u32,
    space: (u32, u32, u32),
}

/// See `Shadow::eager`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Eager {
    target: Retargeted,
    armed: bool,
}

impl Shadow {
    /// Code at linear `page` is reached through walk `t` in the current space:
    /// trace its tables (kept traced while the space is cached) and enter the
    /// page in the code map, so units on it pass their page checks here.
    pub fn note_code_page(&mut self, g: &Guest<'_>, page: u32, t: &walk::Translation) -> Result<(), ViewError> {
        self.trace_tables(g, t)?;
        let maps = &mut self.maps;
        for table in [Some(t.pde_addr), t.pte_addr].into_iter().flatten() {
            maps.code_tables.insert(table >> 12);
        }
        let source = match (t.large, t.pte_addr) {
            (Some(base), _) => Source::Large(base >> 12),
            (None, Some(pte)) => Source::Table(pte >> 12),
            (None, None) => return Ok(()),
        };
        self.code.note(g.mode.cr3 >> 12, page, source, t.phys_page >> 12, t.user);
        Ok(())
    }

    /// Starts tracing the page-table frames a walk used.
    pub(super) fn trace_tables(&mut self, g: &Guest<'_>, t: &walk::Translation) -> Result<(), ViewError> {
        for table in [Some(t.pde_addr), t.pte_addr].into_iter().flatten() {
            let f = table >> 12;
            self.trace_burst.remove(&f);
            if !self.maps.traced.contains(&f) {
                let known = self.is_traced(f);
                self.maps.traced.insert(f);
                self.count_trace(f);
                if !known {
                    self.protect_frame(g, f, false)?;
                }
            }
        }
        Ok(())
    }

    /// Spaces stopped tracing `frames`: those no space traces any more become
    /// writable again where the guest allows it.
    pub(super) fn release_traces(&mut self, g: &Guest<'_>, frames: Vec<u32>) -> Result<(), ViewError> {
        self.uncount_traces(frames.iter().copied());
        for f in frames {
            if !self.is_traced(f) {
                self.trace_burst.remove(&f);
                self.code.frame_untraced(f);
                self.protect_frame(g, f, true)?;
            }
        }
        Ok(())
    }

    /// After a transient write to a traced frame: drop what depended on the
    /// entries that changed, and protect the frame again.
    pub fn finish_trace(&mut self, g: &Guest<'_>) -> Result<(), ShadowError> {
        let Some((frame, before)) = self.pending_trace.take() else { return Ok(()) };
        let mut after = [0u8; 4096];
        if !g.ram.read(frame << 12, &mut after) {
            return Err(ShadowError::NotRam { frame });
        }
        for (i, (a, b)) in before.chunks_exact(4).zip(after.chunks_exact(4)).enumerate() {
            if a != b {
                self.entry_changed(g, (frame << 12) + 4 * u32::try_from(i).unwrap_or(0))?;
            }
        }
        if self.is_traced(frame) {
            self.protect_frame(g, frame, false)?;
        }
        Ok(self.count_table_write(g, frame)?)
    }

    /// One more write to traced `frame`; a burst of them ends its tracing.
    pub fn count_table_write(&mut self, g: &Guest<'_>, frame: u32) -> Result<(), ViewError> {
        let n = self.trace_burst.entry(frame).or_insert(0);
        *n += 1;
        if *n >= UNTRACE_AFTER {
            self.untrace(g, frame)?;
        }
        Ok(())
    }

    /// Stops tracing `frame`: drops everything that depended on any of its
    /// entries in every cached space, and lets the guest write it freely. The
    /// next walk through it traces it again.
    fn untrace(&mut self, g: &Guest<'_>, frame: u32) -> Result<(), ViewError> {
        self.trace_burst.remove(&frame);
        self.drop_entries(g, (0..1024).map(|i| (frame << 12) + 4 * i))?;
        self.maps.traced.remove(&frame);
        for idle in &mut self.idle {
            idle.maps.traced.remove(&frame);
        }
        self.traced_count.remove(&frame);
        self.code.frame_untraced(frame);
        self.untraced_frames += 1;
        self.protect_frame(g, frame, true)
    }

    /// The guest PDE/PTE at physical `entry` changed: in every cached space, drop
    /// the shadow mappings its walks produced, and forget in the space's code map
    /// the code pages reached through it (their units' page checks fail until the
    /// VMM walks them again). Translations stay: they are keyed by frame.
    pub fn entry_changed(&mut self, g: &Guest<'_>, entry: u32) -> Result<(), ViewError> {
        let value = RamPhys(g.ram).read_u32(entry & !3).unwrap_or(0);
        self.code.entry_changed(entry & !3, value);
        if let Some(place) = self.eager_place(g, entry & !3, value) {
            // Forgotten first, the page keeps its host mapping through the drop;
            // mapped over at once through the new entry (or unmapped after all).
            self.maps.forget(place);
            self.drop_entries(g, core::iter::once(entry & !3))?;
            if self.map_through(g, place.0, place.1, entry & !3)? {
                self.mapped_at_store += 1;
            } else {
                pick_view(&mut self.view, &mut self.user_view, place.0).park(place.1)?;
            }
            return Ok(());
        }
        self.note_retargeted(g, entry & !3, value);
        self.drop_entries(g, core::iter::once(entry & !3))?;
        self.map_when_present(g, entry & !3)
    }

    /// The page a store to `entry` (now `value`) retargets, if it is to be
    /// mapped at once (`Shadow::eager`); disarms it.
    fn eager_place(&mut self, g: &Guest<'_>, entry: u32, value: u32) -> Option<Place> {
        let e = self.eager.as_mut().filter(|e| e.armed && e.target.entry == entry)?;
        let place = e.target.place;
        let space = e.target.space;
        e.armed = false;
        let m = self.maps.mapping(place)?;
        (value & 1 != 0 && m.frame != value >> 12 && space == g.space).then_some(place)
    }

    /// Before the mappings through `entry` go: if the entry stays present with
    /// another frame behind it (or with its A bit set: not an OS clearing A to
    /// see whether the page gets used), remembers the few 4 KiB mappings of the
    /// current space it had, for the guest's invlpg of them to map them again.
    fn note_retargeted(&mut self, g: &Guest<'_>, entry: u32, value: u32) {
        const MAX_RETARGETED: usize = 8;
        if value & 1 == 0 || !g.paging {
            return;
        }
        let maps = &self.maps;
        let places: crate::space::Places = maps.dependents(entry).collect();
        if places.len() > 2 {
            return;
        }
        for place in places {
            let Some(m) = maps.mapping(place) else { continue };
            if m.frame == value >> 12 && value & walk::PTE_A == 0 {
                continue;
            }
            let list = &mut self.retargeted;
            list.retain(|r| r.place != place);
            if list.len() >= MAX_RETARGETED {
                list.remove(0);
            }
            list.push(Retargeted { place, entry, space: g.space });
        }
    }

    /// The guest's invlpg of linear `page`: if a store retargeted its mapping
    /// (`note_retargeted`), maps it again as it is now, so the access that
    /// follows does not take a hidden fault.
    pub fn remap_retargeted(&mut self, g: &Guest<'_>, linear: u32) -> Result<(), ViewError> {
        let page = linear & !0xfff;
        if let Some(e) = self.eager.as_mut().filter(|e| e.target.place.1 == page) {
            e.armed = true;
        }
        if !self.retargeted.iter().any(|r| r.place.1 == page) {
            return Ok(());
        }
        let mut hits = Vec::new();
        self.retargeted.retain(|r| {
            if r.place.1 == page {
                hits.push(*r);
            }
            r.place.1 != page
        });
        for r in hits.into_iter().filter(|r| r.space == g.space) {
            if self.map_through(g, r.place.0, page, r.entry)? {
                self.mapped_at_invlpg += 1;
                self.eager = Some(Eager { target: r, armed: true });
            }
        }
        Ok(())
    }

    /// After a true #PF, remembers the page-table entry of the access: the
    /// guest's handler will most likely make it present (or, after a protection
    /// fault such as copy-on-write, point it at a writable page) and return to
    /// the same access.
    pub(super) fn await_present(&mut self, g: &Guest<'_>, linear: u32, user_view: bool, write: bool) {
        self.awaiting_present = None;
        let pde_addr = (g.mode.cr3 & 0xffff_f000) | ((linear >> 22) * 4);
        let Some(pde) = RamPhys(g.ram).read_u32(pde_addr) else { return };
        let large = pde & (1 << 7) != 0 && g.mode.pse;
        if pde & 1 == 0 || large {
            return;
        }
        let pte = (pde & 0xffff_f000) | (((linear >> 12) & 0x3ff) * 4);
        self.awaiting_present = Some(AwaitingPresent { pte, linear, user_view, write, space: g.space });
    }

    /// The store that makes the awaited entry present maps its page, so the
    /// access the handler returns to does not fault a second time (a host
    /// signal, 7 µs here).
    fn map_when_present(&mut self, g: &Guest<'_>, entry: u32) -> Result<(), ViewError> {
        if self.awaiting_present.is_some_and(|a| a.pte == entry) {
            self.map_awaited(g)?;
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
    pub fn map_awaited(&mut self, g: &Guest<'_>) -> Result<(), ViewError> {
        let Some(a) = self.awaiting_present else { return Ok(()) };
        if a.space != g.space {
            self.awaiting_present = None;
            return Ok(());
        }
        if RamPhys(g.ram).read_u32(a.pte).is_none_or(|pte| pte & 1 == 0) {
            // Not yet: the handler may still be on its way.
            return Ok(());
        }
        self.awaiting_present = None;
        if a.write {
            // Mapped for the read walk (D stays clear), but only if the write
            // being retried is allowed now: a walk that faults sets no A bit.
            let access = Access { write: true, user: a.user_view, fetch: false };
            if walk::walk(&mut DryPhys(g.ram), &g.mode, a.linear, access).is_err() {
                return Ok(());
            }
        }
        if !self.map_through(g, a.user_view, a.linear, a.pte)? {
            return Ok(());
        }
        self.mapped_on_present += 1;
        Ok(())
    }

    /// Maps the 4 KiB page at `linear` in the user or kernel view ahead of an
    /// access the guest is about to make, if a read at that privilege would walk
    /// through guest entry `entry` (PDE or PTE) and reach RAM; whether it did. The
    /// walk sets the A bits as the access would (a walk that fails sets none); the
    /// page is mapped as a hidden fault would map it (read-only until D is set,
    /// read-only if it holds code or page tables, dependent on its PDE and PTE).
    fn map_through(&mut self, g: &Guest<'_>, user_view: bool, linear: u32, entry: u32) -> Result<bool, ViewError> {
        if self.maps.mapping((user_view, linear & !0xfff)).is_some() {
            return Ok(false);
        }
        let access = Access { write: false, user: user_view, fetch: false };
        // A dry run first: a translation that is not for us here (a large page,
        // another entry, no RAM) must not have its A bits set on our account.
        let usable = |t: &walk::Translation| {
            t.pte_addr.is_some()
                && (t.pte_addr == Some(entry) || t.pde_addr == entry)
                && g.ram.contains(t.phys_page, 0x1000)
        };
        if !walk::walk(&mut DryPhys(g.ram), &g.mode, linear, access).is_ok_and(|t| usable(&t)) {
            return Ok(false);
        }
        let Ok(t) = walk::walk(&mut RamPhys(g.ram), &g.mode, linear, access) else { return Ok(false) };
        self.trace_tables(g, &t)?;
        let frame = t.phys_page >> 12;
        let guest_writable = t.writable && t.dirty;
        let host_writable = guest_writable && !g.code.contains(&frame) && !self.is_traced(frame);
        let deps = [Some(t.pde_addr), t.pte_addr];
        self.map_shadow(g, user_view, linear, Mapping { frame, writable: guest_writable }, host_writable, deps)?;
        if let Some(pte) = t.pte_addr {
            self.maps.set_hot_table(pte >> 12);
            let untraced = core::mem::take(&mut self.maps.untraced);
            self.release_traces(g, untraced)?;
        }
        Ok(true)
    }

    /// In every cached space, drops the mappings that depended on any of the
    /// guest `entries`.
    pub(super) fn drop_entries(&mut self, g: &Guest<'_>, entries: impl Iterator<Item = u32>) -> Result<(), ViewError> {
        let entries: Vec<u32> = entries.collect();
        self.evict_rewritten_spaces(g, &entries)?;
        self.maps.drop_entries(&mut self.view, &mut self.user_view, &entries)?;
        let mut untraced = core::mem::take(&mut self.maps.untraced);
        for idle in &mut self.idle {
            idle.maps.drop_entries(&mut idle.view, &mut idle.user_view, &entries)?;
            untraced.append(&mut idle.maps.untraced);
        }
        self.release_traces(g, untraced)
    }
}
