//! The guest's registers as a debugger reads and writes them: the general
//! registers, eip and EFLAGS from the translator's context, the selectors from
//! the virtual CPU, and x87/SSE from the guest's FXSAVE image (`checkpoint`'s:
//! between runs the x87 registers are the vCPU thread's own, xmm0-7 and MXCSR
//! the context's, or a pending image a restore or a KVM run left). Written x87
//! and SSE state becomes that pending image, which the next run loads.

use super::DebugError;
use crate::checkpoint::{self, FxImage};
use crate::emulate::flags::{eflags_of, set_eflags_of, EFLAGS_WRITABLE};
use crate::vm::Vm;

/// The x87 FPU as gdb shows it: ST0-ST7 (80-bit, in stack order) and the
/// control registers, with the full two-bit tag word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct X87Registers {
    pub st: [[u8; 10]; 8],
    pub fctrl: u16,
    pub fstat: u16,
    /// Two bits per physical register: 00 valid, 01 zero, 10 special, 11 empty.
    pub ftag: u16,
    pub fiseg: u16,
    pub fioff: u32,
    pub foseg: u16,
    pub fooff: u32,
    pub fop: u16,
}

/// The guest's registers, in the units gdb's i386 description uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegisters {
    /// eax, ecx, edx, ebx, esp, ebp, esi, edi.
    pub gpr: [u32; 8],
    pub eip: u32,
    pub eflags: u32,
    /// Selectors in x86 encoding order: es, cs, ss, ds, fs, gs (`cpu::sreg`).
    pub selectors: [u16; 6],
    pub x87: X87Registers,
    pub xmm: [u128; 8],
    pub mxcsr: u32,
}

const SEGMENT_NAMES: [&str; 6] = ["es", "cs", "ss", "ds", "fs", "gs"];

impl Vm {
    /// The guest's registers now (between runs, on the thread that runs the VM).
    pub fn debug_registers(&self) -> GuestRegisters {
        let ctx = self.tr.ctx();
        let image = checkpoint::guest_fpu(self);
        GuestRegisters {
            gpr: ctx.gpr,
            eip: ctx.eip,
            eflags: eflags_of(ctx),
            selectors: self.cpu.seg.map(|s| s.selector),
            x87: x87_from_image(&image),
            xmm: core::array::from_fn(|i| {
                let [lo, hi] = image.xmm(i);
                u128::from(lo) | (u128::from(hi) << 64)
            }),
            mxcsr: image.mxcsr(),
        }
    }

    /// Sets the guest's registers. Selectors cannot be changed (that would need a
    /// descriptor load); an MXCSR with reserved bits set is refused (the world
    /// switch would fault loading it).
    pub fn set_debug_registers(&mut self, regs: &GuestRegisters) -> Result<(), DebugError> {
        for (i, (now, new)) in self.cpu.seg.iter().zip(regs.selectors).enumerate() {
            if now.selector != new {
                return Err(DebugError::SegmentWrite { name: SEGMENT_NAMES[i], selector: new });
            }
        }
        let mut image = checkpoint::guest_fpu(self);
        put(&mut image, MXCSR, &regs.mxcsr.to_le_bytes());
        if !image.mxcsr_valid() {
            return Err(DebugError::Mxcsr(regs.mxcsr));
        }
        x87_into_image(&regs.x87, &mut image);
        for (i, x) in regs.xmm.iter().enumerate() {
            put(&mut image, XMM0 + 16 * i, &x.to_le_bytes());
        }
        checkpoint::set_guest_fpu(self, image);
        let ctx = self.tr.ctx_mut();
        ctx.gpr = regs.gpr;
        ctx.eip = regs.eip;
        set_eflags_of(ctx, regs.eflags, EFLAGS_WRITABLE);
        Ok(())
    }
}

/// Offsets in the FXSAVE image (SDM vol. 1, table 10-2).
const MXCSR: usize = 24;
const XMM0: usize = 160;

fn put(image: &mut FxImage, at: usize, bytes: &[u8]) {
    image.0[at..at + bytes.len()].copy_from_slice(bytes);
}

/// `N` bytes of the image at `at`.
fn field<const N: usize>(image: &FxImage, at: usize) -> [u8; N] {
    image.0[at..at + N].try_into().expect("inside the image")
}

fn u16_at(image: &FxImage, at: usize) -> u16 {
    u16::from_le_bytes(field(image, at))
}

fn u32_at(image: &FxImage, at: usize) -> u32 {
    u32::from_le_bytes(field(image, at))
}

/// Offset of ST(i) in the image.
fn st_offset(i: usize) -> usize {
    32 + 16 * i
}

fn x87_from_image(image: &FxImage) -> X87Registers {
    let fstat = u16_at(image, 2);
    let st: [[u8; 10]; 8] = core::array::from_fn(|i| field(image, st_offset(i)));
    X87Registers {
        st,
        fctrl: u16_at(image, 0),
        fstat,
        ftag: full_tag(image.0[4], fstat, &st),
        fop: u16_at(image, 6) & 0x7ff,
        fioff: u32_at(image, 8),
        fiseg: u16_at(image, 12),
        fooff: u32_at(image, 16),
        foseg: u16_at(image, 20),
    }
}

/// The x87 registers into the image. The instruction and operand pointers stay
/// as they are: the guest sees zeros there (`translate::fpu`), and a loaded
/// image has them cleared.
fn x87_into_image(x: &X87Registers, image: &mut FxImage) {
    put(image, 0, &x.fctrl.to_le_bytes());
    put(image, 2, &x.fstat.to_le_bytes());
    put(image, 4, &[abridged_tag(x.ftag)]);
    put(image, 6, &(x.fop & 0x7ff).to_le_bytes());
    for (i, st) in x.st.iter().enumerate() {
        put(image, st_offset(i), st);
    }
}

/// The full tag word from fxsave's abridged one (one bit per physical
/// register: not empty), classifying each register's contents (SDM vol. 1,
/// 8.1.7 and the FXSAVE table).
fn full_tag(abridged: u8, fstat: u16, st: &[[u8; 10]; 8]) -> u16 {
    let top = usize::from((fstat >> 11) & 7);
    (0..8).fold(0, |tag, physical| {
        let bits = if abridged & (1 << physical) == 0 { 3 } else { classify(&st[(physical + 8 - top) & 7]) };
        tag | (bits << (2 * physical))
    })
}

/// The tag of a non-empty register: 0 valid, 1 zero, 2 special (NaN,
/// infinity, denormal, unnormal).
fn classify(value: &[u8; 10]) -> u16 {
    let mantissa = u64::from_le_bytes(value[..8].try_into().expect("8 bytes"));
    let exponent = u16::from_le_bytes([value[8], value[9]]) & 0x7fff;
    match (exponent, mantissa) {
        (0, 0) => 1,
        (0, _) | (0x7fff, _) => 2,
        _ if mantissa >> 63 == 0 => 2,
        _ => 0,
    }
}

/// fxsave's abridged tag: a register is in use unless its two bits are 11.
fn abridged_tag(full: u16) -> u8 {
    (0..8).fold(0, |tag, physical| if (full >> (2 * physical)) & 3 == 3 { tag } else { tag | (1 << physical) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_the_stack_top() {
        let mut st = [[0u8; 10]; 8];
        // ST(0) = 1.0: mantissa with the integer bit, exponent 0x3fff.
        st[0] = [0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f];
        // TOP = 7: ST(0) is physical register 7; ST(1) (zero) is physical 0.
        let fstat = 7 << 11;
        let full = full_tag(0b1000_0001, fstat, &st);
        assert_eq!(full, 0b00_11_11_11_11_11_11_01, "R7 valid, R0 zero, the rest empty");
        assert_eq!(abridged_tag(full), 0b1000_0001);
    }

    #[test]
    fn nan_and_denormals_are_special() {
        assert_eq!(classify(&[0, 0, 0, 0, 0, 0, 0, 0xc0, 0xff, 0x7f]), 2);
        assert_eq!(classify(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]), 2);
        assert_eq!(classify(&[0; 10]), 1);
    }
}
