//! String instructions. Their destination is always `es:(edi)`, which 64-bit mode
//! cannot redirect with a segment override, so esi/edi are biased by the view
//! base around a 64-bit-addressed host instruction and unbiased (and truncated to
//! 32 bits) after it. A fault in the middle of a `rep` leaves the progress made so
//! far in ecx/esi/edi, as on hardware; the `StringBias` fixup removes the bias.

use super::{Builder, Fixup, Flow};
use crate::abi::off;
use crate::emit::EmitError;
use crate::CalloutKind;
use iced_x86::{Instruction, OpKind, Register};

pub(super) fn is_string(i: &Instruction) -> bool {
    (0..i.op_count()).any(|op| is_string_kind(i.op_kind(op)))
}

fn is_string_kind(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::MemorySegSI | OpKind::MemorySegESI | OpKind::MemorySegDI | OpKind::MemorySegEDI
            | OpKind::MemoryESDI | OpKind::MemoryESEDI
    )
}

pub(super) fn translate(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    let i = b.ins;
    let kinds: Vec<OpKind> = (0..i.op_count()).map(|op| i.op_kind(op)).collect();
    let sixteen = kinds.iter().any(|k| matches!(k, OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI));
    let uses_src = kinds.contains(&OpKind::MemorySegESI);
    let uses_dst = kinds.contains(&OpKind::MemoryESEDI);
    let src_based = uses_src && b.mode.has_base(i.memory_segment());
    let dst_based = uses_dst && b.mode.has_base(Register::ES);
    if sixteen || src_based || dst_based {
        // 16-bit string addressing or segments with a base: not emitted by 32-bit
        // compilers; the VMM emulates them, with the segment checks.
        b.callout(CalloutKind::Emulate)?;
        return Ok(Flow::Next);
    }
    let mut host = i;
    for op in 0..host.op_count() {
        match host.op_kind(op) {
            OpKind::MemorySegESI => host.set_op_kind(op, OpKind::MemorySegRSI),
            OpKind::MemoryESEDI => host.set_op_kind(op, OpKind::MemoryESRDI),
            _ => {}
        }
    }
    host.set_segment_prefix(Register::None);
    let mask = u8::from(uses_src) << 6 | u8::from(uses_dst) << 7;
    if host.has_rep_prefix() || host.has_repne_prefix() {
        b.a.mov_rr(Register::ECX, Register::ECX)?; // rep counts with rcx: clear its upper half
    }
    let site = b.record_site(CalloutKind::Emulate);
    b.fixup_from_here(Fixup::StringBias(mask, site));
    bias(b, uses_src, uses_dst, off::GS_BASE)?;
    b.a.ins(&host)?;
    bias(b, uses_src, uses_dst, off::NEG_GS_BASE)?;
    b.fixup_end();
    for (used, r) in [(uses_src, Register::ESI), (uses_dst, Register::EDI)] {
        if used {
            b.a.mov_rr(r, r)?; // wrap to 32 bits, as the guest's esi/edi do
        }
    }
    Ok(Flow::Next)
}

fn bias(b: &mut Builder<'_>, src: bool, dst: bool, field: i32) -> Result<(), EmitError> {
    b.a.load_ctx64(Register::R9, field)?;
    for (used, r) in [(src, Register::RSI), (dst, Register::RDI)] {
        if used {
            let m = iced_x86::MemoryOperand::with_base_index(r, Register::R9);
            b.a.ins(&crate::emit::ins2rm(iced_x86::Code::Lea_r64_m, r, m))?;
        }
    }
    Ok(())
}
