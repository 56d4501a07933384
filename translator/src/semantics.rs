//! Guest semantics of the integer instructions that 64-bit mode lacks and the VMM
//! therefore emulates: the BCD adjustments and arpl. Flags that the manuals call
//! undefined are computed the way Intel processors leave them where that is
//! documented by testing (OF after daa/das follows the result's sign change), and
//! otherwise left as they were.

/// EFLAGS bits.
pub mod flag {
    pub const CF: u32 = 1 << 0;
    pub const PF: u32 = 1 << 2;
    pub const AF: u32 = 1 << 4;
    pub const ZF: u32 = 1 << 6;
    pub const SF: u32 = 1 << 7;
    pub const OF: u32 = 1 << 11;
}
use flag::*;

fn szp(v: u8) -> u32 {
    let mut f = 0;
    if v == 0 {
        f |= ZF;
    }
    if v & 0x80 != 0 {
        f |= SF;
    }
    if v.count_ones().is_multiple_of(2) {
        f |= PF;
    }
    f
}

/// daa: returns (al, flags).
pub fn daa(al: u8, flags: u32) -> (u8, u32) {
    let (old_al, old_cf) = (al, flags & CF != 0);
    let mut al = al;
    let mut f = flags & !(CF | AF | SF | ZF | PF | OF);
    if old_al & 0x0f > 9 || flags & AF != 0 {
        al = al.wrapping_add(6);
        f |= AF;
    }
    if old_al > 0x99 || old_cf {
        al = al.wrapping_add(0x60);
        f |= CF;
    }
    if (old_al ^ al) & al & 0x80 != 0 {
        f |= OF;
    }
    (al, f | szp(al))
}

/// das: returns (al, flags).
pub fn das(al: u8, flags: u32) -> (u8, u32) {
    let (old_al, old_cf) = (al, flags & CF != 0);
    let mut al = al;
    let mut f = flags & !(CF | AF | SF | ZF | PF | OF);
    if old_al & 0x0f > 9 || flags & AF != 0 {
        al = al.wrapping_sub(6);
        f |= AF;
        if old_al < 6 {
            f |= CF; // the borrow of the first step survives (SDM)
        }
    }
    if old_al > 0x99 || old_cf {
        al = al.wrapping_sub(0x60);
        f |= CF;
    }
    if (old_al ^ al) & old_al & 0x80 != 0 {
        f |= OF;
    }
    (al, f | szp(al))
}

/// aaa (`add = true`) or aas, as the SDM gives them (a 16-bit add/subtract, so the
/// adjustment can carry into or borrow from AH): returns (ax, flags).
pub fn aaa_aas(ax: u16, flags: u32, add: bool) -> (u16, u32) {
    let mut f = flags & !(CF | AF);
    let mut ax = ax;
    if ax & 0x0f > 9 || flags & AF != 0 {
        ax = if add {
            ax.wrapping_add(0x106)
        } else {
            let t = ax.wrapping_sub(6);
            (t & 0x00ff) | (u16::from(((t >> 8) as u8).wrapping_sub(1)) << 8)
        };
        f |= CF | AF;
    }
    (ax & 0xff0f, f)
}

/// aam with base `imm` (nonzero): returns (ax, flags).
pub fn aam(al: u8, imm: u8, flags: u32) -> (u16, u32) {
    let ah = al / imm;
    let al = al % imm;
    let f = flags & !(SF | ZF | PF | CF | AF | OF);
    ((u16::from(ah) << 8) | u16::from(al), f | szp(al))
}

/// aad with base `imm`: returns (ax, flags).
pub fn aad(ax: u16, imm: u8, flags: u32) -> (u16, u32) {
    let al = (ax & 0xff) as u8;
    let ah = (ax >> 8) as u8;
    let r = al.wrapping_add(ah.wrapping_mul(imm));
    let f = flags & !(SF | ZF | PF | CF | AF | OF);
    (u16::from(r), f | szp(r))
}

/// arpl dst, src: returns (new dst, ZF set?).
pub fn arpl(dst: u16, src: u16) -> (u16, bool) {
    if dst & 3 < src & 3 {
        ((dst & !3) | (src & 3), true)
    } else {
        (dst, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daa_adjusts_both_nibbles() {
        // 0x79 + 0x35 = 0xae; daa → 0x14 with CF (79 + 35 = 114).
        let (al, f) = daa(0xae, 0);
        assert_eq!(al, 0x14);
        assert!(f & CF != 0 && f & AF != 0);
    }

    #[test]
    fn das_borrows() {
        // 0x35 - 0x47 = 0xee with CF; das → 0x88 with CF (35 - 47 = -12 → 88).
        let (al, f) = das(0xee, CF);
        assert_eq!(al, 0x88);
        assert!(f & CF != 0);
    }

    #[test]
    fn das_keeps_the_borrow_of_the_low_adjustment() {
        let (al, f) = das(0x03, AF);
        assert_eq!(al, 0xfd);
        assert!(f & CF != 0);
    }

    #[test]
    fn aaa_carries_into_ah() {
        let (ax, f) = aaa_aas(0x000b, 0, true);
        assert_eq!(ax, 0x0101);
        assert!(f & CF != 0);
        let (ax, f) = aaa_aas(0x0005, 0, true);
        assert_eq!(ax, 0x0005);
        assert_eq!(f & CF, 0);
    }

    #[test]
    fn aas_borrows_from_ah() {
        // ah=2 al=0xff (e.g. 0 - 1): aas → ah=1, al=9.
        let (ax, f) = aaa_aas(0x02ff, 0, false);
        assert_eq!(ax, 0x0109);
        assert!(f & CF != 0);
    }

    #[test]
    fn aam_aad_round_trip() {
        let (ax, _) = aam(47, 10, 0);
        assert_eq!(ax, 0x0407);
        let (ax, f) = aad(0x0407, 10, 0);
        assert_eq!(ax, 47);
        assert_eq!(f & ZF, 0);
        let (ax, _) = aam(0xab, 16, 0);
        assert_eq!(ax, 0x0a0b);
    }

    #[test]
    fn arpl_raises_rpl() {
        assert_eq!(arpl(0x10, 0x23), (0x13, true));
        assert_eq!(arpl(0x13, 0x20), (0x13, false));
    }
}

/// The arithmetic flags of `a - b` on `size`-byte operands (cmp, cmps, scas).
pub fn sub_flags(a: u32, b: u32, size: u32) -> u32 {
    let bits = size * 8;
    let mask = if bits >= 32 { u32::MAX } else { (1 << bits) - 1 };
    let (a, b) = (a & mask, b & mask);
    let r = a.wrapping_sub(b) & mask;
    let sign = 1 << (bits - 1);
    let mut f = 0;
    if a < b {
        f |= CF;
    }
    if r == 0 {
        f |= ZF;
    }
    if r & sign != 0 {
        f |= SF;
    }
    if (r as u8).count_ones().is_multiple_of(2) {
        f |= PF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= AF;
    }
    if (a ^ b) & (a ^ r) & sign != 0 {
        f |= OF;
    }
    f
}

#[cfg(test)]
mod sub_flags_tests {
    use super::*;

    #[test]
    fn matches_known_compares() {
        assert_eq!(sub_flags(1, 1, 4), ZF | PF);
        assert_eq!(sub_flags(0, 1, 1), CF | SF | PF | AF);
        assert_eq!(sub_flags(0x80, 1, 1), OF | AF);
        assert_eq!(sub_flags(0x8000_0000, 1, 4), OF | AF | PF);
        assert_eq!(sub_flags(0x1_0005, 3, 2), 0);
    }
}
