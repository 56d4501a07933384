//! The read-modify-write operations of adaptive page-table stores, run on the host
//! CPU itself: the guest's arithmetic flags are loaded, the same instruction runs
//! on registers, and the flags it leaves are taken back. The result, defined and
//! "undefined" flags alike, is what the CPU gives (the memory form and the register
//! form of these instructions compute the same thing).
//!
//! The only unsafe code is the inline assembly below: it touches only the
//! registers it names and the stack (for `pushfq`/`popfq`), and the flags image
//! it loads holds nothing but arithmetic flags and the fixed bit 1.

use core::arch::asm;

/// CF, PF, AF, ZF, SF, OF.
pub(crate) const ARITH: u64 = 0x8d5;

/// A read-modify-write operation on a memory destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rmw {
    And,
    Or,
    Xor,
    Add,
    Sub,
    Adc,
    Sbb,
    Inc,
    Dec,
    Not,
    Neg,
    Bts,
    Btr,
    Btc,
    /// `cmpxchg`: the accumulator is compared and may be loaded.
    Cmpxchg,
}

/// What the operation leaves: the destination's new value, the accumulator (for
/// `cmpxchg`) and the flags (only `ARITH` bits are meaningful).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Done {
    pub value: u32,
    pub acc: u32,
    pub flags: u64,
}

macro_rules! run_op {
    ($text:literal, $size:literal, $a:ident, $b:ident, $f:ident) => {
        // SAFETY: see the module comment: registers named here and the stack only.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!($text, " {a:", $size, "}, {b:", $size, "}"),
                "pushfq",
                "pop {f}",
                a = inout(reg) $a,
                b = in(reg) $b,
                f = inout(reg) $f,
            )
        }
    };
    ($text:literal, $size:literal, $a:ident, $f:ident) => {
        // SAFETY: see the module comment: registers named here and the stack only.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!($text, " {a:", $size, "}"),
                "pushfq",
                "pop {f}",
                a = inout(reg) $a,
                f = inout(reg) $f,
            )
        }
    };
}

/// Runs `op` on `dest` (the memory operand's value) and `src` (register or
/// immediate; the bit number for bts/btr/btc; the new value for cmpxchg) with
/// `size` bytes (1, 2, 4; bts/btr/btc: 2 or 4), the accumulator `acc` and the
/// guest's flags `flags`.
pub(crate) fn run(op: Rmw, size: u32, dest: u32, src: u32, acc: u32, flags: u64) -> Done {
    let mut a = u64::from(dest);
    let mut b = u64::from(src);
    let mut f = (flags & ARITH) | 2;
    let mut acc = u64::from(acc);
    if matches!(op, Rmw::Bts | Rmw::Btr | Rmw::Btc) {
        b &= u64::from(size * 8 - 1);
    }
    macro_rules! sized {
        ($text:literal) => {
            match size {
                1 => run_op!($text, "l", a, b, f),
                2 => run_op!($text, "x", a, b, f),
                _ => run_op!($text, "e", a, b, f),
            }
        };
        ($text:literal, unary) => {
            match size {
                1 => run_op!($text, "l", a, f),
                2 => run_op!($text, "x", a, f),
                _ => run_op!($text, "e", a, f),
            }
        };
    }
    match op {
        Rmw::And => sized!("and"),
        Rmw::Or => sized!("or"),
        Rmw::Xor => sized!("xor"),
        Rmw::Add => sized!("add"),
        Rmw::Sub => sized!("sub"),
        Rmw::Adc => sized!("adc"),
        Rmw::Sbb => sized!("sbb"),
        Rmw::Inc => sized!("inc", unary),
        Rmw::Dec => sized!("dec", unary),
        Rmw::Not => sized!("not", unary),
        Rmw::Neg => sized!("neg", unary),
        Rmw::Bts if size == 2 => run_op!("bts", "x", a, b, f),
        Rmw::Bts => run_op!("bts", "e", a, b, f),
        Rmw::Btr if size == 2 => run_op!("btr", "x", a, b, f),
        Rmw::Btr => run_op!("btr", "e", a, b, f),
        Rmw::Btc if size == 2 => run_op!("btc", "x", a, b, f),
        Rmw::Btc => run_op!("btc", "e", a, b, f),
        Rmw::Cmpxchg => {
            // SAFETY: see the module comment: registers named here and the stack only.
            unsafe {
                match size {
                    1 => asm!("push {f}", "popfq", "cmpxchg {a:l}, {b:l}", "pushfq", "pop {f}",
                        a = inout(reg) a, b = in(reg) b, f = inout(reg) f, inout("rax") acc),
                    2 => asm!("push {f}", "popfq", "cmpxchg {a:x}, {b:x}", "pushfq", "pop {f}",
                        a = inout(reg) a, b = in(reg) b, f = inout(reg) f, inout("rax") acc),
                    _ => asm!("push {f}", "popfq", "cmpxchg {a:e}, {b:e}", "pushfq", "pop {f}",
                        a = inout(reg) a, b = in(reg) b, f = inout(reg) f, inout("rax") acc),
                }
            }
        }
    }
    let mask = if size >= 4 { u64::from(u32::MAX) } else { (1u64 << (size * 8)) - 1 };
    Done { value: (a & mask) as u32, acc: acc as u32, flags: f & ARITH }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CF: u64 = 1;
    const ZF: u64 = 0x40;
    const SF: u64 = 0x80;
    const OF: u64 = 0x800;

    #[test]
    fn logic_clears_carry_and_sets_zero() {
        let d = run(Rmw::And, 1, 0x67, 0xfd, 0, CF | OF);
        assert_eq!(d.value, 0x65);
        assert_eq!(d.flags & (CF | OF | ZF), 0);
        let d = run(Rmw::And, 4, 0x0f, 0xf0, 0, 0);
        assert_eq!((d.value, d.flags & ZF), (0, ZF));
    }

    #[test]
    fn arithmetic_flags_and_sizes() {
        let d = run(Rmw::Add, 1, 0xff, 1, 0, 0);
        assert_eq!((d.value, d.flags & (CF | ZF)), (0, CF | ZF));
        let d = run(Rmw::Sub, 2, 0, 1, 0, 0);
        assert_eq!((d.value, d.flags & (CF | SF)), (0xffff, CF | SF));
        let d = run(Rmw::Adc, 4, 1, 1, 0, CF);
        assert_eq!(d.value, 3, "adc takes the guest's carry");
        let d = run(Rmw::Inc, 4, 0x7fff_ffff, 0, 0, CF);
        assert_eq!((d.value, d.flags & (CF | OF)), (0x8000_0000, CF | OF), "inc keeps CF");
        assert_eq!(run(Rmw::Not, 2, 0x00ff, 0, 0, 0).value, 0xff00);
        assert_eq!(run(Rmw::Neg, 4, 1, 0, 0, 0).value, u32::MAX);
    }

    #[test]
    fn bit_operations_take_the_old_bit_into_carry() {
        let d = run(Rmw::Btr, 4, 0x67, 1, 0, 0);
        assert_eq!((d.value, d.flags & CF), (0x65, CF));
        let d = run(Rmw::Bts, 4, 0, 33, 0, CF);
        assert_eq!((d.value, d.flags & CF), (2, 0), "the bit number wraps at the size");
        assert_eq!(run(Rmw::Btc, 2, 0x8000, 15, 0, 0).value, 0);
    }

    #[test]
    fn cmpxchg_loads_or_compares() {
        let d = run(Rmw::Cmpxchg, 4, 5, 9, 5, 0);
        assert_eq!((d.value, d.acc, d.flags & ZF), (9, 5, ZF));
        let d = run(Rmw::Cmpxchg, 4, 5, 9, 6, 0);
        assert_eq!((d.value, d.acc, d.flags & ZF), (5, 5, 0));
    }
}
