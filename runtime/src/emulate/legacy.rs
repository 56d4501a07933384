//! The integer instructions that 64-bit mode lacks: the BCD adjustments, bound and
//! arpl, on top of the translator's `semantics` module.

use super::addressing::{
    dest, gpr_index, mem_operand, read_mem, read_op, read_reg, write_lin, Dest,
};
use super::{vector, EmuResult, Fault, Machine, Outcome};
use bt86_translator::semantics;
use bt86_translator::CalloutSite;
use iced_x86::{Code, Mnemonic};

/// CF PF AF ZF SF OF: the flags these instructions write.
const STATUS: u64 = 0x08d5;
const ZF: u64 = 1 << 6;

fn flags(m: &Machine<'_>) -> u32 {
    m.ctx.rflags as u32
}

fn set_status(m: &mut Machine<'_>, f: u32) {
    m.ctx.rflags = (m.ctx.rflags & !STATUS) | (u64::from(f) & STATUS);
}

fn set_al(m: &mut Machine<'_>, al: u8) {
    m.ctx.gpr[0] = (m.ctx.gpr[0] & !0xff) | u32::from(al);
}

fn set_ax(m: &mut Machine<'_>, ax: u16) {
    m.ctx.gpr[0] = (m.ctx.gpr[0] & !0xffff) | u32::from(ax);
}

pub(crate) fn emulate(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let ins = &site.ins;
    let al = m.ctx.gpr[0] as u8;
    let ax = m.ctx.gpr[0] as u16;
    match ins.mnemonic() {
        Mnemonic::Daa => {
            let (al, fl) = semantics::daa(al, flags(m));
            set_al(m, al);
            set_status(m, fl);
        }
        Mnemonic::Das => {
            let before = flags(m);
            let (new_al, mut fl) = semantics::das(al, before);
            // The SDM's das keeps the borrow of the first step (`CF ← old_CF or
            // borrow from AL − 6`; unlike daa, no `ELSE CF ← 0` follows), which
            // `semantics::das` drops: al < 6 with the low adjustment borrows.
            if (al & 0x0f > 9 || before & semantics::flag::AF != 0) && al < 6 {
                fl |= semantics::flag::CF;
            }
            set_al(m, new_al);
            set_status(m, fl);
        }
        Mnemonic::Aaa | Mnemonic::Aas => {
            let (ax, fl) = semantics::aaa_aas(ax, flags(m), ins.mnemonic() == Mnemonic::Aaa);
            set_ax(m, ax);
            set_status(m, fl);
        }
        Mnemonic::Aam => {
            let imm = ins.immediate8();
            if imm == 0 {
                return Err(Fault::Exception {
                    vector: vector::DE,
                    error: None,
                });
            }
            let (ax, fl) = semantics::aam(al, imm, flags(m));
            set_ax(m, ax);
            set_status(m, fl);
        }
        Mnemonic::Aad => {
            let (ax, fl) = semantics::aad(ax, ins.immediate8(), flags(m));
            set_ax(m, ax);
            set_status(m, fl);
        }
        Mnemonic::Bound => bound(m, site)?,
        Mnemonic::Arpl => arpl(m, site)?,
        _ => return Err(Fault::ud()),
    }
    Ok(Outcome::Continue)
}

/// bound r, m: #BR unless lower <= r <= upper (signed).
fn bound(m: &mut Machine<'_>, site: &CalloutSite) -> Result<(), Fault> {
    let ins = &site.ins;
    let size = match ins.code() {
        Code::Bound_r32_m3232 => 4,
        Code::Bound_r16_m1616 => 2,
        _ => return Err(Fault::ud()),
    };
    let r = mem_operand(m, ins)?;
    let lower = read_mem(m, r.seg, r.offset, size)?;
    let upper = read_mem(m, r.seg, r.offset.wrapping_add(size), size)?;
    let index = read_reg(m.ctx, ins.op0_register());
    let signed = |v: u32| {
        if size == 2 {
            i32::from(v as u16 as i16)
        } else {
            v as i32
        }
    };
    let (i, lo, hi) = (signed(index), signed(lower), signed(upper));
    if i < lo || i > hi {
        return Err(Fault::Exception {
            vector: vector::BR,
            error: None,
        });
    }
    Ok(())
}

/// arpl r/m16, r16: raises the destination's RPL to the source's; ZF says whether
/// it changed.
fn arpl(m: &mut Machine<'_>, site: &CalloutSite) -> Result<(), Fault> {
    let ins = &site.ins;
    let d = dest(m, ins, 0, 2)?;
    let dst = read_op(m, ins, 0, 2)? as u16;
    let src = read_reg(m.ctx, ins.op1_register()) as u16;
    let (new, changed) = semantics::arpl(dst, src);
    if changed {
        match d {
            // Only the low 16 bits of a register change, whatever its width.
            Dest::Reg(r) => {
                let i = gpr_index(r).ok_or_else(Fault::ud)?;
                m.ctx.gpr[i] = (m.ctx.gpr[i] & !0xffff) | u32::from(new);
            }
            Dest::Mem(addr) => write_lin(m, addr, 2, u32::from(new))?,
        }
        m.ctx.rflags |= ZF;
    } else {
        m.ctx.rflags &= !ZF;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use semantics::flag;

    #[test]
    fn daa_das_keep_other_bits() {
        let mut t = TestMachine::new();
        t.ctx.gpr[0] = 0x1234_56ae;
        t.ctx.rflags = 0x402; // DF set
        assert_eq!(t.run(&[0x27]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0x1234_5614);
        assert_ne!(t.flags() & flag::CF, 0);
        assert_ne!(t.flags() & 0x400, 0, "DF kept");
        t.ctx.gpr[0] = 0xee;
        t.ctx.rflags = 0x3;
        assert_eq!(t.run(&[0x2f]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0x88);
        // das with AF and al < 6: the low adjustment borrows, so CF is set.
        t.ctx.gpr[0] = 0x01;
        t.ctx.rflags = 0x2 | u64::from(flag::AF);
        assert_eq!(t.run(&[0x2f]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0xfb);
        assert_ne!(t.flags() & flag::CF, 0);
        // Without AF and a low nibble <= 9 nothing borrows.
        t.ctx.gpr[0] = 0x05;
        t.ctx.rflags = 0x2;
        assert_eq!(t.run(&[0x2f]), Outcome::Continue);
        assert_eq!((t.ctx.gpr[0], t.flags() & flag::CF), (0x05, 0));
    }

    #[test]
    fn aaa_aas_aam_aad() {
        let mut t = TestMachine::new();
        t.ctx.gpr[0] = 0xffff_000b;
        assert_eq!(t.run(&[0x37]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0xffff_0101);
        t.ctx.gpr[0] = 0x02ff;
        assert_eq!(t.run(&[0x3f]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0x0109);
        // aam (base 10): 47 → 0x0407
        t.ctx.gpr[0] = 0xabcd_0000 | 47;
        assert_eq!(t.run(&[0xd4, 0x0a]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0xabcd_0407);
        // aad
        assert_eq!(t.run(&[0xd5, 0x0a]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0xabcd_002f);
        // aam 0: #DE, nothing changes.
        let rf = t.ctx.rflags;
        assert_eq!(t.run(&[0xd4, 0x00]), exc(0, None));
        assert_eq!((t.ctx.gpr[0], t.ctx.rflags), (0xabcd_002f, rf));
        // aad 0: al = al.
        assert_eq!(t.run(&[0xd5, 0x00]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0xabcd_002f);
        assert!(!t.zf());
    }

    #[test]
    fn bound_signed() {
        let mut t = TestMachine::new();
        t.ctx.gpr[3] = 0x5000;
        t.write_u32(0x5000, (-5i32) as u32);
        t.write_u32(0x5004, 10);
        // bound eax, [ebx]
        for (v, ok) in [
            (0u32, true),
            ((-5i32) as u32, true),
            (10, true),
            (11, false),
            ((-6i32) as u32, false),
        ] {
            t.ctx.gpr[0] = v;
            let want = if ok { Outcome::Continue } else { exc(5, None) };
            assert_eq!(t.run(&[0x62, 0x03]), want, "{v:#x}");
        }
        // 16-bit: bound ax, [ebx] with bounds -2..=3 (words)
        t.write_u16(0x5000, (-2i16) as u16);
        t.write_u16(0x5002, 3);
        t.ctx.gpr[0] = 0x1234_fffe;
        assert_eq!(t.run(&[0x66, 0x62, 0x03]), Outcome::Continue);
        t.ctx.gpr[0] = 0x0000_0004;
        assert_eq!(t.run(&[0x66, 0x62, 0x03]), exc(5, None));
    }

    #[test]
    fn arpl_register_and_memory() {
        let mut t = TestMachine::new();
        // arpl ax, cx
        t.ctx.gpr[0] = 0xffff_0010;
        t.ctx.gpr[1] = 0x23;
        assert_eq!(t.run(&[0x63, 0xc8]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0xffff_0013);
        assert!(t.zf());
        assert_eq!(t.run(&[0x63, 0xc8]), Outcome::Continue);
        assert!(!t.zf());
        // arpl [ebx], cx
        t.ctx.gpr[3] = 0x5000;
        t.write_u32(0x5000, 0xaaaa_0008);
        assert_eq!(t.run(&[0x63, 0x0b]), Outcome::Continue);
        assert_eq!(t.read_u32(0x5000), 0xaaaa_000b);
        assert!(t.zf());
    }
}
