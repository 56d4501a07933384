//! Emulation of the instructions translated code hands to the VMM (callouts):
//! sensitive instructions, which must act on the virtual CPU rather than the host,
//! and the integer instructions that 64-bit mode lacks.
//!
//! Each handler works on a `Machine`: the system state (`Cpu`), the registers and
//! flags in the translator's context, guest memory by linear address, and the port
//! bus. It returns what the engine should do next.
//!
//! Conventions shared by the handlers (see [`emulate`]):
//! - a handler checks everything that can fault before it writes any register, so a
//!   guest exception leaves the vCPU as it was (memory written before a fault, such as
//!   a descriptor's accessed bit or a stack slot below esp, is what hardware leaves too);
//! - `Outcome::Continue` leaves `ctx.eip` alone; `Outcome::Jump` sets it;
//! - guest values are hostile: all arithmetic on them wraps or is checked.
//!
//! Modules: `addressing` (registers, effective addresses, segment checks, memory),
//! `stack`, `descriptor` (GDT/LDT entries), and one module per instruction family.

pub(crate) mod addressing;
mod control;
mod cpuid;
pub(crate) mod delivery;
pub(crate) mod gate_cache;
mod descriptor;
pub(crate) mod flags;
mod interrupts;
mod io;
mod legacy;
mod native_alu;
pub(crate) mod msr;
pub(crate) mod segments;
mod stack;
mod string;
mod sysenter;
mod tables;
mod task;
pub mod traced;
#[cfg(test)]
pub(crate) mod testutil;

use crate::cpu::Cpu;
use crate::devices::{IoEffect, Platform, PortBus};
use bt86_translator::abi::VcpuCtx;
use bt86_translator::{CalloutKind, CalloutSite};
use iced_x86::{Formatter, GasFormatter, Mnemonic};

pub use delivery::{deliver_event, DeliveryFailure, EventSource};
pub use msr::MsrFile;

/// A guest memory access that cannot complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemFault {
    /// No RAM at that physical address (issue-2 machines have no paging).
    Unbacked { linear: u32 },
    /// The guest's page tables refuse the access: #PF with this error code (the
    /// memory records the faulting linear address for CR2).
    PageFault { linear: u32, error_code: u32 },
    /// The light path's memory (`light_cpu::CachedMemory`) has no ready
    /// translation for the access: the instruction is taken again by the general
    /// path. Never reaches the guest.
    NotCached,
}

/// Guest memory by linear address, as emulated instructions see it. Writes must
/// keep translated code coherent (the engine's implementation invalidates units).
pub trait GuestMemory {
    /// Reads at `linear`; `user`: a CPL-3 access (U/S checked), otherwise a
    /// supervisor one (CPL 0–2, and descriptor-table, TSS and inner-stack
    /// accesses at any CPL).
    fn read(&mut self, linear: u32, buf: &mut [u8], user: bool) -> Result<(), MemFault>;
    fn write(&mut self, linear: u32, data: &[u8], user: bool) -> Result<(), MemFault>;
}

/// The I/O port space as emulated `in`/`out` see it.
pub trait PortIo {
    fn read(&mut self, port: u16, size: u8) -> u32;
    fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect;
    /// The guest's TSC while the platform's time runs clipped for a calibration
    /// (`Platform::calibration_tsc`); None: the host's TSC plus the guest's offset.
    fn calibration_tsc(&self) -> Option<u64> {
        None
    }
}

impl PortIo for PortBus {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        PortBus::read(self, port, size)
    }

    fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
        PortBus::write(self, port, size, value)
    }
}

impl PortIo for Platform {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        Platform::read(self, port, size)
    }

    fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
        Platform::write(self, port, size, value)
    }

    fn calibration_tsc(&self) -> Option<u64> {
        Platform::calibration_tsc(self)
    }
}

/// Everything an emulated instruction may touch.
pub struct Machine<'a> {
    pub cpu: &'a mut Cpu,
    pub ctx: &'a mut VcpuCtx,
    pub mem: &'a mut dyn GuestMemory,
    pub io: &'a mut dyn PortIo,
}

/// Why the guest cannot go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The guest wrote `value` to the isa-debug-exit port.
    GuestExit(u32),
    /// hlt with nothing that could ever wake the guest.
    Halted { eip: u32 },
    /// An instruction or situation bt86 does not support yet.
    Unsupported { eip: u32, what: String },
    /// Guest memory outside RAM.
    Unbacked { eip: u32, linear: u32 },
    /// The guest asked for a reset (keyboard controller, port 0x92 or 0xcf9).
    Reset,
}

/// What the engine does after a callout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Continue in translated code right after the instruction (eip = next).
    Continue,
    /// Leave translated code and dispatch at `ctx.eip` (set by the handler):
    /// control transfers, and anything that changed the translation mode.
    Jump,
    /// `int n`, `int3`, `into`: deliver `vector` as a software interrupt (the
    /// gate's DPL is checked against CPL; the saved eip is the next instruction).
    SoftwareInterrupt { vector: u8 },
    /// Raise a guest exception. `trap`: the saved eip is the next instruction
    /// (int n, int3, into); otherwise it is the instruction itself (faults).
    Exception {
        vector: u8,
        error: Option<u32>,
        trap: bool,
    },
    /// End the run.
    Stop(Stop),
}

/// Exception vectors the handlers raise.
pub(crate) mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const BP: u8 = 3;
    pub const OF: u8 = 4;
    pub const BR: u8 = 5;
    pub const UD: u8 = 6;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
}

/// Why a handler did not complete: turned into an [`Outcome`] by [`emulate`], which
/// knows the instruction's eip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// A guest fault (the saved eip is the instruction's).
    Exception { vector: u8, error: Option<u32> },
    /// Guest memory outside RAM.
    Mem(MemFault),
    /// Something bt86 does not support yet.
    Unsupported(String),
    /// hlt with nothing to wake the guest.
    Halted,
    /// isa-debug-exit.
    GuestExit(u32),
    /// The guest pulsed the reset line.
    Reset,
}

impl From<MemFault> for Fault {
    fn from(f: MemFault) -> Self {
        Fault::Mem(f)
    }
}

impl Fault {
    pub(crate) fn exc(vector: u8, error: Option<u32>) -> Self {
        Fault::Exception { vector, error }
    }

    /// #UD.
    pub(crate) fn ud() -> Self {
        Self::exc(vector::UD, None)
    }

    /// #GP with an error code (a selector's index and TI, or 0).
    pub(crate) fn gp(error: u16) -> Self {
        Self::exc(vector::GP, Some(u32::from(error)))
    }

    /// #GP(0).
    pub(crate) fn gp0() -> Self {
        Self::gp(0)
    }

    /// #GP(selector): the error code is the selector without its RPL.
    pub(crate) fn gp_sel(sel: u16) -> Self {
        Self::gp(sel & 0xfffc)
    }

    /// #NP(selector).
    pub(crate) fn np_sel(sel: u16) -> Self {
        Self::exc(vector::NP, Some(u32::from(sel & 0xfffc)))
    }

    /// #SS with an error code.
    pub(crate) fn ss(error: u16) -> Self {
        Self::exc(vector::SS, Some(u32::from(error)))
    }

    pub(crate) fn unsupported(what: impl Into<String>) -> Self {
        Fault::Unsupported(what.into())
    }

    pub(crate) fn into_outcome(self, eip: u32) -> Outcome {
        match self {
            Fault::Exception { vector, error } => Outcome::Exception {
                vector,
                error,
                trap: false,
            },
            Fault::Mem(MemFault::PageFault { error_code, .. }) => Outcome::Exception {
                vector: 14,
                error: Some(error_code),
                trap: false,
            },
            Fault::Mem(MemFault::Unbacked { linear }) => {
                Outcome::Stop(Stop::Unbacked { eip, linear })
            }
            Fault::Mem(MemFault::NotCached) => Outcome::Stop(Stop::Unsupported {
                eip,
                what: "an access the light path could not make (internal)".into(),
            }),
            Fault::Unsupported(what) => Outcome::Stop(Stop::Unsupported { eip, what }),
            Fault::Halted => Outcome::Stop(Stop::Halted { eip }),
            Fault::GuestExit(v) => Outcome::Stop(Stop::GuestExit(v)),
            Fault::Reset => Outcome::Stop(Stop::Reset),
        }
    }
}

/// What a handler returns.
pub(crate) type EmuResult = Result<Outcome, Fault>;

/// The eip of the instruction after the site's.
pub(crate) fn next_eip(site: &CalloutSite) -> u32 {
    site.eip.wrapping_add(u32::from(site.len))
}

/// Leave translated code and continue after the instruction.
pub(crate) fn jump_next(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    m.ctx.eip = next_eip(site);
    Ok(Outcome::Jump)
}

/// Emulates the callout site's instruction.
///
/// `RaiseUd` sites raise #UD, `RaiseGp` #GP(0), `FetchFault` #PF; `Unsupported` sites stop the run.
/// For `Emulate` sites, the instruction is emulated; if the translation mode
/// (`Cpu::mode`: segment bases, CPL) changed, a `Continue` becomes a `Jump` to the
/// next instruction, since the rest of the unit was translated for the old mode.
pub fn emulate(m: &mut Machine<'_>, site: &CalloutSite) -> Outcome {
    match site.kind {
        CalloutKind::Emulate => {}
        CalloutKind::RaiseUd => {
            return Outcome::Exception {
                vector: vector::UD,
                error: None,
                trap: false,
            }
        }
        CalloutKind::RaiseGp => {
            return Outcome::Exception { vector: vector::GP, error: Some(0), trap: false }
        }
        CalloutKind::TracedWrite => {
            return match traced::emulate(m, site) {
                Ok(o) => o,
                Err(f) => f.into_outcome(site.eip),
            }
        }
        CalloutKind::RaiseNm => {
            return Outcome::Exception { vector: 7, error: None, trap: false }
        }
        CalloutKind::RaiseDe => return Outcome::Exception { vector: vector::DE, error: None, trap: false },
        // A probe outside the light path (a debugger, the guest's TF): the
        // instruction runs as it is, its faults taken as host faults.
        CalloutKind::Boundary | CalloutKind::PageProbe => return Outcome::Continue,
        CalloutKind::SegmentCheck => {
            return match addressing::check_accesses(m, &site.ins, m.cpu.mode().seg_checked) {
                Ok(()) => Outcome::Continue,
                Err(f) => f.into_outcome(site.eip),
            }
        }
        CalloutKind::FetchFault => {
            return match fetch_fault(m, site) {
                Ok(o) => o,
                Err(f) => f.into_outcome(site.eip),
            }
        }
        CalloutKind::Unsupported => {
            return Outcome::Stop(Stop::Unsupported {
                eip: site.eip,
                what: describe(m, site),
            })
        }
    }
    let before = m.cpu.mode_inputs();
    let outcome = match dispatch(m, site) {
        Ok(o) => o,
        Err(f) => f.into_outcome(site.eip),
    };
    if outcome == Outcome::Continue && m.cpu.mode_inputs() != before && m.cpu.mode() != before.mode() {
        m.ctx.eip = next_eip(site);
        return Outcome::Jump;
    }
    outcome
}

/// Loads segment register `idx` (not CS) with `sel` as a `mov` to it would, for
/// a load direct execution saw happen with the host's meaning of the selector.
pub(crate) fn load_segment(m: &mut Machine<'_>, idx: usize, sel: u16) -> Outcome {
    let checked = if idx == crate::cpu::sreg::SS { segments::check_ss(m, sel) } else { segments::check_data(m, sel) };
    match checked {
        Ok(seg) => {
            m.cpu.seg[idx] = seg;
            Outcome::Continue
        }
        Err(f) => f.into_outcome(m.ctx.eip),
    }
}

/// A guest `sysenter` whose address is not known (direct execution: the host's
/// kernel does not keep it, and neither does the instruction).
pub(crate) fn sysenter_now(m: &mut Machine<'_>) -> Outcome {
    match sysenter::sysenter(m) {
        Ok(o) => o,
        Err(f) => f.into_outcome(m.ctx.eip),
    }
}

/// An instruction that runs onto a page its fetch may not use: the CPU raises #PF
/// at the first byte of that page (CR2) with the error code of a read there (32-bit
/// paging has no fetch bit). If the page has become fetchable since the unit was
/// built, the instruction runs again (the engine has dropped the stale unit).
fn fetch_fault(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let linear = m.cpu.seg[crate::cpu::sreg::CS].base.wrapping_add(site.eip);
    let next_page = (linear & !0xfff).wrapping_add(0x1000);
    addressing::read_linear(m, next_page, &mut [0u8])?;
    m.ctx.eip = site.eip;
    Ok(Outcome::Jump)
}

fn dispatch(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    use Mnemonic::*;
    let ins = &site.ins;
    if ins.is_invalid() {
        return Err(Fault::ud());
    }
    match ins.mnemonic() {
        Pushf | Pushfd => flags::pushf(m, site),
        Popf | Popfd => flags::popf(m, site),
        Hlt => control::hlt(m, site),
        In | Out | Insb | Insw | Insd | Outsb | Outsw | Outsd => io::emulate(m, site),
        Lgdt | Lidt | Sgdt | Sidt | Lldt | Sldt | Ltr | Str | Lar | Lsl | Verr | Verw => {
            tables::emulate(m, site)
        }
        Smsw | Lmsw | Clts | Invlpg | Wbinvd | Invd | Rdtsc => control::emulate(m, site),
        Rdmsr => msr::rdmsr(m),
        Wrmsr => msr::wrmsr(m),
        Rdpmc => msr::rdpmc(m),
        Sysenter => sysenter::sysenter(m),
        Sysexit => sysenter::sysexit(m),
        Mov if segments::touches_sreg(ins) => segments::mov(m, site),
        Mov => control::mov_cr_dr(m, site),
        Push | Pop if segments::touches_sreg(ins) => segments::push_pop(m, site),
        Lds | Les | Lfs | Lgs | Lss => segments::load_far_pointer(m, site),
        Push | Pop | Pusha | Pushad | Popa | Popad | Enter | Leave | Ret => stack::emulate(m, site),
        Call if !ins.is_call_far() && !ins.is_call_far_indirect() => stack::emulate(m, site),
        Jmp | Call => segments::far_jmp_call(m, site),
        Retf => segments::retf(m, site),
        Cpuid => cpuid::emulate(m, site),
        Daa | Das | Aaa | Aas | Aam | Aad | Bound | Arpl => legacy::emulate(m, site),
        Int | Int1 | Int3 | Into => interrupts::emulate(m, site),
        Iret | Iretd => delivery::iret(m, site),
        Cli | Sti => delivery::cli_sti(m, site),
        Movsb | Movsw | Movsd | Stosb | Stosw | Stosd | Lodsb | Lodsw | Lodsd | Cmpsb | Cmpsw | Cmpsd
        | Scasb | Scasw | Scasd => string::emulate(m, site),
        // Not in system-management mode.
        Rsm => Err(Fault::ud()),
        _ => Err(Fault::Unsupported(describe(m, site))),
    }
}

/// The instruction in GNU syntax with its bytes, for messages.
fn describe(m: &mut Machine<'_>, site: &CalloutSite) -> String {
    let mut text = String::new();
    GasFormatter::new().format(&site.ins, &mut text);
    let linear = m.cpu.seg[crate::cpu::sreg::CS].base.wrapping_add(site.eip);
    let mut bytes = vec![0u8; usize::from(site.len)];
    if !bytes.is_empty() && addressing::read_linear(m, linear, &mut bytes).is_ok() {
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&format!(" ({})", hex.join(" ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn raise_ud_and_stops() {
        let mut t = TestMachine::new();
        let mut site = t.site(&[0x0f, 0x0b]);
        site.kind = CalloutKind::RaiseUd;
        assert_eq!(
            t.run_site(&site),
            Outcome::Exception {
                vector: 6,
                error: None,
                trap: false
            }
        );
        // A fetch fault where the next page reads fine now: run it again.
        site.kind = CalloutKind::FetchFault;
        assert_eq!(t.run_site(&site), Outcome::Jump);
        assert_eq!(t.ctx.eip, EIP);
    }

    #[test]
    fn unsupported_names_instruction_and_bytes() {
        let mut t = TestMachine::new();
        let code = [0x0f, 0x01, 0xd0]; // xgetbv
        t.write(EIP, &code);
        let mut site = t.site(&code);
        site.kind = CalloutKind::Unsupported;
        match t.run_site(&site) {
            Outcome::Stop(Stop::Unsupported { eip, what }) => {
                assert_eq!(eip, EIP);
                assert!(what.contains("xgetbv"), "{what}");
                assert!(what.contains("0f 01 d0"), "{what}");
            }
            o => panic!("{o:?}"),
        }
        // An Emulate site with an instruction no handler knows stops the same way.
        site.kind = CalloutKind::Emulate;
        assert!(matches!(
            t.run_site(&site),
            Outcome::Stop(Stop::Unsupported { .. })
        ));
    }

    #[test]
    fn rsm_is_ud() {
        let mut t = TestMachine::new();
        assert_eq!(
            t.run(&[0x0f, 0xaa]),
            Outcome::Exception {
                vector: 6,
                error: None,
                trap: false
            }
        );
    }
}
