//! The binary-translation engine: the dispatch loop that runs translated code and
//! handles its exits (unchained branches, indirect-branch misses, callouts, host
//! faults), chaining units as it goes.
//!
//! Self-modifying code: every frame that holds translated code is write-protected
//! in the view. A guest write to it faults; the engine drops the frame's units,
//! unprotects the frame and runs the writing instruction alone in a transient unit
//! (one that is not cached and does not protect its page), then carries on. The next
//! translation from that frame protects it again. Writes made by the VMM on the
//! guest's behalf (emulated instructions) go through `LinearMemory`, which does the
//! same invalidation without a fault.

use crate::emulate::{self, DeliveryFailure, EventSource, GuestMemory, Machine, MemFault, Outcome, Stop};
use crate::memory::GuestRam;
use crate::signals;
use crate::cpu::eflags;
use crate::vm::{RunOutcome, Vm, VmError};
use crate::mmu::{address_space_key, FaultAction, RamPhys};
use bt86_shadow_mmu::walk::{self, Access, PagingMode, WalkError};
use bt86_translator::abi::ExitReason;
use bt86_translator::translate::BuildError;
use bt86_translator::{CalloutKind, CalloutSite, Fixup, GuestCode, TranslatorError, UnitKey};
use std::time::Instant;

/// Why no code could be fetched at an eip.
enum FetchFailure {
    /// No RAM there.
    NoRam,
    /// The guest's page tables refuse the fetch: #PF with this error code.
    PageFault(u32),
}

/// DR6.BS: the #DB came from a single step (EFLAGS.TF).
const DR6_BS: u32 = 1 << 14;

/// An instruction run alone for the guest's own debugging: a #DB trap follows it
/// once it has completed (it raised no event and is not to run again after a
/// hidden fault or the poll), for TF (DR6.BS) or for the data breakpoints its
/// accesses hit (DR6.B0-B3).
pub(crate) struct GuestStep {
    eip: u32,
    /// `Vm::events_raised` before it ran.
    raised: u64,
    /// EFLAGS.TF was set when it started.
    tf: bool,
    /// The memory it accesses, when data breakpoints are set.
    accesses: Vec<crate::debug::MemAccess>,
}

/// Where to go after an exit.
pub(crate) enum Next {
    /// Run the unit for this guest eip (translating it if needed).
    Dispatch(u32),
    /// Continue at a host address inside the code cache.
    Resume(u64),
    /// Run the instruction at this eip alone, untracked (after a write to its page).
    Transient(u32),
    Done(RunOutcome),
}

impl Vm {
    /// Runs the guest until it stops.
    pub fn run(&mut self) -> Result<RunOutcome, VmError> {
        crate::checkpoint::load_guest_fpu(self);
        let (code_start, code_end) = self.tr.code_range();
        signals::activate(signals::Active {
            code_start,
            code_end,
            exit_fault: self.tr.stubs().exit_fault,
            ctx: self.tr.ctx_mut(),
        });
        let started = Instant::now();
        let result = self.run_loop();
        signals::deactivate();
        if let Ok(outcome) = &result {
            if !matches!(outcome, RunOutcome::GuestExit(_) | RunOutcome::Halted { .. } | RunOutcome::Reset) {
                tracing::debug!("guest stopped: {outcome:?}\n{}", self.describe_state());
            }
        }
        self.stats.run_nanos += u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.bus.flush();
        result
    }

    fn run_loop(&mut self) -> Result<RunOutcome, VmError> {
        let mut next = Next::Dispatch(self.tr.ctx().eip);
        loop {
            if self.debug.is_some() {
                next = self.debug_boundary(next)?;
            }
            if let Next::Dispatch(eip) | Next::Transient(eip) = next {
                let cs = self.cpu.seg[crate::cpu::sreg::CS];
                if cs.base != 0 {
                    // Code is fetched and keyed by linear = eip; a code segment with a
                    // base would need both shifted. Every CS load refuses one already
                    // (`emulate::segments::check_runnable_cs`); should one get here
                    // anyway, user code gets #GP (its kernel ends it), a kernel stops.
                    if self.cpu.cpl() == 3 {
                        next = self.raise(13, Some(u32::from(cs.selector & 0xfffc)), eip, EventSource::Exception)?;
                        continue;
                    }
                    return Ok(RunOutcome::Unsupported { eip, what: "a code segment with a non-zero base".into() });
                }
            }
            // The guest's own debugging: with TF set or data breakpoints in DR7,
            // each instruction runs alone, and a #DB trap may follow it.
            if let Next::Dispatch(eip) | Next::Transient(eip) = next {
                let tf = self.tr.ctx().sys_flags & eflags::TF != 0;
                let watching = self.cpu.dr[7] & 0xff != 0 && !crate::debug::guest_breakpoints(&self.cpu.dr).is_empty();
                if tf || watching {
                    next = Next::Transient(eip);
                    let accesses = if watching { self.accesses_at(eip) } else { Vec::new() };
                    self.guest_step = Some(GuestStep { eip, raised: self.events_raised, tf, accesses });
                } else {
                    self.guest_step = None;
                }
            }
            if let Next::Dispatch(eip) = next {
                self.note_translated_cpl();
                if self.direct_wanted() {
                    if self.stop_requested() {
                        self.tr.ctx_mut().eip = eip;
                        return Ok(RunOutcome::Stopped { eip });
                    }
                    if let Some(n) = self.run_direct(eip)? {
                        next = self.interrupt_boundary(n)?;
                        continue;
                    }
                }
            }
            let transient = matches!(next, Next::Transient(_));
            let host = match next {
                Next::Dispatch(eip) | Next::Transient(eip) => match self.dispatch_hit(eip, transient) {
                    Some(host) => host,
                    None => match self.unit_for(eip, transient)? {
                        Ok((id, host)) => {
                            if !transient {
                                self.tr.remember_indirect(eip, id);
                            }
                            host
                        }
                        Err(FetchFailure::NoRam) => return Ok(RunOutcome::Unbacked { eip, linear: eip }),
                        Err(FetchFailure::PageFault(code)) => {
                            next = self.raise(14, Some(code), eip, EventSource::Exception)?;
                            continue;
                        }
                    },
                },
                Next::Resume(h) => h,
                Next::Done(outcome) => return Ok(outcome),
            };
            self.sync_ctx_for_run();
            if self.stop_requested() {
                return Ok(RunOutcome::Stopped { eip: self.tr.ctx().eip });
            }
            if self.fpu.is_some() {
                // Direct execution left the guest's x87/SSE state in an image.
                crate::checkpoint::load_guest_fpu(self);
            }
            self.run_translated(host)?;
            self.stats.guest_exits += 1;
            if self.shadow.pending_trace.is_some() {
                self.finish_trace()?;
            }
            if let Some(frame) = self.reprotect.take() {
                if self.tr.has_code_on(frame) {
                    self.shadow.view.set_writable(frame << 12, false)?;
                    self.protected.insert(frame);
                }
            }
            next = match self.light_exit()? {
                crate::light::Light::Done(next) => next,
                crate::light::Light::No => self.handle_exit()?,
            };
            if self.guest_step.is_some() {
                next = self.single_step_trap(next)?;
            }
            if !self.debug_stepping() {
                next = self.interrupt_boundary(next)?;
            }
        }
    }

    /// Puts what translated code reads of the vCPU's state outside its registers
    /// into the context: the current view, segment bases and selectors, the
    /// inline segment-load caches, the code map of the current space and CPL.
    pub(crate) fn sync_ctx_for_run(&mut self) {
        let (bases, view, code_map) = (self.cpu.seg_bases(), self.current_view_base(), self.code_map_address());
        let ctx = self.tr.ctx_mut();
        ctx.gs_base = view;
        ctx.seg_base = bases;
        ctx.seg_sel = self.cpu.seg.map(|s| s.selector);
        crate::emulate::segments::prepare_inline_loads(&self.cpu, &mut ctx.seg_reload);
        ctx.code_map = code_map;
    }

    /// Runs translated code from `host` until it exits, then takes back the
    /// state it may have changed outside the context (segment registers it
    /// loaded inline).
    pub(crate) fn run_translated(&mut self, host: u64) -> Result<(), VmError> {
        self.tr.ctx_mut().cr2 = self.cpu.cr2;
        self.tr.run(host)?;
        let ctx = self.tr.ctx();
        crate::emulate::segments::finish_inline_loads(&mut self.cpu, &ctx.seg_sel, &ctx.seg_reload);
        Ok(())
    }

    /// After an exit while an instruction runs alone for the guest's debugging
    /// (`GuestStep`): if it completed (it raised no event and is not to run again
    /// after a hidden fault or the poll), the #DB trap at the next instruction for
    /// TF (DR6.BS) and for the data breakpoints it hit (DR6.B0-B3). A resume
    /// inside the instruction's unit is not the end of it.
    fn single_step_trap(&mut self, next: Next) -> Result<Next, VmError> {
        let (Next::Dispatch(target) | Next::Transient(target)) = next else {
            if matches!(next, Next::Done(_)) {
                self.guest_step = None;
            }
            return Ok(next);
        };
        let Some(step) = self.guest_step.take() else { return Ok(next) };
        let again = target == step.eip && ExitReason::from_raw(self.tr.ctx().exit_reason) == Some(ExitReason::Fault);
        if again || step.raised != self.events_raised {
            return Ok(next);
        }
        let hits = crate::debug::guest_hits(&crate::debug::guest_breakpoints(&self.cpu.dr), &step.accesses);
        let bits = hits | if step.tf { DR6_BS } else { 0 };
        if bits == 0 {
            return Ok(next);
        }
        self.cpu.dr[6] = (self.cpu.dr[6] & !0xf) | bits;
        self.raise(1, None, target, EventSource::Exception)
    }

    /// Where to enter translated code for `eip` without walking or searching: the
    /// current mode's indirect-branch lookup table, as an indirect branch would
    /// (its entries are the units' page checks, which verify the current space
    /// still maps the unit's frame). Mode changes (int, iret, sysenter, ...)
    /// return to the same few eips, so most of their dispatches hit.
    pub(crate) fn dispatch_hit(&mut self, eip: u32, transient: bool) -> Option<u64> {
        if transient || self.debug.is_some() {
            return None;
        }
        let mode = self.cpu.mode();
        self.tr.set_mode(mode);
        let hit = self.tr.lookup_entry(eip);
        self.stats.dispatch_hits += u64::from(hit.is_some());
        hit
    }

    /// The unit for `eip` in the current mode: (unit id, host entry), or why no
    /// code can be fetched at `eip`.
    fn unit_for(&mut self, eip: u32, transient: bool) -> Result<Result<(u32, u64), FetchFailure>, VmError> {
        let mode = self.cpu.mode();
        self.tr.set_mode(mode);
        let user = self.cpu.cpl() == 3;
        let phys = match self.code_walk(eip, user)? {
            Ok(p) => p,
            Err(WalkError::PageFault { error_code }) => {
                self.cpu.cr2 = eip;
                return Ok(Err(FetchFailure::PageFault(error_code)));
            }
            Err(WalkError::NoRam { .. }) => return Ok(Err(FetchFailure::NoRam)),
        };
        let key = UnitKey { eip, phys, mode };
        let ram_size = self.ram.size();
        let paging = self.paging().then(|| self.paging_mode());
        let ram = &self.ram;
        let mut frame_of = |page: u32| match paging {
            None => (page < ram_size).then_some(page >> 12),
            Some(mode) => walk::walk(&mut RamPhys(ram), &mode, page, Access { write: false, user, fetch: true })
                .ok()
                .map(|t| t.phys_page >> 12),
        };
        if !transient {
            if let Some(id) = self.tr.find(&key) {
                match self.tr.unit_tail(id) {
                    // Translated in another address space whose second page maps
                    // another frame than this one's.
                    Some((page, frame)) if frame_of(page) != Some(frame) => self.tr.invalidate(id)?,
                    tail => {
                        if let Some((page, _)) = tail {
                            let _ = self.code_walk(page, user)?;
                        }
                        return Ok(Ok((id, self.tr.entry(id))));
                    }
                }
            }
        }
        let mut fetch = CodeFetch { ram: &self.ram, paging, user };
        let t = match self.tr.translate(key, &mut fetch, &mut frame_of, transient) {
            Ok(t) => t,
            Err(TranslatorError::Build(BuildError::Fetch(_))) => return Ok(Err(FetchFailure::NoRam)),
            Err(e) => return Err(e.into()),
        };
        if let Some((page, _)) = self.tr.unit_tail(t.unit) {
            let _ = self.code_walk(page, user)?;
        }
        for f in t.flushed_frames {
            self.protected.remove(&f);
            self.protect_frame(f, true)?;
        }
        for f in t.new_frames {
            self.protect_frame(f, false)?;
            self.protected.insert(f);
        }
        Ok(Ok((t.unit, t.host)))
    }

    /// The physical address of code at `linear` (an instruction fetch), noting
    /// with paging on that the current space's links to that code depend on the
    /// walk's page tables.
    fn code_walk(&mut self, linear: u32, user: bool) -> Result<Result<u32, WalkError>, VmError> {
        if !self.paging() {
            return Ok(Ok(linear));
        }
        let access = Access { write: false, user, fetch: true };
        match walk::walk(&mut RamPhys(&self.ram), &self.paging_mode(), linear, access) {
            Ok(t) => {
                self.note_code_page(linear & !0xfff, &t)?;
                Ok(Ok(t.phys_page | (linear & 0xfff)))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    fn handle_exit(&mut self) -> Result<Next, VmError> {
        let ctx = self.tr.ctx();
        match ExitReason::from_raw(ctx.exit_reason) {
            Some(ExitReason::Branch) => {
                self.stats.exits_branch += 1;
                let (slot, target, epoch) = (ctx.exit_arg, ctx.eip, self.tr.epoch());
                if self.debug_stops_at(target) || self.guest_step.is_some() {
                    return Ok(Next::Dispatch(target));
                }
                let (id, host) = match self.unit_for(target, false)? {
                    Ok(found) => found,
                    Err(failure) => return self.fetch_failed(failure, target),
                };
                if self.tr.epoch() == epoch {
                    self.tr.chain(slot, id)?;
                }
                Ok(Next::Resume(host))
            }
            Some(ExitReason::Indirect) => {
                self.stats.exits_indirect += 1;
                let target = ctx.eip;
                if self.debug_stops_at(target) || self.guest_step.is_some() {
                    return Ok(Next::Dispatch(target));
                }
                let (id, host) = match self.unit_for(target, false)? {
                    Ok(found) => found,
                    Err(failure) => return self.fetch_failed(failure, target),
                };
                self.tr.remember_indirect(target, id);
                Ok(Next::Resume(host))
            }
            Some(ExitReason::Callout) => {
                self.stats.exits_callout += 1;
                self.handle_callout()
            }
            Some(ExitReason::Fault) => {
                self.stats.exits_fault += 1;
                self.handle_fault()
            }
            None => Err(VmError::Internal(format!("unknown exit reason {}", ctx.exit_reason))),
        }
    }

    /// Runs `f` on the emulation view of the machine; writes it makes to frames
    /// holding translated code invalidate those units. Returns `f`'s result and
    /// whether any translated code was invalidated.
    pub(crate) fn with_machine<R>(&mut self, f: impl FnOnce(&mut Machine<'_>) -> R) -> Result<(R, bool), VmError> {
        let paging = self.paging().then(|| self.paging_mode());
        let (tr, cpu, bus) = (&mut self.tr, &mut self.cpu, &mut self.bus);
        let mut mem = LinearMemory {
            ram: &self.ram,
            protected: &mut self.protected,
            invalidate: Vec::new(),
            paging,
            shadow: &mut self.shadow,
            traced_writes: Vec::new(),
            traced_hits: Vec::new(),
            cr2: None,
            recent: RecentWalks::default(),
        };
        let result = {
            let mut m = Machine { cpu, ctx: tr.ctx_mut(), mem: &mut mem, io: bus };
            f(&mut m)
        };
        let wrote_code = !mem.invalidate.is_empty();
        let (cr2, traced_writes, traced_hits, code_frames) = (mem.cr2, mem.traced_writes, mem.traced_hits, mem.invalidate);
        for &frame in &code_frames {
            tr.invalidate_frame(frame)?;
        }
        if let Some(linear) = cr2 {
            self.cpu.cr2 = linear;
        }
        if self.paging() {
            for frame in code_frames {
                self.protect_frame(frame, true)?;
            }
        }
        let wrote_tables = !traced_writes.is_empty();
        for (phys, len) in traced_writes {
            let mut entry = phys & !3;
            while u64::from(entry) < u64::from(phys) + len as u64 {
                self.entry_changed(entry)?;
                entry = entry.wrapping_add(4);
            }
        }
        self.shadow.table_write_hits += traced_hits.len() as u64;
        for frame in traced_hits {
            self.count_table_write(frame)?;
        }
        Ok((result, wrote_code || wrote_tables))
    }

    fn handle_callout(&mut self) -> Result<Next, VmError> {
        let site_id = self.tr.ctx().exit_arg;
        let site = self
            .tr
            .site(site_id)
            .cloned()
            .ok_or_else(|| VmError::Internal(format!("unknown callout site {site_id}")))?;
        if site.kind == CalloutKind::Emulate {
            self.stats.callouts.add(site.ins.mnemonic());
        }
        if site.kind == CalloutKind::FetchFault {
            // The unit bakes in a fetch that failed when it was built: whatever the
            // page is now, build it again next time.
            self.tr.invalidate_linear(site.eip, 1)?;
        }
        tracing::trace!(target: "bt86::callout", "callout {:?} {} at eip {:#010x}", site.kind, site.ins, site.eip);
        let table_hits_before = self.shadow.table_write_hits;
        let resume = self.tr.ctx().resume;
        let drops_before = self.tr.drops();
        let mode_before = self.cpu.mode();
        let vif_before = self.tr.ctx().vif;
        let space_before = address_space_key(&self.cpu);
        self.tr.ctx_mut().eip = site.eip;
        let (outcome, mut wrote_code) = self.with_machine(|m| emulate::emulate(m, &site))?;
        self.cpu.tsc_calibrating = self.bus.calibrating();
        if site.kind == CalloutKind::TracedWrite {
            self.shadow.adaptive_writes += 1;
            self.adaptive_outcome(site.eip, self.shadow.table_write_hits != table_hits_before)?;
        }
        let space_after = address_space_key(&self.cpu);
        if space_after != space_before {
            self.paging_controls_changed(space_before, space_after)?;
            // The rest of this unit may not be mapped the same way any more.
            wrote_code = true;
        } else if site.ins.mnemonic() == iced_x86::Mnemonic::Invlpg {
            // The shadow is kept coherent by tracing: nothing to drop. A page
            // whose entry a store retargeted is mapped again for the access that
            // follows.
            self.shadow.invlpgs += 1;
            if self.paging() && self.cpu.cpl() == 0 {
                if let Some(r) = crate::emulate::addressing::effective(self.tr.ctx(), &site.ins) {
                    let base = self.cpu.seg.get(r.seg).map_or(0, |s| s.base);
                    self.remap_retargeted(base.wrapping_add(r.offset))?;
                }
            }
        } else if matches!(site.ins.mnemonic(), iced_x86::Mnemonic::Iret | iced_x86::Mnemonic::Iretd) && self.paging() {
            // A #PF handler returning to the access that faulted: map the page it
            // made present (its store may have gone to an untraced table).
            self.map_awaited()?;
        }
        if self.cpu.cpl() != mode_before.cpl {
            self.stats.ring_transitions += 1;
        }
        if site.ins.mnemonic() == iced_x86::Mnemonic::Sti && vif_before == 0 && self.tr.ctx().vif == 1 {
            self.interrupt_shadow = true;
        }
        let next_eip = site.eip.wrapping_add(u32::from(site.len));
        match outcome {
            // The check passed: the instruction itself runs next, in the unit.
            Outcome::Continue if matches!(site.kind, CalloutKind::SegmentCheck | CalloutKind::PageProbe) => {
                self.tr.ctx_mut().eip = site.eip;
                Ok(Next::Resume(resume))
            }
            Outcome::Continue => {
                self.tr.ctx_mut().eip = next_eip;
                // Whether the callout dropped any unit (its own, perhaps).
                let units_intact = self.tr.drops() == drops_before;
                if wrote_code || !units_intact || self.cpu.mode() != mode_before {
                    Ok(Next::Dispatch(next_eip))
                } else {
                    Ok(Next::Resume(resume))
                }
            }
            Outcome::Jump => Ok(Next::Dispatch(self.tr.ctx().eip)),
            Outcome::Exception { vector, error, trap } => {
                let eip = if trap { next_eip } else { site.eip };
                self.raise(vector, error, eip, EventSource::Exception)
            }
            Outcome::SoftwareInterrupt { vector } => {
                self.raise_at(vector, None, next_eip, EventSource::Software, site.eip)
            }
            Outcome::Stop(Stop::Halted { .. }) => self.halt(next_eip),
            Outcome::Stop(s) => Ok(Next::Done(s.into())),
        }
    }

    /// An instruction boundary after an exit: poll the devices, keep the alarm set
    /// for the next timer interrupt, and deliver a pending external interrupt if
    /// the guest's IF allows it (not in the shadow of an sti).
    pub(crate) fn interrupt_boundary(&mut self, next: Next) -> Result<Next, VmError> {
        let next = self.deliver_at_boundary(next)?;
        // Translated sti/popf leave for an interrupt only if the VMM knows of one.
        self.tr.ctx_mut().irq_pending = u8::from(self.bus.interrupt_pending());
        Ok(next)
    }

    fn deliver_at_boundary(&mut self, next: Next) -> Result<Next, VmError> {
        let eip = match next {
            Next::Dispatch(eip) => eip,
            Next::Resume(_) => self.tr.ctx().eip,
            Next::Transient(_) | Next::Done(_) => return Ok(next),
        };
        // Time is noticed through the alarm (a poll-page exit); device state
        // changes only through port I/O and interrupt acknowledges.
        if core::mem::take(&mut self.poll_due) | self.bus.take_touched() {
            let now = self.bus.now();
            self.bus.poll(now);
            self.alarm.set(self.bus.next_event());
        }
        let inline_sti = eip == core::mem::replace(&mut self.tr.ctx_mut().shadow_eip, u32::MAX);
        if core::mem::take(&mut self.interrupt_shadow) || inline_sti {
            if self.tr.ctx().vif == 1 && self.bus.interrupt_pending() {
                // Run exactly the one instruction after sti; the interrupt comes after it.
                return Ok(Next::Transient(eip));
            }
            return Ok(next);
        }
        if self.tr.ctx().vif == 0 || !self.bus.interrupt_pending() {
            return Ok(next);
        }
        let Some(vector) = self.bus.acknowledge_interrupt() else { return Ok(next) };
        *self.stats.interrupts.entry(vector).or_default() += 1;
        self.raise(vector, None, eip, EventSource::External)
    }

    /// hlt at CPL 0: sleep until an interrupt the guest accepts, then deliver it with
    /// the saved eip after the hlt. With IF clear, or with no timer programmed and no
    /// console input possible, nothing can ever wake the guest: the run ends.
    fn halt(&mut self, next_eip: u32) -> Result<Next, VmError> {
        self.tr.ctx_mut().eip = next_eip;
        let started = std::time::Instant::now();
        let result = loop {
            if self.tr.ctx().vif == 0 {
                break Next::Done(RunOutcome::Halted { eip: next_eip.wrapping_sub(1) });
            }
            let now = self.bus.now();
            self.bus.poll(now);
            if self.bus.interrupt_pending() {
                if let Some(vector) = self.bus.acknowledge_interrupt() {
                    *self.stats.interrupts.entry(vector).or_default() += 1;
                    break self.raise(vector, None, next_eip, EventSource::External)?;
                }
            }
            if self.stop_requested() {
                // Still waiting: the next run (a checkpoint's restore) executes the hlt
                // again, in its shadow so that no interrupt comes before it.
                let ctx = self.tr.ctx_mut();
                (ctx.eip, ctx.shadow_eip) = (next_eip.wrapping_sub(1), next_eip.wrapping_sub(1));
                break Next::Done(RunOutcome::Stopped { eip: next_eip.wrapping_sub(1) });
            }
            let deadline = self.bus.next_event();
            if deadline.is_none() && !self.bus.input_possible() {
                break Next::Done(RunOutcome::Halted { eip: next_eip.wrapping_sub(1) });
            }
            self.bus.wait_for_event(deadline);
        };
        self.stats.hlt_nanos += u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Ok(result)
    }

    /// Delivers a guest exception or interrupt whose frame saves `eip`. A fault
    /// during delivery becomes #DF where the SDM says so (contributory after
    /// contributory, or after #PF), and a fault while delivering #DF is a triple
    /// fault, which ends the run naming the faults. A guest that never loaded an IDT
    /// cannot handle anything: the run ends naming the exception.
    pub(crate) fn raise(&mut self, vector: u8, error: Option<u32>, eip: u32, source: EventSource) -> Result<Next, VmError> {
        self.raise_at(vector, error, eip, source, eip)
    }

    /// `raise`, where an exception during delivery saves `fault_eip` instead of
    /// `eip` (for `int n`, a #GP from the gate check is a fault on the int itself).
    pub(crate) fn raise_at(
        &mut self,
        vector: u8,
        error: Option<u32>,
        eip: u32,
        source: EventSource,
        fault_eip: u32,
    ) -> Result<Next, VmError> {
        *self.stats.exceptions.entry(vector).or_default() += 1;
        self.events_raised += 1;
        tracing::trace!(target: "bt86::trace::int", "INT: vector 0x{vector:02x} ({source:?}) error {error:x?} at eip 0x{eip:08x} cpl {}", self.cpu.cpl());
        self.tr.ctx_mut().eip = eip;
        if self.cpu.idtr.limit == 0 {
            return Ok(Next::Done(RunOutcome::GuestException { vector, error, eip }));
        }
        let mut event = (vector, error, source);
        let mut faults = vec![vector];
        let mut eip = eip;
        loop {
            let cpl_before = self.cpu.cpl();
            let space_before = address_space_key(&self.cpu);
            let (result, _) = self.with_machine(|m| emulate::deliver_event(m, event.0, event.1, event.2, eip))?;
            // A task gate switches tasks, and with them perhaps CR3.
            let space_after = address_space_key(&self.cpu);
            if space_after != space_before {
                self.paging_controls_changed(space_before, space_after)?;
            }
            match result {
                Ok(()) => {
                    if self.cpu.cpl() != cpl_before {
                        self.stats.ring_transitions += 1;
                    }
                    return Ok(Next::Dispatch(self.tr.ctx().eip));
                }
                Err(DeliveryFailure::Stop(s)) => return Ok(Next::Done(s.into())),
                Err(DeliveryFailure::Exception { vector: second, error }) => {
                    faults.push(second);
                    if event.0 == 8 || faults.len() > 8 {
                        return Ok(Next::Done(RunOutcome::TripleFault { faults, eip }));
                    }
                    eip = fault_eip;
                    event = if is_double_fault(event.0, second) {
                        (8, Some(0), EventSource::Exception)
                    } else {
                        (second, error, EventSource::Exception)
                    };
                    *self.stats.exceptions.entry(event.0).or_default() += 1;
                    tracing::trace!(target: "bt86::trace::int", "INT: vector 0x{:02x} error {:x?} while delivering 0x{second:02x}, at eip 0x{eip:08x}", event.0, event.1);
                }
            }
        }
    }

    fn handle_fault(&mut self) -> Result<Next, VmError> {
        let f = self.tr.ctx().fault;
        let Some((eip, fixup, _unit)) = self.tr.resolve(f.host_rip) else {
            return Err(VmError::Internal(format!(
                "host signal {} at {:#x} outside any translation unit",
                f.signo, f.host_rip
            )));
        };
        self.apply_fixup(fixup);
        self.tr.ctx_mut().eip = eip;
        // A string instruction stopped in a guard is emulated as it was translated.
        let string_site = match fixup {
            Fixup::StringBias(_, id) => self.tr.site(id).cloned(),
            _ => None,
        };
        let sig = i32::try_from(f.signo).unwrap_or(-1);
        if sig == libc::SIGSEGV && f.addr & !0xfff == self.tr.poll_page() {
            self.tr.rearm_poll();
            self.poll_due = true;
            if self.stop_requested() {
                return Ok(Next::Done(RunOutcome::Stopped { eip }));
            }
            return Ok(Next::Dispatch(eip));
        }
        match sig {
            libc::SIGSEGV if f.trapno == 14 => self.page_fault(eip, f.addr, f.err & 2 != 0, string_site),
            libc::SIGSEGV => self.raise(13, Some(0), eip, EventSource::Exception),
            libc::SIGFPE => {
                let vector = match f.trapno {
                    16 => 16,
                    19 => 19,
                    _ => 0,
                };
                self.raise(vector, None, eip, EventSource::Exception)
            }
            libc::SIGILL => self.raise(6, None, eip, EventSource::Exception),
            libc::SIGBUS if f.trapno == 17 => self.raise(17, Some(0), eip, EventSource::Exception),
            // A mapping past the end of guest RAM (never made on purpose): the guest
            // touched memory that does not exist.
            libc::SIGBUS if self.shadow.view.linear_of(f.addr).or(self.shadow.user_view.linear_of(f.addr)).is_some() => {
                let linear = self.shadow.view.linear_of(f.addr).or(self.shadow.user_view.linear_of(f.addr)).unwrap_or(0);
                Ok(Next::Done(RunOutcome::Unbacked { eip, linear }))
            }
            _ => Err(VmError::Internal(format!(
                "host signal {} (trap {}) in translated code at guest eip {eip:#010x}",
                f.signo, f.trapno
            ))),
        }
    }

    fn page_fault(&mut self, eip: u32, addr: u64, write: bool, string_site: Option<CalloutSite>) -> Result<Next, VmError> {
        if self.guard_linear(addr).is_some() {
            // A string instruction's pointer left the view: wrap it (`slow_path`).
            return self.emulate_in_place(eip, string_site);
        }
        if self.paging() {
            let (linear, user_view) = match (self.shadow.view.linear_of(addr), self.shadow.user_view.linear_of(addr)) {
                (Some(l), _) => (l, false),
                (None, Some(l)) => (l, true),
                (None, None) => {
                    return Err(VmError::Internal(format!("fault at host {addr:#x} outside the views (eip {eip:#010x})")))
                }
            };
            return match self.paging_fault(linear, write, user_view)? {
                FaultAction::Retry => Ok(Next::Dispatch(eip)),
                FaultAction::WriteThrough { traced } => {
                    if traced {
                        self.maybe_adapt(eip)?;
                    }
                    Ok(Next::Transient(eip))
                }
                FaultAction::PageFault(code) => {
                    self.note_true_fault(eip)?;
                    self.raise(14, Some(code), eip, EventSource::Exception)
                }
                FaultAction::NoRam => Ok(Next::Done(RunOutcome::Unbacked { eip, linear })),
            };
        }
        let Some(linear) = self.shadow.view.linear_of(addr) else {
            return Err(VmError::Internal(format!("fault at host {addr:#x} outside the view (guest eip {eip:#010x})")));
        };
        let frame = linear >> 12;
        if write && self.protected.contains(&frame) {
            self.stats.smc_faults += 1;
            self.shadow.view.set_writable(frame << 12, true)?;
            self.protected.remove(&frame);
            if self.write_misses_code(eip, linear, frame) {
                // Data that shares a page with code: keep the translations, let the
                // instruction write, and protect the page again right after.
                self.stats.smc_data_writes += 1;
                self.reprotect = Some(frame);
            } else {
                self.tr.invalidate_frame(frame)?;
            }
            return Ok(Next::Transient(eip));
        }
        if linear >= self.ram.size() {
            // Memory that does not exist: the empty bus (reads all ones).
            self.map_void_identity(linear)?;
            return Ok(Next::Dispatch(eip));
        }
        Err(VmError::Internal(format!("unexpected fault at guest linear {linear:#010x} (eip {eip:#010x})")))
    }

    /// The vCPU state and the instruction at eip, for diagnostics.
    pub fn describe_state(&self) -> String {
        use std::fmt::Write;
        let ctx = self.tr.ctx();
        let c = &self.cpu;
        let mut bytes = [0u8; 16];
        let paging = self.paging().then(|| self.paging_mode());
        let n = CodeFetch { ram: &self.ram, paging, user: c.cpl() == 3 }.fetch(ctx.eip, &mut bytes);
        let ins = iced_x86::Decoder::with_ip(32, &bytes[..n], u64::from(ctx.eip), self.tr.isa().decoder_options()).decode();
        let mut text = String::new();
        iced_x86::Formatter::format(&mut iced_x86::GasFormatter::new(), &ins, &mut text);
        let mut s = format!("eip {:#010x}: {text} ({:02x?})\n", ctx.eip, &bytes[..ins.len().min(n)]);
        let names = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];
        for (name, v) in names.iter().zip(ctx.gpr) {
            let _ = write!(s, "{name} {v:08x}  ");
        }
        let _ = writeln!(s, "\nrflags {:08x} vif {} sys_flags {:08x} cpl {}", ctx.rflags, ctx.vif, ctx.sys_flags, c.cpl());
        for (name, seg) in ["es", "cs", "ss", "ds", "fs", "gs"].iter().zip(c.seg) {
            let _ = writeln!(s, "{name} {:04x} base {:08x} limit {:08x} attrs {:04x}", seg.selector, seg.base, seg.limit, seg.attrs);
        }
        let _ = write!(s, "cr0 {:08x} cr2 {:08x} cr3 {:08x} cr4 {:08x} gdt {:08x}/{:x} idt {:08x}/{:x}", c.cr0, c.cr2, c.cr3, c.cr4, c.gdtr.base, c.gdtr.limit, c.idtr.base, c.idtr.limit);
        s
    }

    /// Whether the write by the instruction at `eip` that faulted at `linear`
    /// certainly leaves every translated byte of `frame` alone. Conservative: string
    /// instructions and anything that writes more than 16 bytes count as touching.
    fn write_misses_code(&self, eip: u32, linear: u32, frame: u32) -> bool {
        use iced_x86::Mnemonic::*;
        let mut bytes = [0u8; 16];
        let n = CodeFetch { ram: &self.ram, paging: None, user: false }.fetch(eip, &mut bytes);
        let ins = iced_x86::Decoder::with_ip(32, &bytes[..n], u64::from(eip), self.tr.isa().decoder_options()).decode();
        let bulky = matches!(
            ins.mnemonic(),
            Movsb | Movsw | Movsd | Stosb | Stosw | Stosd | Insb | Insw | Insd | Pushad | Pusha | Enter
                | Fxsave | Fnsave | Fnstenv | Xsave | Cmpxchg8b
        );
        if ins.is_invalid() || bulky || ins.memory_size().size() > 16 {
            return false;
        }
        // The fault names the first byte the write touched; it may have started up
        // to 15 bytes lower (an access straddling into this page).
        !self.tr.code_overlaps(frame, linear.saturating_sub(16), 32)
    }

    /// After the third tracing fault at `eip`, retranslate it as a callout that
    /// writes without faulting (if it is a store the emulator takes).
    fn maybe_adapt(&mut self, eip: u32) -> Result<(), VmError> {
        if !self.shadow.count_trace_fault(eip) {
            return Ok(());
        }
        let mut bytes = [0u8; 16];
        let paging = self.paging().then(|| self.paging_mode());
        let user = self.cpu.cpl() == 3;
        let n = CodeFetch { ram: &self.ram, paging, user }.fetch(eip, &mut bytes);
        let ins = iced_x86::Decoder::with_ip(32, &bytes[..n], u64::from(eip), self.tr.isa().decoder_options()).decode();
        if bt86_translator::translate::is_adaptive_store(&ins) {
            self.tr.make_adaptive(eip)?;
        }
        Ok(())
    }

    /// An adaptive store at `eip` wrote a page table (`hit`) or not; one that
    /// keeps missing becomes a plain store again (`Shadow::adaptive_outcome`).
    pub(crate) fn adaptive_outcome(&mut self, eip: u32, hit: bool) -> Result<(), VmError> {
        if self.shadow.adaptive_outcome(eip, hit) {
            self.tr.make_plain(eip)?;
        }
        Ok(())
    }

    /// A branch target whose code cannot be fetched.
    fn fetch_failed(&mut self, failure: FetchFailure, eip: u32) -> Result<Next, VmError> {
        match failure {
            FetchFailure::NoRam => Ok(Next::Done(RunOutcome::Unbacked { eip, linear: eip })),
            FetchFailure::PageFault(code) => self.raise(14, Some(code), eip, EventSource::Exception),
        }
    }

    fn apply_fixup(&mut self, fixup: Fixup) {
        let ctx = self.tr.ctx_mut();
        match fixup {
            Fixup::None => {}
            Fixup::SpilledLegacy(r) => {
                #[allow(clippy::cast_possible_truncation)]
                let v = ctx.scratch[0] as u32;
                ctx.gpr[usize::from(r & 7)] = v;
            }
            Fixup::StringBias(mask, _) => {
                #[allow(clippy::cast_possible_truncation)]
                let bias = ctx.gs_base as u32;
                for r in [6usize, 7] {
                    if mask & (1 << r) != 0 {
                        ctx.gpr[r] = ctx.gpr[r].wrapping_sub(bias);
                    }
                }
            }
        }
    }
}

/// Reads guest code at `linear` into `buf` as an instruction fetch (user or
/// supervisor); returns the bytes read.
pub(crate) fn fetch_code(ram: &GuestRam, paging: Option<PagingMode>, user: bool, linear: u32, buf: &mut [u8]) -> usize {
    CodeFetch { ram, paging, user }.fetch(linear, buf)
}

/// Guest code as the translator fetches it: through the guest's page tables when
/// paging is on (an instruction fetch), else linear = physical.
pub(crate) struct CodeFetch<'a> {
    pub ram: &'a GuestRam,
    pub paging: Option<PagingMode>,
    pub user: bool,
}

impl GuestCode for CodeFetch<'_> {
    fn fetch(&mut self, linear: u32, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let at = linear.wrapping_add(u32::try_from(done).unwrap_or(0));
            let phys = match self.paging {
                None => at,
                Some(mode) => {
                    let access = Access { write: false, user: self.user, fetch: true };
                    match walk::walk(&mut RamPhys(self.ram), &mode, at, access) {
                        Ok(t) => t.phys_page | (at & 0xfff),
                        Err(_) => break,
                    }
                }
            };
            let in_page = (0x1000 - (at & 0xfff)) as usize;
            let n = (buf.len() - done).min(in_page);
            // Code past the end of RAM reads as all ones, as on the empty bus.
            self.ram.read_or_ones(phys, &mut buf[done..done + n]);
            done += n;
        }
        done
    }
}

/// Guest memory for emulated instructions, by linear address: through the page
/// tables when paging is on (user or supervisor accesses as the emulator says;
/// a refusal is #PF). Writes to
/// frames holding translated code invalidate it; writes to page tables in use
/// make the engine drop its shadow mappings.
struct LinearMemory<'a> {
    ram: &'a GuestRam,
    protected: &'a mut std::collections::BTreeSet<u32>,
    invalidate: Vec<u32>,
    paging: Option<PagingMode>,
    /// Its kernel view is the one RAM is mapped in without paging.
    shadow: &'a mut bt86_shadow_mmu::Shadow,
    /// (physical address, length) of writes that changed traced page-table frames.
    traced_writes: Vec<(u32, usize)>,
    /// Traced frames written (changed or not).
    traced_hits: Vec<u32>,
    cr2: Option<u32>,
    /// Walks made during this emulation (an interrupt delivery reads the IDT, the
    /// GDT and the TSS and pushes a frame: a dozen accesses on three pages).
    recent: RecentWalks,
}

/// The last few page walks of one emulated instruction, by (linear page, write,
/// user). Valid while the page tables are unchanged: forgotten when the
/// instruction writes a traced frame, and never kept past the instruction.
#[derive(Default)]
struct RecentWalks {
    entries: [Option<(u32, bool, bool, u32)>; 4],
    next: usize,
}

impl RecentWalks {
    fn get(&self, page: u32, write: bool, user: bool) -> Option<u32> {
        self.entries.iter().flatten().find(|e| (e.0, e.1, e.2) == (page, write, user)).map(|e| e.3)
    }

    fn put(&mut self, page: u32, write: bool, user: bool, phys_page: u32) {
        self.entries[self.next] = Some((page, write, user, phys_page));
        self.next = (self.next + 1) % self.entries.len();
    }

    fn forget(&mut self) {
        *self = Self::default();
    }
}

impl LinearMemory<'_> {
    /// Physical address of `linear`, or the fault.
    fn phys(&mut self, linear: u32, write: bool, user: bool) -> Result<u32, MemFault> {
        let Some(mode) = self.paging else { return Ok(linear) };
        let page = linear & !0xfff;
        if let Some(phys_page) = self.recent.get(page, write, user) {
            return Ok(phys_page | (linear & 0xfff));
        }
        let access = Access { write, user, fetch: false };
        match walk::walk(&mut RamPhys(self.ram), &mode, linear, access) {
            Ok(t) => {
                self.recent.put(page, write, user, t.phys_page);
                Ok(t.phys_page | (linear & 0xfff))
            }
            Err(WalkError::PageFault { error_code }) => {
                self.cr2 = Some(linear);
                Err(MemFault::PageFault { linear, error_code })
            }
            Err(WalkError::NoRam { phys }) => Err(MemFault::Unbacked { linear: phys }),
        }
    }
}

/// Splits [linear, linear+len) at page boundaries: (linear, offset, len).
/// An iterator, not a list: every emulated access goes through here.
pub(crate) fn page_pieces(linear: u32, len: usize) -> impl Iterator<Item = (u32, usize, usize)> {
    let mut done = 0;
    core::iter::from_fn(move || {
        (done < len).then(|| {
            let at = linear.wrapping_add(u32::try_from(done).unwrap_or(0));
            let n = (len - done).min((0x1000 - (at & 0xfff)) as usize);
            let piece = (at, done, n);
            done += n;
            piece
        })
    })
}

impl GuestMemory for LinearMemory<'_> {
    fn read(&mut self, linear: u32, buf: &mut [u8], user: bool) -> Result<(), MemFault> {
        for (at, off, n) in page_pieces(linear, buf.len()) {
            let phys = self.phys(at, false, user)?;
            self.ram.read_or_ones(phys, &mut buf[off..off + n]);
        }
        Ok(())
    }

    fn write(&mut self, linear: u32, data: &[u8], user: bool) -> Result<(), MemFault> {
        // Translate every piece first: a fault leaves memory untouched. (The
        // second walk finds the same frames: the first only set A and D bits.)
        for (at, _, _) in page_pieces(linear, data.len()) {
            self.phys(at, true, user)?;
        }
        for (at, off, n) in page_pieces(linear, data.len()) {
            let phys = self.phys(at, true, user)?;
            if !self.ram.contains(phys, n) {
                // No memory there: the write goes nowhere.
                continue;
            }
            let frame = phys >> 12;
            if self.protected.remove(&frame) {
                if self.paging.is_none() {
                    let _ = self.shadow.view.set_writable(frame << 12, true);
                }
                self.invalidate.push(frame);
            }
            let traced = self.paging.is_some() && self.shadow.is_traced(frame);
            let mut old = [0u8; 16];
            let old = &mut old[..n.min(16)];
            if traced && (n > 16 || self.ram.read(phys, old).is_err() || old != &data[off..off + n]) {
                self.traced_writes.push((phys, n));
            }
            if traced {
                self.traced_hits.push(frame);
                // The write may change a translation just used.
                self.recent.forget();
            }
            self.ram.write(phys, &data[off..off + n]).map_err(|_| MemFault::Unbacked { linear: phys })?;
        }
        Ok(())
    }
}

/// Maps an engine stop into the outcome type (used by emulation results).
impl From<Stop> for Next {
    fn from(s: Stop) -> Self {
        Next::Done(s.into())
    }
}

/// SDM table 6-5: a contributory exception (#DE, #TS, #NP, #SS, #GP) while
/// delivering a contributory one, or a contributory exception or #PF while
/// delivering #PF, is a double fault; other pairs are handled one after the other.
fn is_double_fault(first: u8, second: u8) -> bool {
    let contributory = |v: u8| matches!(v, 0 | 10 | 11 | 12 | 13);
    (contributory(first) && contributory(second)) || (first == 14 && (contributory(second) || second == 14))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pieces_end_at_page_boundaries() {
        let p: Vec<_> = super::page_pieces(0x1ffe, 6).collect();
        assert_eq!(p, vec![(0x1ffe, 0, 2), (0x2000, 2, 4)]);
        assert_eq!(super::page_pieces(0x3000, 0).count(), 0);
        let wrap: Vec<_> = super::page_pieces(0xffff_fffe, 4).collect();
        assert_eq!(wrap, vec![(0xffff_fffe, 0, 2), (0, 2, 2)], "wraps at 4 GiB");
    }

    /// The host's MXCSR as it is now.
    fn host_mxcsr() -> u32 {
        let mut v = 0u32;
        // SAFETY: stmxcsr stores the 4-byte register at a valid, aligned local.
        unsafe { core::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack)) };
        v
    }

    /// The world switch loads MXCSR only when guest and host differ: a guest
    /// that sets its own (rounding down) keeps it, and the host gets its own back.
    #[test]
    fn guest_and_host_keep_their_own_mxcsr() {
        use crate::vm::{RunOutcome, Vm, VmConfig};
        let mut vm = Vm::new(VmConfig::new(2, Box::new(std::io::sink()))).unwrap();
        // mov %cr4,%eax; or $0x200,%eax (OSFXSR); mov %eax,%cr4; ldmxcsr 0x2000;
        // mov $0xf4,%dx; mov $7,%eax; out %eax,(%dx)
        let code = [
            0x0f, 0x20, 0xe0, 0x0d, 0x00, 0x02, 0, 0, 0x0f, 0x22, 0xe0, 0x0f, 0xae, 0x15, 0x00, 0x20, 0, 0, 0x66, 0xba,
            0xf4, 0x00, 0xb8, 7, 0, 0, 0, 0xef,
        ];
        vm.ram().write(0x1000, &code).unwrap();
        vm.ram().write(0x2000, &0x3f80u32.to_le_bytes()).unwrap();
        vm.set_flat_state(0x1000, [0; 8], 0);
        let before = host_mxcsr();
        assert_eq!(vm.run().unwrap(), RunOutcome::GuestExit(7));
        assert_eq!(host_mxcsr(), before, "the host's MXCSR is back");
        assert_eq!(vm.tr.ctx().guest_mxcsr, 0x3f80, "the guest's is kept");
    }
}
