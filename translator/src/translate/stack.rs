//! Instructions that use the guest stack implicitly: push, pop, pusha, popa,
//! enter, leave. The host rsp is the VMM's stack, so each becomes explicit loads and
//! stores at `%gs:(r8d)`; stores come before the esp update, so a fault leaves esp
//! untouched (a store that is redone on retry writes the same value).

use super::ident::materialize_ea;
use super::{Builder, Flow};
use crate::emit::{gmem, ins2i, ins2m, ins2rm, EmitError};
use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

const GUEST: [Register; 8] = crate::world::GUEST_REGS;

pub(super) fn translate(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    match b.ins.mnemonic() {
        Mnemonic::Push => push(b),
        Mnemonic::Pop => pop(b),
        Mnemonic::Pushad => pusha(b, 4),
        Mnemonic::Pusha => pusha(b, 2),
        Mnemonic::Popad => popa(b, 4),
        Mnemonic::Popa => popa(b, 2),
        Mnemonic::Enter => enter(b),
        _ => leave(b),
    }
}

/// Maps a guest register to the host register holding it (esp → r8).
pub(super) fn host_reg(r: Register) -> Register {
    match r {
        Register::ESP => Register::R8D,
        Register::SP => Register::R8W,
        other => other,
    }
}

fn scratch(size: i32) -> Register {
    if size == 2 { Register::R9W } else { Register::R9D }
}

fn mov_store(size: i32) -> Code {
    if size == 2 { Code::Mov_rm16_r16 } else { Code::Mov_rm32_r32 }
}

fn mov_load(size: i32) -> Code {
    if size == 2 { Code::Mov_r16_rm16 } else { Code::Mov_r32_rm32 }
}

/// Loads `i`'s explicit operand 0 (register or memory) into r9 (sized `size`).
pub(super) fn load_operand(b: &mut Builder<'_>, i: &Instruction, size: i32) -> Result<(), EmitError> {
    let r9 = scratch(size);
    match i.op0_kind() {
        OpKind::Register => b.a.mov_rr_sized(r9, host_reg(i.op0_register())),
        OpKind::Memory => {
            let m = guest_operand(b, i, Register::R9D)?;
            b.a.ins(&ins2rm(mov_load(size), r9, m))
        }
        _ => unreachable!("operand kind"),
    }
}

/// The memory operand of `i` as a host operand; uses `temp` when the address
/// needs computing (16-bit addressing, a segment base).
pub(super) fn guest_operand(
    b: &mut Builder<'_>,
    i: &Instruction,
    temp: Register,
) -> Result<iced_x86::MemoryOperand, EmitError> {
    let base = i.memory_base();
    let index = i.memory_index();
    let plain = base.size() != 2
        && index.size() != 2
        && i.memory_displ_size() != 2
        && !b.mode.has_base(i.memory_segment());
    if plain {
        let map = |r: Register| if r == Register::ESP { Register::R8D } else { r };
        let mut m = iced_x86::MemoryOperand::with_base_index_scale_displ_size(
            map(base),
            map(index),
            i.memory_index_scale(),
            i64::from(i.memory_displacement32() as i32),
            4,
        );
        m.segment_prefix = Register::GS;
        Ok(m)
    } else {
        materialize_ea(b, i, temp)?;
        Ok(gmem(temp, 0))
    }
}

fn adjust_esp(b: &mut Builder<'_>, delta: i64) -> Result<(), EmitError> {
    b.a.lea32(Register::R8D, Register::R8, delta)
}

fn push(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    let i = b.ins;
    let size = -b.ins.stack_pointer_increment();
    let slot = gmem(Register::R8D, -i64::from(size));
    match i.op0_kind() {
        OpKind::Register => b.a.ins(&ins2m(mov_store(size), slot, host_reg(i.op0_register())))?,
        OpKind::Memory => {
            load_operand(b, &i, size)?;
            b.a.ins(&ins2m(mov_store(size), slot, scratch(size)))?;
        }
        _ => {
            let v = i.immediate(0) as u32;
            if size == 2 {
                b.a.ins(&Instruction::with2(Code::Mov_rm16_imm16, slot, v & 0xffff).map_err(crate::emit::ice)?)?;
            } else {
                b.a.ins(&ins2i(Code::Mov_rm32_imm32, slot, v))?;
            }
        }
    }
    adjust_esp(b, -i64::from(size))?;
    Ok(Flow::Next)
}

fn pop(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    let i = b.ins;
    let size = b.ins.stack_pointer_increment();
    let top = gmem(Register::R8D, 0);
    if i.op0_kind() == OpKind::Register {
        let dst = host_reg(i.op0_register());
        b.a.ins(&ins2rm(mov_load(size), dst, top))?;
        if dst.full_register() != Register::R8 {
            adjust_esp(b, i64::from(size))?;
        }
        return Ok(Flow::Next);
    }
    // pop to memory: the address is computed with esp already incremented.
    b.a.ins(&ins2rm(mov_load(size), scratch(size), top))?;
    let mut dst = i;
    if dst.memory_base() == Register::ESP {
        dst.set_memory_displacement64(u64::from(dst.memory_displacement32().wrapping_add(size as u32)));
        dst.set_memory_displ_size(4);
    }
    let m = guest_operand(b, &dst, Register::R10D)?;
    b.a.ins(&ins2m(mov_store(size), m, scratch(size)))?;
    adjust_esp(b, i64::from(size))?;
    Ok(Flow::Next)
}

fn sized(r: Register, size: i32) -> Register {
    if size == 4 {
        return r;
    }
    match r {
        Register::R8D => Register::R8W,
        other => Register::try_from(other as usize - Register::EAX as usize + Register::AX as usize)
            .expect("16-bit register"),
    }
}

fn pusha(b: &mut Builder<'_>, size: i32) -> Result<Flow, EmitError> {
    // Slot k (k = 1..8) below esp holds register k-1; slot 5 holds the original esp.
    let store = |b: &mut Builder<'_>, k: usize| {
        let m = gmem(Register::R8D, -(k as i64) * i64::from(size));
        b.a.ins(&ins2m(mov_store(size), m, sized(GUEST[k - 1], size)))
    };
    // Lowest and highest first: once both pages took a store, the rest cannot fault.
    store(b, 8)?;
    store(b, 1)?;
    for k in 2..8 {
        store(b, k)?;
    }
    adjust_esp(b, -8 * i64::from(size))?;
    Ok(Flow::Next)
}

fn popa(b: &mut Builder<'_>, size: i32) -> Result<Flow, EmitError> {
    // Probe the lowest and highest words before the first register changes.
    b.a.ins(&ins2rm(mov_load(size), scratch(size), gmem(Register::R8D, 0)))?;
    b.a.ins(&ins2rm(mov_load(size), scratch(size), gmem(Register::R8D, 7 * i64::from(size))))?;
    for (n, r) in GUEST.iter().enumerate().rev() {
        if n == 4 {
            continue; // the saved esp is skipped
        }
        let m = gmem(Register::R8D, (7 - n as i64) * i64::from(size));
        b.a.ins(&ins2rm(mov_load(size), sized(*r, size), m))?;
    }
    adjust_esp(b, 8 * i64::from(size))?;
    Ok(Flow::Next)
}

/// enter alloc, level (32- or 16-bit operand size; the stack is 32-bit here):
/// push (e)bp, copy `level - 1` frame pointers from the old frame, push the new
/// frame pointer, point (e)bp at the new frame, allocate.
fn enter(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    let i = b.ins;
    let size: i32 = if i.code() == Code::Enterw_imm16_imm8 { 2 } else { 4 };
    let n = i64::from(size);
    let alloc = i64::from(i.immediate16());
    let level = i64::from(i.immediate8_2nd() & 31);
    let (bp, tmp) = (sized(Register::EBP, size), scratch(size));
    b.a.ins(&ins2m(mov_store(size), gmem(Register::R8D, -n), bp))?;
    for k in 1..level {
        b.a.ins(&ins2rm(mov_load(size), tmp, gmem(Register::EBP, -n * k)))?;
        b.a.ins(&ins2m(mov_store(size), gmem(Register::R8D, -n - n * k), tmp))?;
    }
    b.a.lea32(Register::R9D, Register::R8, -n)?;
    if level > 0 {
        b.a.ins(&ins2m(mov_store(size), gmem(Register::R8D, -n - n * level), tmp))?;
    }
    b.a.mov_rr_sized(bp, tmp)?;
    adjust_esp(b, -n - n * level - alloc)?;
    Ok(Flow::Next)
}

fn leave(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    let size = if b.ins.code() == Code::Leavew { 2 } else { 4 };
    b.a.ins(&ins2rm(mov_load(size), scratch(size), gmem(Register::EBP, 0)))?;
    b.a.lea32(Register::R8D, Register::RBP, i64::from(size))?;
    b.a.mov_rr_sized(sized(Register::EBP, size), scratch(size))?;
    Ok(Flow::Next)
}
