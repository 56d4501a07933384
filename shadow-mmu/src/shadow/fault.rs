//! Host faults in a view: hidden faults (mapped, with neighbour prefetch and
//! whole 4 MiB pages), true faults (the guest's #PF), and writes to frames that
//! hold translated code or page tables (run alone with the page writable).

use super::{Shadow, ShadowError};
use crate::guest::{Guest, GuestMemory, PeekPhys, RamPhys};
use crate::space::{pick_view, LargeMapping, Mapping, VOID_FRAME};
use crate::view::ViewError;
use crate::walk::{self, Access, WalkError};

/// What a host fault in a view is for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Mapped (or remapped): retry the instruction.
    Retry,
    /// A guest page fault with this error code (CR2 is the VMM's to set).
    PageFault(u32),
    /// No RAM behind the guest's mapping.
    NoRam,
    /// A write the guest allows to a frame that holds translated code or a page
    /// table: the VMM drops the frame's translations (`code`), then
    /// [`Shadow::write_through`] maps the page writable for the one instruction.
    Write(WriteFault),
}

/// A write to a frame kept read-only (see [`Fault::Write`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteFault {
    pub user_view: bool,
    pub linear: u32,
    pub frame: u32,
    /// Whether the guest allows writes through the mapping (R/W, U/S, WP, D).
    pub guest_writable: bool,
    /// The PDE and PTE the walk used.
    pub deps: [Option<u32>; 2],
    /// The frame holds translated code.
    pub code: bool,
    /// The frame holds a page table some cached space uses.
    pub traced: bool,
}

impl Shadow {
    /// A host fault at guest linear `linear` in the user or kernel view, with
    /// paging on.
    pub fn fault(&mut self, g: &Guest<'_>, linear: u32, write: bool, user_view: bool) -> Result<Fault, ShadowError> {
        self.bound_mappings(g)?;
        let access = Access { write, user: user_view, fetch: false };
        let t = match walk::walk(&mut RamPhys(g.ram), &g.mode, linear, access) {
            Ok(t) => t,
            Err(WalkError::PageFault { error_code }) => {
                self.true_faults += 1;
                self.await_present(g, linear, user_view, write);
                return Ok(Fault::PageFault(error_code));
            }
            Err(WalkError::NoRam { .. }) => return Ok(Fault::NoRam),
        };
        self.trace_tables(g, &t)?;
        let deps = [Some(t.pde_addr), t.pte_addr];
        if !g.ram.contains(t.phys_page, 0x1000) {
            // The guest maps memory that does not exist: the empty bus.
            let m = Mapping { frame: VOID_FRAME, writable: t.writable && t.dirty };
            self.hidden_faults += 1;
            self.map_shadow(g, user_view, linear, m, m.writable, deps)?;
            return Ok(Fault::Retry);
        }
        let frame = t.phys_page >> 12;
        let code = g.code.contains(&frame);
        let traced = self.is_traced(frame);
        let guest_writable = t.writable && t.dirty;
        if write && (code || traced) {
            return Ok(Fault::Write(WriteFault { user_view, linear, frame, guest_writable, deps, code, traced }));
        }
        self.hidden_faults += 1;
        if let Some(base) = t.large {
            return Ok(self.map_large(g, user_view, linear, base, guest_writable, t.pde_addr)?);
        }
        let host_writable = guest_writable && !code && !traced;
        self.map_shadow(g, user_view, linear, Mapping { frame, writable: guest_writable }, host_writable, deps)?;
        if t.pte_addr.is_some() {
            self.prefetch_neighbours(g, linear, user_view)?;
        }
        Ok(Fault::Retry)
    }

    /// Maps the page of write fault `w` writable for one instruction, after the
    /// VMM dropped the frame's translations (`g.code` no longer has it). A write
    /// to a page table keeps the page's contents before (`pending_trace`) for
    /// [`finish_trace`](Shadow::finish_trace) to compare; self-modifying code
    /// leaves the frame writable until code is translated from it again.
    pub fn write_through(&mut self, g: &Guest<'_>, w: WriteFault) -> Result<(), ShadowError> {
        let m = Mapping { frame: w.frame, writable: w.guest_writable };
        if w.traced {
            self.trace_faults += 1;
            let mut before = Box::new([0u8; 4096]);
            if !g.ram.read(w.frame << 12, &mut before[..]) {
                return Err(ShadowError::NotRam { frame: w.frame });
            }
            self.pending_trace = Some((w.frame, before));
            self.map_shadow(g, w.user_view, w.linear, m, true, w.deps)?;
        } else {
            self.map_shadow(g, w.user_view, w.linear, m, true, w.deps)?;
            self.protect_frame(g, w.frame, true)?;
        }
        Ok(())
    }

    /// A hidden fault in a 4 MiB guest page: maps all of it (as far as RAM goes)
    /// with as few host mappings as the read-only frames inside allow (code and
    /// page tables), so a space touching the kernel's direct map takes one fault
    /// per 4 MiB instead of one per page.
    fn map_large(&mut self, g: &Guest<'_>, user_view: bool, linear: u32, base: u32, guest_writable: bool, pde: u32) -> Result<Fault, ViewError> {
        let region = linear & !0x3f_ffff;
        let frame0 = base >> 12;
        let ram_frames = g.ram.size() >> 12;
        let count = ram_frames.saturating_sub(frame0).min(1024);
        if count == 0 {
            return Ok(Fault::NoRam);
        }
        // Read-only frames inside, in order.
        let range = frame0..frame0 + count;
        let mut fixed: Vec<u32> = g.code.range(range.clone()).copied().collect();
        fixed.extend(self.traced_count.range(range).map(|(&f, _)| f));
        fixed.sort_unstable();
        fixed.dedup();
        let view = pick_view(&mut self.view, &mut self.user_view, user_view);
        let mut runs = 0u32;
        let mut run = |first: u32, n: u32, writable: bool| -> Result<(), ViewError> {
            if n > 0 {
                view.map_pages(region + ((first - frame0) << 12), g.ram.fd(), first << 12, n, writable)?;
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
        self.maps.record_large(place, LargeMapping { frame0, writable: guest_writable, runs }, pde);
        self.large_maps += 1;
        Ok(Fault::Retry)
    }

    /// After a hidden fault at `linear`: maps the other pages of its aligned
    /// 64 KiB group that the same page table already grants, so a process
    /// touching neighbouring pages takes one fault, not sixteen. Only entries
    /// whose A bit is already set are taken: setting it ourselves would show the
    /// guest an access that never happened. Runs of consecutive frames with the
    /// same protection become one host mapping.
    fn prefetch_neighbours(&mut self, g: &Guest<'_>, linear: u32, user_view: bool) -> Result<(), ViewError> {
        const GROUP: u32 = 16;
        let first = linear & !(GROUP * 0x1000 - 1);
        let access = Access { write: false, user: user_view, fetch: false };
        let mut run: Option<(u32, u32, u32, bool)> = None; // (linear, frame, pages, host writable)
        for i in 0..GROUP {
            let l = first + i * 0x1000;
            let next = if self.maps.mapping((user_view, l)).is_some() {
                None
            } else {
                walk::walk(&mut PeekPhys(g.ram), &g.mode, l, access)
                    .ok()
                    .filter(|t| t.pte_addr.is_some() && g.ram.contains(t.phys_page, 0x1000))
            };
            let Some(t) = next else {
                self.flush_prefetch_run(g, user_view, run.take())?;
                continue;
            };
            let frame = t.phys_page >> 12;
            let guest_writable = t.writable && t.dirty;
            let host = guest_writable && !g.code.contains(&frame) && !self.is_traced(frame);
            let deps = [Some(t.pde_addr), t.pte_addr].into_iter().flatten();
            self.maps.record((user_view, l), Mapping { frame, writable: guest_writable }, deps);
            self.prefetched += 1;
            run = match run {
                Some((rl, rf, n, w)) if rf + n == frame && w == host => Some((rl, rf, n + 1, w)),
                other => {
                    self.flush_prefetch_run(g, user_view, other)?;
                    Some((l, frame, 1, host))
                }
            };
        }
        self.flush_prefetch_run(g, user_view, run)
    }

    fn flush_prefetch_run(&mut self, g: &Guest<'_>, user_view: bool, run: Option<(u32, u32, u32, bool)>) -> Result<(), ViewError> {
        let Some((linear, frame, pages, writable)) = run else { return Ok(()) };
        let view = pick_view(&mut self.view, &mut self.user_view, user_view);
        view.map_pages(linear, g.ram.fd(), frame << 12, pages, writable)?;
        Ok(())
    }

    /// With paging off: maps the void page at `linear` (memory that does not
    /// exist). At most `MAX_VOID_PAGES` stay mapped, so a guest sweeping the
    /// address space cannot exhaust the host's mapping count.
    pub fn map_void_identity(&mut self, ram: &dyn GuestMemory, linear: u32) -> Result<(), ViewError> {
        const MAX_VOID_PAGES: usize = 256;
        let page = linear & !0xfff;
        self.view.map_void(page, ram.fd(), ram.void_offset(), true)?;
        self.void_pages.push_back(page);
        if self.void_pages.len() > MAX_VOID_PAGES {
            if let Some(old) = self.void_pages.pop_front() {
                self.view.unmap(old, 0x1000)?;
            }
        }
        Ok(())
    }
}
