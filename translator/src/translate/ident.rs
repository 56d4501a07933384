//! IDENT translation: the guest instruction itself, re-encoded for 64-bit mode.
//!
//! Rewrites: guest esp → r8; memory operands → `%gs:` with 32-bit address size;
//! `inc`/`dec` 0x40–0x4f → their ModRM forms. Where the host cannot express the
//! operand directly (16-bit addressing, a segment with a non-zero base) the
//! effective address is computed into r9 first with `lea`/`movzx`, which leave the
//! flags alone. High-byte registers (ah, ch, dh, bh) cannot be encoded together with
//! any REX register, so an instruction that needs both borrows a guest register
//! the instruction does not use, spilled to the context.
//!
//! Before anything is emitted, the rewritten instruction is checked: every memory
//! access it makes must go through `%gs` with 32-bit addressing. An instruction
//! that would touch host memory any other way is never run; it becomes an
//! "unsupported instruction" exit.

use super::{special, Builder, Fixup, Flow};
use crate::emit::{ice, ins2rm, EmitError};
use crate::{CalloutKind, Mode};
use iced_x86::{
    Code, EncodingKind, FlowControl, Instruction, InstructionInfoFactory, MemoryOperand, OpAccess,
    OpKind, Register,
};

pub(super) fn translate(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    let ins = b.ins;
    if ins.encoding() != EncodingKind::Legacy {
        // VEX/EVEX/XOP/3DNow!: hidden from the guest's CPUID, so #UD as on a CPU without them.
        return special::raise_ud(b);
    }
    if ins.flow_control() != FlowControl::Next {
        b.callout(CalloutKind::Unsupported)?;
        return Ok(Flow::End);
    }
    if ins.mnemonic() == iced_x86::Mnemonic::Xlatb {
        return xlat(b);
    }
    if is_hint_nop(&ins, b) {
        // Nothing to do, and nothing the host might read as a newer instruction.
        return Ok(Flow::Next);
    }
    let mut out = ins;
    convert_legacy_code(&mut out);
    // A rep/repne prefix means nothing to a non-string instruction here, but the
    // host may read it as another instruction (f3 0f bc: tzcnt, not bsf), and
    // f2/f3 with lock are HLE hints: drop them (string forms are `string`'s).
    out.set_has_rep_prefix(false);
    out.set_has_repne_prefix(false);
    if !out.code().op_code().mode64() {
        // A 32-bit-only form this module does not re-express: never hand the host
        // bytes that mean something else in 64-bit mode.
        b.callout(CalloutKind::Unsupported)?;
        return Ok(Flow::End);
    }
    if implicit_edi(&out) {
        return masked_store(b, out);
    }
    let uses_memory = (0..out.op_count()).any(|i| out.op_kind(i) == OpKind::Memory);
    let needs_ea = uses_memory && needs_ea_register(&out, b);
    if needs_ea {
        materialize_ea(b, &out, Register::R9D)?;
        set_memory_to(&mut out, Register::R9D);
    } else {
        map_esp_in_memory(&mut out);
    }
    map_esp_registers(&mut out);
    if uses_memory {
        out.set_segment_prefix(Register::GS);
    }
    if !memory_is_confined(&out) {
        b.callout(CalloutKind::Unsupported)?;
        return Ok(Flow::End);
    }
    match b.a.ins(&out) {
        Ok(()) => Ok(Flow::Next),
        Err(e) if e.0.contains("REX") => with_legacy_temp(b, &out),
        Err(_) => {
            b.callout(CalloutKind::Unsupported)?;
            Ok(Flow::End)
        }
    }
}

/// Hints that do nothing on the guest CPU: `nop` with operands, the reserved-nop
/// space (`0f 19`..`0f 1f`, where hosts put cldemote, endbr, rdssp...), and
/// prefetches on a CPU with long nops but without SSE.
fn is_hint_nop(i: &Instruction, b: &Builder<'_>) -> bool {
    use iced_x86::Mnemonic::*;
    match i.mnemonic() {
        Nop | Reservednop => true,
        Prefetchnta | Prefetcht0 | Prefetcht1 | Prefetcht2 => !b.isa.allows(i),
        _ => false,
    }
}

/// `maskmovq`/`maskmovdqu` store to `ds:(edi)` without a memory operand.
fn implicit_edi(i: &Instruction) -> bool {
    (0..i.op_count()).any(|op| matches!(i.op_kind(op), OpKind::MemorySegEDI | OpKind::MemorySegDI))
}

/// A masked store through the view: `%gs` override, 32-bit addressing. A segment
/// base or 16-bit addressing is folded into edi for the one instruction (the
/// guest's edi waits in the scratch slot, where a fault finds it).
fn masked_store(b: &mut Builder<'_>, mut out: Instruction) -> Result<Flow, EmitError> {
    use Register::*;
    let based = b.mode.has_base(b.ins.memory_segment());
    let a16 = (0..out.op_count()).any(|op| out.op_kind(op) == OpKind::MemorySegDI);
    for op in 0..out.op_count() {
        if out.op_kind(op) == OpKind::MemorySegDI {
            out.set_op_kind(op, OpKind::MemorySegEDI);
        }
    }
    out.set_segment_prefix(GS);
    if !memory_is_confined(&out) {
        b.callout(CalloutKind::Unsupported)?;
        return Ok(Flow::End);
    }
    let rebase = a16 || based;
    if rebase {
        b.fixup_from_here(Fixup::SpilledLegacy(7));
        b.a.store_ctx64(crate::abi::off::SCRATCH, RDI)?;
        if a16 {
            b.a.ins(&Instruction::with2(Code::Movzx_r32_rm16, EDI, DI).map_err(ice)?)?;
        }
        add_seg_base(b, b.ins.memory_segment(), EDI)?;
    }
    b.a.ins(&out)?;
    if rebase {
        b.a.load_ctx64(RDI, crate::abi::off::SCRATCH)?;
        b.fixup_end();
    }
    Ok(Flow::Next)
}

/// `inc`/`dec` 0x40–0x4f and the 0x82 aliases do not exist in 64-bit mode, and
/// moffs operands cannot be rebased: use the ModRM forms.
fn convert_legacy_code(i: &mut Instruction) {
    let code = match i.code() {
        Code::Inc_r16 => Code::Inc_rm16,
        Code::Inc_r32 => Code::Inc_rm32,
        Code::Dec_r16 => Code::Dec_rm16,
        Code::Dec_r32 => Code::Dec_rm32,
        // 0x82 is an alias of 0x80 that 64-bit mode dropped.
        Code::Add_rm8_imm8_82 => Code::Add_rm8_imm8,
        Code::Or_rm8_imm8_82 => Code::Or_rm8_imm8,
        Code::Adc_rm8_imm8_82 => Code::Adc_rm8_imm8,
        Code::Sbb_rm8_imm8_82 => Code::Sbb_rm8_imm8,
        Code::And_rm8_imm8_82 => Code::And_rm8_imm8,
        Code::Sub_rm8_imm8_82 => Code::Sub_rm8_imm8,
        Code::Xor_rm8_imm8_82 => Code::Xor_rm8_imm8,
        Code::Cmp_rm8_imm8_82 => Code::Cmp_rm8_imm8,
        // moffs forms take no base register: the ModRM forms can take the
        // effective address a segment base or 16-bit addressing needs.
        Code::Mov_AL_moffs8 => Code::Mov_r8_rm8,
        Code::Mov_AX_moffs16 => Code::Mov_r16_rm16,
        Code::Mov_EAX_moffs32 => Code::Mov_r32_rm32,
        Code::Mov_moffs8_AL => Code::Mov_rm8_r8,
        Code::Mov_moffs16_AX => Code::Mov_rm16_r16,
        Code::Mov_moffs32_EAX => Code::Mov_rm32_r32,
        _ => return,
    };
    i.set_code(code);
}

fn needs_ea_register(i: &Instruction, b: &Builder<'_>) -> bool {
    let sixteen = |r: Register| r != Register::None && r.size() == 2;
    // A 16-bit absolute address has no register to show its address size; its
    // displacement size (2) does.
    sixteen(i.memory_base())
        || sixteen(i.memory_index())
        || i.memory_displ_size() == 2
        || (i.mnemonic() != iced_x86::Mnemonic::Lea && b.mode.has_base(i.memory_segment()))
}

/// Emits the guest effective address of `i`'s memory operand (segment base
/// included) into `dst`, without touching the flags.
pub(super) fn materialize_ea(b: &mut Builder<'_>, i: &Instruction, dst: Register) -> Result<(), EmitError> {
    let base = i.memory_base();
    let index = i.memory_index();
    let disp = i64::from(i.memory_displacement32());
    if base.size() == 2 || index.size() == 2 || i.memory_displ_size() == 2 {
        // 16-bit addressing: (base + index + disp16) mod 64 KiB.
        let t = if dst == Register::R11D { Register::R10D } else { Register::R11D };
        let mut mem = MemoryOperand::with_base_displ_size(Register::None, disp & 0xffff, 4);
        if base != Register::None {
            b.a.ins(&Instruction::with2(Code::Movzx_r32_rm16, dst, map16(base)).map_err(ice)?)?;
            mem.base = dst;
        }
        if index != Register::None {
            b.a.ins(&Instruction::with2(Code::Movzx_r32_rm16, t, map16(index)).map_err(ice)?)?;
            if mem.base == Register::None { mem.base = t } else { mem.index = t; mem.scale = 1 }
        }
        if mem.base != Register::None || mem.index != Register::None {
            mem.displ_size = if mem.displacement == 0 { 0 } else { 4 };
        }
        b.a.ins(&ins2rm(Code::Lea_r32_m, dst, mem))?;
        b.a.ins(&Instruction::with2(Code::Movzx_r32_rm16, dst, r16_of(dst)).map_err(ice)?)?;
    } else {
        let mut mem = MemoryOperand::with_base_index_scale_displ_size(
            map32(base),
            map32(index),
            i.memory_index_scale(),
            disp,
            if disp == 0 { 0 } else { 4 },
        );
        if mem.base == Register::None && mem.index == Register::None {
            mem.displ_size = 4;
        }
        b.a.ins(&ins2rm(Code::Lea_r32_m, dst, mem))?;
    }
    // lea computes an offset: segments play no part in it.
    if i.mnemonic() != iced_x86::Mnemonic::Lea {
        add_seg_base(b, i.memory_segment(), dst)?;
    }
    Ok(())
}

/// Adds the base of segment `seg` (read from the context) to the 32-bit address
/// in `dst`, wrapping at 4 GiB, without touching the flags. Uses r11 (r10 when
/// `dst` is r11) as a temporary.
pub(super) fn add_seg_base(b: &mut Builder<'_>, seg: Register, dst: Register) -> Result<(), EmitError> {
    let Some(index) = Mode::seg_index(seg).filter(|_| b.mode.has_base(seg)) else { return Ok(()) };
    let t = if dst == Register::R11D { Register::R10D } else { Register::R11D };
    b.a.load_ctx32(t, crate::abi::off::SEG_BASE + 4 * index as i32)?;
    let m = MemoryOperand::with_base_index(dst.full_register(), t.full_register());
    b.a.ins(&ins2rm(Code::Lea_r32_m, dst, m))
}

fn r16_of(r: Register) -> Register {
    match r {
        Register::R9D => Register::R9W,
        Register::R10D => Register::R10W,
        other => Register::try_from(other as usize - Register::EAX as usize + Register::AX as usize)
            .unwrap_or(Register::None),
    }
}

fn map16(r: Register) -> Register {
    if r == Register::SP { Register::R8W } else { r }
}

fn map32(r: Register) -> Register {
    if r == Register::ESP { Register::R8D } else { r }
}

fn set_memory_to(i: &mut Instruction, base: Register) {
    i.set_memory_base(base);
    i.set_memory_index(Register::None);
    i.set_memory_index_scale(1);
    i.set_memory_displacement64(0);
    i.set_memory_displ_size(0);
}

fn map_esp_in_memory(i: &mut Instruction) {
    if i.memory_base() == Register::ESP {
        i.set_memory_base(Register::R8D);
    }
    if i.memory_index() == Register::ESP {
        i.set_memory_index(Register::R8D);
    }
}

fn map_esp_registers(i: &mut Instruction) {
    for op in 0..i.op_count() {
        if i.op_kind(op) == OpKind::Register {
            match i.op_register(op) {
                Register::ESP => i.set_op_register(op, Register::R8D),
                Register::SP => i.set_op_register(op, Register::R8W),
                _ => {}
            }
        }
    }
}

/// Every memory access of the host instruction goes through `%gs` with 32-bit
/// addressing, i.e. lands inside the current view.
fn memory_is_confined(i: &Instruction) -> bool {
    let mut f = InstructionInfoFactory::new();
    let info = f.info(i);
    info.used_memory().iter().all(|m| {
        m.access() == OpAccess::NoMemAccess
            || (m.segment() == Register::GS
                && (m.base() == Register::None || m.base().size() == 4)
                && (m.index() == Register::None || m.index().size() == 4))
    })
}

/// Re-emits `out` (already rewritten) with a legacy guest register standing in
/// for r8 (esp) or r9 (the effective address), so that a high-byte register can be
/// encoded alongside.
fn with_legacy_temp(b: &mut Builder<'_>, out: &Instruction) -> Result<Flow, EmitError> {
    let Some(t) = free_legacy(&b.ins) else {
        b.callout(CalloutKind::Unsupported)?;
        return Ok(Flow::End);
    };
    let mut i = *out;
    let writes_esp = writes_register(&b.ins, Register::ESP);
    b.fixup_from_here(Fixup::SpilledLegacy(reg_number(t)));
    b.a.store_ctx64(crate::abi::off::SCRATCH, t.full_register())?;
    let replaced = [Register::R8D, Register::R9D];
    let r = if i.memory_base() == Register::R9D || uses_reg(&i, Register::R9D) { Register::R9D } else { Register::R8D };
    b.a.mov_rr(t, r)?;
    debug_assert!(replaced.contains(&r));
    if i.memory_base() == r {
        i.set_memory_base(t);
    }
    if i.memory_index() == r {
        i.set_memory_index(t);
    }
    for op in 0..i.op_count() {
        if i.op_kind(op) == OpKind::Register && i.op_register(op).full_register() == r.full_register() {
            let sized = if i.op_register(op).size() == 2 { r16_of(t) } else { t };
            i.set_op_register(op, sized);
        }
    }
    b.a.ins(&i)?;
    b.fixup_end();
    if writes_esp && r == Register::R8D {
        b.a.mov_rr(Register::R8D, t)?;
    }
    b.a.load_ctx64(t.full_register(), crate::abi::off::SCRATCH)?;
    Ok(Flow::Next)
}

fn uses_reg(i: &Instruction, r: Register) -> bool {
    (0..i.op_count()).any(|op| i.op_kind(op) == OpKind::Register && i.op_register(op).full_register() == r.full_register())
        || i.memory_index() == r
}

fn free_legacy(i: &Instruction) -> Option<Register> {
    let mut f = InstructionInfoFactory::new();
    let info = f.info(i);
    let used: Vec<Register> = info.used_registers().iter().map(|u| u.register().full_register32()).collect();
    [Register::EBX, Register::ESI, Register::EDI, Register::EBP, Register::EDX, Register::ECX, Register::EAX]
        .into_iter()
        .find(|r| !used.contains(r))
}

fn writes_register(i: &Instruction, r: Register) -> bool {
    let mut f = InstructionInfoFactory::new();
    let info = f.info(i);
    info.used_registers().iter().any(|u| {
        u.register().full_register32() == r
            && matches!(u.access(), OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite | OpAccess::ReadCondWrite)
    })
}

/// Host register number of a legacy 32-bit register (eax = 0 ... edi = 7).
pub(super) fn reg_number(r: Register) -> u8 {
    u8::try_from(r.full_register32() as usize - Register::EAX as usize).expect("legacy register")
}

/// xlat: al = the byte at `ds:(%ebx + %al)` (or `(%bx + %al)` with 16-bit
/// addressing), through the view like any load; the address is built with
/// flag-free `movzx`/`lea`.
fn xlat(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    use Register::*;
    let i = b.ins;
    b.a.ins(&Instruction::with2(Code::Movzx_r32_rm8, R9D, AL).map_err(ice)?)?;
    b.a.ins(&ins2rm(Code::Lea_r32_m, R9D, MemoryOperand::with_base_index(RBX, R9)))?;
    if i.memory_base() == BX {
        b.a.ins(&Instruction::with2(Code::Movzx_r32_rm16, R9D, R9W).map_err(ice)?)?;
    }
    add_seg_base(b, i.memory_segment(), R9D)?;
    b.a.ins(&ins2rm(Code::Mov_r8_rm8, AL, crate::emit::gmem(R9D, 0)))?;
    Ok(Flow::Next)
}
