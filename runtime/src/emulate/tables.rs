//! Descriptor-table registers (lgdt/sgdt/lidt/sidt, lldt/sldt, ltr/str) and the
//! descriptor probes (lar, lsl, verr, verw).

use super::addressing::{
    dest, linear, mem_operand, read_linear, read_op, write_dest, write_linear, write_reg, Access,
};
use super::descriptor::{fetch, is_null, set_type_bits, sys, Descriptor};
use super::flags::set_zf;
use super::{EmuResult, Fault, Machine, Outcome};
use crate::cpu::{Segment, TableReg};
use bt86_translator::CalloutSite;
use iced_x86::{Code, Mnemonic};

pub(crate) fn emulate(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let ins = &site.ins;
    match ins.mnemonic() {
        Mnemonic::Lgdt | Mnemonic::Lidt => load_table(m, site),
        Mnemonic::Sgdt | Mnemonic::Sidt => store_table(m, site),
        Mnemonic::Lldt => lldt(m, site),
        Mnemonic::Ltr => ltr(m, site),
        Mnemonic::Sldt | Mnemonic::Str => {
            let sel = if ins.mnemonic() == Mnemonic::Sldt {
                m.cpu.ldtr.selector
            } else {
                m.cpu.tr.selector
            };
            // A 32-bit register receives the selector zero-extended; memory gets 2 bytes.
            let d = dest(m, ins, 0, 2)?;
            write_dest(m, d, 2, u32::from(sel))?;
            Ok(Outcome::Continue)
        }
        Mnemonic::Lar | Mnemonic::Lsl => lar_lsl(m, site),
        _ => verr_verw(m, site),
    }
}

fn require_cpl0(m: &Machine<'_>) -> Result<(), Fault> {
    if m.cpu.cpl() == 0 {
        Ok(())
    } else {
        Err(Fault::gp0())
    }
}

/// lgdt/lidt m16&32: a 16-bit limit and a 32-bit base (24 bits with a 16-bit
/// operand size).
fn load_table(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    require_cpl0(m)?;
    let ins = &site.ins;
    let r = mem_operand(m, ins)?;
    let addr = linear(m.cpu, r.seg, r.offset, 6, Access::Read)?;
    let mut b = [0u8; 6];
    read_linear(m, addr, &mut b)?;
    let limit = u16::from_le_bytes([b[0], b[1]]);
    let mut base = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    if matches!(ins.code(), Code::Lgdt_m1632_16 | Code::Lidt_m1632_16) {
        base &= 0x00ff_ffff;
    }
    let reg = TableReg { base, limit };
    if ins.mnemonic() == Mnemonic::Lgdt {
        m.cpu.gdtr = reg;
    } else {
        m.cpu.idtr = reg;
    }
    Ok(Outcome::Continue)
}

/// sgdt/sidt m: the limit, then the whole 32-bit base.
fn store_table(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let ins = &site.ins;
    let reg = if ins.mnemonic() == Mnemonic::Sgdt {
        m.cpu.gdtr
    } else {
        m.cpu.idtr
    };
    let r = mem_operand(m, ins)?;
    let addr = linear(m.cpu, r.seg, r.offset, 6, Access::Write)?;
    let mut b = [0u8; 6];
    b[..2].copy_from_slice(&reg.limit.to_le_bytes());
    b[2..].copy_from_slice(&reg.base.to_le_bytes());
    write_linear(m, addr, &b)?;
    Ok(Outcome::Continue)
}

/// lldt r/m16: a null selector unloads the LDT; otherwise a present LDT descriptor
/// in the GDT.
fn lldt(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    require_cpl0(m)?;
    let sel = read_op(m, &site.ins, 0, 2)? as u16;
    if is_null(sel) {
        m.cpu.ldtr = Segment {
            selector: sel,
            ..Segment::default()
        };
        return Ok(Outcome::Continue);
    }
    if sel & 4 != 0 {
        return Err(Fault::gp_sel(sel));
    }
    let e = fetch(m, sel)?.ok_or_else(|| Fault::gp_sel(sel))?;
    let d = e.desc;
    if !d.is_system() || d.typ() != sys::LDT {
        return Err(Fault::gp_sel(sel));
    }
    if !d.present() {
        return Err(Fault::np_sel(sel));
    }
    m.cpu.ldtr = d.to_segment(sel);
    Ok(Outcome::Continue)
}

/// ltr r/m16: an available TSS in the GDT, which becomes busy (in memory too).
fn ltr(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    require_cpl0(m)?;
    let sel = read_op(m, &site.ins, 0, 2)? as u16;
    if is_null(sel) {
        return Err(Fault::gp0());
    }
    if sel & 4 != 0 {
        return Err(Fault::gp_sel(sel));
    }
    let e = fetch(m, sel)?.ok_or_else(|| Fault::gp_sel(sel))?;
    let d = e.desc;
    if !d.is_system() || !matches!(d.typ(), sys::TSS16_AVAIL | sys::TSS32_AVAIL) {
        return Err(Fault::gp_sel(sel));
    }
    if !d.present() {
        return Err(Fault::np_sel(sel));
    }
    let d = set_type_bits(m, e, 2)?;
    m.cpu.tr = d.to_segment(sel);
    Ok(Outcome::Continue)
}

/// Whether `d`, named by a selector with `rpl`, is visible at the current CPL:
/// DPL >= max(CPL, RPL), conforming code segments exempt.
fn visible(m: &Machine<'_>, d: &Descriptor, rpl: u8) -> bool {
    d.conforming() || d.dpl() >= m.cpu.cpl().max(rpl)
}

/// The descriptor `sel` names, if it is not null and inside its table.
fn probe(m: &mut Machine<'_>, sel: u16) -> Result<Option<Descriptor>, Fault> {
    if is_null(sel) {
        return Ok(None);
    }
    Ok(fetch(m, sel)?.map(|e| e.desc))
}

/// lar/lsl r, r/m16: ZF=1 and the access rights or limit when the descriptor is of
/// an accepted type and visible; otherwise ZF=0 and the destination is unchanged.
fn lar_lsl(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let ins = &site.ins;
    let lar = ins.mnemonic() == Mnemonic::Lar;
    let sel = read_op(m, ins, 1, 2)? as u16;
    let dst = ins.op0_register();
    let value = probe(m, sel)?.and_then(|d| {
        let type_ok = !d.is_system()
            || if lar {
                matches!(
                    d.typ(),
                    sys::TSS16_AVAIL
                        | sys::LDT
                        | sys::TSS16_BUSY
                        | sys::CALL_GATE16
                        | sys::TASK_GATE
                        | sys::TSS32_AVAIL
                        | sys::TSS32_BUSY
                        | sys::CALL_GATE32
                )
            } else {
                matches!(
                    d.typ(),
                    sys::TSS16_AVAIL
                        | sys::LDT
                        | sys::TSS16_BUSY
                        | sys::TSS32_AVAIL
                        | sys::TSS32_BUSY
                )
            };
        (type_ok && visible(m, &d, (sel & 3) as u8)).then(|| {
            if !lar {
                d.limit()
            } else if dst.size() == 4 {
                d.hi & 0x00f0_ff00
            } else {
                d.hi & 0xff00
            }
        })
    });
    if let Some(v) = value {
        write_reg(m.ctx, dst, v);
    }
    set_zf(m, value.is_some());
    Ok(Outcome::Continue)
}

/// verr/verw r/m16: ZF=1 when the segment is readable (code or data) / writable
/// data, and visible.
fn verr_verw(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let ins = &site.ins;
    let write = match ins.mnemonic() {
        Mnemonic::Verr => false,
        Mnemonic::Verw => true,
        _ => return Err(Fault::ud()),
    };
    let sel = read_op(m, ins, 0, 2)? as u16;
    let ok = probe(m, sel)?.is_some_and(|d| {
        let kind_ok = if write { d.writable() } else { d.readable() };
        kind_ok && visible(m, &d, (sel & 3) as u8)
    });
    set_zf(m, ok);
    Ok(Outcome::Continue)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn setup() -> TestMachine {
        let mut t = TestMachine::new();
        t.set_gdt(5, desc(0x3000, 0x67, 0x89, 0)); // available 32-bit TSS
        t.set_gdt(6, desc(0x4000, 0x1f, 0x82, 0)); // LDT
        t.set_gdt(7, desc(0x4000, 0x1f, 0x02, 0)); // LDT, not present
        t.set_gdt(8, desc(0, 0xfffff, 0xf2, 0xc)); // DPL 3 data
        t.set_gdt(9, desc(0, 0xfffff, 0x98, 0xc)); // execute-only code
        t.set_gdt(10, desc(0, 0xfffff, 0x9e, 0xc)); // conforming code
        t.set_gdt(11, desc(0x1000, 0x1234, 0xec, 0)); // call gate (DPL 3)
        t.set_gdt(12, desc(0, 0xfffff, 0x90, 0xc)); // read-only data
        t.set_gdt(13, desc(0, 0, 0x8e, 0)); // interrupt gate (type 0xe)
        t
    }

    #[test]
    fn lgdt_sgdt_lidt_sidt() {
        let mut t = setup();
        t.ctx.gpr[3] = 0x5000;
        t.write_u16(0x5000, 0x3ff);
        t.write_u32(0x5002, 0x1234_5678);
        // lgdt [ebx]
        assert_eq!(t.run(&[0x0f, 0x01, 0x13]), Outcome::Continue);
        assert_eq!(
            t.cpu.gdtr,
            TableReg {
                base: 0x1234_5678,
                limit: 0x3ff
            }
        );
        // o16 lidt [ebx]: 24-bit base
        assert_eq!(t.run(&[0x66, 0x0f, 0x01, 0x1b]), Outcome::Continue);
        assert_eq!(
            t.cpu.idtr,
            TableReg {
                base: 0x34_5678,
                limit: 0x3ff
            }
        );
        // sidt [ebx+8], sgdt [ebx+16]
        assert_eq!(t.run(&[0x0f, 0x01, 0x4b, 0x08]), Outcome::Continue);
        assert_eq!(t.read_u16(0x5008), 0x3ff);
        assert_eq!(t.read_u32(0x500a), 0x34_5678);
        assert_eq!(t.run(&[0x0f, 0x01, 0x43, 0x10]), Outcome::Continue);
        assert_eq!(t.read_u32(0x5012), 0x1234_5678);
        // lgdt at CPL 3: #GP(0); sgdt is allowed there.
        t.set_cpl(3);
        assert_eq!(t.run(&[0x0f, 0x01, 0x13]), gp(0));
        assert_eq!(t.run(&[0x0f, 0x01, 0x43, 0x10]), Outcome::Continue);
        // A register operand is #UD (iced decodes it as another instruction or invalid).
    }

    #[test]
    fn lldt_and_sldt() {
        let mut t = setup();
        // lldt ax
        t.ctx.gpr[0] = 0x30;
        assert_eq!(t.run(&[0x0f, 0x00, 0xd0]), Outcome::Continue);
        assert_eq!(
            t.cpu.ldtr,
            Segment {
                selector: 0x30,
                base: 0x4000,
                limit: 0x1f,
                attrs: 0x82
            }
        );
        // sldt ecx (zero-extends), sldt cx (16 bits), sldt [ebx]
        t.ctx.gpr[1] = 0xffff_ffff;
        assert_eq!(t.run(&[0x0f, 0x00, 0xc1]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[1], 0x30);
        t.ctx.gpr[1] = 0xffff_ffff;
        assert_eq!(t.run(&[0x66, 0x0f, 0x00, 0xc1]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[1], 0xffff_0030);
        t.ctx.gpr[3] = 0x5000;
        t.write_u32(0x5000, 0xaaaa_aaaa);
        assert_eq!(t.run(&[0x0f, 0x00, 0x03]), Outcome::Continue);
        assert_eq!(t.read_u32(0x5000), 0xaaaa_0030);
        // Errors.
        for (sel, want) in [
            (0x28u32, gp(0x28)),         // TSS, not an LDT
            (0x38, exc(11, Some(0x38))), // not present
            (0x34, gp(0x34)),            // TI = 1
            (0x800, gp(0x800)),          // beyond the GDT
        ] {
            t.ctx.gpr[0] = sel;
            assert_eq!(t.run(&[0x0f, 0x00, 0xd0]), want, "{sel:#x}");
        }
        assert_eq!(t.cpu.ldtr.selector, 0x30);
        // Null unloads.
        t.ctx.gpr[0] = 0;
        assert_eq!(t.run(&[0x0f, 0x00, 0xd0]), Outcome::Continue);
        assert_eq!(t.cpu.ldtr, Segment::default());
        t.set_cpl(3);
        assert_eq!(t.run(&[0x0f, 0x00, 0xd0]), gp(0));
    }

    #[test]
    fn ltr_marks_busy_and_str() {
        let mut t = setup();
        // ltr [ebx]
        t.ctx.gpr[3] = 0x5000;
        t.write_u16(0x5000, 0x28);
        assert_eq!(t.run(&[0x0f, 0x00, 0x1b]), Outcome::Continue);
        assert_eq!(
            t.cpu.tr,
            Segment {
                selector: 0x28,
                base: 0x3000,
                limit: 0x67,
                attrs: 0x8b
            }
        );
        assert_eq!(t.read_u8(GDT_BASE + 5 * 8 + 5), 0x8b, "busy in memory");
        // Loading it again: busy → #GP(sel).
        assert_eq!(t.run(&[0x0f, 0x00, 0x1b]), gp(0x28));
        // str eax
        assert_eq!(t.run(&[0x0f, 0x00, 0xc8]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0x28);
        t.write_u16(0x5000, 0);
        assert_eq!(t.run(&[0x0f, 0x00, 0x1b]), gp(0));
        t.write_u16(0x5000, 0x10);
        assert_eq!(t.run(&[0x0f, 0x00, 0x1b]), gp(0x10));
    }

    #[test]
    fn lar_lsl() {
        let mut t = setup();
        // lar eax, ecx
        let lar = [0x0f, 0x02, 0xc1];
        let lsl = [0x0f, 0x03, 0xc1];
        t.ctx.gpr[0] = 0xdead_beef;
        t.ctx.rflags |= 0x40;
        // Null selector: ZF = 0, eax unchanged.
        t.ctx.gpr[1] = 0;
        assert_eq!(t.run(&lar), Outcome::Continue);
        assert!(!t.zf());
        assert_eq!(t.ctx.gpr[0], 0xdead_beef);
        // Flat code.
        t.ctx.gpr[1] = 0x08;
        assert_eq!(t.run(&lar), Outcome::Continue);
        assert!(t.zf());
        assert_eq!(t.ctx.gpr[0], 0x00c0_9b00);
        assert_eq!(t.run(&lsl), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0xffff_ffff);
        // 16-bit: lar ax, cx
        t.ctx.gpr[0] = 0x1111_1111;
        assert_eq!(t.run(&[0x66, 0x0f, 0x02, 0xc1]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0x1111_9b00);
        // TSS: lar and lsl accept it.
        t.ctx.gpr[1] = 0x28;
        assert_eq!(t.run(&lsl), Outcome::Continue);
        assert!(t.zf());
        assert_eq!(t.ctx.gpr[0], 0x67);
        // Call gate: lar yes (DPL 3), lsl no.
        t.ctx.gpr[1] = 0x58;
        assert_eq!(t.run(&lsl), Outcome::Continue);
        assert!(!t.zf());
        assert_eq!(t.run(&lar), Outcome::Continue);
        assert!(t.zf());
        assert_eq!(t.ctx.gpr[0], 0x0000_ec00);
        // Interrupt gate: neither.
        t.ctx.gpr[1] = 0x68;
        assert_eq!(t.run(&lar), Outcome::Continue);
        assert!(!t.zf());
        // Beyond the GDT.
        t.ctx.gpr[1] = 0x1000;
        assert_eq!(t.run(&lar), Outcome::Continue);
        assert!(!t.zf());
        // Visibility at CPL 3: DPL 0 data no, DPL 3 data yes, conforming code yes.
        t.set_cpl(3);
        t.ctx.gpr[1] = 0x10;
        assert_eq!(t.run(&lar), Outcome::Continue);
        assert!(!t.zf());
        t.ctx.gpr[1] = 0x43;
        assert_eq!(t.run(&lar), Outcome::Continue);
        assert!(t.zf());
        t.ctx.gpr[1] = 0x53;
        assert_eq!(t.run(&lsl), Outcome::Continue);
        assert!(t.zf());
        // RPL 3 at CPL 0 hides DPL 0 segments too.
        t.set_cpl(0);
        t.ctx.gpr[1] = 0x13;
        assert_eq!(t.run(&lar), Outcome::Continue);
        assert!(!t.zf());
    }

    #[test]
    fn verr_verw() {
        let mut t = setup();
        let verr = [0x0f, 0x00, 0xe1]; // verr cx
        let verw = [0x0f, 0x00, 0xe9]; // verw cx
        let check = |t: &mut TestMachine, sel: u16, r: bool, w: bool| {
            t.ctx.gpr[1] = u32::from(sel);
            assert_eq!(t.run(&verr), Outcome::Continue);
            assert_eq!(t.zf(), r, "verr {sel:#x}");
            assert_eq!(t.run(&verw), Outcome::Continue);
            assert_eq!(t.zf(), w, "verw {sel:#x}");
        };
        check(&mut t, 0x10, true, true);
        check(&mut t, 0x08, true, false);
        check(&mut t, 0x48, false, false); // execute-only
        check(&mut t, 0x60, true, false); // read-only data
        check(&mut t, 0x28, false, false); // TSS
        check(&mut t, 0, false, false);
        check(&mut t, 0x13, false, false); // RPL 3 vs DPL 0
        t.set_cpl(3);
        check(&mut t, 0x43, true, true);
        check(&mut t, 0x53, true, false); // conforming
        check(&mut t, 0x10, false, false);
    }
}
