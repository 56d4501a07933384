//! The guest's registers as a debugger reads and writes them: the general
//! registers, eip, EFLAGS, xmm0-7 and MXCSR from the translator's context, the
//! selectors from the virtual CPU, and the x87 registers from this thread's FPU.
//! Translated code runs the guest's x87 instructions on the host FPU and the
//! world switch saves only the SSE state, so between runs the VM thread's x87
//! registers are the guest's (the VMM's Rust code does not use x87); the gdb
//! stub runs on that thread.

use super::DebugError;
use crate::emulate::flags::{eflags_of, set_eflags_of, EFLAGS_WRITABLE};
use crate::vm::Vm;
use bt86_translator::abi::FpuImage;

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
    /// The guest's registers now (between runs).
    pub fn debug_registers(&self) -> GuestRegisters {
        let ctx = self.tr.ctx();
        let image = fxsave();
        GuestRegisters {
            gpr: ctx.gpr,
            eip: ctx.eip,
            eflags: eflags_of(ctx),
            selectors: self.cpu.seg.map(|s| s.selector),
            x87: x87_from_image(&image),
            xmm: ctx.xmm.map(|[lo, hi]| u128::from(lo) | (u128::from(hi) << 64)),
            mxcsr: ctx.guest_mxcsr,
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
        let mut image = fxsave();
        let mxcsr_mask = match u32::from_le_bytes(field(&image, 28)) {
            0 => 0xffbf, // SDM: a zero mask means the default one
            m => m,
        };
        if regs.mxcsr & !mxcsr_mask != 0 {
            return Err(DebugError::Mxcsr(regs.mxcsr));
        }
        if x87_from_image(&image) != regs.x87 {
            x87_into_image(&regs.x87, &mut image);
            fxrstor(&image);
        }
        let ctx = self.tr.ctx_mut();
        ctx.gpr = regs.gpr;
        ctx.eip = regs.eip;
        set_eflags_of(ctx, regs.eflags, EFLAGS_WRITABLE);
        ctx.xmm = regs.xmm.map(|x| {
            #[allow(clippy::cast_possible_truncation)]
            let halves = [x as u64, (x >> 64) as u64];
            halves
        });
        ctx.guest_mxcsr = regs.mxcsr;
        Ok(())
    }
}

/// This thread's FPU and SSE state (the legacy 512-byte `fxsave` image).
fn fxsave() -> FpuImage {
    let mut image = FpuImage([0; 512]);
    // SAFETY: `image` is 512 bytes aligned to 16 (`FpuImage`), as fxsave needs;
    // FXSR is part of x86-64.
    unsafe { core::arch::x86_64::_fxsave(image.0.as_mut_ptr()) };
    image
}

/// Loads this thread's FPU and SSE state from `image` (one from `fxsave`, so its
/// MXCSR and reserved fields are valid).
fn fxrstor(image: &FpuImage) {
    // SAFETY: `image` is a 16-byte aligned fxsave image whose MXCSR came from
    // this CPU's own fxsave; only x87 fields were changed.
    unsafe { core::arch::x86_64::_fxrstor(image.0.as_ptr()) };
}

/// `N` bytes of the image at `at`.
fn field<const N: usize>(image: &FpuImage, at: usize) -> [u8; N] {
    image.0[at..at + N].try_into().expect("inside the image")
}

fn u16_at(image: &FpuImage, at: usize) -> u16 {
    u16::from_le_bytes(field(image, at))
}

fn u32_at(image: &FpuImage, at: usize) -> u32 {
    u32::from_le_bytes(field(image, at))
}

/// Offset of ST(i) in the image.
fn st_offset(i: usize) -> usize {
    32 + 16 * i
}

fn x87_from_image(image: &FpuImage) -> X87Registers {
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

fn x87_into_image(x: &X87Registers, image: &mut FpuImage) {
    let mut put = |at: usize, bytes: &[u8]| image.0[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &x.fctrl.to_le_bytes());
    put(2, &x.fstat.to_le_bytes());
    put(4, &[abridged_tag(x.ftag)]);
    put(6, &(x.fop & 0x7ff).to_le_bytes());
    put(8, &x.fioff.to_le_bytes());
    put(12, &x.fiseg.to_le_bytes());
    put(16, &x.fooff.to_le_bytes());
    put(20, &x.foseg.to_le_bytes());
    for (i, st) in x.st.iter().enumerate() {
        put(st_offset(i), st);
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
