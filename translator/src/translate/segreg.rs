//! Segment-register moves inline: `push` of any segment register and `mov` from
//! one into a register read the selector from the context; at CPL 0, `mov` from a
//! register and `pop` into DS, ES, FS or GS are inline when they reload the
//! selector the register already holds and its GDT descriptor still reads as the
//! one loaded (`abi::SegReload`), which changes nothing a CPU would change. Every
//! kernel entry and exit of a guest OS does several of these (Linux: `push %ds`,
//! `mov $__USER_DS, %ds`, `pop %ds`, ...), and each callout costs about a
//! thousand cycles. Any other load (a new selector, an LDT selector, a changed
//! descriptor, SS) still goes to the VMM, which checks it.
//!
//! The comparisons are flag-free (`lea` with the negated cached values, `jrcxz`,
//! the guest's ecx waiting in r11), and the guest-memory reads (the stack slot,
//! the descriptor) come first with every guest register intact, so a fault in
//! them is the instruction's fault (the CPU reads the descriptor too).

use super::{Builder, Flow};
use crate::abi::off;
use crate::emit::{ctx, gmem, ice, ins2m, ins2rm, EmitError};
use crate::CalloutKind;
use iced_x86::{Code, Instruction, MemoryOperand, OpKind, Register, Register::*};

/// x86 segment register number (es 0 .. gs 5).
fn sreg_index(r: Register) -> Option<usize> {
    [ES, CS, SS, DS, FS, GS].iter().position(|&s| s == r)
}

/// Translates a segment-register `push`, `pop` or `mov` inline where it can;
/// `None` leaves it to the callout.
pub(super) fn translate(b: &mut Builder<'_>) -> Result<Option<Flow>, EmitError> {
    use Code::*;
    let i = b.ins;
    let stack_ok = !b.mode.irregular_stack;
    let flow = match i.code() {
        Pushd_ES | Pushd_CS | Pushd_SS | Pushd_DS | Pushd_FS | Pushd_GS if stack_ok => push(b, 4)?,
        Pushw_ES | Pushw_CS | Pushw_SS | Pushw_DS | Pushw_FS | Pushw_GS if stack_ok => push(b, 2)?,
        Mov_rm16_Sreg | Mov_r32m16_Sreg if i.op0_kind() == OpKind::Register => read_selector(b)?,
        _ if b.mode.cpl != 0 => return Ok(Option::None),
        Popd_ES | Popd_DS | Popd_FS | Popd_GS if stack_ok => reload(b, Source::Stack(4))?,
        Popw_ES | Popw_DS | Popw_FS | Popw_GS if stack_ok => reload(b, Source::Stack(2))?,
        Mov_Sreg_rm16 | Mov_Sreg_r32m16 if i.op1_kind() == OpKind::Register && is_data_sreg(i.op0_register()) => {
            reload(b, Source::Register(super::stack::host_reg(i.op1_register())))?
        }
        _ => return Ok(Option::None),
    };
    Ok(Some(flow))
}

/// DS, ES, FS, GS: the registers a load into changes nothing but the cache (SS
/// also holds off interrupts for an instruction and is checked differently).
fn is_data_sreg(r: Register) -> bool {
    matches!(r, DS | ES | FS | GS)
}

fn sel_slot(idx: usize) -> MemoryOperand {
    ctx(off::SEG_SEL + 2 * idx as i32)
}

/// `push %sreg`: a `slot`-byte slot of which the selector fills the low two bytes
/// (what the VMM's emulation and recent Intel CPUs do).
fn push(b: &mut Builder<'_>, slot: i64) -> Result<Flow, EmitError> {
    let idx = sreg_index(b.ins.op0_register()).ok_or_else(|| EmitError("push of no segment register".into()))?;
    b.a.ins(&ins2rm(Code::Mov_r16_rm16, R9W, sel_slot(idx)))?;
    b.a.ins(&ins2m(Code::Mov_rm16_r16, gmem(R8D, -slot), R9W))?; // may fault: nothing changed yet
    b.a.lea32(R8D, R8, -slot)?;
    Ok(Flow::Next)
}

/// `mov %sreg, reg`: a 32-bit register gets the selector zero-extended, a 16-bit
/// one its low half.
fn read_selector(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    let idx = sreg_index(b.ins.op1_register()).ok_or_else(|| EmitError("mov from no segment register".into()))?;
    let dst = super::stack::host_reg(b.ins.op0_register());
    let code = if dst.size() == 2 { Code::Mov_r16_rm16 } else { Code::Movzx_r32_rm16 };
    b.a.ins(&ins2rm(code, dst, sel_slot(idx)))?;
    Ok(Flow::Next)
}

/// Where a reload takes its selector from.
#[derive(Clone, Copy)]
enum Source {
    /// `pop`: the low two bytes of a slot of this many bytes at esp.
    Stack(i64),
    /// `mov` from this host register (its low 16 bits).
    Register(Register),
}

/// `mov reg, %sreg` / `pop %sreg` at CPL 0: inline when the register holds a
/// flat data segment and the new selector is a known flat one whose descriptor
/// is unchanged (`abi::SegReload`); otherwise the VMM's callout, after which the
/// unit ends (the translation mode may have changed).
fn reload(b: &mut Builder<'_>, src: Source) -> Result<Flow, EmitError> {
    let idx = sreg_index(b.ins.op0_register()).ok_or_else(|| EmitError("load of no segment register".into()))?;
    // The new selector into r10d (a pop's read may fault: nothing changed yet).
    match src {
        Source::Stack(_) => b.a.ins(&ins2rm(Code::Movzx_r32_rm16, R10D, gmem(R8D, 0)))?,
        Source::Register(r) => {
            b.a.ins(&Instruction::with2(Code::Mov_r32_rm32, R10D, r.full_register32()).map_err(ice)?)?;
            b.a.ins(&Instruction::with2(Code::Movzx_r32_rm16, R10D, R10W).map_err(ice)?)?;
        }
    }
    let mut to_vmm = Vec::new();
    b.a.mov_rr(R11, RCX)?;
    // The register holds a flat segment now?
    b.a.ins(&ins2rm(Code::Mov_r64_rm64, RCX, ctx(off::SEG_NOT_FLAT + 8 * idx as i32)))?;
    jrcxz_or_leave(b, &mut to_vmm)?;
    // The new selector is known? (r9 = its low byte * 3: the entry is at r9 * 8.)
    b.a.ins(&Instruction::with2(Code::Movzx_r32_rm8, R9D, R10L).map_err(ice)?)?;
    b.a.ins(&ins2rm(Code::Lea_r64_m, R9, MemoryOperand::with_base_index_scale_displ_size(R9, R9, 2, 0, 0)))?;
    b.a.ins(&ins2rm(Code::Mov_r64_rm64, RCX, known(off::KNOWN_NEG_SEL)))?;
    b.a.ins(&ins2rm(Code::Lea_r64_m, RCX, MemoryOperand::with_base_index(RCX, R10)))?;
    jrcxz_or_leave(b, &mut to_vmm)?;
    // Its descriptor unchanged? (The CPU reads it too: with every guest register
    // intact, a fault here is the instruction's.)
    b.a.mov_rr(RCX, R11)?;
    b.a.ins(&ins2rm(Code::Mov_r32_rm32, R11D, known(off::KNOWN_DESC_ADDR)))?;
    b.a.ins(&ins2rm(Code::Mov_r64_rm64, R12, gmem(R11D, 0)))?;
    b.a.mov_rr(R11, RCX)?;
    b.a.ins(&ins2rm(Code::Mov_r64_rm64, RCX, known(off::KNOWN_NEG_DESC)))?;
    b.a.ins(&ins2rm(Code::Lea_r64_m, RCX, MemoryOperand::with_base_index(RCX, R12)))?;
    b.a.bytes(&[0xe3, 0x00]); // jrcxz: load it inline
    let inline = b.a.pos() - 1;
    for at in to_vmm {
        b.a.patch_rel8_here(at);
    }
    b.a.mov_rr(RCX, R11)?;
    b.callout(CalloutKind::Emulate)?;
    b.jmp_slot(b.next_eip());
    b.a.patch_rel8_here(inline);
    b.a.mov_rr(RCX, R11)?;
    b.a.ins(&ins2m(Code::Mov_rm16_r16, ctx(off::SEG_SEL + 2 * idx as i32), R10W))?;
    if let Source::Stack(size) = src {
        b.a.lea32(R8D, R8, size)?;
    }
    Ok(Flow::Next)
}

/// `[r15 + r9 * 8 + field]`: a field of the known-selector entry r9 points at.
fn known(field: i32) -> MemoryOperand {
    MemoryOperand::with_base_index_scale_displ_size(R15, R9, 8, i64::from(field), 8)
}

/// Continues if rcx is zero, else jumps (rel8, patched by the caller) to the
/// callout, where rcx gets the guest's ecx back from r11.
fn jrcxz_or_leave(b: &mut Builder<'_>, to_vmm: &mut Vec<usize>) -> Result<(), EmitError> {
    b.a.bytes(&[0xe3, 0x02]); // jrcxz: over the jmp
    b.a.bytes(&[0xeb, 0x00]); // jmp: to the callout
    to_vmm.push(b.a.pos() - 1);
    Ok(())
}
