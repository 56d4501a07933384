//! Direct execution of guest user code.
//!
//! Guest code at CPL 3 with the virtual IF set runs natively, in 32-bit
//! compatibility mode, in a *runner*: a process forked from the VMM that drops
//! everything of it (it unmaps all its memory and closes its files but the
//! guest-RAM memfd), then lives under a seccomp filter (`filter`). Its low 4 GiB
//! are a copy of the current user view (paging on) or of the identity view
//! (paging off), kept up to date from the view's mirror
//! (`bt86_shadow_mmu::mirror`); one runner per view, so a CR3 switch to a cached
//! address space switches runners instead of remapping. See `sys` for the
//! runner's code and `runner` for how the VMM drives it.
//!
//! The engine calls [`Vm::run_direct`] where it would dispatch a unit at CPL 3.
//! One direct entry: sync the runner (mappings, LDT), hand it the registers and
//! the x87/SSE state, wait for its report — kicking it with a signal when a
//! timer interrupt is due, the VM is asked to stop, or a device interrupt is
//! pending — and turn the report into what the engine does next:
//! - a kick: an instruction boundary (interrupts are delivered there);
//! - #PF: the shadow MMU's hidden/true fault logic on the user view, then back
//!   to direct, or the guest's #PF;
//! - #DE, #MF, #XM, single-step #DB: the guest's exception;
//! - everything that needs the guest's view of the machine (#GP from a
//!   privileged instruction or `int n`, #UD, #NP/#SS/#AC, `int3`, `into`,
//!   `int $0x80` through Syscall User Dispatch, a page the runner cannot map
//!   such as page 0): the instruction runs once translated (a transient unit),
//!   which does exactly what the guest's CPU would, and the next dispatch comes
//!   back here;
//! - `sysenter` (SIGSYS from the kernel's landing pad): the guest's sysenter;
//! - CS not the guest's code segment (a far jump to the host's 0x33 and 64-bit
//!   code), a forbidden system call, a broken protocol, a dead runner: an
//!   escape. The runner is killed and the guest gets #GP, as hardware would
//!   have refused the jump; the VM goes on.
//!
//! Which way each context runs is the `policy`'s choice (`--user-code`).

pub mod comm;
pub mod filter;
pub mod policy;
pub mod runner;
pub mod segments;
mod sys;

use crate::checkpoint::FxImage;
use crate::cpu::{cr0, eflags, sreg};
use crate::emulate::{EventSource, Outcome};
use crate::engine::Next;
use crate::mmu::FaultAction;
use bt86_shadow_mmu::guest::DryPhys;
use crate::vm::{RunOutcome, Vm, VmError};
use bt86_translator::abi::ARITH_FLAGS;
pub use policy::{Policy, UserCode};
use runner::{Runner, RunnerError, WATCHDOG};
use segments::{host_selector, LdtMirror, Reported};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Runners kept at most (one per cached view, and a spare).
const MAX_RUNNERS: usize = crate::mmu::MAX_SPACES * 2 + 1;
/// Longest wait before the VMM looks at the devices and the stop flag.
const SLICE: Duration = Duration::from_millis(5);
/// How long user code runs translated after an entry the host refused.
const ENTRY_FAILED_PAUSE: Duration = Duration::from_millis(50);
/// Host GDT selector of the 64-bit user code segment on x86-64 Linux.
const HOST_CS64: u16 = 0x33;
/// Host GDT selectors of the 32-bit user code segment and the user data segment.
const HOST_CS32: u16 = 0x23;
const HOST_DS: u16 = 0x2b;
/// si_code of a SIGSYS from Syscall User Dispatch.
const SYS_USER_DISPATCH: u32 = 2;

/// A runner and what its LDT holds.
struct Slot {
    runner: Runner,
    ldt: LdtMirror,
}

/// Direct-execution state of a VM.
/// `Direct::user_since` of a run at CPL 3 that is not timed.
const UNTIMED: u64 = u64::MAX;

#[derive(Default)]
pub(crate) struct Direct {
    pub mode: UserCode,
    slots: Vec<Slot>,
    pub policy: Policy,
    /// Why direct execution is off for good (the host refused a runner).
    pub disabled: Option<String>,
    /// When (host TSC: cheaper than the clock, at every ring change) the guest
    /// last entered CPL 3 under translation; `UNTIMED` if that run is not timed
    /// (`Policy::time_next`).
    user_since: Option<u64>,
    /// No direct execution before this (an entry the host refused: a new runner
    /// per instruction would crawl).
    paused_until: Option<Instant>,
    /// A guest #PF just raised from direct execution: if the guest kernel makes the
    /// page present and returns to the same instruction in the same address space,
    /// the page is mapped before the entry instead of after one more exit.
    prefault: Option<Prefault>,
    pub stats: DirectStats,
}

/// The access of an instruction whose #PF went to the guest.
#[derive(Clone, Copy, Debug)]
struct Prefault {
    key: u32,
    eip: u32,
    linear: u32,
    write: bool,
}

/// Counters of direct execution.
#[derive(Default, Debug, Clone)]
pub struct DirectStats {
    pub nanos: u64,
    pub entries: u64,
    pub exits: BTreeMap<&'static str, u64>,
    pub runners_started: u64,
    pub escapes: u64,
    pub checked_maps: u64,
    pub segment_repairs: u64,
    pub prefaults: u64,
    pub cpuid_faulting: Option<bool>,
}

/// `direct` in `--stats`.
#[derive(Serialize, Debug, Clone)]
pub struct DirectReport {
    /// How user code runs: direct, translate or auto.
    pub mode: String,
    /// Guest time spent running directly.
    pub seconds: f64,
    pub entries: u64,
    /// Exits by reason.
    pub exits: BTreeMap<String, u64>,
    /// Switches of a context between direct and translated (auto).
    pub mode_switches: u64,
    pub runners_started: u64,
    /// Escapes caught (each a #GP to the guest).
    pub escapes: u64,
    /// Mappings the runner made, each checked by the VMM.
    pub checked_maps: u64,
    /// Guest selectors the host gave another meaning, reloaded with the guest's.
    pub segment_repairs: u64,
    /// Pages mapped at an entry because the instruction entered at had its #PF
    /// handled by the guest kernel (each an exit saved).
    pub prefaults: u64,
    /// Contexts `auto` runs translated for good because direct execution was not
    /// exact there (a segment repair).
    pub pinned_translated: u64,
    /// Why direct execution is off, if it is.
    pub disabled: Option<String>,
    /// Whether the guest's `cpuid` faults in the runner (CPUID faulting), so that
    /// user code sees the guest's CPU model; without it, the host's (None: no
    /// runner started).
    pub cpuid_faulting: Option<bool>,
}

impl Direct {
    pub fn report(&self) -> DirectReport {
        let mut checked = self.stats.checked_maps;
        for s in &self.slots {
            checked += s.runner.checked_maps;
        }
        #[allow(clippy::cast_precision_loss)]
        DirectReport {
            mode: format!("{:?}", self.mode).to_lowercase(),
            seconds: self.stats.nanos as f64 / 1e9,
            entries: self.stats.entries,
            exits: self.stats.exits.iter().map(|(k, v)| ((*k).to_string(), *v)).collect(),
            mode_switches: self.policy.switches,
            runners_started: self.stats.runners_started,
            escapes: self.stats.escapes,
            checked_maps: checked,
            segment_repairs: self.stats.segment_repairs,
            prefaults: self.stats.prefaults,
            pinned_translated: self.policy.pins,
            disabled: self.disabled.clone(),
            cpuid_faulting: self.stats.cpuid_faulting,
        }
    }

    fn exit(&mut self, reason: &'static str) {
        *self.stats.exits.entry(reason).or_default() += 1;
    }

    /// Drops the runner of view `id` (killed with its process).
    fn drop_runner(&mut self, id: u64) {
        if let Some(i) = self.slots.iter().position(|s| s.runner.view_id == id) {
            let gone = self.slots.remove(i);
            self.stats.checked_maps += gone.runner.checked_maps;
        }
    }
}

impl Vm {
    /// How guest user code runs from now on.
    pub fn set_user_code(&mut self, mode: UserCode) {
        self.direct.mode = mode;
    }

    /// The context key of the current address space (its page directory).
    fn context_key(&self) -> u32 {
        if self.paging() {
            self.cpu.cr3 & !0xfff
        } else {
            0
        }
    }

    /// At a dispatch: note CPL changes under translation for the policy.
    #[inline]
    pub(crate) fn note_translated_cpl(&mut self) {
        if self.direct.mode != UserCode::Auto {
            return;
        }
        let user = self.cpu.cpl() == 3;
        match (user, self.direct.user_since) {
            (true, None) => {
                let timed = self.direct.policy.time_next(self.context_key());
                self.direct.user_since = Some(if timed { crate::devices::clock::host_tsc() } else { UNTIMED });
            }
            (false, Some(UNTIMED)) => self.direct.user_since = None,
            (false, Some(since)) => {
                self.direct.user_since = None;
                let key = self.context_key();
                let ticks = crate::devices::clock::host_tsc().saturating_sub(since);
                let ns = crate::devices::clock::tsc_ticks_to_ns(ticks);
                self.direct.policy.observe(key, false, Duration::from_nanos(ns));
            }
            _ => {}
        }
    }

    /// Whether the code at the current state may run directly now.
    pub(crate) fn direct_wanted(&self) -> bool {
        if self.direct.mode == UserCode::Translate || self.direct.disabled.is_some() {
            return false;
        }
        let ctx = self.tr.ctx();
        let cpu = &self.cpu;
        let cs = cpu.seg[sreg::CS];
        let sys = ctx.sys_flags;
        cpu.cpl() == 3
            && ctx.vif == 1
            && sys & (eflags::TF | eflags::IOPL | eflags::VM | eflags::AC | eflags::RF) == 0
            && cpu.cr0 & (cr0::TS | cr0::EM) == 0
            // Breakpoints, watchpoints and steps are the translator's: with a
            // debugger's state, everything runs translated.
            && self.debug.is_none()
            && cs.base == 0
            && cs.attrs & 0x4000 != 0
            && !self.interrupt_shadow
            && self.shadow.pending_trace.is_none()
            && (self.direct.mode == UserCode::Direct || self.direct.policy.direct(self.context_key()))
            && self.direct.paused_until.is_none_or(|t| Instant::now() >= t)
    }

    /// Runs guest user code directly from `eip` until the next trap; None: run
    /// it translated instead (the state cannot be mirrored, or no runner).
    pub(crate) fn run_direct(&mut self, eip: u32) -> Result<Option<Next>, VmError> {
        let paging = self.paging();
        if let Some(p) = self.direct.prefault.take() {
            if paging && p.eip == eip && p.key == self.context_key() {
                self.prefault(p.linear, p.write)?;
            }
        }
        let view_id = if paging { self.shadow.user_view.id() } else { self.shadow.view.id() };
        let slot = match self.direct.slots.iter().position(|s| s.runner.view_id == view_id) {
            Some(i) => {
                let s = self.direct.slots.remove(i);
                self.direct.slots.push(s);
                self.direct.slots.len() - 1
            }
            None => {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&self.ram.fd());
                sys::tighten_timer_slack();
                match Runner::spawn(fd, view_id) {
                    Ok(runner) => {
                        self.direct.stats.runners_started += 1;
                        self.direct.stats.cpuid_faulting = Some(runner.cpuid_faulting());
                        if self.direct.slots.len() >= MAX_RUNNERS {
                            let gone = self.direct.slots.remove(0);
                            self.direct.stats.checked_maps += gone.runner.checked_maps;
                        }
                        self.direct.slots.push(Slot { runner, ldt: LdtMirror::default() });
                        self.direct.slots.len() - 1
                    }
                    Err(e) => {
                        tracing::warn!("direct execution off: {e}");
                        self.direct.disabled = Some(e.to_string());
                        return Ok(None);
                    }
                }
            }
        };
        let segs = self.cpu.seg;
        let s = &mut self.direct.slots[slot];
        if s.runner.fresh {
            s.ldt.forget();
        }
        let Ok(ldt) = s.ldt.update(&segs) else {
            self.direct.exit("unmirrorable_segments");
            return Ok(None);
        };
        let fresh = s.runner.fresh;
        let maps = if paging { self.shadow.user_view.mirror_mut().take_ops(fresh) } else { self.shadow.view.mirror_mut().take_ops(fresh) };
        let ctx = self.tr.ctx();
        #[allow(clippy::cast_possible_truncation)]
        let flags = (ctx.rflags as u32 & ARITH_FLAGS) | eflags::IF | eflags::FIXED | (ctx.sys_flags & (eflags::NT | eflags::ID));
        let mut entry = [0u32; 16];
        entry[..8].copy_from_slice(&ctx.gpr);
        entry[comm::entry::EIP] = eip;
        entry[comm::entry::EFLAGS] = flags;
        for (i, at) in [(sreg::CS, comm::entry::CS), (sreg::SS, comm::entry::SS), (sreg::DS, comm::entry::DS), (sreg::ES, comm::entry::ES), (sreg::FS, comm::entry::FS), (sreg::GS, comm::entry::GS)] {
            entry[at] = u32::from(host_selector(segs[i].selector));
        }
        let fpu = crate::checkpoint::guest_fpu(self);
        self.direct.stats.entries += 1;
        let started = Instant::now();
        // rdtsc runs natively only where the guest's TSC is the host's (no offset,
        // no CR4.TSD, no calibration in progress); else it traps and runs translated.
        let trap_tsc = !self.cpu.mode().native_tsc;
        let early = match self.direct.slots[slot].runner.enter(&maps, &ldt, trap_tsc, &entry, &fpu.0) {
            Ok(r) => r,
            Err(e) => return self.runner_failed(view_id, eip, &e).map(Some),
        };
        let report = match early {
            Some(r) => r,
            None => match self.wait_direct(slot) {
                Ok(r) => r,
                Err(e) => {
                    self.direct.stats.nanos += u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    return self.runner_failed(view_id, eip, &e).map(Some);
                }
            },
        };
        let run = started.elapsed();
        self.direct.stats.nanos += u64::try_from(run.as_nanos()).unwrap_or(u64::MAX);
        self.poll_due = true;
        if self.direct.mode == UserCode::Auto {
            let key = self.context_key();
            self.direct.policy.observe(key, true, run);
        }
        self.direct_report(slot, view_id, eip, &report).map(Some)
    }

    /// Waits for the runner's report, kicking it when the VMM needs the CPU back.
    fn wait_direct(&mut self, slot: usize) -> Result<comm::Report, RunnerError> {
        let mut kicked: Option<Instant> = None;
        loop {
            let slice = match (kicked, self.bus.next_event()) {
                (Some(_), _) => SLICE,
                (None, Some(at)) => Duration::from_nanos(at.saturating_sub(self.bus.now())).min(SLICE),
                (None, None) => SLICE,
            };
            if let Some(r) = self.direct.slots[slot].runner.wait(slice)? {
                return Ok(r);
            }
            if kicked.is_none() && self.direct.slots[slot].runner.breached.is_some() {
                // The runner was kicked for its report: the watchdog applies.
                kicked = Some(Instant::now());
            }
            match kicked {
                Some(at) if at.elapsed() > WATCHDOG => {
                    return Err(RunnerError::Compromised("no report after a kick".into()));
                }
                // A kick that reached the runner in its own code (before it entered
                // the guest) is not a report: kick again until one comes.
                Some(_) => self.direct.slots[slot].runner.kick(),
                None => {
                    let now = self.bus.now();
                    self.bus.poll(now);
                    let due = self.bus.next_event().is_some_and(|at| at <= now);
                    if due || self.bus.interrupt_pending() || self.stop_requested() {
                        self.direct.slots[slot].runner.kick();
                        kicked = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// The runner failed or broke the protocol: kill it; an escape becomes #GP.
    fn runner_failed(&mut self, view_id: u64, eip: u32, e: &RunnerError) -> Result<Next, VmError> {
        self.direct.drop_runner(view_id);
        match e {
            RunnerError::Sys(s) => {
                tracing::warn!("direct execution off: {s}");
                self.direct.disabled = Some(s.to_string());
                Ok(Next::Dispatch(eip))
            }
            RunnerError::Compromised(why) => {
                tracing::debug!("direct execution: escape: {why}"); 
                self.direct.exit("escape");
                self.direct.stats.escapes += 1;
                self.raise(13, Some(0), eip, EventSource::Exception)
            }
            RunnerError::Died => {
                self.direct.exit("escape");
                self.direct.stats.escapes += 1;
                self.raise(13, Some(0), eip, EventSource::Exception)
            }
        }
    }

    /// Turns a report into the engine's next step.
    fn direct_report(&mut self, slot: usize, view_id: u64, eip: u32, r: &comm::Report) -> Result<Next, VmError> {
        match r.kind {
            comm::KIND_TRAP => {}
            comm::KIND_RUNNER_FAULT | comm::KIND_OP_FAILED => {
                // The entry itself failed (a descriptor or state the host refused,
                // a mapping the kernel refused): run this stretch translated.
                tracing::debug!("direct execution: entry failed: {r:x?}");
                self.direct.exit("entry_failed");
                self.direct.drop_runner(view_id);
                self.direct.paused_until = Some(Instant::now() + ENTRY_FAILED_PAUSE);
                return Ok(Next::Transient(eip));
            }
            _ => return self.runner_failed(view_id, eip, &RunnerError::Compromised(format!("report kind {}", r.kind))),
        }
        // Where the guest is: CS must be its own code segment, in compat mode.
        let cs = self.direct.slots[slot].ldt.reported(&self.cpu.seg[sreg::CS], r.cs);
        let rip_ok = r.rip <= u64::from(u32::MAX);
        // A `sysenter` stopped by Syscall User Dispatch: the host kernel's compat
        // sysenter path replaced CS and SS with its own (0x23, 0x2b) and EIP with
        // its vDSO landing pad (not mapped here, above 4 GiB); the guest's stay.
        let sysenter = r.signo == libc::SIGSYS as u32
            && r.code == SYS_USER_DISPATCH
            && !rip_ok
            && r.cs == HOST_CS32
            && r.ss == HOST_DS;
        let cs_ok = sysenter || match cs {
            Reported::Same => true,
            Reported::Now(seg) => seg.attrs & 0x18 == 0x18 && seg.attrs & 0x4000 != 0 && seg.base == 0,
            Reported::Load(_) => false,
        };
        let breach = self.direct.slots[slot].runner.breached.take();
        if r.cs == HOST_CS64 || !cs_ok || (!rip_ok && !sysenter) || breach.is_some() {
            // An escape (a far jump to the host's 64-bit code segment): the guest
            // gets #GP where it was caught, with the registers it had there (only
            // guest-controlled values: the low halves of what the runner saved).
            #[allow(clippy::cast_possible_truncation)]
            let at = if rip_ok { r.rip as u32 } else { eip };
            #[allow(clippy::cast_possible_truncation)]
            {
                let ctx = self.tr.ctx_mut();
                for (g, v) in ctx.gpr.iter_mut().zip(r.regs) {
                    *g = v as u32;
                }
                ctx.rflags = u64::from(r.rflags as u32 & ARITH_FLAGS) | 2;
            }
            let why = breach.unwrap_or_else(|| format!("cs {:#x} rip {:#x}", r.cs, r.rip));
            return self.runner_failed(view_id, at, &RunnerError::Compromised(why));
        }
        if let Reported::Now(seg) = cs {
            self.cpu.seg[sreg::CS] = seg;
        }
        // The guest's registers and flags.
        #[allow(clippy::cast_possible_truncation)]
        {
            let ctx = self.tr.ctx_mut();
            for (g, v) in ctx.gpr.iter_mut().zip(r.regs) {
                *g = v as u32;
            }
            if rip_ok {
                ctx.eip = r.rip as u32;
            }
            let f = r.rflags as u32;
            ctx.rflags = u64::from(f & ARITH_FLAGS) | 2;
            let kept = eflags::TF | eflags::NT | eflags::AC | eflags::ID;
            ctx.sys_flags = (ctx.sys_flags & !kept) | (f & kept);
        }
        crate::checkpoint::set_guest_fpu(self, FxImage(self.direct.slots[slot].runner.fpu()));
        // Data segments the guest loaded itself.
        let reported = [(sreg::SS, r.ss), (sreg::DS, r.dsegs[0]), (sreg::ES, r.dsegs[1]), (sreg::FS, r.dsegs[2]), (sreg::GS, r.dsegs[3])];
        let mut repaired = false;
        for (i, host) in reported {
            if sysenter && i == sreg::SS {
                continue;
            }
            match self.direct.slots[slot].ldt.reported(&self.cpu.seg[i], host) {
                Reported::Same => {}
                Reported::Now(seg) => self.cpu.seg[i] = seg,
                Reported::Load(sel) => {
                    repaired = true;
                    self.direct.stats.segment_repairs += 1;
                    // Since that load, this context's code ran with the host's
                    // descriptor (README: limits): under `auto`, it runs translated,
                    // where segment loads are exact, from now on.
                    if self.direct.mode == UserCode::Auto {
                        let key = self.context_key();
                        self.direct.policy.pin_translated(key);
                    }
                    let (outcome, _) = self.with_machine(|m| crate::emulate::load_segment(m, i, sel))?;
                    if let Outcome::Exception { vector, error, .. } = outcome {
                        self.direct.exit("segment_repair_fault");
                        let at = self.tr.ctx().eip;
                        return self.raise(vector, error, at, EventSource::Exception);
                    }
                }
            }
        }
        let at = self.tr.ctx().eip;
        let sig = i32::try_from(r.signo).unwrap_or(-1);
        if repaired && sig != libc::SIGUSR1 && sig != libc::SIGSYS {
            // The trap came from an access through a segment with the host's
            // meaning: retry it with the guest's.
            self.direct.exit("segment_repair");
            return Ok(Next::Dispatch(at));
        }
        match sig {
            libc::SIGUSR1 => {
                self.direct.exit("kick");
                Ok(Next::Dispatch(at))
            }
            libc::SIGSEGV if r.trapno == 14 => self.direct_page_fault(slot, at, r),
            libc::SIGSEGV if r.trapno == 4 => self.direct_transient("into", at.wrapping_sub(1)),
            libc::SIGSEGV | libc::SIGBUS | libc::SIGILL => self.direct_transient("emulated", at),
            libc::SIGFPE => {
                self.direct.exit("exception");
                let vector = match r.trapno {
                    16 => 16,
                    19 => 19,
                    _ => 0,
                };
                self.raise(vector, None, at, EventSource::Exception)
            }
            libc::SIGTRAP => {
                let before = self.peek_user(at.wrapping_sub(2));
                match (r.trapno, before) {
                    (3, Some([_, 0xcc])) => self.direct_transient("int3", at.wrapping_sub(1)),
                    (3, Some([0xcd, 0x03])) => self.direct_transient("int3", at.wrapping_sub(2)),
                    (1, Some([_, 0xf1])) => self.direct_transient("int1", at.wrapping_sub(1)),
                    _ => {
                        self.direct.exit("exception");
                        self.raise(1, None, at, EventSource::Exception)
                    }
                }
            }
            libc::SIGSYS if r.code == SYS_USER_DISPATCH => {
                if sysenter {
                    // The kernel's sysenter path took the guest's ebp as the
                    // stack and reloaded ebp from it: put ebp back.
                    #[allow(clippy::cast_possible_truncation)]
                    {
                        self.tr.ctx_mut().gpr[5] = r.regs[4] as u32;
                    }
                    self.direct.exit("sysenter");
                    let (outcome, _) = self.with_machine(crate::emulate::sysenter_now)?;
                    return match outcome {
                        Outcome::Jump => Ok(Next::Dispatch(self.tr.ctx().eip)),
                        Outcome::Exception { vector, error, .. } => self.raise(vector, error, eip, EventSource::Exception),
                        _ => Ok(Next::Dispatch(self.tr.ctx().eip)),
                    };
                }
                // `int $0x80` (the only system call compatibility mode has besides
                // sysenter; `syscall` is #UD there on Intel): delivered through the
                // guest's IDT at once, as the instruction would (a gate whose DPL
                // is below 3 gives #GP at the instruction).
                let site = at.wrapping_sub(2);
                if self.peek_user(site) == Some([0xcd, 0x80]) {
                    self.direct.exit("syscall");
                    return self.raise_at(0x80, None, at, EventSource::Software, site);
                }
                self.direct_transient("syscall_emulated", site)
            }
            _ => self.runner_failed(view_id, at, &RunnerError::Compromised(format!("signal {} code {}", r.signo, r.code))),
        }
    }

    fn direct_transient(&mut self, reason: &'static str, eip: u32) -> Result<Next, VmError> {
        self.direct.exit(reason);
        Ok(Next::Transient(eip))
    }

    /// Two bytes of user code at `linear` (for telling int3 encodings apart).
    fn peek_user(&self, linear: u32) -> Option<[u8; 2]> {
        let mut b = [0u8; 2];
        let paging = self.paging().then(|| self.paging_mode());
        let n = crate::engine::fetch_code(&self.ram, paging, true, linear, &mut b);
        (n == 2).then_some(b)
    }

    /// A page fault in the runner at CPL 3.
    fn direct_page_fault(&mut self, slot: usize, eip: u32, r: &comm::Report) -> Result<Next, VmError> {
        let Ok(linear) = u32::try_from(r.cr2) else {
            let view_id = self.direct.slots[slot].runner.view_id;
            return self.runner_failed(view_id, eip, &RunnerError::Compromised(format!("fault at {:#x}", r.cr2)));
        };
        let write = r.err & 2 != 0;
        if !self.paging() {
            return self.direct_transient("page_fault_emulated", eip);
        }
        let page = linear >> 12;
        let low = page < self.direct_min_page();
        // A page the runner should have had: it cannot map it (page 0).
        if let Some(b) = self.shadow.user_view.mirror_mut().backing_of(page) {
            if low || !write || b.writable {
                return self.direct_transient("page_fault_emulated", eip);
            }
        }
        match self.paging_fault(linear, write, true)? {
            FaultAction::Retry if low => self.direct_transient("page_fault_emulated", eip),
            FaultAction::Retry => {
                self.direct.exit("page_fault_hidden");
                Ok(Next::Dispatch(eip))
            }
            FaultAction::WriteThrough { traced: false } => {
                self.direct.exit("page_fault_hidden");
                Ok(Next::Dispatch(eip))
            }
            FaultAction::WriteThrough { traced: true } => self.direct_transient("page_table_write", eip),
            FaultAction::PageFault(code) => {
                self.direct.exit("page_fault_guest");
                self.direct.prefault = Some(Prefault { key: self.context_key(), eip, linear, write });
                self.raise(14, Some(code), eip, EventSource::Exception)
            }
            FaultAction::NoRam => Ok(Next::Done(RunOutcome::Unbacked { eip, linear })),
        }
    }

    /// Maps user page `linear` into the user view as the hidden fault of a user
    /// access (`write` or read) would, if the guest's tables now allow that access and
    /// the page needs nothing but a mapping (not a traced page table, not code written
    /// to, in RAM, above the lowest page the runner can map); otherwise nothing
    /// happens and the access itself will fault as before. The instruction about to be
    /// entered made this access and faulted: it makes it again at once, so the A and D
    /// bits this sets are those it would set itself.
    fn prefault(&mut self, linear: u32, write: bool) -> Result<(), VmError> {
        if linear >> 12 < self.direct_min_page() {
            return Ok(());
        }
        let access = bt86_shadow_mmu::walk::Access { write, user: true, fetch: false };
        let mode = self.paging_mode();
        let Ok(t) = bt86_shadow_mmu::walk::walk(&mut DryPhys(&self.ram), &mode, linear, access) else {
            return Ok(());
        };
        let frame = t.phys_page >> 12;
        if !self.ram.contains(t.phys_page, 0x1000) || self.shadow.is_traced(frame) || (write && self.protected.contains(&frame)) {
            return Ok(());
        }
        if let FaultAction::Retry | FaultAction::WriteThrough { traced: false } = self.paging_fault(linear, write, true)? {
            self.direct.stats.prefaults += 1;
        }
        Ok(())
    }

    fn direct_min_page(&self) -> u32 {
        self.direct.slots.first().map_or(1, |s| s.runner.min_page())
    }
}
