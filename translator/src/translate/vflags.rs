//! The virtual interrupt flag and the system flags, kept in the context and
//! handled inline: `pushf` at any CPL, and `popf`, `sti`, `cli` at CPL 0. Only
//! the rare cases leave translated code: `popf` setting TF (single-stepping),
//! and a `popf`/`sti` that sets IF while the VMM knows of a pending interrupt
//! (`VcpuCtx::irq_pending`).
//!
//! EFLAGS as the guest sees it = the arithmetic flags and DF (in host rflags) |
//! `sys_flags` (TF, IOPL, NT, AC, ID) | IF (`vif`) | bit 1. Host rflags never
//! get TF, AC or the others: the host would act on them.
//!
//! The sequences change host flags while they compute, so they save the guest's
//! flags with `pushfq` first and put them back with `popfq`, and every access to
//! guest memory that may fault comes before the first flag change.
//!
//! `sti` delays interrupts by one instruction. If an interrupt is pending when it
//! runs, the VMM emulates it (and runs the next instruction before delivering).
//! Otherwise it records the next instruction's eip in `shadow_eip`: an interrupt
//! arriving meanwhile is noticed at a unit entry, and if that entry is the
//! instruction after the `sti`, the VMM runs it first.

use super::{Builder, Flow};
use crate::abi::{off, ARITH_FLAGS};
use crate::emit::{ctx, gmem, ice, ins2i, ins2m, ins2rm, EmitError};
use crate::CalloutKind;
use iced_x86::{Code, Instruction, MemoryOperand, Register, Register::*};

/// TF, IOPL, NT, AC, ID: the system flags pushf shows and popf at CPL 0 writes
/// (RF and VM never get into `sys_flags`).
const SYS_FLAGS: u32 = (1 << 8) | (3 << 12) | (1 << 14) | (1 << 18) | (1 << 21);
const TF: u32 = 1 << 8;

/// `pushfd`/`pushf`: the guest's EFLAGS image onto its stack, without touching
/// the flags: while translated code runs, host rflags are exactly the guest's
/// arithmetic flags and DF, plus IF (always set at host CPL 3) and bit 1, so the
/// image is `rflags - IF + vif * IF + sys_flags`, all `lea` arithmetic
/// (`sys_flags` never holds RF or VM, which pushf shows as 0).
pub(super) fn pushf(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    let size: i64 = if b.ins.mnemonic() == iced_x86::Mnemonic::Pushf { 2 } else { 4 };
    let (store, r9) = if size == 2 { (Code::Mov_rm16_r16, R9W) } else { (Code::Mov_rm32_r32, R9D) };
    b.a.ins(&Instruction::with(Code::Pushfq))?;
    b.a.ins(&Instruction::with1(Code::Pop_r64, R9).map_err(ice)?)?;
    b.a.ins(&ins2rm(Code::Movzx_r32_rm8, R10D, ctx(off::VIF)))?;
    for _ in 0..3 {
        // vif * 8 * 8 * 8 = vif << 9, the IF bit.
        b.a.ins(&ins2rm(Code::Lea_r32_m, R10D, MemoryOperand::with_base_index_scale_displ_size(Register::None, R10, 8, 0, 8)))?;
    }
    b.a.ins(&ins2rm(Code::Lea_r32_m, R9D, MemoryOperand::with_base_index_scale_displ_size(R9, R10, 1, -0x200, 8)))?;
    b.a.load_ctx32(R10D, off::SYS_FLAGS)?;
    b.a.ins(&ins2rm(Code::Lea_r32_m, R9D, MemoryOperand::with_base_index(R9, R10)))?;
    b.a.ins(&ins2m(store, gmem(R8D, -size), r9))?;
    b.a.lea32(R8D, R8, -size)?;
    Ok(Flow::Next)
}

/// `popfd` at CPL 0.
pub(super) fn popf(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    b.a.ins(&ins2rm(Code::Mov_r32_rm32, R9D, gmem(R8D, 0)))?; // may fault: nothing changed yet
    b.a.ins(&Instruction::with(Code::Pushfq))?;
    b.a.ins(&Instruction::with1(Code::Pop_r64, R11).map_err(ice)?)?;
    b.a.ins(&Instruction::with2(Code::Test_rm32_imm32, R9D, TF).map_err(ice)?)?;
    let fast = b.a.jcc(iced_x86::ConditionCode::e, b.a.here());
    // TF: the VMM emulates it (it has to single-step what follows).
    b.a.ins(&Instruction::with1(Code::Push_r64, R11).map_err(ice)?)?;
    b.a.ins(&Instruction::with(Code::Popfq))?;
    b.callout(CalloutKind::Emulate)?;
    let done = b.a.jmp(b.a.here());
    b.a.patch_rel32(fast, b.a.here());
    b.a.ins(&Instruction::with2(Code::Mov_r32_rm32, R10D, R9D).map_err(ice)?)?;
    b.a.ins(&Instruction::with2(Code::And_rm32_imm32, R10D, SYS_FLAGS).map_err(ice)?)?;
    b.a.store_ctx32(off::SYS_FLAGS, R10D)?;
    b.a.ins(&Instruction::with2(Code::Bt_rm32_imm8, R9D, 9u32).map_err(ice)?)?;
    b.a.ins(&Instruction::with1(Code::Setb_rm8, ctx(off::VIF)).map_err(ice)?)?;
    b.a.ins(&Instruction::with2(Code::And_rm32_imm32, R9D, ARITH_FLAGS).map_err(ice)?)?;
    b.a.ins(&Instruction::with2(Code::Or_rm32_imm8, R9D, 2u32).map_err(ice)?)?;
    b.a.ins(&Instruction::with1(Code::Push_r64, R9).map_err(ice)?)?;
    b.a.ins(&Instruction::with(Code::Popfq))?;
    b.a.lea32(R8D, R8, 4)?;
    leave_if_deliverable(b)?;
    b.a.patch_rel32(done, b.a.here());
    Ok(Flow::Next)
}

/// `sti` at CPL 0.
pub(super) fn sti(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    // A pending interrupt: the VMM emulates the sti and its shadow.
    b.a.mov_rr(R11, RCX)?;
    b.a.ins(&ins2rm(Code::Movzx_r32_rm8, ECX, ctx(off::IRQ_PENDING)))?;
    b.a.bytes(&[0xe3, 0x00]); // jrcxz: nothing pending
    let quiet = b.a.pos() - 1;
    b.a.mov_rr(RCX, R11)?;
    b.callout(CalloutKind::Emulate)?;
    let done = b.a.jmp(b.a.here());
    b.a.patch_rel8_here(quiet);
    b.a.mov_rr(RCX, R11)?;
    b.a.ins(&Instruction::with2(Code::Mov_rm8_imm8, ctx(off::VIF), 1u32).map_err(ice)?)?;
    b.a.ins(&ins2i(Code::Mov_rm32_imm32, ctx(off::SHADOW_EIP), b.next_eip()))?;
    b.a.patch_rel32(done, b.a.here());
    Ok(Flow::Next)
}

/// `cli` at CPL 0.
pub(super) fn cli(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    b.a.ins(&Instruction::with2(Code::Mov_rm8_imm8, ctx(off::VIF), 0u32).map_err(ice)?)?;
    Ok(Flow::Next)
}

/// After IF may have been set: leave at the next instruction boundary (as a
/// `Boundary` callout, which the VMM never chains past) if an interrupt is
/// pending and IF is set. Flag-free: `vif + irq_pending - 2` is zero only then.
fn leave_if_deliverable(b: &mut Builder<'_>) -> Result<(), EmitError> {
    b.a.mov_rr(R11, RCX)?;
    b.a.ins(&ins2rm(Code::Movzx_r32_rm8, ECX, ctx(off::IRQ_PENDING)))?;
    b.a.ins(&ins2rm(Code::Movzx_r32_rm8, R10D, ctx(off::VIF)))?;
    b.a.ins(&ins2rm(Code::Lea_r32_m, ECX, MemoryOperand::with_base_index_scale_displ_size(RCX, R10, 1, -2, 1)))?;
    b.a.bytes(&[0xe3, 0x00]); // jrcxz: deliverable
    let deliver = b.a.pos() - 1;
    b.a.mov_rr(RCX, R11)?;
    let over = b.a.jmp(b.a.here());
    b.a.patch_rel8_here(deliver);
    b.a.mov_rr(RCX, R11)?;
    b.callout(CalloutKind::Boundary)?;
    b.a.patch_rel32(over, b.a.here());
    Ok(())
}
