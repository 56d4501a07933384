//! `sysenter` and `sysexit`: the fast system-call pair of the P6 (CPUID.SEP).
//!
//! Both load flat segments derived from IA32_SYSENTER_CS without reading the
//! GDT, as the hardware does: `sysenter` enters ring 0 at SYSENTER_EIP with
//! SYSENTER_ESP (CS = the MSR's selector, SS = CS + 8) and clears IF, VM and RF;
//! `sysexit` returns to ring 3 at EDX with ECX as the stack (CS = the MSR's
//! selector + 16, SS = + 24, both with RPL 3). A zero SYSENTER_CS is #GP(0).

use super::flags::write_eflags;
use super::{EmuResult, Fault, Machine, Outcome};
use crate::cpu::{eflags, sreg, Segment};

/// A flat 4 GiB segment as sysenter/sysexit load it (type: 0x9b code, 0x93 data,
/// plus the DPL bits).
fn flat(selector: u16, type_byte: u8, dpl: u8) -> Segment {
    let mut s = Segment::flat(selector, type_byte);
    s.attrs |= u16::from(dpl) << 5;
    s
}

fn msr_cs(m: &Machine<'_>) -> Result<u16, Fault> {
    let cs = (m.cpu.sysenter_cs & 0xfffc) as u16;
    if cs == 0 {
        return Err(Fault::gp0());
    }
    Ok(cs)
}

pub(crate) fn sysenter(m: &mut Machine<'_>) -> EmuResult {
    let cs = msr_cs(m)?;
    write_eflags(m, 0, eflags::IF | eflags::RF);
    m.cpu.seg[sreg::CS] = flat(cs, 0x9b, 0);
    m.cpu.seg[sreg::SS] = flat(cs.wrapping_add(8), 0x93, 0);
    m.ctx.gpr[4] = m.cpu.sysenter_esp;
    m.ctx.eip = m.cpu.sysenter_eip;
    Ok(Outcome::Jump)
}

pub(crate) fn sysexit(m: &mut Machine<'_>) -> EmuResult {
    let cs = msr_cs(m)?;
    if m.cpu.cpl() != 0 {
        return Err(Fault::gp0());
    }
    m.cpu.seg[sreg::CS] = flat(cs.wrapping_add(16) | 3, 0x9b, 3);
    m.cpu.seg[sreg::SS] = flat(cs.wrapping_add(24) | 3, 0x93, 3);
    m.ctx.gpr[4] = m.ctx.gpr[1];
    m.ctx.eip = m.ctx.gpr[2];
    Ok(Outcome::Jump)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn enter_and_exit_rings() {
        let mut t = TestMachine::new();
        t.set_cpl(3);
        assert_eq!(t.run(&[0x0f, 0x34]), gp(0), "SYSENTER_CS = 0");
        t.cpu.sysenter_cs = 0x60;
        t.cpu.sysenter_esp = 0x9000;
        t.cpu.sysenter_eip = 0xc010_0000;
        t.ctx.vif = 1;
        assert_eq!(t.run(&[0x0f, 0x34]), Outcome::Jump);
        assert_eq!((t.cpu.cpl(), t.cpu.seg[sreg::CS].selector, t.cpu.seg[sreg::SS].selector), (0, 0x60, 0x68));
        assert_eq!((t.ctx.eip, t.ctx.gpr[4], t.ctx.vif), (0xc010_0000, 0x9000, 0));
        t.ctx.gpr[1] = 0xbfff_f000;
        t.ctx.gpr[2] = 0x0804_8000;
        assert_eq!(t.run(&[0x0f, 0x35]), Outcome::Jump);
        assert_eq!((t.cpu.cpl(), t.cpu.seg[sreg::CS].selector, t.cpu.seg[sreg::SS].selector), (3, 0x73, 0x7b));
        assert_eq!((t.ctx.eip, t.ctx.gpr[4]), (0x0804_8000, 0xbfff_f000));
        assert_eq!(t.cpu.seg[sreg::SS].attrs & 0x60, 0x60, "DPL 3");
        assert_eq!(t.run(&[0x0f, 0x35]), gp(0), "sysexit at CPL 3");
    }
}
