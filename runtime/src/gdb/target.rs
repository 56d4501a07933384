//! The VM as a `gdbstub` target: gdb's i386 registers (with x87 and SSE),
//! memory by linear address, software and hardware breakpoints, watchpoints,
//! continue and single step, all on `crate::debug`; and the blocking event loop
//! that runs the guest between gdb's requests.

use super::watcher::Watcher;
use crate::cpu::sreg;
use crate::debug::{DebugEvent, DebugStop, GuestRegisters, Resume, WatchKind, Watchpoint, X87Registers};
use crate::vm::{RunOutcome, Vm, VmError};
use gdbstub::common::Signal;
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::SingleThreadStopReason;
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep, SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps, SwBreakpoint,
    SwBreakpointOps,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::{X86CoreRegs, X86SegmentRegs, X87FpuInternalRegs};
use gdbstub_arch::x86::X86_SSE;
use std::collections::HashSet;
use std::net::TcpStream;
use std::os::fd::AsFd;

/// The VM under gdb for one connection.
pub(super) struct GdbTarget<'a> {
    vm: &'a mut Vm,
    /// What gdb asked for at its last resume.
    resume: Resume,
    /// Addresses with a hardware breakpoint (a pause there is reported as one).
    hw_breakpoints: HashSet<u32>,
    /// How the run ended, once it has.
    pub(super) ended: Option<RunOutcome>,
}

impl<'a> GdbTarget<'a> {
    pub(super) fn new(vm: &'a mut Vm) -> Self {
        Self { vm, resume: Resume::Continue, hw_breakpoints: HashSet::new(), ended: None }
    }
}

impl Target for GdbTarget<'_> {
    type Arch = X86_SSE;
    type Error = VmError;

    #[inline(always)]
    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    #[inline(always)]
    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadBase for GdbTarget<'_> {
    fn read_registers(&mut self, regs: &mut X86CoreRegs) -> TargetResult<(), Self> {
        *regs = to_gdb(&self.vm.debug_registers());
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86CoreRegs) -> TargetResult<(), Self> {
        let regs = from_gdb(regs).ok_or(TargetError::NonFatal)?;
        self.vm.set_debug_registers(&regs).map_err(|e| {
            tracing::warn!("gdb: register write refused: {e}");
            TargetError::NonFatal
        })
    }

    fn read_addrs(&mut self, start: u32, data: &mut [u8]) -> TargetResult<usize, Self> {
        match self.vm.debug_read(start, data) {
            0 if !data.is_empty() => Err(TargetError::NonFatal),
            n => Ok(n),
        }
    }

    fn write_addrs(&mut self, start: u32, data: &[u8]) -> TargetResult<(), Self> {
        self.vm.debug_write(start, data).map_err(|e| match e {
            crate::debug::DebugError::Vm(e) => TargetError::Fatal(e),
            _ => TargetError::NonFatal,
        })
    }

    #[inline(always)]
    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for GdbTarget<'_> {
    /// gdb's signals mean nothing to the guest: resuming "with a signal" (after
    /// an interrupt, say) just resumes.
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.resume = Resume::Continue;
        Ok(())
    }

    #[inline(always)]
    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for GdbTarget<'_> {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.resume = Resume::Step;
        Ok(())
    }
}

impl Breakpoints for GdbTarget<'_> {
    #[inline(always)]
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for GdbTarget<'_> {
    fn add_sw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        self.vm.add_breakpoint(addr).map_err(TargetError::Fatal)?;
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        self.vm.remove_breakpoint(addr).map_err(TargetError::Fatal)
    }
}

impl HwBreakpoint for GdbTarget<'_> {
    fn add_hw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        self.vm.add_breakpoint(addr).map_err(TargetError::Fatal)?;
        self.hw_breakpoints.insert(addr);
        Ok(true)
    }

    fn remove_hw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        self.hw_breakpoints.remove(&addr);
        self.vm.remove_breakpoint(addr).map_err(TargetError::Fatal)
    }
}

impl HwWatchpoint for GdbTarget<'_> {
    fn add_hw_watchpoint(&mut self, addr: u32, len: u32, kind: gdbstub::target::ext::breakpoints::WatchKind) -> TargetResult<bool, Self> {
        self.vm.add_watchpoint(watchpoint(addr, len, kind)).map_err(TargetError::Fatal)?;
        Ok(true)
    }

    fn remove_hw_watchpoint(&mut self, addr: u32, len: u32, kind: gdbstub::target::ext::breakpoints::WatchKind) -> TargetResult<bool, Self> {
        self.vm.remove_watchpoint(watchpoint(addr, len, kind)).map_err(TargetError::Fatal)
    }
}

fn watchpoint(addr: u32, len: u32, kind: gdbstub::target::ext::breakpoints::WatchKind) -> Watchpoint {
    use gdbstub::target::ext::breakpoints::WatchKind as Gdb;
    let kind = match kind {
        Gdb::Write => WatchKind::Write,
        Gdb::Read => WatchKind::Read,
        Gdb::ReadWrite => WatchKind::Access,
    };
    Watchpoint { addr, len, kind }
}

fn gdb_watch_kind(kind: WatchKind) -> gdbstub::target::ext::breakpoints::WatchKind {
    use gdbstub::target::ext::breakpoints::WatchKind as Gdb;
    match kind {
        WatchKind::Write => Gdb::Write,
        WatchKind::Read => Gdb::Read,
        WatchKind::Access => Gdb::ReadWrite,
    }
}

/// gdb's register block from the guest's.
fn to_gdb(r: &GuestRegisters) -> X86CoreRegs {
    let [eax, ecx, edx, ebx, esp, ebp, esi, edi] = r.gpr;
    let sel = |i: usize| u32::from(r.selectors[i]);
    let x = &r.x87;
    X86CoreRegs {
        eax,
        ecx,
        edx,
        ebx,
        esp,
        ebp,
        esi,
        edi,
        eip: r.eip,
        eflags: r.eflags,
        segments: X86SegmentRegs {
            cs: sel(sreg::CS),
            ss: sel(sreg::SS),
            ds: sel(sreg::DS),
            es: sel(sreg::ES),
            fs: sel(sreg::FS),
            gs: sel(sreg::GS),
        },
        st: x.st,
        fpu: X87FpuInternalRegs {
            fctrl: x.fctrl.into(),
            fstat: x.fstat.into(),
            ftag: x.ftag.into(),
            fiseg: x.fiseg.into(),
            fioff: x.fioff,
            foseg: x.foseg.into(),
            fooff: x.fooff,
            fop: x.fop.into(),
        },
        xmm: r.xmm,
        mxcsr: r.mxcsr,
    }
}

/// The guest's registers from gdb's block; None if a 16-bit register holds a
/// larger value.
fn from_gdb(g: &X86CoreRegs) -> Option<GuestRegisters> {
    let narrow = |v: u32| u16::try_from(v).ok();
    let s = &g.segments;
    let mut selectors = [0u16; 6];
    for (i, v) in [(sreg::ES, s.es), (sreg::CS, s.cs), (sreg::SS, s.ss), (sreg::DS, s.ds), (sreg::FS, s.fs), (sreg::GS, s.gs)] {
        selectors[i] = narrow(v)?;
    }
    let f = &g.fpu;
    Some(GuestRegisters {
        gpr: [g.eax, g.ecx, g.edx, g.ebx, g.esp, g.ebp, g.esi, g.edi],
        eip: g.eip,
        eflags: g.eflags,
        selectors,
        x87: X87Registers {
            st: g.st,
            fctrl: narrow(f.fctrl)?,
            fstat: narrow(f.fstat)?,
            ftag: narrow(f.ftag)?,
            fiseg: narrow(f.fiseg)?,
            fioff: f.fioff,
            foseg: narrow(f.foseg)?,
            fooff: f.fooff,
            fop: narrow(f.fop)?,
        },
        xmm: g.xmm,
        mxcsr: g.mxcsr,
    })
}

/// What gdb is told when the run ends: an exit status for the guest's own ends,
/// a terminating signal for the abnormal ones.
fn end_reason(outcome: &RunOutcome) -> SingleThreadStopReason<u32> {
    use gdbstub::stub::BaseStopReason::{Exited, Terminated};
    match outcome {
        RunOutcome::GuestExit(v) => Exited(u8::try_from(*v).unwrap_or(u8::MAX)),
        RunOutcome::Halted { .. } | RunOutcome::Reset => Exited(0),
        RunOutcome::GuestException { vector: 0 | 16 | 19, .. } => Terminated(Signal::SIGFPE),
        RunOutcome::GuestException { vector: 6, .. } | RunOutcome::Unsupported { .. } => Terminated(Signal::SIGILL),
        RunOutcome::Unbacked { .. } => Terminated(Signal::SIGBUS),
        RunOutcome::GuestException { .. } | RunOutcome::TripleFault { .. } => Terminated(Signal::SIGSEGV),
        RunOutcome::Stopped { .. } => Terminated(Signal::SIGKILL),
    }
}

/// Runs the guest between gdb's requests, on the thread that owns the VM.
pub(super) struct EventLoop<'a>(core::marker::PhantomData<&'a mut Vm>);

impl<'a> BlockingEventLoop for EventLoop<'a> {
    type Target = GdbTarget<'a>;
    type Connection = TcpStream;
    type StopReason = SingleThreadStopReason<u32>;

    fn wait_for_stop_reason(
        target: &mut GdbTarget<'a>,
        conn: &mut TcpStream,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<VmError, std::io::Error>> {
        let stop = match target.resume {
            // A step ends by itself; only a continued guest needs watching for Ctrl-C.
            Resume::Step => target.vm.debug_run(Resume::Step),
            Resume::Continue => {
                let watcher = Watcher::start(conn.as_fd(), target.vm.debug_interrupt_handle())
                    .map_err(WaitForStopReasonError::Connection)?;
                let stop = target.vm.debug_run(Resume::Continue);
                drop(watcher);
                stop
            }
        }
        .map_err(WaitForStopReasonError::Target)?;
        let reason = match stop {
            // gdb sent something while the guest ran (its Ctrl-C): gdbstub reads it.
            DebugStop::Paused(DebugEvent::Interrupted { .. }) => {
                return conn.read().map(Event::IncomingData).map_err(WaitForStopReasonError::Connection)
            }
            DebugStop::Paused(DebugEvent::Breakpoint { eip }) if target.hw_breakpoints.contains(&eip) => {
                SingleThreadStopReason::HwBreak(())
            }
            DebugStop::Paused(DebugEvent::Breakpoint { .. }) => SingleThreadStopReason::SwBreak(()),
            DebugStop::Paused(DebugEvent::Step { .. }) => SingleThreadStopReason::DoneStep,
            DebugStop::Paused(DebugEvent::Watch { hit, .. }) => {
                SingleThreadStopReason::Watch { tid: (), kind: gdb_watch_kind(hit.kind), addr: hit.addr }
            }
            DebugStop::Ended(outcome) => {
                let reason = end_reason(&outcome);
                target.ended = Some(outcome);
                reason
            }
        };
        Ok(Event::TargetStopped(reason))
    }

    fn on_interrupt(_target: &mut GdbTarget<'a>) -> Result<Option<Self::StopReason>, VmError> {
        Ok(Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_survive_the_round_trip_through_gdb() {
        let mut r = GuestRegisters { gpr: [1, 2, 3, 4, 5, 6, 7, 8], eip: 0x10_0000, eflags: 0x246, ..Default::default() };
        r.selectors = [0x10, 0x08, 0x18, 0x20, 0x28, 0x30];
        r.x87.fctrl = 0x37f;
        r.x87.ftag = 0xffff;
        r.xmm[7] = u128::MAX - 1;
        r.mxcsr = 0x1f80;
        let g = to_gdb(&r);
        assert_eq!((g.segments.cs, g.segments.ss, g.segments.es), (0x08, 0x18, 0x10));
        assert_eq!(from_gdb(&g), Some(r));
        let bad = X86CoreRegs { segments: X86SegmentRegs { cs: 0x1_0008, ..g.segments.clone() }, ..g };
        assert_eq!(from_gdb(&bad), None);
    }

    #[test]
    fn clean_ends_are_exits_and_failures_are_signals() {
        assert_eq!(end_reason(&RunOutcome::GuestExit(42)), SingleThreadStopReason::Exited(42));
        assert_eq!(end_reason(&RunOutcome::Halted { eip: 0 }), SingleThreadStopReason::Exited(0));
        let ud = RunOutcome::GuestException { vector: 6, error: None, eip: 0 };
        assert_eq!(end_reason(&ud), SingleThreadStopReason::Terminated(Signal::SIGILL));
        let triple = RunOutcome::TripleFault { faults: vec![14, 14, 8], eip: 0 };
        assert_eq!(end_reason(&triple), SingleThreadStopReason::Terminated(Signal::SIGSEGV));
    }
}
