//! The guest's instruction set: which instruction classes guest code may run,
//! derived from the CPUID the VMM reports.
//!
//! This is the translator's allowlist. An instruction is re-encoded and run on the
//! host (IDENT) only if every CPUID feature iced-x86 says it needs is one the guest
//! CPU has: the 386/486 integer set and the x87 always, the rest only where the
//! VMM's CPUID advertises it. Anything else raises #UD, as on a CPU without the
//! feature — whatever the host CPU itself can do. So a host CPU with instructions
//! bt86 has never heard of (clzero, xsave, rdpru, AMX, ...) cannot hand them to a
//! guest: they are not on the list.
//!
//! The list only says what the guest may run. The translator still rewrites the
//! sensitive instructions in it (cpuid, rdtsc, in/out, pushf, ...) and checks that
//! every memory access of an IDENT instruction stays inside the view.

use iced_x86::{CpuidFeature, DecoderOptions, Instruction};

/// A set of iced-x86 CPUID features (the guest's instruction set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Isa {
    bits: [u64; 3],
}

/// The instructions every guest CPU has: the 386/486 integer instruction set, the
/// x87 FPU, and hints that older CPUs execute as plain `nop`s.
const BASE: &[CpuidFeature] = &[
    CpuidFeature::INTEL8086,
    CpuidFeature::INTEL186,
    CpuidFeature::INTEL286,
    CpuidFeature::INTEL386,
    CpuidFeature::INTEL486,
    CpuidFeature::FPU,
    CpuidFeature::FPU287,
    CpuidFeature::FPU387,
    CpuidFeature::CPUID,
    // `f3 90` is `rep nop` on CPUs without PAUSE, with the same effect.
    CpuidFeature::PAUSE,
    // `0f 1f /0` (long nop) and the reserved-nop space, nops since the P6.
    CpuidFeature::MULTIBYTENOP,
];

impl Isa {
    /// The base instruction set only.
    pub fn base() -> Self {
        BASE.iter().fold(Self { bits: [0; 3] }, |isa, &f| isa.with(f))
    }

    /// This set plus `f`.
    #[must_use]
    pub fn with(mut self, f: CpuidFeature) -> Self {
        let n = f as usize;
        self.bits[n / 64] |= 1 << (n % 64);
        self
    }

    /// Whether the guest CPU has feature `f`.
    pub fn has(&self, f: CpuidFeature) -> bool {
        let n = f as usize;
        n / 64 < self.bits.len() && self.bits[n / 64] & (1 << (n % 64)) != 0
    }

    /// Whether the guest CPU has every feature instruction `i` needs.
    pub fn allows(&self, i: &Instruction) -> bool {
        i.cpuid_features().iter().all(|&f| self.has(f))
    }

    /// Decoder options that make iced read guest bytes the way this CPU does:
    /// without BMI1, `f3 0f bc` is `rep bsf` (not `tzcnt`; Linux's `__ffs` relies
    /// on that); without LZCNT, `f3 0f bd` is `rep bsr`; `f3 0f 09` is `rep wbinvd`.
    pub fn decoder_options(&self) -> u32 {
        let mut o = DecoderOptions::NO_WBNOINVD;
        if !self.has(CpuidFeature::BMI1) {
            o |= DecoderOptions::NO_MPFX_0FBC;
        }
        if !self.has(CpuidFeature::LZCNT) {
            o |= DecoderOptions::NO_MPFX_0FBD;
        }
        o
    }
}

impl Default for Isa {
    /// A Pentium III-class CPU: the base set with CMOV, CX8, TSC, MSR, MMX, FXSR,
    /// SSE and SSE2 (what tests and tools get without a CPU model).
    fn default() -> Self {
        [
            CpuidFeature::CMOV,
            CpuidFeature::CX8,
            CpuidFeature::TSC,
            CpuidFeature::MSR,
            CpuidFeature::MMX,
            CpuidFeature::FXSR,
            CpuidFeature::SSE,
            CpuidFeature::SSE2,
            CpuidFeature::CLFSH,
        ]
        .into_iter()
        .fold(Self::base(), Self::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::Decoder;

    fn decode(isa: &Isa, bytes: &[u8]) -> Instruction {
        Decoder::with_ip(32, bytes, 0, isa.decoder_options()).decode()
    }

    #[test]
    fn base_runs_integer_and_x87_but_not_extensions() {
        let isa = Isa::base();
        assert!(isa.allows(&decode(&isa, &[0x01, 0xc8]))); // add %ecx,%eax
        assert!(isa.allows(&decode(&isa, &[0xd9, 0xe8]))); // fld1
        assert!(!isa.allows(&decode(&isa, &[0x0f, 0x44, 0xc1]))); // cmove: CMOV
        assert!(!isa.allows(&decode(&isa, &[0x0f, 0x01, 0xfc]))); // clzero
        assert!(!isa.allows(&decode(&isa, &[0x0f, 0xae, 0x20]))); // xsave (%eax)
        assert!(Isa::default().allows(&decode(&isa, &[0x0f, 0x44, 0xc1])));
    }

    #[test]
    fn tzcnt_is_bsf_without_bmi1() {
        let isa = Isa::default();
        let i = decode(&isa, &[0xf3, 0x0f, 0xbc, 0xc1]);
        assert_eq!(i.mnemonic(), iced_x86::Mnemonic::Bsf);
        assert!(isa.allows(&i));
        let bmi = isa.with(CpuidFeature::BMI1);
        assert_eq!(decode(&bmi, &[0xf3, 0x0f, 0xbc, 0xc1]).mnemonic(), iced_x86::Mnemonic::Tzcnt);
    }
}
