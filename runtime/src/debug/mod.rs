//! Debugger support in the binary-translation engine: breakpoints, watchpoints,
//! single steps and interrupts, plus the debugger's view of the registers
//! (`regs`) and of memory (`memory`). The gdb stub (`crate::gdb`) drives it.
//!
//! The engine looks at instruction boundaries only where it must, so the guest
//! keeps its speed away from what the debugger set:
//! - **Breakpoints** are stops in the translator (`Translator::add_stop`): units
//!   end before a breakpoint, and neither a chained jump nor the indirect lookup
//!   enters the unit that starts there, so every arrival exits to the dispatch
//!   loop, which pauses before the instruction runs. No int3 is written into
//!   guest memory: the guest reads its code unchanged, and the code cache needs
//!   no coordination with breakpoint bytes. Hardware breakpoints are the same.
//! - A **single step** runs exactly one guest instruction as a transient unit
//!   (one instruction, neither cached nor chained), wherever it is: inside a
//!   unit of many, at a callout, at a faulting instruction. A step the VMM runs
//!   again (a hidden page fault, the poll page, a write to a traced page) is not
//!   over; one that raises a guest exception ends at the handler's first
//!   instruction, as under QEMU. External interrupts wait while stepping (QEMU's
//!   default), so a step does not wander into the timer handler.
//! - **Watchpoints** make every eip a stop (units of one instruction; the cache
//!   is flushed when the first comes and the last goes). Before each instruction
//!   the engine decodes it and works out from the registers what memory it will
//!   access (`watch`); once it has run, an access overlapping a watched range
//!   pauses the guest after it, as an x86 data breakpoint does. Every instruction
//!   then leaves translated code (slow, but exact for reads and writes and with no
//!   change to the shadow MMU). Not seen: the frames that exception and interrupt
//!   delivery push, and device writes.
//! - An **interrupt** (`DebugInterrupt`, gdb's Ctrl-C) stops the guest at its
//!   next unit boundary the way a stop request does; the run reports a pause.
//!
//! Continuing from a breakpoint first steps over its instruction, so the guest
//! does not pause at the same place again before moving.

mod memory;
mod regs;
pub(crate) mod watch;

pub use regs::{GuestRegisters, X87Registers};
pub use watch::{WatchHit, WatchKind, Watchpoint};

use crate::devices::PlatformWaker;
use crate::engine::Next;
use crate::vm::{RunOutcome, Vm, VmError};
use bt86_translator::abi::ExitReason;
use bt86_translator::exec_mem::PollHandle;
use iced_x86::Register;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use thiserror::Error;
pub(crate) use watch::{guest_breakpoints, guest_hits, MemAccess};

/// Errors of the debugger's requests (the guest is unaffected).
#[derive(Debug, Error)]
pub enum DebugError {
    #[error("no guest memory is mapped at linear address {0:#010x}")]
    Unmapped(u32),
    #[error("segment register {name} cannot be changed from the debugger (to {selector:#06x})")]
    SegmentWrite { name: &'static str, selector: u16 },
    #[error("MXCSR value {0:#x} sets reserved bits")]
    Mxcsr(u32),
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// How the guest goes on from a pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Until a breakpoint, a watchpoint, an interrupt or the end of the run.
    Continue,
    /// One guest instruction.
    Step,
}

/// Why the guest paused; `eip` is the next instruction it will run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugEvent {
    Breakpoint { eip: u32 },
    Step { eip: u32 },
    /// The instruction before `eip` accessed `hit.addr`, which `hit.kind` watches.
    Watch { eip: u32, hit: WatchHit },
    Interrupted { eip: u32 },
}

/// How a debugged run stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DebugStop {
    /// Paused for the debugger: the guest can be inspected and go on.
    Paused(DebugEvent),
    /// Ended, as `Vm::run` would have.
    Ended(RunOutcome),
}

/// Pauses a running guest for the debugger, from another thread.
#[derive(Clone)]
pub struct DebugInterrupt {
    flag: Arc<AtomicBool>,
    poll: PollHandle,
    waker: PlatformWaker,
}

impl DebugInterrupt {
    /// The guest pauses at its next unit boundary (also out of hlt).
    pub fn interrupt(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.poll.request_exit();
        self.waker.wake();
    }
}

/// Where a single step is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Step {
    #[default]
    Idle,
    /// Asked for: the next boundary runs one instruction.
    Pending,
    /// Its instruction was let run.
    Running,
}

/// An instruction let run past a boundary while stepping or watching: its eip,
/// and the memory it accesses (while watching).
struct Released {
    eip: u32,
    accesses: Vec<MemAccess>,
}

/// What the debugger set, and where a debugged run is.
#[derive(Default)]
pub(crate) struct DebugState {
    /// Breakpoint addresses, with how many breakpoints are set there (gdb may
    /// set a software and a hardware one at one place).
    breakpoints: BTreeMap<u32, u32>,
    watchpoints: Vec<Watchpoint>,
    step: Step,
    released: Option<Released>,
    /// Why the current run paused.
    event: Option<DebugEvent>,
}

impl DebugState {
    /// Whether anything is set that the engine must check between runs.
    fn is_idle(&self) -> bool {
        self.breakpoints.is_empty() && self.watchpoints.is_empty()
    }
}

/// What the boundary check decided.
enum Boundary {
    /// Go on as the engine meant to.
    Go,
    /// Run the instruction alone (a step).
    RunOne,
    Pause(DebugEvent),
}

impl Vm {
    /// A handle that pauses this VM for the debugger from another thread.
    pub fn debug_interrupt_handle(&self) -> DebugInterrupt {
        DebugInterrupt { flag: self.debug_break.clone(), poll: self.tr.poll_handle(), waker: self.bus.waker() }
    }

    /// Runs the guest for the debugger until it pauses or the run ends. Must
    /// be called on the thread that runs the VM (the x87 registers live there).
    pub fn debug_run(&mut self, how: Resume) -> Result<DebugStop, VmError> {
        let eip = self.tr.ctx().eip;
        let on_breakpoint = self.debug.as_ref().is_some_and(|d| d.breakpoints.contains_key(&eip));
        if how == Resume::Step || on_breakpoint {
            let stop = self.run_for_debugger(true)?;
            if how == Resume::Step || !matches!(stop, DebugStop::Paused(DebugEvent::Step { .. })) {
                return Ok(stop);
            }
        }
        self.run_for_debugger(false)
    }

    fn run_for_debugger(&mut self, step: bool) -> Result<DebugStop, VmError> {
        self.debug_break.store(false, Ordering::SeqCst);
        if step || self.debug.is_some() {
            let d = self.debug.get_or_insert_with(Box::default);
            d.step = if step { Step::Pending } else { Step::Idle };
            d.released = None;
            d.event = None;
        }
        let outcome = self.run()?;
        let event = self.debug.as_deref_mut().and_then(|d| {
            d.step = Step::Idle;
            d.event.take()
        });
        if self.debug.as_deref().is_some_and(DebugState::is_idle) {
            // Nothing left to check: the engine runs without its hooks.
            self.debug = None;
        }
        if let Some(e) = event {
            return Ok(DebugStop::Paused(e));
        }
        match outcome {
            RunOutcome::Stopped { eip }
                if !self.stop_flag.load(Ordering::SeqCst) && self.debug_break.swap(false, Ordering::SeqCst) =>
            {
                Ok(DebugStop::Paused(DebugEvent::Interrupted { eip }))
            }
            other => Ok(DebugStop::Ended(other)),
        }
    }

    /// Sets a breakpoint at linear address `eip`.
    pub fn add_breakpoint(&mut self, eip: u32) -> Result<(), VmError> {
        self.tr.add_stop(eip)?;
        *self.debug.get_or_insert_with(Box::default).breakpoints.entry(eip).or_default() += 1;
        Ok(())
    }

    /// Removes one breakpoint at `eip`; false if there was none.
    pub fn remove_breakpoint(&mut self, eip: u32) -> Result<bool, VmError> {
        let Some(d) = self.debug.as_deref_mut() else { return Ok(false) };
        let Some(count) = d.breakpoints.get_mut(&eip) else { return Ok(false) };
        *count -= 1;
        if *count == 0 {
            d.breakpoints.remove(&eip);
            self.tr.remove_stop(eip)?;
        }
        Ok(true)
    }

    /// Watches `w`: the guest pauses after an instruction that accesses it.
    pub fn add_watchpoint(&mut self, w: Watchpoint) -> Result<(), VmError> {
        self.debug.get_or_insert_with(Box::default).watchpoints.push(w);
        self.stop_everywhere(true)
    }

    /// Removes a watchpoint equal to `w`; false if there was none.
    pub fn remove_watchpoint(&mut self, w: Watchpoint) -> Result<bool, VmError> {
        let Some(d) = self.debug.as_deref_mut() else { return Ok(false) };
        let Some(i) = d.watchpoints.iter().position(|x| *x == w) else { return Ok(false) };
        d.watchpoints.remove(i);
        let watching = !d.watchpoints.is_empty();
        self.stop_everywhere(watching)?;
        Ok(true)
    }

    /// Removes every breakpoint and watchpoint (the debugger left).
    pub fn clear_debug(&mut self) -> Result<(), VmError> {
        if let Some(d) = self.debug.take() {
            for eip in d.breakpoints.keys() {
                self.tr.remove_stop(*eip)?;
            }
        }
        self.stop_everywhere(false)
    }

    /// Turns the translator's stop-everywhere mode on or off; the flush that
    /// comes with a change leaves the frames that held code writable again (as
    /// a flush for room does).
    fn stop_everywhere(&mut self, on: bool) -> Result<(), VmError> {
        for frame in self.tr.set_stop_everywhere(on) {
            self.protected.remove(&frame);
            self.protect_frame(frame, true)?;
        }
        Ok(())
    }

    /// Whether the run must stop for a stop request or a debugger's interrupt.
    pub(crate) fn stop_requested(&self) -> bool {
        self.stop_flag.load(Ordering::SeqCst) || self.debug_break.load(Ordering::SeqCst)
    }

    /// Whether a branch to `eip` must go through the dispatch loop (and so
    /// through `debug_boundary`) rather than straight into a unit.
    pub(crate) fn debug_stops_at(&self, eip: u32) -> bool {
        self.debug.as_deref().is_some_and(|d| d.step != Step::Idle || self.tr.is_stop(eip))
    }

    /// Whether a single step is under way (interrupts wait).
    pub(crate) fn debug_stepping(&self) -> bool {
        self.debug.as_deref().is_some_and(|d| d.step != Step::Idle)
    }

    /// The dispatch loop's hook, at a boundary before `next` runs: pauses for a
    /// watchpoint the last instruction hit, the end of a step or a breakpoint,
    /// or lets the next instruction run alone (a step).
    pub(crate) fn debug_boundary(&mut self, next: Next) -> Result<Next, VmError> {
        let (Next::Dispatch(eip) | Next::Transient(eip)) = next else { return Ok(next) };
        match self.boundary(eip) {
            Boundary::Go => Ok(next),
            Boundary::RunOne => Ok(Next::Transient(eip)),
            Boundary::Pause(event) => {
                self.tr.ctx_mut().eip = eip;
                if let Some(d) = self.debug.as_deref_mut() {
                    d.event = Some(event);
                }
                Ok(Next::Done(RunOutcome::Stopped { eip }))
            }
        }
    }

    fn boundary(&mut self, eip: u32) -> Boundary {
        // An instruction that faulted and is run again by the VMM (a hidden page
        // fault, the poll page, a write to a traced page) has not run yet.
        let again = ExitReason::from_raw(self.tr.ctx().exit_reason) == Some(ExitReason::Fault);
        let Some(d) = self.debug.as_deref_mut() else { return Boundary::Go };
        if let Some(r) = d.released.take() {
            if again && r.eip == eip {
                d.released = Some(r);
                return if d.step == Step::Running { Boundary::RunOne } else { Boundary::Go };
            }
            if let Some(hit) = watch::hit(&d.watchpoints, &r.accesses) {
                return Boundary::Pause(DebugEvent::Watch { eip, hit });
            }
            if d.step == Step::Running {
                return Boundary::Pause(DebugEvent::Step { eip });
            }
        }
        if d.step == Step::Pending {
            d.step = Step::Running;
            self.release(eip);
            return Boundary::RunOne;
        }
        if d.breakpoints.contains_key(&eip) {
            return Boundary::Pause(DebugEvent::Breakpoint { eip });
        }
        if !d.watchpoints.is_empty() {
            self.release(eip);
        }
        Boundary::Go
    }

    /// Notes that the instruction at `eip` runs next, with the memory it will
    /// access if watchpoints are set.
    fn release(&mut self, eip: u32) {
        let watching = self.debug.as_deref().is_some_and(|d| !d.watchpoints.is_empty());
        let accesses = if watching { self.accesses_at(eip) } else { Vec::new() };
        if let Some(d) = self.debug.as_deref_mut() {
            d.released = Some(Released { eip, accesses });
        }
    }

    /// The memory the instruction at `eip` will access with the registers now.
    pub(crate) fn accesses_at(&self, eip: u32) -> Vec<MemAccess> {
        let mut bytes = [0u8; 15];
        let n = self.debug_read(eip, &mut bytes);
        let ins = iced_x86::Decoder::with_ip(32, &bytes[..n], u64::from(eip), self.tr.isa().decoder_options()).decode();
        let ctx = self.tr.ctx();
        let down = ctx.rflags & u64::from(crate::cpu::eflags::DF) != 0;
        watch::accesses(&ins, down, |r| register_value(r, &ctx.gpr, &self.cpu, eip))
    }
}

/// The value of `r` for address computations: a general register (or part of
/// one), eip, or a segment register's base.
pub(crate) fn register_value(r: Register, gpr: &[u32; 8], cpu: &crate::cpu::Cpu, eip: u32) -> u64 {
    if r.is_segment_register() {
        return bt86_translator::Mode::seg_index(r).map_or(0, |i| u64::from(cpu.seg[i].base));
    }
    if r == Register::EIP {
        return u64::from(eip);
    }
    if !r.is_gpr() {
        return 0;
    }
    let full = gpr[r.full_register32().number() & 7];
    u64::from(match r.size() {
        1 if (Register::AH..=Register::BH).contains(&r) => (full >> 8) & 0xff,
        1 => full & 0xff,
        2 => full & 0xffff,
        _ => full,
    })
}
