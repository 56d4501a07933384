//! x87/SSE state saves: `fxsave`, `fnsave`/`fsave`, `fnstenv`/`fstenv`.
//!
//! Run natively, these would hand the guest host state: the x87 instruction and
//! data pointers hold the host address of the last x87 instruction (translated
//! code) and the host's CS 0x33, and a 64-bit `fxsave` also stores XMM8–15 in
//! bytes 288–415, which a 32-bit CPU leaves alone. So the host instruction saves
//! into the context's `fpu_image`, the pointer fields are zeroed (what an AMD CPU
//! stores when no x87 exception is pending; the guest's own pointers are not
//! tracked), and only the bytes a 32-bit CPU writes are copied to the guest, with
//! `xmm8` (never a guest register) as the copy register.
//!
//! Fault first: the guest's first and last bytes are read and written back before
//! anything happens, so a #PF (or #GP for a misaligned `fxsave`) leaves the x87
//! state and guest memory as they were. The effective address lives in `r9d`.

use super::ident::materialize_ea;
use super::{Builder, Flow};
use crate::abi::off;
use crate::emit::{ctx, gmem, ice, ins2m, ins2rm, EmitError};
use iced_x86::{Code, Instruction, Register};
use std::ops::Range;

/// How a save instruction lays out its image.
struct Layout {
    /// Bytes a 32-bit CPU writes.
    len: usize,
    /// The instruction/data pointer fields (host addresses and selectors).
    pointers: &'static [(usize, usize)],
    /// `fxsave`: the area must be 16-byte aligned (#GP otherwise).
    aligned: bool,
}

fn layout(code: Code) -> Option<Layout> {
    // 32-bit formats: FIP at 12, FCS at 16 (FOP above it), FDP at 20, FDS at 24.
    const ENV32: &[(usize, usize)] = &[(12, 18), (20, 28)];
    // 16-bit formats: IP at 6, CS at 8, operand offset at 10, selector at 12.
    const ENV16: &[(usize, usize)] = &[(6, 14)];
    let l = |len, pointers, aligned| Some(Layout { len, pointers, aligned });
    match code {
        // FIP, FCS at 8..14; FDP, FDS at 16..22 (reserved words zeroed with them).
        Code::Fxsave_m512byte => l(288, &[(8, 24)], true),
        Code::Fnsave_m108byte | Code::Fsave_m108byte => l(108, ENV32, false),
        Code::Fnstenv_m28byte | Code::Fstenv_m28byte => l(28, ENV32, false),
        Code::Fnsave_m94byte | Code::Fsave_m94byte => l(94, ENV16, false),
        Code::Fnstenv_m14byte | Code::Fstenv_m14byte => l(14, ENV16, false),
        _ => None,
    }
}

pub(super) fn save(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    let i = b.ins;
    let Some(l) = layout(i.code()) else {
        return super::special::raise_ud(b);
    };
    materialize_ea(b, &i, Register::R9D)?;
    probe(b, &l)?;
    // The same instruction (`fsave`/`fstenv` keep their `wait`, and its #MF).
    b.a.ins(&Instruction::with1(i.code(), ctx(off::FPU_IMAGE)).map_err(ice)?)?;
    for &(start, end) in l.pointers {
        zero_image(b, start..end)?;
    }
    copy_out(b, l.len)?;
    Ok(Flow::Next)
}

/// Reads and writes back the first and last bytes of the guest area (with
/// `movdqa` for `fxsave`, which also checks the alignment).
fn probe(b: &mut Builder<'_>, l: &Layout) -> Result<(), EmitError> {
    for at in [0, l.len - if l.aligned { 16 } else { 1 }] {
        let m = gmem(Register::R9D, at as i64);
        if l.aligned {
            b.a.ins(&ins2rm(Code::Movdqa_xmm_xmmm128, Register::XMM8, m))?;
            b.a.ins(&ins2m(Code::Movdqa_xmmm128_xmm, m, Register::XMM8))?;
        } else {
            b.a.ins(&ins2rm(Code::Mov_r8_rm8, Register::R10L, m))?;
            b.a.ins(&ins2m(Code::Mov_rm8_r8, m, Register::R10L))?;
        }
    }
    Ok(())
}

/// Zeroes `range` of the host image (plain stores: the guest's flags stay).
fn zero_image(b: &mut Builder<'_>, range: Range<usize>) -> Result<(), EmitError> {
    b.a.ins(&Instruction::with2(Code::Mov_r32_imm32, Register::R10D, 0u32).map_err(ice)?)?;
    each_piece(range, 8, |at, size| {
        let m = ctx(off::FPU_IMAGE + at);
        b.a.ins(&ins2m(store_code(size), m, sized_r10(size)))
    })
}

/// Copies the first `len` bytes of the host image to the guest area.
fn copy_out(b: &mut Builder<'_>, len: usize) -> Result<(), EmitError> {
    each_piece(0..len, 16, |at, size| {
        let src = ctx(off::FPU_IMAGE + at);
        let dst = gmem(Register::R9D, i64::from(at));
        if size == 16 {
            b.a.ins(&ins2rm(Code::Movdqa_xmm_xmmm128, Register::XMM8, src))?;
            b.a.ins(&ins2m(Code::Movdqu_xmmm128_xmm, dst, Register::XMM8))
        } else {
            b.a.ins(&ins2rm(load_code(size), sized_r10(size), src))?;
            b.a.ins(&ins2m(store_code(size), dst, sized_r10(size)))
        }
    })
}

/// Splits `range` into aligned pieces of 16, 8, 4, 2 and 1 bytes, none over `max`.
fn each_piece(
    range: Range<usize>,
    max: usize,
    mut f: impl FnMut(i32, usize) -> Result<(), EmitError>,
) -> Result<(), EmitError> {
    let mut at = range.start;
    while at < range.end {
        let size = [16, 8, 4, 2, 1].into_iter().find(|&s| s <= max && at.is_multiple_of(s) && at + s <= range.end).unwrap_or(1);
        f(i32::try_from(at).expect("image offset"), size)?;
        at += size;
    }
    Ok(())
}

fn sized_r10(size: usize) -> Register {
    match size {
        8 => Register::R10,
        4 => Register::R10D,
        2 => Register::R10W,
        _ => Register::R10L,
    }
}

fn load_code(size: usize) -> Code {
    match size {
        8 => Code::Mov_r64_rm64,
        4 => Code::Mov_r32_rm32,
        2 => Code::Mov_r16_rm16,
        _ => Code::Mov_r8_rm8,
    }
}

fn store_code(size: usize) -> Code {
    match size {
        8 => Code::Mov_rm64_r64,
        4 => Code::Mov_rm32_r32,
        2 => Code::Mov_rm16_r16,
        _ => Code::Mov_rm8_r8,
    }
}
