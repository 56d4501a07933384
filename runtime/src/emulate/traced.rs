//! Adaptive translation of writes to traced pages (ASPLOS 2006): an instruction
//! that keeps faulting because it writes guest page tables is retranslated into a
//! callout that performs the write here, where the shadow MMU sees it directly —
//! no host fault. The store forms kernels use for PTE updates are taken: `mov` and
//! `xchg` to memory, and the read-modify-write forms (`and`, `or`, `btr`,
//! `cmpxchg`, ...: Linux's `andb $0xfd` write-protects the parent's PTEs at fork),
//! which run on the host CPU on registers (`native_alu`).

use super::addressing::{dest, read_op, read_reg, write_dest, write_reg, Dest};
use super::native_alu::{self, Rmw, ARITH};
use super::{EmuResult, Fault, Machine, Outcome};
use bt86_translator::CalloutSite;
use iced_x86::{Instruction, Mnemonic, OpKind, Register};

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
    if let Some(op) = rmw_op(ins.mnemonic()) {
        return read_modify_write(m, ins, op, size, target);
    }
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

fn rmw_op(m: Mnemonic) -> Option<Rmw> {
    use Mnemonic::*;
    Some(match m {
        And => Rmw::And,
        Or => Rmw::Or,
        Xor => Rmw::Xor,
        Add => Rmw::Add,
        Sub => Rmw::Sub,
        Adc => Rmw::Adc,
        Sbb => Rmw::Sbb,
        Inc => Rmw::Inc,
        Dec => Rmw::Dec,
        Not => Rmw::Not,
        Neg => Rmw::Neg,
        Bts => Rmw::Bts,
        Btr => Rmw::Btr,
        Btc => Rmw::Btc,
        Cmpxchg => Rmw::Cmpxchg,
        _ => return None,
    })
}

/// A read-modify-write store: the flags and (cmpxchg) the accumulator change
/// only once the write has gone through, so a fault leaves everything as it was.
fn read_modify_write(m: &mut Machine<'_>, ins: &Instruction, op: Rmw, size: u32, target: Dest) -> EmuResult {
    let old = read_op(m, ins, 0, size)?;
    let src = match ins.op_count() {
        1 => 0,
        _ if ins.op1_kind() == OpKind::Register => read_reg(m.ctx, ins.op1_register()),
        _ => ins.immediate(1) as u32,
    };
    let acc_reg = match size {
        1 => Register::AL,
        2 => Register::AX,
        _ => Register::EAX,
    };
    let acc = read_reg(m.ctx, acc_reg);
    let done = native_alu::run(op, size, old, src, acc, m.ctx.rflags);
    write_dest(m, target, size, done.value)?;
    if op == Rmw::Cmpxchg {
        write_reg(m.ctx, acc_reg, done.acc);
    }
    m.ctx.rflags = (m.ctx.rflags & !ARITH) | (done.flags & ARITH);
    Ok(Outcome::Continue)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Outcome;
    use bt86_translator::CalloutKind;

    fn traced(t: &mut TestMachine, bytes: &[u8]) -> Outcome {
        let mut site = t.site(bytes);
        site.kind = CalloutKind::TracedWrite;
        t.run_site(&site)
    }

    #[test]
    fn read_modify_write_stores_write_and_set_flags() {
        let mut t = TestMachine::new();
        t.write_u32(0x3000, 0x0000_1067); // a present, writable PTE
        t.ctx.gpr[6] = 0x3000; // esi
        t.ctx.rflags |= 1; // CF: and clears it
        assert_eq!(traced(&mut t, &[0x80, 0x26, 0xfd]), Outcome::Continue); // andb $0xfd,(%esi)
        assert_eq!(t.read_u32(0x3000), 0x0000_1065, "R/W cleared");
        assert_eq!(t.flags() & 0x41, 0, "CF and ZF clear");

        t.ctx.gpr[0] = 0x1065; // eax: expected
        t.ctx.gpr[1] = 0x2067; // ecx: new
        assert_eq!(traced(&mut t, &[0x0f, 0xb1, 0x0e]), Outcome::Continue); // cmpxchg %ecx,(%esi)
        assert_eq!((t.read_u32(0x3000), t.zf()), (0x2067, true));
        assert_eq!(traced(&mut t, &[0x0f, 0xb1, 0x0e]), Outcome::Continue); // now unequal
        assert_eq!((t.ctx.gpr[0], t.zf()), (0x2067, false), "eax loaded from memory");

        assert_eq!(traced(&mut t, &[0x0f, 0xba, 0x36, 0x00]), Outcome::Continue); // btr $0,(%esi)
        assert_eq!((t.read_u32(0x3000), t.flags() & 1), (0x2066, 1), "P cleared, old bit in CF");
    }
}
