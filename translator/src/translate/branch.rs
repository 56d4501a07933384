//! Control transfers. Direct targets become chainable slots (a rel32 the cache
//! patches to the target unit); indirect targets go through the shared lookup stub
//! with the target eip in r9d. Calls push the guest return address explicitly.

use super::stack::{guest_operand, host_reg};
use super::{Builder, Flow};
use crate::emit::{gmem, ins2i, ins2rm, EmitError};
use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

pub(super) fn translate(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    let i = b.ins;
    match i.mnemonic() {
        Mnemonic::Jmp => jmp(b, &i)?,
        Mnemonic::Call => call(b, &i)?,
        Mnemonic::Ret => ret(b, &i)?,
        Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne | Mnemonic::Jecxz | Mnemonic::Jcxz => {
            counted(b, &i)?
        }
        _ => {
            // The taken side is a side exit; translation goes on along the
            // fall-through path, which then runs without a jump or a unit entry.
            b.jcc_slot(i.condition_code(), target(&i));
            return Ok(Flow::Next);
        }
    }
    Ok(Flow::End)
}

fn target(i: &Instruction) -> u32 {
    i.near_branch_target() as u32
}

fn is_direct(i: &Instruction) -> bool {
    matches!(i.op0_kind(), OpKind::NearBranch16 | OpKind::NearBranch32)
}

/// Loads an indirect branch target (register or memory operand) into r9d.
fn load_target(b: &mut Builder<'_>, i: &Instruction) -> Result<(), EmitError> {
    let sixteen = i.memory_size() == iced_x86::MemorySize::WordOffset || i.op0_kind() == OpKind::Register && i.op0_register().size() == 2;
    match i.op0_kind() {
        OpKind::Register => {
            let r = host_reg(i.op0_register());
            let code = if sixteen { Code::Movzx_r32_rm16 } else { Code::Mov_r32_rm32 };
            b.a.ins(&Instruction::with2(code, Register::R9D, r).map_err(crate::emit::ice)?)
        }
        _ => {
            let m = guest_operand(b, i, Register::R9D)?;
            let code = if sixteen { Code::Movzx_r32_rm16 } else { Code::Mov_r32_rm32 };
            b.a.ins(&ins2rm(code, Register::R9D, m))
        }
    }
}

fn jmp(b: &mut Builder<'_>, i: &Instruction) -> Result<(), EmitError> {
    if is_direct(i) {
        b.jmp_slot(target(i));
        return Ok(());
    }
    load_target(b, i)?;
    b.jmp_lookup()?;
    Ok(())
}

fn push_return(b: &mut Builder<'_>, size: i64) -> Result<(), EmitError> {
    let next = b.next_eip();
    if size == 2 {
        let m = gmem(Register::R8D, -2);
        b.a.ins(&Instruction::with2(Code::Mov_rm16_imm16, m, next & 0xffff).map_err(crate::emit::ice)?)?;
    } else {
        b.a.ins(&ins2i(Code::Mov_rm32_imm32, gmem(Register::R8D, -4), next))?;
    }
    b.a.lea32(Register::R8D, Register::R8, -size)
}

fn call(b: &mut Builder<'_>, i: &Instruction) -> Result<(), EmitError> {
    let size = i64::from(-i.stack_pointer_increment());
    if is_direct(i) {
        push_return(b, size)?;
        b.jmp_slot(target(i));
        return Ok(());
    }
    // The target is read before the push: `call *4(%esp)` uses the old esp.
    load_target(b, i)?;
    push_return(b, size)?;
    b.jmp_lookup()?;
    Ok(())
}

fn ret(b: &mut Builder<'_>, i: &Instruction) -> Result<(), EmitError> {
    let sixteen = matches!(i.code(), Code::Retnw | Code::Retnw_imm16);
    let extra = if i.op_count() > 0 { i64::from(i.immediate16()) } else { 0 };
    let (code, size) = if sixteen { (Code::Movzx_r32_rm16, 2) } else { (Code::Mov_r32_rm32, 4) };
    b.a.ins(&ins2rm(code, Register::R9D, gmem(Register::R8D, 0)))?;
    b.a.lea32(Register::R8D, Register::R8, size + extra)?;
    b.jmp_lookup()?;
    Ok(())
}

/// loop/loope/loopne/jecxz with a 32-bit counter: the host instruction with an
/// address-size prefix (which selects ecx), branching over the fall-through exit.
/// With a 16-bit counter (cx), the same done by hand.
fn counted(b: &mut Builder<'_>, i: &Instruction) -> Result<(), EmitError> {
    let opcode = match i.code() {
        Code::Loopne_rel8_32_ECX => 0xe0,
        Code::Loope_rel8_32_ECX => 0xe1,
        Code::Loop_rel8_32_ECX => 0xe2,
        Code::Jecxz_rel8_16 | Code::Jecxz_rel8_32 => 0xe3,
        _ => return counted16(b, i),
    };
    b.a.bytes(&[0x67, opcode, 0x05]);
    b.jmp_slot(b.next_eip());
    b.jmp_slot(target(i));
    Ok(())
}

/// jcxz and loop/loope/loopne counting in cx (an address-size prefix): cx is
/// decremented with `lea`/`mov` and tested with `jrcxz` on a copy, so the flags
/// stay the guest's.
fn counted16(b: &mut Builder<'_>, i: &Instruction) -> Result<(), EmitError> {
    use iced_x86::ConditionCode;
    use Register::*;
    let zf_exit = match i.mnemonic() {
        Mnemonic::Jcxz => Option::None,
        Mnemonic::Loope => Some(ConditionCode::ne),
        Mnemonic::Loopne => Some(ConditionCode::e),
        _ => Some(ConditionCode::None),
    };
    if let Some(cc) = zf_exit {
        b.a.lea32(R10D, RCX, -1)?;
        b.a.mov_rr_sized(CX, R10W)?;
        if cc != ConditionCode::None {
            // loope leaves on ZF = 0, loopne on ZF = 1, whatever cx is.
            b.jcc_slot(cc, b.next_eip());
        }
    }
    let (zero, nonzero) = if zf_exit.is_some() { (b.next_eip(), target(i)) } else { (target(i), b.next_eip()) };
    b.a.mov_rr(R10, RCX)?;
    b.a.ins(&Instruction::with2(Code::Movzx_r32_rm16, ECX, CX).map_err(crate::emit::ice)?)?;
    b.a.bytes(&[0xe3, 0x00]); // jrcxz: cx == 0
    let at = b.a.pos() - 1;
    b.a.mov_rr(RCX, R10)?;
    b.jmp_slot(nonzero);
    b.a.patch_rel8_here(at);
    b.a.mov_rr(RCX, R10)?;
    b.jmp_slot(zero);
    Ok(())
}
