//! The guest CPU's identity: the CPUID it reports and the instruction set that
//! follows from it.
//!
//! The model is the host's CPUID filtered down to what the virtual CPU
//! implements: no VMX/SVM, no hypervisor leaves, no local APIC, no PAE/long mode,
//! no AVX/XSAVE (the VMM does not switch that state), 32-bit addresses.
//! It does have SYSENTER/SYSEXIT (emulated). It is
//! computed once per process (a host `cpuid` traps to the hypervisor on the
//! machines bt86 runs on, 14–18 µs each) and answers every guest `cpuid` from a
//! table. The translator gets the matching instruction set ([`CpuModel::isa`]), so
//! an instruction runs only if the CPUID the guest reads says it exists.

use bt86_translator::Isa;
use iced_x86::CpuidFeature;
use std::sync::OnceLock;

/// Highest basic leaf offered.
pub const MAX_BASIC: u32 = 7;
/// Highest extended leaf offered.
pub const MAX_EXTENDED: u32 = 0x8000_0008;
/// Subleaves of leaf 4 (deterministic cache parameters) kept.
const LEAF4_SUBLEAVES: u32 = 8;

const fn bits(list: &[u32]) -> u32 {
    let mut v = 0;
    let mut i = 0;
    while i < list.len() {
        v |= 1 << list[i];
        i += 1;
    }
    v
}

/// Leaf 1 ECX: SSE3 PCLMULQDQ SSSE3 CX16 SSE4.1 SSE4.2 MOVBE POPCNT AES RDRAND.
pub const LEAF1_ECX: u32 = bits(&[0, 1, 9, 13, 19, 20, 22, 23, 25, 30]);
/// Leaf 1 EDX: FPU DE PSE TSC MSR CX8 SEP PGE CMOV CLFSH MMX FXSR SSE SSE2.
pub const LEAF1_EDX: u32 = bits(&[0, 2, 3, 4, 5, 8, 11, 13, 15, 19, 23, 24, 25, 26]);
/// Leaf 7.0 EBX: ERMS ADX.
pub const LEAF7_EBX: u32 = bits(&[9, 19]);
/// Leaf 0x8000_0001 ECX: LAHF/SAHF, ABM (LZCNT), PREFETCHW.
pub const EXT1_ECX: u32 = bits(&[0, 5, 8]);
/// Leaf 0x8000_0007 EDX: invariant TSC (the guest's TSC is the host's).
const EXT7_EDX: u32 = bits(&[8]);

/// Which CPUID bit means which instruction-set extension: (leaf, register index
/// eax=0..edx=3, bit, feature).
const FEATURE_BITS: &[(u32, usize, u32, CpuidFeature)] = &[
    (1, 3, 4, CpuidFeature::TSC),
    (1, 3, 5, CpuidFeature::MSR),
    (1, 3, 8, CpuidFeature::CX8),
    (1, 3, 11, CpuidFeature::SEP),
    (1, 3, 15, CpuidFeature::CMOV),
    (1, 3, 19, CpuidFeature::CLFSH),
    (1, 3, 23, CpuidFeature::MMX),
    (1, 3, 24, CpuidFeature::FXSR),
    (1, 3, 25, CpuidFeature::SSE),
    (1, 3, 26, CpuidFeature::SSE2),
    (1, 2, 0, CpuidFeature::SSE3),
    (1, 2, 1, CpuidFeature::PCLMULQDQ),
    (1, 2, 9, CpuidFeature::SSSE3),
    (1, 2, 13, CpuidFeature::CMPXCHG16B),
    (1, 2, 19, CpuidFeature::SSE4_1),
    (1, 2, 20, CpuidFeature::SSE4_2),
    (1, 2, 22, CpuidFeature::MOVBE),
    (1, 2, 23, CpuidFeature::POPCNT),
    (1, 2, 25, CpuidFeature::AES),
    (1, 2, 30, CpuidFeature::RDRAND),
    (7, 1, 19, CpuidFeature::ADX),
    (0x8000_0001, 2, 5, CpuidFeature::LZCNT),
    (0x8000_0001, 2, 8, CpuidFeature::PREFETCHW),
];

/// Whose CPU the model says it is (the host's vendor string).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

/// The guest CPU: its CPUID table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuModel {
    /// (leaf, subleaf) → eax, ebx, ecx, edx; subleaf is 0 for leaves without them.
    leaves: Vec<((u32, u32), [u32; 4])>,
}

impl CpuModel {
    /// The model for this host (computed once per process).
    pub fn host() -> &'static CpuModel {
        static HOST: OnceLock<CpuModel> = OnceLock::new();
        HOST.get_or_init(|| CpuModel::from_host(host_cpuid))
    }

    /// The model for a host whose CPUID is `host(leaf, subleaf)`.
    pub fn from_host(host: impl Fn(u32, u32) -> [u32; 4]) -> Self {
        let mut leaves = Vec::new();
        let max_basic = host(0, 0)[0].min(MAX_BASIC);
        for leaf in 0..=max_basic {
            let subleaves = if leaf == 4 { LEAF4_SUBLEAVES } else { 1 };
            for sub in 0..subleaves {
                leaves.push(((leaf, sub), filter(leaf, sub, &host)));
            }
        }
        let ext_max = host(0x8000_0000, 0)[0];
        if ext_max >= 0x8000_0000 {
            for leaf in 0x8000_0000..=ext_max.min(MAX_EXTENDED) {
                leaves.push(((leaf, 0), filter(leaf, 0, &host)));
            }
        }
        Self { leaves }
    }

    /// The guest's `cpuid` for `leaf` and `subleaf`.
    pub fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        // Leaves 4 and 7 have subleaves (7.1 and up are zero); the rest ignore ecx.
        let sub = if leaf == 4 || leaf == 7 { subleaf } else { 0 };
        self.leaves.iter().find(|(k, _)| *k == (leaf, sub)).map_or([0; 4], |(_, v)| *v)
    }

    /// The table translated `cpuid` answers from (leaves 4 and 7 have subleaves:
    /// the VMM answers those).
    pub fn cpuid_table(&self) -> bt86_translator::abi::CpuidTable {
        bt86_translator::abi::CpuidTable::build(|leaf| self.cpuid(leaf, 0), &[4, 7])
    }

    /// The vendor of the leaf-0 string.
    pub fn vendor(&self) -> Vendor {
        match self.cpuid(0, 0) {
            [_, 0x756e_6547, 0x6c65_746e, 0x4965_6e69] => Vendor::Intel,
            [_, 0x6874_7541, 0x444d_4163, 0x6974_6e65] => Vendor::Amd,
            _ => Vendor::Other,
        }
    }

    /// Whether CPUID `leaf` reports `bit` of register `reg` (eax = 0 .. edx = 3).
    /// The family CPUID leaf 1 reports (with the extended family added).
    pub fn family(&self) -> u32 {
        let eax = self.cpuid(1, 0)[0];
        let base = (eax >> 8) & 0xf;
        if base == 0xf {
            base + ((eax >> 20) & 0xff)
        } else {
            base
        }
    }

    pub fn has_bit(&self, leaf: u32, reg: usize, bit: u32) -> bool {
        self.cpuid(leaf, 0)[reg] & (1 << bit) != 0
    }

    /// The instruction set the guest may run: the base set plus every extension
    /// this CPUID advertises, and `rdpmc` (P6 and later have it; CR4.PCE guards it).
    pub fn isa(&self) -> Isa {
        FEATURE_BITS
            .iter()
            .filter(|&&(leaf, reg, bit, _)| self.has_bit(leaf, reg, bit))
            .fold(Isa::base().with(CpuidFeature::RDPMC), |isa, &(_, _, _, f)| isa.with(f))
    }
}

impl CpuModel {
    /// The instruction-set extensions this model advertises that `other` does not
    /// (a guest shown this model may use them), by name.
    pub fn features_missing_on(&self, other: &CpuModel) -> Vec<String> {
        FEATURE_BITS
            .iter()
            .filter(|&&(leaf, reg, bit, _)| self.has_bit(leaf, reg, bit) && !other.has_bit(leaf, reg, bit))
            .map(|&(_, _, _, f)| format!("{f:?}"))
            .collect()
    }
}

/// The host's CPUID.
fn host_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    // `__cpuid_count` is a safe function on current toolchains and an unsafe one on
    // older ones; the block keeps both building.
    #[allow(unused_unsafe)]
    // SAFETY: cpuid is available on every x86-64 CPU and has no memory effects.
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) };
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The guest's CPUID `leaf`/`subleaf` given the host's.
fn filter(leaf: u32, subleaf: u32, host: impl Fn(u32, u32) -> [u32; 4]) -> [u32; 4] {
    match leaf {
        0 => {
            let [eax, ebx, ecx, edx] = host(0, 0);
            [eax.min(MAX_BASIC), ebx, ecx, edx]
        }
        1 => {
            let [eax, ebx, ecx, edx] = host(1, 0);
            // EBX: brand index and CLFLUSH line size; no APIC id or logical count.
            [eax, ebx & 0xffff, ecx & LEAF1_ECX, edx & LEAF1_EDX]
        }
        // Cache and TLB descriptors, deterministic cache parameters.
        2 => host(2, 0),
        4 => host(4, subleaf),
        7 if subleaf == 0 => [0, host(7, 0)[1] & LEAF7_EBX, 0, 0],
        0x8000_0000 => {
            let [eax, ebx, ecx, edx] = host(0x8000_0000, 0);
            [eax.min(MAX_EXTENDED), ebx, ecx, edx]
        }
        0x8000_0001 => {
            let [eax, _, ecx, _] = host(leaf, 0);
            // EDX: no NX, SYSCALL, long mode or RDTSCP.
            [eax, 0, ecx & EXT1_ECX, 0]
        }
        // Brand string, L1/L2 cache and TLB information.
        0x8000_0002..=0x8000_0006 => host(leaf, 0),
        0x8000_0007 => [0, 0, 0, host(leaf, 0)[3] & EXT7_EDX],
        // 32 physical and 32 linear address bits, one core.
        0x8000_0008 => [0x2020, 0, 0, 0],
        // Other basic leaves, hypervisor leaves (0x4000_0000..), everything else.
        _ => [0; 4],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that offers everything: all ones in every leaf, high maxima.
    fn generous(leaf: u32, _sub: u32) -> [u32; 4] {
        match leaf {
            0 => [0x20, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            0x8000_0000 => [0x8000_0021, 0, 0, 0],
            _ => [u32::MAX; 4],
        }
    }

    #[test]
    fn filters_a_generous_host() {
        let m = CpuModel::from_host(generous);
        assert_eq!(m.cpuid(0, 0), [7, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]);
        let [_, ebx, ecx, edx] = m.cpuid(1, 0);
        assert_eq!(ebx, 0xffff);
        assert_eq!(ecx, LEAF1_ECX);
        assert_eq!(ecx & (1 << 5), 0, "VMX");
        assert_eq!(ecx & (1 << 31), 0, "hypervisor");
        assert_eq!(ecx & ((1 << 26) | (1 << 27) | (1 << 28)), 0, "XSAVE OSXSAVE AVX");
        assert_eq!(edx, 0x0788_a93d);
        assert_eq!(edx & ((1 << 6) | (1 << 9)), 0, "PAE APIC");
        assert_eq!(m.cpuid(7, 0), [0, (1 << 9) | (1 << 19), 0, 0]);
        assert_eq!(m.cpuid(7, 1), [0; 4]);
        assert_eq!(m.cpuid(3, 0), [0; 4]);
        assert_eq!(m.cpuid(0xd, 0), [0; 4]);
        assert_eq!(m.cpuid(0x4000_0000, 0), [0; 4]);
        assert_eq!(m.cpuid(0x8000_0000, 0)[0], 0x8000_0008);
        assert_eq!(m.cpuid(0x8000_0001, 0), [u32::MAX, 0, 0x121, 0]);
        assert_eq!(m.cpuid(0x8000_0004, 0), [u32::MAX; 4]);
        assert_eq!(m.cpuid(0x8000_0007, 0), [0, 0, 0, 1 << 8]);
        assert_eq!(m.cpuid(0x8000_0008, 0), [0x2020, 0, 0, 0]);
        assert_eq!(m.cpuid(0x8000_0009, 0), [0; 4]);
        assert_eq!(m.cpuid(4, 3), [u32::MAX; 4]);
    }

    #[test]
    fn stingy_host_leaves_are_zero() {
        let stingy = |leaf: u32, _| match leaf {
            0 => [2, 1, 2, 3],
            0x8000_0000 => [0x8000_0004, 0, 0, 0],
            _ => [u32::MAX; 4],
        };
        let m = CpuModel::from_host(stingy);
        assert_eq!(m.cpuid(0, 0)[0], 2);
        assert_eq!(m.cpuid(4, 0), [0; 4]);
        assert_eq!(m.cpuid(7, 0), [0; 4]);
        assert_eq!(m.cpuid(0x8000_0005, 0), [0; 4]);
        assert_eq!(m.cpuid(0x8000_0000, 0)[0], 0x8000_0004);
    }

    #[test]
    fn isa_follows_the_cpuid_bits() {
        let m = CpuModel::from_host(generous);
        let isa = m.isa();
        for f in [CpuidFeature::CMOV, CpuidFeature::SSE2, CpuidFeature::SSE4_2, CpuidFeature::LZCNT, CpuidFeature::ADX] {
            assert!(isa.has(f), "{f:?}");
        }
        assert!(isa.has(CpuidFeature::SEP));
        for f in [CpuidFeature::AVX, CpuidFeature::XSAVE, CpuidFeature::CLZERO, CpuidFeature::BMI1] {
            assert!(!isa.has(f), "{f:?}");
        }
        let bare = CpuModel::from_host(|leaf, _| if leaf == 0 { [1, 0, 0, 0] } else { [0; 4] });
        assert_eq!(bare.isa(), Isa::base().with(CpuidFeature::RDPMC));
        assert!(bare.features_missing_on(&m).is_empty());
        let missing = m.features_missing_on(&bare);
        assert!(missing.contains(&"SSE2".to_string()) && missing.contains(&"ADX".to_string()), "{missing:?}");
    }

    #[test]
    fn this_host_model_is_consistent() {
        let m = CpuModel::host();
        let [_, ebx, ecx, edx] = m.cpuid(1, 0);
        assert_eq!(ecx & !LEAF1_ECX, 0);
        assert_eq!(edx & !LEAF1_EDX, 0);
        assert_eq!(ebx >> 16, 0, "no APIC id or logical count");
        assert_ne!(edx & 1, 0, "FPU");
        assert!(m.cpuid(0, 0)[0] <= MAX_BASIC);
    }
}
