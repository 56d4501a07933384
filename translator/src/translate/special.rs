//! Sensitive instructions and the 32-bit encodings that 64-bit mode lacks.
//!
//! At CPL 0 a sensitive instruction must see the virtual machine, not the host:
//! cli/sti write the virtual IF inline; the rest become callouts that the VMM
//! emulates against the vCPU state (pushf/popf, segment registers, descriptor
//! tables, control/debug registers, I/O, hlt, cpuid, rdtsc, MSRs, cache control,
//! far transfers, interrupts, iret). The legacy arithmetic encodings that are
//! invalid in 64-bit mode (BCD adjustments, bound, arpl) are callouts too; salc
//! and into are expressed inline.

use super::{Builder, Flow};
use crate::abi::off;
use crate::emit::{ice, EmitError};
use crate::CalloutKind;
use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, OpKind, Register};

/// Translates `b.ins` if it is special; `None` leaves it to the other families.
pub(super) fn translate(b: &mut Builder<'_>) -> Result<Option<Flow>, EmitError> {
    use Mnemonic::*;
    let i = b.ins;
    if i.is_invalid() {
        return raise_ud(b).map(Some);
    }
    if let Some(kind) = fpu_unavailable(&i, b.mode.fpu) {
        return end(b, kind).map(Some);
    }
    if uses_unusable_segment(&i, b.mode) {
        return raise_gp(b).map(Some);
    }
    let flow = match i.mnemonic() {
        // cli at CPL 0 only writes the virtual IF. Elsewhere it needs an IOPL check,
        // and sti always exits: interrupts may be pending, and they arrive after
        // the one instruction that follows it.
        Cli if b.mode.cpl == 0 => super::vflags::cli(b)?,
        Cli => {
            b.callout(CalloutKind::Emulate)?;
            Flow::Next
        }
        Sti if b.mode.cpl == 0 => super::vflags::sti(b)?,
        Sti => end(b, CalloutKind::Emulate)?,
        Pushfd | Pushf if !b.mode.irregular_stack => super::vflags::pushf(b)?,
        Popfd if b.mode.cpl == 0 && !b.mode.irregular_stack => super::vflags::popf(b)?,
        Salc => salc(b)?,
        // The guest's TSC is the host's: read it (it has no memory effects).
        Rdtsc if b.mode.native_tsc => {
            b.a.ins(&Instruction::with(Code::Rdtsc))?;
            Flow::Next
        }
        Into => into(b)?,
        Cpuid if super::cpuid::inline_possible() => super::cpuid::translate(b)?,
        In | Out if b.mode.cpl == 0 && is_post_port(&i) => post_port(b)?,
        // Extensions the guest CPU lacks never get here (`Isa::allows`).
        Ud0 | Ud1 | Ud2 | Syscall | Sysret => raise_ud(b)?,
        Sysenter | Sysexit => end(b, CalloutKind::Emulate)?,
        // They store the last x87 instruction's host address and (fxsave) host
        // registers a 32-bit CPU does not have: saved through a scrubbed copy.
        Fxsave | Fnsave | Fsave | Fnstenv | Fstenv => super::fpu::save(b)?,
        Hlt | Iretd | Iret | Int | Int1 | Int3 | Retf | Popfd | Popf | Rsm => end(b, CalloutKind::Emulate)?,
        Jmp | Call if is_far(&i) => end(b, CalloutKind::Emulate)?,
        Mov | Push | Pop if touches_sreg(&i) => match super::segreg::translate(b)? {
            Some(flow) => flow,
            None => end(b, CalloutKind::Emulate)?,
        },
        // A #PF handler's first instruction: no exit for it at CPL 0.
        Mov if b.mode.cpl == 0 && reads_cr2(&i) => {
            b.a.load_ctx32(super::stack::host_reg(i.op0_register()), off::CR2)?;
            Flow::Next
        }
        Mov if touches_cr_dr(&i) => end(b, CalloutKind::Emulate)?,
        Lds | Les | Lfs | Lgs | Lss => end(b, CalloutKind::Emulate)?,
        Pushfd | Pushf | In | Out | Insb | Insw | Insd | Outsb | Outsw | Outsd | Lgdt | Sgdt | Lidt
        | Sidt | Lldt | Sldt | Ltr | Str | Smsw | Lmsw | Lar | Lsl | Verr | Verw | Cpuid | Rdtsc
        | Rdmsr | Wrmsr | Rdpmc | Wbinvd | Invd | Clts | Invlpg | Daa | Das | Aaa | Aas | Aam | Aad
        | Bound | Arpl => {
            b.callout(CalloutKind::Emulate)?;
            Flow::Next
        }
        _ => return Ok(None),
    };
    Ok(Some(flow))
}

/// The platform's POST-code port (0x80), which Linux writes as an I/O delay
/// (`outb_p`), has no state a guest can see: reads float high and writes are
/// dropped (`bt86_runtime::devices::misc::PostCode`; the POST code it logs is a
/// diagnostic, not kept for these). At CPL 0 no I/O permission check applies, so
/// an immediate-port access there is inline.
const POST_PORT: u8 = 0x80;

fn is_post_port(i: &Instruction) -> bool {
    (0..i.op_count()).any(|op| i.op_kind(op) == OpKind::Immediate8 && i.immediate8() == POST_PORT)
}

/// `in $0x80` loads all ones into al/ax/eax; `out $0x80` does nothing.
fn post_port(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    if b.ins.mnemonic() == Mnemonic::In {
        let ins = match b.ins.op0_register() {
            Register::AL => Instruction::with2(Code::Mov_r8_imm8, Register::AL, 0xffu32),
            Register::AX => Instruction::with2(Code::Mov_r16_imm16, Register::AX, 0xffffu32),
            _ => Instruction::with2(Code::Mov_r32_imm32, Register::EAX, u32::MAX),
        };
        b.a.ins(&ins.map_err(ice)?)?;
    }
    Ok(Flow::Next)
}

fn is_far(i: &Instruction) -> bool {
    matches!(i.op0_kind(), OpKind::FarBranch16 | OpKind::FarBranch32)
        || matches!(
            i.code(),
            Code::Jmp_m1616 | Code::Jmp_m1632 | Code::Call_m1616 | Code::Call_m1632
        )
}

fn touches_sreg(i: &Instruction) -> bool {
    (0..i.op_count()).any(|op| i.op_kind(op) == OpKind::Register && i.op_register(op).is_segment_register())
}

/// `mov %cr2, r32` (with no lock prefix: on AMD that makes it a CR8 access).
fn reads_cr2(i: &Instruction) -> bool {
    i.code() == Code::Mov_r32_cr && i.op1_register() == Register::CR2 && !i.has_lock_prefix()
}

fn touches_cr_dr(i: &Instruction) -> bool {
    (0..i.op_count()).any(|op| {
        i.op_kind(op) == OpKind::Register && {
            let r = i.op_register(op);
            r.is_cr() || r.is_dr() || r.is_tr()
        }
    })
}

/// A callout after which the unit ends (the instruction may change eip or the
/// translation mode); the fall-through continues at the next instruction.
pub(super) fn end(b: &mut Builder<'_>, kind: CalloutKind) -> Result<Flow, EmitError> {
    b.callout(kind)?;
    b.jmp_slot(b.next_eip());
    Ok(Flow::End)
}

/// Raises #UD at the current instruction.
pub(super) fn raise_ud(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    end(b, CalloutKind::RaiseUd)
}

/// Whether `i` accesses memory through a data segment that is unusable (loaded
/// with a null selector): #GP(0) on the CPU. The few instructions with a memory
/// operand they never access (lea, the hint nops, prefetches, invlpg) are exempt.
/// A `rep` string instruction faults even with a zero count, where the CPU
/// accesses nothing.
pub(crate) fn uses_unusable_segment(i: &Instruction, mode: &crate::Mode) -> bool {
    mode.seg_unusable != 0 && accesses_through(i, |r| mode.is_unusable(r))
}

/// Whether `i` accesses memory through a segment whose limit or type must be
/// checked (`Mode::seg_checked`).
pub(crate) fn uses_checked_segment(i: &Instruction, mode: &crate::Mode) -> bool {
    mode.seg_checked != 0 && accesses_through(i, |r| mode.is_checked(r))
}

/// Whether `i` accesses memory through a segment register `pick` chooses.
fn accesses_through(i: &Instruction, pick: impl Fn(Register) -> bool) -> bool {
    use Mnemonic::*;
    if matches!(
            i.mnemonic(),
            Lea | Nop | Reservednop | Prefetch | Prefetchw | Prefetchwt1 | Prefetchnta | Prefetcht0 | Prefetcht1 | Prefetcht2 | Invlpg
        )
    {
        return false;
    }
    (0..i.op_count()).any(|n| match i.op_kind(n) {
        OpKind::Memory
        | OpKind::MemorySegSI
        | OpKind::MemorySegESI
        | OpKind::MemorySegRSI
        | OpKind::MemorySegDI
        | OpKind::MemorySegEDI
        | OpKind::MemorySegRDI => pick(i.memory_segment()),
        OpKind::MemoryESDI | OpKind::MemoryESEDI | OpKind::MemoryESRDI => pick(Register::ES),
        _ => false,
    })
}

/// Raises #GP(0) at the current instruction (one longer than 15 bytes, or one
/// that uses an unusable segment).
pub(super) fn raise_gp(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    end(b, CalloutKind::RaiseGp)
}

/// The instruction runs onto a page it cannot be fetched from (#PF there).
pub(super) fn fetch_fault(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    end(b, CalloutKind::FetchFault)
}

/// salc: al = CF ? 0xff : 0, with cmov (flags untouched).
fn salc(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    b.a.ins(&Instruction::with2(Code::Mov_r32_imm32, Register::R9D, 0u32).map_err(ice)?)?;
    b.a.ins(&Instruction::with2(Code::Mov_r32_imm32, Register::R10D, 0xffu32).map_err(ice)?)?;
    b.a.ins(&Instruction::with2(Code::Cmovb_r32_rm32, Register::R9D, Register::R10D).map_err(ice)?)?;
    b.a.ins(&Instruction::with2(Code::Mov_r8_rm8, Register::AL, Register::R9L).map_err(ice)?)?;
    Ok(Flow::Next)
}

/// into: trap to the VMM only when OF is set.
fn into(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    b.a.bytes(&[0x70 | crate::emit::cc_nibble(ConditionCode::no), 0]);
    let at = b.a.pos() - 1;
    b.callout(CalloutKind::Emulate)?;
    b.jmp_slot(b.next_eip());
    b.a.patch_rel8_here(at);
    b.jmp_slot(b.next_eip());
    Ok(Flow::End)
}

/// Whether CR0/CR4 make an x87, MMX or SSE instruction fault, as the SDM's
/// "Action taken" table for EM, MP, TS and OSFXSR gives it: OSFXSR guards only
/// what touches XMM registers or MXCSR; the SSE instructions on MMX registers
/// (pshufw, maskmovq, ...) follow the MMX rules; the ones on general registers
/// or memory alone (movnti, the fences, prefetches, clflush, crc32) check nothing.
fn fpu_unavailable(i: &Instruction, fpu: u8) -> Option<CalloutKind> {
    use crate::fpu_mode::{EM, MP, OSFXSR, TS};
    use iced_x86::CpuidFeature as F;
    let (em, ts, mp, osfxsr) = (fpu & EM != 0, fpu & TS != 0, fpu & MP != 0, fpu & OSFXSR != 0);
    if matches!(i.mnemonic(), Mnemonic::Wait) {
        return (ts && mp).then_some(CalloutKind::RaiseNm);
    }
    let features = i.cpuid_features();
    let has = |f: &[F]| features.iter().any(|x| f.contains(x));
    let regs = |pred: fn(Register) -> bool| (0..i.op_count()).any(|op| i.op_kind(op) == OpKind::Register && pred(i.op_register(op)));
    if has(&[F::FXSR]) {
        return (em || ts).then_some(CalloutKind::RaiseNm);
    }
    let xmm = regs(Register::is_xmm) || matches!(i.mnemonic(), Mnemonic::Ldmxcsr | Mnemonic::Stmxcsr);
    if xmm {
        if em || !osfxsr {
            return Some(CalloutKind::RaiseUd);
        }
        return ts.then_some(CalloutKind::RaiseNm);
    }
    if has(&[F::MMX]) || regs(Register::is_mm) {
        if em {
            return Some(CalloutKind::RaiseUd);
        }
        return ts.then_some(CalloutKind::RaiseNm);
    }
    if has(&[F::FPU, F::FPU287, F::FPU387, F::FPU387SL_ONLY]) {
        return (em || ts).then_some(CalloutKind::RaiseNm);
    }
    None
}
