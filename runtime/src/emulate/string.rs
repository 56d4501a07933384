//! Memory string instructions (movs, stos, lods, cmps, scas) in the forms
//! translated code does not run inline: 16-bit addressing (si, di, cx) or a
//! source or destination segment with a non-zero base. Translated code handles
//! the flat 32-bit forms compilers emit; these come from hand-written code and
//! fuzzers, and here they get the full segment checks (type and limit).
//!
//! Like ins/outs (`io`), a rep form runs at most `REP_CHUNK` iterations per
//! callout and then comes back to the same instruction, and the registers always
//! reflect the iterations that completed, so a fault restarts where it stopped.

use super::addressing::{linear, read_lin, read_reg, sreg_index, write_lin, write_reg, Access};
use super::io::REP_CHUNK;
use super::{EmuResult, Fault, Machine, Outcome};
use crate::cpu::sreg;
use bt86_translator::abi::ARITH_FLAGS;
use bt86_translator::semantics::sub_flags;
use bt86_translator::CalloutSite;
use iced_x86::{Mnemonic, OpKind, Register};

const DF: u64 = 1 << 10;
const ZF: u32 = 1 << 6;
const ESI: usize = 6;
const EDI: usize = 7;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
}

fn op_of(m: Mnemonic) -> Option<(Op, u32)> {
    use Mnemonic::*;
    Some(match m {
        Movsb => (Op::Movs, 1),
        Movsw => (Op::Movs, 2),
        Movsd => (Op::Movs, 4),
        Stosb => (Op::Stos, 1),
        Stosw => (Op::Stos, 2),
        Stosd => (Op::Stos, 4),
        Lodsb => (Op::Lods, 1),
        Lodsw => (Op::Lods, 2),
        Lodsd => (Op::Lods, 4),
        Cmpsb => (Op::Cmps, 1),
        Cmpsw => (Op::Cmps, 2),
        Cmpsd => (Op::Cmps, 4),
        Scasb => (Op::Scas, 1),
        Scasw => (Op::Scas, 2),
        Scasd => (Op::Scas, 4),
        _ => return None,
    })
}

/// The accumulator of an operand size.
fn acc(size: u32) -> Register {
    match size {
        1 => Register::AL,
        2 => Register::AX,
        _ => Register::EAX,
    }
}

pub(crate) fn emulate(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let ins = &site.ins;
    let (op, size) = op_of(ins.mnemonic()).ok_or_else(Fault::ud)?;
    let a16 = (0..ins.op_count()).any(|i| matches!(ins.op_kind(i), OpKind::MemorySegSI | OpKind::MemoryESDI));
    let src_seg = sreg_index(ins.memory_segment()).unwrap_or(sreg::DS);
    let width: u32 = if a16 { 0xffff } else { u32::MAX };
    let step = if m.ctx.rflags & DF != 0 { size.wrapping_neg() } else { size };
    let rep = ins.has_rep_prefix() || ins.has_repne_prefix();
    // cmps/scas stop on ZF = 0 (repe) or ZF = 1 (repne); the others ignore it.
    let stop_on_zf = match op {
        Op::Cmps | Op::Scas if ins.has_repne_prefix() => Some(true),
        Op::Cmps | Op::Scas if ins.has_rep_prefix() => Some(false),
        _ => None,
    };
    let mut count = if rep { m.ctx.gpr[1] & width } else { 1 };
    let mut done = 0;
    while count != 0 {
        if done == REP_CHUNK {
            m.ctx.eip = site.eip;
            return Ok(Outcome::Jump);
        }
        let si = m.ctx.gpr[ESI] & width;
        let di = m.ctx.gpr[EDI] & width;
        let src = |m: &mut Machine<'_>| -> Result<u32, Fault> {
            let at = linear(m.cpu, src_seg, si, size, Access::Read)?;
            read_lin(m, at, size)
        };
        let dst_at = |m: &Machine<'_>, access| linear(m.cpu, sreg::ES, di, size, access);
        let mut flags = None;
        match op {
            Op::Movs => {
                let v = src(m)?;
                let at = dst_at(m, Access::Write)?;
                write_lin(m, at, size, v)?;
            }
            Op::Stos => {
                let at = dst_at(m, Access::Write)?;
                write_lin(m, at, size, read_reg(m.ctx, acc(size)))?;
            }
            Op::Lods => {
                let v = src(m)?;
                write_reg(m.ctx, acc(size), v);
            }
            Op::Cmps => {
                let a = src(m)?;
                let at = dst_at(m, Access::Read)?;
                let b = read_lin(m, at, size)?;
                flags = Some(sub_flags(a, b, size));
            }
            Op::Scas => {
                let at = dst_at(m, Access::Read)?;
                let b = read_lin(m, at, size)?;
                flags = Some(sub_flags(read_reg(m.ctx, acc(size)), b, size));
            }
        }
        // The iteration completed: step the pointers and the count.
        if matches!(op, Op::Movs | Op::Lods | Op::Cmps) {
            m.ctx.gpr[ESI] = (m.ctx.gpr[ESI] & !width) | (si.wrapping_add(step) & width);
        }
        if matches!(op, Op::Movs | Op::Stos | Op::Cmps | Op::Scas) {
            m.ctx.gpr[EDI] = (m.ctx.gpr[EDI] & !width) | (di.wrapping_add(step) & width);
        }
        if let Some(f) = flags {
            m.ctx.rflags = (m.ctx.rflags & !u64::from(ARITH_FLAGS & !(1 << 10))) | u64::from(f);
        }
        count -= 1;
        done += 1;
        if rep {
            m.ctx.gpr[1] = (m.ctx.gpr[1] & !width) | count;
        }
        if let (Some(stop), Some(f)) = (stop_on_zf, flags) {
            if (f & ZF != 0) == stop {
                break;
            }
        }
    }
    Ok(Outcome::Continue)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn rep_movsb_with_16_bit_addressing_wraps_si_and_di() {
        let mut t = TestMachine::new();
        t.write(0x0fff, b"a");
        t.write(0x0000, b"bc");
        // rep movsb (%si),(%di) with si = 0xffff, di = 0x4000, cx = 3; upper halves kept.
        t.ctx.gpr[6] = 0x1234_ffff;
        t.ctx.gpr[7] = 0x5678_4000;
        t.ctx.gpr[1] = 0xabcd_0003;
        t.write(0xffff, b"x");
        assert_eq!(t.run(&[0xf3, 0x67, 0xa4]), Outcome::Continue);
        assert_eq!((t.ctx.gpr[6], t.ctx.gpr[7], t.ctx.gpr[1]), (0x1234_0002, 0x5678_4003, 0xabcd_0000));
        assert_eq!(t.read(0x4000, 3), b"xbc");
    }

    #[test]
    fn segment_base_and_limit_apply() {
        let mut t = TestMachine::new();
        t.cpu.seg[sreg::FS].base = 0x3000;
        t.cpu.seg[sreg::FS].limit = 0x0fff;
        t.write(0x3010, &0x1122_3344u32.to_le_bytes());
        t.ctx.gpr[6] = 0x10;
        // lodsl %fs:(%esi)
        assert_eq!(t.run(&[0x64, 0xad]), Outcome::Continue);
        assert_eq!((t.ctx.gpr[0], t.ctx.gpr[6]), (0x1122_3344, 0x14));
        t.ctx.gpr[6] = 0xffe;
        assert_eq!(t.run(&[0x64, 0xad]), gp(0), "past the limit");
    }

    #[test]
    fn repe_cmpsb_stops_at_the_first_difference() {
        let mut t = TestMachine::new();
        t.write(0x5000, b"abcx");
        t.write(0x6000, b"abcy");
        t.ctx.gpr[6] = 0x5000;
        t.ctx.gpr[7] = 0x6000;
        t.ctx.gpr[1] = 10;
        assert_eq!(t.run(&[0xf3, 0x67, 0xa6]), Outcome::Continue);
        assert_eq!((t.ctx.gpr[6], t.ctx.gpr[7], t.ctx.gpr[1]), (0x5004, 0x6004, 6));
        assert_eq!(t.ctx.rflags as u32 & ZF, 0);
    }
}
