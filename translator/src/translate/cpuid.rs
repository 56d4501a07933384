//! `cpuid` inline: the answer is read from the table in the context
//! (`abi::CpuidTable`), about ten host instructions, where a light exit costs
//! about 150 cycles and QEMU TCG's helper about 30. Leaves outside the table and
//! leaves with subleaves (the table says which) still go to the VMM.
//!
//! `cpuid` leaves the flags alone, so the sequence is flag-free: the range test
//! and the row offset are `lea`, `shrx` and `rorx` (BMI2, which changes no flags),
//! and the branches are `jrcxz` on ecx (the guest's ecx, the subleaf, waits in
//! r9). Without BMI2 on the host the instruction stays a callout.

use super::{Builder, Flow};
use crate::abi::off;
use crate::emit::{ice, ins2rm, EmitError};
use crate::CalloutKind;
use iced_x86::{Code, Instruction, MemoryOperand, Register::*};

/// Whether this host can run the inline sequence.
pub(super) fn inline_possible() -> bool {
    std::is_x86_feature_detected!("bmi2")
}

/// `[r15 + r10 + CPUID + word * 4]`: a word of the leaf's row.
fn row_word(word: i64) -> MemoryOperand {
    MemoryOperand::with_base_index_scale_displ_size(R15, R10, 1, i64::from(off::CPUID) + word * 4, 8)
}

pub(super) fn translate(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    b.a.mov_rr(R9, RCX)?;
    // Bits 4..30 of the leaf are zero exactly for the table's leaves.
    b.a.ins(&ins2rm(Code::Lea_r32_m, ECX, MemoryOperand::with_base_index(RAX, RAX)))?;
    b.a.ins(&Instruction::with2(Code::Mov_r32_imm32, R10D, 5u32).map_err(ice)?)?;
    b.a.ins(&Instruction::with3(Code::VEX_Shrx_r32_rm32_r32, ECX, ECX, R10D).map_err(ice)?)?;
    b.a.bytes(&[0xe3, 0x00]); // jrcxz: in the table
    let in_table = b.a.pos() - 1;
    let outside = b.a.jmp(b.a.here());
    b.a.patch_rel8_here(in_table);
    // Row offset: the low nibble times 64 plus bit 31 times 32 (rotate left by 6).
    b.a.ins(&Instruction::with3(Code::VEX_Rorx_r32_rm32_imm8, R10D, EAX, 26u32).map_err(ice)?)?;
    b.a.ins(&ins2rm(Code::Mov_r32_rm32, ECX, row_word(4)))?;
    b.a.bytes(&[0xe3, 0x00]); // jrcxz: the leaf has subleaves
    let by_subleaf = b.a.pos() - 1;
    for (reg, word) in [(EBX, 1), (ECX, 2), (EDX, 3), (EAX, 0)] {
        b.a.ins(&ins2rm(Code::Mov_r32_rm32, reg, row_word(word)))?;
    }
    let done = b.a.jmp(b.a.here());
    b.a.patch_rel8_here(by_subleaf);
    b.a.patch_rel32(outside, b.a.here());
    b.a.mov_rr(RCX, R9)?;
    b.callout(CalloutKind::Emulate)?;
    b.a.patch_rel32(done, b.a.here());
    Ok(Flow::Next)
}
