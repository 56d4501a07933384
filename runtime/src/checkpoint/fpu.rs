//! The guest's x87/SSE state as an FXSAVE image: the only `unsafe` of checkpoints.
//!
//! Under the BT engine the guest's x87 stack, MMX registers and x87 control and
//! status words are the vCPU thread's own (translated code runs them natively and
//! Rust code never touches x87), while xmm0–7 and MXCSR are in `VcpuCtx::xmm` and
//! `VcpuCtx::guest_mxcsr` whenever the VMM runs. So a capture is an `fxsave` on the
//! vCPU thread with xmm0–7 and MXCSR taken from the context, and a restore is an
//! `fxrstor` on the vCPU thread before the guest runs again (with the VMM's own
//! MXCSR in the image, the guest's going to the context).
//!
//! The image is the 512-byte legacy (32-bit) FXSAVE layout of the SDM (vol. 1,
//! table 10-2). The x87 instruction and data pointers are stored as zeros: they
//! hold host addresses under translation, and the translator gives the guest
//! zeros for them too (`translate::fpu`). xmm8–15 and the reserved tail are zero.

use bt86_translator::abi::VcpuCtx;

/// Byte offsets in the image.
const FCW: usize = 0;
const MXCSR: usize = 24;
const MXCSR_MASK: usize = 28;
const XMM0: usize = 160;
/// x87 instruction pointer and selector (8..14), data pointer and selector (16..22).
const POINTERS: [(usize, usize); 2] = [(8, 14), (16, 22)];
/// xmm8–15 and the reserved and available bytes after them.
const BEYOND_XMM7: usize = XMM0 + 8 * 16;
/// MXCSR_MASK when a CPU stores 0 there (SDM vol. 1, 11.6.6).
const DEFAULT_MXCSR_MASK: u32 = 0xffbf;

/// A 512-byte, 16-byte-aligned FXSAVE image of the guest's x87/SSE state.
#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(C, align(16))]
pub struct FxImage(#[serde(with = "crate::checkpoint::bytes::array")] pub [u8; 512]);

impl std::fmt::Debug for FxImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FxImage").field("fcw", &self.fcw()).field("mxcsr", &self.mxcsr()).finish_non_exhaustive()
    }
}

impl Default for FxImage {
    /// The state after `fninit` with SSE at its reset values (FCW 0x37f, MXCSR 0x1f80).
    fn default() -> Self {
        let mut img = Self([0; 512]);
        img.0[FCW..FCW + 2].copy_from_slice(&0x037fu16.to_le_bytes());
        img.set_u32(MXCSR, 0x1f80);
        img
    }
}

impl FxImage {
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }

    fn set_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// The x87 control word.
    pub fn fcw(&self) -> u16 {
        u16::from_le_bytes([self.0[FCW], self.0[FCW + 1]])
    }

    /// The guest's MXCSR.
    pub fn mxcsr(&self) -> u32 {
        self.u32_at(MXCSR)
    }

    /// xmm register `i` (0..8) as two little-endian quadwords, as `VcpuCtx::xmm`.
    pub fn xmm(&self, i: usize) -> [u64; 2] {
        let at = XMM0 + 16 * i;
        let q = |o: usize| u64::from_le_bytes(self.0[at + o..at + o + 8].try_into().unwrap_or([0; 8]));
        [q(0), q(8)]
    }

    fn set_xmm(&mut self, i: usize, v: [u64; 2]) {
        let at = XMM0 + 16 * i;
        self.0[at..at + 8].copy_from_slice(&v[0].to_le_bytes());
        self.0[at + 8..at + 16].copy_from_slice(&v[1].to_le_bytes());
    }

    /// Zeroes what is not the guest's: the x87 pointers, xmm8–15, the reserved tail.
    fn scrub(&mut self) {
        for (from, to) in POINTERS {
            self.0[from..to].fill(0);
        }
        self.0[BEYOND_XMM7..].fill(0);
    }

    /// Whether this host's `fxrstor` and `ldmxcsr` take the image's MXCSR (reserved
    /// bits set would raise #GP in the VMM).
    pub fn mxcsr_valid(&self) -> bool {
        let host = fxsave();
        let mask = match host.u32_at(MXCSR_MASK) {
            0 => DEFAULT_MXCSR_MASK,
            m => m,
        };
        self.mxcsr() & !mask == 0
    }

    /// The guest's state now, on the vCPU thread after a BT run returned: the x87
    /// part from this thread's registers, xmm0–7 and MXCSR from `ctx`.
    pub(crate) fn capture(ctx: &VcpuCtx) -> Self {
        let mut img = fxsave();
        img.set_u32(MXCSR, ctx.guest_mxcsr);
        img.scrub();
        for (i, &x) in ctx.xmm.iter().enumerate() {
            img.set_xmm(i, x);
        }
        img
    }

    /// Makes this the guest's state on the vCPU thread before a BT run: the x87 part
    /// into this thread's registers, xmm0–7 and MXCSR into `ctx` (the world switch
    /// loads them). An MXCSR this CPU would refuse becomes the reset value.
    pub(crate) fn load(&self, ctx: &mut VcpuCtx) {
        let mut img = *self;
        // The VMM keeps running with its own MXCSR.
        img.set_u32(MXCSR, fxsave().mxcsr());
        img.scrub();
        fxrstor(&img);
        ctx.guest_mxcsr = if self.mxcsr_valid() { self.mxcsr() } else { FxImage::default().mxcsr() };
        for (i, x) in ctx.xmm.iter_mut().enumerate() {
            *x = self.xmm(i);
        }
    }
}

/// The calling thread's x87/SSE state.
fn fxsave() -> FxImage {
    let mut img = FxImage([0; 512]);
    let p = img.0.as_mut_ptr();
    // SAFETY: `p` points to 512 writable bytes aligned to 16 (`FxImage` is
    // `repr(align(16))`), which is all `fxsave` writes; it reads registers only,
    // changes no register and no flag, and every x86-64 CPU has it.
    unsafe { core::arch::asm!("fxsave [{0}]", in(reg) p, options(nostack, preserves_flags)) };
    img
}

/// Loads the calling thread's x87/SSE state from `img`, whose MXCSR is one the CPU
/// takes (the VMM's own).
fn fxrstor(img: &FxImage) {
    let p = img.0.as_ptr();
    // SAFETY: `p` points to 512 readable bytes aligned to 16. Its MXCSR is the value
    // `fxsave` just read from this CPU, so no reserved bit is set and `fxrstor`
    // cannot fault. It changes the x87, MMX and xmm registers: `clobber_abi("C")`
    // tells the compiler none of them holds a value across this (Rust code keeps no
    // x87 state, and the ABI's MXCSR control bits are the ones the VMM had).
    unsafe { core::arch::asm!("fxrstor [{0}]", in(reg) p, clobber_abi("C"), options(nostack, readonly, preserves_flags)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x87 state set on one thread, captured, and loaded on another thread: the
    /// second thread's registers then hold it.
    #[test]
    fn x87_state_moves_between_threads() {
        let captured = std::thread::spawn(|| {
            let mut ctx = VcpuCtx::default();
            ctx.guest_mxcsr = 0x3f80; // round down, all masked
            ctx.xmm[3] = [0x1122_3344_5566_7788, 0x99aa_bbcc_ddee_ff00];
            let cw: u16 = 0x027f; // 53-bit precision
            let two = 2.0f64;
            // SAFETY: loads a control word and pushes one value on the x87 stack of
            // this test thread, which nothing else uses.
            unsafe { core::arch::asm!("fldcw [{0}]", "fld qword ptr [{1}]", in(reg) &cw, in(reg) &two, options(nostack)) };
            FxImage::capture(&ctx)
        })
        .join()
        .expect("thread");
        assert_eq!(captured.fcw(), 0x027f);
        assert_eq!(captured.mxcsr(), 0x3f80);
        assert_eq!(captured.xmm(3), [0x1122_3344_5566_7788, 0x99aa_bbcc_ddee_ff00]);
        assert!(captured.mxcsr_valid());
        let (loaded, ctx) = std::thread::spawn(move || {
            let mut ctx = VcpuCtx::default();
            captured.load(&mut ctx);
            let mut top = 0.0f64;
            // SAFETY: pops the value `load` put on this thread's x87 stack.
            unsafe { core::arch::asm!("fstp qword ptr [{0}]", in(reg) &mut top, options(nostack)) };
            (fxsave(), (ctx.guest_mxcsr, ctx.xmm[3], top))
        })
        .join()
        .expect("thread");
        assert_eq!(loaded.fcw(), 0x027f);
        assert_eq!(ctx, (0x3f80, [0x1122_3344_5566_7788, 0x99aa_bbcc_ddee_ff00], 2.0));
    }

    #[test]
    fn reserved_mxcsr_bits_are_refused() {
        let mut img = FxImage::default();
        assert!(img.mxcsr_valid());
        img.set_u32(MXCSR, 0xffff_0000);
        assert!(!img.mxcsr_valid());
    }
}
