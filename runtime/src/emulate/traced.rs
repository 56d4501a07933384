//! Adaptive translation of writes to traced pages (ASPLOS 2006): an instruction
//! that keeps faulting because it writes guest page tables is retranslated into a
//! callout that performs the write here, where the shadow MMU sees it directly —
//! no host fault. Only the store forms that kernels use for PTE updates are
//! taken (`mov` and `xchg` to memory); the engine marks nothing else adaptive.

use super::addressing::{dest, read_op, read_reg, write_dest, write_reg, Dest};
use super::{EmuResult, Fault, Machine, Outcome};
use bt86_translator::CalloutSite;
use iced_x86::Instruction;

/// Whether `ins` is a store this module emulates (the translator's criterion).
pub fn supported(ins: &Instruction) -> bool {
    bt86_translator::translate::is_adaptive_store(ins)
}

pub(crate) fn emulate(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let ins = &site.ins;
    if !supported(ins) {
        return Err(Fault::ud());
    }
    let size = ins.memory_size().size() as u32;
    let target = dest(m, ins, 0, size)?;
    let Dest::Mem(addr) = target else { return Err(Fault::ud()) };
    let value = match ins.op1_kind() {
        iced_x86::OpKind::Register => read_reg(m.ctx, ins.op1_register()),
        _ => ins.immediate(1) as u32,
    };
    if ins.mnemonic() == iced_x86::Mnemonic::Xchg {
        let old = read_op(m, ins, 0, size)?;
        write_dest(m, target, size, value)?;
        write_reg(m.ctx, ins.op1_register(), old);
    } else {
        write_dest(m, Dest::Mem(addr), size, value)?;
    }
    Ok(Outcome::Continue)
}
